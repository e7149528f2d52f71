// Browser checks of stompbox through Debian's Chromium (playwright-core, no downloaded browser):
//   node tests/browser/run.mjs --http ADDR --api-key KEY [--http2 ADDR] [--only ws]
// Cases: sockjs-client 1.6.1 + stompjs 2.3.3, @stomp/stompjs 7.5.0 over SockJS (each SockJS
// transport forced in turn), @stomp/stompjs over /ws; with --http2, a page on node A receives
// what is published on node B. Prints one line per case; exits 1 if any failed. Writes a
// screenshot of the demo page after a message arrived to target/browser/demo.png.
import { launch } from './chromium.mjs';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const args = process.argv.slice(2);
const opt = (name) => { const i = args.indexOf(`--${name}`); return i >= 0 ? args[i + 1] : undefined; };
const http = opt('http'), apiKey = opt('api-key'), http2 = opt('http2'), only = opt('only');
if (!http || !apiKey) { console.error('usage: run.mjs --http ADDR --api-key KEY [--http2 ADDR]'); process.exit(2); }
const TRANSPORTS = ['websocket', 'xhr-streaming', 'xhr-polling', 'eventsource', 'iframe-htmlfile', 'jsonp-polling'];
const TIMEOUT = 15000;

async function publish(addr, receiver, content) {
  const r = await fetch(`http://${addr}/api/v1/tenants/default/publish`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ receiver, destination: '/queue/notice', content }),
  });
  const text = await r.text();
  if (r.status !== 202) throw new Error(`publish answered ${r.status} ${text}`);
  return JSON.parse(text);
}

async function waitFor(page, fn, arg, what) {
  try { await page.waitForFunction(fn, arg, { timeout: TIMEOUT }); }
  catch (e) { throw new Error(`${what} (state: ${await page.evaluate(() => window.testState).catch(() => '?')})`); }
}

let n = 0;
async function testCase(browser, name, query, pageAddr = http, publishAddr = http) {
  const user = `bt-${process.pid}-${++n}`;
  const content = `hello ${name} ${Date.now()}`;
  const page = await browser.newPage();
  const started = Date.now();
  try {
    await page.goto(`http://${pageAddr}/test.html?${new URLSearchParams({ ...query, user })}`);
    await waitFor(page, () => window.testState !== 'connecting', null, 'no CONNECTED');
    const state = await page.evaluate(() => window.testState);
    if (state !== 'subscribed') throw new Error(state);
    // The SUBSCRIBE is sent; give the broker a moment to register it before publishing.
    await page.waitForTimeout(200);
    await publish(publishAddr, user, content);
    await waitFor(page, (c) => window.testReceived.includes(c), content, 'message not received');
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
    return true;
  } catch (e) {
    console.log(`FAIL ${name}: ${e.message.split('\n')[0]}`);
    return false;
  } finally {
    await page.close();
  }
}

async function demoScreenshot(browser) {
  const page = await browser.newPage({ viewport: { width: 900, height: 600 } });
  const started = Date.now();
  try {
    await page.goto(`http://${http}/`);
    if (await page.isVisible('#missing')) throw new Error('the demo page says the libraries are missing');
    const user = `demo-${process.pid}`;
    await page.fill('#userid', user);
    await page.click('#connect');
    await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('connected'), null, { timeout: TIMEOUT });
    await page.waitForTimeout(200);
    await page.fill('#apikey', apiKey);
    await page.fill('#receiver', user);
    await page.fill('#content', 'hello from the demo form');
    await page.click('#publish button');
    await page.waitForFunction(() => window.demoReceived.length > 0, null, { timeout: TIMEOUT });
    const out = join(ROOT, 'target', 'browser', 'demo.png');
    mkdirSync(dirname(out), { recursive: true });
    await page.screenshot({ path: out });
    console.log(`ok   demo page (${Date.now() - started} ms, screenshot ${out})`);
    return true;
  } catch (e) {
    console.log(`FAIL demo page: ${e.message.split('\n')[0]}`);
    return false;
  } finally {
    await page.close();
  }
}

const browser = await launch();
console.log(`chromium ${browser.version()}`);
let failed = 0;
const run = async (p) => { if (!(await p)) failed++; };
try {
  await run(testCase(browser, '@stomp/stompjs 7.5.0 over /ws', { client: 'stomp7', via: 'ws' }));
  if (only !== 'ws') {
    for (const t of TRANSPORTS) {
      await run(testCase(browser, `sockjs-client 1.6.1 + stompjs 2.3.3 over ${t}`, { client: 'legacy', via: 'sockjs', transport: t }));
      await run(testCase(browser, `@stomp/stompjs 7.5.0 over SockJS ${t}`, { client: 'stomp7', via: 'sockjs', transport: t }));
    }
    await run(demoScreenshot(browser));
    if (http2) {
      await run(testCase(browser, 'cross-node: page on A over /ws, publish on B', { client: 'stomp7', via: 'ws' }, http, http2));
      await run(testCase(browser, 'cross-node: page on A over SockJS, publish on B', { client: 'legacy', via: 'sockjs' }, http, http2));
    }
  }
} finally {
  await browser.close();
}
console.log(failed ? `${failed} browser case(s) failed` : 'all browser cases passed');
process.exit(failed ? 1 : 0);
