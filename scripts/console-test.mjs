// The console's browser test (run by scripts/console-test.sh). Starts a real eventsd with an
// API key file on free loopback ports, stores events over HTTP, and drives Debian's chromium
// with playwright-core through every step of issue #19's list: load the console, see the
// stored events with their total, filter by type and by source, publish over gRPC (the
// `eventsd publish` client) and see the event appear live, open its page, check the XSS case,
// the 360 px width and the Tab order, and save the screenshot. A second eventsd without keys
// shows that plain EventSource reads the stream. A third, allowed to deliver to loopback over
// plain HTTP with one attempt per delivery, serves the webhook endpoints page: an endpoint added
// through the console, 21 deliveries failed by a local receiver (500 first, then 200), paging,
// filters, the attempts, and Retry turning one into a success. Every wait is bounded.
import { spawn, execFile } from 'node:child_process';
import http from 'node:http';
import { createRequire } from 'node:module';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

const require = createRequire(path.resolve(process.env.CONSOLE_TEST_MODULES || 'target/console-test') + '/');
const { chromium } = require('playwright-core');

const BIN = path.resolve(process.env.EVENTSD_BIN || 'target/debug/eventsd');
const SCREENSHOT = process.env.CONSOLE_SCREENSHOT || 'docs/console.png';
const ENDPOINTS_SCREENSHOT = process.env.CONSOLE_ENDPOINTS_SCREENSHOT || 'docs/console-endpoints.png';
const ADMIN = 'sk_console_admin_T4kq9';
const WATCHER = 'sk_console_watch_P2xv7';
const LIMIT_MS = 30_000;
const XSS = '<img src=x onerror="window.__xss=1">';

const started = Date.now();
function step(name) {
  console.log(`console-test: ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
}
function check(condition, message) {
  if (!condition) throw new Error(message);
}

// ---- The server ----

const dir = mkdtempSync(path.join(tmpdir(), 'eventsd-console-'));
const keys = path.join(dir, 'keys.toml');
writeFileSync(keys, `
[[key]]
name = "console-admin"
key = "${ADMIN}"
scopes = ["admin"]
mode = "all"

[[key]]
name = "watcher"
key = "${WATCHER}"
scopes = ["read", "subscribe"]
mode = "test"
`);
/// The servers started, to stop at the end; each keeps its stderr in `log`.
const servers = [];

/// `eventsd serve` on free loopback ports (port 0, read back from its log) with extra flags.
function startServer(name, extra) {
  const server = { name, log: '' };
  server.process = spawn(BIN, ['serve', '--listen', '127.0.0.1:0', '--http-listen', '127.0.0.1:0',
    '--data-dir', path.join(dir, name), ...extra], {
    env: Object.assign({}, process.env, { RUST_LOG: 'info', NO_COLOR: '1' }),
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  server.process.stderr.on('data', (chunk) => { server.log += chunk.toString(); });
  servers.push(server);
  return server;
}

async function addresses(server) {
  const deadline = Date.now() + LIMIT_MS;
  while (Date.now() < deadline) {
    const line = server.log.split('\n').find((l) => l.includes('eventsd serving'));
    const grpc = line && /grpc=([0-9.:]+)/.exec(line);
    const http = line && /http=([0-9.:]+)/.exec(line);
    if (grpc && http) return { grpc: grpc[1], http: http[1] };
    if (server.process.exitCode !== null) throw new Error('eventsd exited:\n' + server.log);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error('eventsd never said where it serves:\n' + server.log);
}

async function postEvent(base, body, key = ADMIN) {
  const auth = key ? { authorization: 'Bearer ' + key } : {};
  const response = await fetch(base + '/events', {
    method: 'POST',
    headers: Object.assign(auth, { 'content-type': 'application/json' }),
    body: JSON.stringify(body),
  });
  const text = await response.text();
  check(response.status === 201, `POST /events answered ${response.status}: ${text}`);
  return JSON.parse(text);
}

/// Polls `probe` every 100 ms until it answers something truthy, for at most LIMIT_MS.
async function until(what, probe) {
  const deadline = Date.now() + LIMIT_MS;
  while (Date.now() < deadline) {
    const answer = await probe();
    if (answer) return answer;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error('timed out waiting for ' + what);
}

/// A webhook receiver on loopback: 500 to the first POST of each webhook-id, 200 after.
function startReceiver() {
  const received = [];
  const server = http.createServer((request, response) => {
    request.resume();
    request.on('end', () => {
      const id = request.headers['webhook-id'] || '';
      const status = received.some((r) => r.id === id) ? 200 : 500;
      received.push({ id, status });
      response.writeHead(status, { 'content-type': 'text/plain' });
      response.end(status === 200 ? 'ok' : 'not yet');
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    server, received, url: `http://127.0.0.1:${server.address().port}/hook`,
  })));
}

