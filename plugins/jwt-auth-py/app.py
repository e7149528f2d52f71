"""jwt-auth-py: the jwt-auth plugin in Python. Authenticates CONNECTs with HS256 JWTs, keeps
each user to /topic/... and their own /user/... destinations, limits SEND to the
`send_prefixes` setting, and maps channel codes from the `channels` setting. The decisions are
in rules.py; this module feeds them from the host.

Built with componentize-py against ../../wit (world `tenant-plugin`). The class must be named
`Policy`. A refusal is *raised* as `Err(message)`: returning it would mean "allowed".
"""

from typing import Optional

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.host import Level
from wit_world.imports.types import ConnectInfo, Operation, Principal

import rules


class Policy(exports.Policy):
    def authenticate(self, info: ConnectInfo) -> Principal:
        secret = host.setting("jwt_secret")
        if secret is None:
            host.log(Level.ERROR, "jwt-auth-py: tenant setting jwt_secret is not set; every CONNECT is refused")
        try:
            user, attributes = rules.authenticate(info.headers, secret, host.now_ms())
        except rules.Refused as refusal:
            host.log(Level.DEBUG, str(refusal))
            raise Err(str(refusal)) from None
        return Principal(user=user, attributes=attributes)

    def authorize(self, who: Principal, op: Operation, destination: str) -> None:
        subscribe = op == Operation.SUBSCRIBE
        prefixes = None if subscribe else host.setting("send_prefixes")
        try:
            rules.authorize(who.user, subscribe, destination, prefixes)
        except rules.Refused as refusal:
            raise Err(str(refusal)) from None

    def resolve_channel(self, code: str) -> Optional[str]:
        return rules.resolve_channel(host.setting("channels"), code)
