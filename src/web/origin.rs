//! Which web pages may open browser connections (WebSocket, SockJS) to a tenant, in the manner
//! of Spring's `setAllowedOrigins`: a list of origins, `*` for any. A page served by the node
//! itself (same origin) and a client that sends no `Origin` header (a backend, a command-line
//! tool; browsers always send one on WebSocket and cross-origin requests) are always allowed.

use axum::http::{header, HeaderMap};

/// A tenant's allowed origins.
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins {
    any: bool,
    /// Lowercased `scheme://host[:port]`.
    origins: Vec<String>,
}

impl AllowedOrigins {
    /// From the validated configuration list.
    pub fn new(list: &[String]) -> AllowedOrigins {
        AllowedOrigins {
            any: list.iter().any(|o| o == "*"),
            origins: list
                .iter()
                .filter(|o| *o != "*")
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether pages that send `Origin: null` may connect (`*`, or `null` listed).
    pub fn allows_null_origin(&self) -> bool {
        self.any || self.origins.iter().any(|o| o == "null")
    }

    /// Whether a request with these headers may connect.
    pub fn permits(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        if self.any {
            return true;
        }
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let origin = origin.to_ascii_lowercase();
        if self.origins.contains(&origin) {
            return true;
        }
        // Same origin: the page came from this very host and port.
        let authority = origin.split_once("://").map(|(_, rest)| rest);
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_ascii_lowercase);
        matches!((authority, host), (Some(a), Some(h)) if a == h)
    }
}

/// Checks one configured entry: `*`, `null` (pages from `file://` and sandboxed frames, whose
/// browsers send `Origin: null`), or `scheme://host[:port]` without a path.
pub fn check_pattern(origin: &str) -> Result<(), String> {
    if origin == "*" || origin == "null" {
        return Ok(());
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err(format!(
            "'{origin}' is not an origin: write scheme://host[:port], e.g. https://app.example.com, or \"*\""
        ));
    };
    let rest = rest.trim_end_matches('/');
    if scheme.is_empty() || rest.is_empty() || rest.contains('/') || rest.contains('*') {
        return Err(format!(
            "'{origin}' is not an origin: write scheme://host[:port] without a path or wildcard, or \"*\" alone"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn same_origin_and_no_origin_are_always_allowed() {
        let none = AllowedOrigins::new(&[]);
        assert!(none.permits(&headers(None, "a:1")));
        assert!(none.permits(&headers(Some("http://a:1"), "a:1")));
        assert!(!none.permits(&headers(Some("http://evil:1"), "a:1")));
        assert!(!none.permits(&headers(Some("null"), "a:1")));
    }

    #[test]
    fn listed_origins_and_star() {
        let list = AllowedOrigins::new(&["https://App.example.com/".into()]);
        assert!(list.permits(&headers(Some("https://app.example.com"), "node:8080")));
        assert!(!list.permits(&headers(Some("http://app.example.com"), "node:8080")));
        let any = AllowedOrigins::new(&["*".into()]);
        assert!(any.permits(&headers(Some("null"), "node:8080")));
        assert!(any.allows_null_origin());
        assert!(!list.allows_null_origin());
        let null = AllowedOrigins::new(&["null".into()]);
        assert!(null.permits(&headers(Some("null"), "node:8080")));
        assert!(null.allows_null_origin());
        assert!(check_pattern("null").is_ok());
    }

    #[test]
    fn patterns() {
        assert!(check_pattern("*").is_ok());
        assert!(check_pattern("https://a.example:8443").is_ok());
        assert!(check_pattern("a.example").is_err());
        assert!(check_pattern("https://a.example/path").is_err());
        assert!(check_pattern("https://*.example").is_err());
    }
}
