//! A SockJS server (the protocol sockjs-client 1.x speaks), independent of STOMP: `/info`, the
//! iframe page, and every transport (websocket, raw websocket, xhr polling and streaming,
//! eventsource, htmlfile, jsonp), with sessions that survive between polling requests.
//!
//! An application implements [`Handler`] and gets a [`Connection`] per session; a [`SockJs`]
//! service is mounted under a prefix with [`SockJs::mount`], or called from another handler
//! with [`SockJs::serve`]. `examples/sockjs_echo.rs` mounts the services of the protocol's test
//! suite; stompbox mounts one per tenant (the STOMP-over-SockJS transport).
//!
//! Sessions live in a map of this service; a sweeper task forgets those without a receiver for
//! the disconnect delay. The sweeper and the WebSocket tasks run on the task tracker of
//! [`Options::tasks`] and end at [`Options::shutdown`]. The session id alone names a session: the server id in the URL is for
//! load balancers and is ignored.

pub mod frame;
mod http;
mod session;
mod websocket;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use frame::{close as close_frame, json_string, messages as messages_frame};
pub use session::{Closed, Connection, OpenInfo, Sender, Transport};

/// A service's settings; [`Options::default`] has the protocol's usual values.
#[derive(Debug, Clone)]
pub struct Options {
    /// Whether the WebSocket transports are offered (`/info` says so, and their URLs exist).
    pub websocket: bool,
    /// Whether a `JSESSIONID` cookie is set on session requests, for load balancers that keep
    /// sessions sticky by that cookie.
    pub cookie_needed: bool,
    /// How often an idle receiver gets a heartbeat frame.
    pub heartbeat: Duration,
    /// How long a session without a receiver lives on.
    pub disconnect_delay: Duration,
    /// A streaming response ends after this many bytes, so the browser can free them.
    pub response_limit: usize,
    /// The sockjs-client script the iframe page loads; must be the version the client uses.
    pub client_url: String,
    /// The largest request body (`xhr_send`, `jsonp_send`) accepted.
    pub max_payload_bytes: usize,
    /// Queued outgoing bytes beyond which [`Sender::send`] waits for the client.
    pub max_queue_bytes: usize,
    /// The WebSocket subprotocols the websocket transports negotiate, most preferred first
    /// (none by default: no `Sec-WebSocket-Protocol` is answered).
    pub subprotocols: Vec<String>,
    /// Whether pages that send `Origin: null` (`file://` pages, sandboxed frames) get that
    /// origin echoed with credentials allowed, which sockjs-client's credentialed requests
    /// need; off, they get `*` as the protocol's own tests expect.
    pub null_origin_credentials: bool,
    /// Proxies whose `X-Forwarded-For` names the client a session is bound to.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Where the service's tasks run (the session sweeper and one task per WebSocket), so the
    /// owner can wait for them at shutdown.
    pub tasks: TaskTracker,
    /// Cancelled at shutdown: the sweeper stops, and WebSocket sessions the application has
    /// not closed within a grace period are closed with `3000 Go away!`.
    pub shutdown: CancellationToken,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            websocket: true,
            cookie_needed: false,
            heartbeat: Duration::from_secs(25),
            disconnect_delay: Duration::from_secs(5),
            response_limit: 128 * 1024,
            client_url: "https://cdn.jsdelivr.net/npm/sockjs-client@1/dist/sockjs.min.js".into(),
            max_payload_bytes: 1024 * 1024,
            max_queue_bytes: 256 * 1024,
            subprotocols: Vec::new(),
            null_origin_credentials: false,
            trusted_proxies: Vec::new(),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        }
    }
}

/// Why a session was not opened; the opening request is answered with it.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The HTTP status.
    pub status: StatusCode,
    /// A message for the client.
    pub message: String,
}

/// The application behind a service.
pub trait Handler: Send + Sync + 'static {
    /// A session opened: serve `connection` (usually on a task of its own). An `Err` refuses
    /// it: the opening request gets that status and message and the session is forgotten.
    fn open(&self, connection: Connection) -> Result<(), Refusal>;
}

impl<F> Handler for F
where
    F: Fn(Connection) -> Result<(), Refusal> + Send + Sync + 'static,
{
    fn open(&self, connection: Connection) -> Result<(), Refusal> {
        self(connection)
    }
}

/// One SockJS service: its options, its handler and its sessions.
pub struct SockJs {
    options: Options,
    handler: Box<dyn Handler>,
    /// Sessions carried by HTTP requests, with the client each is bound to.
    sessions: Mutex<HashMap<String, (Arc<session::Session>, Owner)>>,
    sweeper_started: std::sync::Once,
}

impl SockJs {
    /// A service; it starts its session sweeper on first use (inside a Tokio runtime), on
    /// [`Options::tasks`], until [`Options::shutdown`].
    pub fn new(options: Options, handler: impl Handler) -> Arc<Self> {
        Arc::new(SockJs {
            options,
            handler: Box::new(handler),
            sessions: Mutex::new(HashMap::new()),
            sweeper_started: std::sync::Once::new(),
        })
    }

