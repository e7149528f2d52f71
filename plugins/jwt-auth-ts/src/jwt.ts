// HS256 JSON Web Tokens (RFC 7519): split, check the header, verify the HMAC-SHA256 signature
// in constant time, then check `exp`/`nbf` and read `sub`. The same checks, in the same order
// and with the same messages, as the Rust jwt-auth plugin.

import { constantTimeEqual, hmacSha256 } from './sha256.js';

/** Tokens longer than this are refused before any decoding. */
export const MAX_TOKEN_LEN = 16 * 1024;

/** Why a token was refused; `message` is what the client reads. */
export class JwtError extends Error {}

/** A token that passed every check. */
export interface Verified {
  sub: string;
  claims: Record<string, unknown>;
}

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/** base64url, `=` padding tolerated; null for anything else (including non-zero spare bits). */
export function base64url(text: string): Uint8Array | null {
  const bare = text.replace(/=+$/, '');
  if (bare.length % 4 === 1 || text.length - bare.length > 2) return null;
  const out = new Uint8Array(Math.floor((bare.length * 6) / 8));
  let bits = 0;
  let value = 0;
  let at = 0;
  for (const ch of bare) {
    const v = ALPHABET.indexOf(ch);
    if (v < 0) return null;
    value = (value << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[at++] = (value >> bits) & 0xff;
    }
  }
  if ((value & ((1 << bits) - 1)) !== 0) return null;
  return out;
}

function decodeJson(part: string, notB64: string, notObject: string): Record<string, unknown> {
  const bytes = base64url(part);
  if (bytes === null) throw new JwtError(`malformed token: ${notB64}`);
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    throw new JwtError(`malformed token: ${notObject}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new JwtError(`malformed token: ${notObject}`);
  }
  return value as Record<string, unknown>;
}

function seconds(value: number): string {
  return `${Number.isInteger(value) ? value.toFixed(0) : value} (unix seconds)`;
}

function timeClaim(claims: Record<string, unknown>, name: string): number | undefined {
  const value = claims[name];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'number') throw new JwtError(`token claim '${name}' is not a number`);
  return value;
}

/** Verifies an HS256 `token` against `secret` at `nowMs` (milliseconds since the epoch). */
export function verify(token: string, secret: string, nowMs: number): Verified {
  if (token.length > MAX_TOKEN_LEN) throw new JwtError(`token is longer than ${MAX_TOKEN_LEN} bytes`);
  const parts = token.split('.');
  if (parts.length !== 3) {
    throw new JwtError('malformed token: expected three dot-separated parts (header.payload.signature)');
  }
  const [headerB64, payloadB64, signatureB64] = parts;
  const header = decodeJson(headerB64, 'header is not base64url', 'header is not a JSON object');
  const alg = header['alg'];
  if (alg === undefined) throw new JwtError("malformed token: header has no 'alg'");
  if (typeof alg !== 'string') throw new JwtError("malformed token: header 'alg' is not a string");
  if (alg !== 'HS256') throw new JwtError(`token algorithm '${alg}' is not accepted (only HS256 is)`);
  if ('crit' in header) throw new JwtError("token header has 'crit' extensions, not supported");

  const signature = base64url(signatureB64);
  if (signature === null) throw new JwtError('malformed token: signature is not base64url');
  const encoder = new TextEncoder();
  const expected = hmacSha256(encoder.encode(secret), encoder.encode(`${headerB64}.${payloadB64}`));
  if (!constantTimeEqual(expected, signature)) throw new JwtError('bad token signature');

  const claims = decodeJson(payloadB64, 'payload is not base64url', 'payload is not a JSON object');
  const nowS = nowMs / 1000;
  const exp = timeClaim(claims, 'exp');
  if (exp === undefined) throw new JwtError("token has no 'exp' claim (expiry is required)");
  if (nowS >= exp) throw new JwtError(`token expired at ${seconds(exp)}`);
  const nbf = timeClaim(claims, 'nbf');
  if (nbf !== undefined && nowS < nbf) throw new JwtError(`token is not valid before ${seconds(nbf)}`);
  const sub = claims['sub'];
  if (typeof sub !== 'string' || sub === '') throw new JwtError("token has no 'sub' claim (the user)");
  return { sub, claims };
}
