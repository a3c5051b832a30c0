/**
 * pushgate.js — a small, dependency-free browser client for pushgate.
 *
 * Connects over WebSocket (one socket, many subscriptions) or Server-Sent
 * Events (one stream per subscription), keeps the latest cursor of every
 * subscription, reconnects with exponential backoff and full jitter, resumes
 * from the cursor, and tells the application plainly when data was missed.
 *
 * @example
 * import { Pushgate } from './pushgate.js';
 * const pg = new Pushgate({ transport: 'ws' });
 * pg.on('state', (s) => console.log('connection', s));
 * const sub = pg.subscribe('prices', {
 *   keys: ['AAPL', 'MSFT'],
 *   onRecord: (r) => console.log(r.key, r.data.price),
 *   onReset: (info) => console.warn('missed data, reloading', info),
 * });
 * sub.setKeys(['AAPL', 'NVDA']);
 * await pg.publish('posts', { key: 'p1', data: { text: 'hello' } });
 *
 * @module pushgate
 */

/**
 * A record as the gateway sends it.
 * @typedef {object} PushRecord
 * @property {'record'} type
 * @property {string} topic
 * @property {string|null} key
 * @property {number} partition
 * @property {number} offset
 * @property {string} cursor      Resumes right after this record.
 * @property {number} timestamp   Milliseconds since the epoch, when it was appended.
 * @property {*} data             The published JSON value.
 * @property {boolean} [snapshot] True for the current-state records sent first.
 * @property {boolean} [replayed] Set by this client: delivered while catching up after a reconnect.
 */

/**
 * What `onReset` and the `reset` event receive: the gateway could not resume
 * from the cursor, so records were missed. A fresh snapshot follows when the
 * subscription asked for one; otherwise the application should reload.
 * @typedef {object} ResetInfo
 * @property {string} topic
 * @property {string|null} reason   `retention` (too old), `epoch` (the log was recreated) or null.
 * @property {string|null} earliest The oldest cursor still available.
 */

/**
 * @typedef {object} SubscribeOptions
 * @property {string[]} [keys]       Keys to receive; leave out for every key.
 * @property {string} [prefix]       Only keys starting with this.
 * @property {boolean} [snapshot=true] Start with the current value of each key.
 * @property {string} [cursor]       Start right after this position instead.
 * @property {object} [filter]       Only records whose `data` matches (the gateway's filter language).
 * @property {string[]} [fields]     Only these paths of `data` (e.g. ['price', 'meta.ts']).
 * @property {'json-patch'} [delta]  Later records of a key come as patches; the client applies
 *                                   them, so `onRecord` always sees whole values in `data`.
 * @property {number} [maxRate]      At most this many records per second per key (conflation).
 * @property {'all'|'latest'} [resume] 'latest': a resume brings only each key's latest missed record.
 * @property {(r: PushRecord) => void} [onRecord]  `r.op` is 'enter' or 'leave' (no `data`) with a filter;
 *                                   with `delta`, `r.patched` is true when `data` was rebuilt from a patch.
 * @property {(info: ResetInfo) => void} [onReset]
 * @property {(msg: object) => void} [onSubscribed] The gateway's `subscribed` message.
 * @property {(info: {topic: string, missed: number}) => void} [onResumed] Catch-up after a reconnect is done.
 * @property {(err: {code: string, message: string}) => void} [onError]
 */

/**
 * @typedef {object} PushgateOptions
 * @property {string} [url]           Base URL of the gateway (default: the page's origin).
 * @property {'ws'|'sse'} [transport='ws']
 * @property {() => (string|null|Promise<string|null>)} [getToken]
 *   Called before every (re)connect and by `refreshToken()`; the token goes in
 *   the `access_token` query parameter (and in-band on WebSocket refresh).
 * @property {number} [minDelay=500]  Backoff base in ms.
 * @property {number} [maxDelay=15000] Backoff cap in ms.
 * @property {number} [heartbeat=30000] WebSocket: ping this often; reconnect if nothing arrives for twice that.
 */

const OPEN_STATES = ['connecting', 'live', 'reconnecting', 'closed'];

/** Full-jitter exponential backoff: a random delay in [0, min(cap, base * 2^attempt)). */
export function backoffDelay(attempt, base, cap) {
  return Math.random() * Math.min(cap, base * 2 ** Math.min(attempt, 30));
}

