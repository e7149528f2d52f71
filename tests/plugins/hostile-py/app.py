"""A deliberately misbehaving plugin in Python, for the node's tests (never for a tenant): the
tenant setting `mode` picks what `authenticate` does. `loop` spins forever (until the
deadline), `alloc` keeps allocating until the memory cap, `raise` raises a ValueError (a trap),
`deny` refuses. Anything else: the user named by the CONNECT `userid` header. `authorize`
allows everything; `resolve_channel` answers `/topic/{code in lowercase}`."""

from typing import Optional

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import ConnectInfo, Operation, Principal

HOARD = []


class Policy(exports.Policy):
    def authenticate(self, info: ConnectInfo) -> Principal:
        mode = host.setting("mode")
        if mode == "loop":
            while True:
                HOARD.clear()
        if mode == "alloc":
            while True:
                HOARD.append(bytearray(1 << 20))
        if mode == "raise":
            raise ValueError("hostile-py: raised")
        if mode == "deny":
            raise Err("hostile-py: denied (deny)")
        user = next((v for k, v in info.headers if k == "userid"), "")
        return Principal(user=user, attributes=[("auth", "hostile-py")])

    def authorize(self, who: Principal, op: Operation, destination: str) -> None:
        return None

    def resolve_channel(self, code: str) -> Optional[str]:
        return f"/topic/{code.lower()}"
