// jwt-auth-ts: the jwt-auth plugin in TypeScript. Authenticates CONNECTs with HS256 JWTs,
// keeps each user to `/topic/...` and their own `/user/...` destinations, limits SEND to the
// `send_prefixes` setting, and maps channel codes from the `channels` setting. The decisions
// are in rules.ts; this file feeds them from the host.
//
// Built with componentize-js against ../../wit (world `tenant-plugin`); the declarations of
// the imports and exports are generated from the same WIT into types/ (`npm run types`).

import { log, nowMs, setting } from 'stompbox:plugin/host@0.1.1';
import type { ConnectInfo, Operation, Principal } from 'stompbox:plugin/types@0.1.1';

import * as rules from './rules.js';

export const policy = {
  // A thrown string is the `err` of `result<principal, string>`: the client's ERROR message.
  authenticate(info: ConnectInfo): Principal {
    const secret = setting('jwt_secret');
    if (secret === undefined) {
      log('error', 'jwt-auth-ts: tenant setting jwt_secret is not set; every CONNECT is refused');
    }
    try {
      return rules.authenticate(info.headers, secret, Number(nowMs()));
    } catch (refusal) {
      log('debug', String(refusal));
      throw refusal;
    }
  },

  authorize(who: Principal, op: Operation, destination: string): void {
    const prefixes = op === 'send' ? setting('send_prefixes') : undefined;
    rules.authorize(who.user, op, destination, prefixes);
  },

  resolveChannel(code: string): string | undefined {
    return rules.resolveChannel(setting('channels'), code);
  },
};