/// Checks that `hashes` do not scroll sideways at the page's current width.
async function noSideScroll(page, base, hashes) {
  for (const hash of hashes) {
    await page.goto(base + '/console' + hash);
    await page.waitForSelector('main h1');
    await page.waitForLoadState('networkidle');
    const widths = await page.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
    check(widths[0] <= widths[1], `${hash} scrolls sideways at 360 px: ${widths}`);
  }
}

/// Presses Tab through the page: every stop must be a control with a visible focus, and every
/// label (id, href, or text) in `wanted` must be reached. Answers how many were reached.
async function tabReaches(page, wanted) {
  await page.evaluate(() => document.activeElement && document.activeElement.blur());
  const controls = await page.evaluate(() => [...document.querySelectorAll('a[href], button:not([disabled]), input, select, textarea')]
    .filter((e) => e.offsetParent !== null).length);
  const reached = new Set();
  for (let i = 0; i < controls + 5; i++) {
    await page.keyboard.press('Tab');
    const focus = await page.evaluate(() => {
      const e = document.activeElement;
      if (!e || e === document.body) return null;
      const style = getComputedStyle(e);
      const label = e.id || e.getAttribute('href') || e.textContent.trim();
      return { tag: e.tagName, label, outline: style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2 };
    });
    if (!focus) continue;
    check(['A', 'BUTTON', 'INPUT', 'SELECT', 'TEXTAREA'].includes(focus.tag), 'Tab reached a ' + focus.tag);
    check(focus.outline, `${focus.tag} ${focus.label} has no visible focus`);
    reached.add(focus.label);
  }
  for (const label of wanted) {
    check(reached.has(label), `Tab never reached ${label} (reached: ${[...reached].join(', ')})`);
  }
  return reached.size;
}

function publishOverGrpc(grpc, id) {
  return new Promise((resolve, reject) => {
    execFile(BIN, ['publish', '--addr', 'http://' + grpc, '--type', 'charge.capture', '--id', id,
      '--source', 'omise', '--data', '{"object":"charge","amount":4200}'], {
      env: Object.assign({}, process.env, { EVENTSD_API_KEY: ADMIN }), timeout: LIMIT_MS,
    }, (err, stdout, stderr) => (err ? reject(new Error(stderr || err.message)) : resolve(stdout)));
  });
}

/// Bounds the page's waits and records its script errors in `problems`.
function watch(page, problems) {
  page.setDefaultTimeout(LIMIT_MS);
  page.on('pageerror', (err) => problems.push('page error: ' + err.message));
  // Expected: the first /whoami, before a key is given, is 401; browsers ask for a favicon;
  // step 11 has an endpoint refused (422).
  const expected = (msg) => /\/whoami$|\/favicon\.ico$/.test(msg.location().url || '')
    || (/\/endpoints$/.test(msg.location().url || '') && msg.text().includes('422'));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !expected(msg)) problems.push(`console: ${msg.text()} (${msg.location().url})`);
  });
}

/// Signs in on a fresh page of `browser` at `base` with `key`.
async function signIn(browser, base, key, problems) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 860 } });
  const page = await context.newPage();
  watch(page, problems);
  await page.goto(base + '/console');
  await page.fill('#key', key);
  await page.click('#key-form button[type=submit]');
  await page.waitForSelector('#events li, #total');
  return page;
}

// ---- The webhook endpoints page ----

