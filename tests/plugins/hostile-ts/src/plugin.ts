// A deliberately misbehaving plugin in TypeScript, for the node's tests (never for a tenant):
// the tenant setting `mode` picks what `authenticate` does. `loop` spins forever (until the
// deadline), `alloc` keeps allocating until the memory cap, `throw` throws an Error (a trap),
// `deny` refuses. Anything else: the user named by the CONNECT `userid` header. `authorize`
// allows everything; `resolve-channel` answers `/topic/{code in lowercase}`.

import { setting } from 'stompbox:plugin/host@0.1.1';
import type { ConnectInfo, Operation, Principal } from 'stompbox:plugin/types@0.1.1';

const hoard: number[][] = [];

export const policy = {
  authenticate(info: ConnectInfo): Principal {
    switch (setting('mode')) {
      case 'loop':
        for (;;) {
          hoard.length = 0;
        }
      case 'alloc':
        for (;;) hoard.push(new Array(1 << 18).fill(hoard.length));
      case 'throw':
        throw new Error('hostile-ts: thrown');
      case 'deny':
        throw 'hostile-ts: denied (deny)';
    }
    const user = info.headers.find(([k]) => k === 'userid')?.[1] ?? '';
    return { user, attributes: [['auth', 'hostile-ts']] };
  },
  authorize(_who: Principal, _op: Operation, _destination: string): void {},
  resolveChannel(code: string): string | undefined {
    return `/topic/${code.toLowerCase()}`;
  },
};
