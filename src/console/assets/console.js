// The eventsd console: plain JavaScript, no framework, no build step, served by eventsd
// itself under `Content-Security-Policy: default-src 'self'`.
//
// Rules this file keeps:
// - Every piece of text from the server goes into the page as text (`textContent`, text
//   nodes): never as HTML, so an event whose data holds markup shows it and runs nothing.
// - The API key is asked for once and kept for this tab only (sessionStorage). It is sent as
//   the `authorization` header, never put in a URL; the live stream is read with fetch() so
//   that it can carry the header.
// - The console reads through the same HTTP API as any client (`/whoami`, `/events`,
//   `/stream/events`, `POST /events`, and for admin keys the outbound webhook routes
//   `/endpoints…` and `/deliveries/{id}/retry`), so scopes and modes apply exactly as they do
//   there.
'use strict';

const KEY_STORE = 'eventsd.console.key';
const PAGE_SIZE = 20;
/// The webhook sources the console offers by name; any other source can be typed in.
const KNOWN_SOURCES = ['omise', 'komoju', 'stripe'];

const state = {
  key: sessionStorage.getItem(KEY_STORE),
  me: null,
  /// The open live stream's AbortController, if any.
  live: null,
  /// Counts page changes, so that work started for one page (a retry's polling) stops when
  /// the page is left.
  view: 0,
};

// ---- DOM helpers: text only ----

/// An element with attributes and children (strings become text nodes).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name === 'class') node.className = value;
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === 'string' || typeof child === 'number' ? String(child) : child);
  }
  return node;
}

function main() {
  return document.getElementById('main');
}

/// Replaces the page's content and moves focus to it, so a keyboard user starts there.
function show(...children) {
  const page = main();
  page.replaceChildren(...children);
  page.focus({ preventScroll: true });
}

function errorBox(message) {
  return el('p', { class: 'error', role: 'alert' }, message);
}

// ---- The API ----

function headers(extra) {
  const all = Object.assign({}, extra || {});
  if (state.key) all.authorization = 'Bearer ' + state.key;
  return all;
}

/// A JSON request: `{status, ok, body}`; the body is null when it is not JSON.
async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  let response;
  try {
    response = await fetch(path, opts);
  } catch (err) {
    return { status: 0, ok: false, body: { message: 'eventsd did not answer: ' + err.message } };
  }
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  return { status: response.status, ok: response.ok, body };
}

function messageOf(reply) {
  if (reply.body && typeof reply.body.message === 'string') return reply.body.message;
  return 'HTTP ' + reply.status;
}

function mayPublish() {
  const scopes = (state.me && state.me.scopes) || [];
  return scopes.includes('publish') || scopes.includes('admin');
}

/// The outbound webhook routes need the `admin` scope (as every caller has without keys).
function isAdmin() {
  return ((state.me && state.me.scopes) || []).includes('admin');
}

// ---- Start: who am I? ----

async function boot() {
  document.getElementById('forget').addEventListener('click', forgetKey);
  window.addEventListener('hashchange', route);
  const reply = await api('/whoami');
  if (reply.status === 401) {
    showKeyForm(state.key ? messageOf(reply) : null);
    return;
  }
  if (!reply.ok) {
    show(errorBox(messageOf(reply)));
    return;
  }
  state.me = reply.body;
  renderIdentity();
  route();
}

function renderIdentity() {
  const me = state.me;
  const who = document.getElementById('who');
  who.textContent = me ? me.name + ' · ' + me.scopes.join(', ') + ' · ' + me.mode + ' mode' : '';
  document.getElementById('forget').hidden = !state.key;
  document.getElementById('nav-publish-item').hidden = !mayPublish();
  document.getElementById('nav-endpoints-item').hidden = !isAdmin();
}

function showKeyForm(problem) {
  stopLive();
  const input = el('input', {
    id: 'key', name: 'key', type: 'password', autocomplete: 'off', required: true,
    spellcheck: 'false',
  });
  const form = el('form', { id: 'key-form', class: 'card' },
    el('h1', {}, 'Sign in with an API key'),
    el('p', {}, 'The key is kept for this browser tab only and sent as a request header, never in a URL.'),
    problem ? errorBox(problem) : null,
    el('label', { for: 'key' }, 'API key'),
    input,
    el('button', { type: 'submit' }, 'Use this key'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    state.key = input.value.trim();
    sessionStorage.setItem(KEY_STORE, state.key);
    const reply = await api('/whoami');
    if (!reply.ok) {
      showKeyForm(messageOf(reply));
      return;
    }
    state.me = reply.body;
    renderIdentity();
    route();
  });
  show(form);
  input.focus();
}

