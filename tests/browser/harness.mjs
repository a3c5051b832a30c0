// Test harness: starts the real gateway binary and Debian's Chromium.
//
// PUSHGATE_BIN overrides the gateway binary (default: target/debug/pushgate);
// CHROMIUM overrides the browser (default: /usr/bin/chromium).
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync, mkdirSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(HERE, '..', '..');
export const BIN = process.env.PUSHGATE_BIN || join(ROOT, 'target', 'debug', 'pushgate');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const SCREENSHOTS = join(HERE, 'screenshots');
mkdirSync(SCREENSHOTS, { recursive: true });

/** Every process and temp dir we made, so nothing outlives the test process. */
const children = new Set();
const tempDirs = new Set();
function killAll() {
  for (const child of children) {
    try { child.kill('SIGKILL'); } catch { /* gone */ }
  }
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => { killAll(); process.exit(128 + (sig === 'SIGINT' ? 2 : 15)); });
}

export function tempDir(prefix) {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  tempDirs.add(dir);
  return dir;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** One gateway process; `restart()` keeps its port and data dir. */
export class Gateway {
  /** @param {{config?: string, dataDir?: string, token?: () => string}} [opts] */
  constructor(opts = {}) {
    this.config = opts.config ?? join(HERE, 'pushgate-test.toml');
    this.token = opts.token; // publish with this bearer token
    this.scheme = opts.scheme ?? 'http'; // 'https' for a config with [server.tls]
    this.dataDir = opts.dataDir ?? tempDir('pushgate-data-');
    this.port = null;
    this.proc = null;
    this.log = '';
  }

  get url() { return `${this.scheme}://127.0.0.1:${this.port}`; }

  /** Starts on `port` (0: a free one), waits until /readyz answers 200. */
  async start(port = this.port ?? 0) {
    if (!existsSync(BIN)) throw new Error(`gateway binary not found at ${BIN}: run cargo build (or set PUSHGATE_BIN)`);
    const proc = spawn(BIN, ['--config', this.config, '--listen', `127.0.0.1:${port}`, '--data-dir', this.dataDir], {
      cwd: ROOT,
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info', NO_COLOR: '1' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    children.add(proc);
    this.proc = proc;
    proc.once('exit', () => children.delete(proc));
    const listening = new Promise((resolveListen, reject) => {
      let buf = '';
      const timer = setTimeout(() => reject(new Error(`gateway did not start in 15 s:\n${buf}`)), 15000);
      proc.stderr.setEncoding('utf8');
      proc.stderr.on('data', (chunk) => {
        buf += chunk;
        this.log += chunk;
        const m = /listening on https?:\/\/127\.0\.0\.1:(\d+)/.exec(buf.replace(/\x1b\[[0-9;]*m/g, ''));
        if (m) { clearTimeout(timer); resolveListen(Number(m[1])); }
      });
      proc.once('exit', (code) => { clearTimeout(timer); reject(new Error(`gateway exited (${code}) before listening:\n${buf}`)); });
    });
    this.port = await listening;
    for (let i = 0; i < 150; i++) {
      const res = await fetch(`${this.url}/readyz`).catch(() => null);
      if (res?.status === 200) return this;
      await sleep(100);
    }
    throw new Error(`gateway on ${this.port} never became ready:\n${this.log}`);
  }

  /** SIGTERM, and wait for the process to exit (SIGKILL after 15 s). */
  async stop() {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 15000);
    await exited;
    clearTimeout(timer);
    this.proc = null;
  }

  /** Publishes one record (or a batch with `records`) through the HTTP API. */
  async publish(topic, body) {
    const headers = { 'content-type': 'application/json' };
    if (this.token) headers.authorization = `Bearer ${this.token()}`;
    const res = await fetch(`${this.url}/topics/${topic}`, { method: 'POST', headers, body: JSON.stringify(body) });
    const json = await res.json();
    if (!res.ok) throw new Error(`publish ${topic}: ${res.status} ${JSON.stringify(json)}`);
    return json;
  }

  price(symbol, price, extra = {}) {
    const open = 100;
    const change = Math.round((price - open) * 100) / 100;
    return this.publish('prices', {
      key: symbol,
      data: { symbol, price, open, change, change_pct: Math.round((change / open) * 10000) / 100, ts: Date.now(), ...extra },
    });
  }
}

export const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

/**
 * Launches Chromium with a fresh profile and opens one page. The returned
 * `errors` collects console errors and uncaught page errors.
 */
export async function openBrowser({ width = 1280, height = 900 } = {}) {
  const profile = tempDir('pushgate-chromium-');
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width, height },
    timeout: 30000,
  });
  const page = context.pages()[0] ?? await context.newPage();
  page.setDefaultTimeout(10000);
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()} (${m.location()?.url ?? ''})`); });
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  return { context, page, errors, close: () => context.close() };
}

/** Starts collecting every record the page's client delivers into `window.__seen`. */
export async function recordSeen(page) {
  await page.evaluate(() => {
    window.__seen = [];
    const hook = (client) => client.on('record', (r) => window.__seen.push({
      topic: r.topic, key: r.key, price: r.data?.price, text: r.data?.text,
      snapshot: !!r.snapshot, replayed: !!r.replayed, offset: r.offset, partition: r.partition,
    }));
    hook(window.pushgate);
  });
}

export const seen = (page) => page.evaluate(() => window.__seen);

/** Waits until the dashboard says it is live. */
export async function waitLive(page, timeout = 10000) {
  await page.locator('[data-testid=conn-state][data-state=live]').waitFor({ timeout });
}

export const screenshot = (page, name) => page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true });

/** An HS256 JWT for `payload`, signed with `secret`. */
export function jwt(payload, secret) {
  const part = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const head = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(payload)}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}