/** A tiny event emitter. */
class Emitter {
  constructor() { this._handlers = new Map(); }
  /**
   * @param {string} event
   * @param {Function} fn
   * @returns {() => void} call to remove the handler
   */
  on(event, fn) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(fn);
    return () => this._handlers.get(event)?.delete(fn);
  }
  _emit(event, arg) {
    for (const fn of this._handlers.get(event) ?? []) {
      try { fn(arg); } catch (e) { setTimeout(() => { throw e; }); }
    }
  }
}

/**
 * A subscription to one topic. Created by {@link Pushgate#subscribe}.
 */
/**
 * Applies an RFC 6902 JSON Patch to a copy of `doc` and returns it (all six
 * operations; `test` failing throws).
 */
export function applyPatch(doc, ops) {
  let root = structuredClone(doc);
  const parse = (path) => path === '' ? [] : path.slice(1).split('/').map((t) => t.replace(/~1/g, '/').replace(/~0/g, '~'));
  const get = (tokens) => tokens.reduce((at, t) => {
    if (at === null || typeof at !== 'object' || !(t in at)) throw new Error(`no value at /${tokens.join('/')}`);
    return at[t];
  }, root);
  const put = (tokens, value, insert) => {
    if (tokens.length === 0) { root = value; return; }
    const parent = get(tokens.slice(0, -1));
    const last = tokens[tokens.length - 1];
    if (Array.isArray(parent)) {
      const i = last === '-' ? parent.length : Number(last);
      if (insert) parent.splice(i, 0, value); else parent[i] = value;
    } else parent[last] = value;
  };
  const remove = (tokens) => {
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
      case 'move': { const v = remove(parse(op.from)); put(path, v, true); break; }
      case 'copy': put(path, structuredClone(get(parse(op.from))), true); break;
      case 'test':
        if (JSON.stringify(get(path)) !== JSON.stringify(op.value)) throw new Error(`test failed at ${op.path}`);
        break;
      default: throw new Error(`unknown patch op ${op.op}`);
    }
  }
  return root;
}

export class Subscription {
  /** @param {Pushgate} client @param {string} topic @param {SubscribeOptions} opts */
  constructor(client, topic, opts) {
    this.client = client;
    this.topic = topic;
    /** @type {string[]|undefined} */
    this.keys = opts.keys ? [...opts.keys] : undefined;
    this.prefix = opts.prefix;
    this.snapshot = opts.snapshot !== false;
    this.filter = opts.filter;
    this.fields = opts.fields ? [...opts.fields] : undefined;
    this.delta = opts.delta;
    this.maxRate = opts.maxRate;
    this.resume = opts.resume;
    /** With `delta`: the last whole value of each key, the base of the next patch. */
    this._values = new Map();
    /** Latest cursor: where a resume starts. Null while a snapshot is still arriving. */
    this.cursor = opts.cursor ?? null;
    /** Records delivered to this subscription (snapshot included). */
    this.received = 0;
    this.handlers = opts;
    this.closed = false;
    // Per-attempt state.
    this._id = null;          // id of the current subscribe request
    this._active = false;     // its `subscribed` arrived
    this._resuming = false;   // the current request carries a cursor
    this._snapshotLeft = 0;
    this._pendingReset = false;
    this._catchingUp = false;
    this._missed = 0;
    this._retries = 0;        // `unavailable` answers in a row (a node still warming)
    this._retryTimer = null;
  }

  /** Replaces the key set (resubscribes: with a snapshot, or from the cursor when `snapshot` is false). */
  setKeys(keys) {
    if (this.closed) return;
    this.keys = keys ? [...keys] : undefined;
    if (this.snapshot) this.cursor = null;
    this.client._resubscribe(this);
  }

  /** Stops the subscription. */
  unsubscribe() {
    if (this.closed) return;
    this.closed = true;
    this.client._remove(this);
  }

