// A large view in real headless Chromium: static/orders.html (pushgate.js)
// on a topic of 100,000 keys published through the HTTP API. The page shows
// all of them (its count, and any row scrolled to) while only the rows in
// view are in the DOM, then follows live updates.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Gateway, openBrowser, screenshot, sleep } from './harness.mjs';

const HERE = import.meta.dirname;
const KEYS = 100000;
const STATUSES = ['new', 'paid', 'shipped', 'delivered', 'cancelled'];
const order = (id, status = STATUSES[id % 5]) => ({
  key: String(id),
  data: { id, customer: `Customer ${id % 977}`, item: `Item ${id % 131}`, total: `${(id % 1000) + 0.5}`, status, updated_at: 1700000000000 + id },
});

async function until(fn, what, timeout = 10000) {
  const end = Date.now() + timeout;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

test(`the orders page shows a view of ${KEYS} keys (only the rows in view in the DOM), then live updates`, { timeout: 110000 }, async (t) => {
  const gw = await new Gateway({ config: join(HERE, 'pushgate-view.toml') }).start();
  const { page, errors, close } = await openBrowser({ width: 1280, height: 900 });
  t.after(async () => { await close().catch(() => {}); await gw.stop(); });

  // Keys 1..100000 in batches of 1000 (ids in numeric order are not the
  // gateway's key order, bytes of UTF-8: the page sorts them).
  for (let b = 0; b < KEYS / 1000; b++) {
    const answer = await gw.publish('orders', { records: Array.from({ length: 1000 }, (_, i) => order(b * 1000 + i + 1)) });
    assert.equal(answer.records.length, 1000);
  }

  const started = Date.now();
  await page.goto(`${gw.url}/orders.html?topic=orders`);
  const text = (id) => page.locator(`[data-testid="${id}"]`).textContent();
  await until(async () => (await text('order-count')) === String(KEYS), `the count to say ${KEYS}`, 60000);
  const shownIn = Date.now() - started;
  await page.locator('[data-testid="conn-state"][data-state="live"]').waitFor();
  // Exactly the snapshot: every key once.
  assert.equal(await text('received'), String(KEYS), 'records delivered by pushgate.js');

  const rowsInDom = () => page.locator('[data-testid="order-rows"] tr').count();
  const domRows = await rowsInDom();
  assert.ok(domRows > 10 && domRows < 200, `${domRows} rows in the DOM for ${KEYS} orders`);
  const keysShown = () => page.locator('[data-testid="order-rows"] tr').evaluateAll((trs) => trs.map((tr) => tr.dataset.key));
  const top = await keysShown();
  assert.deepEqual(top.slice(0, 3), ['1', '2', '3'], 'numeric order from the top');
  assert.equal(await page.locator('tr[data-key="1"] td').first().textContent(), '#1');

  // The scroll height stands for every row: the bottom shows the last ids.
  const rowHeight = await page.locator('[data-testid="order-rows"] tr').first().evaluate((tr) => tr.getBoundingClientRect().height);
  const scrollTo = (top) => page.locator('[data-testid="order-scroll"]').evaluate((el, y) => { el.scrollTop = y; }, top);
  await scrollTo(1e9);
  await until(async () => (await keysShown()).at(-1) === String(KEYS), 'the last order at the bottom');
  const bottom = await keysShown();
  assert.deepEqual(bottom.slice(-3), [String(KEYS - 2), String(KEYS - 1), String(KEYS)]);
  assert.ok(await rowsInDom() < 200, 'still only the rows in view');
  // Any row in between, where its place is.
  await scrollTo(49999 * rowHeight);
  const mid = page.locator('tr[data-key="50000"]');
  await mid.waitFor({ timeout: 5000 });
  assert.equal(await mid.getAttribute('data-status'), STATUSES[50000 % 5]);
  assert.equal(await mid.locator('td').nth(1).textContent(), `Customer ${50000 % 977}`);
  await screenshot(page, 'view-100000');

  // Live: an update of a row in view, then a new order at the end.
  const fresh = page.locator('tr[data-key="50000"][data-status="cancelled"]');
  assert.equal(await fresh.count(), 0);
  const liveAt = Date.now();
  await gw.publish('orders', order(50000, 'cancelled'));
  await fresh.waitFor({ timeout: 2000 });
  const liveIn = Date.now() - liveAt;
  assert.match(await page.locator('[data-testid="activity"] li').first().textContent(), /#50000 .*cancelled/);
  await gw.publish('orders', order(KEYS + 1, 'new'));
  await until(async () => (await text('order-count')) === String(KEYS + 1), `the count to say ${KEYS + 1}`, 5000);
  await scrollTo(1e9);
  await until(async () => (await keysShown()).at(-1) === String(KEYS + 1), 'the new order at the bottom', 5000);
  assert.equal(await text('received'), String(KEYS + 2), 'the two live records, once each');
  assert.deepEqual(errors, [], 'no console errors');
  console.log(`${KEYS} orders shown in ${shownIn} ms (${domRows} rows in the DOM); a live update in ${liveIn} ms`);
});
