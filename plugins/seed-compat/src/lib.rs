//! `seed-compat`: a stompbox tenant plugin that reproduces the Spring setup stompbox replaces.
//! The user is whatever the client claims in its CONNECT `userid` (else `login`) header,
//! everything is allowed, and channel codes come from the `channels` setting.
//!
//! **Unsafe by design**: any client can claim to be any user. It exists only to migrate tenants
//! off the old system; see `README.md`.
//!
//! The decisions are plain functions (unit-tested on the host); the wit-bindgen glue in
//! `component.rs` is compiled for wasm only.

#[cfg(target_arch = "wasm32")]
mod component;

/// The user a CONNECT claims: the first `userid` header, else the first `login`; empty (an
/// anonymous session) when neither is sent or the one found is empty. Nothing is verified.
pub fn claimed_user(headers: &[(String, String)]) -> String {
    header(headers, "userid")
        .or_else(|| header(headers, "login"))
        .unwrap_or_default()
        .to_string()
}

/// The session's attributes: only where it came from.
pub fn attributes() -> Vec<(String, String)> {
    vec![("auth".to_string(), "seed-compat".to_string())]
}

/// The first value of header `name` (STOMP: the first occurrence of a repeated header wins).
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Looks `code` up in the tenant setting `channels`, `"CODE=/destination,CODE2=/other"` (spaces
/// around items, codes and destinations are ignored; codes are case-sensitive; the first match
/// wins). `None` when the setting or the code is missing. Same format as `jwt-auth`.
pub fn resolve_channel(channels: Option<&str>, code: &str) -> Option<String> {
    channels?
        .split(',')
        .map(str::trim)
        .filter_map(|item| item.split_once('='))
        .find(|(c, _)| c.trim() == code)
        .map(|(_, dest)| dest.trim().to_string())
        .filter(|dest| !dest.is_empty())
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

    #[test]
    fn channels() {
        let setting = Some("ORDER_STATUS=/queue/orders, NEWS = /topic/news ,junk");
        assert_eq!(
            resolve_channel(setting, "ORDER_STATUS").as_deref(),
            Some("/queue/orders")
        );
        assert_eq!(
            resolve_channel(setting, "NEWS").as_deref(),
            Some("/topic/news")
        );
        assert_eq!(resolve_channel(setting, "junk"), None);
        assert_eq!(resolve_channel(setting, "OTHER"), None);
        assert_eq!(resolve_channel(None, "NEWS"), None);
    }
}
