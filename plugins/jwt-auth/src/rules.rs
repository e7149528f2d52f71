//! The plugin's decisions as plain functions of their inputs (headers, settings, the clock), so
//! they are unit-tested on the host; `component.rs` only feeds them from the host imports.

use stompbox_plugin::destination::{self, UserDestination};
use stompbox_plugin::{header, printable, settings, Operation};

use crate::jwt;

/// Error messages start with this, so a client (and the node's log) can tell who refused.
pub const PREFIX: &str = "jwt-auth: ";

/// Sends are allowed to these prefixes unless the tenant sets `send_prefixes`.
pub const DEFAULT_SEND_PREFIXES: &str = "/topic/,/user/";

/// Who a CONNECT turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`.
    pub user: String,
    /// `("auth", "jwt")`, then the token's other string claims (`scope`, `iss`, ...).
    pub attributes: Vec<(String, String)>,
}

/// Decides a CONNECT: the JWT is the `token` header, else `passcode` (a leading `Bearer ` is
/// tolerated); `secret` is the tenant setting `jwt_secret`; `now_ms` the host's clock.
pub fn authenticate(
    headers: &[(String, String)],
    secret: Option<&str>,
    now_ms: u64,
) -> Result<Identity, String> {
    let secret = match secret {
        None => return Err(format!("{PREFIX}tenant setting jwt_secret is not set")),
        Some("") => return Err(format!("{PREFIX}tenant setting jwt_secret is empty")),
        Some(s) => s,
    };
    let token = ["token", "passcode"]
        .iter()
        .filter_map(|name| header(headers, name))
        .map(strip_bearer)
        .find(|t| !t.is_empty())
        .ok_or_else(|| {
            format!("{PREFIX}no token: send the JWT in the CONNECT 'token' (or 'passcode') header")
        })?;
    let verified =
        jwt::verify(token, secret.as_bytes(), now_ms).map_err(|e| format!("{PREFIX}{e}"))?;
    if let Some(userid) = header(headers, "userid").filter(|u| !u.is_empty()) {
        if userid != verified.sub {
            return Err(format!(
                "{PREFIX}userid '{}' does not match the token's subject",
                printable(userid)
            ));
        }
    }
    let mut attributes = vec![("auth".to_string(), "jwt".to_string())];
    attributes.extend(
        verified
            .string_claims()
            .filter(|(k, _)| *k != "auth")
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    Ok(Identity {
        user: verified.sub,
        attributes,
    })
}

fn strip_bearer(token: &str) -> &str {
    let token = token.trim();
    match token.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("bearer ") => token[7..].trim_start(),
        _ => token,
    }
}

