// The client against the real gateway (target/debug/pushgate, started here on
// 127.0.0.1 with a temporary data dir), over WebSocket (the `ws` package,
// imported by the client itself: Node 20 has no global WebSocket) and SSE
// (read with fetch: Node has no EventSource).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { Pushgate } from '../dist/index.js';
import { Gateway, ROOT, jwt, sleep, token, waitFor } from './harness.mjs';

const clients = [];
function client(gw, opts = {}) {
  const c = new Pushgate({ url: gw.url, minDelay: 50, maxDelay: 1000, ...opts });
  clients.push(c);
  return c;
}
after(() => { for (const c of clients) c.close(); });

test('the committed static/pushgate.js is a fresh build of src/index.ts', () => {
  execFileSync(process.execPath, [join(ROOT, 'clients', 'js', 'scripts', 'build.mjs'), '--check'], { stdio: 'pipe' });
});

for (const transport of ['ws', 'sse']) {
  test(`${transport}: snapshot then live, only the keys asked for, the cursor of every record`, async () => {
    const gw = await new Gateway().start();
    try {
      await gw.publish('prices', { key: 'AAPL', data: { price: 1 } });
      await gw.publish('prices', { key: 'MSFT', data: { price: 2 } });
      await gw.publish('prices', { key: 'NVDA', data: { price: 3 } });
      const got = [];
      const pg = client(gw, { transport });
      const sub = pg.subscribe('prices', { keys: ['AAPL', 'NVDA'], onRecord: (r) => got.push(r) });
      await waitFor(() => sub.live, 'live');
      assert.deepEqual(got.map((r) => [r.key, r.data.price, !!r.snapshot]).sort(), [['AAPL', 1, true], ['NVDA', 3, true]]);
      await gw.publish('prices', { key: 'MSFT', data: { price: 20 } });
      const a = await gw.publish('prices', { key: 'AAPL', data: { price: 10 } });
      await waitFor(() => got.length === 3, 'the live record');
      assert.equal(got[2].key, 'AAPL');
      assert.equal(got[2].data.price, 10);
      assert.equal(got[2].cursor, sub.cursor);
      assert.equal(got[2].offset, a.offset);
      pg.close();
    } finally { await gw.close(); }
  });
}

for (const transport of ['ws', 'sse']) {
  test(`${transport}: a partial snapshot is told (snapshotPartial, onPartialSnapshot, partial_snapshot)`, async () => {
    const gw = await new Gateway({ config: 'gateway-partial.toml' }).start();
    try {
      for (let i = 0; i < 5; i++) await gw.publish('tiny_view', { key: `k${i}`, data: { i } });
      const got = [];
      const told = [];
      const pg = client(gw, { transport });
      const events = [];
      pg.on('partial_snapshot', (p) => events.push(p));
      const sub = pg.subscribe('tiny_view', { onRecord: (r) => got.push(r.key), onPartialSnapshot: (p) => told.push({ ...p }) });
      await waitFor(() => sub.live, 'live');
      assert.deepEqual(got.sort(), ['k0', 'k1', 'k2'], 'the first 3 keys in key order (max_snapshot_records)');
      assert.deepEqual(told, [{ topic: 'tiny_view', reason: 'max_snapshot_records', skipped: 2 }]);
      assert.equal(events.length, 1);
      assert.equal(sub.snapshotPartial.reason, 'max_snapshot_records');
      // A complete snapshot: nothing said.
      const whole = pg.subscribe('prices', { keys: ['none'] });
      await waitFor(() => whole.live, 'live');
      assert.equal(whole.snapshotPartial, null);
      assert.equal(told.length, 1);
      pg.close();
    } finally { await gw.close(); }
  });
}