function forgetKey() {
  sessionStorage.removeItem(KEY_STORE);
  state.key = null;
  state.me = null;
  renderIdentity();
  showKeyForm(null);
}

// ---- Routing: #/events, #/event/{id}, #/webhooks, #/endpoints, #/endpoint/{id}, #/publish ----

function parseHash() {
  const hash = location.hash.replace(/^#/, '') || '/events';
  const [path, query] = hash.split('?');
  return { path, params: new URLSearchParams(query || '') };
}

function route() {
  if (!state.me) return;
  stopLive();
  state.view += 1;
  const { path, params } = parseHash();
  for (const id of ['nav-events', 'nav-webhooks', 'nav-endpoints', 'nav-publish']) {
    document.getElementById(id).removeAttribute('aria-current');
  }
  if (path.startsWith('/event/')) {
    document.getElementById('nav-events').setAttribute('aria-current', 'page');
    eventPage(decodeURIComponent(path.slice('/event/'.length)), params);
  } else if (path === '/webhooks') {
    document.getElementById('nav-webhooks').setAttribute('aria-current', 'page');
    webhooksPage(params);
  } else if (path === '/endpoints' && isAdmin()) {
    document.getElementById('nav-endpoints').setAttribute('aria-current', 'page');
    endpointsPage();
  } else if (path.startsWith('/endpoint/') && isAdmin()) {
    document.getElementById('nav-endpoints').setAttribute('aria-current', 'page');
    endpointPage(decodeURIComponent(path.slice('/endpoint/'.length)), params);
  } else if (path === '/publish' && mayPublish()) {
    document.getElementById('nav-publish').setAttribute('aria-current', 'page');
    publishPage();
  } else {
    document.getElementById('nav-events').setAttribute('aria-current', 'page');
    eventsPage(params);
  }
}

/// Navigates to `#path?params`; an array value becomes a repeated parameter.
function go(path, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params || {})) {
    for (const one of Array.isArray(value) ? value : [value]) {
      if (one !== '' && one !== null && one !== undefined) query.append(name, one);
    }
  }
  const text = query.toString();
  location.hash = '#' + path + (text ? '?' + text : '');
}

function eventLink(event) {
  const href = '#/event/' + encodeURIComponent(event.id) + '?livemode=' + event.livemode;
  return el('a', { href, class: 'event-id' }, event.id);
}

/// One event as a list item: what a list shows of it.
function eventItem(event, receivedFirst) {
  const when = el('time', { datetime: receivedFirst ? event.received : event.created },
    receivedFirst ? 'received ' + event.received : event.created);
  return el('li', { class: 'event', 'data-sequence': event.sequence },
    eventLink(event),
    el('span', { class: 'type' }, event.key),
    when,
    el('span', { class: event.livemode ? 'mode live' : 'mode test' }, event.livemode ? 'live' : 'test'),
    event.source ? el('span', { class: 'source' }, event.source) : null);
}

function pager(offset, shown, total, onMove) {
  const first = total === 0 ? 0 : offset + 1;
  const last = offset + shown;
  return el('div', { class: 'pager' },
    el('button', { type: 'button', id: 'newer', disabled: offset === 0,
      onclick: () => onMove(Math.max(0, offset - PAGE_SIZE)) }, 'Newer'),
    el('span', { id: 'range' }, first + '–' + last + ' of ' + total),
    el('button', { type: 'button', id: 'older', disabled: last >= total,
      onclick: () => onMove(offset + PAGE_SIZE) }, 'Older'));
}

function field(id, label, value, attrs) {
  return el('div', { class: 'field' },
    el('label', { for: id }, label),
    el('input', Object.assign({ id, name: id, value: value || '' }, attrs || {})));
}

// ---- The event list, with filters and live mode ----

