// The ops page (static/ops.html, served at /admin/ops): the operator types the
// admin token, and the page shows what the node's admin API says, live.
// Chromium's own WebSocket and EventSource are the clients; the numbers on
// the page must follow what the test does to the gateway.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Gateway, openBrowser, sleep, ROOT } from './harness.mjs';

const CONFIG = new URL('./pushgate-ops.toml', import.meta.url).pathname;
const TOKEN = 'browser-tests-admin-token-0123456789';

/** Waits until `read()` satisfies `ok`, polling; fails with the last value. */
async function until(what, read, ok, ms = 10000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    last = await read();
    if (ok(last)) return last;
    await sleep(100);
  }
  assert.fail(`${what}: still ${JSON.stringify(last)} after ${ms} ms`);
}

test('the ops page shows connections per transport, rates, topics with lag and age, readiness and revocations', { timeout: 90000 }, async (t) => {
  const gw = await new Gateway({ config: CONFIG }).start();
  const { context, page, errors, close } = await openBrowser({ width: 1280, height: 1000 });
  t.after(async () => { await close().catch(() => {}); await gw.stop(); });
  const text = (id) => page.locator(`[data-testid="${id}"]`).textContent();
  const number = async (id) => Number((await text(id)).replace(/,/g, ''));

  // The page is served without the token, with a policy that keeps it to its own origin.
  const served = await fetch(`${gw.url}/admin/ops`);
  assert.equal(served.status, 200);
  assert.match(served.headers.get('content-security-policy'), /connect-src 'self'/);
  assert.equal((await fetch(`${gw.url}/admin/stats`)).status, 401, 'the data needs the token');

  await page.goto(`${gw.url}/admin/ops`);
  // A wrong token is refused, and said so.
  await page.fill('[data-testid=token]', 'not-the-admin-token-at-all');
  await page.click('[data-testid=connect]');
  await until('the refusal', () => text('status'), (s) => s.includes('401'));
  assert.equal(await page.evaluate(() => sessionStorage.getItem('pushgate-admin-token')), null);

  await page.fill('[data-testid=token]', TOKEN);
  await page.click('[data-testid=connect]');
  await page.locator('[data-testid=ready][data-state=ready]').waitFor();
  assert.ok(!page.url().includes(TOKEN), 'the token is never in the URL');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('pushgate-admin-token')), TOKEN);
  await until('no connections yet', () => Promise.all(['conn-ws', 'conn-sse', 'conn-grpc'].map(number)), (v) => v.every((n) => n === 0));
  const prices = page.locator('[data-testid=topics] tr[data-topic=prices]');
  await prices.waitFor();
  assert.equal(await prices.locator('[data-field=partitions]').textContent(), '4');
  assert.equal(await prices.locator('[data-field=lag]').textContent(), '0', 'the embedded log reports a high watermark: lag is a number');
  assert.equal(await prices.locator('[data-field=age]').textContent(), 'none yet');

  // Clients: two WebSockets and one SSE stream on prices, from another tab.
  const clients = await context.newPage();
  await clients.goto(`${gw.url}/healthz`);
  await clients.evaluate(async () => {
    window.ws = [];
    for (let i = 0; i < 2; i++) {
      const ws = new WebSocket(`ws://${location.host}/ws`);
      await new Promise((ok, ko) => { ws.onopen = ok; ws.onerror = ko; });
      ws.send(JSON.stringify({ type: 'subscribe', id: 1, topic: 'prices' }));
      window.ws.push(ws);
    }
    window.es = new EventSource('/sse?topic=prices');
    await new Promise((ok) => { window.es.onopen = ok; });
  });
  await until('connections per transport', () => Promise.all(['conn-ws', 'conn-sse'].map(number)), ([ws, sse]) => ws === 2 && sse === 1);
  await until('subscriptions', () => number('subscriptions'), (n) => n === 3);
  await until('the connections table', () => page.locator('[data-testid=connections] tbody tr[data-transport]').count(), (n) => n === 3);

  // Records: published for a few seconds, so that a rate is measured over a whole interval.
  const recordsBefore = await number('records-total');
  const deliveriesBefore = await number('deliveries-total');
  let published = 0;
  const publishing = (async () => {
    for (let i = 0; i < 30; i++) {
      await gw.price(`S${i % 5}`, 100 + i);
      published++;
      await sleep(100);
    }
  })();
  const rate = await until('records per second', () => number('records-rate'), (r) => r > 0, 15000);
  assert.ok(rate < 1000, `a plausible rate: ${rate}`);
  await until('deliveries per second', () => number('deliveries-rate'), (r) => r > 0, 15000);
  await publishing;
  await until('records in', () => number('records-total'), (n) => n - recordsBefore === published);
  // Each record reaches all three clients.
  await until('deliveries', () => number('deliveries-total'), (n) => n - deliveriesBefore === 3 * published);
  await until('the prices row', () => prices.locator('[data-field=next]').textContent(), (s) => s === String(published));
  assert.match(await prices.locator('[data-field=age]').textContent(), /ago$/);
  assert.equal(await prices.locator('[data-field=lag]').textContent(), '0');
  assert.match(await text('record-age'), /ms|s|no writes/);

  // A revocation in force appears, with its count.
  const revoked = await fetch(`${gw.url}/admin/revocations`, {
    method: 'POST',
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ subject: 'mallory' }),
  });
  assert.equal(revoked.status, 201, await revoked.text());
  await until('revocations in force', () => number('revocations-count'), (n) => n === 1);
  await page.locator('[data-testid=revocations] tr[data-target="subject:mallory"]').waitFor();

  // A client leaves: its transport's count drops.
  await clients.evaluate(() => window.ws[0].close());
  await until('one WebSocket left', () => number('conn-ws'), (n) => n === 1);

  await page.screenshot({ path: join(ROOT, 'docs', 'ops-page.png'), fullPage: true });
  await clients.evaluate(() => { window.ws.forEach((w) => w.close()); window.es.close(); });
  await until('no connections left', () => Promise.all(['conn-ws', 'conn-sse'].map(number)), (v) => v.every((n) => n === 0));

  // Forgetting the token stops the polling and clears the tab's copy.
  await page.click('[data-testid=forget]');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('pushgate-admin-token')), null);
  assert.deepEqual(errors.filter((e) => !e.includes('401') && !e.includes('favicon.ico')), []);
});
