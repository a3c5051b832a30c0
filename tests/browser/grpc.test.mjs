// gRPC-Web and HTTP/2 in real headless Chromium against the real gateway.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Gateway, openBrowser, screenshot, sleep } from './harness.mjs';

const T = { timeout: 90000 };

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

test('the gRPC-Web page lists posts from offset 0 and shows a new post within a second', T, async (t) => {
  const gw = await new Gateway().start();
  const { page, errors, close } = await openBrowser();
  t.after(async () => { await close().catch(() => {}); await gw.stop(); });

  // Five posts, then the first one edited: from offset 0 the page replays all six records.
  for (let i = 1; i <= 5; i++) {
    await gw.publish('posts', { key: `p${i}`, data: { author: `author${i}`, text: `post number ${i}` } });
  }
  await gw.publish('posts', { key: 'p1', data: { author: 'author1', text: 'post number 1, edited' } });

  const grpcWeb = [];
  page.on('request', (r) => { if (r.url().includes('/pushgate.v1.Gateway/')) grpcWeb.push(r.headers()['content-type']); });
  await page.goto(`${gw.url}/grpc.html`);
  await page.locator('[data-testid=grpc-state][data-state=live]').waitFor({ timeout: 10000 });
  const items = page.locator('[data-testid=grpc-post]');
  assert.equal(await items.count(), 5, 'one entry per post');
  assert.equal(await page.locator('[data-testid=grpc-count]').textContent(), '6', 'every record from offset 0');
  assert.match(await page.locator('[data-testid=grpc-post][data-key=p1]').textContent(), /edited/);
  assert.ok(grpcWeb.length >= 1 && grpcWeb.every((ct) => ct.startsWith('application/grpc-web')), JSON.stringify(grpcWeb));

  // A new post appears within a second.
  const started = Date.now();
  await gw.publish('posts', { key: 'p6', data: { author: 'late', text: 'hello over gRPC-Web' } });
  await page.locator('[data-testid=grpc-post][data-key=p6]').filter({ hasText: 'hello over gRPC-Web' }).waitFor({ timeout: 1000 });
  const elapsed = Date.now() - started;
  assert.ok(elapsed < 1000, `shown after ${elapsed} ms`);

  // The page's own form publishes through the Publish RPC, and the post comes back on the stream.
  await page.fill('[data-testid=grpc-author]', 'me');
  await page.fill('[data-testid=grpc-text]', 'sent with Publish');
  await page.click('[data-testid=grpc-send]');
  await page.locator('[data-testid=grpc-post]').filter({ hasText: 'sent with Publish' }).waitFor({ timeout: 2000 });

  // A drain ends the stream with UNAVAILABLE and its cursor; the page resumes on the restarted node with nothing repeated.
  const before = Number(await page.locator('[data-testid=grpc-count]').textContent());
  await gw.stop();
  await gw.start();
  await gw.publish('posts', { key: 'p7', data: { author: 'after', text: 'after the restart' } });
  await page.locator('[data-testid=grpc-post][data-key=p7]').waitFor({ timeout: 8000 });
  await until(async () => (await page.locator('[data-testid=grpc-state]').getAttribute('data-state')) === 'live', 'live again');
  assert.equal(Number(await page.locator('[data-testid=grpc-count]').textContent()), before + 1, 'resumed: only the new record');

  await screenshot(page, 'grpc-web-posts');
  assert.deepEqual(errors.filter((e) => !/ERR_CONNECTION_REFUSED|Failed to load resource/.test(e)), [], 'no console errors');
});