test('ws: a value filter (enter/leave), a projection and JSON Patch deltas give whole values', async () => {
  const gw = await new Gateway().start();
  try {
    const pg = client(gw);
    const filtered = [];
    const f = pg.subscribe('one', { filter: { status: 'open' }, fields: ['status', 'total'], onRecord: (r) => filtered.push(r) });
    const deltas = [];
    const d = pg.subscribe('prices', { keys: ['K'], delta: 'json-patch', onRecord: (r) => deltas.push(r) });
    await waitFor(() => f.live && d.live, 'both live');
    await gw.publish('one', { key: 'o1', data: { status: 'open', total: 5, secret: 'x' } });
    await gw.publish('one', { key: 'o2', data: { status: 'closed', total: 6 } });
    await gw.publish('one', { key: 'o1', data: { status: 'closed', total: 5 } });
    await waitFor(() => filtered.length === 2, 'enter and leave');
    // o1 is new to the subscription: a plain record; its value leaving the filter is a `leave`.
    assert.deepEqual(filtered.map((r) => [r.key, r.op, r.data]), [['o1', undefined, { status: 'open', total: 5 }], ['o1', 'leave', undefined]]);
    await gw.publish('one', { key: 'o1', data: { status: 'open', total: 7 } });
    await waitFor(() => filtered.length === 3, 'enter');
    assert.deepEqual([filtered[2].op, filtered[2].data], ['enter', { status: 'open', total: 7 }]);
    const desc = 'a long unchanging description so that patches are smaller than the value '.repeat(3);
    const sent = [];
    for (let i = 0; i < 20; i++) {
      const v = { price: i, desc, tags: i % 2 ? ['a'] : ['a', 'b'], meta: { i } };
      sent.push(v);
      await gw.publish('prices', { key: 'K', data: v });
    }
    await waitFor(() => deltas.length === 20, '20 delta records');
    assert.deepEqual(deltas.map((r) => r.data), sent, 'every value whole, in order');
    assert.ok(deltas.filter((r) => r.patched).length >= 15, `most arrived as patches (${deltas.filter((r) => r.patched).length})`);
    assert.deepEqual(d.values.get('K'), sent[19]);
  } finally { await gw.close(); }
});

test('ws: max_rate conflates a fast key, and its latest value always arrives', async () => {
  const gw = await new Gateway().start();
  try {
    const pg = client(gw);
    const got = [];
    const sub = pg.subscribe('one', { keys: ['fast'], maxRate: 2, onRecord: (r) => got.push(r.data) });
    await waitFor(() => sub.live, 'live');
    const started = Date.now();
    for (let i = 1; i <= 40; i++) await gw.publish('one', { key: 'fast', data: i });
    const took = (Date.now() - started) / 1000;
    await waitFor(() => got.at(-1) === 40, 'the latest value', 5000);
    // At most 2 per second over the publishing time, plus the first and the final one.
    assert.ok(got.length <= Math.ceil(took * 2) + 3, `${got.length} records in ${took.toFixed(2)} s at max_rate 2`);
    assert.ok(got.length < 40, 'conflated');
    assert.deepEqual([...got].sort((a, b) => a - b), got, 'in order');
  } finally { await gw.close(); }
});

for (const transport of ['ws', 'sse']) {
  test(`${transport}: the gateway killed (SIGKILL) mid-stream and restarted: 0 lost, 0 duplicated`, async () => {
    const gw = await new Gateway().start();
    try {
      const seen = new Map(); // offset -> count
      const values = [];
      const pg = client(gw, { transport, minDelay: 100, maxDelay: 500 });
      const sub = pg.subscribe('one', { onRecord: (r) => { seen.set(r.offset, (seen.get(r.offset) ?? 0) + 1); values.push(r.data); } });
      await waitFor(() => sub.live, 'live');
      const acked = [];
      let killed = false;
      for (let i = 0; i < 300; i++) {
        if (i === 150) {
          await gw.kill();
          killed = true;
          await sleep(300);
          await gw.restart();
        }
        for (;;) {
          try { acked.push((await gw.publish('one', { key: `k${i % 7}`, data: i })).offset); break; } catch { await sleep(50); }
        }
      }
      assert.ok(killed);
      const last = Math.max(...acked);
      await waitFor(() => seen.has(last), `offset ${last}`, 15000);
      await sleep(200);
      const offsets = [...seen.keys()].sort((a, b) => a - b);
      assert.deepEqual(offsets, Array.from({ length: last + 1 }, (_, i) => i), '0 lost: every offset of the log');
      assert.deepEqual([...seen.values()].filter((n) => n !== 1), [], '0 duplicated');
      for (let i = 0; i < 300; i++) assert.ok(values.includes(i), `value ${i}`);
      assert.ok(pg.reconnects >= 1, 'it reconnected');
    } finally { await gw.close(); }
  });
}

