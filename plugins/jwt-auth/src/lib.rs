//! `jwt-auth`: a stompbox tenant plugin that authenticates CONNECTs with HS256 JWTs, lets a
//! session subscribe to `/topic/...` and its own `/user/...` destinations, limits SEND to
//! configured prefixes, and maps channel codes from a tenant setting. See `README.md`.
//!
//! The decisions live in [`jwt`] and [`rules`] as plain functions (unit-tested on the host);
//! the policy below only feeds them from the host's settings and clock.

pub mod jwt;
pub mod rules;

use stompbox_plugin::{host, settings, ConnectInfo, Level, Operation, Policy, Principal};

/// The plugin.
pub struct JwtAuth;

impl Policy for JwtAuth {
    fn authenticate(info: ConnectInfo) -> Result<Principal, String> {
        let secret = host::setting("jwt_secret");
        if secret.is_none() {
            host::log(
                Level::Error,
                "jwt-auth: tenant setting jwt_secret is not set; every CONNECT is refused",
            );
        }
        let id = rules::authenticate(&info.headers, secret.as_deref(), host::now_ms())
            .inspect_err(|e| host::log(Level::Debug, e))?;
        Ok(Principal {
            user: id.user,
            attributes: id.attributes,
        })
    }

    fn authorize(who: Principal, op: Operation, destination: String) -> Result<(), String> {
        let prefixes = match op {
            Operation::Send => host::setting("send_prefixes"),
            Operation::Subscribe => None,
        };
        rules::authorize(&who.user, op, &destination, prefixes.as_deref())
    }

    fn resolve_channel(code: String) -> Option<String> {
        settings::channel(host::setting("channels").as_deref(), &code)
    }
}

stompbox_plugin::export!(JwtAuth);
