//! A small outbound HTTP/1.1 client: a tenant's webhook and its plugin's calls to its
//! backend. Built on hyper's pooled client, which already keeps connections alive and reuses
//! them; this module adds what every caller needs and hyper leaves out: a whole-request
//! timeout, a cap on the response body, and errors that say what went wrong in words.
//!
//! Only `http://` URLs: TLS to a backend is left to a local proxy or sidecar for now, which
//! keeps a TLS stack and its roots out of the binary.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Checks that `url` is an `http://host[:port]/path` URL; gives it parsed.
pub fn parse_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(
                "https is not supported: give an http:// URL (a local TLS proxy can carry it on)"
                    .into(),
            )
        }
        _ => return Err("must start with http://".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("names no host".into());
    }
    Ok(uri)
}

/// Parses a `host[:port]` entry of an allow-list (`127.0.0.1:8081`, `auth.internal`,
/// `[::1]:9000`): the host in lowercase without IPv6 brackets, and the port (80 when none is
/// given, as in an `http://` URL).
pub fn parse_authority(entry: &str) -> Result<(String, u16), String> {
    let wrong = || format!("'{entry}' is not host or host:port");
    let (host, port) = match entry.strip_prefix('[') {
        Some(v6) => {
            let (host, rest) = v6.split_once(']').ok_or_else(wrong)?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(wrong());
            }
            let port = match rest {
                "" => None,
                r => Some(r.strip_prefix(':').ok_or_else(wrong)?),
            };
            (host, port)
        }
        None => match entry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (entry, None),
        },
    };
    let name_ok = !host.is_empty()
        && (host.contains(':')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'));
    let port = match port {
        None => 80,
        Some(p) => p.parse::<u16>().map_err(|_| wrong())?,
    };
    if !name_ok {
        return Err(wrong());
    }
    Ok((bare_host(host), port))
}

/// A URL's host as allow-lists name it: lowercase, IPv6 without brackets.
pub fn bare_host(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// Why a request got no answer to act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// No answer within the timeout.
    #[error("no answer within {0} ms")]
    Timeout(u64),
    /// Connecting or sending failed.
    #[error("the request failed: {0}")]
    Failed(String),
    /// The answer's body was larger than allowed.
    #[error("the answer was larger than {0} bytes")]
    TooLarge(usize),
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: axum::http::HeaderMap,
    /// Its body (at most the cap asked for).
    pub body: Bytes,
}

/// A pooled HTTP/1.1 client.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> HttpClient {
        HttpClient::new()
    }
}

impl HttpClient {
    /// A client whose idle connections are kept for 30 s.
    pub fn new() -> HttpClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        HttpClient { inner }
    }

    /// Sends one request; the answer (whatever its status) within `timeout`, its body cut off
    /// as an error past `max_answer_bytes`. Redirects are answers like any other: following
    /// one is the caller's decision.
    pub async fn send(
        &self,
        method: Method,
        uri: &Uri,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
        timeout: Duration,
        max_answer_bytes: usize,
    ) -> Result<Answer, ClientError> {
        let mut request = Request::builder().method(method).uri(uri.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| ClientError::Failed(e.to_string()))?;
        let ms = timeout.as_millis() as u64;
        let exchange = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| ClientError::Failed(describe(&e)))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, max_answer_bytes)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        ClientError::TooLarge(max_answer_bytes)
                    } else {
                        ClientError::Failed(e.to_string())
                    }
                })?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(ms))?
    }
}

/// The error and its causes on one line ("client error (Connect): tcp connect error:
/// Connection refused").
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_with_a_host() {
        assert!(parse_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(parse_url("http://backend/hook").is_ok());
        assert!(parse_url("https://backend/hook")
            .unwrap_err()
            .contains("https"));
        assert!(parse_url("ftp://x/").unwrap_err().contains("http://"));
        assert!(parse_url("/hook").is_err());
        assert!(parse_url("not a url").is_err());
    }

    #[test]
    fn allow_list_entries() {
        assert_eq!(
            parse_authority("127.0.0.1:8081"),
            Ok(("127.0.0.1".into(), 8081))
        );
        assert_eq!(
            parse_authority("Auth.Internal"),
            Ok(("auth.internal".into(), 80))
        );
        assert_eq!(parse_authority("[::1]:9000"), Ok(("::1".into(), 9000)));
        for bad in ["", "user@host", "http://x", "host:port", "a b"] {
            assert!(parse_authority(bad).is_err(), "{bad}");
        }
    }
}