test('ws: a log wiped while the client was away is a gap: reset (epoch), then a fresh snapshot', async () => {
  const gw = await new Gateway().start();
  try {
    await gw.publish('one', { key: 'a', data: 1 });
    const resets = [];
    const got = [];
    const pg = client(gw, { minDelay: 100, maxDelay: 400 });
    const sub = pg.subscribe('one', { onRecord: (r) => got.push(r), onReset: (i) => resets.push(i) });
    await waitFor(() => sub.live && got.length === 1, 'snapshot');
    await gw.kill();
    gw.wipe();
    await gw.restart();
    await gw.publish('one', { key: 'b', data: 2 });
    await waitFor(() => resets.length === 1 && got.length === 2, 'reset and the new snapshot', 10000);
    assert.equal(resets[0].reason, 'epoch');
    assert.ok(resets[0].earliest);
    // b comes in the fresh snapshot, or live if the client was back before it was published.
    assert.equal(got[1].key, 'b');
    await waitFor(() => sub.live, 'live again');
    assert.ok(sub.cursor);
  } finally { await gw.close(); }
});

for (const transport of ['ws', 'sse']) {
  test(`${transport}: tokens of 2 s refreshed through getToken: every record once`, async () => {
    const gw = await new Gateway({ config: 'gateway-auth.toml', token: () => token(60) }).start();
    try {
      let minted = 0;
      const got = [];
      const events = [];
      const pg = client(gw, { transport, getToken: () => { minted++; return token(2); } });
      for (const name of ['refreshed', 'disconnect', 'reset']) pg.on(name, (e) => events.push(name));
      const sub = pg.subscribe('one', { keys: ['x'], snapshot: false, onRecord: (r) => got.push(r.data) });
      await waitFor(() => sub.live, 'live');
      const sent = [];
      for (let i = 0; i < 14; i++) { sent.push(i); await gw.publish('one', { key: 'x', data: i }); await sleep(500); }
      await waitFor(() => got.length >= sent.length, 'all records', 10000);
      await sleep(200);
      assert.deepEqual(got, sent);
      assert.ok(minted >= 3, `getToken called ${minted} times`);
      if (transport === 'ws') {
        assert.ok(events.includes('refreshed'), events.join());
        assert.ok(!events.includes('disconnect'), 'the socket stayed up');
      } else {
        assert.ok(events.includes('disconnect'), 'the stream ended at expiry and came back');
      }
      assert.ok(!events.includes('reset'));
    } finally { await gw.close(); }
  });
}

for (const transport of ['ws', 'sse']) {
  test(`${transport}: a full node answers 503 with Retry-After, and the client waits that long`, async () => {
    const gw = await new Gateway({ config: 'gateway-one-connection.toml' }).start();
    try {
      const first = client(gw, { transport });
      const s1 = first.subscribe('one', {});
      await waitFor(() => s1.live, 'the first client live');
      const second = client(gw, { transport, minDelay: 50 });
      const hints = [];
      second.on('disconnect', (d) => hints.push(d));
      const s2 = second.subscribe('one', {});
      await waitFor(() => hints.length >= 1, 'a refusal');
      assert.equal(hints[0].status, 503);
      assert.equal(hints[0].retryAfter, 1);
      assert.ok(hints[0].delay >= 1000, `waits at least Retry-After (${hints[0].delay} ms)`);
      first.close();
      await waitFor(() => s2.live, 'the second client live once there is room', 10000);
    } finally { await gw.close(); }
  });
}

