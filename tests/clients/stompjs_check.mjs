// Checks a running stompbox node with @stomp/stompjs (7.5.0) over WebSocket, in Node with `ws`.
//
//   node stompjs_check.mjs --http 127.0.0.1:PORT --stomp 127.0.0.1:PORT --api-key KEY \
//        [--expect-heartbeat 1000,1000] [--only NAME]
//
// Each scenario prints `ok <name>` or `FAIL <name>: why`; the exit code is 1 when any failed.
// Every wait is bounded (WAIT ms), and a watchdog ends the run after --deadline seconds.
// --expect-heartbeat is the server's heart-beat offer (its configured heartbeat_ms): the
// heart-beat scenario then checks the CONNECTED header against it, and when the offer is at
// most 1000 ms each way, that heart-beats really flow in both directions.

import { Client, Versions } from '@stomp/stompjs';
import WebSocket from 'ws';
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import { readFileSync } from 'node:fs';

// Node 20 has no global WebSocket; stompjs creates `new WebSocket(brokerURL, protocols)`.
globalThis.WebSocket = WebSocket;

const WAIT = 5000; // longest wait for something that should happen
const QUIET = 300; // how long to watch for something that should not happen

const { values: args } = parseArgs({
  options: {
    http: { type: 'string' },
    stomp: { type: 'string' },
    'api-key': { type: 'string' },
    'expect-heartbeat': { type: 'string' },
    only: { type: 'string' },
    deadline: { type: 'string', default: '120' },
  },
});
for (const required of ['http', 'stomp', 'api-key']) {
  if (!args[required]) {
    console.error(`usage: node stompjs_check.mjs --http ADDR --stomp ADDR --api-key KEY (missing --${required})`);
    process.exit(2);
  }
}

const watchdog = setTimeout(() => {
  console.log(`FAIL watchdog: the run took longer than ${args.deadline}s`);
  process.exit(3);
}, Number(args.deadline) * 1000);
watchdog.unref();

class CheckFailed extends Error {}

function check(condition, message) {
  if (!condition) throw new CheckFailed(message);
}

const uniq = (prefix) => `${prefix}-${randomUUID().slice(0, 8)}`;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new CheckFailed(`no ${what} within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Waits until `predicate()` holds, polling; fails with `what` after `ms`. */
async function until(predicate, what, ms = WAIT) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new CheckFailed(`no ${what} within ${ms} ms`);
    await sleep(10);
  }
}

// --- clients ---------------------------------------------------------------------------------

let live = [];

/** A queue of MESSAGE frames from one subscription. */
class Inbox {
  constructor(name) {
    this.name = name;
    this.frames = [];
    this.cursor = 0;
  }

  push(frame) {
    this.frames.push(frame);
  }

  describe() {
    return JSON.stringify(this.frames.map((m) => [m.headers.destination, m.body]));
  }

  async next(what = 'MESSAGE') {
    await until(() => this.frames.length > this.cursor, `${what} at ${this.name} (got ${this.describe()})`);
    return this.frames[this.cursor++];
  }

  pending() {
    return this.frames.length > this.cursor;
  }

  async none(why, ms = QUIET) {
    await sleep(ms);
    const extra = this.frames.slice(this.cursor);
    check(
      extra.length === 0,
      `${this.name}: expected no MESSAGE (${why}), got ${JSON.stringify(extra.map((m) => [m.headers, m.body]))}`,
    );
  }
}

/** Connects one stompjs Client; resolves once CONNECTED arrived. */
async function connect(name, { user, path = '/ws', versions, heartbeat, headers = {} } = {}) {
  const log = [];
  const state = { name, log, errors: [], closes: [], connected: null, pings: 0, pongs: 0 };
  const connectHeaders = { ...headers };
  if (user !== undefined) connectHeaders.userid = user;
  const client = new Client({
    brokerURL: `ws://${args.http}${path}`,
    connectHeaders,
    reconnectDelay: 0, // no automatic reconnection: every close is seen by the checks
    heartbeatIncoming: heartbeat ?? 0,
    heartbeatOutgoing: heartbeat ?? 0,
    debug: (line) => {
      if (line === '>>> PING') state.pings++;
      if (line === '<<< PONG') state.pongs++;
      log.push(`${new Date().toISOString()} ${line}`);
      if (log.length > 200) log.shift();
    },
  });
  if (versions) client.stompVersions = new Versions(versions);
  const connected = new Promise((resolve, reject) => {
    client.onConnect = (frame) => {
      state.connected = frame;
      resolve(frame);
    };
    const failed = (why) => reject(new CheckFailed(`${name}: ${why} before CONNECTED; log:\n${log.join('\n')}`));
    client.onStompError = (frame) => {
      state.errors.push(frame);
      failed(`ERROR ${JSON.stringify(frame.headers)} ${frame.body}`);
    };
    client.onWebSocketClose = (event) => {
      state.closes.push({ code: event.code, reason: String(event.reason ?? '') });
      failed(`WebSocket close ${event.code}`);
    };
  });
  live.push(client);
  client.activate();
  await withTimeout(connected, WAIT, `CONNECTED for ${name}`);
  // From now on errors and closes are recorded for the checks to inspect.
  client.onStompError = (frame) => state.errors.push(frame);
  client.onWebSocketClose = (event) => state.closes.push({ code: event.code, reason: String(event.reason ?? '') });
  return { client, state, name };
}

