//! `session-cookie`: a stompbox tenant plugin that authenticates a CONNECT by the browser's
//! session cookie, which only the tenant's backend can check. The plugin forwards the cookie
//! to the backend's `verify_url`; a 200 answer names the user, a 401 or 403 refuses, anything
//! else (slow, down, not allowed) refuses with an ERROR that says so. A verified session is
//! remembered in the tenant's cache (shared by every node when clustered) for `cache_ttl_ms`,
//! keyed by a SHA-256 of the cookie, so the cookie itself is never stored.
//!
//! Authorization is the common one: `/topic/...` and the user's own `/user/...` destinations
//! to subscribe, `send_prefixes` to send. See `README.md`.

use sha2::{Digest, Sha256};
use stompbox_plugin::backend::FetchError;
use stompbox_plugin::destination::{self};
use stompbox_plugin::{cache, header, host, http, printable, settings};
use stompbox_plugin::{ConnectInfo, Level, Operation, Policy, Principal};

/// Error messages start with this, so a client (and the node's log) can tell who refused.
const PREFIX: &str = "session-cookie: ";

/// The plugin.
pub struct SessionCookie;

impl Policy for SessionCookie {
    fn authenticate(info: ConnectInfo) -> Result<Principal, String> {
        let config = Config::read();
        let session = find_session(
            host::request_header("cookie").as_deref(),
            &info.headers,
            &config,
        )?;
        let key = cache_key(&session);
        let principal = match cache::get(&key).and_then(|v| principal_from_json(&v).ok()) {
            Some(known) => known,
            None => {
                let verify_url = config.verify_url.as_deref().ok_or_else(|| {
                    host::log(
                        Level::Error,
                        "session-cookie: setting verify_url is not set",
                    );
                    format!("{PREFIX}tenant setting verify_url is not set")
                })?;
                let cookie = format!("{}={}", config.cookie_name, session);
                let answer = http::get(
                    verify_url,
                    &[("cookie", &cookie), ("accept", "application/json")],
                )
                .map_err(|e| refusal_for(&e))?;
                let principal = verdict(answer.status, &answer.body).inspect_err(|e| {
                    // A 200 that names nobody is the backend's bug: the operator should hear.
                    if answer.status == 200 {
                        host::log(Level::Warn, e);
                    }
                })?;
                if config.cache_ttl_ms > 0 {
                    cache::set(&key, &principal_to_json(&principal), config.cache_ttl_ms);
                }
                principal
            }
        };
        if let Some(claimed) = header(&info.headers, "userid").filter(|u| !u.is_empty()) {
            if claimed != principal.user {
                return Err(format!(
                    "{PREFIX}userid '{}' does not match the session's user",
                    printable(claimed)
                ));
            }
        }
        Ok(principal)
    }

    fn authorize(who: Principal, op: Operation, destination: String) -> Result<(), String> {
        let send_prefixes = match op {
            Operation::Send => settings::list_or("send_prefixes", DEFAULT_SEND_PREFIXES),
            Operation::Subscribe => Vec::new(),
        };
        authorize(&who.user, op, &destination, &send_prefixes)
    }

    fn resolve_channel(code: String) -> Option<String> {
        settings::channel(host::setting("channels").as_deref(), &code)
    }
}

stompbox_plugin::export!(SessionCookie);

/// SEND is allowed to these prefixes unless the tenant sets `send_prefixes`.
pub const DEFAULT_SEND_PREFIXES: &str = "/app/,/topic/,/user/";

/// The plugin's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `verify_url`: where the cookie is checked.
    pub verify_url: Option<String>,
    /// `cookie_name` (default `SESSION`).
    pub cookie_name: String,
    /// `connect_header` (default `session`): the CONNECT header that may carry the session
    /// instead, for clients that cannot send cookies; `""` turns it off.
    pub connect_header: String,
    /// `cache_ttl_ms` (default 60000): how long a verified session is remembered; 0: never.
    pub cache_ttl_ms: u64,
}

