// The dashboard in real headless Chromium against the real gateway.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Gateway, openBrowser, recordSeen, seen, waitLive, screenshot, sleep } from './harness.mjs';

const T = { timeout: 90000 };
// Pages here reconnect with maxDelay=2000: after a restart they have resumed
// within that delay plus one second of the node being ready.
const RESUMED_WITHIN = 2000 + 1000;
const price = (page, sym) => page.locator(`[data-testid="price-${sym}"]`);
const text = (page, id) => page.locator(`[data-testid="${id}"]`).textContent();
const count = async (page) => Number(await text(page, 'records-received'));

/** Starts a gateway and a browser; both are stopped when the test ends. */
async function setup(t, { config, width, height } = {}) {
  const gw = await new Gateway({ config }).start();
  const browser = await openBrowser({ width, height });
  t.after(async () => {
    await browser.close().catch(() => {});
    await gw.stop();
  });
  return { gw, ...browser };
}

/** Polls `fn` until it returns something truthy (or times out with `what`). */
async function until(fn, what, timeout = 10000) {
  const end = Date.now() + timeout;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await sleep(25);
  }
  throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

test('loads with no console errors and shows the snapshot price at once', T, async (t) => {
  const { gw, page, errors } = await setup(t);
  await gw.price('AAPL', 101.25);
  await gw.price('MSFT', 202.5);
  await gw.price('GOOG', 303.75);

  await page.goto(`${gw.url}/?transport=ws&symbols=AAPL`);
  await waitLive(page);
  await assert.doesNotReject(price(page, 'AAPL').filter({ hasText: '101.25' }).waitFor({ timeout: 1000 }));
  assert.equal(await page.locator('[data-testid=ticker-list] > li').count(), 1, 'only the chosen symbol is shown');

  // Subscribing to another symbol shows its current price from the snapshot, at once.
  const started = Date.now();
  await page.fill('[data-testid=symbol-input]', 'msft');
  await page.click('[data-testid=add-button]');
  await price(page, 'MSFT').filter({ hasText: '202.50' }).waitFor({ timeout: 1000 });
  const elapsed = Date.now() - started;
  assert.ok(elapsed < 1000, `snapshot price shown after ${elapsed} ms`);
  // The suggestion chip adds one too.
  await page.click('[data-testid=suggest-GOOG]');
  await price(page, 'GOOG').filter({ hasText: '303.75' }).waitFor({ timeout: 1000 });
  assert.equal(await text(page, 'change-GOOG'), '+203.75 (+203.75%)');
  assert.match(await text(page, 'cursor'), /^[A-Za-z0-9_-]{6,}$/);

  await screenshot(page, 'snapshot');
  assert.deepEqual(errors, [], 'no console errors');
});

