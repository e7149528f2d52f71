//! The seam between sessions and tenant policy: who a connection is, what it may do, and where
//! a backend's channel codes lead. The built-in [`DefaultPolicy`] trusts the CONNECT `userid`
//! (else `login`) header, as the Spring setups stompbox replaces did; per-tenant WebAssembly
//! plugins implement the same trait.

use async_trait::async_trait;

/// Which transport a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// STOMP over WebSocket.
    WebSocket,
    /// STOMP over SockJS.
    SockJs,
    /// STOMP over plain TCP.
    Tcp,
}

impl TransportKind {
    /// Its name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::WebSocket => "websocket",
            TransportKind::SockJs => "sockjs",
            TransportKind::Tcp => "tcp",
        }
    }
}

/// What a policy learns from a CONNECT frame.
#[derive(Debug, Clone)]
pub struct ConnectInfo {
    /// The tenant the connection belongs to.
    pub tenant: String,
    /// How it connected.
    pub transport: TransportKind,
    /// The peer's address, when known.
    pub remote_addr: Option<String>,
    /// Every CONNECT header, in order.
    pub headers: Vec<(String, String)>,
    /// The [`REQUEST_HEADERS`] of the HTTP request that opened the connection (names in
    /// lowercase): where a browser's cookies are. Empty for TCP.
    pub request_headers: Vec<(String, String)>,
}

/// Headers of the request that opened a WebSocket or SockJS connection that a connection keeps
/// until its CONNECT, for the tenant's policy: the browser's cookies and credentials, and where
/// it came from. Nothing else is kept, so a connection never holds its whole handshake.
pub const REQUEST_HEADERS: [&str; 6] = [
    "cookie",
    "authorization",
    "origin",
    "user-agent",
    "x-forwarded-for",
    "x-real-ip",
];

impl ConnectInfo {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Who a session acts as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    /// The user `/user/...` destinations resolve to; `None` for an anonymous session.
    pub user: Option<String>,
    /// Whatever else the policy keeps with the session.
    pub attributes: Vec<(String, String)>,
}

/// An operation a session asks to perform on a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// SUBSCRIBE.
    Subscribe,
    /// SEND.
    Send,
}

/// Why a policy said no: the answer itself, or no answer at all. The two reach clients alike
/// (an ERROR, a 503) but are counted apart, because a denial is a user's problem and an
/// unavailable policy an operator's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The policy decided: not this user, not this destination. The reason is the policy's.
    #[error("{0}")]
    Denied(String),
    /// The policy could not decide: a plugin that trapped, ran past its deadline, ran out of
    /// memory or failed to load.
    #[error("the tenant's policy is unavailable: {0}")]
    Unavailable(String),
}

impl PolicyError {
    /// Its label in metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PolicyError::Denied(_) => "denied",
            PolicyError::Unavailable(_) => "unavailable",
        }
    }
}

/// A tenant's policy. Calls may be slow (a sandboxed plugin), so they are async; sessions call
/// `authenticate` once and cache `authorize` verdicts per destination.
#[async_trait]
pub trait Policy: Send + Sync + std::fmt::Debug {
    /// Decides who a CONNECT is; an `Err` goes to the client in an ERROR frame.
    async fn authenticate(&self, info: &ConnectInfo) -> Result<Principal, PolicyError>;
    /// Decides whether `who` may perform `op` on `destination`.
    async fn authorize(
        &self,
        who: &Principal,
        op: Operation,
        destination: &str,
    ) -> Result<(), PolicyError>;
    /// Maps a backend channel code to a destination: `Ok(None)` for an unknown code, `Err` when
    /// the policy itself failed (a plugin that trapped or is not loaded).
    async fn resolve_channel(&self, code: &str) -> Result<Option<String>, PolicyError>;
}

/// The built-in policy: the user is the CONNECT `userid` header, else `login`; everything is
/// allowed; no channel codes are known.
#[derive(Debug, Default, Clone, Copy)]
pub struct DefaultPolicy;

#[async_trait]
impl Policy for DefaultPolicy {
    async fn authenticate(&self, info: &ConnectInfo) -> Result<Principal, PolicyError> {
        let user = info
            .header("userid")
            .or_else(|| info.header("login"))
            .filter(|u| !u.is_empty())
            .map(str::to_string);
        Ok(Principal {
            user,
            attributes: Vec::new(),
        })
    }

    async fn authorize(&self, _: &Principal, _: Operation, _: &str) -> Result<(), PolicyError> {
        Ok(())
    }

    async fn resolve_channel(&self, _code: &str) -> Result<Option<String>, PolicyError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(headers: &[(&str, &str)]) -> ConnectInfo {
        ConnectInfo {
            tenant: "default".into(),
            transport: TransportKind::Tcp,
            remote_addr: None,
            request_headers: Vec::new(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[tokio::test]
    async fn userid_then_login() {
        let p = DefaultPolicy;
        let user = |h| async move { p.authenticate(&info(h)).await.unwrap().user };
        assert_eq!(
            user(&[("login", "l"), ("userid", "u")]).await,
            Some("u".into())
        );
        assert_eq!(user(&[("login", "l")]).await, Some("l".into()));
        assert_eq!(user(&[("userid", "")]).await, None);
        assert_eq!(user(&[]).await, None);
    }
}