    /// Its options.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Routes `prefix`, `prefix/` and everything under it to this service.
    pub fn mount<S: Clone + Send + Sync + 'static>(
        self: &Arc<Self>,
        router: Router<S>,
        prefix: &str,
    ) -> Router<S> {
        let prefix = prefix.trim_end_matches('/').to_string();
        let service = self.clone();
        let strip = prefix.clone();
        let handler = any(move |req: Request| {
            let service = service.clone();
            let strip = strip.clone();
            async move {
                let path = req
                    .uri()
                    .path()
                    .strip_prefix(strip.as_str())
                    .unwrap_or("")
                    .to_string();
                service.serve(req, &path).await
            }
        });
        router
            .route(&prefix, handler.clone())
            .route(&format!("{prefix}/"), handler.clone())
            .route(&format!("{prefix}/{{*rest}}"), handler)
    }

    /// Answers a request whose path below the service's prefix is `path` (`""`, `/info`,
    /// `/000/abc/xhr`, ...).
    pub async fn serve(self: Arc<Self>, req: Request, path: &str) -> Response {
        self.start_sweeper();
        let segments: Vec<&str> = match path {
            "" | "/" => return http::greeting(&req),
            p => p.strip_prefix('/').unwrap_or(p).split('/').collect(),
        };
        match segments.as_slice() {
            ["info"] => http::info(&self, &req),
            ["websocket"] if self.options.websocket => websocket::raw(self, req).await,
            [name] if http::is_iframe(name) => http::iframe(&self, &req),
            [server, session, transport] if valid_id(server) && valid_id(session) => {
                let session = (*session).to_string();
                match *transport {
                    "websocket" if self.options.websocket => websocket::framed(self, req).await,
                    "xhr" => http::receive(self, req, session, Transport::XhrPolling).await,
                    "xhr_streaming" => {
                        http::receive(self, req, session, Transport::XhrStreaming).await
                    }
                    "eventsource" => {
                        http::receive(self, req, session, Transport::EventSource).await
                    }
                    "htmlfile" => http::receive(self, req, session, Transport::HtmlFile).await,
                    "jsonp" => http::receive(self, req, session, Transport::JsonpPolling).await,
                    "xhr_send" => http::send(self, req, session, false).await,
                    "jsonp_send" => http::send(self, req, session, true).await,
                    _ => not_found(),
                }
            }
            _ => not_found(),
        }
    }

    /// The session with this id, if it lives and `req` comes from the client that opened it.
    /// A session id is not a secret to rely on (it travels in URLs), so a request for a session
    /// from another client address (or without the session's `JSESSIONID` where cookies are
    /// needed) is answered as if the session did not exist.
    fn session(&self, id: &str, req: &Request) -> Lookup {
        let Some((session, owner)) = self.sessions().get(id).cloned() else {
            return Lookup::Missing;
        };
        let asking = Owner::of(
            session::OpenInfo::peer_of(req),
            req.headers(),
            &self.options,
        );
        if owner.admits(&asking) {
            Lookup::Found(session)
        } else {
            Lookup::Foreign
        }
    }

    fn sessions(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (Arc<session::Session>, Owner)>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session: asks the handler, and on success registers it under `id` (when it
    /// is not a WebSocket session, which lives exactly as long as its socket).
    fn open(
        &self,
        id: Option<&str>,
        info: OpenInfo,
        open_sent: bool,
    ) -> Result<Arc<session::Session>, Refusal> {
        let session = session::Session::new(self.options.max_queue_bytes, open_sent);
        let owner = Owner::of(info.peer, &info.headers, &self.options);
        self.handler.open(Connection::new(info, session.clone()))?;
        if let Some(id) = id {
            self.sessions()
                .insert(id.to_string(), (session.clone(), owner));
        }
        Ok(session)
    }

    fn start_sweeper(self: &Arc<Self>) {
        self.sweeper_started.call_once(|| {
            let service = Arc::downgrade(self);
            let every = (self.options.disconnect_delay / 4)
                .clamp(Duration::from_millis(50), Duration::from_secs(1));
            let shutdown = self.options.shutdown.clone();
            self.options.tasks.spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    () = sweep(service, every) => {}
                }
            });
        });
    }
}

/// Forgets sessions that had no receiver for the disconnect delay, until the service is gone.
async fn sweep(service: Weak<SockJs>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(service) = service.upgrade() else {
            return;
        };
        let now = tokio::time::Instant::now();
        let delay = service.options.disconnect_delay;
        let mut expired = Vec::new();
        service.sessions().retain(|_, (session, _)| {
            let keep = !session.expired(delay, now);
            if !keep {
                expired.push(session.clone());
            }
            keep
        });
        for session in expired {
            session.close(session::INTERRUPTED.0, "Session timed out");
        }
    }
}

