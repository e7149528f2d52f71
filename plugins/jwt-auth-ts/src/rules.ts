// The plugin's decisions as plain functions of their inputs (headers, settings, the clock), so
// that `npm test` checks them in Node; plugin.ts only feeds them from the host imports.

import { JwtError, verify } from './jwt.js';

/** Error messages start with this, so a client (and the node's log) can tell who refused. */
export const PREFIX = 'jwt-auth: ';

/** SEND is allowed to these prefixes unless the tenant sets `send_prefixes`. */
export const DEFAULT_SEND_PREFIXES = '/topic/,/user/';

export type Headers = Array<[string, string]>;

/** Who a CONNECT turned out to be. */
export interface Identity {
  user: string;
  attributes: Headers;
}

/** The first value of header `name` (STOMP: the first occurrence wins). */
export function header(headers: Headers, name: string): string | undefined {
  return headers.find(([k]) => k === name)?.[1];
}

/** Client text made safe to echo: control characters become `?`, cut at 64 characters. */
export function printable(text: string): string {
  const chars = Array.from(text);
  // Control characters (Unicode category Cc); the engine has no Unicode property escapes.
  const control = (c: string): boolean => {
    const code = c.codePointAt(0) ?? 0;
    return code < 0x20 || (code >= 0x7f && code <= 0x9f);
  };
  const shown = chars.slice(0, 64).map((c) => (control(c) ? '?' : c)).join('');
  return chars.length > 64 ? `${shown}...` : shown;
}

/** The non-empty, trimmed items of a comma-separated setting. */
export function list(setting: string): string[] {
  return setting.split(',').map((s) => s.trim()).filter((s) => s !== '');
}

function stripBearer(token: string): string {
  const t = token.trim();
  return t.slice(0, 7).toLowerCase() === 'bearer ' ? t.slice(7).trimStart() : t;
}

/** Decides a CONNECT: the JWT is the `token` header, else `passcode`. Throws the refusal. */
export function authenticate(headers: Headers, secret: string | undefined, nowMs: number): Identity {
  if (secret === undefined) throw `${PREFIX}tenant setting jwt_secret is not set`;
  if (secret === '') throw `${PREFIX}tenant setting jwt_secret is empty`;
  const token = ['token', 'passcode']
    .map((name) => header(headers, name))
    .filter((t): t is string => t !== undefined)
    .map(stripBearer)
    .find((t) => t !== '');
  if (token === undefined) {
    throw `${PREFIX}no token: send the JWT in the CONNECT 'token' (or 'passcode') header`;
  }
  let verified;
  try {
    verified = verify(token, secret, nowMs);
  } catch (e) {
    if (e instanceof JwtError) throw `${PREFIX}${e.message}`;
    throw e;
  }
  const userid = header(headers, 'userid');
  if (userid !== undefined && userid !== '' && userid !== verified.sub) {
    throw `${PREFIX}userid '${printable(userid)}' does not match the token's subject`;
  }
  const attributes: Headers = [['auth', 'jwt']];
  for (const name of Object.keys(verified.claims).sort()) {
    const value = verified.claims[name];
    if (name !== 'sub' && name !== 'auth' && typeof value === 'string') attributes.push([name, value]);
  }
  return { user: verified.sub, attributes };
}

/** `s` starts with `prefix` and has something after it. */
function under(s: string, prefix: string): boolean {
  return s.startsWith(prefix) && s.length > prefix.length;
}

/**
 * SUBSCRIBE: `/topic/...` and the user's own `/user/queue/...`, `/user/topic/...` or
 * `/user/{user}/...`. SEND: the `send_prefixes`. Never a path with an empty, `.` or `..`
 * segment. Throws the refusal.
 */
export function authorize(
  user: string,
  op: 'subscribe' | 'send',
  destination: string,
  sendPrefixes: string | undefined,
): void {
  const shown = printable(destination);
  const segments = destination.split('/').slice(1);
  if (!destination.startsWith('/') || segments.some((s) => s === '' || s === '.' || s === '..')) {
    throw `${PREFIX}destination '${shown}' has an empty, '.' or '..' path segment`;
  }
  if (op === 'subscribe') {
    if (under(destination, '/topic/')) return;
    if (destination.startsWith('/user/')) {
      const rest = destination.slice('/user/'.length);
      if (under(rest, 'queue/') || under(rest, 'topic/')) return;
      if (user !== '' && under(rest, `${user}/`)) return;
      if (user === '') throw `${PREFIX}an anonymous session cannot subscribe to '${shown}'`;
      throw `${PREFIX}'${printable(user)}' may not subscribe to '${shown}': only to its own /user/queue/... and /user/topic/... destinations`;
    }
    throw `${PREFIX}subscribing to '${shown}' is not allowed: only /topic/... and your own /user/queue/... or /user/topic/... destinations`;
  }
  const allowed = list(sendPrefixes ?? DEFAULT_SEND_PREFIXES);
  if (allowed.some((p) => destination.startsWith(p))) return;
  if (allowed.length === 0) throw `${PREFIX}SEND is not allowed on this tenant`;
  throw `${PREFIX}sending to '${shown}' is not allowed: allowed prefixes are ${allowed.join(', ')}`;
}

/** Looks `code` up in `CODE=/destination,...`; undefined when unknown. */
export function resolveChannel(table: string | undefined, code: string): string | undefined {
  if (table === undefined) return undefined;
  for (const item of list(table)) {
    const at = item.indexOf('=');
    if (at < 0) continue;
    if (item.slice(0, at).trim() === code) {
      const destination = item.slice(at + 1).trim();
      return destination === '' ? undefined : destination;
    }
  }
  return undefined;
}
