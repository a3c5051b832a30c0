/**
 * @pushgate/client — the pushgate client for browsers, React Native and Node.
 *
 * Connects over WebSocket (one socket, many subscriptions) or Server-Sent
 * Events (one stream per subscription), keeps the latest cursor of every
 * subscription, reconnects with exponential backoff and full jitter (and the
 * gateway's hints: close codes, `Retry-After`), resumes from the cursor, and
 * tells the application plainly when data was missed. No runtime
 * dependencies: it uses the global `WebSocket`, `EventSource` and `fetch`
 * (on Node 20, pass `WebSocket` from the `ws` package, or let the client
 * import it).
 *
 * This file is the one source: `static/pushgate.js`, which the gateway
 * serves, is built from it (clients/js/scripts/build.mjs).
 *
 * @example
 * import { Pushgate } from './pushgate.js';
 * const pg = new Pushgate({ transport: 'ws' });
 * pg.on('state', (s) => console.log('connection', s));
 * const sub = pg.subscribe('prices', {
 *   keys: ['AAPL', 'MSFT'],
 *   onRecord: (r) => { console.log(r.key, r.data.price); save(r.cursor); },
 *   onReset: (info) => console.warn('missed data, reloading', info),
 * });
 * sub.setKeys(['AAPL', 'NVDA']);
 * await pg.publish('posts', { key: 'p1', data: { text: 'hello' } });
 *
 * @module pushgate
 */

/** One RFC 6902 operation. */
export interface PatchOp {
  op: 'add' | 'remove' | 'replace' | 'move' | 'copy' | 'test';
  path: string;
  from?: string;
  value?: unknown;
}

/** A record as the gateway sends it (with `data` whole: patches are applied by the client). */
export interface PushRecord {
  type: 'record';
  topic: string;
  key: string | null;
  partition: number;
  /** A number; a decimal string on Kinesis streams. */
  offset: number | string;
  /** Resumes right after this record: persist it and pass it back as `cursor`. */
  cursor: string;
  /** Milliseconds since the epoch, when it was appended. */
  timestamp: number;
  /** The published JSON value (absent for `op: 'leave'`). */
  data?: unknown;
  /** With `delta`: the patch the gateway sent (removed once applied). */
  patch?: PatchOp[];
  /** True for the current-state records sent first. */
  snapshot?: boolean;
  /** `enter` / `leave` with a filter; `create`, `update`, `delete`, `read` on change-data-capture topics. */
  op?: string;
  /** Set by this client: delivered while catching up after a reconnect. */
  replayed?: boolean;
  /** Set by this client: `data` was rebuilt from a patch. */
  patched?: boolean;
  [member: string]: unknown;
}

/**
 * What `onReset` and the `reset` event receive: the gateway could not resume
 * from the cursor, so records were missed. A fresh snapshot follows when the
 * subscription asked for one; otherwise the application should reload.
 */
export interface ResetInfo {
  topic: string;
  /** `retention` (too old), `epoch` (the log was recreated) or null. */
  reason: string | null;
  /** The oldest cursor still available. */
  earliest: string | null;
}

/**
 * A snapshot that lacks keys of the view (the gateway never cuts one
 * silently): `reason` is `max_snapshot_records` (the gateway's cap cut it),
 * or on Kafka and Kinesis `view_max_keys` or `view_max_bytes` (keys were
 * evicted from the gateway's view; the embedded log reads them from disk
 * instead); `skipped`
 * is how many keys it left out, known once `live` arrives (null before; 0
 * when only eviction is known). Load the rest by page
 * (`GET /topics/{topic}/view`) or subscribe to fewer keys.
 */
export interface PartialSnapshot {
  topic: string;
  reason: string;
  skipped: number | null;
}

export interface ClientError {
  code: string;
  message: string;
  topic?: string;
  status?: number;
}

export interface SubscribeOptions {
  /** Keys to receive; leave out for every key. */
  keys?: string[];
  /** Only keys starting with this. */
  prefix?: string;
  /** Start with the current value of each key (default true). */
  snapshot?: boolean;
  /** Start right after this position instead (the last `record.cursor` you persisted). */
  cursor?: string | null;
  /** Only records whose `data` matches (the gateway's filter language). */
  filter?: unknown;
  /** Only these paths of `data` (e.g. ['price', 'meta.ts']). */
  fields?: string[];
  /** Later records of a key come as patches; the client applies them, so `onRecord` always sees whole values. */
  delta?: 'json-patch';
  /** At most this many records per second per key (conflation). */
  maxRate?: number;
  /** 'latest': a resume brings only each key's latest missed record. */
  resume?: 'all' | 'latest';
  onRecord?: (r: PushRecord) => void;
  onReset?: (info: ResetInfo) => void;
  /** The gateway's `subscribed` message. */
  onSubscribed?: (msg: Record<string, unknown>) => void;
  /** Catch-up is over (snapshot or resume): what follows is live. */
  onLive?: (msg: Record<string, unknown>) => void;
  /** The snapshot lacks keys of the view; called at `live`, when `skipped` is known. */
  onPartialSnapshot?: (info: PartialSnapshot) => void;
  /** Catch-up after a reconnect is done: `missed` records were delivered. */
  onResumed?: (info: { topic: string; missed: number }) => void;
  onError?: (err: ClientError) => void;
}