/** Resolves when the RECEIPT `id` arrives. Call before sending the frame that asks for it. */
function receipt(c, id) {
  return withTimeout(
    new Promise((resolve) => c.client.watchForReceipt(id, resolve)),
    WAIT,
    `RECEIPT ${id} at ${c.name}`,
  );
}

/** SUBSCRIBE with a receipt, so the subscription is in place when this returns. */
async function subscribe(c, destination, headers = {}) {
  const inbox = new Inbox(`${c.name} ${destination}`);
  const id = uniq('sub');
  const got = receipt(c, id);
  const sub = c.client.subscribe(destination, (m) => inbox.push(m), { ...headers, receipt: id });
  await got;
  inbox.sub = sub;
  return inbox;
}

/** A frame with a receipt: once it is answered, every frame sent before it was handled. */
async function barrier(c) {
  await send(c, `/topic/barrier-${run}`, '');
}

/** JSON with object keys sorted, for comparing values. */
function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value && typeof value === 'object') {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/** SEND with a receipt. */
async function send(c, destination, body, headers = {}, extra = {}) {
  const id = uniq('send');
  const got = receipt(c, id);
  c.client.publish({ destination, body, headers: { ...headers, receipt: id }, ...extra });
  await got;
}

async function disconnect(c) {
  await withTimeout(c.client.deactivate(), WAIT, `DISCONNECT of ${c.name}`);
  live = live.filter((x) => x !== c.client);
}

function expectMessage(frame, c, destination, body, headers = {}) {
  const where = `${c.name}`;
  check(
    frame.headers.destination === destination,
    `${where}: destination ${frame.headers.destination}, expected ${destination} (${JSON.stringify(frame.headers)})`,
  );
  check(frame.body === body, `${where}: body ${JSON.stringify(frame.body)}, expected ${JSON.stringify(body)}`);
  for (const [k, v] of Object.entries(headers)) {
    check(
      frame.headers[k] === v,
      `${where}: header ${k}=${JSON.stringify(frame.headers[k])}, expected ${JSON.stringify(v)} (${JSON.stringify(frame.headers)})`,
    );
  }
  check(frame.headers['message-id'], `${where}: MESSAGE without message-id`);
  check(frame.headers.subscription, `${where}: MESSAGE without subscription`);
  return frame;
}

async function publishApi(payload) {
  const response = await fetch(`http://${args.http}/api/v1/tenants/default/publish`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${args['api-key']}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(payload),
    signal: AbortSignal.timeout(WAIT),
  });
  const text = await response.text();
  check(response.status === 202, `publish ${JSON.stringify(payload)}: HTTP ${response.status} ${text}, expected 202`);
  const answer = JSON.parse(text);
  check(answer.id !== undefined, `publish: answer has no id: ${text}`);
  return answer;
}

// --- scenarios -------------------------------------------------------------------------------

const run = uniq('js');