/// Decides whether `user` may `op` on `destination`.
///
/// SUBSCRIBE: `/topic/...`, and the user's own user destinations: `/user/queue/...` and
/// `/user/topic/...` (Spring's form for "mine"), or `/user/{user}/...` naming the user itself.
/// `/user/{someone else}/...` and everything else (`/queue/...`, ...) is denied.
///
/// SEND: destinations starting with one of the comma-separated `send_prefixes` (the tenant
/// setting; [`DEFAULT_SEND_PREFIXES`] when it is not set; an empty setting allows no SEND).
///
/// Either way a destination with an empty, `.` or `..` path segment is denied outright.
pub fn authorize(
    user: &str,
    op: Operation,
    destination: &str,
    send_prefixes: Option<&str>,
) -> Result<(), String> {
    destination::check_clean(destination).map_err(|e| format!("{PREFIX}{e}"))?;
    let shown = printable(destination);
    match op {
        Operation::Subscribe => {
            if destination::under(destination, "/topic/") || destination::is_own(destination, user)
            {
                return Ok(());
            }
            match destination::user_destination(destination) {
                UserDestination::Named(_) if user.is_empty() => Err(format!(
                    "{PREFIX}an anonymous session cannot subscribe to '{shown}'"
                )),
                UserDestination::Named(_) => Err(format!(
                    "{PREFIX}'{}' may not subscribe to '{shown}': only to its own /user/queue/... \
                     and /user/topic/... destinations",
                    printable(user)
                )),
                _ => Err(format!(
                    "{PREFIX}subscribing to '{shown}' is not allowed: only /topic/... and your own \
                     /user/queue/... or /user/topic/... destinations"
                )),
            }
        }
        Operation::Send => {
            let prefixes = send_prefixes.unwrap_or(DEFAULT_SEND_PREFIXES);
            let allowed: Vec<&str> = settings::list(prefixes).collect();
            if allowed.iter().any(|p| destination.starts_with(p)) {
                return Ok(());
            }
            if allowed.is_empty() {
                Err(format!("{PREFIX}SEND is not allowed on this tenant"))
            } else {
                Err(format!(
                    "{PREFIX}sending to '{shown}' is not allowed: allowed prefixes are {}",
                    allowed.join(", ")
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "s3cret";
    const NOW_MS: u64 = 1_700_000_000_000;

    fn headers(h: &[(&str, &str)]) -> Vec<(String, String)> {
        h.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn token(claims: serde_json::Value) -> String {
        jwt::sign(&json!({"alg": "HS256"}), &claims, SECRET.as_bytes())
    }

    fn alice() -> String {
        token(json!({"sub": "alice", "exp": 1_700_000_060, "scope": "read write", "n": 1}))
    }

    #[test]
    fn token_then_passcode() {
        let t = alice();
        for h in [
            headers(&[("token", &t)]),
            headers(&[("passcode", &t)]),
            headers(&[("token", ""), ("passcode", &t)]),
            headers(&[("token", &format!("Bearer {t}"))]),
            headers(&[("userid", "alice"), ("token", &t)]),
            headers(&[("userid", ""), ("token", &t)]),
        ] {
            let id = authenticate(&h, Some(SECRET), NOW_MS).unwrap();
            assert_eq!(id.user, "alice");
            assert_eq!(
                id.attributes,
                [
                    ("auth".to_string(), "jwt".to_string()),
                    ("scope".to_string(), "read write".to_string())
                ]
            );
        }
        // `token` wins over `passcode`.
        let h = headers(&[("token", "garbage"), ("passcode", &t)]);
        assert!(authenticate(&h, Some(SECRET), NOW_MS)
            .unwrap_err()
            .starts_with("jwt-auth: malformed token"));
    }

    #[test]
    fn clear_errors() {
        let t = alice();
        let err =
            |h: &[(&str, &str)], secret| authenticate(&headers(h), secret, NOW_MS).unwrap_err();
        assert_eq!(
            err(&[("token", &t)], None),
            "jwt-auth: tenant setting jwt_secret is not set"
        );
        assert_eq!(
            err(&[("token", &t)], Some("")),
            "jwt-auth: tenant setting jwt_secret is empty"
        );
        assert_eq!(
            err(&[("login", "alice")], Some(SECRET)),
            "jwt-auth: no token: send the JWT in the CONNECT 'token' (or 'passcode') header"
        );
        assert_eq!(
            err(&[("token", &t), ("userid", "bob")], Some(SECRET)),
            "jwt-auth: userid 'bob' does not match the token's subject"
        );
        assert_eq!(
            err(&[("token", &t), ("userid", "a\nb")], Some(SECRET)),
            "jwt-auth: userid 'a?b' does not match the token's subject"
        );
        assert_eq!(
            err(&[("token", &t)], Some("other")),
            "jwt-auth: bad token signature"
        );
    }

    #[test]
    fn expired_and_not_yet_valid() {
        let expired = token(json!({"sub": "a", "exp": 1_600_000_000}));
        assert_eq!(
            authenticate(&headers(&[("token", &expired)]), Some(SECRET), NOW_MS).unwrap_err(),
            "jwt-auth: token expired at 1600000000 (unix seconds)"
        );
        let early = token(json!({"sub": "a", "exp": 1_800_000_000, "nbf": 1_750_000_000}));
        assert_eq!(
            authenticate(&headers(&[("token", &early)]), Some(SECRET), NOW_MS).unwrap_err(),
            "jwt-auth: token is not valid before 1750000000 (unix seconds)"
        );
    }

    #[test]
    fn claim_named_auth_cannot_override() {
        let t = token(json!({"sub": "a", "exp": 1_700_000_060, "auth": "admin"}));
        let id = authenticate(&headers(&[("token", &t)]), Some(SECRET), NOW_MS).unwrap();
        assert_eq!(id.attributes, [("auth".to_string(), "jwt".to_string())]);
    }

    #[test]
    fn subscribe_rules() {
        let sub = |user, dest| authorize(user, Operation::Subscribe, dest, None);
        assert!(sub("bob", "/topic/news").is_ok());
        assert!(sub("bob", "/topic/a/b").is_ok());
        assert!(sub("bob", "/user/queue/x").is_ok());
        assert!(sub("bob", "/user/topic/x").is_ok());
        assert!(sub("alice", "/user/alice/queue/x").is_ok());
        assert_eq!(
            sub("bob", "/user/alice/queue/x").unwrap_err(),
            "jwt-auth: 'bob' may not subscribe to '/user/alice/queue/x': only to its own \
             /user/queue/... and /user/topic/... destinations"
        );
        assert!(sub("ali", "/user/alice/queue/x").is_err());
        assert!(sub("alice", "/user/ali/queue/x").is_err());
        assert!(sub("a/b", "/user/a/b/queue/x").is_ok());
        assert!(
            sub("", "/user/queue/x").is_ok(),
            "the node refuses it itself"
        );
        assert!(sub("", "/user//queue/x").is_err());
        assert!(sub("", "/user/alice/queue/x")
            .unwrap_err()
            .contains("anonymous"));
        for dest in [
            "/queue/orders",
            "/topic/",
            "/user/queue/",
            "/user/",
            "/app/x",
            "topic/x",
            "",
        ] {
            assert!(sub("bob", dest).is_err(), "{dest:?}");
        }
        assert!(sub("bob", "/queue/orders")
            .unwrap_err()
            .starts_with("jwt-auth: subscribing to '/queue/orders' is not allowed"));
        for dest in [
            "/topic/../user/alice/queue/x",
            "/topic//x",
            "/topic/./x",
            "/topic/x/",
        ] {
            assert!(
                sub("bob", dest).unwrap_err().contains("path segment"),
                "{dest:?}"
            );
        }
    }

    #[test]
    fn send_rules() {
        let send = |dest, prefixes| authorize("bob", Operation::Send, dest, prefixes);
        assert!(send("/topic/chat", None).is_ok());
        assert!(send("/user/alice/queue/x", None).is_ok());
        assert_eq!(
            send("/queue/orders", None).unwrap_err(),
            "jwt-auth: sending to '/queue/orders' is not allowed: allowed prefixes are /topic/, /user/"
        );
        let custom = Some(" /queue/in/ , /topic/chat/ ,");
        assert!(send("/queue/in/1", custom).is_ok());
        assert!(send("/topic/chat/room", custom).is_ok());
        assert!(send("/topic/news", custom).is_err());
        assert_eq!(
            send("/topic/news", Some(" ")).unwrap_err(),
            "jwt-auth: SEND is not allowed on this tenant"
        );
    }
}