/// Step 11: a third eventsd that delivers to loopback over plain HTTP with one attempt per
/// delivery (`--delivery-retry-schedule 0s`), so the receiver's first 500 fails a delivery.
async function endpointSteps(browser, problems) {
  const { http: address } = await addresses(startServer('outbound', ['--api-keys', keys,
    '--delivery-allow-private', '--delivery-allow-http', '--delivery-retry-schedule', '0s']));
  const base = 'http://' + address;
  const receiver = await startReceiver();
  try {
    const page = await signIn(browser, base, ADMIN, problems);
    await page.click('#nav-endpoints');
    await page.waitForFunction(() => document.getElementById('endpoint-total')?.textContent === '0 endpoints');

    // The API's error is shown as text; then a good endpoint shows its secret once.
    await page.fill('#endpoint-url', 'ftp://127.0.0.1/hook');
    await page.click('#endpoint-submit');
    const refused = await (await page.waitForSelector('#endpoint-created .error')).textContent();
    check(refused.includes('url'), 'the refusal names url: ' + refused);
    await page.fill('#endpoint-url', receiver.url);
    await page.fill('#endpoint-types', 'order.*');
    await page.fill('#endpoint-description', XSS);
    await page.click('#endpoint-submit');
    const secret = await (await page.waitForSelector('#endpoint-secret')).textContent();
    check(secret.startsWith('whsec_'), 'the new secret is shown: ' + secret);
    const id = await page.textContent('#endpoint-created a');
    await page.waitForFunction(() => document.getElementById('endpoint-total')?.textContent === '1 endpoint');
    const row = (name) => page.textContent(`#endpoints li .${name}`);
    check((await row('endpoint-url')) === receiver.url, 'the list shows the url');
    check((await row('type')) === 'order.*', 'the list shows the types');
    check((await row('mode')) === 'test and live', 'the list shows the modes');
    check((await row('state')) === 'enabled', 'the list shows enabled');
    check((await row('description')) === XSS, 'the description is shown as text');
    check((await page.locator('main img').count()) === 0, 'no img element was made');
    step('adds an endpoint in the console; its secret is shown once, the API refusal as text');

    // 21 matching events, each failed by the receiver's first 500 (one attempt each).
    for (let i = 0; i < 21; i++) {
      await postEvent(base, { id: `evt_order_${i}`, type: 'order.paid', data: { amount: 100 + i } });
    }
    await postEvent(base, { id: 'evt_other', type: 'charge.create', data: { amount: 1 } });
    const auth = { authorization: 'Bearer ' + ADMIN };
    await until('21 failed deliveries', async () => {
      const reply = await fetch(`${base}/endpoints/${id}/deliveries?status=failed&limit=100`, { headers: auth });
      return (await reply.json()).deliveries.length === 21;
    });

    await page.click(`#endpoints li a[href="#/endpoint/${id}"]`);
    await page.waitForSelector('#endpoint-fields');
    check(!(await page.isVisible('#endpoint-secret')), 'the secret is not shown again');
    check((await page.textContent('#endpoint-fields dd[data-field="url"]')) === receiver.url, 'the page shows the url');
    const total = (text) => page.waitForFunction((t) => document.getElementById('delivery-total')?.textContent === t, text);
    await total('20 deliveries on page 1; more on the next page.');
    const statuses = await page.locator('#deliveries li').evaluateAll((items) => items.map((li) => li.dataset.status));
    check(statuses.length === 20 && statuses.every((s) => s === 'failed'), 'page 1: ' + statuses);
    await page.click('#deliveries-next');
    await total('1 delivery on page 2.');
    await page.click('#deliveries-previous');
    await total('20 deliveries on page 1; more on the next page.');
    await page.selectOption('#delivery-status', 'succeeded');
    await page.click('#delivery-apply');
    await total('No deliveries succeeded yet.');
    step('sees 21 failed deliveries over two pages, none succeeded');

    // One delivery by its event id: its attempt, then Retry, then its success.
    await page.selectOption('#delivery-status', 'failed');
    await page.fill('#delivery-event', 'evt_order_0');
    await page.click('#delivery-apply');
    await total('1 delivery on page 1.');
    const item = page.locator('#deliveries li[data-delivery-id]');
    check((await item.locator('.delivery-error').textContent()).includes('500'), 'the delivery says why it failed');
    await item.locator('.expand').click();
    const cells = (cls) => item.locator('.attempts .' + cls).allTextContents();
    check(JSON.stringify(await cells('http-status')) === '["500"]', 'the failed attempt: ' + (await cells('http-status')));
    check((await item.locator('.attempts td[data-label="latency"]').textContent()).endsWith(' ms'), 'the latency');
    await item.locator('.retry').click();
    await page.waitForSelector('#deliveries li[data-status="succeeded"]');
    check(JSON.stringify(await cells('http-status')) === '["500","200"]', 'the attempts after Retry: ' + (await cells('http-status')));
    check((await item.locator('.delivery-note').textContent()) === 'Retried: succeeded.', 'the retry says it succeeded');
    check((await item.locator('.retry').count()) === 0, 'a succeeded delivery has no Retry');
    check(await page.evaluate(() => document.activeElement.classList.contains('expand')), 'focus stays on the delivery');
    const got = receiver.received.filter((r) => r.id === 'evt_order_0').map((r) => r.status);
    check(JSON.stringify(got) === '[500,200]', 'the receiver got: ' + got);
    step('retries a failed delivery and sees it succeed');

    // Disable, then enable again.
    await page.click('#endpoint-toggle');
    await page.waitForFunction(() => document.querySelector('#endpoint-fields dd[data-field="disabled"]')?.textContent === 'true');
    await page.click('#endpoint-toggle');
    await page.waitForFunction(() => document.querySelector('#endpoint-fields dd[data-field="disabled"]')?.textContent === 'false');
    step('disables and enables the endpoint');

    // 360 px (attempts open) and the Tab order of the endpoint's page.
    await page.setViewportSize({ width: 360, height: 740 });
    await noSideScroll(page, base, ['#/endpoints', `#/endpoint/${id}`]);
    const first = page.locator('#deliveries li .expand').first();
    await first.click();
    check((await first.getAttribute('aria-expanded')) === 'true', 'the first delivery shows its attempts');
    const widths = await page.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
    check(widths[0] <= widths[1], 'the attempts scroll sideways at 360 px: ' + widths);
    await page.setViewportSize({ width: 1100, height: 860 });
    await page.reload();
    await page.waitForSelector('#deliveries li');
    const reached = await tabReaches(page, ['nav-endpoints', 'endpoint-toggle', 'deliveries-refresh',
      'delivery-status', 'delivery-event', 'delivery-apply', '#/event/evt_order_1', 'Show attempts (1)', 'Retry', 'deliveries-next', 'back']);
    step(`endpoint page: no sideways scroll at 360 px; Tab reaches all ${reached} controls`);

    await page.setViewportSize({ width: 1100, height: 1100 });
    await first.click();
    check((await first.getAttribute('aria-expanded')) === 'true', 'the first delivery shows its attempts');
    await page.evaluate(() => {
      if (document.activeElement) document.activeElement.blur();
      window.scrollTo(0, 0);
    });
    await page.screenshot({ path: ENDPOINTS_SCREENSHOT });
    step('saved ' + ENDPOINTS_SCREENSHOT);
    await page.context().close();
  } finally {
    receiver.server.close();
  }
}

