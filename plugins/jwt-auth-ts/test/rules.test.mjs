// The plugin's decisions, in Node (`npm test`), before they are built into a component. The
// behaviour through the node's sandbox is checked by `stompbox plugin test` with
// ../jwt-auth/cases.toml, the cases the Rust jwt-auth answers too.

import assert from 'node:assert/strict';
import { createHash, createHmac } from 'node:crypto';
import { test } from 'node:test';

import { sha256 } from '../dist/sha256.js';
import { base64url, verify } from '../dist/jwt.js';
import * as rules from '../dist/rules.js';

const SECRET = 's3cret';
const NOW_MS = 1_700_000_000_000;

const b64 = (text) => Buffer.from(text).toString('base64url');
function token(claims, secret = SECRET, header = { alg: 'HS256', typ: 'JWT' }) {
  const signingInput = `${b64(JSON.stringify(header))}.${b64(JSON.stringify(claims))}`;
  const signature = createHmac('sha256', secret).update(signingInput).digest('base64url');
  return `${signingInput}.${signature}`;
}

test('sha256 matches the standard vectors', () => {
  const hex = (bytes) => Buffer.from(bytes).toString('hex');
  assert.equal(hex(sha256(new Uint8Array())), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  assert.equal(hex(sha256(new TextEncoder().encode('abc'))), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  for (const length of [55, 56, 64, 1000]) {
    const bytes = new TextEncoder().encode('a'.repeat(length));
    assert.equal(hex(sha256(bytes)), createHash('sha256').update(bytes).digest('hex'), `${length}`);
  }
});

test('base64url tolerates padding and refuses spare bits', () => {
  assert.deepEqual(Array.from(base64url('YQ')), [0x61]);
  assert.deepEqual(Array.from(base64url('YQ==')), [0x61]);
  assert.equal(base64url('YR'), null);
  assert.equal(base64url('Y+'), null);
  assert.equal(base64url('Y'), null);
});

test('a token signed elsewhere verifies', () => {
  const t = token({ sub: 'alice', exp: 1_700_000_060, scope: 'read' });
  assert.equal(verify(t, SECRET, NOW_MS).sub, 'alice');
  assert.throws(() => verify(t, 'other', NOW_MS), /bad token signature/);
  assert.throws(() => verify(token({ sub: 'a', exp: 1 }), SECRET, NOW_MS), /token expired at 1 \(unix seconds\)/);
  assert.throws(() => verify(token({ sub: 'a' }), SECRET, NOW_MS), /no 'exp' claim/);
  assert.throws(() => verify(token({ sub: 'a', exp: 2e9 }, SECRET, { alg: 'none' }), SECRET, NOW_MS), /'none' is not accepted/);
  assert.throws(() => verify(token({ sub: 'a', exp: 2e9, nbf: 1.9e9 }), SECRET, NOW_MS), /not valid before 1900000000/);
});

test('authenticate names the user and its claims, and refuses a forged userid', () => {
  const t = token({ sub: 'alice', exp: 1_700_000_060, scope: 'read', auth: 'admin' });
  const id = rules.authenticate([['userid', 'alice'], ['token', `Bearer ${t}`]], SECRET, NOW_MS);
  assert.equal(id.user, 'alice');
  assert.deepEqual(id.attributes, [['auth', 'jwt'], ['scope', 'read']]);
  assert.throws(() => rules.authenticate([['userid', 'b\nob'], ['token', t]], SECRET, NOW_MS), (e) => e === "jwt-auth: userid 'b?ob' does not match the token's subject");
  assert.throws(() => rules.authenticate([], undefined, NOW_MS), (e) => e === 'jwt-auth: tenant setting jwt_secret is not set');
});

test('authorize keeps users to their own destinations', () => {
  assert.doesNotThrow(() => rules.authorize('alice', 'subscribe', '/user/alice/queue/x'));
  assert.doesNotThrow(() => rules.authorize('a/b', 'subscribe', '/user/a/b/queue/x'));
  assert.throws(() => rules.authorize('ali', 'subscribe', '/user/alice/queue/x'), /only to its own/);
  assert.throws(() => rules.authorize('', 'subscribe', '/user/alice/queue/x'), /anonymous/);
  assert.throws(() => rules.authorize('bob', 'subscribe', '/topic/x/'), /path segment/);
  assert.throws(() => rules.authorize('bob', 'send', '/topic/news', ' '), (e) => e === 'jwt-auth: SEND is not allowed on this tenant');
  assert.doesNotThrow(() => rules.authorize('bob', 'send', '/queue/in/1', ' /queue/in/ , /topic/chat/ ,'));
});

test('channel codes', () => {
  const table = ' ORDER_STATUS = /queue/orders , NEWS=/topic/news,,BROKEN, EMPTY=';
  assert.equal(rules.resolveChannel(table, 'ORDER_STATUS'), '/queue/orders');
  assert.equal(rules.resolveChannel(table, 'news'), undefined);
  assert.equal(rules.resolveChannel(table, 'EMPTY'), undefined);
  assert.equal(rules.resolveChannel(undefined, 'NEWS'), undefined);
});
