// The stompbox console: plain JavaScript over the admin API (no build step). The admin token
// is kept in sessionStorage (this tab only) and sent as a bearer token; nothing else is stored.
'use strict';

const TOKEN_KEY = 'stompbox-admin-token';
const HISTORY = 60; // chart samples, one a second
const $ = (id) => document.getElementById(id);

let token = sessionStorage.getItem(TOKEN_KEY);
let timer = null;
let tenantsCache = [];
// Per node: the last counters seen, to turn them into rates.
const last = new Map();
const series = { in: [], out: [] };
// Per node: its rates over the last minute.
const nodeSeries = new Map();

async function api(method, path, body, contentType) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined && contentType) headers['Content-Type'] = contentType;
  const response = await fetch(path, { method, headers, body });
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (response.status === 401 && path.startsWith('/admin/')) {
    signOut('The admin token was refused; sign in again.');
    throw new Error('unauthorized');
  }
  return { status: response.status, json, text };
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function status(text) { $('status').textContent = text; }

// --- signing in ----------------------------------------------------------------------------

async function signIn(candidate) {
  token = candidate;
  const r = await fetch('/admin/v1/cluster', { headers: { Authorization: `Bearer ${token}` } });
  if (r.status !== 200) {
    const body = await r.json().catch(() => ({}));
    token = null;
    $('signin-error').textContent = `Not signed in: ${body.error || r.status}`;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  const body = await r.json();
  $('signin-error').textContent = '';
  $('signin').hidden = true;
  $('app').hidden = false;
  $('signout').hidden = false;
  $('whoami').hidden = false;
  $('whoami').textContent = `node ${body.node}`;
  route();
}

function signOut(why) {
  sessionStorage.removeItem(TOKEN_KEY);
  token = null;
  clearInterval(timer);
  $('app').hidden = true;
  $('signout').hidden = true;
  $('whoami').hidden = true;
  $('signin').hidden = false;
  $('signin-error').textContent = why || '';
  $('token').value = '';
  $('token').focus();
}

// --- views ---------------------------------------------------------------------------------

function route() {
  if (!token) return;
  const view = (location.hash || '#cluster').slice(1);
  for (const name of ['cluster', 'tenants', 'users']) {
    $(`view-${name}`).hidden = name !== view;
    const link = document.querySelector(`nav a[data-view="${name}"]`);
    if (name === view) link.setAttribute('aria-current', 'page'); else link.removeAttribute('aria-current');
  }
  clearInterval(timer);
  status('');
  if (view === 'cluster') { refreshCluster(); timer = setInterval(refreshCluster, 1000); }
  if (view === 'tenants') refreshTenants();
  if (view === 'users') fillTenantSelect($('user-tenant'));
}

// The cluster: nodes with live rates, a chart, dropped messages, Redis.
async function refreshCluster() {
  let r;
  try { r = await api('GET', '/admin/v1/cluster'); } catch (_) { return; }
  if (r.status !== 200) { status(`The cluster could not be read: ${r.json ? r.json.error : r.status}`); return; }
  const body = r.json;
  const rows = [];
  let totalIn = 0, totalOut = 0;
  const dropped = new Map();
  for (const { node, status: s } of body.nodes) {
    const before = last.get(node);
    let rateIn = 0, rateOut = 0;
    if (before && s.at_ms > before.at_ms) {
      const secs = (s.at_ms - before.at_ms) / 1000;
      rateIn = Math.max(0, (s.published - before.published) / secs);
      rateOut = Math.max(0, (s.delivered - before.delivered) / secs);
    }
    last.set(node, s);
    totalIn += rateIn; totalOut += rateOut;
    const mine = nodeSeries.get(node) || { in: [], out: [] };
    mine.in.push(rateIn); mine.out.push(rateOut);
    if (mine.in.length > HISTORY) { mine.in.shift(); mine.out.shift(); }
    nodeSeries.set(node, mine);
    for (const [why, n] of s.dropped) dropped.set(why, (dropped.get(why) || 0) + n);
    rows.push(el('tr', { 'data-node': node },
      el('th', { scope: 'row' }, node),
      el('td', { class: s.ready ? 'yes' : 'no' }, s.ready ? 'ready' : 'not ready'),
      el('td', {}, s.draining ? 'draining' : 'no'),
      el('td', { class: 'num' }, String(s.connections)),
      el('td', { class: 'num' }, String(s.users)),
      el('td', { class: 'num rate-in' }, rateIn.toFixed(0)),
      el('td', { class: 'num rate-out' }, rateOut.toFixed(0)),
      el('td', {}, sparkline(node, mine, rateIn, rateOut))));
  }
  for (const missing of body.unanswered) {
    rows.push(el('tr', { 'data-node': missing }, el('th', { scope: 'row' }, missing),
      el('td', { class: 'no', colspan: '7' }, 'did not answer within a second')));
  }
  $('nodes').tBodies[0].replaceChildren(...rows);
  series.in.push(totalIn); series.out.push(totalOut);
  if (series.in.length > HISTORY) { series.in.shift(); series.out.shift(); }
  drawChart();
  $('chart-now').textContent = `Now: ${totalIn.toFixed(0)} in, ${totalOut.toFixed(0)} out per second.`;
  $('dropped').tBodies[0].replaceChildren(...[...dropped].map(([why, n]) =>
    el('tr', {}, el('th', { scope: 'row' }, why.replaceAll('_', ' ')), el('td', { class: 'num' }, String(n)))));
  $('redis').textContent = JSON.stringify(body.redis, null, 2);
  status(body.error ? `Other nodes could not be asked: ${body.error}` : `${body.nodes.length} node(s), updated ${new Date().toLocaleTimeString()}`);
}

// A node's last minute in a small chart: in solid, out dashed.
function sparkline(node, values, rateIn, rateOut) {
  const ns = 'http://www.w3.org/2000/svg';
  const w = 160, h = 32;
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
  svg.setAttribute('class', 'spark');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `${node}, last minute: now ${rateIn.toFixed(0)} in and ${rateOut.toFixed(0)} out per second`);
  const max = Math.max(10, ...values.in, ...values.out);
  const points = (list) => list.map((v, i) => `${(i * w) / (HISTORY - 1)},${h - 2 - (v / max) * (h - 4)}`).join(' ');
  for (const [list, stroke, dash] of [[values.in, '#0b5cad', ''], [values.out, '#1a7f37', '4 2']]) {
    const line = document.createElementNS(ns, 'polyline');
    line.setAttribute('points', points(list));
    line.setAttribute('fill', 'none');
    line.setAttribute('stroke', stroke);
    line.setAttribute('stroke-width', '1.5');
    if (dash) line.setAttribute('stroke-dasharray', dash);
    svg.append(line);
  }
  return svg;
}

