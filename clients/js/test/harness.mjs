// Test harness: the real gateway binary (target/debug/pushgate unless
// PUSHGATE_BIN says otherwise) on 127.0.0.1 with a temporary data dir, and
// helpers. Shares no code with the gateway.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(HERE, '..', '..', '..');
export const BIN = process.env.PUSHGATE_BIN || join(ROOT, 'target', 'debug', 'pushgate');
export const TESTDATA = join(ROOT, 'clients', 'testdata');
export const VECTORS = join(ROOT, 'api', 'conformance');
export const HMAC_SECRET = 'sdk-tests-only-hmac-secret-0123456789abcdef';

const children = new Set();
const dirs = new Set();
process.on('exit', () => {
  for (const c of children) { try { c.kill('SIGKILL'); } catch { /* gone */ } }
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns truthy; throws after `timeout` ms with `what`. */
export async function waitFor(fn, what, timeout = 10000) {
  const until = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** An HS256 JWT for `payload`. */
export function jwt(payload, secret = HMAC_SECRET) {
  const part = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const head = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(payload)}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}

/** A token for every topic, valid `seconds`. */
export function token(seconds) {
  return jwt({ sub: 'sdk-test', exp: Math.floor(Date.now() / 1000) + seconds, pushgate: { subscribe: ['*'], publish: ['*'] } });
}

/** One gateway process; `restart()` keeps its port and data dir. */
export class Gateway {
  constructor({ config = 'gateway.toml', token: tok } = {}) {
    this.config = join(TESTDATA, config);
    this.token = tok;
    this.dataDir = mkdtempSync(join(tmpdir(), 'pushgate-sdk-'));
    dirs.add(this.dataDir);
    this.port = 0;
    this.proc = null;
    this.log = '';
  }

  get url() { return `http://127.0.0.1:${this.port}`; }

  async start() {
    if (!existsSync(BIN)) throw new Error(`no gateway binary at ${BIN}: cargo build first (or set PUSHGATE_BIN)`);
    const proc = spawn(BIN, ['--config', this.config, '--listen', `127.0.0.1:${this.port}`, '--data-dir', this.dataDir], {
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn,pushgate=info', NO_COLOR: '1' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    children.add(proc);
    proc.once('exit', () => children.delete(proc));
    this.proc = proc;
    this.port = await new Promise((ok, fail) => {
      let buf = '';
      const timer = setTimeout(() => fail(new Error(`gateway did not listen in 15 s:\n${buf}`)), 15000);
      proc.stderr.setEncoding('utf8');
      proc.stderr.on('data', (chunk) => {
        buf += chunk;
        this.log += chunk;
        const m = /listening on https?:\/\/127\.0\.0\.1:(\d+)/.exec(buf);
        if (m) { clearTimeout(timer); ok(Number(m[1])); }
      });
      proc.once('exit', (code) => { clearTimeout(timer); fail(new Error(`gateway exited (${code}):\n${buf}`)); });
    });
    await waitFor(async () => (await fetch(`${this.url}/readyz`).catch(() => null))?.status === 200, 'readyz', 15000);
    return this;
  }

  /** SIGKILL: no drain, no close frames; the process is gone at once. */
  async kill() { await this._signal('SIGKILL'); }

  /** SIGTERM: the drain (WebSocket close 1012, SSE retry then end). */
  async stop() { await this._signal('SIGTERM'); }

  async _signal(sig) {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill(sig);
    const t = setTimeout(() => proc.kill('SIGKILL'), 15000);
    await exited;
    clearTimeout(t);
    this.proc = null;
  }

  async restart() { await this.start(); }

  /** Wipes the log (a new epoch on the next start). */
  wipe() { rmSync(this.dataDir, { recursive: true, force: true }); }

  async publish(topic, body) {
    const headers = { 'content-type': 'application/json' };
    if (this.token) headers.authorization = `Bearer ${this.token()}`;
    const res = await fetch(`${this.url}/topics/${topic}`, { method: 'POST', headers, body: JSON.stringify(body) });
    const json = await res.json();
    if (!res.ok) throw new Error(`publish ${topic}: ${res.status} ${JSON.stringify(json)}`);
    return json;
  }

  async close() {
    await this.kill();
    rmSync(this.dataDir, { recursive: true, force: true });
    dirs.delete(this.dataDir);
  }
}
