//! `seed-compat`: a stompbox tenant plugin that reproduces the Spring setup stompbox replaces.
//! The user is whatever the client claims in its CONNECT `userid` (else `login`) header,
//! everything is allowed, and channel codes come from the `channels` setting.
//!
//! **Unsafe by design**: any client can claim to be any user. It exists only to migrate tenants
//! off the old system; see `README.md`.

use std::sync::atomic::{AtomicBool, Ordering};

use stompbox_plugin::{header, host, settings, ConnectInfo, Level, Operation, Policy, Principal};

/// The plugin.
pub struct SeedCompat;

/// Whether this instance has warned yet (once per instance, not per CONNECT).
static WARNED: AtomicBool = AtomicBool::new(false);

impl Policy for SeedCompat {
    fn authenticate(info: ConnectInfo) -> Result<Principal, String> {
        if !WARNED.swap(true, Ordering::Relaxed) {
            host::log(
                Level::Warn,
                "seed-compat: trusting the client's userid/login header; any client can claim \
                 any user (migration only)",
            );
        }
        Ok(Principal::user(claimed_user(&info.headers)).with("auth", "seed-compat"))
    }

    fn authorize(_who: Principal, _op: Operation, _destination: String) -> Result<(), String> {
        Ok(())
    }

    fn resolve_channel(code: String) -> Option<String> {
        settings::channel(host::setting("channels").as_deref(), &code)
    }
}

stompbox_plugin::export!(SeedCompat);

/// The user a CONNECT claims: the first `userid` header, else the first `login`; empty (an
/// anonymous session) when neither is sent or the one found is empty. Nothing is verified.
pub fn claimed_user(headers: &[(String, String)]) -> String {
    header(headers, "userid")
        .or_else(|| header(headers, "login"))
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(h: &[(&str, &str)]) -> Vec<(String, String)> {
        h.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn userid_then_login_like_spring() {
        let user = |h: &[(&str, &str)]| claimed_user(&headers(h));
        assert_eq!(user(&[("login", "l"), ("userid", "u")]), "u");
        assert_eq!(user(&[("login", "l")]), "l");
        assert_eq!(user(&[("userid", "a"), ("userid", "b")]), "a");
        assert_eq!(user(&[("passcode", "p")]), "");
        assert_eq!(user(&[]), "");
        // Exactly like the node's built-in policy: an empty userid is anonymous, not `login`.
        assert_eq!(user(&[("userid", ""), ("login", "l")]), "");
    }
}