  /** The subscribe request for the next attempt. */
  _request(id) {
    this._id = id;
    this._active = false;
    this._resuming = this.cursor != null;
    this._snapshotLeft = 0;
    this._pendingReset = false;
    this._catchingUp = this._resuming;
    this._missed = 0;
    const req = { type: 'subscribe', id, topic: this.topic, snapshot: this.snapshot };
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

  _onSubscribed(msg) {
    this._active = true;
    this._retries = 0;
    this._snapshotLeft = msg.snapshot || 0;
    // Until the whole snapshot is in, a resume must ask for a new snapshot.
    this.cursor = this._snapshotLeft > 0 ? null : msg.cursor;
    if (this._resuming && msg.recovered === false) {
      this._pendingReset = true;
      this._catchingUp = false;
    }
    this.handlers.onSubscribed?.(msg);
    this.client._emit('subscribed', msg);
  }

  _onGap(msg) {
    this._pendingReset = false;
    this._reset({ topic: this.topic, reason: msg.reason ?? null, earliest: msg.earliest ?? null });
  }

  _reset(info) {
    this.handlers.onReset?.(info);
    this.client._emit('reset', info);
  }

  _onRecord(rec) {
    if (!this._active) return; // left over from an earlier request
    if (!this._whole(rec)) return;
    if (this._pendingReset) {
      this._pendingReset = false;
      this._reset({ topic: this.topic, reason: null, earliest: null });
    }
    if (rec.snapshot) {
      this._snapshotLeft = Math.max(0, this._snapshotLeft - 1);
      if (this._snapshotLeft === 0) this.cursor = rec.cursor;
    } else {
      this.cursor = rec.cursor;
      if (this._catchingUp) {
        rec.replayed = true;
        this._missed++;
      }
    }
    this.received++;
    this.client.received++;
    this.handlers.onRecord?.(rec);
    this.client._emit('record', rec);
  }

  /** The gateway's `live` marker: `replayed` records were replayed before it. */
  /** With `delta`: turns a patch into whole `data`; false if it cannot be applied. */
  _whole(rec) {
    if (!this.delta || rec.key == null) return true;
    if (rec.op === 'leave' || rec.op === 'delete') {
      this._values.delete(rec.key);
      return true;
    }
    if (rec.patch === undefined) {
      this._values.set(rec.key, rec.data);
      return true;
    }
    if (!this._values.has(rec.key)) {
      // Never expected: the gateway sends whole data first. Resync from a snapshot.
      this._onError({ code: 'delta', message: `a patch for ${rec.key} without its base value` });
      return false;
    }
    try {
      rec.data = applyPatch(this._values.get(rec.key), rec.patch);
    } catch (e) {
      this._onError({ code: 'delta', message: String(e) });
      return false;
    }
    delete rec.patch;
    rec.patched = true;
    this._values.set(rec.key, rec.data);
    return true;
  }

  _caughtUp(replayed, cursor) {
    // With a filter, `live` carries a cursor past records the filter left out.
    if (cursor && this._snapshotLeft === 0) this.cursor = cursor;
    if (!this._catchingUp) return;
    this._catchingUp = false;
    const info = { topic: this.topic, missed: replayed ?? this._missed };
    this.handlers.onResumed?.(info);
    this.client._emit('resumed', info);
  }

  _onError(err) {
    this.handlers.onError?.(err);
    this.client._emit('error', { topic: this.topic, ...err });
  }
}

/**
 * The client: one logical connection to a gateway.
 *
 * Events (`client.on(name, fn)`): `state` (connecting | live | reconnecting |
 * closed), `record`, `subscribed`, `resumed` ({topic, missed}), `reset`
 * ({@link ResetInfo}), `error`, `disconnect` ({code, reason}), `refreshed`
 * (the gateway took a fresh token in-band).
 *
 * Tokens: `getToken` is called before every (re)connect. On WebSocket the
 * gateway warns with `token_expiring` before it closes (4010); the client
 * then calls `getToken` and sends the new token in-band, so the connection
 * stays up. SSE streams end at expiry and reconnect with a new token from
 * their cursor, missing nothing.
 */
export class Pushgate extends Emitter {
  /** @param {PushgateOptions} [options] */
  constructor(options = {}) {
    super();
    this.url = (options.url ?? globalThis.location?.origin ?? '').replace(/\/$/, '');
    /** @type {'ws'|'sse'} */
    this.transport = options.transport === 'sse' ? 'sse' : 'ws';
    this.getToken = options.getToken;
    this.minDelay = options.minDelay ?? 500;
    this.maxDelay = options.maxDelay ?? 15000;
    this.heartbeat = options.heartbeat ?? 30000;
    /** @type {'connecting'|'live'|'reconnecting'|'closed'} */
    this.state = 'connecting';
    /** Records received, all subscriptions together. */
    this.received = 0;
    /** Reconnects so far (times the state went from reconnecting to live). */
    this.reconnects = 0;
    /** @type {Map<string, Subscription>} by topic */
    this.subs = new Map();
    this._seq = 0;
    this._closed = false;
    this._token = null;
    // WebSocket state.
    this._ws = null;
    this._wsAttempt = 0;
    this._wsTimer = null;
    this._wsEverOpen = false;
    this._lastSeen = 0;
    this._beat = null;
    // SSE state, per subscription.
    /** @type {Map<Subscription, {es: EventSource|null, attempt: number, timer: any, everLive: boolean, live: boolean}>} */
    this._streams = new Map();
    if (this.transport === 'ws') this._connectWs();
  }

