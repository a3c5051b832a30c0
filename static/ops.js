// The ops page: polls the admin API of the node that serves it (GET
// /admin/stats, /admin/topics, /admin/revocations, /admin/connections) once a
// second. The token is typed in and kept in this tab's sessionStorage, sent
// only as `Authorization: Bearer`; rates are computed from two readings of
// /admin/stats, timed by the node's clock.
'use strict';
(() => {
  const KEY = 'pushgate-admin-token';
  const EVERY_MS = 1000;
  const MAX_CONNECTIONS_SHOWN = 50;
  const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
  const form = document.getElementById('token-form');
  const input = document.getElementById('token');
  let previous = null; // the last /admin/stats reading
  let timer = null;

  function status(text, kind = 'info') {
    const el = $('status');
    el.textContent = text;
    el.dataset.kind = kind;
  }

  const fmt = (n, digits = 0) => (n === null || n === undefined ? '–'
    : Number(n).toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits }));

  function seconds(s) {
    if (s === null || s === undefined) return '–';
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 120) return `${s.toFixed(1)} s`;
    if (s < 7200) return `${Math.round(s / 60)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  }

  const unix = (t) => (t === null || t === undefined ? 'until lifted' : new Date(t * 1000).toISOString().replace('.000', ''));

  /** Replaces `tbody`'s rows; every cell is text (nothing from the node is parsed as HTML). */
  function fill(table, rows, empty) {
    const body = $(table).tBodies[0];
    const out = rows.map(({ cells, attrs = {} }) => {
      const tr = document.createElement('tr');
      for (const [k, v] of Object.entries(attrs)) tr.dataset[k] = v;
      for (const c of cells) {
        const td = document.createElement('td');
        const { text, field, cls } = typeof c === 'object' && c !== null ? c : { text: c };
        td.textContent = text === null || text === undefined ? '–' : String(text);
        if (field) td.dataset.field = field;
        if (cls) td.className = cls;
        tr.append(td);
      }
      return tr;
    });
    if (out.length === 0) {
      const tr = document.createElement('tr');
      const td = document.createElement('td');
      td.colSpan = $(table).tHead.rows[0].cells.length;
      td.className = 'empty';
      td.textContent = empty;
      tr.append(td);
      out.push(tr);
    }
    body.replaceChildren(...out);
  }

  class Refused extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function get(path, token) {
    const res = await fetch(path, { headers: { authorization: `Bearer ${token}` }, cache: 'no-store' });
    if (!res.ok) {
      let detail = '';
      try { detail = (await res.json()).message ?? ''; } catch { /* not JSON */ }
      throw new Refused(res.status, detail);
    }
    return res.json();
  }

  function showStats(stats) {
    const ready = $('ready');
    ready.dataset.state = stats.ready ? 'ready' : 'not-ready';
    ready.textContent = stats.ready ? 'ready' : `not ready: waiting for ${stats.waiting_for}`;
    for (const t of ['ws', 'sse', 'grpc']) $(`conn-${t}`).textContent = fmt(stats.connections[t] ?? 0);
    $('subscriptions').textContent = fmt(stats.subscriptions);
    $('records-total').textContent = fmt(stats.records_in_total);
    $('deliveries-total').textContent = fmt(stats.deliveries_total);
    $('refused').textContent = fmt(stats.connections_refused_total);
    $('revocations-count').textContent = fmt(stats.revocations_in_force);
    if (previous && stats.time_ms > previous.time_ms) {
      const dt = (stats.time_ms - previous.time_ms) / 1000;
      $('records-rate').textContent = fmt((stats.records_in_total - previous.records_in_total) / dt, 1);
      $('deliveries-rate').textContent = fmt((stats.deliveries_total - previous.deliveries_total) / dt, 1);
      const n = stats.record_age.count - previous.record_age.count;
      $('record-age').textContent = n > 0
        ? seconds((stats.record_age.sum_seconds - previous.record_age.sum_seconds) / n) : 'no writes';
    }
    previous = stats;
    $('updated').textContent = `updated ${new Date(stats.time_ms).toLocaleTimeString()}`;
  }

  function showTopics({ topics }) {
    fill('topics', topics.map((t) => {
      const lags = t.partitions.map((p) => p.lag).filter((l) => l !== null);
      const lag = lags.length ? lags.reduce((a, b) => a + b, 0) : null;
      const ages = t.partitions.map((p) => p.newest_record_age_seconds).filter((a) => a !== null);
      const rings = t.partitions.filter((p) => p.ring).map((p) => p.ring.last - p.ring.first + 1);
      return {
        attrs: { topic: t.name },
        cells: [
          { text: t.name, field: 'name' },
          { text: t.ready ? 'yes' : 'warming', field: 'ready' },
          { text: t.partitions.length, field: 'partitions' },
          { text: lag === null ? 'n/a' : fmt(lag), field: 'lag', cls: lag ? 'lagging' : '' },
          { text: fmt(t.partitions.reduce((a, p) => a + p.next_offset, 0)), field: 'next' },
          { text: `${fmt(rings.reduce((a, b) => a + b, 0))} records`, field: 'ring' },
          { text: fmt(t.partitions.reduce((a, p) => a + p.view_keys, 0)), field: 'view' },
          { text: ages.length ? `${seconds(Math.min(...ages))} ago` : 'none yet', field: 'age' },
        ],
      };
    }), 'no topics');
  }

  function showRevocations({ revocations }) {
    fill('revocations', revocations.map((r) => ({
      attrs: { target: r.subject !== undefined ? `subject:${r.subject}` : `jti:${r.jti}` },
      cells: [r.subject !== undefined ? `subject ${r.subject}` : `token ${r.jti}`, unix(r.revoked_at), unix(r.until)],
    })), 'none');
  }

  function showConnections({ connections }) {
    const shown = connections.slice(-MAX_CONNECTIONS_SHOWN).reverse();
    $('connections-shown').textContent = connections.length > shown.length
      ? `(newest ${shown.length} of ${connections.length})` : `(${connections.length})`;
    fill('connections', shown.map((c) => ({
      attrs: { transport: c.transport },
      cells: [c.id, c.transport, c.subject ?? '(anonymous)', c.peer,
        c.subscriptions.map((s) => s.topic).join(', ') || '–', fmt(c.queue_bytes), seconds(c.age_seconds)],
    })), 'none open');
  }

  async function poll() {
    const token = sessionStorage.getItem(KEY);
    if (!token) return;
    try {
      const [stats, topics, revocations, connections] = await Promise.all([
        get('/admin/stats', token), get('/admin/topics', token),
        get('/admin/revocations', token), get('/admin/connections', token),
      ]);
      showStats(stats);
      showTopics(topics);
      showRevocations(revocations);
      showConnections(connections);
      status('Live: polling every second.');
    } catch (e) {
      if (e instanceof Refused && e.status === 401) {
        sessionStorage.removeItem(KEY);
        stop();
        status('The node refused this token (401): enter admin.token.', 'error');
      } else if (e instanceof Refused && e.status === 404) {
        stop();
        status('No admin API at this address: admin.enabled is off, or admin.listen is set (open /admin/ops there).', 'error');
      } else {
        // A node restarting or a network blip: keep polling, say so.
        status(`Cannot reach the node: ${e.message || e}`, 'error');
        $('ready').dataset.state = 'unknown';
        $('ready').textContent = 'unreachable';
      }
    }
  }

  function stop() {
    if (timer) clearInterval(timer);
    timer = null;
  }

  function start() {
    stop();
    previous = null;
    poll();
    timer = setInterval(poll, EVERY_MS);
  }

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const token = input.value.trim();
    input.value = '';
    if (!token) return;
    sessionStorage.setItem(KEY, token);
    status('Connecting…');
    start();
  });
  document.getElementById('forget').addEventListener('click', () => {
    sessionStorage.removeItem(KEY);
    stop();
    status('Token forgotten. Enter the admin token.');
  });
  if (sessionStorage.getItem(KEY)) start();
})();