async function eventsPage(params) {
  const filters = {
    type: params.get('type') || '',
    livemode: params.get('livemode') || '',
    source: params.get('source') || '',
    from: params.get('from') || '',
    to: params.get('to') || '',
  };
  const offset = Math.max(0, parseInt(params.get('offset') || '0', 10) || 0);
  const mode = el('select', { id: 'livemode', name: 'livemode' },
    el('option', { value: '' }, 'test and live'),
    el('option', { value: 'false' }, 'test only'),
    el('option', { value: 'true' }, 'live only'));
  mode.value = filters.livemode;
  const form = el('form', { id: 'filters', class: 'filters', role: 'search' },
    field('type', 'Type', filters.type, { placeholder: 'charge.*, refund.create' }),
    el('div', { class: 'field' }, el('label', { for: 'livemode' }, 'Mode'), mode),
    field('source', 'Source', filters.source, { placeholder: 'omise' }),
    field('from', 'From (RFC 3339)', filters.from, { placeholder: '2026-12-01T00:00:00Z' }),
    field('to', 'To (RFC 3339)', filters.to, { placeholder: '2026-12-31T23:59:59Z' }),
    el('div', { class: 'actions' }, el('button', { type: 'submit', id: 'apply' }, 'Apply filters')));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const data = new FormData(form);
    go('/events', {
      type: data.get('type').trim(), livemode: data.get('livemode'),
      source: data.get('source').trim(), from: data.get('from').trim(), to: data.get('to').trim(),
    });
  });
  const liveButton = el('button', { type: 'button', id: 'live', 'aria-pressed': 'false' }, 'Go live');
  const liveStatus = el('p', { id: 'live-status', class: 'status', 'aria-live': 'polite' });
  const total = el('p', { id: 'total', class: 'total', 'aria-live': 'polite' }, 'Loading…');
  const list = el('ol', { id: 'events', class: 'events' });
  const page = el('div', { id: 'pager-slot' });
  show(el('h1', {}, 'Events'), form, el('div', { class: 'live-row' }, liveButton, liveStatus),
    total, list, page);

  const query = Object.assign({ order: 'reverse_chronological', limit: PAGE_SIZE, offset }, filters);
  const reply = await api('/events?' + new URLSearchParams(dropEmpty(query)));
  if (!reply.ok) {
    total.replaceWith(errorBox(messageOf(reply)));
    return;
  }
  let count = reply.body.total;
  const setTotal = () => { total.textContent = count === 1 ? '1 event' : count + ' events'; };
  setTotal();
  list.replaceChildren(...reply.body.data.map((event) => eventItem(event, false)));
  page.replaceChildren(pager(offset, reply.body.data.length, count,
    (next) => go('/events', Object.assign({}, filters, { offset: next }))));

  liveButton.addEventListener('click', () => {
    if (state.live) {
      stopLive();
      return;
    }
    liveButton.setAttribute('aria-pressed', 'true');
    liveButton.textContent = 'Stop live';
    // On the first page, from the newest sequence it shows, so nothing committed since it
    // loaded is missed (and nothing on it comes twice); otherwise from now.
    const shown = reply.body.data.map((event) => event.sequence);
    const after = offset === 0 && shown.length ? Math.max(...shown) : null;
    startLive(filters, after, liveStatus, (event) => {
      list.prepend(eventItem(event, false));
      list.firstChild.classList.add('new');
      count += 1;
      setTotal();
    }, () => {
      liveButton.setAttribute('aria-pressed', 'false');
      liveButton.textContent = 'Go live';
    });
  });
}

function dropEmpty(query) {
  const out = {};
  for (const [name, value] of Object.entries(query)) {
    if (value !== '' && value !== null && value !== undefined) out[name] = value;
  }
  return out;
}

/// Whether a streamed event passes the filters the stream itself cannot apply.
function passesLocalFilters(event, filters) {
  if (filters.source && event.source !== filters.source) return false;
  const created = Date.parse(event.created);
  if (filters.from && created < Date.parse(filters.from)) return false;
  if (filters.to && created > Date.parse(filters.to)) return false;
  return true;
}

/// Reads `GET /stream/events` (after sequence `after`, or from now on) with fetch(), so the
/// key travels as a header.
async function startLive(filters, after, status, onEvent, onStop) {
  const controller = new AbortController();
  state.live = { controller, onStop };
  const query = dropEmpty({ type: filters.type, livemode: filters.livemode, after_sequence: after });
  status.textContent = 'Connecting…';
  let response;
  try {
    response = await fetch('/stream/events?' + new URLSearchParams(query), {
      headers: headers({ accept: 'text/event-stream' }),
      signal: controller.signal,
    });
  } catch (err) {
    if (!controller.signal.aborted) status.textContent = 'The stream failed: ' + err.message;
    stopLive();
    return;
  }
  if (!response.ok) {
    let message = 'HTTP ' + response.status;
    try {
      message = (await response.json()).message || message;
    } catch (_) { /* not JSON */ }
    status.textContent = 'The stream was refused: ' + message;
    stopLive();
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const message = parseMessage(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (message.event === 'caught_up') {
          status.textContent = 'Live: new events appear at the top as they commit.';
        } else if (message.event === 'error') {
          status.textContent = 'The stream ended: ' + JSON.parse(message.data).message;
        } else if (message.event === '' && message.data !== '') {
          const event = JSON.parse(message.data);
          if (passesLocalFilters(event, filters)) onEvent(event);
        }
      }
    }
  } catch (err) {
    if (!controller.signal.aborted) status.textContent = 'The stream failed: ' + err.message;
  }
  if (state.live && state.live.controller === controller) stopLive();
}