for (const transport of ['ws', 'sse']) {
  test(`a published record appears within one second over ${transport.toUpperCase()}`, T, async (t) => {
    const { gw, page, errors } = await setup(t);
    await gw.price('AAPL', 120);
    await page.goto(`${gw.url}/?transport=${transport}&symbols=AAPL,NVDA`);
    await waitLive(page);
    await price(page, 'AAPL').filter({ hasText: '120.00' }).waitFor();
    assert.match(await text(page, 'state-text'), transport === 'ws' ? /live · WebSocket/ : /live · SSE/);

    for (const value of [121.5, 119.25, 150.75]) {
      const started = Date.now();
      await gw.price('AAPL', value);
      await price(page, 'AAPL').filter({ hasText: value.toFixed(2) }).waitFor({ timeout: 1000 });
      const elapsed = Date.now() - started;
      assert.ok(elapsed < 1000, `record shown after ${elapsed} ms`);
    }
    // A symbol with no snapshot yet fills in on its first record.
    assert.equal(await price(page, 'NVDA').textContent(), '—');
    await gw.price('NVDA', 88.8);
    await price(page, 'NVDA').filter({ hasText: '88.80' }).waitFor({ timeout: 1000 });
    assert.equal(await count(page), 5, 'snapshot (1) + 4 live records');

    // Microblog: a post published through the API shows up live ...
    await gw.publish('posts', { key: 'api-1', data: { author: 'api', text: `from the API over ${transport}` } });
    await page.locator('[data-testid=post]', { hasText: `from the API over ${transport}` }).waitFor({ timeout: 1000 });
    // ... and one published from the page's form goes through the publish API and comes back, newest first.
    await page.fill('[data-testid=post-author]', 'Ada');
    await page.fill('[data-testid=post-text]', `hello from the form over ${transport}`);
    await page.click('[data-testid=post-submit]');
    await page.locator('[data-testid=post]', { hasText: `hello from the form over ${transport}` }).waitFor({ timeout: 1000 });
    const posts = await page.locator('[data-testid=post-text-out]').allTextContents();
    assert.deepEqual(posts, [`hello from the form over ${transport}`, `from the API over ${transport}`]);
    assert.equal(await page.inputValue('[data-testid=post-text]'), '', 'form cleared after publishing');

    await screenshot(page, `live-${transport}`);
    assert.deepEqual(errors, [], 'no console errors');
  });

  test(`after a gateway restart the page resumes over ${transport.toUpperCase()} and misses nothing`, T, async (t) => {
    const { gw, page, errors } = await setup(t);
    await gw.price('AAPL', 100);
    await gw.price('MSFT', 200);
    await gw.publish('posts', { key: 'p0', data: { author: 'a', text: 'before the restart' } });
    // maxDelay bounds the backoff so the test does not wait long for the reconnect.
    await page.goto(`${gw.url}/?transport=${transport}&symbols=AAPL,MSFT&maxDelay=2000`);
    await waitLive(page);
    await price(page, 'MSFT').filter({ hasText: '200.00' }).waitFor();
    await page.locator('[data-testid=post]').first().waitFor();
    await recordSeen(page);
    await gw.price('AAPL', 101);
    await price(page, 'AAPL').filter({ hasText: '101.00' }).waitFor({ timeout: 1000 });
    const before = await count(page);
    assert.equal(before, 4, '2 price snapshots + 1 post snapshot + 1 live');
    const errorsBefore = errors.length;

    // Stop the page's gateway (SIGTERM: WS close 1012 / SSE stream ends).
    await gw.stop();
    await page.locator('[data-testid=conn-state][data-state=reconnecting]').waitFor({ timeout: 5000 });

    // While the page's gateway is down, records are written to the same log
    // by another instance on another port (same data dir, run in between).
    const writer = new Gateway({ dataDir: gw.dataDir });
    await writer.start(0);
    const aapl = [102.01, 103.02, 104.03, 105.04, 106.05];
    const msft = [201.1, 202.2, 203.3];
    for (let i = 0; i < aapl.length; i++) {
      await writer.price('AAPL', aapl[i]);
      if (i < msft.length) await writer.price('MSFT', msft[i]);
    }
    await writer.price('GOOG', 999); // not subscribed: must not arrive
    await writer.publish('posts', { key: 'p1', data: { author: 'b', text: 'while you were away' } });
    await writer.stop();
    assert.equal(await page.getAttribute('[data-testid=conn-state]', 'data-state'), 'reconnecting');

    // The gateway comes back on the same port and data dir; the page reconnects by itself.
    // The promise: once the node is ready (start() waits for /readyz), the
    // page has resumed within its next reconnect attempt (at most maxDelay)
    // plus one second.
    await gw.start(gw.port);
    const line = page.locator('[data-testid=resume-line]');
    await line.filter({ hasText: 'resumed: 9 missed updates delivered' }).waitFor({ timeout: RESUMED_WITHIN });
    assert.equal(await page.getAttribute('[data-testid=conn-state]', 'data-state'), 'live');
    assert.equal(await line.textContent(), 'resumed: 9 missed updates delivered (posts 1, prices 8)');
    await price(page, 'AAPL').filter({ hasText: '106.05' }).waitFor({ timeout: 1000 });
    assert.equal(await price(page, 'MSFT').textContent(), '203.30');
    await page.locator('[data-testid=post]', { hasText: 'while you were away' }).waitFor({ timeout: 1000 });
    assert.equal(await text(page, 'reconnects'), '1');
    assert.equal(await page.isHidden('[data-testid=reset-line]'), true, 'no data was reported missing');

    // Exactly the missed records, in order, once each, marked as replayed.
    const got = (await seen(page)).slice(1); // after the live AAPL 101
    const missed = got.filter((r) => r.replayed);
    assert.deepEqual(missed.filter((r) => r.key === 'AAPL').map((r) => r.price), aapl);
    assert.deepEqual(missed.filter((r) => r.key === 'MSFT').map((r) => r.price), msft);
    assert.deepEqual(missed.filter((r) => r.topic === 'posts').map((r) => r.text), ['while you were away']);
    assert.equal(missed.length, 9);
    assert.equal(got.length, 9, `nothing else arrived: ${JSON.stringify(got)}`);
    assert.ok(got.every((r) => !r.snapshot), 'resumed from the cursor, not from a new snapshot');
    assert.equal(await count(page), before + 9);

    // And it is live again.
    await gw.price('MSFT', 204.4);
    await price(page, 'MSFT').filter({ hasText: '204.40' }).waitFor({ timeout: 1000 });
    const last = (await seen(page)).at(-1);
    assert.equal(last.replayed, false);

    await screenshot(page, `resumed-${transport}`);
    // Only the failed reconnect attempts while the gateway was down or still
    // opening its log (it answers 503 then) may have logged errors.
    const late = errors.slice(errorsBefore).filter((e) => !/ERR_CONNECTION_REFUSED|ERR_CONNECTION_RESET|ERR_EMPTY_RESPONSE|ERR_INCOMPLETE_CHUNKED_ENCODING|WebSocket connection to|status of 503 \(Service Unavailable\)/.test(e));
    assert.deepEqual(late, [], 'no other console errors');
    assert.deepEqual(errors.slice(0, errorsBefore), [], 'no console errors before the restart');
  });

  test(`adding and removing symbols changes what is received over ${transport.toUpperCase()}`, T, async (t) => {
    const { gw, page, errors } = await setup(t);
    await gw.price('AAPL', 110);
    await gw.price('MSFT', 210);
    await gw.price('GOOG', 310);
    await page.goto(`${gw.url}/?transport=${transport}&symbols=AAPL,MSFT`);
    await waitLive(page);
    await price(page, 'MSFT').filter({ hasText: '210.00' }).waitFor();
    await recordSeen(page);

    // Not subscribed to GOOG: its records do not arrive.
    await gw.price('GOOG', 311);
    await gw.price('AAPL', 111);
    await price(page, 'AAPL').filter({ hasText: '111.00' }).waitFor({ timeout: 1000 });
    assert.deepEqual((await seen(page)).map((r) => r.key), ['AAPL']);

    // Remove MSFT: its row goes, and its records stop arriving.
    await page.evaluate(() => { window.__seen.length = 0; });
    await page.click('[data-testid=remove-MSFT]');
    await page.locator('[data-testid=ticker-MSFT]').waitFor({ state: 'detached' });
    // Wait for the resubscription (fresh snapshot of AAPL) to settle.
    await until(async () => (await seen(page)).some((r) => r.key === 'AAPL' && r.snapshot), 'AAPL snapshot after the key change');
    await page.evaluate(() => { window.__seen.length = 0; });
    await gw.price('MSFT', 212);
    await gw.price('AAPL', 112);
    await price(page, 'AAPL').filter({ hasText: '112.00' }).waitFor({ timeout: 1000 });
    await sleep(200);
    assert.deepEqual((await seen(page)).map((r) => `${r.key} ${r.price}`), ['AAPL 112']);

    // Add GOOG: its current price comes from the snapshot at once, then it updates live.
    await page.click('[data-testid=suggest-GOOG]');
    await price(page, 'GOOG').filter({ hasText: '311.00' }).waitFor({ timeout: 1000 });
    await gw.price('GOOG', 312.5);
    await price(page, 'GOOG').filter({ hasText: '312.50' }).waitFor({ timeout: 1000 });
    const keys = new Set((await seen(page)).map((r) => r.key));
    assert.deepEqual([...keys].sort(), ['AAPL', 'GOOG']);
    assert.deepEqual(await page.locator('[data-testid=ticker-list] > li').evaluateAll((els) => els.map((e) => e.dataset.symbol)), ['AAPL', 'GOOG']);

    // Remove everything: no prices subscription at all, records stop.
    await page.click('[data-testid=remove-AAPL]');
    await page.click('[data-testid=remove-GOOG]');
    await page.locator('[data-testid=tickers-empty]').waitFor({ state: 'visible' });
    await sleep(200);
    const n = await count(page);
    await gw.price('AAPL', 113);
    await gw.publish('posts', { key: 'p9', data: { author: 'c', text: 'still live' } });
    await page.locator('[data-testid=post]', { hasText: 'still live' }).waitFor({ timeout: 1000 });
    assert.equal(await count(page), n + 1, 'only the post arrived');

    await screenshot(page, `symbols-${transport}`);
    assert.deepEqual(errors, [], 'no console errors');
  });
}

