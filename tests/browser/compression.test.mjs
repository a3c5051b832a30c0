// WebSocket permessage-deflate (RFC 7692) in real headless Chromium: with
// `websocket.compression = "shared"` the browser's offer is accepted (without
// context takeover both ways), its own compressed messages (the subscribe) are
// inflated by the gateway, and compressed records arrive intact; with the
// default ("off") nothing is negotiated.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Gateway, openBrowser, tempDir } from './harness.mjs';

const T = { timeout: 90000 };

function sharedConfig() {
  const config = join(tempDir('pushgate-deflate-'), 'pushgate.toml');
  writeFileSync(config, `${readFileSync(new URL('./pushgate-test.toml', import.meta.url), 'utf8')}
[websocket]
compression = "shared"
`);
  return config;
}

/** A 20-field row, compressible, and a tiny one (sent uncompressed if deflate does not shrink it). */
const row = (i) => Object.fromEntries(Array.from({ length: 20 }, (_, f) => [`field_${f}`, `value ${f} of row ${i}`]));

/** Opens a WebSocket on the page, subscribes to `posts`; resolves with the negotiated extensions. */
async function open(page) {
  return page.evaluate(() => new Promise((resolve, reject) => {
    window.__got = [];
    const ws = new WebSocket(`ws://${location.host}/ws`);
    window.__ws = ws;
    ws.onerror = () => reject(new Error('websocket error'));
    // A long, repetitive key list: Chromium sends it compressed (RSV1).
    const keys = [...Array.from({ length: 21 }, (_, i) => `k${i}`), ...Array.from({ length: 200 }, (_, i) => `padding-key-${i}`)];
    ws.onopen = () => ws.send(JSON.stringify({ type: 'subscribe', id: 1, topic: 'posts', snapshot: false, keys }));
    ws.onmessage = (e) => {
      const m = JSON.parse(e.data);
      if (m.type === 'subscribed') resolve(ws.extensions);
      else if (m.data !== undefined) window.__got.push(m.data);
      else if (m.type === 'error') reject(new Error(e.data));
    };
  }));
}

for (const [name, shared] of [['shared', true], ['off', false]]) {
  test(`websocket.compression = "${name}": Chromium ${shared ? 'negotiates' : 'does not negotiate'} permessage-deflate and records arrive intact`, T, async (t) => {
    const gw = await new Gateway(shared ? { config: sharedConfig() } : {}).start();
    const { context, page } = await openBrowser();
    t.after(async () => { await context.close().catch(() => {}); await gw.stop(); });
    await page.goto(`${gw.url}/healthz`);
    const extensions = await open(page);
    if (shared) {
      assert.match(extensions, /^permessage-deflate/, `negotiated: ${extensions}`);
      assert.match(extensions, /server_no_context_takeover/);
      assert.match(extensions, /client_no_context_takeover/);
    } else {
      assert.equal(extensions, '');
    }
    const sent = [...Array.from({ length: 20 }, (_, i) => row(i)), { n: 1 }];
    await gw.publish('posts', { records: sent.map((data, i) => ({ key: `k${i}`, data })) });
    await page.waitForFunction((n) => window.__got.length >= n, sent.length, { timeout: 10000 });
    assert.deepEqual(await page.evaluate(() => window.__got), sent);
    assert.equal(await page.evaluate(() => window.__ws.readyState), 1, 'still open');
  });
}