// ---- The steps ----

async function run() {
  const { grpc, http } = await addresses(startServer('keyed', ['--api-keys', keys]));
  const base = 'http://' + http;
  step(`eventsd serving: gRPC ${grpc}, HTTP ${http}`);

  // 12 events: 6 charge.create (omise), 4 refund.create (komoju), 1 from stripe, 1 XSS.
  for (let i = 0; i < 6; i++) {
    await postEvent(base, { id: `evt_charge_${i}`, type: 'charge.create', source: 'omise', data: { object: 'charge', amount: 1000 + i } });
  }
  for (let i = 0; i < 4; i++) {
    await postEvent(base, { id: `evt_refund_${i}`, type: 'refund.create', source: 'komoju', data: { object: 'refund', amount: 500 + i } });
  }
  await postEvent(base, { id: 'evt_stripe_0', type: 'payment_intent.succeeded', source: 'stripe', data: { object: 'payment_intent' } });
  await postEvent(base, { id: 'evt_xss', type: 'xss.attempt', data: { note: XSS } });
  const stored = 12;

  const page0 = await fetch(base + '/console');
  check(page0.headers.get('content-security-policy') === "default-src 'self'", 'the console lacks its CSP');

  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
  try {
    const context = await browser.newContext({ viewport: { width: 1100, height: 860 } });
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
    const page = await context.newPage();
    const problems = [];
    watch(page, problems);

    // 1. Load the console: it asks for the key once.
    await page.goto(base + '/console');
    await page.fill('#key', ADMIN);
    await page.click('#key-form button[type=submit]');
    await page.waitForSelector('#events li');
    check(!page.url().includes(ADMIN), 'the key is in the URL');
    step('loaded, signed in');

    // 2. The stored events with their exact total, newest first.
    await page.waitForFunction((n) => document.getElementById('total')?.textContent === n + ' events', stored);
    const firstId = await page.textContent('#events li:first-child .event-id');
    check(firstId === 'evt_xss', 'newest first: expected evt_xss on top, got ' + firstId);
    check((await page.locator('#events li').count()) === stored, 'every stored event is on the first page');
    check(await page.isVisible('#nav-publish'), 'an admin key sees the publish form');
    step('sees the stored events with their total');

    // 3. Filter by type (wildcard), then by source.
    await page.fill('#type', 'charge.*');
    await page.click('#apply');
    await page.waitForFunction(() => document.getElementById('total')?.textContent === '6 events');
    const types = await page.locator('#events .type').allTextContents();
    check(types.length === 6 && types.every((t) => t === 'charge.create'), 'type filter: ' + types);
    await page.fill('#type', '');
    await page.fill('#source', 'komoju');
    await page.click('#apply');
    await page.waitForFunction(() => document.getElementById('total')?.textContent === '4 events');
    const sources = await page.locator('#events .source').allTextContents();
    check(sources.length === 4 && sources.every((s) => s === 'komoju'), 'source filter: ' + sources);
    await page.goto(base + '/console#/webhooks?source=omise');
    await page.waitForFunction(() => document.getElementById('total')?.textContent === '6 deliveries');
    check((await page.textContent('#events li:first-child time')).startsWith('received '), 'webhooks show the received time');
    step('filters by type and by source');

    // 4. Live: publish over gRPC, see it appear at the top.
    await page.goto(base + '/console#/events');
    await page.waitForFunction((n) => document.getElementById('total')?.textContent === n + ' events', stored);
    // One event commits after the page loaded and before it goes live: it must not be missed.
    await postEvent(base, { id: 'evt_between', type: 'charge.create', source: 'omise', data: { amount: 7 } });
    await page.click('#live');
    await page.waitForFunction(() => document.getElementById('live-status')?.textContent.startsWith('Live'));
    await page.waitForSelector('#events li.new .event-id:text-is("evt_between")');
    await publishOverGrpc(grpc, 'evt_live_grpc');
    await page.waitForSelector('#events li.new .event-id:text-is("evt_live_grpc")');
    check((await page.textContent('#events li:first-child .event-id')) === 'evt_live_grpc', 'the live event is on top');
    await page.waitForFunction((n) => document.getElementById('total')?.textContent === n + ' events', stored + 2);
    step('a gRPC publish appears live');

    // 5. Its detail page: every field, data formatted, copy.
    await page.click('#events li:first-child .event-id');
    await page.waitForSelector('#fields');
    const field = (name) => page.textContent(`#fields dd[data-field="${name}"]`);
    check((await field('id')) === 'evt_live_grpc', 'detail id');
    check((await field('type')) === 'charge.capture', 'detail type');
    check((await field('source')) === 'omise', 'detail source');
    check((await field('received')).endsWith('Z'), 'detail received');
    const data = await page.textContent('#data');
    check(data === JSON.stringify({ amount: 4200, object: 'charge' }, null, 2), 'formatted data: ' + data);
    await page.click('#copy');
    await page.waitForFunction(() => document.getElementById('copied')?.textContent === 'Copied.');
    check((await page.evaluate(() => navigator.clipboard.readText())) === data, 'the copy holds the data');
    step('opens the detail page and copies the data');

    // 6. XSS: markup in data is shown as text and runs nothing.
    await page.goto(base + '/console#/event/evt_xss?livemode=false');
    await page.waitForSelector('#data');
    check((await page.textContent('#data')).includes(JSON.stringify(XSS)), 'the markup is shown as text');
    check((await page.locator('main img').count()) === 0, 'no img element was made');
    await page.goto(base + '/console#/events');
    await page.waitForSelector('#events li');
    check((await page.locator('img').count()) === 0, 'no img element in the list');
    check(await page.evaluate(() => window.__xss === undefined), 'the onerror handler ran');
    step('the XSS case shows text and runs nothing');

    // 7. 360 px: no horizontal scroll on any page.
    await page.setViewportSize({ width: 360, height: 740 });
    await noSideScroll(page, base, ['#/events', '#/event/evt_xss?livemode=false', '#/webhooks?source=omise', '#/publish']);
    await page.setViewportSize({ width: 1100, height: 860 });
    step('no horizontal scroll at 360 px');

    // 8. Tab order: every control is reached with Tab and shows a visible focus.
    await page.goto(base + '/console#/events');
    await page.waitForSelector('#events li');
    const reached = await tabReaches(page, ['nav-events', 'nav-webhooks', 'nav-endpoints', 'nav-publish', 'forget',
      'type', 'livemode', 'source', 'from', 'to', 'apply', 'live']);
    step(`Tab reaches all ${reached} controls, each with a visible focus`);

    // 9. A key without the publish scope does not see the form, nor one without admin the
    // endpoints (their address shows the events instead).
    const watcher = await signIn(browser, base, WATCHER, problems);
    await watcher.waitForSelector('#events li');
    check(!(await watcher.isVisible('#nav-publish')), 'a key without publish sees the publish form');
    check(!(await watcher.isVisible('#nav-endpoints')), 'a key without admin sees the endpoints');
    await watcher.goto(base + '/console#/endpoints');
    await watcher.waitForFunction((n) => document.querySelector('main h1')?.textContent === 'Events'
      && document.getElementById('total').textContent === n + ' events', stored + 2);
    await watcher.context().close();
    step('the publish form and the endpoints are hidden from a key without the scopes');

    // 10. Without keys, plain EventSource reads the stream, and the console asks no key.
    const open = await addresses(startServer('open', []));
    const openBase = 'http://' + open.http;
    await postEvent(openBase, { id: 'evt_open_1', type: 'charge.create', data: { amount: 1 } }, null);
    const anonymous = await browser.newContext();
    const plain = await anonymous.newPage();
    await plain.goto(openBase + '/console');
    await plain.waitForSelector('#events li');
    check((await plain.textContent('#who')).startsWith('anonymous'), 'keyless: anonymous');
    check(await plain.isVisible('#nav-endpoints'), 'keyless: every caller may manage endpoints');
    const first = await plain.evaluate((limit) => new Promise((resolve, reject) => {
      const source = new EventSource('/stream/events?from_beginning=true');
      const timer = setTimeout(() => { source.close(); reject(new Error('no message in time')); }, limit);
      source.onmessage = (message) => {
        clearTimeout(timer);
        source.close();
        resolve({ id: message.lastEventId, event: JSON.parse(message.data).id });
      };
    }), LIMIT_MS);
    check(first.id === '1' && first.event === 'evt_open_1', 'EventSource got ' + JSON.stringify(first));
    await anonymous.close();
    step('without keys, plain EventSource reads the stream');

    // 11. Webhook endpoints: add one, see its failed deliveries, page, filter, retry.
    await endpointSteps(browser, problems);

    // 12. The screenshot for the README.
    await page.goto(base + '/console#/events');
    await page.waitForSelector('#events li');
    await page.evaluate(() => document.activeElement && document.activeElement.blur());
    await page.screenshot({ path: SCREENSHOT });
    step('saved ' + SCREENSHOT);
    check(problems.length === 0, 'the page reported problems:\n' + problems.join('\n'));
  } finally {
    await browser.close();
  }
}

let failed = false;
try {
  await run();
  step('all steps passed');
} catch (err) {
  failed = true;
  console.error('console-test: FAILED: ' + (err.stack || err.message));
  for (const server of servers) {
    console.error(`eventsd ${server.name} log (tail):\n` + server.log.split('\n').slice(-30).join('\n'));
  }
} finally {
  for (const { process: child } of servers) {
    child.kill('SIGTERM');
    await new Promise((resolve) => {
      const timer = setTimeout(() => { child.kill('SIGKILL'); resolve(); }, 10_000);
      child.on('exit', () => { clearTimeout(timer); resolve(); });
      if (child.exitCode !== null) { clearTimeout(timer); resolve(); }
    });
  }
  rmSync(dir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
