// A connection dropped mid-snapshot of a 20,000-key view (the real gateway,
// clients/testdata/gateway-views.toml): the client resubscribes with the
// cursor of the last snapshot record it delivered, and the snapshot goes on
// after that key instead of starting over. Checked key by key against the
// publish answers: every key once as a snapshot record, the changes of each
// key after its snapshot record exactly (none missing, none twice, none
// older), the final value of every key the last published, then live records.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Pushgate } from '../dist/index.js';
import { Gateway, waitFor } from './harness.mjs';

const KEYS = 20000;
const CUT = 7000; // snapshot records delivered before the drop
const key = (i) => `k${String(i).padStart(5, '0')}`;

const clients = [];
after(() => { for (const c of clients) c.close(); });

/** What was published: per key, every {partition, offset, n} in order. */
class Log {
  constructor(pad) { this.byKey = new Map(); this.pad = 'x'.repeat(pad); }
  async publish(gw, records) {
    const answer = await gw.publish('view', { records: records.map(([k, n]) => ({ key: k, data: { n, pad: this.pad } })) });
    assert.equal(answer.records.length, records.length);
    records.forEach(([k, n], i) => {
      const { partition, offset } = answer.records[i];
      if (!this.byKey.has(k)) this.byKey.set(k, []);
      this.byKey.get(k).push({ partition, offset, n });
    });
  }
  last(k) { return this.byKey.get(k).at(-1); }
}

// How the connection is lost mid-snapshot, at the CUT-th snapshot record:
// the socket or stream dropped by the client as a network would (no close
// handshake), or the gateway killed (SIGKILL) and started again on the same
// log (records of 1 KB there, so that what the kernel's socket buffers still
// hold after the kill is far less than the rest of the snapshot).
const DROPS = [
  { transport: 'ws', how: 'socket dropped', pad: 40, cut: CUT },
  { transport: 'sse', how: 'stream dropped', pad: 40, cut: CUT },
  { transport: 'ws', how: 'gateway killed and restarted', pad: 1000, cut: 1000, kill: true },
];