/** A `WebSocket` as in browsers (and the `ws` package, which also has `on`). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  on?: (event: string, fn: (...args: any[]) => void) => unknown;
  terminate?: () => void;
}
export type WebSocketCtor = new (url: string) => WebSocketLike;

/** An `EventSource` as in browsers. */
export interface EventSourceLike {
  close(): void;
  onmessage: ((ev: { data: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  addEventListener(type: string, fn: (ev: { data: string }) => void): void;
}
export type EventSourceCtor = new (url: string) => EventSourceLike;

export type ConnectionState = 'connecting' | 'live' | 'reconnecting' | 'closed';

export interface PushgateOptions {
  /** Base URL of the gateway (default: the page's origin). */
  url?: string;
  transport?: 'ws' | 'sse';
  /**
   * Called before every (re)connect and on `token_expiring`; the token goes
   * in the `access_token` query parameter (and in-band on WebSocket refresh).
   */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** Backoff base in ms (default 500). */
  minDelay?: number;
  /** Backoff cap in ms (default 15000). */
  maxDelay?: number;
  /** WebSocket: ping this often; reconnect if nothing arrives for twice that (default 30000). */
  heartbeat?: number;
  /** The WebSocket class (default: the global one; on Node without one, the `ws` package). */
  WebSocket?: WebSocketCtor;
  /**
   * The EventSource class (default: the global one). Without one (Node,
   * React Native) the client reads the stream with `fetch`, which also lets it
   * see refusals and their `Retry-After`.
   */
  EventSource?: EventSourceCtor | null;
  /** The fetch function (default: the global one). */
  fetch?: typeof fetch;
}

export interface FetchSinceOptions {
  cursor?: string | null;
  keys?: string[];
  prefix?: string;
  filter?: unknown;
  fields?: string[];
  /** At most this many records (the gateway caps it). */
  limit?: number;
}

export interface FetchSinceResult {
  records: PushRecord[];
  /** Where the next call starts: persist it. */
  cursor: string;
  /** More records are there now: call again with `cursor`. */
  more: boolean;
  /** False when the cursor could not be honoured (see `gap`). */
  recovered: boolean;
  /**
   * The cursor was older than anything retained (`retention`) or from another
   * log (`epoch`): records were missed, and `cursor` is the head. Reload your
   * state, or read what is left from `earliest`.
   */
  gap?: { reason: 'retention' | 'epoch'; earliest: string };
}

/** What the client does about a lost connection: the gateway's hint and the delay chosen. */
export interface DisconnectInfo {
  topic?: string;
  code: number | null;
  reason: string;
  /** HTTP status of a refused handshake (when the platform lets us see it). */
  status?: number;
  /** Seconds, from the refusal's `Retry-After`. */
  retryAfter?: number;
  /** Milliseconds until the next attempt. */
  delay: number;
}

type Handler = (arg: any) => void;
type Msg = Record<string, any>;

const OPEN = 1;

/** Full-jitter exponential backoff: a random delay in [0, min(cap, base * 2^attempt)). */
export function backoffDelay(attempt: number, base: number, cap: number): number {
  return Math.random() * Math.min(cap, base * 2 ** Math.min(attempt, 30));
}

/**
 * The delay before the next attempt after a lost connection, from the
 * gateway's hint: a WebSocket close code, or an HTTP refusal's status and
 * `Retry-After` (seconds). `attempt` counts failures in a row.
 */
export function reconnectDelay(
  hint: { code?: number | null; status?: number; retryAfter?: number },
  attempt: number,
  base: number,
  cap: number,
): number {
  const { code, status, retryAfter } = hint;
  if (retryAfter !== undefined && retryAfter >= 0) {
    // Never sooner than the gateway asked; jitter spreads a crowd of clients.
    return retryAfter * 1000 + Math.random() * base;
  }
  if (status === 429) return cap / 2 + Math.random() * (cap / 2);
  switch (code) {
    case 1012: // draining: another node (or this one restarted) takes us at once
    case 4010: // token expired: a fresh one is fetched before connecting
      return Math.random() * base;
    case 1002: // the client broke the protocol: never a tight loop
    case 1007:
    case 1009:
      return cap;
    default:
      return backoffDelay(attempt, base, cap);
  }
}

/**
 * Applies an RFC 6902 JSON Patch to a copy of `doc` and returns it (all six
 * operations; `test` failing throws).
 */
export function applyPatch(doc: unknown, ops: PatchOp[]): unknown {
  let root: any = structuredClone(doc);
  const parse = (path: string): string[] =>
    path === '' ? [] : path.slice(1).split('/').map((t) => t.replace(/~1/g, '/').replace(/~0/g, '~'));
  const get = (tokens: string[]): any =>
    tokens.reduce((at: any, t) => {
      if (at === null || typeof at !== 'object' || !(t in at)) throw new Error(`no value at /${tokens.join('/')}`);
      return at[t];
    }, root);
  const put = (tokens: string[], value: unknown, insert: boolean): void => {
    if (tokens.length === 0) { root = value; return; }
    const parent = get(tokens.slice(0, -1));
    const last = tokens[tokens.length - 1];
    if (Array.isArray(parent)) {
      const i = last === '-' ? parent.length : Number(last);
      if (!Number.isInteger(i) || i < 0 || i > parent.length) throw new Error(`bad array index ${last}`);
      if (insert) parent.splice(i, 0, value); else parent[i] = value;
    } else if (parent !== null && typeof parent === 'object') {
      parent[last] = value;
    } else {
      throw new Error(`cannot add below a scalar at /${tokens.join('/')}`);
    }
  };
  const remove = (tokens: string[]): unknown => {
    const value = get(tokens);
    if (tokens.length === 0) { root = null; return value; }
    const parent = get(tokens.slice(0, -1));
    const last = tokens[tokens.length - 1];
    if (Array.isArray(parent)) parent.splice(Number(last), 1); else delete parent[last];
    return value;
  };
  for (const op of ops) {
    const path = parse(op.path);
    switch (op.op) {
      case 'add': put(path, structuredClone(op.value), true); break;
      case 'replace': get(path); put(path, structuredClone(op.value), false); break;
      case 'remove': remove(path); break;
      case 'move': { const v = remove(parse(op.from ?? '')); put(path, v, true); break; }
      case 'copy': put(path, structuredClone(get(parse(op.from ?? ''))), true); break;
      case 'test':
        if (JSON.stringify(get(path)) !== JSON.stringify(op.value)) throw new Error(`test failed at ${op.path}`);
        break;
      default: throw new Error(`unknown patch op ${(op as PatchOp).op}`);
    }
  }
  return root;
}

/** A tiny event emitter. */
class Emitter {
  private _handlers = new Map<string, Set<Handler>>();
  /** Adds a handler; returns a function that removes it. */
  on(event: string, fn: Handler): () => void {
    let set = this._handlers.get(event);
    if (!set) { set = new Set(); this._handlers.set(event, set); }
    set.add(fn);
    return () => { this._handlers.get(event)?.delete(fn); };
  }
  protected _emit(event: string, arg?: unknown): void {
    for (const fn of this._handlers.get(event) ?? []) {
      try { fn(arg); } catch (e) { setTimeout(() => { throw e; }); }
    }
  }
}

/** A subscription to one topic. Created by {@link Pushgate.subscribe}. */
export class Subscription {
  readonly client: Pushgate;
  readonly topic: string;
  keys: string[] | undefined;
  prefix: string | undefined;
  snapshot: boolean;
  filter: unknown;
  fields: string[] | undefined;
  delta: 'json-patch' | undefined;
  maxRate: number | undefined;
  resume: 'all' | 'latest' | undefined;
  /**
   * Latest cursor: where a resume starts. Mid-snapshot it is the cursor of the
   * last snapshot record delivered (a snapshot position: the gateway goes on
   * with the keys after it); null only before the first snapshot record.
   */
  cursor: string | null;
  /** Whether catch-up is over for the current request (its `live` arrived). */
  live = false;
  /** Records delivered to this subscription (snapshot included). */
  received = 0;
  /** Set when the current request's snapshot lacks keys of the view; null when it is complete. */
  snapshotPartial: PartialSnapshot | null = null;
  closed = false;
  handlers: SubscribeOptions;
  /** With `delta`: the last whole value of each key, the base of the next patch. */
  readonly values = new Map<string, unknown>();
  // Per-request state.
  /** @internal */ _id: string | null = null;
  /** @internal */ _active = false;
  private _resuming = false;
  private _snapshotLeft = 0;
  private _pendingReset = false;
  private _catchingUp = false;
  private _missed = 0;
  /** @internal `unavailable` answers in a row (a node still warming). */
  _retries = 0;
  /** @internal */ _retryTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(client: Pushgate, topic: string, opts: SubscribeOptions) {
    this.client = client;
    this.topic = topic;
    this.keys = opts.keys ? [...opts.keys] : undefined;
    this.prefix = opts.prefix;
    this.snapshot = opts.snapshot !== false;
    this.filter = opts.filter;
    this.fields = opts.fields ? [...opts.fields] : undefined;
    this.delta = opts.delta;
    this.maxRate = opts.maxRate;
    this.resume = opts.resume;
    this.cursor = opts.cursor ?? null;
    this.handlers = opts;
  }

  /** Replaces the key set (resubscribes: with a snapshot, or from the cursor when `snapshot` is false). */
  setKeys(keys: string[] | undefined): void {
    if (this.closed) return;
    this.keys = keys ? [...keys] : undefined;
    if (this.snapshot) this.cursor = null;
    this.client._resubscribe(this);
  }

  /** Stops the subscription. */
  unsubscribe(): void {
    if (this.closed) return;
    this.closed = true;
    this.client._remove(this);
  }

  /** @internal The subscribe request for the next attempt. */
  _request(id: string): Msg {
    this._id = id;
    this._active = false;
    this.live = false;
    this._resuming = this.cursor != null;
    this._snapshotLeft = 0;
    this._pendingReset = false;
    this._catchingUp = this._resuming;
    this._missed = 0;
    const req: Msg = { type: 'subscribe', id, topic: this.topic, snapshot: this.snapshot };
    if (this.keys) req.keys = this.keys;
    if (this.prefix) req.prefix = this.prefix;
    if (this.cursor) req.cursor = this.cursor;
    if (this.filter !== undefined) req.filter = this.filter;
    if (this.fields) req.fields = this.fields;
    if (this.delta) req.delta = this.delta;
    if (this.maxRate !== undefined) req.max_rate = this.maxRate;
    if (this.resume) req.resume = this.resume;
    return req;
  }

  /** @internal */
  _onSubscribed(msg: Msg): void {
    this._active = true;
    this._retries = 0;
    this._snapshotLeft = msg.snapshot || 0;
    this.snapshotPartial = msg.snapshot_partial
      ? { topic: this.topic, reason: String(msg.snapshot_partial_reason ?? ''), skipped: null }
      : null;
    // A snapshot to come: before its first record nothing is resumable, except
    // when this request resumed one mid-way (recovered, with a snapshot
    // position): then `cursor` is that position, to resume again from it.
    if (this._snapshotLeft === 0) this.cursor = msg.cursor;
    else if (!(this._resuming && msg.recovered !== false)) this.cursor = null;
    else this.cursor = msg.cursor ?? this.cursor;
    if (this._resuming && msg.recovered === false) {
      this._pendingReset = true;
      this._catchingUp = false;
    }
    this.handlers.onSubscribed?.(msg);
    this.client._emitPublic('subscribed', msg);
  }

  /** @internal */
  _onGap(msg: Msg): void {
    this._pendingReset = false;
    this._reset({ topic: this.topic, reason: msg.reason ?? null, earliest: msg.earliest ?? null });
  }

  private _reset(info: ResetInfo): void {
    this.handlers.onReset?.(info);
    this.client._emitPublic('reset', info);
  }

  /** @internal */
  _onRecord(rec: PushRecord): void {
    if (!this._active) return; // left over from an earlier request
    if (!this._whole(rec)) return;
    if (this._pendingReset) {
      this._pendingReset = false;
      this._reset({ topic: this.topic, reason: null, earliest: null });
    }
    if (rec.snapshot) {
      // Each snapshot record's cursor resumes the snapshot right after its key
      // (the last one's is the live position): a drop continues from there.
      this._snapshotLeft = Math.max(0, this._snapshotLeft - 1);
      this.cursor = rec.cursor;
    } else {
      // Changes replayed before the rest of a resumed snapshot carry cursors
      // without its position: the snapshot position stays the resume point.
      if (this._snapshotLeft === 0) this.cursor = rec.cursor;
      if (this._catchingUp) {
        rec.replayed = true;
        this._missed++;
      }
    }
    this.received++;
    this.client.received++;
    this.handlers.onRecord?.(rec);
    this.client._emitPublic('record', rec);
  }

  /** With `delta`: turns a patch into whole `data`; false if it cannot be applied. */
  private _whole(rec: PushRecord): boolean {
    if (!this.delta || rec.key == null) return true;
    if (rec.op === 'leave' || rec.op === 'delete') {
      this.values.delete(rec.key);
      return true;
    }
    if (rec.patch === undefined) {
      this.values.set(rec.key, rec.data);
      return true;
    }
    let data: unknown;
    try {
      if (!this.values.has(rec.key)) throw new Error(`a patch for ${rec.key} without its base value`);
      data = applyPatch(this.values.get(rec.key), rec.patch);
    } catch (e) {
      // Never expected from a gateway: resubscribe from the cursor, whose
      // replay brings each key whole first.
      this._onError({ code: 'delta', message: String((e as Error)?.message ?? e) });
      this.client._resubscribe(this);
      return false;
    }
    rec.data = data;
    delete rec.patch;
    rec.patched = true;
    this.values.set(rec.key, data);
    return true;
  }

  /** @internal The gateway's `live` marker: `replayed` records were replayed before it. */
  _caughtUp(msg: Msg): void {
    // The snapshot is over, whatever `subscribed` counted (one that moved on
    // to a newer view sends the keys that view has). With a filter, `live`
    // carries a cursor past records the filter left out.
    this._snapshotLeft = 0;
    if (msg.cursor) this.cursor = msg.cursor;
    this.live = true;
    const partial = this.snapshotPartial;
    if (partial) {
      partial.skipped = typeof msg.snapshot_skipped === 'number' ? msg.snapshot_skipped : null;
      this.handlers.onPartialSnapshot?.(partial);
      this.client._emitPublic('partial_snapshot', partial);
    }
    this.handlers.onLive?.(msg);
    if (!this._catchingUp) return;
    this._catchingUp = false;
    const info = { topic: this.topic, missed: msg.replayed ?? this._missed };
    this.handlers.onResumed?.(info);
    this.client._emitPublic('resumed', info);
  }

  /** @internal */
  _onError(err: ClientError): void {
    this.handlers.onError?.(err);
    this.client._emitPublic('error', { topic: this.topic, ...err });
  }
}

interface Stream {
  close: () => void;
  attempt: number;
  timer: ReturnType<typeof setTimeout> | undefined;
  everLive: boolean;
  live: boolean;
  open: boolean;
}

/** The `Retry-After` of a response, in seconds (a number or an HTTP date). */
function retryAfterOf(value: string | null | undefined): number | undefined {
  if (value == null || value === '') return undefined;
  const n = Number(value);
  if (Number.isFinite(n)) return Math.max(0, n);
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, (at - Date.now()) / 1000);
}

/**
 * The client: one logical connection to a gateway.
 *
 * Events (`client.on(name, fn)`): `state` (connecting | live | reconnecting |
 * closed), `record`, `subscribed`, `resumed` ({topic, missed}), `reset`
 * ({@link ResetInfo}), `partial_snapshot` ({@link PartialSnapshot}), `error`,
 * `disconnect` ({@link DisconnectInfo}),
 * `refreshed` (the gateway took a fresh token in-band).
 *
 * Tokens: `getToken` is called before every (re)connect. On WebSocket the
 * gateway warns with `token_expiring` before it closes (4010); the client
 * then calls `getToken` and sends the new token in-band, so the connection
 * stays up. SSE streams end at expiry and reconnect with a new token from
 * their cursor, missing nothing.
 */
export class Pushgate extends Emitter {
  readonly url: string;
  readonly transport: 'ws' | 'sse';
  getToken: PushgateOptions['getToken'];
  minDelay: number;
  maxDelay: number;
  heartbeat: number;
  state: ConnectionState = 'connecting';
  /** Records received, all subscriptions together. */
  received = 0;
  /** Reconnects so far (times the state went from reconnecting to live). */
  reconnects = 0;
  /** WebSocket connections opened so far. */
  sockets = 0;
  /** Subscriptions by topic. */
  readonly subs = new Map<string, Subscription>();
  private _seq = 0;
  private _closed = false;
  private _token: string | null | undefined = null;
  private _WebSocket: WebSocketCtor | undefined;
  private _EventSource: EventSourceCtor | null | undefined;
  private _fetch: typeof fetch;
  // WebSocket state.
  private _ws: WebSocketLike | null = null;
  private _wsAttempt = 0;
  private _wsTimer: ReturnType<typeof setTimeout> | undefined;
  private _wsEverOpen = false;
  private _lastSeen = 0;
  private _beat: ReturnType<typeof setInterval> | undefined;
  // SSE state, per subscription.
  private _streams = new Map<Subscription, Stream>();

  constructor(options: PushgateOptions = {}) {
    super();
    const g = globalThis as any;
    this.url = (options.url ?? g.location?.origin ?? '').replace(/\/$/, '');
    this.transport = options.transport === 'sse' ? 'sse' : 'ws';
    this.getToken = options.getToken;
    this.minDelay = options.minDelay ?? 500;
    this.maxDelay = options.maxDelay ?? 15000;
    this.heartbeat = options.heartbeat ?? 30000;
    this._WebSocket = options.WebSocket ?? g.WebSocket;
    this._EventSource = options.EventSource === undefined ? g.EventSource : options.EventSource;
    this._fetch = options.fetch ?? ((...args: Parameters<typeof fetch>) => g.fetch(...args));
    if (this.transport === 'ws') void this._connectWs();
  }

  /** Subscribes to a topic (one subscription per topic per client). */
  subscribe(topic: string, opts: SubscribeOptions = {}): Subscription {
    if (this.subs.has(topic)) throw new Error(`already subscribed to ${topic}; use setKeys or unsubscribe first`);
    const sub = new Subscription(this, topic, opts);
    this.subs.set(topic, sub);
    if (this.transport === 'ws') this._wsSubscribe(sub);
    else void this._openStream(sub);
    return sub;
  }

  /** Publishes one record (or `{records: [...]}`) through the HTTP API. */
  async publish(topic: string, record: { key?: string | null; data: unknown } | { records: Array<{ key?: string | null; data: unknown }> }): Promise<any> {
    const headers = await this._authHeaders({ 'content-type': 'application/json' });
    const res = await this._fetch(`${this.url}/topics/${encodeURIComponent(topic)}`, {
      method: 'POST', headers, body: JSON.stringify(record),
    });
    const body: any = await res.json().catch(() => ({}));
    if (!res.ok) throw Object.assign(new Error(body.message || `publish failed: ${res.status}`), { status: res.status, code: body.error });
    return body;
  }

  /**
   * What was appended after `cursor`, with one HTTP request and no socket
   * (`GET /topics/{topic}/records`): for an app woken by a push
   * notification. Call again with the returned cursor while `more` is true;
   * the cursor covers records a filter left out, and subscribing with it
   * continues live with no gap and no duplicate. Without a cursor the answer
   * is empty with the head's cursor: take it before the app sleeps. The
   * cursor goes second (`fetchSince(topic, cursor, opts)`) or in `opts`.
   * A 503 is retried after its `Retry-After` (three tries).
   */
  fetchSince(topic: string, cursor: string | null | undefined, opts?: FetchSinceOptions): Promise<FetchSinceResult>;
  fetchSince(topic: string, opts?: FetchSinceOptions): Promise<FetchSinceResult>;
  async fetchSince(topic: string, cursorOrOpts?: string | null | FetchSinceOptions, rest: FetchSinceOptions = {}): Promise<FetchSinceResult> {
    const opts: FetchSinceOptions = cursorOrOpts !== null && typeof cursorOrOpts === 'object'
      ? cursorOrOpts
      : { ...rest, cursor: cursorOrOpts ?? rest.cursor };
    const u = new URL(`${this.url}/topics/${encodeURIComponent(topic)}/records`, (globalThis as any).location?.href);
    if (opts.cursor) u.searchParams.set('cursor', opts.cursor);
    for (const k of opts.keys ?? []) u.searchParams.append('key', k);
    if (opts.prefix) u.searchParams.set('prefix', opts.prefix);
    if (opts.filter !== undefined) u.searchParams.set('filter', JSON.stringify(opts.filter));
    for (const f of opts.fields ?? []) u.searchParams.append('fields', f);
    if (opts.limit !== undefined) u.searchParams.set('limit', String(opts.limit));
    for (let attempt = 0; ; attempt++) {
      const headers = await this._authHeaders({ accept: 'application/json' });
      const res = await this._fetch(u.toString(), { headers });
      const body: any = await res.json().catch(() => ({}));
      if (res.ok) return body as FetchSinceResult;
      const retryAfter = retryAfterOf(res.headers.get('retry-after'));
      if (res.status === 503 && attempt < 2) {
        await new Promise((r) => setTimeout(r, reconnectDelay({ status: 503, retryAfter }, attempt, this.minDelay, this.maxDelay)));
        continue;
      }
      throw Object.assign(new Error(body.message || `fetchSince failed: ${res.status}`), { status: res.status, code: body.error, retryAfter });
    }
  }

  /**
   * Asks `getToken` for a fresh token now. WebSocket: sent in-band as
   * `{"type":"refresh"}`; SSE: each stream reconnects with it, from its cursor.
   */
  async refreshToken(): Promise<void> {
    if (!this.getToken) return;
    this._token = await this.getToken();
    if (this.transport === 'ws') {
      if (this._ws?.readyState === OPEN && this._token) this._send({ type: 'refresh', token: this._token });
    } else {
      for (const sub of this.subs.values()) void this._openStream(sub);
    }
  }

  /**
   * The network is back (the app learned it from the platform): forget the
   * backoff and reconnect now whatever is not connected.
   */
  networkAvailable(): void {
    if (this._closed) return;
    if (this.transport === 'ws') {
      this._wsAttempt = 0;
      if (!this._ws) {
        clearTimeout(this._wsTimer);
        void this._connectWs();
      }
    } else {
      for (const [sub, st] of this._streams) {
        st.attempt = 0;
        if (!st.open) void this._openStream(sub);
      }
    }
  }

  /** Closes everything; no more reconnects. */
  close(): void {
    this._closed = true;
    clearTimeout(this._wsTimer);
    clearInterval(this._beat);
    if (this._ws) { this._ws.onclose = null; this._ws.close(1000); this._ws = null; }
    for (const st of this._streams.values()) { clearTimeout(st.timer); st.close(); }
    this._streams.clear();
    for (const sub of this.subs.values()) clearTimeout(sub._retryTimer);
    this._setState('closed');
  }

  /** @internal */
  _emitPublic(event: string, arg: unknown): void { this._emit(event, arg); }

  private _setState(state: ConnectionState): void {
    if (this.state === state) return;
    if (this.state === 'reconnecting' && state === 'live') this.reconnects++;
    this.state = state;
    this._emit('state', state);
  }

  private async _authHeaders(base: Record<string, string>): Promise<Record<string, string>> {
    const token = this.getToken ? await this.getToken() : null;
    if (token) base.authorization = `Bearer ${token}`;
    return base;
  }

  private async _tokenUrl(path: string): Promise<URL> {
    this._token = this.getToken ? await this.getToken() : null;
    const u = new URL(this.url + path, (globalThis as any).location?.href);
    if (this._token) u.searchParams.set('access_token', this._token);
    return u;
  }

  private _nextId(topic: string): string { return `${topic}#${++this._seq}`; }

  /** @internal */
  _remove(sub: Subscription): void {
    if (this.subs.get(sub.topic) !== sub) return;
    this.subs.delete(sub.topic);
    clearTimeout(sub._retryTimer);
    if (this.transport === 'ws') {
      if (sub._id) this._send({ type: 'unsubscribe', id: sub._id });
    } else {
      const st = this._streams.get(sub);
      if (st) { clearTimeout(st.timer); st.close(); this._streams.delete(sub); }
      this._sseState();
    }
  }

  /** @internal */
  _resubscribe(sub: Subscription): void {
    if (this.transport === 'ws') {
      if (sub._id) this._send({ type: 'unsubscribe', id: sub._id });
      sub._id = null;
      sub._active = false;
      sub.live = false;
      this._wsSubscribe(sub);
    } else {
      void this._openStream(sub);
    }
  }

  // ---- WebSocket -------------------------------------------------------

  private _send(msg: Msg): boolean {
    if (this._ws?.readyState === OPEN) { this._ws.send(JSON.stringify(msg)); return true; }
    return false;
  }

  private _wsSubscribe(sub: Subscription): void {
    if (this._ws?.readyState !== OPEN) return; // sent on open
    this._send(sub._request(this._nextId(sub.topic)));
  }

  /** The WebSocket class: the given or global one, else (Node) the `ws` package. */
  private async _wsClass(): Promise<WebSocketCtor> {
    if (this._WebSocket) return this._WebSocket;
    const name = 'ws'; // not a static import: browsers and bundlers never see it
    const mod: any = await import(name);
    this._WebSocket = (mod.WebSocket ?? mod.default) as WebSocketCtor;
    return this._WebSocket;
  }

  private async _connectWs(): Promise<void> {
    if (this._closed) return;
    this._setState(this._wsEverOpen ? 'reconnecting' : 'connecting');
    let url: URL;
    let Ctor: WebSocketCtor;
    try {
      url = await this._tokenUrl('/ws');
      Ctor = await this._wsClass();
    } catch (e) {
      this._emit('error', { code: 'token', message: String(e) });
      return this._scheduleWs({ code: null, reason: 'no token' });
    }
    if (this._closed || this._ws) return;
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new Ctor(url.toString());
    this.sockets++;
    this._ws = ws;
    let refusal: { status: number; retryAfter?: number } | undefined;
    // The `ws` package shows a refused handshake's status and Retry-After; browsers do not.
    ws.on?.('unexpected-response', (_req: unknown, res: any) => {
      refusal = { status: res.statusCode, retryAfter: retryAfterOf(res.headers?.['retry-after']) };
      res.resume?.();
      ws.terminate?.();
    });
    ws.on?.('error', () => { /* reported through close */ });
    ws.onopen = () => {
      this._lastSeen = Date.now();
      for (const sub of this.subs.values()) {
        clearTimeout(sub._retryTimer);
        sub._id = null;
        this._wsSubscribe(sub);
      }
      if (this.subs.size === 0) this._wsLive();
      clearInterval(this._beat);
      this._beat = setInterval(() => {
        if (Date.now() - this._lastSeen > 2 * this.heartbeat) {
          // A half-open connection may take minutes to report its close: drop it now.
          ws.close(4000, 'heartbeat timeout');
          lost(4000, 'heartbeat timeout');
        } else {
          this._send({ type: 'ping' });
        }
      }, this.heartbeat);
    };
    ws.onmessage = (ev) => {
      this._lastSeen = Date.now();
      let msg: Msg;
      try { msg = JSON.parse(String(ev.data)); } catch { return; }
      this._onWsMessage(msg);
    };
    const lost = (code: number | null, reason: string) => {
      if (this._ws !== ws) return;
      this._ws = null;
      clearInterval(this._beat);
      for (const sub of this.subs.values()) { sub._active = false; sub.live = false; }
      this._scheduleWs({ code: refusal ? null : code, reason, ...refusal });
    };
    ws.onclose = (ev) => lost(ev.code, ev.reason);
  }

  private _scheduleWs(hint: Omit<DisconnectInfo, 'delay'>): void {
    if (this._closed) return;
    this._setState(this._wsEverOpen ? 'reconnecting' : 'connecting');
    // A drain or an expired token is not a failure of ours: start the backoff over.
    if (hint.code === 1012 || hint.code === 4010) this._wsAttempt = 0;
    const delay = reconnectDelay(hint, this._wsAttempt++, this.minDelay, this.maxDelay);
    this._emit('disconnect', { ...hint, delay });
    clearTimeout(this._wsTimer);
    this._wsTimer = setTimeout(() => void this._connectWs(), delay);
  }

  private _wsLive(): void {
    this._wsEverOpen = true;
    this._wsAttempt = 0;
    this._setState('live');
  }

  private _retryWs(sub: Subscription): void {
    clearTimeout(sub._retryTimer);
    const delay = backoffDelay(sub._retries++, Math.min(this.minDelay, 250), this.maxDelay);
    sub._retryTimer = setTimeout(() => {
      if (this._closed || this.subs.get(sub.topic) !== sub) return;
      // The refused request holds nothing on the gateway: just ask again.
      sub._id = null;
      this._wsSubscribe(sub);
    }, delay);
  }

  private _subById(id: unknown): Subscription | null {
    for (const sub of this.subs.values()) if (sub._id === id) return sub;
    return null;
  }

  private _onWsMessage(msg: Msg): void {
    switch (msg.type) {
      case 'record': {
        const sub = this.subs.get(msg.topic);
        if (sub) sub._onRecord(msg as PushRecord);
        break;
      }
      case 'subscribed': {
        const sub = this._subById(msg.id);
        if (!sub) break;
        sub._onSubscribed(msg);
        this._wsLive();
        break;
      }
      case 'gap': this._subById(msg.id)?._onGap(msg); break;
      case 'token_expiring':
        // The gateway closes (4010) after `grace_ms` unless a fresh token comes in-band.
        this.refreshToken().catch((e) => this._emit('error', { code: 'token', message: String(e) }));
        break;
      case 'refreshed': this._emit('refreshed', msg); break;
      // Catch-up (snapshot or replay) is over; what follows is live.
      case 'live': this._subById(msg.id)?._caughtUp(msg); break;
      case 'error': {
        const sub = msg.id != null ? this._subById(msg.id) : null;
        const err = { code: msg.code, message: msg.message };
        if (sub) {
          sub._onError(err);
          this._wsLive();
          // `unavailable` means "retry shortly" (a node still warming a topic,
          // or one not yet as far as the cursor): this subscription alone is
          // asked again soon, on the same socket, with its own backoff.
          if (msg.code === 'unavailable') this._retryWs(sub);
        } else this._emit('error', err);
        break;
      }
      default: break; // unsubscribed, pong, and anything newer
    }
  }

  // ---- Server-Sent Events ----------------------------------------------

  private async _openStream(sub: Subscription): Promise<void> {
    let st = this._streams.get(sub);
    if (!st) {
      st = { close: () => {}, attempt: 0, timer: undefined, everLive: false, live: false, open: false };
      this._streams.set(sub, st);
    }
    clearTimeout(st.timer);
    st.close();
    st.close = () => {};
    st.live = false;
    st.open = true; // an attempt is under way
    this._sseState();
    const mine = {};
    (st as any).attemptToken = mine;
    let url: URL;
    try {
      url = await this._tokenUrl('/sse');
    } catch (e) {
      this._emit('error', { code: 'token', message: String(e) });
      return this._scheduleStream(sub, st, { code: null, reason: 'no token' });
    }
    if (this._closed || sub.closed || this._streams.get(sub) !== st || (st as any).attemptToken !== mine) return;
    const req = sub._request(this._nextId(sub.topic));
    url.searchParams.set('topic', sub.topic);
    for (const k of req.keys ?? []) url.searchParams.append('key', k);
    if (req.prefix) url.searchParams.set('prefix', req.prefix);
    if (req.cursor) url.searchParams.set('cursor', req.cursor);
    if (!req.snapshot) url.searchParams.set('snapshot', 'false');
    if (req.filter !== undefined) url.searchParams.set('filter', JSON.stringify(req.filter));
    for (const f of req.fields ?? []) url.searchParams.append('field', f);
    if (req.delta) url.searchParams.set('delta', req.delta);
    if (req.max_rate !== undefined) url.searchParams.set('max_rate', String(req.max_rate));
    if (req.resume) url.searchParams.set('resume', req.resume);
    const stream = st;
    const onEvent = (name: string, data: string) => {
      let msg: Msg;
      try { msg = JSON.parse(data); } catch { return; }
      switch (name) {
        case 'subscribed':
          msg.id = sub._id;
          sub._onSubscribed(msg);
          stream.everLive = true;
          stream.live = true;
          stream.attempt = 0;
          this._sseState();
          break;
        case 'live': sub._caughtUp(msg); break;
        case 'gap': sub._onGap(msg); break;
        case 'message': sub._onRecord(msg as PushRecord); break;
        default: break;
      }
    };
    const ended = (hint: Omit<DisconnectInfo, 'delay'>) => {
      if ((stream as any).attemptToken !== mine) return;
      (stream as any).attemptToken = null;
      stream.close();
      stream.live = false;
      stream.open = false;
      sub._active = false;
      sub.live = false;
      this._scheduleStream(sub, stream, { topic: sub.topic, ...hint });
    };
    if (this._EventSource) {
      const es = new this._EventSource(url.toString());
      stream.close = () => es.close();
      for (const name of ['subscribed', 'live', 'gap']) es.addEventListener(name, (ev) => onEvent(name, ev.data));
      es.onmessage = (ev) => onEvent('message', ev.data);
      // We reconnect ourselves: with our cursor (the snapshot rule needs it),
      // a fresh token and our backoff, rather than EventSource's fixed retry.
      es.onerror = () => ended({ code: null, reason: 'stream ended' });
    } else {
      const abort = new AbortController();
      stream.close = () => abort.abort();
      void this._readSse(url, abort.signal, onEvent).then(ended, (e) =>
        ended({ code: null, reason: abort.signal.aborted ? 'closed' : String(e?.message ?? e) }));
    }
  }

  /** Reads an event stream with `fetch` (no EventSource here); resolves with why it ended. */
  private async _readSse(url: URL, signal: AbortSignal, onEvent: (name: string, data: string) => void): Promise<Omit<DisconnectInfo, 'delay'>> {
    const res = await this._fetch(url.toString(), { headers: { accept: 'text/event-stream' }, signal });
    if (!res.ok || !res.body) {
      const body: any = await res.json().catch(() => ({}));
      if (res.status === 401 || res.status === 403 || res.status === 404 || res.status === 400) {
        this._emit('error', { code: body.error ?? String(res.status), message: body.message ?? '', status: res.status });
      }
      return { code: null, reason: body.error ?? 'refused', status: res.status, retryAfter: retryAfterOf(res.headers.get('retry-after')) };
    }
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let buf = '';
    let name = 'message';
    let data: string[] = [];
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return { code: null, reason: 'stream ended' };
      buf += decoder.decode(value, { stream: true });
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        let line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.endsWith('\r')) line = line.slice(0, -1);
        if (line === '') {
          if (data.length) onEvent(name, data.join('\n'));
          name = 'message';
          data = [];
        } else if (line.startsWith(':')) {
          // comment (keep-alive)
        } else {
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? '' : line.slice(colon + 1);
          if (val.startsWith(' ')) val = val.slice(1);
          if (field === 'event') name = val;
          else if (field === 'data') data.push(val);
        }
      }
    }
  }

  private _scheduleStream(sub: Subscription, st: Stream, hint: Omit<DisconnectInfo, 'delay'>): void {
    if (this._closed || sub.closed) return;
    st.open = false;
    this._sseState();
    const delay = reconnectDelay(hint, st.attempt++, this.minDelay, this.maxDelay);
    this._emit('disconnect', { ...hint, delay });
    clearTimeout(st.timer);
    st.timer = setTimeout(() => void this._openStream(sub), delay);
  }

  /** The client's state over SSE: live when every stream is live. */
  private _sseState(): void {
    if (this._closed) return;
    const streams = [...this._streams.values()];
    if (streams.every((s) => s.live)) { this._setState('live'); return; }
    this._setState(streams.some((s) => !s.live && s.everLive) ? 'reconnecting' : 'connecting');
  }
}