impl Config {
    fn read() -> Config {
        Config {
            verify_url: host::setting("verify_url").filter(|u| !u.is_empty()),
            cookie_name: host::setting("cookie_name").unwrap_or_else(|| "SESSION".into()),
            connect_header: host::setting("connect_header").unwrap_or_else(|| "session".into()),
            cache_ttl_ms: host::setting("cache_ttl_ms")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(60_000),
        }
    }
}

/// The session id: the cookie named `cookie_name` in the connection's `Cookie` header, else
/// the CONNECT header `connect_header`.
pub fn find_session(
    cookie_header: Option<&str>,
    connect_headers: &[(String, String)],
    config: &Config,
) -> Result<String, String> {
    let from_cookie = cookie_header.and_then(|c| stompbox_plugin::cookie(c, &config.cookie_name));
    let from_header = (!config.connect_header.is_empty())
        .then(|| header(connect_headers, &config.connect_header))
        .flatten();
    from_cookie
        .or(from_header)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            format!(
                "{PREFIX}no session: sign in first (no '{}' cookie on the connection)",
                config.cookie_name
            )
        })
}

/// The cache key of a session: a SHA-256 of it, so that the cache never holds a cookie.
pub fn cache_key(session: &str) -> String {
    let digest = Sha256::digest(session.as_bytes());
    let mut key = String::from("session-cookie:");
    for byte in digest {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}

/// What the backend's answer means: 200 with `{"user": "...", ...}` is that user (other string
/// fields become attributes); 401 and 403 refuse; anything else is the backend failing.
pub fn verdict(status: u16, body: &[u8]) -> Result<Principal, String> {
    match status {
        200 => principal_from_json(std::str::from_utf8(body).unwrap_or_default())
            .map_err(|e| format!("{PREFIX}the backend's answer is unusable: {e}")),
        401 | 403 => Err(format!(
            "{PREFIX}the session is not valid (signed out or expired)"
        )),
        other => Err(format!(
            "{PREFIX}cannot check the session now: the backend answered {other}"
        )),
    }
}

/// The ERROR message for a backend call that got no answer.
pub fn refusal_for(error: &FetchError) -> String {
    format!(
        "{PREFIX}cannot check the session now: {}",
        http::describe(error)
    )
}

/// `{"user": "alice", "role": "admin"}` → alice with attributes `auth=session-cookie`,
/// `role=admin` (string fields only, in name order).
pub fn principal_from_json(text: &str) -> Result<Principal, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
    let object = value.as_object().ok_or("not a JSON object")?;
    let user = object
        .get("user")
        .and_then(|u| u.as_str())
        .filter(|u| !u.is_empty())
        .ok_or("no \"user\" string")?;
    let mut principal = Principal::user(user).with("auth", "session-cookie");
    for (name, value) in object {
        if let (false, Some(text)) = (name == "user" || name == "auth", value.as_str()) {
            principal = principal.with(name.as_str(), text);
        }
    }
    Ok(principal)
}

fn principal_to_json(principal: &Principal) -> String {
    let mut object = serde_json::Map::new();
    for (name, value) in &principal.attributes {
        object.insert(name.clone(), value.clone().into());
    }
    object.insert("user".into(), principal.user.clone().into());
    serde_json::Value::Object(object).to_string()
}