function drawChart() {
  const svg = $('chart');
  const w = 600, h = 160, pad = 24;
  const max = Math.max(10, ...series.in, ...series.out);
  const line = (values) => values.map((v, i) =>
    `${pad + (i * (w - 2 * pad)) / (HISTORY - 1)},${h - pad - (v / max) * (h - 2 * pad)}`).join(' ');
  svg.innerHTML = '';
  const ns = 'http://www.w3.org/2000/svg';
  const add = (tag, attrs) => { const n = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); svg.append(n); return n; };
  add('line', { x1: pad, y1: h - pad, x2: w - pad, y2: h - pad, stroke: '#8c959f' });
  add('text', { x: 4, y: pad - 8, 'font-size': 11, fill: '#57606a' }).textContent = `${max.toFixed(0)}/s`;
  add('text', { x: 4, y: h - 6, 'font-size': 11, fill: '#57606a' }).textContent = '60 s ago';
  add('polyline', { points: line(series.in), fill: 'none', stroke: '#0b5cad', 'stroke-width': 2 });
  add('polyline', { points: line(series.out), fill: 'none', stroke: '#1a7f37', 'stroke-width': 2, 'stroke-dasharray': '5 3' });
}

// The tenants: keys, plugin, history; edit, delete, rotate keys, upload plugins.
async function refreshTenants() {
  let r;
  try { r = await api('GET', '/admin/v1/tenants'); } catch (_) { return; }
  if (r.status !== 200) { status(`The tenants could not be read: ${r.json ? r.json.error : r.status}`); return; }
  tenantsCache = r.json.tenants;
  $('tenants-stored').textContent = `Changes are stored in ${r.json.stored_in}.`;
  const rows = tenantsCache.map((t) => {
    const s = t.settings;
    const keys = el('ul', { class: 'keys' }, ...s.api_keys.map((k) => el('li', {},
      `${k.hint} `,
      el('button', { type: 'button', class: 'secondary', 'data-retire': k.id, 'aria-label': `Retire key ${k.hint} of ${t.id}`,
        onclick: () => retireKey(t.id, k) }, 'Retire'))));
    const plugin = t.plugin || {};
    const pluginText = `${plugin.policy || 'builtin'}${plugin.sha256 ? ` ${plugin.sha256.slice(0, 12)}` : ''}`;
    const lastError = plugin.last_error ? el('div', { class: 'error' }, `last error: ${plugin.last_error}`) : '';
    const history = s.history ? `stored${s.history_max_messages ? `, ${s.history_max_messages} per user` : ''}` : 'off';
    return el('tr', { 'data-tenant': t.id },
      el('th', { scope: 'row' }, t.id),
      el('td', {}, t.source),
      el('td', { class: 'num' }, String(t.sessions)),
      el('td', {}, keys),
      el('td', {}, pluginText, lastError),
      el('td', {}, history),
      el('td', {},
        el('button', { type: 'button', class: 'secondary', 'aria-label': `Edit ${t.id}`, onclick: () => editTenant(t) }, 'Edit'),
        el('button', { type: 'button', class: 'secondary', 'data-add-key': t.id, 'aria-label': `Add an API key to ${t.id}`, onclick: () => addKey(t.id) }, 'Add key'),
        el('button', { type: 'button', class: 'danger', 'aria-label': `Delete ${t.id}`, onclick: () => deleteTenant(t.id) }, 'Delete')));
  });
  $('tenants').tBodies[0].replaceChildren(...rows);
  fillTenantSelect($('plugin-tenant'));
  status(`${tenantsCache.length} tenant(s)`);
}

