// A stompbox backend in Node.js: what a Spring @MessageMapping method did, for any language.
//
// Clients SEND to /app/...; the node appends each message to the tenant's Redis stream
// (`[tenants.upstream] stream = true`). This backend reads the stream with a consumer group,
// answers each message through the publish API to the sender (`receiver` = its user) at its
// `reply-to` destination, with its `correlation-id`, and acknowledges the entry once the
// answer was accepted (202). Entries it did not acknowledge (it crashed, the API refused)
// stay pending and are read again when it starts.
//
//   REDIS_URL=redis://127.0.0.1:6379 STOMPBOX_URL=http://127.0.0.1:8080 API_KEY=... \
//   TENANT=default node backend.mjs
//
// Handles /app/echo (replies "echo: BODY") and /app/upper (replies BODY in upper case).
import { createClient } from 'redis';
import { hostname } from 'node:os';

const env = (name, fallback) => process.env[name] ?? fallback;
const tenant = env('TENANT', 'default');
const stream = env('STREAM', `sb:{${tenant}}:upstream`);
const group = env('GROUP', 'backend-node');
const consumer = env('CONSUMER', `${hostname()}-${process.pid}`);
const api = env('STOMPBOX_URL', 'http://127.0.0.1:8080');
const apiKey = env('API_KEY', '');

const handlers = {
  '/app/echo': (body) => `echo: ${body}`,
  '/app/upper': (body) => body.toUpperCase(),
};

const redis = createClient({ url: env('REDIS_URL', 'redis://127.0.0.1:6379') });
redis.on('error', (e) => console.error('redis:', e.message));
await redis.connect();
try {
  await redis.sendCommand(['XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM']);
} catch (e) {
  if (!String(e.message).includes('BUSYGROUP')) throw e;
}

// An entry's fields ([name, value, name, value, ...]) as an object.
const fieldsOf = (flat) => {
  const out = {};
  for (let i = 0; i + 1 < flat.length; i += 2) out[flat[i]] = flat[i + 1];
  return out;
};

async function reply(entry) {
  const handler = handlers[entry.destination];
  const headers = JSON.parse(entry.headers || '{}');
  if (!handler || !entry.user || !headers['reply-to']?.startsWith('/user/')) return true; // nothing to answer
  const answer = await fetch(`${api}/api/v1/tenants/${tenant}/publish`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({
      receiver: entry.user,
      destination: headers['reply-to'].slice('/user'.length),
      content: handler(entry.body ?? ''),
      headers: headers['correlation-id'] ? { 'correlation-id': headers['correlation-id'] } : {},
    }),
  });
  if (answer.status !== 202) {
    console.error(`publish answered ${answer.status}: ${await answer.text()}`);
    return false;
  }
  return true;
}

console.log(`backend-node reading ${stream} as ${group}/${consumer}`);
// First what this consumer was given and never acknowledged, then new entries.
let from = '0';
for (;;) {
  const read = await redis.sendCommand([
    'XREADGROUP', 'GROUP', group, consumer, 'COUNT', '100', 'BLOCK', '2000', 'STREAMS', stream, from,
  ]);
  const entries = read?.[0]?.[1] ?? [];
  if (from === '0' && entries.length === 0) from = '>';
  let failed = false;
  for (const [id, flat] of entries) {
    if (!flat) continue; // deleted meanwhile
    const entry = fieldsOf(flat);
    if (entry.type !== 'message' || (await reply(entry))) {
      await redis.sendCommand(['XACK', stream, group, id]);
    } else {
      failed = true;
    }
  }
  if (failed) {
    // Kept pending: read again from the start of what this consumer holds, in a second.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    from = '0';
  }
}