/// One SSE message block: its event name ('' for plain messages) and joined data lines.
function parseMessage(block) {
  let event = '';
  const data = [];
  for (const line of block.split('\n')) {
    if (line === '' || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (name === 'event') event = value;
    else if (name === 'data') data.push(value);
  }
  return { event, data: data.join('\n') };
}

function stopLive() {
  const live = state.live;
  if (!live) return;
  state.live = null;
  live.controller.abort();
  live.onStop();
}

// ---- One event ----

async function eventPage(id, params) {
  const livemode = params.get('livemode');
  const query = livemode ? '?livemode=' + encodeURIComponent(livemode) : '';
  show(el('h1', {}, 'Event'), el('p', { class: 'status' }, 'Loading…'));
  const reply = await api('/events/' + encodeURIComponent(id) + query);
  if (!reply.ok) {
    show(el('h1', {}, 'Event'), errorBox(messageOf(reply)), el('p', {}, el('a', { href: '#/events' }, 'Back to the events')));
    return;
  }
  const event = reply.body;
  const rows = [
    ['id', event.id], ['type', event.key], ['created', event.created],
    ['received', event.received], ['livemode', String(event.livemode)],
    ['source', event.source === null ? '—' : event.source],
    ['api_version', event.api_version === null ? '—' : event.api_version],
    ['sequence', String(event.sequence)], ['location', event.location],
  ];
  const fields = el('dl', { id: 'fields', class: 'fields' });
  for (const [name, value] of rows) {
    fields.append(el('dt', {}, name), el('dd', { 'data-field': name }, value));
  }
  const json = JSON.stringify(event.data, null, 2);
  const copied = el('span', { id: 'copied', class: 'status', 'aria-live': 'polite' });
  const copy = el('button', { type: 'button', id: 'copy' }, 'Copy data');
  copy.addEventListener('click', async () => {
    copied.textContent = (await copyText(json)) ? 'Copied.' : 'Copy failed: select the text instead.';
  });
  show(el('h1', {}, 'Event ', el('span', { class: 'event-id' }, event.id)), fields,
    el('div', { class: 'data-head' }, el('h2', {}, 'data'), copy, copied),
    el('pre', { id: 'data', class: 'data', tabindex: '0', 'aria-label': 'data as JSON' }, json),
    el('p', {}, el('a', { href: '#/events', id: 'back' }, 'Back to the events')));
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch (_) {
    const area = el('textarea', { class: 'offscreen', readonly: true });
    area.value = text;
    document.body.append(area);
    area.select();
    let done = false;
    try {
      done = document.execCommand('copy');
    } catch (_) {
      done = false;
    }
    area.remove();
    return done;
  }
}

// ---- Webhooks received, by source ----

async function webhooksPage(params) {
  const source = params.get('source') || KNOWN_SOURCES[0];
  const offset = Math.max(0, parseInt(params.get('offset') || '0', 10) || 0);
  const tabs = el('ul', { class: 'tabs', id: 'sources' },
    ...KNOWN_SOURCES.map((name) => el('li', {},
      el('a', { href: '#/webhooks?source=' + name, 'aria-current': name === source ? 'page' : false }, name))));
  const other = el('form', { id: 'other-source', class: 'filters' },
    field('webhook-source', 'Other source (a Standard Webhooks route name)', KNOWN_SOURCES.includes(source) ? '' : source),
    el('div', { class: 'actions' }, el('button', { type: 'submit' }, 'Show')));
  other.addEventListener('submit', (e) => {
    e.preventDefault();
    const name = new FormData(other).get('webhook-source').trim();
    if (name) go('/webhooks', { source: name });
  });
  const total = el('p', { id: 'total', class: 'total', 'aria-live': 'polite' }, 'Loading…');
  const list = el('ol', { id: 'events', class: 'events' });
  const page = el('div', {});
  show(el('h1', {}, 'Webhooks received'), tabs, other,
    el('h2', {}, 'From ', el('span', { id: 'source-name' }, source)), total, list, page);
  const query = { source, order: 'reverse_chronological', limit: PAGE_SIZE, offset };
  const reply = await api('/events?' + new URLSearchParams(query));
  if (!reply.ok) {
    total.replaceWith(errorBox(messageOf(reply)));
    return;
  }
  const count = reply.body.total;
  total.textContent = count === 1 ? '1 delivery' : count + ' deliveries';
  list.replaceChildren(...reply.body.data.map((event) => eventItem(event, true)));
  page.replaceChildren(pager(offset, reply.body.data.length, count,
    (next) => go('/webhooks', { source, offset: next })));
}

// ---- Webhook endpoints (outbound) and their deliveries: admin keys only ----

const DELIVERY_PAGE = 20;
/// How many times, a second apart, the page looks again at a retried delivery.
const RETRY_POLLS = 30;
const FORMATS = [
  ['ENDPOINT_FORMAT_EVENT_JSON', 'event JSON'],
  ['ENDPOINT_FORMAT_CLOUDEVENT_JSON', 'CloudEvents JSON'],
  ['ENDPOINT_FORMAT_OMISE', 'Omise event'],
];

function endpointPath(id) {
  return '/endpoints/' + encodeURIComponent(id);
}

/// Which modes an endpoint gets: `livemode` is absent when it gets every mode the key reads.
function endpointMode(endpoint) {
  if (endpoint.livemode === true) return 'live';
  if (endpoint.livemode === false) return 'test';
  return 'test and live';
}

function endpointTypes(endpoint) {
  return endpoint.types && endpoint.types.length ? endpoint.types.join(', ') : 'every type';
}

function formatName(format) {
  const known = FORMATS.find(([value]) => value === format);
  return known ? known[1] : String(format);
}

function plural(count, one, many) {
  return count + ' ' + (count === 1 ? one : many);
}

function endpointItem(endpoint) {
  return el('li', { class: 'event endpoint', 'data-endpoint-id': endpoint.id },
    el('a', { href: '#/endpoint/' + encodeURIComponent(endpoint.id), class: 'endpoint-url' }, endpoint.url),
    el('span', { class: 'type' }, endpointTypes(endpoint)),
    el('span', { class: endpoint.livemode === true ? 'mode live' : 'mode test' }, endpointMode(endpoint)),
    el('span', { class: endpoint.disabled ? 'state disabled' : 'state enabled' },
      endpoint.disabled ? 'disabled' : 'enabled'),
    el('time', { datetime: endpoint.created }, 'created ' + endpoint.created),
    el('span', { class: 'event-id' }, endpoint.id),
    endpoint.description ? el('span', { class: 'description' }, endpoint.description) : null);
}

async function endpointsPage() {
  const total = el('p', { id: 'endpoint-total', class: 'total', 'aria-live': 'polite' }, 'Loading…');
  const list = el('ol', { id: 'endpoints', class: 'events' });
  const created = el('div', { id: 'endpoint-created', 'aria-live': 'polite' });
  const load = async () => {
    const reply = await api('/endpoints');
    if (!reply.ok) {
      total.replaceChildren(errorBox(messageOf(reply)));
      return;
    }
    const endpoints = reply.body.endpoints;
    total.textContent = plural(endpoints.length, 'endpoint', 'endpoints');
    list.replaceChildren(...endpoints.map(endpointItem));
  };
  show(el('h1', {}, 'Webhook endpoints'),
    el('p', { class: 'status' }, 'eventsd POSTs the events it stores to these URLs, signed the Standard Webhooks way. Open one to see its deliveries and retry them.'),
    total, list, el('h2', {}, 'Add an endpoint'), createEndpointForm(created, load), created);
  await load();
}

function createEndpointForm(result, reload) {
  const mode = el('select', { id: 'endpoint-livemode', name: 'livemode' },
    el('option', { value: '' }, 'every mode the key reads'),
    el('option', { value: 'false' }, 'test only'),
    el('option', { value: 'true' }, 'live only'));
  const format = el('select', { id: 'endpoint-format', name: 'format' },
    ...FORMATS.map(([value, label]) => el('option', { value }, label)));
  const form = el('form', { id: 'endpoint-create', class: 'filters' },
    field('endpoint-url', 'URL', '', { type: 'url', required: true, placeholder: 'an https URL that receives the POSTs' }),
    field('endpoint-types', 'Types (comma-separated; empty: every type)', '', { placeholder: 'charge.*, refund.create' }),
    el('div', { class: 'field' }, el('label', { for: 'endpoint-livemode' }, 'Mode'), mode),
    el('div', { class: 'field' }, el('label', { for: 'endpoint-format' }, 'Body format'), format),
    field('endpoint-description', 'Description (optional)', ''),
    el('div', { class: 'actions' }, el('button', { type: 'submit', id: 'endpoint-submit' }, 'Add endpoint')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const data = new FormData(form);
    const body = {
      url: data.get('endpoint-url').trim(),
      types: data.get('endpoint-types').split(',').map((t) => t.trim()).filter((t) => t !== ''),
      description: data.get('endpoint-description').trim(),
      format: data.get('format'),
    };
    if (data.get('livemode') !== '') body.livemode = data.get('livemode') === 'true';
    const reply = await api('/endpoints', {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
    });
    if (!reply.ok) {
      result.replaceChildren(errorBox(messageOf(reply)));
      return;
    }
    form.reset();
    result.replaceChildren(secretCard(reply.body));
    await reload();
    document.getElementById('endpoint-secret').focus();
  });
  return form;
}

/// The secret of a new endpoint: the only time eventsd shows it.
function secretCard(endpoint) {
  const copied = el('span', { id: 'secret-copied', class: 'status', 'aria-live': 'polite' });
  const copy = el('button', { type: 'button', id: 'copy-secret' }, 'Copy secret');
  copy.addEventListener('click', async () => {
    copied.textContent = (await copyText(endpoint.secret)) ? 'Copied.' : 'Copy failed: select the text instead.';
  });
  return el('div', { class: 'card ok-card' },
    el('p', { class: 'ok' }, 'Added ',
      el('a', { href: '#/endpoint/' + encodeURIComponent(endpoint.id) }, endpoint.id), '.'),
    el('p', {}, 'Its signing secret, shown this once (receivers verify signatures with it; rotate it if it is lost):'),
    el('pre', { id: 'endpoint-secret', class: 'data', tabindex: '0', 'aria-label': 'signing secret' }, endpoint.secret),
    el('div', { class: 'data-head' }, copy, copied));
}

function endpointFields(endpoint) {
  const rows = [
    ['id', endpoint.id], ['url', endpoint.url], ['types', endpointTypes(endpoint)],
    ['livemode', endpointMode(endpoint)], ['disabled', String(endpoint.disabled)],
    ['description', endpoint.description || '—'], ['created', endpoint.created],
    ['format', formatName(endpoint.format)], ['maxInFlight', String(endpoint.maxInFlight)],
  ];
  const fields = el('dl', { id: 'endpoint-fields', class: 'fields' });
  for (const [name, value] of rows) {
    fields.append(el('dt', {}, name), el('dd', { 'data-field': name }, value));
  }
  return fields;
}

/// One endpoint: its settings, an enable/disable button, and its deliveries. The `page`
/// parameters are the page tokens that led to the page shown, so Previous can go back.
async function endpointPage(id, params) {
  const status = params.get('status') || '';
  const eventId = params.get('event_id') || '';
  const tokens = params.getAll('page');
  const back = el('p', {}, el('a', { href: '#/endpoints', id: 'back' }, 'Back to the endpoints'));
  const view = state.view;
  show(el('h1', {}, 'Endpoint'), el('p', { class: 'status' }, 'Loading…'));
  const reply = await api(endpointPath(id));
  if (state.view !== view) return;
  if (!reply.ok) {
    show(el('h1', {}, 'Endpoint'), errorBox(messageOf(reply)), back);
    return;
  }
  let endpoint = reply.body;
  const fieldsSlot = el('div', {}, endpointFields(endpoint));
  const toggleNote = el('span', { id: 'endpoint-toggle-status', class: 'status', 'aria-live': 'polite' });
  const toggle = el('button', { type: 'button', id: 'endpoint-toggle' }, endpoint.disabled ? 'Enable' : 'Disable');
  toggle.addEventListener('click', async () => {
    toggle.disabled = true;
    const answer = await api(endpointPath(id), {
      method: 'PATCH', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ disabled: !endpoint.disabled }),
    });
    toggle.disabled = false;
    if (!answer.ok) {
      toggleNote.replaceChildren(errorBox(messageOf(answer)));
      return;
    }
    endpoint = answer.body;
    fieldsSlot.replaceChildren(endpointFields(endpoint));
    toggle.textContent = endpoint.disabled ? 'Enable' : 'Disable';
    toggleNote.textContent = endpoint.disabled ? 'Disabled: it receives nothing until enabled.' : 'Enabled.';
    toggle.focus();
  });

  const statusSelect = el('select', { id: 'delivery-status', name: 'status' },
    el('option', { value: '' }, 'every status'),
    el('option', { value: 'pending' }, 'pending'),
    el('option', { value: 'succeeded' }, 'succeeded'),
    el('option', { value: 'failed' }, 'failed'));
  statusSelect.value = status;
  const filters = el('form', { id: 'delivery-filters', class: 'filters', role: 'search' },
    el('div', { class: 'field' }, el('label', { for: 'delivery-status' }, 'Status'), statusSelect),
    field('delivery-event', 'Event id', eventId, { placeholder: 'evt_…' }),
    el('div', { class: 'actions' }, el('button', { type: 'submit', id: 'delivery-apply' }, 'Show deliveries')));
  filters.addEventListener('submit', (e) => {
    e.preventDefault();
    const data = new FormData(filters);
    go('/endpoint/' + encodeURIComponent(id), { status: data.get('status'), event_id: data.get('delivery-event').trim() });
  });
  const here = (pages) => go('/endpoint/' + encodeURIComponent(id), { status, event_id: eventId, page: pages });
  const refresh = el('button', { type: 'button', id: 'deliveries-refresh', onclick: route }, 'Refresh');
  const total = el('p', { id: 'delivery-total', class: 'total', 'aria-live': 'polite' }, 'Loading…');
  const list = el('ol', { id: 'deliveries', class: 'events' });
  const pages = el('div', {});
  show(el('h1', {}, 'Endpoint ', el('span', { class: 'event-id' }, endpoint.id)), fieldsSlot,
    el('div', { class: 'data-head' }, toggle, toggleNote),
    el('div', { class: 'data-head' }, el('h2', {}, 'Deliveries'), refresh),
    filters, total, list, pages, back);

  const query = dropEmpty({ status, event_id: eventId, limit: DELIVERY_PAGE, page_token: tokens[tokens.length - 1] });
  const listing = await api(endpointPath(id) + '/deliveries?' + new URLSearchParams(query));
  if (!listing.ok) {
    total.replaceChildren(errorBox(messageOf(listing)));
    return;
  }
  const deliveries = listing.body.deliveries;
  const next = listing.body.nextPageToken;
  const pageNumber = tokens.length + 1;
  total.textContent = deliveries.length === 0 && pageNumber === 1
    ? 'No deliveries' + (status ? ' ' + status : '') + ' yet.'
    : plural(deliveries.length, 'delivery', 'deliveries') + ' on page ' + pageNumber + (next ? '; more on the next page.' : '.');
  list.replaceChildren(...deliveries.map((delivery) => deliveryItem(delivery)));
  pages.replaceChildren(el('div', { class: 'pager' },
    el('button', { type: 'button', id: 'deliveries-first', disabled: tokens.length === 0, onclick: () => here([]) }, 'First page'),
    el('button', { type: 'button', id: 'deliveries-previous', disabled: tokens.length === 0,
      onclick: () => here(tokens.slice(0, -1)) }, 'Previous page'),
    el('button', { type: 'button', id: 'deliveries-next', disabled: !next,
      onclick: () => here(tokens.concat([next])) }, 'Next page')));
}