/// SUBSCRIBE to `/topic/...` and the user's own `/user/...` destinations; SEND to
/// `send_prefixes`; never a path with an empty, `.` or `..` segment.
pub fn authorize(
    user: &str,
    op: Operation,
    dest: &str,
    send_prefixes: &[String],
) -> Result<(), String> {
    destination::check_clean(dest).map_err(|e| format!("{PREFIX}{e}"))?;
    let allowed = match op {
        Operation::Subscribe => {
            destination::under(dest, "/topic/") || destination::is_own(dest, user)
        }
        Operation::Send => send_prefixes.iter().any(|p| destination::under(dest, p)),
    };
    if allowed {
        return Ok(());
    }
    let verb = match op {
        Operation::Subscribe => "subscribe to",
        Operation::Send => "send to",
    };
    Err(format!(
        "{PREFIX}'{}' may not {verb} '{}'",
        printable(user),
        printable(dest)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            verify_url: Some("http://127.0.0.1:1/verify".into()),
            cookie_name: "SESSION".into(),
            connect_header: "session".into(),
            cache_ttl_ms: 60_000,
        }
    }

    fn headers(h: &[(&str, &str)]) -> Vec<(String, String)> {
        h.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_cookie_first_then_the_connect_header() {
        let c = config();
        assert_eq!(
            find_session(
                Some("a=1; SESSION=abc"),
                &headers(&[("session", "hdr")]),
                &c
            )
            .unwrap(),
            "abc"
        );
        assert_eq!(
            find_session(Some("a=1"), &headers(&[("session", "hdr")]), &c).unwrap(),
            "hdr"
        );
        let off = Config {
            connect_header: String::new(),
            ..config()
        };
        assert!(find_session(None, &headers(&[("session", "hdr")]), &off)
            .unwrap_err()
            .contains("no 'SESSION' cookie"));
        assert!(find_session(Some("SESSION= "), &[], &c).is_err());
    }

    #[test]
    fn keys_hide_the_cookie() {
        let key = cache_key("secret-session");
        assert!(key.starts_with("session-cookie:"));
        assert!(!key.contains("secret"));
        assert_eq!(key.len(), "session-cookie:".len() + 64);
        assert_eq!(key, cache_key("secret-session"));
    }

    #[test]
    fn answers() {
        let p = verdict(200, br#"{"user":"alice","role":"admin","n":1}"#).unwrap();
        assert_eq!(p.user, "alice");
        assert_eq!(
            p.attributes,
            [
                ("auth".to_string(), "session-cookie".to_string()),
                ("role".into(), "admin".into())
            ]
        );
        assert_eq!(principal_from_json(&principal_to_json(&p)).unwrap(), p);
        assert!(verdict(401, b"").unwrap_err().contains("not valid"));
        assert!(verdict(403, b"").unwrap_err().contains("not valid"));
        assert!(verdict(502, b"").unwrap_err().contains("answered 502"));
        assert!(principal_from_json("{}").unwrap_err().contains("user"));
        assert!(principal_from_json("[]").is_err());
    }

    #[test]
    fn failures_say_what_happened() {
        assert_eq!(
            refusal_for(&FetchError::Timeout),
            "session-cookie: cannot check the session now: the backend did not answer in time"
        );
        assert!(refusal_for(&FetchError::NotAllowed("x".into())).contains("not allowed"));
    }

    #[test]
    fn rules() {
        let prefixes: Vec<String> = settings::list(DEFAULT_SEND_PREFIXES)
            .map(String::from)
            .collect();
        assert!(authorize("alice", Operation::Subscribe, "/topic/news", &prefixes).is_ok());
        assert!(authorize("alice", Operation::Subscribe, "/user/queue/x", &prefixes).is_ok());
        assert!(authorize(
            "alice",
            Operation::Subscribe,
            "/user/alice/queue/x",
            &prefixes
        )
        .is_ok());
        assert!(authorize(
            "bob",
            Operation::Subscribe,
            "/user/alice/queue/x",
            &prefixes
        )
        .is_err());
        assert!(authorize("bob", Operation::Subscribe, "/queue/x", &prefixes).is_err());
        assert!(authorize("bob", Operation::Send, "/app/echo", &prefixes).is_ok());
        assert!(authorize("bob", Operation::Send, "/queue/x", &prefixes).is_err());
        assert!(authorize(
            "bob",
            Operation::Subscribe,
            "/topic/../user/alice/queue/x",
            &prefixes
        )
        .unwrap_err()
        .contains("path segment"));
    }
}
