// The cleanroom console: a small front end over the same /v1 API as the CLI. No build step,
// no framework. Every element is built with the DOM (textContent, never innerHTML), so no
// value from the server is ever interpreted as markup. The session lives in an HttpOnly cookie
// the page cannot read; the page holds only the session's CSRF token, in memory.
'use strict';

const S = { me: null, csrf: null, templates: null };
const main = () => document.getElementById('main');

// ------------------------------------------------------------------ DOM helpers

function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const k of kids.flat(Infinity)) {
    if (k === null || k === undefined || k === false) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

const SVG = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...kids) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  for (const k of kids.flat(Infinity)) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}

// A message for the next page shown (after an action that re-renders the page).
let flash = null;

function show(...nodes) {
  const m = main();
  const loading = nodes.length === 1 && nodes[0] instanceof Element && nodes[0].classList.contains('loading');
  const note = flash && !loading ? h('div', { class: 'ok', id: 'flash', role: 'status' }, flash) : null;
  if (note) flash = null;
  m.replaceChildren(...[note, ...nodes].flat(Infinity).filter(n => n !== null && n !== undefined && n !== false));
  return m;
}

const enc = encodeURIComponent;
const fmt = (x, d = 2) => (typeof x === 'number' ? (Number.isInteger(x) ? x.toLocaleString('en') : x.toLocaleString('en', { maximumFractionDigits: d })) : x === null || x === undefined ? '—' : String(x));

// ------------------------------------------------------------------ API

class Problem extends Error {
  constructor(p, status) {
    super(p.detail || p.title || ('HTTP ' + status));
    this.p = p;
    this.status = status;
  }
}

// Every route() bumps the generation. A read answered after a newer route started belongs to a
// page the user has left: it throws Superseded instead of returning, so that page never
// replaces the one now shown.
let generation = 0;
class Superseded extends Error {}

async function api(method, path, body, extra) {
  const started = generation;
  const headers = { accept: 'application/json' };
  if (S.csrf) headers['x-csrf-token'] = S.csrf;
  let payload;
  if (body !== undefined) {
    headers['content-type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  const r = await fetch(path.startsWith('/') ? path : '/v1/' + path, {
    method, headers, body: payload, credentials: 'same-origin', ...(extra || {}),
  });
  if (method === 'GET' && started !== generation) throw new Superseded('superseded by another page');
  if (r.status === 204) return null;
  api.total = r.headers.get('x-total-count');
  const text = await r.text();
  if (method === 'GET' && started !== generation) throw new Superseded('superseded by another page');
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = { detail: text }; }
  if (!r.ok) {
    if (r.status === 401 && !path.startsWith('/console/session')) {
      S.me = null; S.csrf = null;
      location.hash = '#/signin';
    }
    throw new Problem(data || {}, r.status);
  }
  return data;
}

// A problem details answer as sentences a person can act on.
function problemBox(err) {
  const p = err instanceof Problem ? err.p : { detail: String(err && err.message || err) };
  const lines = [h('strong', {}, p.title ? p.title + '. ' : 'Something went wrong. '), p.detail || ''];
  const where = [];
  if (p.rule) where.push('Rule: ' + p.rule + '.');
  if (p.column) where.push('Column: ' + p.column + '.');
  if (p.line) where.push('Line: ' + p.line + '.');
  if (p.code) where.push('(' + p.code + ')');
  return h('div', { class: 'problem', role: 'alert' }, lines, where.length ? h('div', {}, where.join(' ')) : null);
}

