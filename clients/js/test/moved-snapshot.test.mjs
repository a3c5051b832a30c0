// A snapshot that moves on (the gateway's limits.snapshot_hold_bytes, 1 byte
// here: clients/testdata/gateway-moves.toml): keys deleted while it streams
// are not sent, so fewer snapshot records come than `subscribed` counted.
// The client still ends up holding exactly the view, and once `live` came it
// takes each live record's cursor (it used to wait for the count to reach
// zero and kept the last snapshot cursor for ever).
import { spawnSync } from 'node:child_process';
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Pushgate } from '../dist/index.js';
import { Gateway, waitFor } from './harness.mjs';

const KEYS = 100000;
const DELETED_FROM = 90000; // keys from here on are deleted mid-snapshot
const key = (i) => `k${String(i).padStart(5, '0')}`;
// 100,000 records of about 350 bytes: more than the sockets' buffers hold,
// so the gateway is still streaming when the writes below are made.
const PAD = 'x'.repeat(200);

// Publishes from a child process while this one waits: the client reads
// nothing meanwhile, so the snapshot cannot run ahead of the writes.
function publishBlocking(url, body) {
  const script = `fetch(process.argv[1], { method: 'POST', headers: { 'content-type': 'application/json' }, body: require('fs').readFileSync(0, 'utf8') })
    .then(async (r) => { if (!r.ok) { console.error(r.status, await r.text()); process.exit(1); } })`;
  const r = spawnSync(process.execPath, ['-e', script, `${url}/topics/view`], { input: JSON.stringify(body), encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`publish: ${r.stderr}`);
}

const clients = [];
after(() => { for (const c of clients) c.close(); });

for (const transport of ['ws', 'sse']) {
  test(`${transport}: a snapshot that moved on without deleted keys, then live cursors`, async () => {
    const gw = await new Gateway({ config: 'gateway-moves.toml' }).start();
    try {
      for (let b = 0; b < KEYS / 1000; b++) {
        await gw.publish('view', { records: Array.from({ length: 1000 }, (_, i) => ({ key: key(b * 1000 + i), data: { n: 0, pad: PAD } })) });
      }
      const held = new Map();
      let snapshotRecords = 0;
      let wrote = false;
      const pg = new Pushgate({ url: gw.url, transport, minDelay: 50, maxDelay: 1000 });
      clients.push(pg);
      let counted = null;
      const sub = pg.subscribe('view', {
        onSubscribed: (msg) => { counted = msg.snapshot; },
        onRecord: (r) => {
          if (r.snapshot) snapshotRecords++;
          if (r.op === 'delete' || r.data === null) held.delete(r.key);
          else held.set(r.key, r.data.n);
          // At the first snapshot record, delete the last keys and update
          // the first ones (already sent): the next page moves on.
          if (!wrote) {
            wrote = true;
            publishBlocking(gw.url, {
              records: [
                ...Array.from({ length: KEYS - DELETED_FROM }, (_, i) => ({ key: key(DELETED_FROM + i), data: null })),
                ...Array.from({ length: 10 }, (_, i) => ({ key: key(i), data: { n: 1 } })),
              ],
            });
          }
        },
      });
      await waitFor(() => sub.live, 'live', 60000);
      assert.equal(counted, KEYS, 'subscribed counted the view as it was');
      assert.ok(snapshotRecords < KEYS, `the deleted keys were not sent: ${snapshotRecords}`);
      const moved = /^pushgate_snapshots_moved_total (\d+)/m.exec(await (await fetch(`${gw.url}/metrics`)).text());
      assert.ok(moved && Number(moved[1]) >= 1, 'the snapshot moved on');
      await waitFor(() => held.size === DELETED_FROM && Array.from({ length: 10 }, (_, i) => held.get(key(i))).every((n) => n === 1), 'the view as it is', 30000);
      for (let i = 0; i < DELETED_FROM; i++) assert.equal(held.get(key(i)), i < 10 ? 1 : 0, key(i));
      // Live: each record's cursor is the subscription's.
      const before = sub.received;
      await gw.publish('view', { key: key(42), data: { n: 2 } });
      await waitFor(() => sub.received === before + 1, 'the live record');
      assert.equal(held.get(key(42)), 2);
      // The record can come before the publish's own answer: both are
      // awaited, or the answer would be cut off when the gateway closes.
      const got = new Promise((ok) => pg.on('record', (r) => ok(r)));
      await gw.publish('view', { key: key(43), data: { n: 2 } });
      const live = await got;
      await waitFor(() => sub.cursor === live.cursor, 'the live cursor taken');
      pg.close();
    } finally { await gw.close(); }
  });
}
