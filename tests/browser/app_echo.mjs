// A browser SENDs to /app/echo and gets the backend's answer (tests/examples.rs):
//   node tests/browser/app_echo.mjs --http ADDR --expect TEXT
// Chromium loads /test.html with sockjs-client 1.6.1 + stompjs 2.3.3 (the seed system's
// client code), SENDs "hello from the browser" to /app/echo with reply-to
// /user/queue/notice, and waits until a MESSAGE with the --expect body arrives there.
import { launch } from './chromium.mjs';

const args = process.argv.slice(2);
const opt = (name) => { const i = args.indexOf(`--${name}`); return i >= 0 ? args[i + 1] : undefined; };
const http = opt('http'), expect = opt('expect');
if (!http || !expect) { console.error('usage: app_echo.mjs --http ADDR --expect TEXT'); process.exit(2); }
const TIMEOUT = 15000;

const browser = await launch();
try {
  const page = await browser.newPage();
  const user = `echo-${process.pid}`;
  await page.goto(`http://${http}/test.html?${new URLSearchParams({ client: 'legacy', user })}`);
  await page.waitForFunction(() => window.testState !== 'connecting', null, { timeout: TIMEOUT });
  const state = await page.evaluate(() => window.testState);
  if (state !== 'subscribed') throw new Error(`not subscribed: ${state}`);
  const started = Date.now();
  await page.evaluate(() => window.testSend('/app/echo', 'hello from the browser',
    { 'reply-to': '/user/queue/notice', 'correlation-id': 'b-1' }));
  await page.waitForFunction((text) => window.testReceived.includes(text), expect, { timeout: TIMEOUT })
    .catch(async () => { throw new Error(`no answer '${expect}'; got ${JSON.stringify(await page.evaluate(() => window.testReceived))}`); });
  console.log(`ok app_echo: '${expect}' in ${Date.now() - started} ms`);
} finally {
  await browser.close();
}
