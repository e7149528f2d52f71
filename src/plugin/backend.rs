//! A plugin's calls to its tenant's backend (`backend.fetch`): who may be called, how long a
//! call may wait and how much of an answer is read. Opt-in per tenant: without
//! `[tenants.plugin_backend]` every call is refused before anything is sent. The request goes
//! out through the node's pooled HTTP client and the wait is an await, so a slow backend holds
//! only the calling plugin instance, never a node thread.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::{HeaderName, HeaderValue, Method};
use bytes::Bytes;

use super::engine::wit_backend::{FetchError, Request, Response};
use crate::web::client::{ClientError, HttpClient};

/// Header names a plugin may not set: the node frames the request itself.
const RESERVED_HEADERS: [&str; 5] = [
    "host",
    "content-length",
    "connection",
    "transfer-encoding",
    "upgrade",
];

/// Where a tenant's plugin may call, and the bounds of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendAccess {
    /// Host (lowercase, IPv6 without brackets) and port of every backend the plugin may call
    /// (see `web::client::parse_authority`).
    pub allowed_hosts: Vec<(String, u16)>,
    /// The longest a call may wait for its whole answer (less when the plugin call's deadline
    /// comes first).
    pub timeout: Duration,
    /// The largest answer body read; a larger one is `too-large`.
    pub max_response_bytes: usize,
}

impl BackendAccess {
    /// Everything about `request` that is checked before it is sent: a listed host, a known
    /// method, headers the plugin may set.
    pub fn check(&self, request: &Request) -> Result<Prepared, FetchError> {
        let uri = crate::web::client::parse_url(&request.url)
            .map_err(|e| FetchError::Invalid(format!("url '{}': {e}", shown(&request.url))))?;
        let host = crate::web::client::bare_host(uri.host().unwrap_or_default());
        let port = uri.port_u16().unwrap_or(80);
        if !self
            .allowed_hosts
            .iter()
            .any(|(h, p)| *h == host && *p == port)
        {
            return Err(FetchError::NotAllowed(format!(
                "{host}:{port} is not in the tenant's plugin_backend.allowed_hosts"
            )));
        }
        let method = match request.method.to_ascii_uppercase().as_str() {
            "GET" => Method::GET,
            "POST" => Method::POST,
            "PUT" => Method::PUT,
            "PATCH" => Method::PATCH,
            "DELETE" => Method::DELETE,
            "HEAD" => Method::HEAD,
            other => {
                return Err(FetchError::Invalid(format!(
                    "method '{}' is not one of GET, POST, PUT, PATCH, DELETE, HEAD",
                    shown(other)
                )))
            }
        };
        let mut headers = Vec::with_capacity(request.headers.len());
        for (name, value) in &request.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| FetchError::Invalid(format!("header name '{}'", shown(name))))?;
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(FetchError::Invalid(format!(
                    "header '{name}' is set by the node"
                )));
            }
            let value = HeaderValue::from_str(value)
                .map_err(|_| FetchError::Invalid(format!("the value of header '{name}'")))?;
            headers.push((name, value));
        }
        Ok(Prepared {
            method,
            uri,
            headers,
        })
    }
}

/// What carries a plugin's `backend.fetch`: the real HTTP client, or recorded answers in
/// `stompbox plugin test`.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// Sends `request`, waiting at most `budget` (what is left of the plugin call's deadline).
    async fn fetch(&self, request: Request, budget: Duration) -> Result<Response, FetchError>;
}

/// The tenant allows no backend calls.
#[derive(Debug, Clone)]
pub struct NoBackend {
    /// The tenant, for the message.
    pub tenant: String,
}

#[async_trait]
impl Backend for NoBackend {
    async fn fetch(&self, _: Request, _: Duration) -> Result<Response, FetchError> {
        Err(FetchError::NotAllowed(format!(
            "tenant '{}' allows its plugin no backend calls (configure \
             [tenants.plugin_backend] allowed_hosts)",
            self.tenant
        )))
    }
}

/// Calls over HTTP to the hosts a tenant allows.
#[derive(Debug, Clone)]
pub struct HttpBackend {
    access: BackendAccess,
    client: HttpClient,
}