const scenarios = {
  async connect() {
    const user = `alice-${run}`;
    const c = await connect('alice', { user });
    const h = c.state.connected.headers;
    check(h['user-name'] === user, `CONNECTED user-name ${h['user-name']}, expected ${user} (${JSON.stringify(h)})`);
    check(h.version === '1.2', `CONNECTED version ${h.version}, expected 1.2`);
    check(c.client.webSocket.protocol === 'v12.stomp', `subprotocol ${c.client.webSocket.protocol}, expected v12.stomp`);
    check(String(h.server).startsWith('stompbox/'), `CONNECTED server ${h.server}`);
    await disconnect(c);
    check(c.state.errors.length === 0, `ERROR on DISCONNECT: ${c.state.errors.map((e) => e.body)}`);

    // The tenant path, and STOMP 1.1 chosen through the subprotocol list.
    const old = await connect('v11', { user, path: '/ws/default', versions: ['1.1'] });
    check(old.state.connected.headers.version === '1.1', `1.1 client: CONNECTED ${JSON.stringify(old.state.connected.headers)}`);
    check(old.client.webSocket.protocol === 'v11.stomp', `1.1 client: subprotocol ${old.client.webSocket.protocol}`);
    check(old.state.connected.headers['user-name'] === user, `1.1 client: user-name`);
    await disconnect(old);
  },

  async 'user-via-api'() {
    const alice = await connect('alice', { user: `alice-${run}` });
    const carol = await connect('carol', { user: `carol-${run}` });
    const aliceIn = await subscribe(alice, '/user/queue/notice');
    const carolIn = await subscribe(carol, '/user/queue/notice');
    let answer = await publishApi({
      receiver: `alice-${run}`,
      destination: '/queue/notice',
      content: 'hi',
      headers: { 'x-k': 'v' },
    });
    check(answer.delivered === 1, `publish to alice: ${JSON.stringify(answer)}, expected delivered 1`);
    expectMessage(await aliceIn.next(), alice, '/user/queue/notice', 'hi', { 'content-type': 'text/plain', 'x-k': 'v' });

    const content = { n: 1, s: 'json ünïcode ✓', list: [1, 2] };
    answer = await publishApi({ receiver: `alice-${run}`, destination: '/queue/notice', content });
    check(answer.delivered === 1, `publish JSON to alice: ${JSON.stringify(answer)}`);
    const json = await aliceIn.next('JSON MESSAGE');
    check(json.headers['content-type'] === 'application/json', `JSON content-type ${json.headers['content-type']}`);
    // Key order is not significant in JSON (the server may serialize keys sorted).
    check(canonical(JSON.parse(json.body)) === canonical(content), `JSON body ${json.body}, expected ${JSON.stringify(content)}`);

    await publishApi({ receiver: `carol-${run}`, destination: '/queue/notice', content: 'for carol' });
    expectMessage(await carolIn.next("carol's own message (alice's must not reach her)"), carol, '/user/queue/notice', 'for carol');
    await carolIn.none('nothing else was addressed to carol');
    await aliceIn.none('only two messages were addressed to alice');
    await disconnect(alice);
    await disconnect(carol);
  },

  async 'topic-broadcast'() {
    const topic = `/topic/news-${run}`;
    const a = await connect('a', { user: `a-${run}` });
    const b = await connect('b', { user: `b-${run}` });
    const aIn = await subscribe(a, topic);
    const bIn = await subscribe(b, topic);
    const answer = await publishApi({ destination: topic, content: 'from the API', headers: { 'x-k': 'v' } });
    check(answer.delivered === 2, `topic publish: ${JSON.stringify(answer)}, expected delivered 2`);
    expectMessage(await aIn.next(), a, topic, 'from the API', { 'x-k': 'v' });
    expectMessage(await bIn.next(), b, topic, 'from the API', { 'x-k': 'v' });
    await send(b, topic, 'from b', { 'x-from': 'b' });
    expectMessage(await aIn.next(), a, topic, 'from b', { 'x-from': 'b' });
    expectMessage(await bIn.next(), b, topic, 'from b', { 'x-from': 'b' });
    await disconnect(a);
    await disconnect(b);
  },

  async 'binary-body'() {
    // NUL and invalid UTF-8 inside the body: content-length framing, binary WebSocket messages.
    const topic = `/topic/bin-${run}`;
    const c = await connect('bin', { user: `bin-${run}` });
    const inbox = await subscribe(c, topic);
    const bytes = new Uint8Array([0, 1, 2, 0xff, 0xfe, 0x00, 0xc3, 0x28, 10, 0]);
    await send(c, topic, undefined, { 'content-type': 'application/octet-stream' }, { binaryBody: bytes });
    const m = await inbox.next('binary MESSAGE');
    check(
      Buffer.from(m.binaryBody).equals(Buffer.from(bytes)),
      `binary body ${Buffer.from(m.binaryBody).toString('hex')}, expected ${Buffer.from(bytes).toString('hex')}`,
    );
    check(m.headers['content-length'] === String(bytes.length), `content-length ${m.headers['content-length']}`);
    await disconnect(c);
  },

  async 'send-to-user'() {
    const bob = `bob-${run}`;
    const alice = await connect('alice', { user: `alice-${run}` });
    const bob1 = await connect('bob#1', { user: bob });
    const bob2 = await connect('bob#2', { user: bob });
    const inboxes = [];
    for (const c of [alice, bob1, bob2]) inboxes.push(await subscribe(c, '/user/queue/notice'));
    // A colon, a backslash and a newline in a value exercise 1.2 header escaping both ways. Not
    // a backslash followed by c, n or r: stompjs 7.5.0 unescapes with successive replace()
    // calls, so it reads the correct escape of backslash-then-c back as backslash-then-colon
    // (a client-side bug; stomp_py_check.py covers that case).
    const odd = 'a:b\\d\ne';
    await send(alice, `/user/${bob}/queue/notice`, 'hello bob', { 'x-k': 'v', 'x-odd': odd });
    for (const [i, c] of [[1, bob1], [2, bob2]]) {
      expectMessage(await inboxes[i].next(), c, '/user/queue/notice', 'hello bob', { 'x-k': 'v', 'x-odd': odd });
    }
    await send(alice, `/user/alice-${run}/queue/notice`, 'note to self');
    expectMessage(await inboxes[0].next("alice's own message (bob's must not reach her)"), alice, '/user/queue/notice', 'note to self');
    for (const inbox of inboxes) await inbox.none('one message each');
    for (const c of [alice, bob1, bob2]) await disconnect(c);
  },

  async 'queue-round-robin'() {
    // Competing consumers: each message goes to exactly one, taking turns.
    const q = `/queue/rr-${run}`;
    const a = await connect('a', { user: `a-${run}` });
    const b = await connect('b', { user: `b-${run}` });
    const aIn = await subscribe(a, q);
    const bIn = await subscribe(b, q);
    for (const n of [1, 2, 3, 4]) {
      const answer = await publishApi({ destination: q, content: `job ${n}` });
      check(answer.delivered === 1, `queue publish: ${JSON.stringify(answer)}, expected delivered 1`);
    }
    await until(() => aIn.frames.length + bIn.frames.length >= 4, `4 jobs (a ${aIn.describe()}, b ${bIn.describe()})`);
    await sleep(QUIET);
    const bodies = [...aIn.frames, ...bIn.frames].map((m) => m.body).sort();
    check(JSON.stringify(bodies) === JSON.stringify(['job 1', 'job 2', 'job 3', 'job 4']), `each job once: ${JSON.stringify(bodies)}`);
    check(aIn.frames.length === 2 && bIn.frames.length === 2, `not round-robin: a got ${aIn.describe()}, b got ${bIn.describe()}`);
    await disconnect(a);
    await disconnect(b);
  },

  async 'queue-client-ack'() {
    // `client` mode is cumulative: acking m2 settles m1 and m2. m3, unacked, goes to the other
    // consumer when this one's connection ends without DISCONNECT.
    const q = `/queue/cack-${run}`;
    const a = await connect('a', { user: `a-${run}` });
    const p = await connect('producer', { user: `p-${run}` });
    const aIn = await subscribe(a, q, { ack: 'client' });
    for (const n of [1, 2, 3]) await send(p, q, `job ${n}`);
    const got = [];
    for (const n of [1, 2, 3]) got.push(expectMessage(await aIn.next(), a, q, `job ${n}`));
    check(got[1].headers.ack, `1.2 MESSAGE in client mode without ack header ${JSON.stringify(got[1].headers)}`);
    const rid = uniq('ack');
    const acked = receipt(a, rid);
    got[1].ack({ receipt: rid });
    await acked;
    const b = await connect('b', { user: `b-${run}` });
    const bIn = await subscribe(b, q);
    a.client.forceDisconnect(); // closes the WebSocket without a STOMP DISCONNECT
    await until(() => a.state.closes.length > 0, 'WebSocket close of a');
    expectMessage(await bIn.next('job 3, redelivered'), b, q, 'job 3');
    await bIn.none('jobs 1 and 2 were acknowledged (cumulatively)');
    await withTimeout(a.client.deactivate(), WAIT, 'deactivate');
    await disconnect(b);
    await disconnect(p);
  },

  async 'queue-nack'() {
    const q = `/queue/nack-${run}`;
    const a = await connect('a', { user: `a-${run}` });
    const b = await connect('b', { user: `b-${run}` });
    const aIn = await subscribe(a, q, { ack: 'client-individual' });
    await send(b, q, 'job');
    const m = expectMessage(await aIn.next(), a, q, 'job');
    const bIn = await subscribe(b, q, { ack: 'client-individual' });
    const rid = uniq('nack');
    const nacked = receipt(a, rid);
    m.nack({ receipt: rid });
    await nacked;
    const again = expectMessage(await bIn.next('the NACKed message at the other consumer'), b, q, 'job');
    const rid2 = uniq('ack');
    const acked = receipt(b, rid2);
    again.ack({ receipt: rid2 });
    await acked;
    await aIn.none('b acknowledged it');
    await bIn.none('b acknowledged it');
    await disconnect(a);
    await disconnect(b);
  },

  async transaction() {
    const topic = `/topic/tx-${run}`;
    const sub = await connect('subscriber', { user: `s-${run}` });
    const pub = await connect('publisher', { user: `p-${run}` });
    const inbox = await subscribe(sub, topic);
    let tx = pub.client.begin();
    await send(pub, topic, 'tx 1', { transaction: tx.id });
    await send(pub, topic, 'tx 2', { transaction: tx.id });
    await inbox.none('not committed yet');
    tx.commit(); // stompjs sends COMMIT without extra headers, so no receipt here
    expectMessage(await inbox.next(), sub, topic, 'tx 1');
    expectMessage(await inbox.next(), sub, topic, 'tx 2');

    tx = pub.client.begin();
    await send(pub, topic, 'aborted', { transaction: tx.id });
    tx.abort();
    await send(pub, topic, 'after abort'); // frames are handled in order: ABORT came first
    expectMessage(await inbox.next('the message after ABORT (the aborted one must not arrive)'), sub, topic, 'after abort');
    await inbox.none('the aborted message never arrives');
    await disconnect(sub);
    await disconnect(pub);
  },

  async 'transactional-ack'() {
    // An ACK inside an aborted transaction never happened: the message is still unacknowledged
    // and is redelivered when its consumer goes away. One inside a committed one holds.
    const q = `/queue/txack-${run}`;
    const a = await connect('a', { user: `a-${run}` });
    const p = await connect('producer', { user: `p-${run}` });
    const aIn = await subscribe(a, q, { ack: 'client-individual' });
    await send(p, q, 'kept');
    await send(p, q, 'dropped');
    const kept = expectMessage(await aIn.next(), a, q, 'kept');
    const dropped = expectMessage(await aIn.next(), a, q, 'dropped');
    let tx = a.client.begin();
    kept.ack({ transaction: tx.id });
    tx.commit();
    tx = a.client.begin();
    dropped.ack({ transaction: tx.id });
    tx.abort();
    await barrier(a); // COMMIT and ABORT carry no receipt in stompjs
    const b = await connect('b', { user: `b-${run}` });
    const bIn = await subscribe(b, q);
    a.client.forceDisconnect();
    await until(() => a.state.closes.length > 0, 'WebSocket close of a');
    expectMessage(await bIn.next("'dropped' (its ACK was aborted), redelivered"), b, q, 'dropped');
    await bIn.none("'kept' was acknowledged in a committed transaction");
    await withTimeout(a.client.deactivate(), WAIT, 'deactivate');
    await disconnect(b);
    await disconnect(p);
  },

  async receipts() {
    const topic = `/topic/receipts-${run}`;
    const c = await connect('c', { user: `c-${run}` });
    const inbox = await subscribe(c, topic); // SUBSCRIBE receipt
    await send(c, topic, 'one'); // SEND receipt
    expectMessage(await inbox.next(), c, topic, 'one');
    const rid = uniq('unsub');
    const done = receipt(c, rid);
    inbox.sub.unsubscribe({ receipt: rid });
    await done;
    const answer = await publishApi({ destination: topic, content: 'nobody listens' });
    check(answer.delivered === 0, `after UNSUBSCRIBE: ${JSON.stringify(answer)}, expected delivered 0`);
    await inbox.none('unsubscribed');
    // deactivate() sends DISCONNECT with a receipt and closes once it arrives.
    const disconnected = new Promise((resolve) => {
      c.client.onDisconnect = resolve;
    });
    await disconnect(c);
    const frame = await withTimeout(disconnected, WAIT, 'onDisconnect (RECEIPT of DISCONNECT)');
    check(frame.command === 'RECEIPT', `DISCONNECT answered with ${frame.command}`);
  },

  async heartbeat() {
    // Both sides promise heart-beats every 1000 ms; then 3 s with no frames at all.
    const c = await connect('hb', { user: `hb-${run}`, heartbeat: 1000 });
    const offer = c.state.connected.headers['heart-beat'];
    check(/^\d+,\d+$/.test(offer ?? ''), `CONNECTED heart-beat ${offer}`);
    const [sx, sy] = offer.split(',').map(Number);
    if (args['expect-heartbeat']) {
      check(offer === args['expect-heartbeat'], `CONNECTED heart-beat ${offer}, expected ${args['expect-heartbeat']}`);
    }
    const topic = `/topic/hb-${run}`;
    const inbox = await subscribe(c, topic);
    const pongs = c.state.pongs;
    const pings = c.state.pings;
    await sleep(3000);
    check(c.client.connected, `disconnected during 3 s without traffic; closes ${JSON.stringify(c.state.closes)}`);
    check(c.state.closes.length === 0 && c.state.errors.length === 0, `closed or ERROR: ${JSON.stringify(c.state.closes)} ${c.state.errors.map((e) => e.body)}`);
    // Negotiated: the server beats every max(sx, 1000) ms and wants one every max(sy, 1000).
    if (sx > 0 && sx <= 1000) {
      check(c.state.pongs - pongs >= 2, `only ${c.state.pongs - pongs} heart-beats from the server in 3 s (offer ${offer})`);
    }
    if (sy > 0 && sy <= 1000) {
      check(c.state.pings - pings >= 2, `the client sent only ${c.state.pings - pings} heart-beats in 3 s (offer ${offer})`);
    }
    await send(c, topic, 'still here');
    expectMessage(await inbox.next(), c, topic, 'still here');
    await disconnect(c);
    console.log(`   heart-beat offer ${offer}; in 3 s: ${c.state.pongs - pongs} from the server, ${c.state.pings - pings} to it`);
  },

  async error() {
    const c = await connect('bad', { user: `e-${run}` });
    c.client.publish({ destination: '/nowhere/x', body: 'lost', headers: { receipt: 'bad-1' } });
    await until(() => c.state.errors.length > 0, `ERROR for SEND to /nowhere/x at ${c.name}`);
    const err = c.state.errors[0];
    check(err.headers['receipt-id'] === 'bad-1', `ERROR receipt-id ${err.headers['receipt-id']} (${JSON.stringify(err.headers)})`);
    check(err.headers.message, `ERROR without message header`);
    check((err.body + err.headers.message).includes('/nowhere/x'), `ERROR does not name the destination: ${err.body}`);
    await until(() => c.state.closes.length > 0, 'WebSocket close after ERROR');
    await withTimeout(c.client.deactivate(), WAIT, 'deactivate');
    live = live.filter((x) => x !== c.client);
  },
};

