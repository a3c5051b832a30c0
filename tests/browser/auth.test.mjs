// pushgate.js with tokens: getToken on every connect, in-band refresh on
// WebSocket when the gateway warns of expiry, SSE reconnect from the cursor.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Gateway, openBrowser, jwt, sleep } from './harness.mjs';

const SECRET = 'browser-tests-only-hmac-secret-0123456789';
const CONFIG = new URL('./pushgate-auth.toml', import.meta.url).pathname;
const token = (ttlSeconds, grants = ['*']) => jwt({
  sub: 'tester',
  exp: Math.floor(Date.now() / 1000) + ttlSeconds,
  pushgate: { subscribe: grants, publish: grants },
}, SECRET);

for (const transport of ['ws', 'sse']) {
  test(`short-lived tokens are refreshed and nothing is missed over ${transport.toUpperCase()}`, { timeout: 90000 }, async (t) => {
    const gw = await new Gateway({ config: CONFIG, token: () => token(60) }).start();
    const { page, errors, close } = await openBrowser();
    t.after(async () => { await close().catch(() => {}); await gw.stop(); });

    // Without a token the gateway refuses.
    const anonymous = await fetch(`${gw.url}/sse?topic=prices`);
    assert.equal(anonymous.status, 401);

    await gw.price('AAPL', 100);
    let minted = 0;
    await page.exposeFunction('mintToken', () => { minted++; return token(2); });
    await page.goto(`${gw.url}/pushgate.js`); // any page on the gateway's origin
    await page.evaluate(async (transport) => {
      const { Pushgate } = await import('/pushgate.js');
      window.events = [];
      window.prices = [];
      const pg = new Pushgate({ transport, getToken: () => window.mintToken(), minDelay: 100, maxDelay: 500 });
      for (const name of ['state', 'refreshed', 'disconnect', 'reset', 'error']) {
        pg.on(name, (e) => window.events.push({ name, e: typeof e === 'string' ? e : { code: e?.code, type: e?.type } }));
      }
      pg.subscribe('prices', { keys: ['AAPL'], onRecord: (r) => window.prices.push({ price: r.data.price, snapshot: !!r.snapshot }) });
      window.pg = pg;
    }, transport);
    const prices = () => page.evaluate(() => window.prices);
    const events = () => page.evaluate(() => window.events);
    await page.waitForFunction(() => window.pg.state === 'live', null, { timeout: 10000 });
    assert.deepEqual(await prices(), [{ price: 100, snapshot: true }]);

    // Publish across several token lifetimes (2 s each).
    const sent = [];
    for (let i = 1; i <= 14; i++) {
      const value = 100 + i;
      await gw.price('AAPL', value);
      sent.push(value);
      await sleep(500);
    }
    await page.waitForFunction((n) => window.prices.length >= n, sent.length + 1, { timeout: 10000 });
    await sleep(300);
    const got = await prices();
    assert.deepEqual(got.slice(1).map((p) => p.price), sent, 'every record once, in order');
    assert.ok(got.slice(1).every((p) => !p.snapshot));
    assert.ok(minted >= 3, `getToken called again as tokens expired (${minted} times)`);
    const ev = await events();
    if (transport === 'ws') {
      assert.ok(ev.some((e) => e.name === 'refreshed'), `refreshed in-band: ${JSON.stringify(ev)}`);
      assert.deepEqual(ev.filter((e) => e.name === 'disconnect'), [], 'the WebSocket stayed up');
    } else {
      assert.ok(ev.some((e) => e.name === 'disconnect'), 'the SSE stream ended at expiry and came back');
    }
    assert.deepEqual(ev.filter((e) => e.name === 'reset' || e.name === 'error'), []);
    // (Loading a script as the page makes Chromium ask for /favicon.ico: a 404.)
    assert.deepEqual(errors.filter((e) => !/ERR_|favicon\.ico/.test(e)), []);
  });
}