impl HttpBackend {
    /// Calls within `access`.
    pub fn new(access: BackendAccess) -> HttpBackend {
        HttpBackend {
            access,
            client: HttpClient::new(),
        }
    }
}

/// A request that passed [`BackendAccess::check`].
#[derive(Debug)]
pub struct Prepared {
    /// Its method.
    pub method: Method,
    /// Its URL.
    pub uri: axum::http::Uri,
    /// Its headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[async_trait]
impl Backend for HttpBackend {
    async fn fetch(&self, request: Request, budget: Duration) -> Result<Response, FetchError> {
        let prepared = self.access.check(&request)?;
        let timeout = self.access.timeout.min(budget);
        if timeout.is_zero() {
            return Err(FetchError::Timeout);
        }
        let answer = self
            .client
            .send(
                prepared.method,
                &prepared.uri,
                &prepared.headers,
                Bytes::from(request.body),
                timeout,
                self.access.max_response_bytes,
            )
            .await
            .map_err(|e| match e {
                ClientError::Timeout(_) => FetchError::Timeout,
                ClientError::TooLarge(cap) => FetchError::TooLarge(cap as u64),
                ClientError::Failed(why) => FetchError::Failed(why),
            })?;
        Ok(Response {
            status: answer.status.as_u16(),
            headers: answer
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: answer.body.to_vec(),
        })
    }
}

/// Plugin-supplied text cut short for a message.
fn shown(s: &str) -> String {
    s.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(hosts: &[&str]) -> HttpBackend {
        HttpBackend::new(BackendAccess {
            allowed_hosts: hosts
                .iter()
                .map(|h| crate::web::client::parse_authority(h).unwrap())
                .collect(),
            timeout: Duration::from_secs(1),
            max_response_bytes: 1024,
        })
    }

    fn get(url: &str) -> Request {
        Request {
            method: "GET".into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn refusal(b: &HttpBackend, r: Request) -> FetchError {
        b.access.check(&r).expect_err("refused")
    }

    #[test]
    fn only_listed_hosts_and_ports() {
        let b = backend(&["127.0.0.1:8081", "auth.internal", "[::1]:9000"]);
        assert!(b.access.check(&get("http://127.0.0.1:8081/verify")).is_ok());
        assert!(b.access.check(&get("http://AUTH.internal/verify")).is_ok());
        assert!(b.access.check(&get("http://auth.internal:80/x")).is_ok());
        assert!(b.access.check(&get("http://[::1]:9000/x")).is_ok());
        for url in [
            "http://127.0.0.1:8082/verify",
            "http://auth.internal:8080/x",
            "http://evil.example/x",
            "http://127.0.0.1.evil.example:8081/x",
            "http://[::1]:9001/x",
        ] {
            assert!(
                matches!(refusal(&b, get(url)), FetchError::NotAllowed(_)),
                "{url}"
            );
        }
        assert!(matches!(
            refusal(&backend(&[]), get("http://127.0.0.1:8081/")),
            FetchError::NotAllowed(_)
        ));
    }

    #[test]
    fn malformed_requests_are_refused_before_sending() {
        let b = backend(&["127.0.0.1:8081"]);
        assert!(
            matches!(refusal(&b, get("https://127.0.0.1:8081/")), FetchError::Invalid(m) if m.contains("https"))
        );
        assert!(matches!(
            refusal(&b, get("not a url")),
            FetchError::Invalid(_)
        ));
        let mut r = get("http://127.0.0.1:8081/");
        r.method = "CONNECT".into();
        assert!(matches!(refusal(&b, r), FetchError::Invalid(m) if m.contains("CONNECT")));
        for (name, value) in [
            ("host", "x"),
            ("Content-Length", "1"),
            ("bad name", "x"),
            ("x", "a\nb"),
        ] {
            let mut r = get("http://127.0.0.1:8081/");
            r.headers.push((name.into(), value.into()));
            assert!(matches!(refusal(&b, r), FetchError::Invalid(_)), "{name}");
        }
    }
}