// Runs `f` (an async action) with `button` disabled and its outcome shown in `out`.
async function act(button, out, f) {
  if (button) button.disabled = true;
  if (out) out.replaceChildren(h('span', { class: 'loading' }, 'Working…'));
  try {
    const r = await f();
    if (out) out.replaceChildren();
    return r;
  } catch (e) {
    if (out) out.replaceChildren(problemBox(e));
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

function table(head, rows, numeric) {
  const num = new Set(numeric || []);
  return h('div', { class: 'wrap' }, h('table', {},
    h('thead', {}, h('tr', {}, head.map((c, i) => h('th', { scope: 'col', class: num.has(i) ? 'num' : null }, c)))),
    h('tbody', {}, rows.map(r => h('tr', {}, r.map((c, i) => h('td', { class: num.has(i) ? 'num' : null }, c)))))));
}

// ------------------------------------------------------------------ session

async function signInPage() {
  const token = h('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'off', required: true, placeholder: 'crt_…' });
  const out = h('div', { 'aria-live': 'polite' });
  const go = h('button', { type: 'submit', id: 'signin' }, 'Sign in');
  const form = h('form', { class: 'stack', onsubmit: async ev => {
    ev.preventDefault();
    const me = await act(go, out, () => api('POST', '/console/session', { token: token.value }));
    token.value = '';
    if (me) { S.me = me; S.csrf = me.csrf; location.hash = '#/'; route(); }
  } },
  h('label', { for: 'token' }, 'API token', h('small', {}, 'Exchanged for a session that ends when you sign out or after 12 hours; the page does not keep the token.')),
  token, h('div', { class: 'row' }, go), out);
  renderChrome();
  show(h('h1', {}, 'Sign in'), form);
  token.focus();
}

async function signOut() {
  try { await api('DELETE', '/console/session'); } catch (_) { /* the session may be gone already */ }
  S.me = null; S.csrf = null;
  location.hash = '#/signin';
  route();
}

function renderChrome() {
  const nav = document.getElementById('nav');
  const who = document.getElementById('who');
  if (!S.me) { nav.replaceChildren(); who.replaceChildren(); return; }
  nav.replaceChildren(...[h('a', { href: '#/' }, 'Collaborations'), S.me.operator ? h('a', { href: '#/audit/system' }, 'System audit') : null].filter(Boolean));
  who.replaceChildren(S.me.user + ' · ' + S.me.org + ' (' + S.me.role + ') ',
    h('button', { class: 'secondary', id: 'signout', onclick: signOut }, 'Sign out'));
}

// ------------------------------------------------------------------ collaborations

async function collaborationsPage() {
  const list = await api('GET', 'collaborations');
  const name = h('input', { type: 'text', id: 'collab-name', required: true });
  const desc = h('input', { type: 'text', id: 'collab-desc' });
  const out = h('div');
  const create = h('button', { type: 'submit', id: 'create-collab' }, 'Create');
  const form = h('form', { class: 'stack', onsubmit: async ev => {
    ev.preventDefault();
    const c = await act(create, out, () => api('POST', 'collaborations', { name: name.value, description: desc.value }));
    if (c) location.hash = '#/c/' + c.collaboration.id;
  } }, h('label', {}, 'Name', name), h('label', {}, 'Description', desc), h('div', { class: 'row' }, create), out);
  const rows = list.map(c => [
    h('a', { href: '#/c/' + c.id }, c.name), c.description, c.status, c.your_status, c.your_abilities.join(', '), c.created_at,
  ]);
  show(h('h1', {}, 'Collaborations'),
    list.length ? table(['name', 'description', 'status', 'you', 'your abilities', 'created'], rows)
      : h('p', {}, 'No collaborations yet. Create one, or ask a partner to invite your organisation.'),
    h('h2', {}, 'New collaboration'), form);
}

function tabs(id, current) {
  const t = [['', 'Overview'], ['datasets', 'Datasets'], ['budgets', 'Budgets'], ['templates', 'Templates'], ['sql', 'SQL'], ['analyses', 'Analyses'], ['activations', 'Activations'], ['audit', 'Audit']];
  return h('nav', { class: 'tabs', 'aria-label': 'collaboration' }, t.map(([k, label]) =>
    h('a', { href: k === 'audit' ? '#/audit/' + id : '#/c/' + id + (k ? '/' + k : ''), 'aria-current': k === current ? 'page' : null }, label)));
}

async function collabHead(id, current) {
  const d = await api('GET', 'collaborations/' + enc(id));
  return [d, [h('h1', {}, d.collaboration.name, ' ', h('span', { class: 'badge' }, d.collaboration.status)), tabs(id, current)]];
}

async function overviewPage(id) {
  const [d, head] = await collabHead(id, '');
  const c = d.collaboration;
  const parts = [...head];
  if (c.description) parts.push(h('p', {}, c.description));
  const out = h('div');
  if (c.your_status === 'invited') {
    const yes = h('button', { id: 'accept' }, 'Accept invitation');
    const no = h('button', { class: 'secondary', id: 'decline' }, 'Decline');
    yes.onclick = async () => { if (await act(yes, out, () => api('POST', 'collaborations/' + enc(id) + '/accept'))) route(); };
    no.onclick = async () => { if (await act(no, out, () => api('POST', 'collaborations/' + enc(id) + '/decline')) !== undefined) route(); };
    parts.push(h('div', { class: 'note' }, 'Your organisation is invited with abilities: ' + c.your_abilities.join(', ') + '. ', yes, ' ', no));
  }
  parts.push(out, h('h2', {}, 'Members'), table(['organisation', 'abilities', 'status', 'invited', 'joined'],
    d.members.map(m => [m.org, m.abilities.join(', '), m.status, m.invited_at, m.joined_at || '—'])));
  if (c.status === 'open' && c.your_status === 'active') {
    const org = h('input', { type: 'text', id: 'invite-org', required: true });
    const boxes = ['contribute', 'analyse', 'receive'].map(a => h('label', { class: 'row' }, h('input', { type: 'checkbox', value: a, id: 'ability-' + a, checked: true }), a));
    const out2 = h('div');
    const go = h('button', { type: 'submit', id: 'invite' }, 'Invite');
    parts.push(h('h2', {}, 'Invite an organisation'), h('form', { class: 'stack', onsubmit: async ev => {
      ev.preventDefault();
      const abilities = boxes.map(b => b.querySelector('input')).filter(i => i.checked).map(i => i.value);
      if (await act(go, out2, () => api('POST', 'collaborations/' + enc(id) + '/invitations', { org: org.value, abilities })) !== undefined) route();
    } }, h('label', {}, 'Organisation name', org), h('fieldset', {}, h('legend', {}, 'Abilities'), boxes), h('div', { class: 'row' }, go), out2));
    const ds = await api('GET', 'collaborations/' + enc(id) + '/datasets');
    const out3 = h('div');
    const close = h('button', { class: 'danger', id: 'close' }, 'Close collaboration…');
    close.onclick = async () => {
      const what = 'Closing "' + c.name + '" destroys the encryption keys of its ' + ds.length + ' dataset(s): their data can never be read again, and no further analysis can run. The audit log stays. Close it?';
      if (!window.confirm(what)) return;
      const r = await act(close, out3, () => api('POST', 'collaborations/' + enc(id) + '/close'));
      if (r) { flash = 'Closed: ' + r.destroyed_dataset_keys + ' dataset key(s) destroyed. The collaboration and its audit log remain readable.'; route(); }
    };
    parts.push(h('h2', {}, 'Close'), h('p', {}, 'Only the creator may close a collaboration; closing is final.'), close, out3);
  }
  show(parts);
}

// ------------------------------------------------------------------ datasets, upload, policy

async function datasetsPage(id) {
  const [, head] = await collabHead(id, 'datasets');
  const list = await api('GET', 'collaborations/' + enc(id) + '/datasets');
  const name = h('input', { type: 'text', id: 'ds-name', required: true });
  const cols = h('textarea', { id: 'ds-columns', required: true, placeholder: 'email:string:identifier\nregion:string:dimension\nspend:float64:metric' });
  const out = h('div');
  const go = h('button', { type: 'submit', id: 'create-dataset' }, 'Declare dataset');
  const form = h('form', { class: 'stack', onsubmit: async ev => {
    ev.preventDefault();
    const columns = cols.value.split('\n').map(l => l.trim()).filter(Boolean).map(l => {
      const [n, type, role] = l.split(':').map(x => (x || '').trim());
      return { name: n, type, role };
    });
    const d = await act(go, out, () => api('POST', 'collaborations/' + enc(id) + '/datasets', { name: name.value, columns }));
    if (d) location.hash = '#/c/' + id + '/d/' + enc(d.name);
  } }, h('label', {}, 'Name', name),
  h('label', {}, 'Columns', h('small', {}, 'one per line: name:type:role — types string, int64, float64, bool, date; roles identifier, dimension, metric, privacy_unit'), cols),
  h('div', { class: 'row' }, go), out);
  show(head, list.length ? table(['dataset', 'owner', 'status', 'rows', 'columns', 'created'],
    list.map(d => [h('a', { href: '#/c/' + id + '/d/' + enc(d.name) }, d.name), d.owner, d.status, fmt(d.row_count), d.columns.length, d.created_at]), [3, 4])
    : h('p', {}, 'No datasets declared yet.'), h('h2', {}, 'Declare a dataset'), form);
}

function policyInWords(pol, ds) {
  const p = pol.policy;
  const li = (...x) => h('li', {}, ...x);
  const list = a => (a && a.length ? a.join(', ') : 'none');
  const items = [
    li('May be joined on: ', h('strong', {}, list(p.join_keys)), '. Join keys never appear in a result.'),
    li('May be grouped by: ', h('strong', {}, list(p.dimensions)), '.'),
    li('Aggregates: ', (p.metrics || []).length ? (p.metrics.map(m => m.column + ' (' + m.aggregates.join(', ') + ', clamped to [' + m.lower + ', ' + m.upper + '])').join('; ')) : 'counts only', '.'),
    li('Every released group holds at least ', h('strong', {}, String(p.min_group_size ?? 'the default')), ' people (k); smaller groups are left out of every result. Under differential privacy a result says roughly how many were left out (a noisy count, paid from the same ε), never exactly.'),
    li('Differential privacy: ', h('strong', {}, p.differential_privacy === false ? 'OFF' : 'ON'), p.differential_privacy === false ? ' — results are exact, thresholded counts.' : ' — noise calibrated to each analysis\'s ε, paid from this owner\'s budget.'),
    li('Each person contributes at most ', String(p.max_rows_per_unit ?? 'the default number of'), ' rows; each key matches at most ', String(p.max_rows_per_key ?? 'the default number of'), ' rows.'),
    li('Free SQL: ', p.allow_sql ? 'allowed (checked against these rules)' : 'not allowed; only approved templates', '.'),
    li('Analysts: ', h('strong', {}, list(p.analysts)), '. Result receivers: ', h('strong', {}, list(p.receivers)), '.'),
    li('Activation: ', p.activation ? ('partners ' + list(p.activation.partners) + ', segments of at least ' + (p.activation.min_segment_size ?? 'the default size') + ', filtered only by ' + list(p.activation.dimensions)) : 'not allowed', '.'),
  ];
  return [h('p', {}, 'Version ' + pol.version + ', set by ' + pol.set_by + ' on ' + pol.created_at + ' for ' + ds + '.'), h('ul', { class: 'plain', id: 'policy-words' }, items)];
}

function uploadForm(id, name, done) {
  const file = h('input', { type: 'file', id: 'upload-file', accept: '.csv,.parquet,text/csv' });
  const bar = h('progress', { id: 'upload-progress', max: 100, value: 0, hidden: true });
  const out = h('div', { 'aria-live': 'polite' });
  const go = h('button', { type: 'submit', id: 'upload' }, 'Upload');
  return h('form', { class: 'stack', onsubmit: ev => {
    ev.preventDefault();
    const f = file.files[0];
    if (!f) { out.replaceChildren(problemBox({ message: 'Choose a CSV or Parquet file first.' })); return; }
    const type = /\.parquet$/i.test(f.name) ? 'application/vnd.apache.parquet' : 'text/csv';
    // XMLHttpRequest streams the File from disk and reports progress; the page never reads it.
    const x = new XMLHttpRequest();
    x.open('PUT', '/v1/collaborations/' + enc(id) + '/datasets/' + enc(name) + '/data');
    x.setRequestHeader('content-type', type);
    x.setRequestHeader('x-csrf-token', S.csrf);
    bar.hidden = false; bar.value = 0; go.disabled = true;
    out.replaceChildren(h('span', { class: 'loading' }, 'Uploading ' + f.name + '…'));
    x.upload.onprogress = e => { if (e.lengthComputable) bar.value = Math.round(100 * e.loaded / e.total); };
    x.onload = () => {
      go.disabled = false;
      let body = {};
      try { body = JSON.parse(x.responseText); } catch (_) { body = { detail: x.responseText }; }
      if (x.status >= 200 && x.status < 300) {
        bar.value = 100;
        out.replaceChildren(h('div', { class: 'ok', id: 'upload-ok' }, 'Uploaded: ' + fmt(body.row_count) + ' rows, encrypted.'));
        if (done) done(body);
      } else out.replaceChildren(problemBox(new Problem(body, x.status)));
    };
    x.onerror = () => { go.disabled = false; out.replaceChildren(problemBox({ message: 'The connection failed during the upload; nothing was stored. Try again.' })); };
    x.send(f);
  } }, h('label', {}, 'File', h('small', {}, 'CSV with a header row, or Parquet; streamed to the server and encrypted there'), file), bar, h('div', { class: 'row' }, go), out);
}

// The owner's policy as a form: one field per rule, each with its own error slot. A refusal
// from the server is shown next to the field it is about (by the column or the rule it names).
function policyForm(id, name, d, p) {
  const cols = role => d.columns.filter(c => c.role === role).map(c => c.name);
  p = p || { join_keys: cols('identifier'), dimensions: cols('dimension'), metrics: [], min_group_size: 50, differential_privacy: true, allow_sql: true, analysts: [], receivers: [] };
  const errs = {};
  const field = (key, label, hint, ...control) => {
    errs[key] = h('div', { class: 'field-error', id: 'pf-err-' + key, 'aria-live': 'polite' });
    return h('div', { class: 'field', id: 'pf-field-' + key }, h('label', {}, label, hint ? h('small', {}, hint) : null, ...control), errs[key]);
  };
  const boxes = (key, names, on) => names.map(n => h('label', { class: 'row' }, h('input', { type: 'checkbox', id: 'pf-' + key + '-' + n, value: n, checked: on.includes(n) }), n));
  const checked = list => list.map(l => l.querySelector('input')).filter(i => i.checked).map(i => i.value);
  const list = v => v.split(',').map(x => x.trim()).filter(Boolean);
  const num = (idv, v) => h('input', { type: 'number', id: idv, value: v ?? '', step: 'any' });
  const joins = boxes('join', cols('identifier'), p.join_keys || []);
  const dims = boxes('dim', cols('dimension'), p.dimensions || []);
  const metricRows = cols('metric').map(c => {
    const m = (p.metrics || []).find(x => x.column === c);
    const on = h('input', { type: 'checkbox', id: 'pf-metric-' + c, checked: !!m });
    const aggs = ['count', 'sum', 'avg', 'min', 'max'].map(a => h('label', { class: 'row' }, h('input', { type: 'checkbox', value: a, checked: m ? (m.aggregates || []).includes(a) : ['sum', 'avg'].includes(a) }), a));
    const lo = num('pf-metric-' + c + '-lower', m ? m.lower : 0);
    const hi = num('pf-metric-' + c + '-upper', m ? m.upper : '');
    errs['metric:' + c] = h('div', { class: 'field-error', id: 'pf-err-metric-' + c, 'aria-live': 'polite' });
    const row = h('fieldset', { id: 'pf-metric-row-' + c }, h('legend', {}, h('label', { class: 'row' }, on, 'aggregate ' + c)), h('div', { class: 'row' }, aggs), h('div', { class: 'row' }, h('label', {}, 'lower bound', lo), h('label', {}, 'upper bound', hi)), errs['metric:' + c]);
    return { c, on, aggs, lo, hi, row };
  });
  const k = num('pf-k', p.min_group_size);
  const perUnit = num('pf-max-rows-per-unit', p.max_rows_per_unit);
  const perKey = num('pf-max-rows-per-key', p.max_rows_per_key);
  const dp = h('input', { type: 'checkbox', id: 'pf-dp', checked: p.differential_privacy !== false });
  const sql = h('input', { type: 'checkbox', id: 'pf-sql', checked: !!p.allow_sql });
  const analysts = h('input', { type: 'text', id: 'pf-analysts', value: (p.analysts || []).join(', ') });
  const receivers = h('input', { type: 'text', id: 'pf-receivers', value: (p.receivers || []).join(', ') });
  const activ = p.activation || null;
  const actOn = h('input', { type: 'checkbox', id: 'pf-activation', checked: !!activ });
  const partners = h('input', { type: 'text', id: 'pf-partners', value: activ ? activ.partners.join(', ') : '' });
  const segMin = num('pf-min-segment', activ ? activ.min_segment_size : '');
  const actDims = boxes('act-dim', cols('dimension'), activ ? activ.dimensions || [] : []);
  const top = h('div', { id: 'policy-error', 'aria-live': 'polite' });
  const go = h('button', { type: 'submit', id: 'save-policy' }, 'Save policy');
  const placeOf = prob => {
    const t = (prob.detail || '') + ' ' + (prob.column || '');
    for (const m of metricRows) if (prob.column === m.c || new RegExp('\\b' + m.c + ':').test(t)) return 'metric:' + m.c;
    const words = [['min_segment_size', 'activation'], ['partner', 'activation'], ['activation', 'activation'], ['min_group_size', 'k'], ['join key', 'join'], ['join_keys', 'join'], ['dimension', 'dims'], ['analyst', 'analysts'], ['receiver', 'receivers'], ['max_rows_per_unit', 'unit'], ['max_rows_per_key', 'key'], ['metric', 'metrics']];
    for (const [w, f] of words) if (t.includes(w)) return f;
    return null;
  };
  const form = h('form', { class: 'stack', id: 'policy-form', onsubmit: async ev => {
    ev.preventDefault();
    for (const e of Object.values(errs)) e.replaceChildren();
    top.replaceChildren();
    const n = v => (v === '' ? undefined : Number(v));
    const body = {
      join_keys: checked(joins), dimensions: checked(dims),
      metrics: metricRows.filter(m => m.on.checked).map(m => ({ column: m.c, aggregates: checked(m.aggs), lower: n(m.lo.value), upper: n(m.hi.value) })),
      min_group_size: n(k.value), max_rows_per_unit: n(perUnit.value), max_rows_per_key: n(perKey.value),
      differential_privacy: dp.checked, allow_sql: sql.checked, analysts: list(analysts.value), receivers: list(receivers.value),
    };
    if (actOn.checked) body.activation = { partners: list(partners.value), min_segment_size: n(segMin.value), dimensions: checked(actDims) };
    go.disabled = true;
    try {
      await api('PUT', 'collaborations/' + enc(id) + '/datasets/' + enc(name) + '/policy', body);
      route();
    } catch (e) {
      const place = e instanceof Problem ? placeOf(e.p) : null;
      const box = problemBox(e);
      if (place && errs[place]) { errs[place].replaceChildren(box); errs[place].scrollIntoView({ block: 'nearest' }); } else top.replaceChildren(box);
    } finally { go.disabled = false; }
  } },
  top,
  field('join', 'May be joined on', 'identifier columns; never shown in a result', h('div', { class: 'row' }, joins)),
  field('dims', 'May be grouped by', 'dimension columns', h('div', { class: 'row' }, dims)),
  field('metrics', 'May be aggregated', 'each value is clamped to its bounds before it is summed', metricRows.map(m => m.row)),
  field('k', 'Minimum people per released group (k)', 'at least 2', k),
  field('dp', 'Differential privacy', 'noise on every released number, paid from your budget', h('span', { class: 'row' }, dp, 'on')),
  field('unit', 'Most rows per person', 'optional', perUnit),
  field('key', 'Most rows per join key', 'optional', perKey),
  field('sql', 'Free SQL', 'otherwise only approved templates', h('span', { class: 'row' }, sql, 'allowed')),
  field('analysts', 'Analysts', 'organisations that may analyse this dataset, comma-separated', analysts),
  field('receivers', 'Result receivers', 'organisations that may receive results, comma-separated', receivers),
  field('activation', 'Activation', 'a partner may receive its own identifiers of a matched segment', h('span', { class: 'row' }, actOn, 'allowed'), h('label', {}, 'partners', partners), h('label', {}, 'smallest segment', segMin), h('div', { class: 'row' }, actDims)),
  h('div', { class: 'row' }, go));
  return form;
}

async function datasetPage(id, name) {
  const [, head] = await collabHead(id, 'datasets');
  const d = await api('GET', 'collaborations/' + enc(id) + '/datasets/' + enc(name));
  const parts = [...head, h('h2', {}, 'Dataset ' + d.name),
    h('p', {}, 'Owner ', h('strong', {}, d.owner), ' · status ', h('span', { class: 'badge', id: 'ds-status' }, d.status), ' · ', fmt(d.row_count), ' rows'),
    table(['column', 'type', 'role'], d.columns.map(c => [c.name, c.type, c.role]))];
  const mine = d.owner === S.me.org;
  if (mine) parts.push(h('h2', {}, 'Upload data'), uploadForm(id, name, () => setTimeout(route, 600)));
  parts.push(h('h2', {}, 'Policy'));
  let pol = null;
  try { pol = await api('GET', 'collaborations/' + enc(id) + '/datasets/' + enc(name) + '/policy'); } catch (e) {
    if (!(e instanceof Problem && e.status === 404)) parts.push(problemBox(e));
  }
  parts.push(pol ? policyInWords(pol, d.name) : h('p', {}, 'No policy yet: nothing may be analysed on this dataset.'));
  if (mine) parts.push(h('h3', {}, 'Edit your policy'), policyForm(id, name, d, pol ? pol.policy : null));
  show(parts);
}

// ------------------------------------------------------------------ budgets

async function budgetsPage(id) {
  const [d, head] = await collabHead(id, 'budgets');
  const budgets = await api('GET', 'collaborations/' + enc(id) + '/budgets');
  const analyses = await api('GET', 'collaborations/' + enc(id) + '/analyses');
  const cards = budgets.map(b => {
    const used = b.epsilon_total > 0 ? Math.min(1, b.epsilon_spent / b.epsilon_total) : 0;
    return h('div', { class: 'card', id: 'budget-' + b.org },
      h('h3', {}, b.org),
      h('div', { class: 'gauge', role: 'meter', 'aria-valuemin': 0, 'aria-valuemax': b.epsilon_total, 'aria-valuenow': b.epsilon_spent, 'aria-label': 'epsilon spent' }, h('span', { style: null, 'data-w': used })),
      h('p', {}, 'ε granted ', fmt(b.epsilon_total, 3), ' · spent ', fmt(b.epsilon_spent, 3), ' · left ', h('strong', {}, fmt(b.epsilon_left, 3))),
      h('p', { class: 'hint' }, 'δ left ' + b.delta_left.toExponential(2) + ' of ' + b.delta_total.toExponential(2) + ' · at most ε ' + fmt(b.epsilon_per_query, 3) + ' per analysis'));
  });
  // Widths are set through the DOM, not inline style attributes (the CSP forbids those).
  for (const c of cards) { const bar = c.querySelector('.gauge > span'); bar.style.width = (100 * Number(bar.dataset.w)) + '%'; }
  const charges = [];
  for (const a of analyses) for (const c of a.charges) charges.push([a.created_at, h('a', { href: '#/c/' + id + '/a/' + a.id }, a.id.slice(0, 8)), a.kind, c.org, fmt(c.epsilon, 3), c.delta.toExponential(2), a.status]);
  const parts = [...head, h('h2', {}, 'Privacy budgets'), budgets.length ? h('div', { class: 'cards' }, cards) : h('p', {}, 'No budget granted yet.')];
  const mineOwner = d.members.some(m => m.org === S.me.org && m.abilities.includes('contribute'));
  if (mineOwner) {
    const eps = h('input', { type: 'number', id: 'grant-epsilon', step: 'any', min: 0, required: true });
    const per = h('input', { type: 'number', id: 'grant-per-query', step: 'any', min: 0 });
    const out = h('div');
    const go = h('button', { type: 'submit', id: 'grant' }, 'Grant budget…');
    parts.push(h('h2', {}, 'Grant budget on your data'), h('form', { class: 'stack', onsubmit: async ev => {
      ev.preventDefault();
      const e = Number(eps.value);
      if (!window.confirm('Grant ε ' + e + ' more on ' + S.me.org + '\'s data in this collaboration? Spent budget is never given back.')) return;
      const body = { epsilon: e };
      if (per.value) body.epsilon_per_query = Number(per.value);
      if (await act(go, out, () => api('POST', 'collaborations/' + enc(id) + '/budgets', body))) route();
    } }, h('label', {}, 'ε to add', eps), h('label', {}, 'Most ε per analysis', h('small', {}, 'optional'), per), h('div', { class: 'row' }, go), out));
  }
  parts.push(h('h2', {}, 'Charges'), charges.length ? table(['when', 'analysis', 'kind', 'owner charged', 'ε', 'δ', 'status'], charges, [4, 5]) : h('p', {}, 'Nothing charged yet.'));
  show(parts);
}

// ------------------------------------------------------------------ templates and SQL

function planBox(a) {
  const p = a.plan || {};
  return h('div', { class: p.affordable === false ? 'problem' : 'ok', id: 'plan' },
    h('strong', {}, 'Price: '), 'ε ' + fmt(p.epsilon, 3) + (p.delta ? ', δ ' + p.delta.toExponential(2) : '') + ' on ' + (p.datasets || []).join(', ') + '. ',
    p.affordable === false ? ('Not affordable: ' + p.budget_problems.join(' ')) : 'Every owner\'s budget can pay.',
    (p.notes || []).length ? h('ul', { class: 'plain' }, p.notes.map(n => h('li', {}, n))) : null);
}

// Epsilon, receivers, and the dry-run and run buttons; element ids start with `prefix`.
function runControls(prefix, out, send) {
  const eps = h('input', { type: 'number', step: 'any', min: 0, id: prefix + '-epsilon', placeholder: 'default: the owners\' per-analysis cap' });
  const recv = h('input', { type: 'text', id: prefix + '-receivers', placeholder: 'default: your organisation' });
  const price = h('button', { type: 'button', class: 'secondary', id: prefix + '-dry-run' }, 'Price it (dry run)');
  const run = h('button', { type: 'submit', id: prefix + '-run' }, 'Run');
  const common = () => {
    const b = { receivers: recv.value.split(',').map(x => x.trim()).filter(Boolean) };
    if (eps.value) b.epsilon = Number(eps.value);
    return b;
  };
  price.onclick = async () => {
    const a = await act(price, out, () => send({ ...common(), dry_run: true }));
    if (a) out.replaceChildren(planBox(a));
  };
  // Running always shows the price first: a dry run, then an explicit confirmation.
  const submit = async ev => {
    ev.preventDefault();
    const body = common();
    const plan = await act(run, out, () => send({ ...body, dry_run: true }));
    if (!plan) return;
    out.replaceChildren(planBox(plan));
    const p = plan.plan || {};
    if (p.affordable === false) return;
    if (!window.confirm('Run this analysis for ε ' + fmt(p.epsilon, 3) + ' on ' + (p.datasets || []).join(', ') + '? Spent budget is not given back.')) return;
    const a = await act(run, out, () => send({ ...body, dry_run: false }));
    if (a) location.hash = '#/c/' + a.collab + '/a/' + a.id;
  };
  return [submit, [h('label', {}, 'ε to spend', eps), h('label', {}, 'Receivers', h('small', {}, 'organisation names, comma-separated'), recv), h('div', { class: 'row' }, price, run)]];
}

async function templatesPage(id) {
  const [, head] = await collabHead(id, 'templates');
  if (!S.templates) S.templates = await api('GET', 'templates');
  const approvals = await api('GET', 'collaborations/' + enc(id) + '/templates/approvals');
  const datasets = await api('GET', 'collaborations/' + enc(id) + '/datasets');
  const mine = datasets.filter(d => d.owner === S.me.org);
  const parts = [...head];
  for (const t of S.templates) {
    const approved = approvals.filter(a => a.template === t.name);
    const out = h('div');
    const sec = h('section', { class: 'card', id: 'template-' + t.name }, h('h3', {}, t.title + ' ', h('span', { class: 'badge' }, t.name + ' v' + t.version)), h('p', {}, t.description),
      h('p', { class: 'hint' }, 'Approved on: ' + (approved.length ? approved.map(a => a.dataset + ' (by ' + a.owner + ', v' + a.version + ')').join(', ') : 'no dataset yet')));
    for (const d of mine) {
      if (approved.some(a => a.dataset === d.name)) continue;
      const b = h('button', { class: 'secondary', id: 'approve-' + t.name + '-' + d.name }, 'Approve on ' + d.name);
      b.onclick = async () => { if (await act(b, out, () => api('POST', 'collaborations/' + enc(id) + '/templates/' + enc(t.name) + '/approvals', { dataset: d.name })) !== undefined) route(); };
      sec.append(b, ' ');
    }
    // The run form is built from the template's parameter metadata, served by the API.
    const inputs = t.params.map(p => [p, h('input', { type: 'text', id: 'param-' + t.name + '-' + p.name, name: p.name, required: p.required })]);
    const [submit, controls] = runControls(t.name, out, body => api('POST', 'collaborations/' + enc(id) + '/templates/' + enc(t.name) + '/runs', {
      ...body, params: Object.fromEntries(inputs.filter(([, i]) => i.value.trim()).map(([p, i]) => [p.name, i.value.trim()])),
    }).then(a => (a && { ...a, collab: id })));
    sec.append(h('details', { id: 'run-' + t.name }, h('summary', {}, 'Run ' + t.title),
      h('form', { class: 'stack', onsubmit: submit }, inputs.map(([p, i]) => h('label', {}, p.name + (p.required ? ' *' : ''), h('small', {}, p.help), i)), controls)), out);
    parts.push(sec);
  }
  show(parts);
}

async function sqlPage(id) {
  const [, head] = await collabHead(id, 'sql');
  const sql = h('textarea', { id: 'sql', rows: 8, spellcheck: 'false', placeholder: 'SELECT region, COUNT(*) FROM brand.customers GROUP BY region' });
  const out = h('div', { 'aria-live': 'polite', id: 'sql-out' });
  const [submit, controls] = runControls('sql', out, body => api('POST', 'collaborations/' + enc(id) + '/queries', { ...body, sql: sql.value }).then(a => (a && { ...a, collab: id })));
  show(head, h('h2', {}, 'SQL'), h('p', { class: 'hint' }, 'The checker refuses anything that breaks an owner\'s policy and names the rule; a dry run prices an analysis without spending anything.'),
    h('form', { class: 'stack', onsubmit: submit }, h('label', { for: 'sql' }, 'Query'), sql, controls), out);
}

// ------------------------------------------------------------------ analyses and charts

// Newest first, a page at a time: a collaboration may hold thousands of analyses.
const ANALYSES_PAGE = 100;
async function analysesPage(id) {
  const [, head] = await collabHead(id, 'analyses');
  const base = 'collaborations/' + enc(id) + '/analyses?order=newest&limit=' + ANALYSES_PAGE + '&offset=';
  const list = await api('GET', base + '0');
  const total = Number(api.total ?? list.length);
  if (!list.length) { show(head, h('h2', {}, 'Analyses'), h('p', {}, 'No analyses yet.')); return; }
  const row = a => h('tr', {}, [h('a', { href: '#/c/' + id + '/a/' + a.id }, a.id.slice(0, 8)), a.kind, a.request.length > 90 ? a.request.slice(0, 90) + '…' : a.request, a.requested_by, a.status,
    fmt(a.charges.reduce((x, c) => x + c.epsilon, 0), 3), a.created_at].map((c, i) => h('td', { class: i === 5 ? 'num' : null }, c)));
  const body = h('tbody', {}, list.map(row));
  const count = h('p', { class: 'hint', id: 'analyses-count', 'aria-live': 'polite' });
  const out = h('div');
  const more = h('button', { class: 'secondary', id: 'more-analyses' }, 'Show ' + ANALYSES_PAGE + ' older');
  const update = () => {
    const shown = body.children.length;
    count.textContent = 'Newest first: showing ' + shown.toLocaleString('en') + ' of ' + total.toLocaleString('en') + ' analyses.';
    more.hidden = shown >= total;
  };
  more.onclick = async () => {
    const next = await act(more, out, () => api('GET', base + body.children.length));
    if (next) { body.append(...next.map(row)); update(); }
  };
  update();
  show(head, h('h2', {}, 'Analyses'), count,
    h('div', { class: 'wrap' }, h('table', {}, h('thead', {}, h('tr', {}, ['analysis', 'kind', 'request', 'by', 'status', 'ε charged', 'created'].map((c, i) => h('th', { scope: 'col', class: i === 5 ? 'num' : null }, c)))), body)),
    h('div', { class: 'row' }, more), out);
}

// An overlap: per row (a group, or an identifier type), one bar as long as the audience,
// stacked: the matched people, then the rest. Error bars (±2 noise sd) on both ends.
function overlapChart(t) {
  const mi = t.columns.findIndex(c => c.name === 'matched' && c.kind === 'count');
  const ai = t.columns.findIndex(c => c.name === 'audience');
  if (mi < 0 || ai < 0) return null;
  const gi = t.columns.map((c, i) => [c, i]).filter(([c]) => c.kind === 'group').map(([, i]) => i);
  const rows = t.rows.filter(r => typeof r[mi] === 'number' && typeof r[ai] === 'number');
  if (!rows.length) return null;
  const sm = t.columns[mi].noise_sd || 0; const sa = t.columns[ai].noise_sd || 0;
  const W = 760; const left = 170; const barH = 22; const rowH = 32; const H = rows.length * rowH + 40;
  const max = Math.max(...rows.map(r => Math.max(r[ai] + 2 * sa, r[mi] + 2 * sm)), 1);
  const x = v => left + (W - left - 20) * Math.max(0, v) / max;
  const g = [];
  const whisker = (v, sd, y) => (sd > 0 ? [
    s('line', { x1: x(v - 2 * sd), x2: x(v + 2 * sd), y1: y, y2: y, stroke: '#111', 'stroke-width': 1.5, class: 'error-bar' }),
    s('line', { x1: x(v - 2 * sd), x2: x(v - 2 * sd), y1: y - 4, y2: y + 4, stroke: '#111' }),
    s('line', { x1: x(v + 2 * sd), x2: x(v + 2 * sd), y1: y - 4, y2: y + 4, stroke: '#111' })] : []);
  rows.forEach((r, k) => {
    const y = 10 + k * rowH; const m = r[mi]; const a = r[ai];
    g.push(s('text', { x: left - 6, y: y + barH / 2 + 4, 'text-anchor': 'end' }, (gi.length ? gi.map(i => String(r[i] ?? '∅')).join(' · ') : 'all').slice(0, 26)));
    g.push(s('rect', { x: left, y, width: Math.max(0, x(Math.min(m, a)) - left), height: barH, fill: '#1f5fbf' }, s('title', {}, 'matched ' + fmt(m))));
    g.push(s('rect', { x: x(Math.min(m, a)), y, width: Math.max(0, x(a) - x(Math.min(m, a))), height: barH, fill: '#c9d3df' }, s('title', {}, 'not matched ' + fmt(Math.max(0, a - m)))));
    g.push(...whisker(m, sm, y + barH / 2 - 4), ...whisker(a, sa, y + barH / 2 + 4));
  });
  g.push(s('text', { x: left, y: H - 8 }, '0'), s('text', { x: W - 20, y: H - 8, 'text-anchor': 'end' }, fmt(Math.round(max))));
  return [s('svg', { class: 'chart overlap', viewBox: '0 0 ' + W + ' ' + H, width: W, height: H, role: 'img', 'aria-label': 'overlap: matched and not matched people of the audience' }, g),
    h('p', { class: 'hint' }, 'Each bar is the audience: dark, the people also in the other dataset; light, the rest.')];
}

// Bars with error bars: one group per row, one bar per noisy numeric column. Error bars span
// ±2 standard deviations of the added noise.
function barChart(t) {
  const gi = t.columns.map((c, i) => [c, i]).filter(([c]) => c.kind === 'group').map(([, i]) => i);
  const mi = t.columns.map((c, i) => [c, i]).filter(([c]) => ['count', 'sum', 'average'].includes(c.kind)).map(([, i]) => i);
  const rows = t.rows.filter(r => mi.some(i => typeof r[i] === 'number'));
  if (!mi.length || !rows.length) return null;
  const label = r => (gi.length ? gi.map(i => String(r[i] ?? '∅')).join(' · ') : 'all');
  const W = 760; const left = 170; const barH = 16; const gap = 10;
  const groupH = mi.length * barH + gap;
  const H = rows.length * groupH + 40;
  let max = 0;
  for (const r of rows) for (const i of mi) {
    const v = Number(r[i]) || 0; const sd = t.columns[i].noise_sd || 0;
    max = Math.max(max, v + 2 * sd);
  }
  max = max > 0 ? max : 1;
  const x = v => left + (W - left - 20) * Math.max(0, v) / max;
  const colours = ['#1f5fbf', '#e07b00', '#2e8b57', '#8e44ad'];
  const g = [];
  rows.forEach((r, k) => {
    const y0 = 10 + k * groupH;
    g.push(s('text', { x: left - 6, y: y0 + mi.length * barH / 2 + 4, 'text-anchor': 'end' }, label(r).slice(0, 26)));
    mi.forEach((i, j) => {
      const v = Number(r[i]) || 0; const sd = t.columns[i].noise_sd || 0; const y = y0 + j * barH;
      g.push(s('rect', { x: left, y, width: Math.max(0, x(v) - left), height: barH - 3, fill: colours[j % 4] }, s('title', {}, t.columns[i].name + ' = ' + fmt(v) + (sd ? ' ± ' + fmt(2 * sd) : ''))));
      if (sd > 0) {
        const cy = y + (barH - 3) / 2;
        g.push(s('line', { x1: x(v - 2 * sd), x2: x(v + 2 * sd), y1: cy, y2: cy, stroke: '#111', 'stroke-width': 1.5, class: 'error-bar' }));
        g.push(s('line', { x1: x(v - 2 * sd), x2: x(v - 2 * sd), y1: cy - 4, y2: cy + 4, stroke: '#111' }));
        g.push(s('line', { x1: x(v + 2 * sd), x2: x(v + 2 * sd), y1: cy - 4, y2: cy + 4, stroke: '#111' }));
      }
    });
  });
  g.push(s('line', { x1: left, x2: left, y1: 5, y2: H - 25, stroke: '#888' }));
  g.push(s('text', { x: left, y: H - 8 }, '0'), s('text', { x: W - 20, y: H - 8, 'text-anchor': 'end' }, fmt(max)));
  const legend = h('div', { class: 'row hint' }, mi.map((i, j) => h('span', {}, h('span', { class: 'badge' }, '■'), ' ', t.columns[i].name)));
  legend.querySelectorAll('.badge').forEach((b, j) => { b.style.color = colours[j % 4]; });
  return [s('svg', { class: 'chart', viewBox: '0 0 ' + W + ' ' + H, width: W, height: H, role: 'img', 'aria-label': 'bar chart of ' + t.name }, g), legend];
}

// Conversion lift with its interval. The noise's scale is known for the counts (people and
// converters per arm); the rates' and the lift's standard deviations follow by the delta
// method: sd(c/n)² ≈ (sd_c/n)² + (c·sd_n/n²)², and the lift's variance is the arms' sum.
// This is the interval of the privacy noise only, not of sampling.
function liftChart(tables) {
  const lift = tables.find(t => t.columns.some(c => c.name === 'absolute_lift'));
  const arms = tables.find(t => t.columns.some(c => c.name === 'conversion_rate'));
  if (!lift || !arms || !lift.rows.length) return null;
  const col = (t, n) => t.columns.findIndex(c => c.name === n);
  const li = col(lift, 'absolute_lift');
  const est = Number(lift.rows[0][li]);
  const pc = arms.columns.findIndex(c => c.kind === 'count');
  const cc = arms.columns.findIndex((c, i) => c.kind === 'count' && i !== pc);
  if (pc < 0 || cc < 0) return null;
  let v = 0;
  for (const r of arms.rows) {
    const n = Number(r[pc]); const c = Number(r[cc]);
    const sn = arms.columns[pc].noise_sd || 0; const sc = arms.columns[cc].noise_sd || 0;
    if (!(n > 0)) return null;
    v += (sc / n) ** 2 + (c * sn / (n * n)) ** 2;
  }
  const sd = Math.sqrt(v);
  const lo = est - 2 * sd; const hi = est + 2 * sd;
  const span = Math.max(Math.abs(lo), Math.abs(hi), 1e-9) * 1.15;
  const W = 760; const H = 90; const x = u => 40 + (W - 80) * (u + span) / (2 * span);
  const pct = u => (100 * u).toFixed(2) + ' pts';
  const svg = s('svg', { class: 'chart', viewBox: '0 0 ' + W + ' ' + H, width: W, height: H, role: 'img', 'aria-label': 'absolute lift with its interval' },
    s('line', { x1: x(0), x2: x(0), y1: 10, y2: 60, stroke: '#888', 'stroke-dasharray': '4 3' }),
    s('text', { x: x(0), y: 78, 'text-anchor': 'middle' }, 'no lift'),
    s('line', { x1: x(lo), x2: x(hi), y1: 35, y2: 35, stroke: '#111', 'stroke-width': 2, class: 'error-bar' }),
    s('line', { x1: x(lo), x2: x(lo), y1: 28, y2: 42, stroke: '#111' }),
    s('line', { x1: x(hi), x2: x(hi), y1: 28, y2: 42, stroke: '#111' }),
    s('circle', { cx: x(est), cy: 35, r: 6, fill: '#1f5fbf' }),
    s('text', { x: x(est), y: 20, 'text-anchor': 'middle' }, 'lift ' + pct(est)));
  return [h('h3', {}, 'Absolute lift'), svg,
    h('p', { class: 'hint', id: 'lift-interval' }, 'Lift ' + pct(est) + ', interval ' + pct(lo) + ' to ' + pct(hi) + ' (±2 standard deviations of the privacy noise, by the delta method from the noisy counts; sampling error is not included).')];
}

// A benchmark: per group, the member's own average against its peers' (noisy) average.
function benchmarkChart(tables) {
  const t = tables.find(x => x.columns.some(c => c.name === 'your_average'));
  if (!t || !t.rows.length) return null;
  const col = n => t.columns.findIndex(c => c.name === n);
  const yi = col('your_average'); const pi = col('peers_average');
  const gi = t.columns.findIndex(c => c.kind === 'group');
  const rows = t.rows.filter(r => typeof r[yi] === 'number' && typeof r[pi] === 'number');
  if (!rows.length) return null;
  const vals = rows.flatMap(r => [r[yi], r[pi]]);
  const min = Math.min(...vals); const max = Math.max(...vals); const pad = (max - min) * 0.1 || 1;
  const W = 760; const left = 170; const rowH = 28; const H = rows.length * rowH + 40;
  const x = v => left + (W - left - 30) * (v - (min - pad)) / (max - min + 2 * pad);
  const g = [];
  rows.forEach((r, k) => {
    const y = 20 + k * rowH;
    g.push(s('text', { x: left - 8, y: y + 4, 'text-anchor': 'end' }, gi >= 0 ? String(r[gi]) : 'all'));
    g.push(s('line', { x1: x(r[pi]), x2: x(r[yi]), y1: y, y2: y, stroke: '#999', 'stroke-width': 2 }));
    g.push(s('circle', { cx: x(r[pi]), cy: y, r: 6, fill: '#999' }, s('title', {}, 'peers ' + fmt(r[pi]))));
    g.push(s('rect', { x: x(r[yi]) - 6, y: y - 6, width: 12, height: 12, fill: '#1f5fbf' }, s('title', {}, 'you ' + fmt(r[yi]))));
  });
  g.push(s('text', { x: left, y: H - 6 }, fmt(min - pad)), s('text', { x: W - 30, y: H - 6, 'text-anchor': 'end' }, fmt(max + pad)));
  return [h('h3', {}, 'Your position among your peers'),
    s('svg', { class: 'chart', viewBox: '0 0 ' + W + ' ' + H, width: W, height: H, role: 'img', 'aria-label': 'your average against your peers' }, g),
    h('p', { class: 'hint' }, 'Square: your own average (exact, your data); circle: your peers\' average (noisy, without your contribution).')];
}

function csvOf(t) {
  const q = v => { const x = v === null || v === undefined ? '' : String(v); return /[",\n\r]/.test(x) ? '"' + x.replace(/"/g, '""') + '"' : x; };
  return [t.columns.map(c => q(c.name)).join(','), ...t.rows.map(r => r.map(q).join(','))].join('\r\n') + '\r\n';
}

// How many groups a result table leaves out, as a sentence (or why it is not said).
function leftOutNote(t) {
  const l = t.left_out;
  if (!l) return h('p', { class: 'hint left-out' }, 'Groups below the owners\' thresholds are left out of this table; their number is not released (no differential privacy on this table, or it has no groups).');
  const s = n => (n === 1 ? ' group' : ' groups');
  if (l.noise_sd == null) return h('p', { class: 'hint left-out' }, h('strong', {}, fmt(l.groups) + s(l.groups) + ' left out'), ' (below the thresholds).');
  return h('p', { class: 'hint left-out' }, h('strong', {}, 'About ' + fmt(l.groups) + s(l.groups) + ' left out'), ' below the thresholds — a noisy estimate, ±' + fmt(2 * l.noise_sd, 0) + ' at two standard deviations (it is never below zero).');
}

async function analysisPage(id, aid) {
  const [, head] = await collabHead(id, 'analyses');
  const a = await api('GET', 'collaborations/' + enc(id) + '/analyses/' + enc(aid));
  const parts = [...head, h('h2', {}, 'Analysis ' + a.id.slice(0, 8) + ' ', h('span', { class: 'badge', id: 'analysis-status' }, a.status)),
    h('p', { class: 'mono' }, a.request),
    h('p', {}, 'Requested by ' + a.requested_by + ' on ' + a.created_at + '. Receivers: ' + a.receivers.join(', ') + '. Charged: ' + (a.charges.map(c => c.org + ' ε ' + fmt(c.epsilon, 3)).join(', ') || 'nothing') + '.')];
  if (a.status === 'running') { parts.push(h('p', { class: 'loading' }, 'Running… this page refreshes.')); setTimeout(() => { if (location.hash.endsWith(aid)) route(); }, 1500); }
  if (a.error) parts.push(problemBox({ message: a.error }));
  if (a.result) {
    for (const n of a.result.notes) parts.push(h('div', { class: 'note' }, n));
    parts.push(h('p', { class: 'hint', id: 'interval-note' }, 'Error bars: ±2 standard deviations of the noise added for privacy — about a 95 % interval for Gaussian noise and 94 % for Laplace noise (at least 75 % for any noise). Groups below the owners\' thresholds are left out of the tables and charts; each table says how many were left out when that can be released (a noisy estimate: an exact number would itself say something about the data).'));
    parts.push(liftChart(a.result.tables), benchmarkChart(a.result.tables));
    for (const t of a.result.tables) {
      const csv = 'data:text/csv;charset=utf-8,' + enc(csvOf(t));
      parts.push(h('h3', {}, t.name), overlapChart(t) || barChart(t), leftOutNote(t),
        table(t.columns.map(c => c.name + (c.noise_sd ? ' (±' + fmt(2 * c.noise_sd) + ')' : '')), t.rows.map(r => r.map(v => fmt(v, 4))), t.columns.map((c, i) => (c.kind === 'group' ? -1 : i)).filter(i => i >= 0)),
        h('a', { href: csv, download: 'analysis-' + a.id.slice(0, 8) + '-' + t.name + '.csv', class: 'download-csv' }, 'Download ' + t.name + ' as CSV'));
    }
  } else if (a.status === 'released') parts.push(h('p', {}, 'Your organisation is not a receiver of this result.'));
  show(parts);
}

// ------------------------------------------------------------------ activations

async function activationsPage(id) {
  const [, head] = await collabHead(id, 'activations');
  const list = await api('GET', 'collaborations/' + enc(id) + '/activations');
  const out = h('div');
  const rows = list.map(a => {
    const cell = h('span', {});
    if (a.status === 'pending' && a.source_owner === S.me.org) {
      const ok = h('button', { class: 'secondary', id: 'approve-' + a.id }, 'Approve');
      const no = h('button', { class: 'secondary', id: 'reject-' + a.id }, 'Reject');
      ok.onclick = async () => { if (await act(ok, out, () => api('POST', 'collaborations/' + enc(id) + '/activations/' + a.id + '/approve'))) route(); };
      no.onclick = async () => { if (await act(no, out, () => api('POST', 'collaborations/' + enc(id) + '/activations/' + a.id + '/reject'))) route(); };
      cell.append(ok, ' ', no);
    }
    if (a.status === 'approved' && a.partner === S.me.org) {
      const dl = h('button', { id: 'download-' + a.id }, 'Download segment (once)');
      dl.onclick = () => act(dl, out, async () => {
        const r = await fetch('/v1/collaborations/' + enc(id) + '/activations/' + a.id + '/segment', { method: 'POST', headers: { 'x-csrf-token': S.csrf }, credentials: 'same-origin' });
        if (!r.ok) throw new Problem(await r.json().catch(() => ({})), r.status);
        const url = URL.createObjectURL(await r.blob());
        const link = h('a', { href: url, download: 'segment-' + a.id.slice(0, 8) + '.csv' }, 'save');
        document.body.append(link); link.click(); link.remove();
        setTimeout(() => URL.revokeObjectURL(url), 60000);
        route();
      });
      cell.append(dl);
    }
    return [a.id.slice(0, 8), a.partner, a.source + ' → ' + a.target, a.source_key + ' → ' + a.target_key + ', delivers ' + a.output, Object.entries(a.filter).map(([k, v]) => k + '=' + v).join(', ') || 'all', h('span', { id: 'status-' + a.id }, a.status), fmt(a.delivered), cell];
  });
  const source = h('input', { type: 'text', id: 'act-source', required: true });
  const target = h('input', { type: 'text', id: 'act-target', required: true });
  const key = h('input', { type: 'text', id: 'act-key', required: true, placeholder: 'column, or source_column:target_column' });
  const output = h('input', { type: 'text', id: 'act-output', required: true, placeholder: 'an identifier column of your dataset' });
  const filter = h('input', { type: 'text', id: 'act-filter', placeholder: 'region=north, …' });
  const out2 = h('div');
  const go = h('button', { type: 'submit', id: 'request-activation' }, 'Request activation');
  show(head, h('h2', {}, 'Activations'), out, list.length ? table(['id', 'partner', 'datasets', 'keys', 'filter', 'status', 'delivered', ''], rows) : h('p', {}, 'No activations requested.'),
    h('h2', {}, 'Request a segment'), h('form', { class: 'stack', onsubmit: async ev => {
      ev.preventDefault();
      const f = Object.fromEntries(filter.value.split(',').map(x => x.split('=').map(y => y.trim())).filter(p => p.length === 2 && p[0]));
      if (await act(go, out2, () => api('POST', 'collaborations/' + enc(id) + '/activations', { source: source.value, target: target.value, key: key.value, filter: f, output: output.value }))) route();
    } }, h('label', {}, 'Source dataset (the owner\'s)', source), h('label', {}, 'Target dataset (yours)', target), h('label', {}, 'Key', key), h('label', {}, 'Identifiers to receive', h('small', {}, 'the column of your dataset whose values are delivered'), output), h('label', {}, 'Filter', h('small', {}, 'dimension=value, on the dimensions the owner allows'), filter), h('div', { class: 'row' }, go), out2));
}

// ------------------------------------------------------------------ audit

const te = new TextEncoder();
function u64(n) { const b = new Uint8Array(8); new DataView(b.buffer).setBigUint64(0, BigInt(n)); return b; }
function put(parts, str) { const b = te.encode(str); parts.push(u64(b.length), b); }
function hexOf(buf) { return Array.from(new Uint8Array(buf), x => x.toString(16).padStart(2, '0')).join(''); }
function bytesOfHex(x) { const b = new Uint8Array(x.length / 2); for (let i = 0; i < b.length; i++) b[i] = parseInt(x.substr(2 * i, 2), 16); return b; }
async function sha256(parts) {
  const n = parts.reduce((a, p) => a + p.length, 0); const all = new Uint8Array(n); let o = 0;
  for (const p of parts) { all.set(p, o); o += p.length; }
  return hexOf(await crypto.subtle.digest('SHA-256', all));
}
// The same hash as cleanroom-core's `entry_hash`: length-prefixed fields, so no two entries
// encode alike.
async function entryHash(e) {
  const parts = [te.encode('cleanroom-audit-entry-v1\0')];
  put(parts, e.chain); parts.push(u64(e.seq));
  for (const f of [e.at, e.actor, e.action, e.target, e.outcome, e.detail]) put(parts, f);
  parts.push(bytesOfHex(e.prev_hash));
  return sha256(parts);
}

// Fetches the whole chain page by page and recomputes every link in the browser.
async function verifyChain(chain, progress) {
  let prev = await sha256([te.encode('cleanroom-audit-genesis-v1\0'), te.encode(chain)]);
  let after = 0; let head = null; let count = 0;
  for (;;) {
    const page = await api('GET', 'audit/' + enc(chain) + '?after=' + after + '&limit=10000');
    head = page.head;
    for (const e of page.entries) {
      if (e.seq !== after + 1) throw new Error('entry ' + (after + 1) + ' is missing (found ' + e.seq + ')');
      if (e.prev_hash !== prev) throw new Error('entry ' + e.seq + ' does not link to the entry before it');
      const got = await entryHash(e);
      if (got !== e.hash) throw new Error('entry ' + e.seq + ' was altered: its hash does not match its contents');
      prev = got; after = e.seq; count++;
    }
    if (progress) progress(count);
    if (!page.entries.length || (head && after >= head.seq)) break;
  }
  if (head && (head.seq !== after || head.hash !== prev)) throw new Error('the chain ends at entry ' + after + ' but the server reports head ' + head.seq);
  return { seq: after, hash: prev, count };
}

async function auditPage(chain, query) {
  const params = new URLSearchParams(query || '');
  const after = Number(params.get('after') || 0);
  const limit = 200;
  let head = [];
  if (chain !== 'system') head = (await collabHead(chain, 'audit'))[1];
  const page = await api('GET', 'audit/' + enc(chain) + '?after=' + after + '&limit=' + limit);
  const filt = h('input', { type: 'text', id: 'audit-filter', placeholder: 'filter: actor, action, target or outcome' });
  const outcome = h('select', { id: 'audit-outcome' }, ['', 'allowed', 'denied', 'failed'].map(o => h('option', { value: o }, o || 'any outcome')));
  const body = h('tbody');
  const fill = () => {
    const f = filt.value.toLowerCase(); const o = outcome.value;
    body.replaceChildren(...page.entries.filter(e => (!o || e.outcome === o) && (!f || [e.actor, e.action, e.target, e.detail].some(x => x.toLowerCase().includes(f))))
      .map(e => h('tr', {}, h('td', { class: 'num' }, e.seq), h('td', {}, e.at), h('td', {}, e.actor), h('td', {}, e.action), h('td', {}, e.target), h('td', {}, h('span', { class: 'badge ' + (e.outcome === 'allowed' ? 'good' : 'bad') }, e.outcome)), h('td', {}, e.detail))));
  };
  filt.oninput = fill; outcome.onchange = fill; fill();
  const out = h('div', { id: 'verify-out', 'aria-live': 'polite' });
  const verify = h('button', { id: 'verify' }, 'Verify the whole chain in this browser');
  verify.onclick = async () => {
    const r = await act(verify, out, () => verifyChain(chain, n => out.replaceChildren(h('span', { class: 'loading' }, 'Verified ' + n + ' entries…'))));
    if (r) out.replaceChildren(h('div', { class: 'ok', id: 'verified' }, 'Verified ', h('strong', {}, String(r.count)), ' entries: every hash recomputed here matches. Head: entry ' + r.seq + ', ', h('span', { class: 'mono', id: 'verified-head' }, r.hash), '. Pin this head and compare it next time.'));
  };
  const nav = h('div', { class: 'row' });
  if (after > 0) nav.append(h('a', { href: '#/audit/' + enc(chain) + '?after=' + Math.max(0, after - limit) }, '← earlier'), ' ');
  const last = page.entries.length ? page.entries[page.entries.length - 1].seq : after;
  if (page.head && last < page.head.seq) nav.append(h('a', { href: '#/audit/' + enc(chain) + '?after=' + last, id: 'audit-next' }, 'later →'));
  show(head, h('h2', {}, 'Audit log' + (chain === 'system' ? ' (system)' : '')),
    h('p', {}, 'Entries ' + (after + 1) + '–' + last + ' of ' + (page.head ? page.head.seq : 0) + '. Each entry carries the hash of the one before; change one and every later hash breaks.'),
    verify, out, h('div', { class: 'row' }, filt, outcome),
    h('div', { class: 'wrap' }, h('table', { id: 'audit-table' }, h('thead', {}, h('tr', {}, ['seq', 'at', 'actor', 'action', 'target', 'outcome', 'detail'].map(c => h('th', { scope: 'col' }, c)))), body)), nav);
}

// ------------------------------------------------------------------ router

async function route() {
  const mine = ++generation;
  const hash = location.hash || '#/';
  const [path, query] = hash.slice(1).split('?');
  const seg = path.split('/').filter(Boolean).map(decodeURIComponent);
  if (!S.me && seg[0] !== 'signin') {
    try {
      const me = await api('GET', '/console/session');
      S.me = me; S.csrf = me.csrf;
    } catch (e) {
      if (e instanceof Superseded || mine !== generation) return;
      await signInPage(); document.body.dataset.ready = hash; return;
    }
  }
  if (seg[0] === 'signin') { await signInPage(); document.body.dataset.ready = hash; return; }
  renderChrome();
  show(h('p', { class: 'loading' }, 'Loading…'));
  try {
    if (!seg.length) await collaborationsPage();
    else if (seg[0] === 'audit') await auditPage(seg[1] || 'system', query);
    else if (seg[0] === 'c' && seg.length === 2) await overviewPage(seg[1]);
    else if (seg[0] === 'c' && seg[2] === 'datasets') await datasetsPage(seg[1]);
    else if (seg[0] === 'c' && seg[2] === 'd') await datasetPage(seg[1], seg[3]);
    else if (seg[0] === 'c' && seg[2] === 'budgets') await budgetsPage(seg[1]);
    else if (seg[0] === 'c' && seg[2] === 'templates') await templatesPage(seg[1]);
    else if (seg[0] === 'c' && seg[2] === 'sql') await sqlPage(seg[1]);
    else if (seg[0] === 'c' && seg[2] === 'analyses') await analysesPage(seg[1]);
    else if (seg[0] === 'c' && seg[2] === 'a') await analysisPage(seg[1], seg[3]);
    else if (seg[0] === 'c' && seg[2] === 'activations') await activationsPage(seg[1]);
    else show(h('h1', {}, 'Not found'), h('p', {}, 'No such page. ', h('a', { href: '#/' }, 'Back to the collaborations.')));
  } catch (e) {
    if (e instanceof Superseded || mine !== generation) return;
    show(h('h1', {}, 'Could not load this page'), problemBox(e));
  }
  if (mine !== generation) return;
  document.body.dataset.ready = hash;
  document.body.dataset.readyMs = String(Math.round(performance.now()));
  // Keyboard and screen-reader users land on the new page's content, not on the old link.
  if (document.activeElement === document.body || (document.activeElement && !main().contains(document.activeElement))) main().focus({ preventScroll: true });
}

window.addEventListener('hashchange', route);
window.addEventListener('DOMContentLoaded', route);