for (const transport of ['ws', 'sse']) {
  test(`a wiped log is reported plainly and reloaded from a snapshot over ${transport.toUpperCase()}`, T, async (t) => {
    const { gw, page } = await setup(t);
    await gw.price('AAPL', 100);
    await page.goto(`${gw.url}/?transport=${transport}&symbols=AAPL,MSFT&maxDelay=2000`);
    await waitLive(page);
    await price(page, 'AAPL').filter({ hasText: '100.00' }).waitFor();
    const reset = page.locator('[data-testid=reset-line]');
    assert.equal(await reset.isHidden(), true);

    // The gateway comes back on the same port with an empty log: the page's
    // cursor names the old log (another epoch), so it cannot be honoured.
    await gw.stop();
    await page.locator('[data-testid=conn-state][data-state=reconnecting]').waitFor({ timeout: 5000 });
    const wiped = new Gateway();
    await wiped.start(0);
    await wiped.price('MSFT', 250.25);
    await wiped.stop();
    gw.dataDir = wiped.dataDir;
    await gw.start(gw.port); // ready: the page resumes within RESUMED_WITHIN (see above)
    await reset.filter({ hasText: 'posts (epoch), prices (epoch)' }).waitFor({ timeout: RESUMED_WITHIN });
    assert.equal(await page.getAttribute('[data-testid=conn-state]', 'data-state'), 'live');
    assert.equal(await reset.textContent(), 'missed data on posts (epoch), prices (epoch): reloaded from a fresh snapshot');
    // The fresh snapshot of the new log follows.
    await price(page, 'MSFT').filter({ hasText: '250.25' }).waitFor({ timeout: 1000 });
    assert.equal(await price(page, 'AAPL').textContent(), '—', 'values from the old log are dropped');
    await screenshot(page, `reset-${transport}`);
  });
}

