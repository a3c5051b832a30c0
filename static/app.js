// The dashboard: a watchlist on topic `prices` and a microblog on topic `posts`,
// both through pushgate.js. URL parameters (for links and tests) beat what the
// page remembers: ?transport=ws|sse&symbols=AAPL,MSFT&maxDelay=ms&delta=1&minMove=2
// (`delta`: quotes after the first arrive as JSON Patches; `minMove`: a gateway-side
// filter keeping only quotes at least that many percent from the open).
import { Pushgate } from './pushgate.js';

const DEMO_SYMBOLS = ['AAPL', 'MSFT', 'GOOG', 'AMZN', 'NVDA', 'TSLA', 'META', 'NFLX'];
const DEFAULT_SYMBOLS = ['AAPL', 'MSFT', 'NVDA', 'TSLA'];
const SPARK_POINTS = 40;
const MAX_POSTS = 50;

const params = new URLSearchParams(location.search);
const store = {
  get(key, fallback) {
    try { const v = localStorage.getItem(`pushgate.${key}`); return v == null ? fallback : JSON.parse(v); } catch { return fallback; }
  },
  set(key, value) {
    try { localStorage.setItem(`pushgate.${key}`, JSON.stringify(value)); } catch { /* private mode */ }
  },
};

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k.startsWith('data-') || k === 'title' || k.startsWith('aria-') || k === 'type') node.setAttribute(k, v);
    else node[k] = v;
  }
  node.append(...children);
  return node;
};

const state = {
  transport: params.get('transport') === 'sse' ? 'sse' : params.get('transport') === 'ws' ? 'ws' : store.get('transport', 'ws'),
  symbols: params.has('symbols')
    ? params.get('symbols').split(',').map(normSymbol).filter(Boolean)
    : store.get('symbols', DEFAULT_SYMBOLS),
  delta: params.has('delta') ? params.get('delta') === '1' : store.get('delta', false),
  minMove: Math.max(0, Number(params.has('minMove') ? params.get('minMove') : store.get('minMove', 0)) || 0),
  patches: 0,        // records rebuilt from a JSON Patch by pushgate.js
  quotes: new Map(), // symbol -> {price, change, change_pct, history[]}
  outside: new Set(), // symbols whose latest quote the filter left out

  posts: new Map(),  // key -> record
  resumed: null,     // {missed, topics} for the last reconnect
  resets: null,      // topic -> reason, for the last reconnect
};
state.symbols = [...new Set(state.symbols)];

let client = null;
let pricesSub = null;

function normSymbol(s) {
  const v = String(s).trim().toUpperCase();
  return /^[A-Z0-9.\-_]{1,16}$/.test(v) ? v : '';
}

// ---- connection ---------------------------------------------------------

function connect() {
  client?.close();
  const maxDelay = Number(params.get('maxDelay')) || undefined;
  client = new Pushgate({ transport: state.transport, maxDelay });
  client.on('state', (s) => {
    if (s === 'reconnecting') state.resumed = state.resets = null; // the next reconnect starts a new tally
    renderState(s);
  });
  client.on('record', renderCounters);
  client.on('reset', (info) => {
    state.resets ??= new Map();
    state.resets.set(info.topic, info.reason);
    const what = [...state.resets].sort().map(([topic, reason]) => (reason ? `${topic} (${reason})` : topic)).join(', ');
    const line = $('[data-testid=reset-line]');
    line.textContent = `missed data on ${what}: reloaded from a fresh snapshot`;
    line.hidden = false;
  });
  client.on('resumed', ({ topic, missed }) => {
    state.resumed ??= { missed: 0, topics: {} };
    state.resumed.missed += missed;
    state.resumed.topics[topic] = missed;
    const detail = Object.entries(state.resumed.topics).sort().map(([t, n]) => `${t} ${n}`).join(', ');
    const line = $('[data-testid=resume-line]');
    line.textContent = `resumed: ${state.resumed.missed} missed update${state.resumed.missed === 1 ? '' : 's'} delivered (${detail})`;
    line.dataset.missed = String(state.resumed.missed);
    line.hidden = false;
  });
  client.on('error', (err) => console.warn('pushgate:', err.code, err.message));
  renderState(client.state);
  subscribePrices();
  client.subscribe('posts', {
    onRecord: onPost,
    onReset: () => { state.posts.clear(); renderPosts(); }, // the fresh snapshot refills it
  });
  renderTransport();
  renderCounters();
}