  /**
   * Subscribes to a topic (one subscription per topic per client).
   * @param {string} topic
   * @param {SubscribeOptions} [opts]
   * @returns {Subscription}
   */
  subscribe(topic, opts = {}) {
    if (this.subs.has(topic)) throw new Error(`already subscribed to ${topic}; use setKeys or unsubscribe first`);
    const sub = new Subscription(this, topic, opts);
    this.subs.set(topic, sub);
    if (this.transport === 'ws') this._wsSubscribe(sub);
    else this._openStream(sub);
    return sub;
  }

  /**
   * Publishes one record through the HTTP API.
   * @param {string} topic
   * @param {{key?: string, data: *}} record
   * @returns {Promise<{topic: string, partition: number, offset: number, cursor: string}>}
   */
  async publish(topic, record) {
    const token = this.getToken ? await this.getToken() : null;
    const headers = { 'content-type': 'application/json' };
    if (token) headers.authorization = `Bearer ${token}`;
    const res = await fetch(`${this.url}/topics/${encodeURIComponent(topic)}`, {
      method: 'POST', headers, body: JSON.stringify(record),
    });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw Object.assign(new Error(body.message || `publish failed: ${res.status}`), { status: res.status, code: body.error });
    return body;
  }

  /**
   * Asks `getToken` for a fresh token now. WebSocket: sent in-band as
   * `{"type":"refresh"}`; SSE: each stream reconnects with it, from its cursor.
   */
  async refreshToken() {
    if (!this.getToken) return;
    this._token = await this.getToken();
    if (this.transport === 'ws') {
      if (this._ws?.readyState === WebSocket.OPEN && this._token) this._send({ type: 'refresh', token: this._token });
    } else {
      for (const sub of this.subs.values()) this._openStream(sub);
    }
  }

  /** Closes everything; no more reconnects. */
  close() {
    this._closed = true;
    clearTimeout(this._wsTimer);
    clearInterval(this._beat);
    if (this._ws) { this._ws.onclose = null; this._ws.close(1000); this._ws = null; }
    for (const st of this._streams.values()) { clearTimeout(st.timer); st.es?.close(); }
    this._streams.clear();
    for (const sub of this.subs.values()) clearTimeout(sub._retryTimer);
    this._setState('closed');
  }

  _setState(state) {
    if (this.state === state || !OPEN_STATES.includes(state)) return;
    if (this.state === 'reconnecting' && state === 'live') this.reconnects++;
    this.state = state;
    this._emit('state', state);
  }

  async _tokenUrl(path) {
    this._token = this.getToken ? await this.getToken() : null;
    const u = new URL(this.url + path, globalThis.location?.href);
    if (this._token) u.searchParams.set('access_token', this._token);
    return u;
  }

  _nextId(topic) { return `${topic}#${++this._seq}`; }

  _remove(sub) {
    if (this.subs.get(sub.topic) !== sub) return;
    this.subs.delete(sub.topic);
    clearTimeout(sub._retryTimer);
    if (this.transport === 'ws') {
      if (sub._id) this._send({ type: 'unsubscribe', id: sub._id });
    } else {
      const st = this._streams.get(sub);
      if (st) { clearTimeout(st.timer); st.es?.close(); this._streams.delete(sub); }
      this._sseState();
    }
  }

  _resubscribe(sub) {
    if (this.transport === 'ws') {
      if (sub._id) this._send({ type: 'unsubscribe', id: sub._id });
      sub._id = null;
      this._wsSubscribe(sub);
    } else {
      this._openStream(sub);
    }
  }

  // ---- WebSocket -------------------------------------------------------

  _send(msg) {
    if (this._ws?.readyState === WebSocket.OPEN) { this._ws.send(JSON.stringify(msg)); return true; }
    return false;
  }

  _wsSubscribe(sub) {
    if (this._ws?.readyState !== WebSocket.OPEN) return; // sent on open
    const id = this._nextId(sub.topic);
    this._send(sub._request(id));
  }

