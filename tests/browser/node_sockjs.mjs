// sockjs-client 1.6.1 in Node (no browser) with stompjs 2.3.3 on top, for the transports
// sockjs-client supports there: websocket (faye-websocket), xhr-streaming and xhr-polling
// (its Node http driver). Usage: node tests/browser/node_sockjs.mjs --http ADDR --api-key KEY
// Prints one line per transport; exits 1 if any failed.
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const SockJS = require('sockjs-client');
const Stomp = require('stompjs').Stomp || require('stompjs');

const args = process.argv.slice(2);
const opt = (name) => { const i = args.indexOf(`--${name}`); return i >= 0 ? args[i + 1] : undefined; };
const http = opt('http'), apiKey = opt('api-key');
if (!http || !apiKey) { console.error('usage: node_sockjs.mjs --http ADDR --api-key KEY'); process.exit(2); }
const TIMEOUT = 15000;

function once(transport) {
  const user = `ns-${process.pid}-${transport}`;
  const content = `hello node ${transport} ${Date.now()}`;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('timed out')), TIMEOUT);
    const client = Stomp.over(new SockJS(`http://${http}/sockjs`, null, { transports: [transport] }));
    client.debug = null;
    client.connect({ userid: user }, async () => {
      client.subscribe('/user/queue/notice', (m) => {
        if (m.body === content) {
          clearTimeout(timer);
          const used = client.ws && client.ws._transport && client.ws._transport.transportName;
          client.disconnect(() => {});
          resolve(used);
        }
      });
      await new Promise((r) => setTimeout(r, 200));
      try {
        const r = await fetch(`http://${http}/api/v1/tenants/default/publish`, {
          method: 'POST',
          headers: { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' },
          body: JSON.stringify({ receiver: user, destination: '/queue/notice', content }),
        });
        if (r.status !== 202) throw new Error(`publish answered ${r.status} ${await r.text()}`);
      } catch (e) { clearTimeout(timer); reject(e); }
    }, (e) => { clearTimeout(timer); reject(new Error(`STOMP error: ${e && e.body ? e.body : e}`)); });
  });
}

let failed = 0;
for (const t of ['websocket', 'xhr-streaming', 'xhr-polling']) {
  const started = Date.now();
  try {
    const used = await once(t);
    console.log(`ok   node sockjs-client 1.6.1 + stompjs 2.3.3 over ${t}${used && used !== t ? ` (used ${used})` : ''} (${Date.now() - started} ms)`);
  } catch (e) {
    failed++;
    console.log(`FAIL node sockjs-client 1.6.1 + stompjs 2.3.3 over ${t}: ${e.message}`);
  }
}
console.log(failed ? `${failed} node SockJS case(s) failed` : 'all node SockJS cases passed');
process.exit(failed ? 1 : 0);