/// "0.012345678s" (a proto3 JSON Duration) in milliseconds.
function latencyText(latency) {
  if (typeof latency !== 'string') return '—';
  const seconds = parseFloat(latency);
  return Number.isFinite(seconds) ? (seconds * 1000).toFixed(1) + ' ms' : latency;
}

function shortStatus(status) {
  return String(status || '').replace(/^DELIVERY_STATUS_/, '').toLowerCase();
}

function attemptsTable(delivery, id) {
  if (!delivery.attempts.length) return el('p', { id, class: 'status attempts' }, 'No attempt yet.');
  const head = el('tr', {}, ...['#', 'time', 'HTTP status', 'latency', 'error'].map((h) => el('th', { scope: 'col' }, h)));
  const rows = delivery.attempts.map((attempt, i) => el('tr', { class: 'attempt' },
    el('td', { 'data-label': '#' }, String(i + 1)),
    el('td', { 'data-label': 'time' }, el('time', { datetime: attempt.time }, attempt.time || '—')),
    el('td', { 'data-label': 'HTTP status', class: 'http-status' }, attempt.httpStatus ? String(attempt.httpStatus) : 'no answer'),
    el('td', { 'data-label': 'latency' }, latencyText(attempt.latency)),
    el('td', { 'data-label': 'error', class: 'attempt-error' }, attempt.error || '—')));
  return el('table', { id, class: 'attempts' },
    el('caption', {}, 'Attempts of ', delivery.eventId, ', oldest first'),
    el('thead', {}, head), el('tbody', {}, ...rows));
}