// --- runner ----------------------------------------------------------------------------------

async function main() {
  const pkg = JSON.parse(readFileSync(new URL('./node_modules/@stomp/stompjs/package.json', import.meta.url)));
  console.log(`@stomp/stompjs ${pkg.version}, ws, node ${process.version}`);
  let passed = 0;
  const failed = [];
  const started = Date.now();
  for (const [name, fn] of Object.entries(scenarios)) {
    if (args.only && !name.includes(args.only)) continue;
    const t0 = Date.now();
    try {
      await fn();
      passed++;
      console.log(`ok ${name} (${((Date.now() - t0) / 1000).toFixed(2)}s)`);
    } catch (e) {
      failed.push(name);
      const why = e instanceof CheckFailed ? e.message : (e?.stack ?? String(e));
      console.log(`FAIL ${name}: ${why}`);
    } finally {
      for (const client of live) {
        try {
          await withTimeout(client.deactivate({ force: true }), 1000, 'forced close');
        } catch {
          // already closed, or the socket is gone
        }
      }
      live = [];
    }
  }
  console.log(`stompjs checks: ${passed} ok, ${failed.length} failed in ${((Date.now() - started) / 1000).toFixed(1)}s`);
  if (failed.length) console.log(`failed: ${failed.join(', ')}`);
  process.exit(failed.length || passed === 0 ? 1 : 0);
}

main().catch((e) => {
  console.log(`FAIL runner: ${e?.stack ?? e}`);
  process.exit(1);
});
