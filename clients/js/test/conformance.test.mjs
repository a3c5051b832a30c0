// Every vector of api/conformance replayed through the client: a fake
// WebSocket hands it the vector's server messages one by one, and after each
// the client's state (records delivered, data after patches, cursor, live,
// reset, resumed, values, errors, what it sent back) must be the vector's.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Pushgate } from '../dist/index.js';
import { VECTORS, waitFor } from './harness.mjs';

class FakeSocket {
  static last = null;
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    FakeSocket.last = this;
    setTimeout(() => { this.readyState = 1; this.onopen?.({}); });
  }
  send(text) { this.sent.push(JSON.parse(text)); }
  close() { this.readyState = 3; }
  deliver(msg) { this.onmessage?.({ data: JSON.stringify(msg) }); }
}

/** A delivered record as the vectors write it. */
function normalized(r) {
  const out = { key: r.key, offset: r.offset };
  if ('data' in r) out.data = r.data;
  if (r.op !== undefined) out.op = r.op;
  if (r.snapshot) out.snapshot = true;
  if (r.replayed) out.replayed = true;
  return out;
}

function options(sub) {
  const o = {};
  if (sub.keys) o.keys = sub.keys;
  if (sub.prefix) o.prefix = sub.prefix;
  if (sub.cursor) o.cursor = sub.cursor;
  if (sub.snapshot !== undefined) o.snapshot = sub.snapshot;
  if (sub.filter !== undefined) o.filter = sub.filter;
  if (sub.fields) o.fields = sub.fields;
  if (sub.delta) o.delta = sub.delta;
  if (sub.max_rate !== undefined) o.maxRate = sub.max_rate;
  if (sub.resume) o.resume = sub.resume;
  return o;
}

/** The vector's subscribe, less its id, must be what the client sent (plus the default snapshot). */
function checkRequest(vectorReq, sent, cursor, where) {
  const { id: _v, ...want } = vectorReq;
  const { id: _s, ...got } = sent;
  if (!('snapshot' in want)) want.snapshot = true;
  if (cursor === null) delete want.cursor; else if (cursor !== undefined) want.cursor = cursor;
  assert.deepEqual(got, want, `${where}: the subscribe request`);
}

const files = readdirSync(VECTORS).filter((f) => f.endsWith('.json')).sort();

test('there are conformance vectors', () => assert.ok(files.length >= 10, `${files.length} vectors`));

for (const file of files) {
  test(`vector ${file}`, async () => {
    const vector = JSON.parse(readFileSync(join(VECTORS, file), 'utf8'));
    FakeSocket.last = null;
    const got = { delivered: [], reset: [], resumed: [], error: [] };
    const client = new Pushgate({
      url: 'http://gateway.test', WebSocket: FakeSocket, getToken: () => 'token-from-app', minDelay: 20, maxDelay: 100,
    });
    try {
      const sub = client.subscribe(vector.subscribe.topic, {
        ...options(vector.subscribe),
        onRecord: (r) => got.delivered.push(normalized(r)),
        onReset: (info) => got.reset.push({ reason: info.reason, earliest: info.earliest }),
        onResumed: (info) => got.resumed.push({ missed: info.missed }),
        onError: (e) => got.error.push(e.code),
      });
      const ws = await waitFor(() => FakeSocket.last?.sent.length && FakeSocket.last, 'the subscribe request', 2000);
      let sentSeen = 1;
      checkRequest(vector.subscribe, ws.sent[0], undefined, file);
      let currentId = ws.sent[0].id;
      for (const [i, step] of vector.steps.entries()) {
        const where = `${file} step ${i} (${step.server.type})`;
        for (const k of Object.keys(got)) got[k] = [];
        const msg = { ...step.server };
        if ('id' in msg && msg.id === vector.subscribe.id) msg.id = currentId;
        ws.deliver(msg);
        const exp = step.expect;
        if (exp.resubscribe) {
          // A new subscribe (after a backoff when `delayed`); later steps answer it.
          const req = await waitFor(() => ws.sent.slice(sentSeen).find((m) => m.type === 'subscribe'), `${where}: a new subscribe`, 2000);
          sentSeen = ws.sent.length;
          checkRequest(vector.subscribe, req, exp.resubscribe.cursor, where);
          assert.notEqual(req.id, currentId, `${where}: a new request id`);
          currentId = req.id;
        }
        if (exp.sends) {
          const want = exp.sends;
          const found = await waitFor(() => ws.sent.slice(sentSeen).find((m) => Object.entries(want).every(([k, v]) => JSON.stringify(m[k]) === JSON.stringify(v))), `${where}: sends ${JSON.stringify(want)}`, 2000);
          assert.ok(found);
          sentSeen = ws.sent.length;
        }
        assert.deepEqual(got.delivered, exp.delivered ?? [], `${where}: records delivered`);
        assert.deepEqual(got.reset, exp.reset ? [exp.reset] : [], `${where}: reset`);
        assert.deepEqual(got.resumed, exp.resumed ? [exp.resumed] : [], `${where}: resumed`);
        assert.deepEqual(got.error, exp.error ? [exp.error] : [], `${where}: errors`);
        assert.equal(sub.cursor, exp.cursor, `${where}: cursor`);
        assert.equal(sub.live, exp.live, `${where}: live`);
        if (exp.values) assert.deepEqual(Object.fromEntries(sub.values), exp.values, `${where}: values`);
      }
    } finally {
      client.close();
    }
  });
}