/// One delivery: its status, event and attempts (shown on demand), and Retry when it is
/// failed or pending. Retrying polls the delivery until a new attempt is recorded.
function deliveryItem(delivery) {
  const item = el('li', { class: 'event delivery', 'data-delivery-id': delivery.id });
  const note = el('p', { class: 'status delivery-note', 'aria-live': 'polite' });
  let open = false;
  const fill = (d) => {
    const status = shortStatus(d.status);
    item.dataset.status = status;
    const attemptsId = 'attempts-' + d.id;
    const expand = el('button', { type: 'button', class: 'expand', 'aria-expanded': String(open), 'aria-controls': attemptsId },
      (open ? 'Hide attempts' : 'Show attempts') + ' (' + d.attempts.length + ')');
    const attempts = attemptsTable(d, attemptsId);
    attempts.hidden = !open;
    expand.addEventListener('click', () => {
      open = !open;
      attempts.hidden = !open;
      expand.setAttribute('aria-expanded', String(open));
      expand.textContent = (open ? 'Hide attempts' : 'Show attempts') + ' (' + d.attempts.length + ')';
    });
    const retry = status === 'failed' || status === 'pending'
      ? el('button', { type: 'button', class: 'retry' }, 'Retry') : null;
    if (retry) retry.addEventListener('click', () => retryDelivery(d, retry, note, fill));
    item.replaceChildren(...[
      el('span', { class: 'delivery-status ' + status }, status),
      el('a', { href: '#/event/' + encodeURIComponent(d.eventId), class: 'event-id' }, d.eventId),
      el('span', { class: 'sequence' }, 'sequence ' + d.sequence),
      el('span', { class: 'attempt-count' }, plural(d.attempts.length, 'attempt', 'attempts')),
      d.nextAttempt ? el('time', { datetime: d.nextAttempt }, 'next attempt ' + d.nextAttempt) : null,
      d.error ? el('span', { class: 'delivery-error' }, d.error) : null,
      el('div', { class: 'delivery-actions' }, expand, retry),
      note, attempts].filter((child) => child !== null));
    return expand;
  };
  fill(delivery);
  return item;
}