test('ws: a drain closes with 1012 and the client comes back at once, resuming', async () => {
  const gw = await new Gateway().start();
  try {
    const pg = client(gw, { minDelay: 300, maxDelay: 5000 });
    const hints = [];
    const got = [];
    pg.on('disconnect', (d) => hints.push(d));
    const sub = pg.subscribe('one', { onRecord: (r) => got.push(r.data) });
    await waitFor(() => sub.live, 'live');
    await gw.publish('one', { key: 'a', data: 1 });
    await waitFor(() => got.length === 1, 'a record');
    await gw.stop();
    await waitFor(() => hints.length >= 1, 'the close');
    assert.equal(hints[0].code, 1012);
    assert.ok(hints[0].delay < 300, `reconnects within minDelay (${hints[0].delay} ms)`);
    await gw.restart();
    await gw.publish('one', { key: 'a', data: 2 });
    await waitFor(() => got.length === 2, 'the record after the restart', 10000);
    assert.deepEqual(got, [1, 2]);
  } finally { await gw.close(); }
});

test('ws: networkAvailable() skips the backoff and reconnects now', async () => {
  const gw = await new Gateway().start();
  try {
    const pg = client(gw, { minDelay: 20000, maxDelay: 60000 });
    const sub = pg.subscribe('one', {});
    await waitFor(() => sub.live, 'live');
    await gw.kill();
    await waitFor(() => pg.state === 'reconnecting', 'reconnecting');
    await gw.restart();
    const t = Date.now();
    pg.networkAvailable();
    await waitFor(() => sub.live, 'live again', 5000);
    assert.ok(Date.now() - t < 5000);
  } finally { await gw.close(); }
});

test('ws: 40 subscriptions on one socket', async () => {
  const gw = await new Gateway().start();
  try {
    const pg = client(gw);
    const got = new Map();
    const subs = [];
    for (let i = 0; i < 40; i++) {
      const topic = `m${String(i).padStart(2, '0')}`;
      subs.push(pg.subscribe(topic, { onRecord: (r) => got.set(r.topic, r.data) }));
    }
    await waitFor(() => subs.every((s) => s.live), 'all live');
    for (let i = 0; i < 40; i++) await gw.publish(`m${String(i).padStart(2, '0')}`, { key: 'k', data: i });
    await waitFor(() => got.size === 40, '40 records');
    for (let i = 0; i < 40; i++) assert.equal(got.get(`m${String(i).padStart(2, '0')}`), i);
    assert.equal(pg.sockets, 1, 'one WebSocket');
  } finally { await gw.close(); }
});