async function fillTenantSelect(select) {
  if (!tenantsCache.length) {
    try { const r = await api('GET', '/admin/v1/tenants'); if (r.status === 200) tenantsCache = r.json.tenants; } catch (_) { return; }
  }
  const chosen = select.value;
  select.replaceChildren(...tenantsCache.map((t) => el('option', { value: t.id }, t.id)));
  if (chosen) select.value = chosen;
}

function editTenant(t) {
  const shown = { ...t.settings };
  // Secrets are write-only: left out, the tenant keeps them.
  delete shown.api_keys; delete shown.settings; delete shown.id;
  if (shown.upstream) delete shown.upstream.webhook_secret;
  $('edit-id').value = t.id;
  $('edit-settings').value = JSON.stringify(shown, null, 2);
  $('edit-id').focus();
}

async function saveTenant(event) {
  event.preventDefault();
  const id = $('edit-id').value.trim();
  const out = $('edit-result');
  let body;
  try { body = JSON.parse($('edit-settings').value || '{}'); } catch (e) { out.className = 'error'; out.textContent = `The settings are not JSON: ${e.message}`; return; }
  const r = await api('PUT', `/admin/v1/tenants/${encodeURIComponent(id)}`, JSON.stringify(body), 'application/json');
  if (r.status === 200 || r.status === 201) { out.className = 'ok'; out.textContent = `Tenant ${id}: ${r.json.applied}.`; refreshTenants(); }
  else { out.className = 'error'; out.textContent = `Tenant ${id} not saved: ${r.json ? r.json.error : r.status}`; }
}

async function deleteTenant(id) {
  if (!confirm(`Delete tenant ${id}? Its sessions are closed on every node.`)) return;
  const r = await api('DELETE', `/admin/v1/tenants/${encodeURIComponent(id)}`);
  await refreshTenants();
  status(r.status === 200 ? `Tenant ${id} deleted.` : `Tenant ${id} not deleted: ${r.json ? r.json.error : r.status}`);
}

async function addKey(id) {
  const r = await api('POST', `/admin/v1/tenants/${encodeURIComponent(id)}/keys`);
  const box = $('new-key');
  box.hidden = false;
  if (r.status === 201) {
    box.replaceChildren(`New API key of ${id}, shown this once: `, el('code', { id: 'new-key-value' }, r.json.key),
      '. Both keys work until you retire the old one.');
  } else {
    box.textContent = `No key added: ${r.json ? r.json.error : r.status}`;
  }
  refreshTenants();
}

async function retireKey(id, key) {
  if (!confirm(`Retire key ${key.hint} of ${id}? It stops working on every node.`)) return;
  const r = await api('DELETE', `/admin/v1/tenants/${encodeURIComponent(id)}/keys/${key.id}`);
  await refreshTenants();
  status(r.status === 200 ? `Key ${key.hint} of ${id} retired.` : `Key not retired: ${r.json ? r.json.error : r.status}`);
}