async function retryDelivery(delivery, button, note, fill) {
  const view = state.view;
  const before = delivery.attempts.length;
  button.disabled = true;
  note.textContent = 'Retrying…';
  const reply = await api('/deliveries/' + encodeURIComponent(delivery.id) + '/retry', { method: 'POST' });
  if (!reply.ok) {
    button.disabled = false;
    note.replaceChildren(errorBox(messageOf(reply)));
    return;
  }
  // The retry is scheduled: look again until its attempt is recorded (or give up, saying so).
  const query = new URLSearchParams({ event_id: delivery.eventId });
  const path = endpointPath(delivery.endpointId) + '/deliveries?' + query;
  let latest = reply.body;
  for (let i = 0; i < RETRY_POLLS && latest.attempts.length <= before; i++) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    if (state.view !== view) return;
    const answer = await api(path);
    if (!answer.ok) {
      button.disabled = false;
      note.replaceChildren(errorBox(messageOf(answer)));
      return;
    }
    if (answer.body.deliveries.length) latest = answer.body.deliveries[0];
  }
  if (state.view !== view) return;
  const expand = fill(latest);
  note.textContent = latest.attempts.length > before
    ? 'Retried: ' + shortStatus(latest.status) + '.'
    : 'The retry is scheduled; no new attempt yet: refresh later.';
  expand.focus();
}