function subscribePrices() {
  if (!state.symbols.length) {
    pricesSub?.unsubscribe();
    pricesSub = null;
  } else if (pricesSub) {
    pricesSub.setKeys(state.symbols);
  } else {
    const filter = priceFilter();
    pricesSub = client.subscribe('prices', {
      keys: state.symbols,
      ...(filter ? { filter } : {}),
      ...(state.delta ? { delta: 'json-patch' } : {}),
      onRecord: onPrice,
      // Data was missed: forget what we had; the fresh snapshot that follows refills it.
      onReset: () => { state.quotes.clear(); for (const sym of state.symbols) renderQuote(sym); },
    });
  }
}

/** The gateway-side filter for the "moves of at least" option (null: none). */
function priceFilter() {
  const m = state.minMove;
  return m > 0 ? { or: [{ change_pct: { gte: m } }, { change_pct: { lte: -m } }] } : null;
}

/** New delivery options: subscribe again, starting from a fresh snapshot. */
function setDelivery({ delta = state.delta, minMove = state.minMove }) {
  minMove = Math.max(0, Number(minMove) || 0);
  if (delta === state.delta && minMove === state.minMove) return;
  Object.assign(state, { delta, minMove });
  store.set('delta', delta);
  store.set('minMove', minMove);
  pricesSub?.unsubscribe();
  pricesSub = null;
  state.quotes.clear();
  state.outside.clear();
  renderDelivery();
  for (const sym of state.symbols) renderQuote(sym);
  subscribePrices();
}

function switchTransport(transport) {
  if (transport === state.transport) return;
  state.transport = transport;
  store.set('transport', transport);
  pricesSub = null;
  connect();
}

// ---- prices -------------------------------------------------------------

function onPrice(rec) {
  const sym = rec.key;
  if (!state.symbols.includes(sym)) return;
  if (rec.patched) { state.patches++; $('[data-testid=patches-applied]').textContent = String(state.patches); }
  if (rec.op === 'leave') {
    // The quote moved back inside the band: the last one shown is no longer current.
    state.outside.add(sym);
    renderQuote(sym);
    renderCursor();
    return;
  }
  state.outside.delete(sym);
  const d = rec.data ?? {};
  if (typeof d.price !== 'number') return;
  const q = state.quotes.get(sym) ?? { history: [] };
  const prev = q.price;
  Object.assign(q, { price: d.price, change: d.change, change_pct: d.change_pct, open: d.open });
  if (!rec.snapshot || q.history.length === 0) q.history.push(d.price);
  if (q.history.length > SPARK_POINTS) q.history.splice(0, q.history.length - SPARK_POINTS);
  state.quotes.set(sym, q);
  renderQuote(sym, prev);
  renderCursor();
}

function addSymbol(raw) {
  const sym = normSymbol(raw);
  if (!sym || state.symbols.includes(sym)) return false;
  state.symbols.push(sym);
  store.set('symbols', state.symbols);
  renderTickers();
  subscribePrices();
  return true;
}

function removeSymbol(sym) {
  state.symbols = state.symbols.filter((s) => s !== sym);
  state.quotes.delete(sym);
  store.set('symbols', state.symbols);
  renderTickers();
  subscribePrices();
}