// A plugin is checked against the world first; only a plugin that passed can be installed.
let checkedPlugin = null;

async function checkPlugin() {
  const out = $('plugin-result');
  const file = $('plugin-file').files[0];
  $('plugin-install').disabled = true;
  checkedPlugin = null;
  if (!file) { out.className = 'error'; out.textContent = 'Choose a .wasm file first.'; return; }
  out.className = ''; out.textContent = `Checking ${file.name}…`;
  const bytes = await file.arrayBuffer();
  const r = await api('POST', '/admin/v1/plugins/check', bytes, 'application/wasm');
  if (r.status === 200) {
    checkedPlugin = bytes;
    $('plugin-install').disabled = false;
    out.className = 'ok';
    out.textContent = `${file.name} passed the check: world ${r.json.world}, sha256 ${r.json.sha256.slice(0, 16)}…, exports ${r.json.exports.join(', ')}. Install it?`;
  } else {
    out.className = 'error';
    out.textContent = `${file.name} failed the check: ${r.json ? r.json.error : r.status}`;
  }
}

async function installPlugin(event) {
  event.preventDefault();
  const out = $('plugin-result');
  const tenant = $('plugin-tenant').value;
  if (!checkedPlugin) { out.className = 'error'; out.textContent = 'Check the plugin first.'; return; }
  const r = await api('PUT', `/admin/v1/tenants/${encodeURIComponent(tenant)}/plugin`, checkedPlugin, 'application/wasm');
  $('plugin-install').disabled = true;
  checkedPlugin = null;
  if (r.status === 200) { out.className = 'ok'; out.textContent = `Installed on ${tenant}: ${r.json.policy} ${String(r.json.sha256 || '').slice(0, 16)}.`; }
  else { out.className = 'error'; out.textContent = `Not installed on ${tenant}: ${r.json ? r.json.error : r.status}`; }
  refreshTenants();
}

// The users: is someone online, where, and closing their sessions.
async function lookUp(event) {
  if (event) event.preventDefault();
  const tenant = $('user-tenant').value, user = $('user-name').value.trim();
  const out = $('user-result');
  const path = `/api/v1/tenants/${encodeURIComponent(tenant)}/users/${encodeURIComponent(user)}`;
  const r = await api('GET', path);
  if (r.status !== 200) { out.replaceChildren(el('p', { class: 'error', role: 'alert' }, `Not found: ${r.json ? r.json.error : r.status}`)); return; }
  const u = r.json;
  const where = u.nodes.map((n) => `${n.node} (${n.sessions})`).join(', ');
  const parts = [el('p', { id: 'user-state' }, u.online ? `${user} is online: ${u.sessions} session(s) on ${where}.` : `${user} is offline.`)];
  if (u.unanswered.length) parts.push(el('p', { class: 'error' }, `Not answered by: ${u.unanswered.join(', ')}`));
  if (u.online) {
    parts.push(el('button', { type: 'button', class: 'danger', id: 'disconnect', onclick: () => disconnect(tenant, user) }, `Disconnect ${user}`));
  }
  out.replaceChildren(...parts);
}

async function disconnect(tenant, user) {
  const r = await api('DELETE', `/api/v1/tenants/${encodeURIComponent(tenant)}/users/${encodeURIComponent(user)}/sessions`);
  const out = $('user-result');
  if (r.status === 200) {
    out.replaceChildren(el('p', { id: 'user-state', class: 'ok' }, `${user}: ${r.json.closed} session(s) closed.`));
  } else {
    out.replaceChildren(el('p', { class: 'error', role: 'alert' }, `Not disconnected: ${r.json ? r.json.error : r.status}`));
  }
}

// --- wiring ---------------------------------------------------------------------------------

$('signin-form').addEventListener('submit', (e) => { e.preventDefault(); signIn($('token').value); });
$('signout').addEventListener('click', () => signOut('Signed out.'));
$('edit-form').addEventListener('submit', saveTenant);
$('plugin-check').addEventListener('click', checkPlugin);
$('plugin-form').addEventListener('submit', installPlugin);
$('plugin-file').addEventListener('change', () => { $('plugin-install').disabled = true; checkedPlugin = null; });
$('user-form').addEventListener('submit', lookUp);
window.addEventListener('hashchange', route);
if (token) signIn(token); else $('token').focus();