for (const { transport, how, pad, cut, kill } of DROPS) {
  test(`${transport}, ${how} mid-snapshot of ${KEYS} keys: the snapshot goes on after the last key delivered, then live`, async () => {
    const gw = await new Gateway({ config: 'gateway-views.toml' }).start();
    try {
      const log = new Log(pad);
      for (let b = 0; b < KEYS / 500; b++) {
        await log.publish(gw, Array.from({ length: 500 }, (_, i) => [key(b * 500 + i), 0]));
      }
      const got = new Map(); // key -> delivered [{partition, offset, n, snapshot, replayed}]
      const subscribed = [];
      const resumed = [];
      let snapshotRecords = 0;
      let dropped = false;
      let last = null; // the last snapshot record delivered: {key, cursor}
      let first = null; // at the resubscribe: snapshot records delivered, the last one
      let writer = null;
      // Changes while the snapshot streams (after the restart, when killed):
      // updates of keys on both sides of the cut, and new keys (after every k… key).
      const write = async () => {
        for (let b = 0; b < 10; b++) {
          const batch = Array.from({ length: 200 }, (_, i) => [key(((b * 200 + i) * 37) % KEYS), 1 + b * 1000 + i]);
          for (let i = 0; i < 10; i++) batch.push([`n${b}-${i}`, b]);
          await log.publish(gw, batch);
        }
      };
      const pg = new Pushgate({ url: gw.url, transport, minDelay: 50, maxDelay: 500 });
      clients.push(pg);
      const sub = pg.subscribe('view', {
        onSubscribed: (msg) => {
          subscribed.push(msg);
          // Records read before the drop was noticed are delivered too: the cut
          // is the last snapshot record delivered before the resubscribe.
          if (subscribed.length === 2) first = { count: snapshotRecords, ...last };
          if (!kill) writer ??= write();
        },
        onResumed: (info) => resumed.push(info),
        onRecord: (r) => {
          if (!got.has(r.key)) got.set(r.key, []);
          got.get(r.key).push({ partition: r.partition, offset: r.offset, n: r.data.n, snapshot: !!r.snapshot, replayed: !!r.replayed });
          if (!r.snapshot) return;
          snapshotRecords++;
          last = { key: r.key, cursor: r.cursor };
          // The client's resume point is this snapshot record's cursor.
          assert.equal(sub.cursor, r.cursor, `the cursor after the snapshot record of ${r.key}`);
          if (snapshotRecords === cut && !dropped) {
            dropped = true;
            if (kill) gw.proc.kill('SIGKILL');
            else if (transport === 'ws') pg._ws.terminate();
            else pg._streams.get(sub).close(); // aborts the stream's fetch
          }
        },
      });
      if (kill) {
        await waitFor(() => dropped, 'the kill mid-snapshot', 60000);
        await gw.kill();
        await gw.restart();
        writer = write();
      }
      await waitFor(() => first, 'the drop mid-snapshot and the resubscribe', 60000);
      await writer;
      // Caught up: live again, and every key at its last published value.
      const caughtUp = () => sub.live && [...log.byKey].every(([k]) => got.get(k)?.at(-1)?.offset === log.last(k).offset);
      await waitFor(caughtUp, 'every key at its last published value', 60000);

      assert.equal(subscribed.length, 2, 'one resubscribe');
      assert.equal(subscribed[0].snapshot, KEYS);
      assert.equal(subscribed[1].recovered, true, `the snapshot position was honoured: ${JSON.stringify(subscribed[1])}`);
      assert.ok(first.count >= cut && first.count < KEYS, `${first.count} snapshot records before the resubscribe`);
      assert.equal(subscribed[1].cursor, first.cursor, 'resubscribed from the last snapshot record delivered');
      const rest = [...log.byKey.keys()].filter((k) => k > first.key).length;
      // The keys after the last one delivered: all of the first snapshot's, and
      // the new keys written before the resubscribe (later ones come live).
      const firstRest = KEYS - first.count;
      assert.ok(subscribed[1].snapshot >= firstRest && subscribed[1].snapshot <= rest,
        `the resumed snapshot (${subscribed[1].snapshot}) is the keys after the last one delivered (${firstRest}..${rest})`);
      assert.ok(subscribed[1].snapshot > 0 && subscribed[1].snapshot < KEYS, 'resumed mid-snapshot, not started over');
      assert.equal(snapshotRecords, first.count + subscribed[1].snapshot, 'no snapshot record twice, none missing');
      if (transport === 'ws' && !kill) assert.equal(pg.sockets, 2, 'one reconnect');

      // Key by key: one snapshot record at most, then exactly the published
      // records after it; a key never in a snapshot got all of its records.
      let replayed = 0;
      for (const [k, published] of log.byKey) {
        const d = got.get(k) ?? [];
        assert.ok(d.length > 0, `key ${k} delivered`);
        assert.ok(d.filter((r) => r.snapshot).length <= 1, `key ${k}: one snapshot record at most`);
        assert.ok(!d.slice(1).some((r) => r.snapshot), `key ${k}: its snapshot record first`);
        const from = d[0].snapshot ? d[0].offset : -1;
        const want = published.filter((p) => p.offset >= from).map((p) => `${p.partition}/${p.offset}/${p.n}`);
        assert.deepEqual(d.map((r) => `${r.partition}/${r.offset}/${r.n}`), want, `key ${k}: the records after its snapshot record, exactly`);
        if (k <= first.key) replayed += d.filter((r) => r.replayed).length;
        else assert.ok(!d.some((r) => r.replayed), `key ${k}: after the cut, nothing replayed`);
      }
      assert.equal(resumed.length, 1);
      assert.equal(resumed[0].missed, replayed, 'resumed: the changes of the held keys replayed');

      console.log(`${transport}: ${first.count} snapshot records before the drop, ${subscribed[1].snapshot} after it, ${replayed} changes of held keys replayed`);
      // Live after the resumed snapshot.
      const live = [];
      for (const k of [key(0), key(KEYS - 1), 'n0-0', 'new-live']) {
        const a = await gw.publish('view', { key: k, data: { n: -1 } });
        live.push({ k, offset: a.offset, partition: a.partition });
      }
      await waitFor(() => live.every(({ k, offset }) => got.get(k)?.at(-1)?.offset === offset), 'the live records', 10000);
      for (const { k, offset, partition } of live) {
        const r = got.get(k).at(-1);
        assert.deepEqual([r.partition, r.offset, r.n, r.snapshot, r.replayed], [partition, offset, -1, false, false], `live record of ${k}`);
        assert.equal(got.get(k).filter((x) => x.offset === offset).length, 1, `live record of ${k} once`);
      }
      assert.equal(sub.live, true);
      pg.close();
    } finally { await gw.close(); }
  });
}