const fmtPrice = (n) => n.toLocaleString('en-US', { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const fmtSigned = (n, digits = 2) => `${n > 0 ? '+' : n < 0 ? '−' : ''}${Math.abs(n).toFixed(digits)}`;

function tickerRow(sym) {
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', '0 0 100 32');
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('data-testid', `spark-${sym}`);
  svg.setAttribute('aria-hidden', 'true');
  const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
  svg.append(line);
  return el('li', { class: 'ticker', 'data-testid': `ticker-${sym}`, 'data-symbol': sym },
    el('div', { class: 'sym' }, el('strong', {}, sym)),
    svg,
    el('div', { class: 'quote' },
      el('span', { class: 'price', 'data-testid': `price-${sym}` }, '—'),
      el('span', { class: 'change', 'data-testid': `change-${sym}` }, '')),
    el('button', { class: 'remove', type: 'button', 'data-testid': `remove-${sym}`, title: `Remove ${sym}`, 'aria-label': `Remove ${sym}`, onclick: () => removeSymbol(sym) }, '×'));
}

function renderTickers() {
  const list = $('[data-testid=ticker-list]');
  const existing = new Map([...list.children].map((li) => [li.dataset.symbol, li]));
  for (const [sym, li] of existing) if (!state.symbols.includes(sym)) li.remove();
  for (const sym of state.symbols) {
    let li = existing.get(sym);
    if (!li) { li = tickerRow(sym); renderQuote(sym, undefined, li); }
    list.append(li);
  }
  $('[data-testid=tickers-empty]').hidden = state.symbols.length > 0;
  const chips = $('[data-testid=suggestions]');
  chips.replaceChildren(...DEMO_SYMBOLS.filter((s) => !state.symbols.includes(s)).map((s) =>
    el('button', { type: 'button', class: 'chip', 'data-testid': `suggest-${s}`, onclick: () => addSymbol(s) }, `+ ${s}`)));
  $('#symbol-suggestions').replaceChildren(...DEMO_SYMBOLS.map((s) => el('option', { value: s })));
}

function renderQuote(sym, prev, li = document.querySelector(`[data-testid="ticker-${sym}"]`)) {
  if (!li) return;
  const q = state.quotes.get(sym);
  const price = li.querySelector('.price');
  const change = li.querySelector('.change');
  const outside = state.minMove > 0 && (!q || state.outside.has(sym));
  li.dataset.outside = String(outside);
  li.title = outside ? `within ±${state.minMove}% of the open` : '';
  if (!q) { price.textContent = '—'; change.textContent = outside ? `< ±${state.minMove}%` : ''; return; }
  price.textContent = fmtPrice(q.price);
  price.dataset.value = String(q.price);
  if (typeof q.change === 'number') {
    const pct = typeof q.change_pct === 'number' ? ` (${fmtSigned(q.change_pct)}%)` : '';
    change.textContent = `${fmtSigned(q.change)}${pct}`;
  } else {
    change.textContent = '';
  }
  li.classList.toggle('up', (q.change ?? 0) > 0);
  li.classList.toggle('down', (q.change ?? 0) < 0);
  if (prev !== undefined && prev !== q.price) {
    li.classList.remove('flash-up', 'flash-down');
    void li.offsetWidth; // restart the animation
    li.classList.add(q.price > prev ? 'flash-up' : 'flash-down');
  }
  const pts = q.history;
  const min = Math.min(...pts);
  const max = Math.max(...pts);
  const span = max - min || 1;
  const coords = pts.length === 1 ? [[0, 16], [100, 16]] : pts.map((p, i) => [(i / (pts.length - 1)) * 100, 29 - ((p - min) / span) * 26]);
  li.querySelector('.spark polyline').setAttribute('points', coords.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(' '));
}

// ---- posts --------------------------------------------------------------

function onPost(rec) {
  if (!rec.key || !rec.data || typeof rec.data.text !== 'string') return;
  state.posts.set(rec.key, rec);
  renderPosts();
}

function renderPosts() {
  const posts = [...state.posts.values()]
    .sort((a, b) => (b.timestamp - a.timestamp) || (b.offset - a.offset))
    .slice(0, MAX_POSTS);
  const list = $('[data-testid=post-list]');
  list.replaceChildren(...posts.map((p) => el('li', { class: 'post', 'data-testid': 'post', 'data-key': p.key },
    el('div', { class: 'post-meta' },
      el('strong', { class: 'author' }, String(p.data.author || 'anonymous')),
      el('time', { dateTime: new Date(p.timestamp).toISOString(), title: new Date(p.timestamp).toLocaleString() }, timeAgo(p.timestamp))),
    el('p', { class: 'post-text', 'data-testid': 'post-text-out' }, p.data.text))));
  $('[data-testid=posts-empty]').hidden = posts.length > 0;
}

function timeAgo(ts) {
  const s = Math.max(0, Math.round((Date.now() - ts) / 1000));
  if (s < 60) return s < 5 ? 'just now' : `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return new Date(ts).toLocaleDateString();
}

async function publishPost(ev) {
  ev.preventDefault();
  const author = $('#post-author').value.trim();
  const text = $('#post-text').value.trim();
  const error = $('[data-testid=post-error]');
  error.textContent = '';
  if (!author || !text) return;
  store.set('author', author);
  const button = $('[data-testid=post-submit]');
  button.disabled = true;
  try {
    const key = `post-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
    await client.publish('posts', { key, data: { author, text } });
    $('#post-text').value = '';
  } catch (e) {
    error.textContent = `Not published: ${e.message}`;
  } finally {
    button.disabled = false;
  }
}

// ---- connection panel ---------------------------------------------------

function renderState(s) {
  const badge = $('[data-testid=conn-state]');
  badge.dataset.state = s;
  badge.querySelector('.status-text').textContent = s;
  $('[data-testid=state-text]').textContent = `${s} · ${state.transport === 'ws' ? 'WebSocket' : 'SSE'}`;
  $('[data-testid=reconnects]').textContent = String(client?.reconnects ?? 0);
}

function renderTransport() {
  for (const b of document.querySelectorAll('[data-transport]')) {
    const on = b.dataset.transport === state.transport;
    b.setAttribute('aria-checked', String(on));
    b.classList.toggle('on', on);
  }
  document.body.dataset.transport = state.transport;
  renderState(client.state);
}

function renderCursor() {
  const cursor = pricesSub?.cursor;
  if (cursor) {
    const code = $('[data-testid=cursor]');
    code.textContent = cursor;
    code.title = cursor;
  }
}

function renderDelivery() {
  $('#opt-delta').checked = state.delta;
  $('#opt-min-move').value = state.minMove > 0 ? String(state.minMove) : '';
  $('[data-testid=filter-text]').textContent = state.minMove > 0 ? `|move| ≥ ${state.minMove}%` : 'none';
}

function renderCounters() {
  $('[data-testid=records-received]').textContent = String(client.received);
}

// ---- start --------------------------------------------------------------

$('[data-testid=add-form]').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const input = $('#symbol-input');
  if (addSymbol(input.value)) input.value = '';
});
$('[data-testid=post-form]').addEventListener('submit', publishPost);
$('[data-testid=delivery-form]').addEventListener('submit', (ev) => ev.preventDefault());
$('#opt-delta').addEventListener('change', (ev) => setDelivery({ delta: ev.target.checked }));
$('#opt-min-move').addEventListener('change', (ev) => setDelivery({ minMove: ev.target.value }));
for (const b of document.querySelectorAll('[data-transport]')) {
  b.addEventListener('click', () => switchTransport(b.dataset.transport));
}
$('#post-author').value = store.get('author', '');
setInterval(() => { if (state.posts.size) renderPosts(); }, 30000);

renderDelivery();
renderTickers();
connect();
// For tests and the curious: the live client.
Object.defineProperty(window, 'pushgate', { get: () => client });