test('switching transport in the page keeps the dashboard live', T, async (t) => {
  const { gw, page, errors } = await setup(t);
  await gw.price('NVDA', 500);
  await page.goto(`${gw.url}/?transport=ws&symbols=NVDA`);
  await waitLive(page);
  await price(page, 'NVDA').filter({ hasText: '500.00' }).waitFor();
  await page.click('[data-testid=transport-sse]');
  await page.locator('[data-testid=state-text]', { hasText: 'live · SSE' }).waitFor();
  assert.equal(await page.getAttribute('[data-testid=transport-sse]', 'aria-checked'), 'true');
  await gw.price('NVDA', 501);
  await price(page, 'NVDA').filter({ hasText: '501.00' }).waitFor({ timeout: 1000 });
  await page.click('[data-testid=transport-ws]');
  await page.locator('[data-testid=state-text]', { hasText: 'live · WebSocket' }).waitFor();
  await gw.price('NVDA', 502);
  await price(page, 'NVDA').filter({ hasText: '502.00' }).waitFor({ timeout: 1000 });
  assert.deepEqual(errors, [], 'no console errors');
});

test('looks right on the demo feed, desktop and phone width', T, async (t) => {
  const config = new URL('./pushgate-demo.toml', import.meta.url).pathname;
  const { gw, page, errors } = await setup(t, { config });
  await gw.publish('posts', { key: 'demo-1', data: { author: 'Grace', text: 'Markets open: watching NVDA and TSLA today.' } });
  await gw.publish('posts', { key: 'demo-2', data: { author: 'Linus', text: 'pushgate resumed my dashboard after a deploy without missing a tick.' } });
  // The demo picks symbols at random: make sure AAPL has a value before the page asks for a snapshot.
  await gw.publish('prices', { key: 'AAPL', data: { symbol: 'AAPL', price: 150.25, open: 150.25, change: 0, change_pct: 0, ts: Date.now() } });
  await page.goto(`${gw.url}/?transport=ws&symbols=AAPL,MSFT,NVDA,TSLA,AMZN`);
  await waitLive(page);
  // The demo ticker moves prices: the page follows.
  const first = await price(page, 'AAPL').textContent();
  await until(async () => (await count(page)) > 20, 'demo records');
  await sleep(5000); // let the sparklines fill
  const after = await Promise.all(['AAPL', 'MSFT', 'NVDA', 'TSLA', 'AMZN'].map((s) => price(page, s).textContent()));
  assert.ok(after.every((p) => /^\d[\d,]*\.\d\d$/.test(p)), `prices shown: ${after}`);
  assert.ok(first !== '—');
  await screenshot(page, 'dashboard-desktop');
  await page.setViewportSize({ width: 390, height: 844 });
  await sleep(300);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `no horizontal scrolling at phone width (overflow ${overflow}px)`);
  await screenshot(page, 'dashboard-phone');
  assert.deepEqual(errors, [], 'no console errors');
});