/// Server and session ids: anything but empty or containing a dot.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && !id.contains('.')
}

fn not_found() -> Response {
    plain(StatusCode::NOT_FOUND, "Not found.\n")
}

/// A `text/plain` answer.
fn plain(status: StatusCode, body: impl Into<Body>) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=UTF-8")
        .body(body.into())
        .unwrap_or_default()
}

/// `405` with `Allow`, no content type and no body, as the protocol asks.
fn method_not_allowed(allow: &'static str) -> Response {
    Response::builder()
        .status(StatusCode::METHOD_NOT_ALLOWED)
        .header("allow", allow)
        .body(Body::empty())
        .unwrap_or_default()
}

/// A number in `0..2^32` for the client's random generator; not for secrets.
fn entropy() -> u32 {
    crate::util::random_u64() as u32
}

/// What a session lookup found.
enum Lookup {
    /// The session, asked for by its own client.
    Found(Arc<session::Session>),
    /// No such session.
    Missing,
    /// A session of another client.
    Foreign,
}

/// The client a session is bound to: its address (behind a trusted proxy, the address the
/// proxy forwarded) and, where cookies are needed, its `JSESSIONID`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Owner {
    ip: Option<std::net::IpAddr>,
    cookie: Option<String>,
}

impl Owner {
    fn of(
        peer: Option<std::net::SocketAddr>,
        headers: &axum::http::HeaderMap,
        options: &Options,
    ) -> Owner {
        let peer_ip = peer.map(|p| p.ip());
        let ip = match peer_ip {
            Some(ip) if options.trusted_proxies.contains(&ip) => {
                forwarded_client(headers, &options.trusted_proxies).or(Some(ip))
            }
            other => other,
        };
        let cookie = options
            .cookie_needed
            .then(|| http::jsessionid(headers).map(str::to_string))
            .flatten();
        Owner { ip, cookie }
    }

    /// Whether a request from `asking` may use a session bound to `self`.
    fn admits(&self, asking: &Owner) -> bool {
        let same_ip = match (self.ip, asking.ip) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        let same_cookie = self.cookie.is_none() || self.cookie == asking.cookie;
        same_ip && same_cookie
    }
}

/// The client address in `X-Forwarded-For`: the last one not itself a trusted proxy.
fn forwarded_client(
    headers: &axum::http::HeaderMap,
    trusted: &[std::net::IpAddr],
) -> Option<std::net::IpAddr> {
    let hops: Vec<std::net::IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse().ok())
        .collect();
    hops.into_iter().rev().find(|ip| !trusted.contains(ip))
}

#[cfg(test)]
mod owner_tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn options(trusted: &[&str], cookie_needed: bool) -> Options {
        Options {
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            cookie_needed,
            ..Options::default()
        }
    }

    #[test]
    fn a_session_admits_its_own_client_only() {
        let o = options(&[], false);
        let alice = Owner::of(
            Some("10.0.0.5:4000".parse().unwrap()),
            &HeaderMap::new(),
            &o,
        );
        let again = Owner::of(
            Some("10.0.0.5:4100".parse().unwrap()),
            &HeaderMap::new(),
            &o,
        );
        let mallory = Owner::of(
            Some("10.0.0.6:4000".parse().unwrap()),
            &HeaderMap::new(),
            &o,
        );
        assert!(
            alice.admits(&again),
            "another connection of the same client"
        );
        assert!(!alice.admits(&mallory));
    }

    #[test]
    fn behind_a_trusted_proxy_the_forwarded_address_counts() {
        let o = options(&["10.0.0.1"], false);
        let via = |client: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-for", HeaderValue::from_str(client).unwrap());
            Owner::of(Some("10.0.0.1:9000".parse().unwrap()), &h, &o)
        };
        assert!(via("203.0.113.7").admits(&via("203.0.113.7, 10.0.0.1")));
        assert!(!via("203.0.113.7").admits(&via("203.0.113.8")));
        // An untrusted peer's X-Forwarded-For is ignored.
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        let direct = Owner::of(Some("198.51.100.1:1".parse().unwrap()), &h, &o);
        assert_eq!(direct.ip, Some("198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn with_cookies_needed_the_jsessionid_must_match() {
        let o = options(&[], true);
        let with = |cookie: &str| {
            let mut h = HeaderMap::new();
            h.insert("cookie", HeaderValue::from_str(cookie).unwrap());
            Owner::of(Some("10.0.0.5:1".parse().unwrap()), &h, &o)
        };
        assert!(with("JSESSIONID=abc").admits(&with("a=1; JSESSIONID=abc")));
        assert!(!with("JSESSIONID=abc").admits(&with("JSESSIONID=xyz")));
        assert!(!with("JSESSIONID=abc").admits(&Owner::of(
            Some("10.0.0.5:1".parse().unwrap()),
            &HeaderMap::new(),
            &o
        )));
    }
}