  async _connectWs() {
    if (this._closed) return;
    this._setState(this._wsEverOpen ? 'reconnecting' : 'connecting');
    let url;
    try {
      url = await this._tokenUrl('/ws');
    } catch (e) {
      this._emit('error', { code: 'token', message: String(e) });
      return this._scheduleWs();
    }
    if (this._closed) return;
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(url);
    this._ws = ws;
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
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      this._onWsMessage(msg);
    };
    const lost = (code, reason) => {
      if (this._ws !== ws) return;
      this._ws = null;
      clearInterval(this._beat);
      for (const sub of this.subs.values()) sub._active = false;
      this._emit('disconnect', { code, reason });
      this._scheduleWs();
    };
    ws.onclose = (ev) => lost(ev.code, ev.reason);
  }

  _scheduleWs() {
    if (this._closed) return;
    this._setState(this._wsEverOpen ? 'reconnecting' : 'connecting');
    const delay = backoffDelay(this._wsAttempt++, this.minDelay, this.maxDelay);
    clearTimeout(this._wsTimer);
    this._wsTimer = setTimeout(() => this._connectWs(), delay);
  }

  _wsLive() {
    this._wsEverOpen = true;
    this._wsAttempt = 0;
    this._setState('live');
  }

  _retryWs(sub) {
    clearTimeout(sub._retryTimer);
    const delay = backoffDelay(sub._retries++, Math.min(this.minDelay, 250), this.maxDelay);
    sub._retryTimer = setTimeout(() => {
      if (this._closed || this.subs.get(sub.topic) !== sub) return;
      // The refused request holds nothing on the gateway: just ask again.
      sub._id = null;
      this._wsSubscribe(sub);
    }, delay);
  }

  _subById(id) {
    for (const sub of this.subs.values()) if (sub._id === id) return sub;
    return null;
  }

  _onWsMessage(msg) {
    switch (msg.type) {
      case 'record': {
        const sub = this.subs.get(msg.topic);
        if (sub) sub._onRecord(msg);
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
      case 'live': this._subById(msg.id)?._caughtUp(msg.replayed, msg.cursor); break;
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
      default: break; // unsubscribed, and anything newer
    }
  }

  // ---- Server-Sent Events ----------------------------------------------

  async _openStream(sub) {
    let st = this._streams.get(sub);
    if (!st) { st = { es: null, attempt: 0, timer: null, everLive: false, live: false }; this._streams.set(sub, st); }
    clearTimeout(st.timer);
    st.es?.close();
    st.es = null;
    st.live = false;
    this._sseState();
    let url;
    try {
      url = await this._tokenUrl('/sse');
    } catch (e) {
      this._emit('error', { code: 'token', message: String(e) });
      return this._scheduleStream(sub, st);
    }
    if (this._closed || sub.closed || this._streams.get(sub) !== st || st.es) return;
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
    const es = new EventSource(url);
    st.es = es;
    es.addEventListener('subscribed', (ev) => {
      const msg = JSON.parse(ev.data);
      msg.id = sub._id;
      sub._onSubscribed(msg);
      st.everLive = true;
      st.live = true;
      st.attempt = 0;
      this._sseState();
    });
    es.addEventListener('live', (ev) => {
      try {
        const msg = JSON.parse(ev.data);
        sub._caughtUp(msg.replayed, msg.cursor);
      } catch { sub._caughtUp(); }
    });
    es.addEventListener('gap', (ev) => sub._onGap(JSON.parse(ev.data)));
    es.onmessage = (ev) => {
      try { sub._onRecord(JSON.parse(ev.data)); } catch { /* not JSON */ }
    };
    es.onerror = () => {
      // We reconnect ourselves: with our cursor (the snapshot rule needs it),
      // a fresh token and our backoff, rather than EventSource's fixed retry.
      es.close();
      if (st.es !== es) return;
      st.es = null;
      st.live = false;
      sub._active = false;
      this._emit('disconnect', { topic: sub.topic, code: null, reason: 'stream ended' });
      this._scheduleStream(sub, st);
    };
  }

  _scheduleStream(sub, st) {
    if (this._closed || sub.closed) return;
    this._sseState();
    const delay = backoffDelay(st.attempt++, this.minDelay, this.maxDelay);
    clearTimeout(st.timer);
    st.timer = setTimeout(() => this._openStream(sub), delay);
  }

  /** The client's state over SSE: live when every stream is live. */
  _sseState() {
    if (this._closed) return;
    const streams = [...this._streams.values()];
    if (streams.every((s) => s.live)) { this._setState('live'); return; }
    this._setState(streams.some((s) => !s.live && s.everLive) ? 'reconnecting' : 'connecting');
  }
}
