// Built from clients/js/src/index.ts by clients/js/scripts/build.mjs: do not edit here.
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
const OPEN = 1;
/** Full-jitter exponential backoff: a random delay in [0, min(cap, base * 2^attempt)). */
export function backoffDelay(attempt, base, cap) {
    return Math.random() * Math.min(cap, base * 2 ** Math.min(attempt, 30));
}
/**
 * The delay before the next attempt after a lost connection, from the
 * gateway's hint: a WebSocket close code, or an HTTP refusal's status and
 * `Retry-After` (seconds). `attempt` counts failures in a row.
 */
export function reconnectDelay(hint, attempt, base, cap) {
    const { code, status, retryAfter } = hint;
    if (retryAfter !== undefined && retryAfter >= 0) {
        // Never sooner than the gateway asked; jitter spreads a crowd of clients.
        return retryAfter * 1000 + Math.random() * base;
    }
    if (status === 429)
        return cap / 2 + Math.random() * (cap / 2);
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
export function applyPatch(doc, ops) {
    let root = structuredClone(doc);
    const parse = (path) => path === '' ? [] : path.slice(1).split('/').map((t) => t.replace(/~1/g, '/').replace(/~0/g, '~'));
    const get = (tokens) => tokens.reduce((at, t) => {
        if (at === null || typeof at !== 'object' || !(t in at))
            throw new Error(`no value at /${tokens.join('/')}`);
        return at[t];
    }, root);
    const put = (tokens, value, insert) => {
        if (tokens.length === 0) {
            root = value;
            return;
        }
        const parent = get(tokens.slice(0, -1));
        const last = tokens[tokens.length - 1];
        if (Array.isArray(parent)) {
            const i = last === '-' ? parent.length : Number(last);
            if (!Number.isInteger(i) || i < 0 || i > parent.length)
                throw new Error(`bad array index ${last}`);
            if (insert)
                parent.splice(i, 0, value);
            else
                parent[i] = value;
        }
        else if (parent !== null && typeof parent === 'object') {
            parent[last] = value;
        }
        else {
            throw new Error(`cannot add below a scalar at /${tokens.join('/')}`);
        }
    };
    const remove = (tokens) => {
        const value = get(tokens);
        if (tokens.length === 0) {
            root = null;
            return value;
        }
        const parent = get(tokens.slice(0, -1));
        const last = tokens[tokens.length - 1];
        if (Array.isArray(parent))
            parent.splice(Number(last), 1);
        else
            delete parent[last];
        return value;
    };
    for (const op of ops) {
        const path = parse(op.path);
        switch (op.op) {
            case 'add':
                put(path, structuredClone(op.value), true);
                break;
            case 'replace':
                get(path);
                put(path, structuredClone(op.value), false);
                break;
            case 'remove':
                remove(path);
                break;
            case 'move': {
                const v = remove(parse(op.from ?? ''));
                put(path, v, true);
                break;
            }
            case 'copy':
                put(path, structuredClone(get(parse(op.from ?? ''))), true);
                break;
            case 'test':
                if (JSON.stringify(get(path)) !== JSON.stringify(op.value))
                    throw new Error(`test failed at ${op.path}`);
                break;
            default: throw new Error(`unknown patch op ${op.op}`);
        }
    }
    return root;
}
/** A tiny event emitter. */
class Emitter {
    _handlers = new Map();
    /** Adds a handler; returns a function that removes it. */
    on(event, fn) {
        let set = this._handlers.get(event);
        if (!set) {
            set = new Set();
            this._handlers.set(event, set);
        }
        set.add(fn);
        return () => { this._handlers.get(event)?.delete(fn); };
    }
    _emit(event, arg) {
        for (const fn of this._handlers.get(event) ?? []) {
            try {
                fn(arg);
            }
            catch (e) {
                setTimeout(() => { throw e; });
            }
        }
    }
}
/** A subscription to one topic. Created by {@link Pushgate.subscribe}. */
export class Subscription {
    client;
    topic;
    keys;
    prefix;
    snapshot;
    filter;
    fields;
    delta;
    maxRate;
    resume;
    /**
     * Latest cursor: where a resume starts. Mid-snapshot it is the cursor of the
     * last snapshot record delivered (a snapshot position: the gateway goes on
     * with the keys after it); null only before the first snapshot record.
     */
    cursor;
    /** Whether catch-up is over for the current request (its `live` arrived). */
    live = false;
    /** Records delivered to this subscription (snapshot included). */
    received = 0;
    /** Set when the current request's snapshot lacks keys of the view; null when it is complete. */
    snapshotPartial = null;
    closed = false;
    handlers;
    /** With `delta`: the last whole value of each key, the base of the next patch. */
    values = new Map();
    // Per-request state.
    /** @internal */ _id = null;
    /** @internal */ _active = false;
    _resuming = false;
    _snapshotLeft = 0;
    _pendingReset = false;
    _catchingUp = false;
    _missed = 0;
    /** @internal `unavailable` answers in a row (a node still warming). */
    _retries = 0;
    /** @internal */ _retryTimer;
    constructor(client, topic, opts) {
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
    setKeys(keys) {
        if (this.closed)
            return;
        this.keys = keys ? [...keys] : undefined;
        if (this.snapshot)
            this.cursor = null;
        this.client._resubscribe(this);
    }
    /** Stops the subscription. */
    unsubscribe() {
        if (this.closed)
            return;
        this.closed = true;
        this.client._remove(this);
    }
    /** @internal The subscribe request for the next attempt. */
    _request(id) {
        this._id = id;
        this._active = false;
        this.live = false;
        this._resuming = this.cursor != null;
        this._snapshotLeft = 0;
        this._pendingReset = false;
        this._catchingUp = this._resuming;
        this._missed = 0;
        const req = { type: 'subscribe', id, topic: this.topic, snapshot: this.snapshot };
        if (this.keys)
            req.keys = this.keys;
        if (this.prefix)
            req.prefix = this.prefix;
        if (this.cursor)
            req.cursor = this.cursor;
        if (this.filter !== undefined)
            req.filter = this.filter;
        if (this.fields)
            req.fields = this.fields;
        if (this.delta)
            req.delta = this.delta;
        if (this.maxRate !== undefined)
            req.max_rate = this.maxRate;
        if (this.resume)
            req.resume = this.resume;
        return req;
    }
    /** @internal */
    _onSubscribed(msg) {
        this._active = true;
        this._retries = 0;
        this._snapshotLeft = msg.snapshot || 0;
        this.snapshotPartial = msg.snapshot_partial
            ? { topic: this.topic, reason: String(msg.snapshot_partial_reason ?? ''), skipped: null }
            : null;
        // A snapshot to come: before its first record nothing is resumable, except
        // when this request resumed one mid-way (recovered, with a snapshot
        // position): then `cursor` is that position, to resume again from it.
        if (this._snapshotLeft === 0)
            this.cursor = msg.cursor;
        else if (!(this._resuming && msg.recovered !== false))
            this.cursor = null;
        else
            this.cursor = msg.cursor ?? this.cursor;
        if (this._resuming && msg.recovered === false) {
            this._pendingReset = true;
            this._catchingUp = false;
        }
        this.handlers.onSubscribed?.(msg);
        this.client._emitPublic('subscribed', msg);
    }
    /** @internal */
    _onGap(msg) {
        this._pendingReset = false;
        this._reset({ topic: this.topic, reason: msg.reason ?? null, earliest: msg.earliest ?? null });
    }
    _reset(info) {
        this.handlers.onReset?.(info);
        this.client._emitPublic('reset', info);
    }
    /** @internal */
    _onRecord(rec) {
        if (!this._active)
            return; // left over from an earlier request
        if (!this._whole(rec))
            return;
        if (this._pendingReset) {
            this._pendingReset = false;
            this._reset({ topic: this.topic, reason: null, earliest: null });
        }
        if (rec.snapshot) {
            // Each snapshot record's cursor resumes the snapshot right after its key
            // (the last one's is the live position): a drop continues from there.
            this._snapshotLeft = Math.max(0, this._snapshotLeft - 1);
            this.cursor = rec.cursor;
        }
        else {
            // Changes replayed before the rest of a resumed snapshot carry cursors
            // without its position: the snapshot position stays the resume point.
            if (this._snapshotLeft === 0)
                this.cursor = rec.cursor;
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
    _whole(rec) {
        if (!this.delta || rec.key == null)
            return true;
        if (rec.op === 'leave' || rec.op === 'delete') {
            this.values.delete(rec.key);
            return true;
        }
        if (rec.patch === undefined) {
            this.values.set(rec.key, rec.data);
            return true;
        }
        let data;
        try {
            if (!this.values.has(rec.key))
                throw new Error(`a patch for ${rec.key} without its base value`);
            data = applyPatch(this.values.get(rec.key), rec.patch);
        }
        catch (e) {
            // Never expected from a gateway: resubscribe from the cursor, whose
            // replay brings each key whole first.
            this._onError({ code: 'delta', message: String(e?.message ?? e) });
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
    _caughtUp(msg) {
        // The snapshot is over, whatever `subscribed` counted (one that moved on
        // to a newer view sends the keys that view has). With a filter, `live`
        // carries a cursor past records the filter left out.
        this._snapshotLeft = 0;
        if (msg.cursor)
            this.cursor = msg.cursor;
        this.live = true;
        const partial = this.snapshotPartial;
        if (partial) {
            partial.skipped = typeof msg.snapshot_skipped === 'number' ? msg.snapshot_skipped : null;
            this.handlers.onPartialSnapshot?.(partial);
            this.client._emitPublic('partial_snapshot', partial);
        }
        this.handlers.onLive?.(msg);
        if (!this._catchingUp)
            return;
        this._catchingUp = false;
        const info = { topic: this.topic, missed: msg.replayed ?? this._missed };
        this.handlers.onResumed?.(info);
        this.client._emitPublic('resumed', info);
    }
    /** @internal */
    _onError(err) {
        this.handlers.onError?.(err);
        this.client._emitPublic('error', { topic: this.topic, ...err });
    }
}
/** The `Retry-After` of a response, in seconds (a number or an HTTP date). */
function retryAfterOf(value) {
    if (value == null || value === '')
        return undefined;
    const n = Number(value);
    if (Number.isFinite(n))
        return Math.max(0, n);
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
    url;
    transport;
    getToken;
    minDelay;
    maxDelay;
    heartbeat;
    state = 'connecting';
    /** Records received, all subscriptions together. */
    received = 0;
    /** Reconnects so far (times the state went from reconnecting to live). */
    reconnects = 0;
    /** WebSocket connections opened so far. */
    sockets = 0;
    /** Subscriptions by topic. */
    subs = new Map();
    _seq = 0;
    _closed = false;
    _token = null;
    _WebSocket;
    _EventSource;
    _fetch;
    // WebSocket state.
    _ws = null;
    _wsAttempt = 0;
    _wsTimer;
    _wsEverOpen = false;
    _lastSeen = 0;
    _beat;
    // SSE state, per subscription.
    _streams = new Map();
    constructor(options = {}) {
        super();
        const g = globalThis;
        this.url = (options.url ?? g.location?.origin ?? '').replace(/\/$/, '');
        this.transport = options.transport === 'sse' ? 'sse' : 'ws';
        this.getToken = options.getToken;
        this.minDelay = options.minDelay ?? 500;
        this.maxDelay = options.maxDelay ?? 15000;
        this.heartbeat = options.heartbeat ?? 30000;
        this._WebSocket = options.WebSocket ?? g.WebSocket;
        this._EventSource = options.EventSource === undefined ? g.EventSource : options.EventSource;
        this._fetch = options.fetch ?? ((...args) => g.fetch(...args));
        if (this.transport === 'ws')
            void this._connectWs();
    }
    /** Subscribes to a topic (one subscription per topic per client). */
    subscribe(topic, opts = {}) {
        if (this.subs.has(topic))
            throw new Error(`already subscribed to ${topic}; use setKeys or unsubscribe first`);
        const sub = new Subscription(this, topic, opts);
        this.subs.set(topic, sub);
        if (this.transport === 'ws')
            this._wsSubscribe(sub);
        else
            void this._openStream(sub);
        return sub;
    }
    /** Publishes one record (or `{records: [...]}`) through the HTTP API. */
    async publish(topic, record) {
        const headers = await this._authHeaders({ 'content-type': 'application/json' });
        const res = await this._fetch(`${this.url}/topics/${encodeURIComponent(topic)}`, {
            method: 'POST', headers, body: JSON.stringify(record),
        });
        const body = await res.json().catch(() => ({}));
        if (!res.ok)
            throw Object.assign(new Error(body.message || `publish failed: ${res.status}`), { status: res.status, code: body.error });
        return body;
    }
    async fetchSince(topic, cursorOrOpts, rest = {}) {
        const opts = cursorOrOpts !== null && typeof cursorOrOpts === 'object'
            ? cursorOrOpts
            : { ...rest, cursor: cursorOrOpts ?? rest.cursor };
        const u = new URL(`${this.url}/topics/${encodeURIComponent(topic)}/records`, globalThis.location?.href);
        if (opts.cursor)
            u.searchParams.set('cursor', opts.cursor);
        for (const k of opts.keys ?? [])
            u.searchParams.append('key', k);
        if (opts.prefix)
            u.searchParams.set('prefix', opts.prefix);
        if (opts.filter !== undefined)
            u.searchParams.set('filter', JSON.stringify(opts.filter));
        for (const f of opts.fields ?? [])
            u.searchParams.append('fields', f);
        if (opts.limit !== undefined)
            u.searchParams.set('limit', String(opts.limit));
        for (let attempt = 0;; attempt++) {
            const headers = await this._authHeaders({ accept: 'application/json' });
            const res = await this._fetch(u.toString(), { headers });
            const body = await res.json().catch(() => ({}));
            if (res.ok)
                return body;
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
    async refreshToken() {
        if (!this.getToken)
            return;
        this._token = await this.getToken();
        if (this.transport === 'ws') {
            if (this._ws?.readyState === OPEN && this._token)
                this._send({ type: 'refresh', token: this._token });
        }
        else {
            for (const sub of this.subs.values())
                void this._openStream(sub);
        }
    }
    /**
     * The network is back (the app learned it from the platform): forget the
     * backoff and reconnect now whatever is not connected.
     */
    networkAvailable() {
        if (this._closed)
            return;
        if (this.transport === 'ws') {
            this._wsAttempt = 0;
            if (!this._ws) {
                clearTimeout(this._wsTimer);
                void this._connectWs();
            }
        }
        else {
            for (const [sub, st] of this._streams) {
                st.attempt = 0;
                if (!st.open)
                    void this._openStream(sub);
            }
        }
    }
    /** Closes everything; no more reconnects. */
    close() {
        this._closed = true;
        clearTimeout(this._wsTimer);
        clearInterval(this._beat);
        if (this._ws) {
            this._ws.onclose = null;
            this._ws.close(1000);
            this._ws = null;
        }
        for (const st of this._streams.values()) {
            clearTimeout(st.timer);
            st.close();
        }
        this._streams.clear();
        for (const sub of this.subs.values())
            clearTimeout(sub._retryTimer);
        this._setState('closed');
    }
    /** @internal */
    _emitPublic(event, arg) { this._emit(event, arg); }
    _setState(state) {
        if (this.state === state)
            return;
        if (this.state === 'reconnecting' && state === 'live')
            this.reconnects++;
        this.state = state;
        this._emit('state', state);
    }
    async _authHeaders(base) {
        const token = this.getToken ? await this.getToken() : null;
        if (token)
            base.authorization = `Bearer ${token}`;
        return base;
    }
    async _tokenUrl(path) {
        this._token = this.getToken ? await this.getToken() : null;
        const u = new URL(this.url + path, globalThis.location?.href);
        if (this._token)
            u.searchParams.set('access_token', this._token);
        return u;
    }
    _nextId(topic) { return `${topic}#${++this._seq}`; }
    /** @internal */
    _remove(sub) {
        if (this.subs.get(sub.topic) !== sub)
            return;
        this.subs.delete(sub.topic);
        clearTimeout(sub._retryTimer);
        if (this.transport === 'ws') {
            if (sub._id)
                this._send({ type: 'unsubscribe', id: sub._id });
        }
        else {
            const st = this._streams.get(sub);
            if (st) {
                clearTimeout(st.timer);
                st.close();
                this._streams.delete(sub);
            }
            this._sseState();
        }
    }
    /** @internal */
    _resubscribe(sub) {
        if (this.transport === 'ws') {
            if (sub._id)
                this._send({ type: 'unsubscribe', id: sub._id });
            sub._id = null;
            sub._active = false;
            sub.live = false;
            this._wsSubscribe(sub);
        }
        else {
            void this._openStream(sub);
        }
    }
    // ---- WebSocket -------------------------------------------------------
    _send(msg) {
        if (this._ws?.readyState === OPEN) {
            this._ws.send(JSON.stringify(msg));
            return true;
        }
        return false;
    }
    _wsSubscribe(sub) {
        if (this._ws?.readyState !== OPEN)
            return; // sent on open
        this._send(sub._request(this._nextId(sub.topic)));
    }
    /** The WebSocket class: the given or global one, else (Node) the `ws` package. */
    async _wsClass() {
        if (this._WebSocket)
            return this._WebSocket;
        const name = 'ws'; // not a static import: browsers and bundlers never see it
        const mod = await import(name);
        this._WebSocket = (mod.WebSocket ?? mod.default);
        return this._WebSocket;
    }
    async _connectWs() {
        if (this._closed)
            return;
        this._setState(this._wsEverOpen ? 'reconnecting' : 'connecting');
        let url;
        let Ctor;
        try {
            url = await this._tokenUrl('/ws');
            Ctor = await this._wsClass();
        }
        catch (e) {
            this._emit('error', { code: 'token', message: String(e) });
            return this._scheduleWs({ code: null, reason: 'no token' });
        }
        if (this._closed || this._ws)
            return;
        url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
        const ws = new Ctor(url.toString());
        this.sockets++;
        this._ws = ws;
        let refusal;
        // The `ws` package shows a refused handshake's status and Retry-After; browsers do not.
        ws.on?.('unexpected-response', (_req, res) => {
            refusal = { status: res.statusCode, retryAfter: retryAfterOf(res.headers?.['retry-after']) };
            res.resume?.();
            ws.terminate?.();
        });
        ws.on?.('error', () => { });
        ws.onopen = () => {
            this._lastSeen = Date.now();
            for (const sub of this.subs.values()) {
                clearTimeout(sub._retryTimer);
                sub._id = null;
                this._wsSubscribe(sub);
            }
            if (this.subs.size === 0)
                this._wsLive();
            clearInterval(this._beat);
            this._beat = setInterval(() => {
                if (Date.now() - this._lastSeen > 2 * this.heartbeat) {
                    // A half-open connection may take minutes to report its close: drop it now.
                    ws.close(4000, 'heartbeat timeout');
                    lost(4000, 'heartbeat timeout');
                }
                else {
                    this._send({ type: 'ping' });
                }
            }, this.heartbeat);
        };
        ws.onmessage = (ev) => {
            this._lastSeen = Date.now();
            let msg;
            try {
                msg = JSON.parse(String(ev.data));
            }
            catch {
                return;
            }
            this._onWsMessage(msg);
        };
        const lost = (code, reason) => {
            if (this._ws !== ws)
                return;
            this._ws = null;
            clearInterval(this._beat);
            for (const sub of this.subs.values()) {
                sub._active = false;
                sub.live = false;
            }
            this._scheduleWs({ code: refusal ? null : code, reason, ...refusal });
        };
        ws.onclose = (ev) => lost(ev.code, ev.reason);
    }
    _scheduleWs(hint) {
        if (this._closed)
            return;
        this._setState(this._wsEverOpen ? 'reconnecting' : 'connecting');
        // A drain or an expired token is not a failure of ours: start the backoff over.
        if (hint.code === 1012 || hint.code === 4010)
            this._wsAttempt = 0;
        const delay = reconnectDelay(hint, this._wsAttempt++, this.minDelay, this.maxDelay);
        this._emit('disconnect', { ...hint, delay });
        clearTimeout(this._wsTimer);
        this._wsTimer = setTimeout(() => void this._connectWs(), delay);
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
            if (this._closed || this.subs.get(sub.topic) !== sub)
                return;
            // The refused request holds nothing on the gateway: just ask again.
            sub._id = null;
            this._wsSubscribe(sub);
        }, delay);
    }
    _subById(id) {
        for (const sub of this.subs.values())
            if (sub._id === id)
                return sub;
        return null;
    }
    _onWsMessage(msg) {
        switch (msg.type) {
            case 'record': {
                const sub = this.subs.get(msg.topic);
                if (sub)
                    sub._onRecord(msg);
                break;
            }
            case 'subscribed': {
                const sub = this._subById(msg.id);
                if (!sub)
                    break;
                sub._onSubscribed(msg);
                this._wsLive();
                break;
            }
            case 'gap':
                this._subById(msg.id)?._onGap(msg);
                break;
            case 'token_expiring':
                // The gateway closes (4010) after `grace_ms` unless a fresh token comes in-band.
                this.refreshToken().catch((e) => this._emit('error', { code: 'token', message: String(e) }));
                break;
            case 'refreshed':
                this._emit('refreshed', msg);
                break;
            // Catch-up (snapshot or replay) is over; what follows is live.
            case 'live':
                this._subById(msg.id)?._caughtUp(msg);
                break;
            case 'error': {
                const sub = msg.id != null ? this._subById(msg.id) : null;
                const err = { code: msg.code, message: msg.message };
                if (sub) {
                    sub._onError(err);
                    this._wsLive();
                    // `unavailable` means "retry shortly" (a node still warming a topic,
                    // or one not yet as far as the cursor): this subscription alone is
                    // asked again soon, on the same socket, with its own backoff.
                    if (msg.code === 'unavailable')
                        this._retryWs(sub);
                }
                else
                    this._emit('error', err);
                break;
            }
            default: break; // unsubscribed, pong, and anything newer
        }
    }
    // ---- Server-Sent Events ----------------------------------------------
    async _openStream(sub) {
        let st = this._streams.get(sub);
        if (!st) {
            st = { close: () => { }, attempt: 0, timer: undefined, everLive: false, live: false, open: false };
            this._streams.set(sub, st);
        }
        clearTimeout(st.timer);
        st.close();
        st.close = () => { };
        st.live = false;
        st.open = true; // an attempt is under way
        this._sseState();
        const mine = {};
        st.attemptToken = mine;
        let url;
        try {
            url = await this._tokenUrl('/sse');
        }
        catch (e) {
            this._emit('error', { code: 'token', message: String(e) });
            return this._scheduleStream(sub, st, { code: null, reason: 'no token' });
        }
        if (this._closed || sub.closed || this._streams.get(sub) !== st || st.attemptToken !== mine)
            return;
        const req = sub._request(this._nextId(sub.topic));
        url.searchParams.set('topic', sub.topic);
        for (const k of req.keys ?? [])
            url.searchParams.append('key', k);
        if (req.prefix)
            url.searchParams.set('prefix', req.prefix);
        if (req.cursor)
            url.searchParams.set('cursor', req.cursor);
        if (!req.snapshot)
            url.searchParams.set('snapshot', 'false');
        if (req.filter !== undefined)
            url.searchParams.set('filter', JSON.stringify(req.filter));
        for (const f of req.fields ?? [])
            url.searchParams.append('field', f);
        if (req.delta)
            url.searchParams.set('delta', req.delta);
        if (req.max_rate !== undefined)
            url.searchParams.set('max_rate', String(req.max_rate));
        if (req.resume)
            url.searchParams.set('resume', req.resume);
        const stream = st;
        const onEvent = (name, data) => {
            let msg;
            try {
                msg = JSON.parse(data);
            }
            catch {
                return;
            }
            switch (name) {
                case 'subscribed':
                    msg.id = sub._id;
                    sub._onSubscribed(msg);
                    stream.everLive = true;
                    stream.live = true;
                    stream.attempt = 0;
                    this._sseState();
                    break;
                case 'live':
                    sub._caughtUp(msg);
                    break;
                case 'gap':
                    sub._onGap(msg);
                    break;
                case 'message':
                    sub._onRecord(msg);
                    break;
                default: break;
            }
        };
        const ended = (hint) => {
            if (stream.attemptToken !== mine)
                return;
            stream.attemptToken = null;
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
            for (const name of ['subscribed', 'live', 'gap'])
                es.addEventListener(name, (ev) => onEvent(name, ev.data));
            es.onmessage = (ev) => onEvent('message', ev.data);
            // We reconnect ourselves: with our cursor (the snapshot rule needs it),
            // a fresh token and our backoff, rather than EventSource's fixed retry.
            es.onerror = () => ended({ code: null, reason: 'stream ended' });
        }
        else {
            const abort = new AbortController();
            stream.close = () => abort.abort();
            void this._readSse(url, abort.signal, onEvent).then(ended, (e) => ended({ code: null, reason: abort.signal.aborted ? 'closed' : String(e?.message ?? e) }));
        }
    }
    /** Reads an event stream with `fetch` (no EventSource here); resolves with why it ended. */
    async _readSse(url, signal, onEvent) {
        const res = await this._fetch(url.toString(), { headers: { accept: 'text/event-stream' }, signal });
        if (!res.ok || !res.body) {
            const body = await res.json().catch(() => ({}));
            if (res.status === 401 || res.status === 403 || res.status === 404 || res.status === 400) {
                this._emit('error', { code: body.error ?? String(res.status), message: body.message ?? '', status: res.status });
            }
            return { code: null, reason: body.error ?? 'refused', status: res.status, retryAfter: retryAfterOf(res.headers.get('retry-after')) };
        }
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buf = '';
        let name = 'message';
        let data = [];
        for (;;) {
            const { done, value } = await reader.read();
            if (done)
                return { code: null, reason: 'stream ended' };
            buf += decoder.decode(value, { stream: true });
            let nl;
            while ((nl = buf.indexOf('\n')) >= 0) {
                let line = buf.slice(0, nl);
                buf = buf.slice(nl + 1);
                if (line.endsWith('\r'))
                    line = line.slice(0, -1);
                if (line === '') {
                    if (data.length)
                        onEvent(name, data.join('\n'));
                    name = 'message';
                    data = [];
                }
                else if (line.startsWith(':')) {
                    // comment (keep-alive)
                }
                else {
                    const colon = line.indexOf(':');
                    const field = colon < 0 ? line : line.slice(0, colon);
                    let val = colon < 0 ? '' : line.slice(colon + 1);
                    if (val.startsWith(' '))
                        val = val.slice(1);
                    if (field === 'event')
                        name = val;
                    else if (field === 'data')
                        data.push(val);
                }
            }
        }
    }
    _scheduleStream(sub, st, hint) {
        if (this._closed || sub.closed)
            return;
        st.open = false;
        this._sseState();
        const delay = reconnectDelay(hint, st.attempt++, this.minDelay, this.maxDelay);
        this._emit('disconnect', { ...hint, delay });
        clearTimeout(st.timer);
        st.timer = setTimeout(() => void this._openStream(sub), delay);
    }
    /** The client's state over SSE: live when every stream is live. */
    _sseState() {
        if (this._closed)
            return;
        const streams = [...this._streams.values()];
        if (streams.every((s) => s.live)) {
            this._setState('live');
            return;
        }
        this._setState(streams.some((s) => !s.live && s.everLive) ? 'reconnecting' : 'connecting');
    }
}
