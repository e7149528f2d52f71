// Durable delivery as a page sees it, through Debian's Chromium (playwright-core):
//   node tests/browser/reload.mjs --publish ADDR --api-key KEY --nodes A1,...,An --pids P1,...,Pn
// For each client case (@stomp/stompjs 7.5.0 over /ws, then sockjs-client 1.6.1 + stompjs
// 2.3.3 forced onto each SockJS transport), a page on node k receives a numbered sequence that
// a backend publishes through --publish, while the page is reloaded twice mid-stream (some
// messages are published while it is away), then node k is killed (SIGKILL) and the page is
// loaded from node k+1, as a load balancer would send it there. Each fault comes a moment
// after a delivery, not during one: a frame on its way at the instant of a reload is given
// again to the next page rather than lost (see broker::cursor), so that case may repeat one. The page keeps what it received in localStorage (it survives the reloads;
// each node is its own origin, so the two parts are read and joined). Each case must end with
// the whole sequence, in order, nothing twice. The last node is never killed.
import { launch } from './chromium.mjs';

const args = process.argv.slice(2);
const opt = (name) => { const i = args.indexOf(`--${name}`); return i >= 0 ? args[i + 1] : undefined; };
const publishAddr = opt('publish'), apiKey = opt('api-key');
const nodes = (opt('nodes') || '').split(',').filter(Boolean);
const pids = (opt('pids') || '').split(',').filter(Boolean).map(Number);
const COUNT = Number(opt('count') || 60);
const EVERY_MS = 25;
// The nodes' server.delivery_confirm_ms (its default).
const CONFIRM_MS = 50;
const TIMEOUT = 15000;
const TRANSPORTS = ['websocket', 'xhr-streaming', 'xhr-polling', 'eventsource', 'iframe-htmlfile', 'jsonp-polling'];
const CASES = [{ name: '@stomp/stompjs 7.5.0 over /ws', query: { client: 'stomp7', via: 'ws' } }]
  .concat(TRANSPORTS.map((t) => ({ name: `sockjs-client 1.6.1 + stompjs 2.3.3 over ${t}`, query: { client: 'legacy', via: 'sockjs', transport: t } })));
if (!publishAddr || !apiKey || nodes.length < CASES.length + 1 || pids.length < CASES.length) {
  console.error(`usage: reload.mjs --publish ADDR --api-key KEY --nodes (${CASES.length + 1} addrs) --pids (${CASES.length} pids)`);
  process.exit(2);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function publish(receiver, content) {
  const r = await fetch(`http://${publishAddr}/api/v1/tenants/default/publish`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ receiver, destination: '/queue/notice', content }),
  });
  const text = await r.text();
  if (r.status !== 202) throw new Error(`publish answered ${r.status} ${text}`);
  const answer = JSON.parse(text);
  if (answer.stored !== true) throw new Error(`not stored: ${text}`);
}

async function subscribed(page) {
  await page.waitForFunction(() => window.testState !== 'connecting', null, { timeout: TIMEOUT });
  const state = await page.evaluate(() => window.testState);
  if (state !== 'subscribed') throw new Error(`page: ${state}`);
}

const kept = (page, key) => page.evaluate((k) => JSON.parse(localStorage.getItem(k) || '[]'), key);

async function until(condition, what) {
  const deadline = Date.now() + TIMEOUT;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

async function reloadCase(browser, k, { name, query }) {
  const user = `reload-${process.pid}-${k}`;
  const key = `rx-${user}`;
  const url = (addr) => `http://${addr}/test.html?${new URLSearchParams({ ...query, user, keep: key })}`;
  const page = await browser.newPage();
  const started = Date.now();
  let next = 0;
  const publishSome = async (count) => {
    for (let i = 0; i < count && next < COUNT; i++) {
      await publish(user, `n${next++}`);
      await sleep(EVERY_MS);
    }
  };
  try {
    await page.goto(url(nodes[k]));
    await subscribed(page);
    let onKilled = [];
    for (const step of ['reload', 'reload', 'kill']) {
      await publishSome(COUNT / 4);
      // Past the confirmation time since the last delivery (see broker::cursor): what the page
      // processed counts as delivered, so nothing may come twice.
      await sleep(CONFIRM_MS + 30);
      if (step === 'reload') {
        await page.reload({ waitUntil: 'commit' });
      } else {
        process.kill(pids[k], 'SIGKILL');
        await sleep(300);
        onKilled = await kept(page, key);
        await page.goto(url(nodes[k + 1]), { waitUntil: 'commit' });
      }
      // Published while the page is away: it gets them from the stream when it subscribes.
      await sleep(20);
      await publishSome(3);
      await subscribed(page);
    }
    await publishSome(COUNT);
    const last = `n${COUNT - 1}`;
    await page.waitForFunction((l) => window.testReceived.includes(l), last, { timeout: TIMEOUT })
      .catch(() => {});
    await sleep(300);
    const got = onKilled.concat(await kept(page, key));
    const expected = Array.from({ length: COUNT }, (_, i) => `n${i}`);
    const missing = expected.filter((m) => !got.includes(m));
    const twice = got.filter((m, i) => got.indexOf(m) !== i);
    const inOrder = got.every((m, i) => i === 0 || Number(m.slice(1)) > Number(got[i - 1].slice(1)));
    if (missing.length || twice.length || !inOrder) {
      throw new Error(`missing ${JSON.stringify(missing)}, twice ${JSON.stringify(twice)}, in order ${inOrder}; got ${JSON.stringify(got)}`);
    }
    console.log(`ok   ${name}: ${COUNT} messages through 2 reloads and a node killed (${Date.now() - started} ms)`);
    return true;
  } catch (e) {
    console.log(`FAIL ${name}: ${e.message.split('\n')[0]}`);
    return false;
  } finally {
    await page.close();
  }
}

const browser = await launch();
let failed = 0;
try {
  for (let k = 0; k < CASES.length; k++) {
    if (!(await reloadCase(browser, k, CASES[k]))) failed++;
  }
} finally {
  await browser.close();
}
console.log(failed ? `${failed} reload case(s) failed` : 'all reload cases passed');
process.exit(failed ? 1 : 0);