test('fetchSince: pages from a cursor exactly, shapes them, tells a gap, and a subscription from its cursor goes on', async () => {
  const gw = await new Gateway().start();
  try {
    const pg = client(gw);
    // Before the app sleeps: the head's cursor, nothing to read.
    const head = await pg.fetchSince('prices');
    assert.deepEqual([head.records.length, head.more, head.recovered], [0, false, true]);
    for (let i = 0; i < 25; i++) await gw.publish('prices', { key: `k${i % 5}`, data: { n: i, even: i % 2 === 0 } });
    // Woken up: pages of 10 until `more` is false, each record once.
    const seen = new Set();
    let cursor = head.cursor;
    const sizes = [];
    for (;;) {
      const page = await pg.fetchSince('prices', cursor, { limit: 10 });
      sizes.push(page.records.length);
      for (const r of page.records) {
        const at = `${r.partition}/${r.offset}`;
        assert.ok(!seen.has(at), `duplicate ${at}`);
        seen.add(at);
        assert.equal(typeof r.data.n, 'number');
      }
      cursor = page.cursor;
      if (!page.more) break;
      assert.ok(sizes.length < 10, 'paging ends');
    }
    assert.deepEqual(sizes, [10, 10, 5]);
    assert.equal(seen.size, 25);
    // The cursor in `opts` is the same call; a filter and fields shape the page and its cursor still reaches the head.
    const even = await pg.fetchSince('prices', { cursor: head.cursor, filter: { even: true }, fields: ['n'], limit: 1000 });
    // A key's value alternates between even and odd: each odd one is its `leave`, as on a subscription.
    const entered = even.records.filter((r) => r.op !== 'leave');
    assert.equal(entered.length, 13);
    assert.ok(entered.every((r) => r.data.n % 2 === 0 && Object.keys(r.data).length === 1));
    assert.equal(even.records.filter((r) => r.op === 'leave' && r.data === undefined).length, 10);
    assert.equal(even.cursor, cursor);
    const keyed = await pg.fetchSince('prices', head.cursor, { keys: ['k1', 'k3'], limit: 1000 });
    assert.deepEqual([...new Set(keyed.records.map((r) => r.key))].sort(), ['k1', 'k3']);
    assert.equal(keyed.records.length, 10);

    // A subscription from the last cursor: only what follows.
    const live = [];
    const sub = pg.subscribe('prices', { cursor, onRecord: (r) => live.push(r) });
    await waitFor(() => sub.live, 'live');
    await gw.publish('prices', { key: 'k9', data: { n: 100 } });
    await waitFor(() => live.length === 1, 'the new record');
    assert.equal(live[0].data.n, 100);
    await sleep(200);
    assert.equal(live.length, 1, 'nothing paged arrives again');

    // Bad input is an error with the gateway's code; a cursor older than retention is a gap.
    await assert.rejects(pg.fetchSince('prices', 'not-a-cursor'), (e) => e.status === 400 && e.code === 'bad_cursor');
    await assert.rejects(pg.fetchSince('nope'), (e) => e.status === 404 && e.code === 'unknown_topic');
    const old = (await pg.fetchSince('small')).cursor;
    for (let i = 0; i < 30; i++) await gw.publish('small', { key: 'x', data: i });
    let gap;
    await waitFor(async () => {
      gap = await pg.fetchSince('small', old);
      return gap.recovered === false;
    }, 'retention drops the cursor\'s records');
    assert.equal(gap.gap.reason, 'retention');
    assert.equal(gap.records.length, 0);
    const left = await pg.fetchSince('small', gap.gap.earliest);
    // What retention kept (it may still be trimming): the latest records, in order, up to the last.
    const kept = left.records.map((r) => r.data);
    assert.ok(kept.length > 0 && kept.length < 30, `${kept.length} left`);
    assert.deepEqual(kept, Array.from({ length: kept.length }, (_, i) => 30 - kept.length + i));
  } finally { await gw.close(); }
});

test('ws: subscriptions the token opens itself (subscribe_on_connect) leave the client and its own subscriptions alone', async () => {
  // The gateway sends `subscribed`, `live` and records for `token-0`, an id this client never sent.
  const tok = () => jwt({
    sub: 'sdk-test',
    exp: Math.floor(Date.now() / 1000) + 60,
    pushgate: { subscribe: ['*'], publish: ['*'], subscribe_on_connect: [{ topic: 'prices', snapshot: false }] },
  });
  const gw = await new Gateway({ config: 'gateway-auth.toml', token: () => token(60) }).start();
  try {
    const errors = [];
    const got = [];
    const pg = client(gw, { transport: 'ws', getToken: tok });
    pg.on('error', (e) => errors.push(e));
    const sub = pg.subscribe('one', { keys: ['x'], snapshot: false, onRecord: (r) => got.push(r.data) });
    await waitFor(() => sub.live, 'live');
    await gw.publish('prices', { key: 'AAPL', data: 1 });
    await gw.publish('one', { key: 'x', data: 2 });
    await waitFor(() => got.length === 1, 'the record of its own subscription');
    await sleep(200);
    assert.deepEqual(got, [2]);
    assert.deepEqual(errors, []);
  } finally { await gw.close(); }
});
