// The posts page: lists topic `posts` over gRPC-Web from offset 0, then live,
// as the content-streaming source document's React app did behind Envoy; here
// the gateway speaks gRPC-Web itself. Built by scripts/grpc-web-build into
// static/grpc/posts.js with Connect's gRPC-Web transport and the code that
// protoc-gen-es generates from proto/pushgate/v1/gateway.proto.
import { createClient, ConnectError, Code } from '@connectrpc/connect';
import { createGrpcWebTransport } from '@connectrpc/connect-web';
import { Gateway } from '../gen/pushgate/v1/gateway_pb.js';

const TOPIC = new URLSearchParams(location.search).get('topic') || 'posts';
const transport = createGrpcWebTransport({ baseUrl: location.origin });
const client = createClient(Gateway, transport);
const decoder = new TextDecoder();

const $ = (sel) => document.querySelector(sel);
const posts = new Map(); // key -> {key, offset, partition, author, text, ts}
const state = { cursor: '', records: 0, status: 'connecting' };
window.__grpcPosts = state;

function setStatus(status, detail = '') {
  state.status = status;
  const el = $('[data-testid=grpc-state]');
  el.dataset.state = status;
  el.textContent = detail ? `${status}: ${detail}` : status;
}

function render() {
  const list = $('[data-testid=grpc-posts]');
  const items = [...posts.values()].sort((a, b) => b.partition - a.partition || b.offset - a.offset);
  list.replaceChildren(...items.map((p) => {
    const li = document.createElement('li');
    li.className = 'post';
    li.dataset.testid = 'grpc-post';
    li.dataset.key = p.key;
    li.dataset.offset = String(p.offset);
    const who = document.createElement('strong');
    who.textContent = p.author;
    const what = document.createElement('span');
    what.textContent = ` ${p.text}`;
    const where = document.createElement('small');
    where.textContent = ` #${p.offset}`;
    li.append(who, what, where);
    return li;
  }));
  $('[data-testid=grpc-empty]').hidden = posts.size > 0;
  $('[data-testid=grpc-count]').textContent = String(state.records);
  $('[data-testid=grpc-cursor]').textContent = state.cursor;
}

function onRecord(r) {
  state.records += 1;
  const key = r.key ?? `@${r.partition}:${r.offset}`;
  if (r.op === 'delete' || r.dataJson.length === 0) {
    posts.delete(key);
  } else {
    const data = JSON.parse(decoder.decode(r.dataJson));
    posts.set(key, {
      key, partition: r.partition, offset: Number(r.offset),
      author: String(data?.author ?? 'anonymous'), text: String(data?.text ?? JSON.stringify(data)),
    });
  }
  if (!r.snapshot || r.cursor) state.cursor = r.cursor;
}

/** A cursor for the start of the log: the topic's epoch with no offsets (every partition from 0). */
async function fromOffsetZero() {
  const res = await fetch('/topics');
  const { topics } = await res.json();
  const topic = topics.find((t) => t.name === TOPIC);
  if (!topic) throw new Error(`no topic ${TOPIC}`);
  const b64 = topic.cursor.replace(/-/g, '+').replace(/_/g, '/');
  const bytes = Uint8Array.from(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)), (c) => c.charCodeAt(0));
  // [version 1][epoch: 8 bytes][partition count varint = 0]
  const start = new Uint8Array(10);
  start.set(bytes.subarray(0, 9));
  start[9] = 0;
  return btoa(String.fromCharCode(...start)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

async function follow() {
  for (;;) {
    try {
      if (!state.cursor) state.cursor = await fromOffsetZero();
      setStatus('connecting');
      for await (const ev of client.subscribe({ topic: TOPIC, cursor: state.cursor })) {
        switch (ev.kind.case) {
          case 'subscribed':
            setStatus('catching-up');
            break;
          case 'gap':
            // The start of the log is gone: what follows is a fresh snapshot.
            posts.clear();
            break;
          case 'record':
            onRecord(ev.kind.value);
            break;
          case 'live':
            if (ev.kind.value.cursor) state.cursor = ev.kind.value.cursor;
            setStatus('live');
            break;
          case 'tokenExpiring':
            break;
        }
        render();
      }
      setStatus('reconnecting', 'stream ended');
    } catch (e) {
      const err = ConnectError.from(e);
      const resume = err.metadata.get('pushgate-cursor');
      if (resume) state.cursor = resume;
      setStatus('reconnecting', `${Code[err.code]}: ${err.rawMessage}`);
    }
    render();
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function post(event) {
  event.preventDefault();
  const author = $('[data-testid=grpc-author]').value.trim() || 'anonymous';
  const input = $('[data-testid=grpc-text]');
  const text = input.value.trim();
  if (!text) return;
  const key = `post-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
  try {
    await client.publish({
      topic: TOPIC,
      records: [{ key, dataJson: new TextEncoder().encode(JSON.stringify({ author, text, ts: Date.now() })) }],
    });
    input.value = '';
  } catch (e) {
    setStatus(state.status, `publish failed: ${ConnectError.from(e).rawMessage}`);
  }
}

$('[data-testid=grpc-form]').addEventListener('submit', post);
render();
follow();
