//! The glue between the `tenant-plugin` world (`../../wit/plugin.wit`) and [`crate::rules`]:
//! settings and the clock come from the host imports at call time.

wit_bindgen::generate!({
    world: "tenant-plugin",
    path: "../../wit",
});

use exports::stompbox::plugin::policy::{ConnectInfo, Guest, Operation, Principal};
use stompbox::plugin::host::{self, Level};

use crate::rules::{self, Op};

struct JwtAuth;

impl Guest for JwtAuth {
    fn authenticate(info: ConnectInfo) -> Result<Principal, String> {
        let secret = host::setting("jwt_secret");
        if secret.is_none() {
            host::log(
                Level::Error,
                "jwt-auth: tenant setting jwt_secret is not set; every CONNECT is refused",
            );
        }
        match rules::authenticate(&info.headers, secret.as_deref(), host::now_ms()) {
            Ok(id) => Ok(Principal {
                user: id.user,
                attributes: id.attributes,
            }),
            Err(e) => {
                host::log(Level::Debug, &e);
                Err(e)
            }
        }
    }

    fn authorize(who: Principal, op: Operation, destination: String) -> Result<(), String> {
        let op = match op {
            Operation::Subscribe => Op::Subscribe,
            Operation::Send => Op::Send,
        };
        let prefixes = match op {
            Op::Send => host::setting("send_prefixes"),
            Op::Subscribe => None,
        };
        rules::authorize(&who.user, op, &destination, prefixes.as_deref())
    }

    fn resolve_channel(code: String) -> Option<String> {
        rules::resolve_channel(host::setting("channels").as_deref(), &code)
    }
}

export!(JwtAuth);