// ---- Publish a test event (keys with the publish scope) ----

function publishPage() {
  const mode = state.me.mode;
  const live = el('input', { id: 'publish-livemode', name: 'livemode', type: 'checkbox',
    checked: mode === 'live', disabled: mode !== 'all' });
  const data = el('textarea', { id: 'publish-data', name: 'data', rows: '6', spellcheck: 'false' });
  data.value = '{\n  "message": "hello from the console"\n}';
  const result = el('div', { id: 'publish-result', 'aria-live': 'polite' });
  const form = el('form', { id: 'publish', class: 'card' },
    field('publish-type', 'Type', 'console.test', { required: true }),
    field('publish-source', 'Source (optional)', ''),
    el('div', { class: 'field check' }, live, el('label', { for: 'publish-livemode' }, 'Live event')),
    el('div', { class: 'field wide' }, el('label', { for: 'publish-data' }, 'data (a JSON object)'), data),
    el('div', { class: 'actions' }, el('button', { type: 'submit', id: 'publish-submit' }, 'Publish')),
    result);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    let parsed;
    try {
      parsed = JSON.parse(data.value);
    } catch (err) {
      result.replaceChildren(errorBox('data is not valid JSON: ' + err.message));
      return;
    }
    const body = { type: form.elements['publish-type'].value.trim(), livemode: live.checked, data: parsed };
    const source = form.elements['publish-source'].value.trim();
    if (source) body.source = source;
    const reply = await api('/events', {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
    });
    if (!reply.ok) {
      result.replaceChildren(errorBox(messageOf(reply)));
      return;
    }
    const stored = reply.body;
    result.replaceChildren(el('p', { class: 'ok' }, 'Published ',
      eventLink({ id: stored.id, livemode: stored.livemode }), ' (sequence ' + stored.sequence + ').'));
  });
  show(el('h1', {}, 'Publish a test event'), form);
}

boot();
