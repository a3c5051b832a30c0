// HTTP/2 in real headless Chromium: with [server.tls] (a certificate made
// at test time) ten SSE streams share one connection; over cleartext
// HTTP/1.1 the browser's six-connections-per-host limit holds the rest back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { Gateway, CHROMIUM, CHROMIUM_ARGS, tempDir, screenshot, sleep } from './harness.mjs';

const T = { timeout: 90000 };
// The gateway's certificate is self-signed: the harness's own fetches accept it.
process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0';

function tlsConfig() {
  const dir = tempDir('pushgate-tls-');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-days', '1', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'), '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { stdio: 'ignore' });
  const config = join(dir, 'pushgate.toml');
  writeFileSync(config, `${readFileSync(new URL('./pushgate-test.toml', import.meta.url), 'utf8')}
[server.tls]
cert_file = "${join(dir, 'cert.pem')}"
key_file = "${join(dir, 'key.pem')}"
`);
  return config;
}

async function browser(extraArgs) {
  const context = await chromium.launchPersistentContext(tempDir('pushgate-chromium-'), {
    executablePath: CHROMIUM, headless: true, args: [...CHROMIUM_ARGS, ...extraArgs], timeout: 30000,
  });
  return { context, page: context.pages()[0] ?? await context.newPage() };
}

/** Opens `n` EventSources on the page, one per key; returns nothing, fills window.__got. */
async function openStreams(page, n) {
  await page.evaluate((n) => {
    window.__got = Array.from({ length: n }, () => []);
    window.__open = Array.from({ length: n }, () => false);
    for (let i = 0; i < n; i++) {
      const es = new EventSource(`/sse?topic=prices&key=S${i}&snapshot=false`);
      es.addEventListener('live', () => { window.__open[i] = true; });
      es.onmessage = (e) => window.__got[i].push(JSON.parse(e.data).data.price);
    }
  }, n);
}

const opened = (page) => page.evaluate(() => window.__open.filter(Boolean).length);

async function publishAll(gw, n, price) {
  await gw.publish('prices', { records: Array.from({ length: n }, (_, i) => ({ key: `S${i}`, data: { price } })) });
}

test('ten SSE streams on one page all receive records over HTTP/2 (TLS); over HTTP/1.1 the seventh waits', T, async (t) => {
  const gw = await new Gateway({ config: tlsConfig(), scheme: 'https' }).start();
  const { context, page } = await browser(['--ignore-certificate-errors']);
  t.after(async () => { await context.close().catch(() => {}); await gw.stop(); });

  await page.goto(`${gw.url}/healthz`);
  const protocol = await page.evaluate(() => performance.getEntriesByType('navigation')[0]?.nextHopProtocol);
  assert.equal(protocol, 'h2', 'the page talks HTTP/2 to the gateway');
  await openStreams(page, 10);
  const deadline = Date.now() + 10000;
  while (await opened(page) < 10 && Date.now() < deadline) await sleep(50);
  assert.equal(await opened(page), 10, 'all ten streams are live');
  await publishAll(gw, 10, 42);
  await page.waitForFunction(() => window.__got.every((g) => g.includes(42)), null, { timeout: 5000 });
  await screenshot(page, 'http2-ten-sse');

  // The control: the same page over cleartext HTTP/1.1 gets six streams at most.
  const plain = await new Gateway().start();
  t.after(() => plain.stop());
  const h1 = await browser([]);
  t.after(() => h1.context.close().catch(() => {}));
  await h1.page.goto(`${plain.url}/healthz`);
  await openStreams(h1.page, 10);
  await sleep(2000);
  await publishAll(plain, 10, 7);
  await sleep(1000);
  const got = await h1.page.evaluate(() => window.__got.filter((g) => g.includes(7)).length);
  assert.ok(await opened(h1.page) <= 6 && got <= 6, `over HTTP/1.1 at most six streams run (open ${await opened(h1.page)}, got ${got})`);
});