for (const transport of ['ws', 'sse']) {
  test(`the watchlist with a gateway-side filter and JSON Patch deltas over ${transport.toUpperCase()}`, T, async (t) => {
    const { gw: gateway, page, errors } = await setup(t);
    // Quotes with descriptive fields that never change, as a real feed has:
    // a patch of the moving fields is then shorter than the whole value.
    const gw = {
      url: gateway.url,
      price: (sym, value) => gateway.price(sym, value, { name: `${sym} Inc.`, exchange: 'NASDAQ', currency: 'USD', sector: 'Technology', isin: `US-${sym}-0001` }),
    };
    // change_pct from an open of 100: AAPL +1%, MSFT +5%, NVDA +0.5%.
    await gw.price('AAPL', 101);
    await gw.price('MSFT', 105);
    await gw.price('NVDA', 100.5);
    const frames = [];
    page.on('websocket', (ws) => ws.on('framereceived', (f) => frames.push(String(f.payload))));

    await page.goto(`${gw.url}/?transport=${transport}&symbols=AAPL,MSFT,NVDA&delta=1&minMove=2`);
    await waitLive(page);
    assert.equal(await page.isChecked('[data-testid=opt-delta]'), true);
    assert.equal(await page.inputValue('[data-testid=opt-min-move]'), '2');
    assert.equal(await text(page, 'filter-text'), '|move| ≥ 2%');
    // The snapshot holds only the quote that passes the filter.
    await price(page, 'MSFT').filter({ hasText: '105.00' }).waitFor({ timeout: 2000 });
    assert.equal(await price(page, 'AAPL').textContent(), '—');
    assert.equal(await price(page, 'NVDA').textContent(), '—');
    assert.equal(await page.getAttribute('[data-testid=ticker-AAPL]', 'data-outside'), 'true');

    // After a snapshot the next quote of a key is whole; the ones after it come as
    // patches, and the page shows the whole value rebuilt from each.
    await gw.price('MSFT', 106.25);
    await price(page, 'MSFT').filter({ hasText: '106.25' }).waitFor({ timeout: 1000 });
    assert.equal(await text(page, 'patches-applied'), '0');
    await gw.price('MSFT', 107.5);
    await price(page, 'MSFT').filter({ hasText: '107.50' }).waitFor({ timeout: 1000 });
    assert.equal(await text(page, 'change-MSFT'), '+7.50 (+7.50%)');
    assert.equal(await text(page, 'patches-applied'), '1');
    // AAPL moves out of the band: it enters, whole.
    await gw.price('AAPL', 103);
    await price(page, 'AAPL').filter({ hasText: '103.00' }).waitFor({ timeout: 1000 });
    assert.equal(await page.getAttribute('[data-testid=ticker-AAPL]', 'data-outside'), 'false');
    // MSFT falls back inside the band: it leaves (dimmed, marked outside) ...
    await gw.price('MSFT', 101);
    await page.locator('[data-testid=ticker-MSFT][data-outside=true]').waitFor({ timeout: 1000 });
    assert.equal(await price(page, 'MSFT').textContent(), '107.50', 'a leave carries no value');
    // ... and comes back whole below the band.
    await gw.price('MSFT', 97);
    await price(page, 'MSFT').filter({ hasText: '97.00' }).waitFor({ timeout: 1000 });
    assert.equal(await page.getAttribute('[data-testid=ticker-MSFT]', 'data-outside'), 'false');
    // Another AAPL quote is a patch again; NVDA's small moves never reach the page.
    const received = await count(page);
    await gw.price('NVDA', 100.7);
    await gw.price('AAPL', 104.5);
    await price(page, 'AAPL').filter({ hasText: '104.50' }).waitFor({ timeout: 1000 });
    assert.equal(await count(page), received + 1, 'the filtered-out NVDA quote was not sent');
    assert.equal(await text(page, 'patches-applied'), '2');
    assert.equal(await price(page, 'NVDA').textContent(), '—');

    if (transport === 'ws') {
      const records = frames.map((f) => JSON.parse(f)).filter((m) => m.type === 'record');
      const patched = records.filter((m) => m.patch !== undefined);
      assert.equal(patched.length, 2, `two records came as patches: ${JSON.stringify(records)}`);
      for (const m of patched) {
        assert.equal(m.data, undefined, 'a patch record carries no whole data');
        assert.ok(m.patch.every((op) => op.op === 'replace'), JSON.stringify(m.patch));
        assert.ok(!m.patch.some((op) => ['', '/symbol', '/open', '/name', '/isin'].includes(op.path)), `unchanged fields are not sent: ${JSON.stringify(m.patch)}`);
      }
      assert.ok(!records.some((m) => m.key === 'NVDA'), 'the filter runs in the gateway');
    }

    // Turning both options off subscribes again: every symbol, whole values.
    await page.uncheck('[data-testid=opt-delta]');
    await page.fill('[data-testid=opt-min-move]', '');
    await page.press('[data-testid=opt-min-move]', 'Enter');
    await price(page, 'NVDA').filter({ hasText: '100.70' }).waitFor({ timeout: 2000 });
    assert.equal(await text(page, 'filter-text'), 'none');
    await gw.price('AAPL', 99);
    await price(page, 'AAPL').filter({ hasText: '99.00' }).waitFor({ timeout: 1000 });
    assert.equal(await text(page, 'patches-applied'), '2', 'no patches without the delta option');
    await screenshot(page, `filter-delta-${transport}`);
    assert.deepEqual(errors, [], 'no console errors');
  });
}
