//! SockJS protocol 0.3.3 (the one sockjs-client 1.6 speaks), checked against the example
//! server `examples/sockjs_echo.rs` in the manner of the sockjs-protocol test suite: the
//! greeting, the iframe page, /info, CORS preflights, session URLs, the websocket, raw
//! websocket, xhr polling, xhr_streaming, eventsource, htmlfile and jsonp transports, the
//! JSESSIONID cookie, JSON escaping, closing and aborted sessions, heartbeats, session expiry
//! and HTTP/1.1 keep-alive.
//!
//! Every test starts its own server on a free port and talks raw HTTP/1.1 over TCP (a small
//! client below), or WebSocket through tokio-tungstenite.

#[path = "../examples/sockjs_echo.rs"]
#[allow(dead_code)]
mod echo;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout};
use tokio_tungstenite::tungstenite::Message;

/// How long any single read may take before the test fails.
const WAIT: Duration = Duration::from_secs(2);
const NOT_CACHED: &str = "no-store, no-cache, no-transform, must-revalidate, max-age=0";
const GO_AWAY: &str = "c[3000,\"Go away!\"]\n";
const ANOTHER_CONNECTION: &str = "c[2010,\"Another connection still open\"]\n";
const INTERRUPTED: &str = "c[1002,\"Connection interrupted\"]\n";
const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

// ---------------------------------------------------------------------------------------------
// Server and helpers

/// Starts the example with the default heartbeat (25 s) and disconnect delay (5 s).
async fn server() -> SocketAddr {
    start(Duration::from_secs(25), Duration::from_secs(5)).await
}

async fn start(heartbeat: Duration, disconnect_delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = echo::app(heartbeat, disconnect_delay);
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// A fresh uuid-like session id.
fn sid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        nanos >> 32,
        (nanos >> 16) & 0xffff,
        nanos & 0xfff,
        n & 0xfff,
        (nanos ^ n.rotate_left(29)) & 0xffff_ffff_ffff
    )
}

/// `/<service>/000/<new session id>`: the base of a new session's transport URLs.
fn session(service: &str) -> String {
    format!("/{service}/000/{}", sid())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// A small HTTP/1.1 client

struct Response {
    status: u16,
    /// Names lowercased.
    headers: Vec<(String, String)>,
    /// Empty unless read whole.
    body: String,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// True when header `name` is absent or empty.
    fn lacks(&self, name: &str) -> bool {
        self.header(name).is_none_or(str::is_empty)
    }

    /// Content-Type with spaces removed, "" if absent.
    fn content_type(&self) -> String {
        self.header("content-type").unwrap_or("").replace(' ', "")
    }
}

/// How the rest of the current response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Framing {
    Done,
    Length(usize),
    Chunked,
    UntilClose,
}

/// One HTTP/1.1 connection.
struct Conn {
    tcp: TcpStream,
    host: String,
    /// Bytes read from the socket, not parsed yet.
    buf: Vec<u8>,
    framing: Framing,
    /// Body bytes read by [`Conn::expect`] and friends, not consumed yet.
    pending: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let tcp = TcpStream::connect(addr)
            .await
            .expect("connect to the test server");
        tcp.set_nodelay(true).unwrap();
        Conn {
            tcp,
            host: addr.to_string(),
            buf: Vec::new(),
            framing: Framing::Done,
            pending: Vec::new(),
        }
    }

    /// Writes a request; a POST always gets a Content-Length.
    async fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.tcp
            .write_all(req.as_bytes())
            .await
            .expect("send the request");
    }

    /// Reads more bytes into `buf`; false at end of stream.
    async fn fill(&mut self) -> bool {
        matches!(self.tcp.read_buf(&mut self.buf).await, Ok(n) if n > 0)
    }

    /// Reads a response's status line and headers; the body is left to read.
    async fn head(&mut self) -> Response {
        let end = timeout(WAIT, async {
            loop {
                if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                    return i;
                }
                assert!(
                    self.fill().await,
                    "expected a response head, the connection closed"
                );
            }
        })
        .await
        .expect("expected a response head within 2 s");
        let head = String::from_utf8(self.buf.drain(..end + 4).collect()).unwrap();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("expected an HTTP status line, got {status_line:?}"));
        let headers = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(':').expect("header line with a colon");
                (k.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        let r = Response {
            status,
            headers,
            body: String::new(),
        };
        self.pending.clear();
        self.framing = if status / 100 == 1 || status == 204 || status == 304 {
            Framing::Done
        } else if r
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            Framing::Chunked
        } else if let Some(n) = r.header("content-length") {
            Framing::Length(n.parse().expect("numeric Content-Length"))
        } else {
            Framing::UntilClose
        };
        r
    }

    /// A CRLF-terminated line of chunked framing, without the CRLF.
    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return line;
            }
            assert!(
                self.fill().await,
                "expected chunked framing, the connection closed"
            );
        }
    }

    /// The next piece of the body as the server sent it; `None` at its end.
    async fn next_chunk(&mut self) -> Option<Vec<u8>> {
        match self.framing {
            Framing::Done | Framing::Length(0) => {
                self.framing = Framing::Done;
                None
            }
            Framing::Length(n) => {
                if self.buf.is_empty() {
                    assert!(
                        self.fill().await,
                        "expected {n} more body bytes, the connection closed"
                    );
                }
                let take = n.min(self.buf.len());
                self.framing = Framing::Length(n - take);
                Some(self.buf.drain(..take).collect())
            }
            Framing::UntilClose => {
                if self.buf.is_empty() && !self.fill().await {
                    self.framing = Framing::Done;
                    return None;
                }
                Some(std::mem::take(&mut self.buf))
            }
            Framing::Chunked => {
                let line = self.line().await;
                let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                    .unwrap_or_else(|_| panic!("expected a chunk size, got {line:?}"));
                if size == 0 {
                    while !self.line().await.is_empty() {} // trailers
                    self.framing = Framing::Done;
                    return None;
                }
                while self.buf.len() < size + 2 {
                    assert!(
                        self.fill().await,
                        "expected a {size}-byte chunk, the connection closed"
                    );
                }
                let data = self.buf.drain(..size).collect();
                self.buf.drain(..2);
                Some(data)
            }
        }
    }

    /// The next chunk of the body (data as sent); `None` at the end of the response.
    async fn read_chunk(&mut self) -> Option<Vec<u8>> {
        timeout(WAIT, self.next_chunk())
            .await
            .expect("expected more of the response body (or its end) within 2 s")
    }

    /// The rest of the body.
    async fn read_body(&mut self) -> String {
        let mut body = std::mem::take(&mut self.pending);
        while let Some(chunk) = self.read_chunk().await {
            body.extend(chunk);
        }
        String::from_utf8(body).expect("expected a UTF-8 body")
    }

    /// Asserts the body continues with exactly `expected`, however it is split into chunks.
    async fn expect(&mut self, expected: &str) {
        let read = timeout(WAIT, async {
            while self.pending.len() < expected.len() {
                match self.next_chunk().await {
                    Some(chunk) => self.pending.extend(chunk),
                    None => break,
                }
            }
        })
        .await;
        let n = expected.len().min(self.pending.len());
        let got: Vec<u8> = self.pending.drain(..n).collect();
        let got = String::from_utf8_lossy(&got);
        assert!(
            read.is_ok(),
            "expected {expected:?} within 2 s, got only {got:?}"
        );
        assert_eq!(
            got, expected,
            "expected the response to continue with {expected:?}"
        );
    }

    /// Reads the body through the first `marker` and returns it all.
    async fn read_until(&mut self, marker: &str) -> String {
        let read = timeout(WAIT, async {
            loop {
                if let Some(i) = find(&self.pending, marker.as_bytes()) {
                    return Some(i);
                }
                let chunk = self.next_chunk().await?;
                self.pending.extend(chunk);
            }
        })
        .await;
        match read {
            Ok(Some(i)) => {
                let part: Vec<u8> = self.pending.drain(..i + marker.len()).collect();
                String::from_utf8(part).expect("expected a UTF-8 body")
            }
            _ => panic!(
                "expected {marker:?} in the response, got only {:?}",
                String::from_utf8_lossy(&self.pending)
            ),
        }
    }

    /// Asserts the response ends here.
    async fn expect_end(&mut self) {
        let rest = std::mem::take(&mut self.pending);
        assert!(
            rest.is_empty(),
            "expected the response to end, got {:?}",
            String::from_utf8_lossy(&rest)
        );
        if let Some(more) = self.read_chunk().await {
            panic!(
                "expected the response to end, got {:?}",
                String::from_utf8_lossy(&more)
            );
        }
    }
}

/// Sends a request on a new connection and reads the response head; the body is left to read.
async fn stream(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (Conn, Response) {
    let mut c = Conn::open(addr).await;
    c.send(method, path, headers, "").await;
    let r = c.head().await;
    (c, r)
}

/// Sends a request on a new connection and reads the whole response.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let mut c = Conn::open(addr).await;
    c.send(method, path, headers, body).await;
    let mut r = c.head().await;
    r.body = c.read_body().await;
    r
}

async fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, &[], "").await
}

async fn post(addr: SocketAddr, path: &str, body: &str) -> Response {
    request(addr, "POST", path, &[], body).await
}

/// Asserts a status and a whole body.
fn assert_reply(r: &Response, status: u16, body: &str, what: &str) {
    assert_eq!(
        r.status, status,
        "{what}: expected status {status} (body {:?})",
        r.body
    );
    assert_eq!(r.body, body, "{what}: expected body {body:?}");
}

/// Asserts a 500 whose body contains `needle`.
fn assert_error(r: &Response, needle: &str, what: &str) {
    assert_eq!(r.status, 500, "{what}: expected 500 (body {:?})", r.body);
    assert!(
        r.body.contains(needle),
        "{what}: expected the body to contain {needle:?}, got {:?}",
        r.body
    );
}

fn assert_404(r: &Response, what: &str) {
    assert_eq!(r.status, 404, "{what}: expected 404 (body {:?})", r.body);
    assert!(
        r.lacks("set-cookie"),
        "{what}: expected no Set-Cookie on a 404"
    );
}

fn assert_content_type(r: &Response, expected: &str, what: &str) {
    assert_eq!(
        r.content_type(),
        expected,
        "{what}: expected Content-Type {expected}"
    );
}

fn assert_not_cached(r: &Response, what: &str) {
    assert_eq!(
        r.header("cache-control"),
        Some(NOT_CACHED),
        "{what}: expected Cache-Control {NOT_CACHED:?}"
    );
    assert!(r.lacks("expires"), "{what}: expected no Expires header");
    assert!(
        r.lacks("last-modified"),
        "{what}: expected no Last-Modified header"
    );
}

/// Cache-Control with `public` and a max-age of at least 7 digits, and an Expires header.
fn assert_cached_long(r: &Response, what: &str) {
    let cc = r.header("cache-control").unwrap_or("");
    assert!(
        cc.contains("public"),
        "{what}: expected `public` in Cache-Control, got {cc:?}"
    );
    let age = cc.split("max-age=").nth(1).unwrap_or("");
    let digits = age.chars().take_while(char::is_ascii_digit).count();
    assert!(
        digits >= 7 && !age.starts_with('0'),
        "{what}: expected a max-age of 7+ digits (31536000) in Cache-Control, got {cc:?}"
    );
    assert!(!r.lacks("expires"), "{what}: expected an Expires header");
}

/// CORS headers for a request with `origin` (None: no Origin header).
fn assert_cors(r: &Response, origin: Option<&str>, what: &str) {
    match origin {
        Some(o) if o != "null" => {
            assert_eq!(
                r.header("access-control-allow-origin"),
                Some(o),
                "{what}: expected Access-Control-Allow-Origin: {o}"
            );
            assert_eq!(
                r.header("access-control-allow-credentials"),
                Some("true"),
                "{what}: expected Access-Control-Allow-Credentials: true"
            );
        }
        _ => {
            assert_eq!(
                r.header("access-control-allow-origin"),
                Some("*"),
                "{what}: expected Access-Control-Allow-Origin: *"
            );
            assert!(
                r.lacks("access-control-allow-credentials"),
                "{what}: expected no Access-Control-Allow-Credentials with origin *"
            );
        }
    }
}

/// Set-Cookie is `JSESSIONID=<value>; path=/...`.
fn assert_cookie(r: &Response, value: &str, what: &str) {
    let cookie = r
        .header("set-cookie")
        .unwrap_or_else(|| panic!("{what}: expected a Set-Cookie header"));
    let mut parts = cookie.split(';');
    let expected = format!("JSESSIONID={value}");
    assert_eq!(
        parts.next().map(str::trim),
        Some(expected.as_str()),
        "{what}: expected Set-Cookie to start with {expected}"
    );
    assert_eq!(
        parts
            .next()
            .map(|p| p.trim().to_ascii_lowercase())
            .as_deref(),
        Some("path=/"),
        "{what}: expected `path=/` as the second part of Set-Cookie {cookie:?}"
    );
}

/// Opens a session over xhr polling.
async fn open_xhr(addr: SocketAddr, base: &str) {
    let r = poll(addr, base).await;
    assert_reply(&r, 200, "o\n", "opening xhr");
}

/// One xhr poll.
async fn poll(addr: SocketAddr, base: &str) -> Response {
    post(addr, &format!("{base}/xhr"), "").await
}

/// Sends a message list over xhr_send, expecting 204.
async fn xhr_send(addr: SocketAddr, base: &str, body: &str) {
    let r = post(addr, &format!("{base}/xhr_send"), body).await;
    assert_reply(&r, 204, "", &format!("xhr_send {body:?}"));
}

// ---------------------------------------------------------------------------------------------
// WebSocket helpers

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn ws_connect(addr: SocketAddr, path: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
        .await
        .unwrap_or_else(|e| panic!("expected a websocket handshake at {path} to succeed: {e}"));
    ws
}

/// The next text message; `None` when the server closes the connection.
async fn ws_recv(ws: &mut Ws) -> Option<String> {
    timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return Some(t.as_str().to_string()),
                Some(Ok(Message::Binary(b))) => {
                    panic!("expected text messages only, got binary {b:?}")
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("expected a websocket message or close within 2 s")
}

/// Asserts the next message is `expected`; `None`: the server closes the connection.
async fn ws_expect(ws: &mut Ws, expected: Option<&str>, what: &str) {
    assert_eq!(ws_recv(ws).await.as_deref(), expected, "{what}");
}

async fn ws_send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("websocket send");
}

// ---------------------------------------------------------------------------------------------
// Greeting, iframe, info, OPTIONS

#[tokio::test]
async fn greeting() {
    let addr = server().await;
    for path in ["/echo", "/echo/"] {
        let r = get(addr, path).await;
        assert_reply(&r, 200, "Welcome to SockJS!\n", path);
        assert_content_type(&r, "text/plain;charset=UTF-8", path);
        assert!(r.lacks("set-cookie"), "{path}: expected no Set-Cookie");
    }
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let addr = server().await;
    for suffix in ["/a", "/a.html", "//", "///", "/a/a", "/a/a/", "/a/"] {
        assert_404(&get(addr, &format!("/echo{suffix}")).await, suffix);
    }
}

#[tokio::test]
async fn iframe_page() {
    let addr = server().await;
    for suffix in [
        "/iframe.html",
        "/iframe-a.html",
        "/iframe-.html",
        "/iframe-0.1.2.html",
        "/iframe-0.1.2abc-dirty.2144.html",
        "/iframe.html?t=1234",
        "/iframe-a.html?t=1234",
        "/iframe-0.1.2.html?t=123414",
        "/iframe-0.1.2abc-dirty.2144.html?t=qweqweq123",
    ] {
        let r = get(addr, &format!("/echo{suffix}")).await;
        assert_eq!(r.status, 200, "{suffix}: expected 200");
        assert_content_type(&r, "text/html;charset=UTF-8", suffix);
        assert_cached_long(&r, suffix);
        assert!(!r.lacks("etag"), "{suffix}: expected an ETag");
        assert!(
            r.lacks("last-modified"),
            "{suffix}: expected no Last-Modified"
        );
        assert!(r.lacks("set-cookie"), "{suffix}: expected no Set-Cookie");
        let body = r.body.trim();
        assert!(
            body.starts_with("<!DOCTYPE html>"),
            "{suffix}: expected the page to start with <!DOCTYPE html>"
        );
        let src = body
            .split("<script src=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_else(|| panic!("{suffix}: expected a <script src=\"...\"> in {body}"));
        assert!(
            src.starts_with('/') || src.starts_with("http"),
            "{suffix}: expected the sockjs URL to start with / or http, got {src:?}"
        );
        assert!(
            body.contains("SockJS.bootstrap_iframe();"),
            "{suffix}: expected SockJS.bootstrap_iframe() in the page"
        );
    }
}

#[tokio::test]
async fn iframe_etag_and_not_modified() {
    let addr = server().await;
    let r1 = get(addr, "/echo/iframe.html").await;
    let r2 = get(addr, "/echo/iframe.html").await;
    let etag = r1.header("etag").expect("expected an ETag").to_string();
    assert_eq!(
        r2.header("etag"),
        Some(etag.as_str()),
        "expected the same ETag twice"
    );
    let r = request(
        addr,
        "GET",
        "/echo/iframe.html",
        &[("If-None-Match", etag.as_str())],
        "",
    )
    .await;
    assert_eq!(r.status, 304, "If-None-Match with the ETag: expected 304");
    assert!(r.lacks("content-type"), "304: expected no Content-Type");
    assert_eq!(r.body, "", "304: expected an empty body");
}

#[tokio::test]
async fn invalid_iframe_urls_are_404() {
    let addr = server().await;
    for suffix in [
        "/iframe.htm",
        "/iframe",
        "/IFRAME.HTML",
        "/IFRAME",
        "/iframe.HTML",
        "/iframe.xml",
        "/iframe-/.html",
    ] {
        assert_404(&get(addr, &format!("/echo{suffix}")).await, suffix);
    }
}

#[tokio::test]
async fn info() {
    let addr = server().await;
    let r = get(addr, "/echo/info").await;
    assert_eq!(r.status, 200, "/info: expected 200");
    assert_content_type(&r, "application/json;charset=UTF-8", "/info");
    assert!(r.lacks("set-cookie"), "/info: expected no Set-Cookie");
    assert_not_cached(&r, "/info");
    assert_cors(&r, None, "/info");
    let info: serde_json::Value = serde_json::from_str(&r.body).expect("/info: expected JSON");
    assert_eq!(info["websocket"], true, "/info: expected websocket: true");
    assert!(
        info["cookie_needed"].is_boolean(),
        "/info: expected a boolean cookie_needed"
    );
    assert_eq!(
        info["origins"],
        serde_json::json!(["*:*"]),
        "/info: expected origins [\"*:*\"]"
    );
    let entropy = |v: &serde_json::Value| {
        v["entropy"]
            .as_u64()
            .filter(|e| *e <= u32::MAX as u64)
            .unwrap_or_else(|| {
                panic!(
                    "/info: expected an integer entropy in 0..2^32-1, got {}",
                    v["entropy"]
                )
            })
    };
    let second: serde_json::Value =
        serde_json::from_str(&get(addr, "/echo/info").await.body).unwrap();
    assert_ne!(
        entropy(&info),
        entropy(&second),
        "/info: expected entropy to differ between calls"
    );
}

#[tokio::test]
async fn info_of_the_other_services() {
    let addr = server().await;
    let r = get(addr, "/disabled_websocket_echo/info").await;
    assert_eq!(r.status, 200, "disabled_websocket_echo/info: expected 200");
    let info: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        info["websocket"], false,
        "disabled_websocket_echo/info: expected websocket: false"
    );

    let r = get(addr, "/cookie_needed_echo/info").await;
    assert_eq!(r.status, 200, "cookie_needed_echo/info: expected 200");
    assert!(
        r.lacks("set-cookie"),
        "cookie_needed_echo/info: expected no Set-Cookie"
    );
    let info: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        info["cookie_needed"], true,
        "cookie_needed_echo/info: expected cookie_needed: true"
    );
}

#[tokio::test]
async fn options_preflights() {
    let addr = server().await;
    for (path, methods) in [
        ("/echo/info", "OPTIONS, GET"),
        ("/echo/abc/abc/xhr", "OPTIONS, POST"),
        ("/echo/abc/abc/xhr_send", "OPTIONS, POST"),
        ("/echo/abc/abc/xhr_streaming", "OPTIONS, POST"),
    ] {
        for origin in [None, Some("test"), Some("null")] {
            let headers: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
            let r = request(addr, "OPTIONS", path, &headers, "").await;
            let what = format!("OPTIONS {path} with origin {origin:?}");
            assert_reply(&r, 204, "", &what);
            assert_cached_long(&r, &what);
            let max_age: u64 = r
                .header("access-control-max-age")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            assert!(
                max_age > 1_000_000,
                "{what}: expected Access-Control-Max-Age > 1000000, got {max_age}"
            );
            assert_eq!(
                r.header("access-control-allow-methods"),
                Some(methods),
                "{what}: expected Access-Control-Allow-Methods: {methods}"
            );
            assert_cors(&r, origin, &what);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Session URLs and the basic protocol

#[tokio::test]
async fn session_urls_take_any_value() {
    let addr = server().await;
    for part in ["/a/a", "/_/_", "/1/1", "/abcdefgh_i-j%20/abcdefg_i-j%20"] {
        let r = post(addr, &format!("/echo{part}/xhr"), "").await;
        assert_reply(&r, 200, "o\n", part);
    }
}

#[tokio::test]
async fn invalid_session_urls_are_404() {
    let addr = server().await;
    for part in ["//", "/a./a", "/a/a.", "/./.", "/", "///"] {
        let path = format!("/echo{part}/xhr");
        assert_404(&get(addr, &path).await, &format!("GET {path}"));
        assert_404(&post(addr, &path, "").await, &format!("POST {path}"));
    }
}

#[tokio::test]
async fn server_id_is_ignored() {
    let addr = server().await;
    let id = sid();
    open_xhr(addr, &format!("/echo/000/{id}")).await;
    xhr_send(addr, &format!("/echo/000/{id}"), "[\"a\"]").await;
    let r = post(addr, &format!("/echo/999/{id}/xhr"), "").await;
    assert_reply(&r, 200, "a[\"a\"]\n", "xhr with another server id");
}

#[tokio::test]
async fn simple_session() {
    let addr = server().await;
    let base = session("echo");
    open_xhr(addr, &base).await;
    xhr_send(addr, &base, "[\"a\"]").await;
    assert_reply(
        &poll(addr, &base).await,
        200,
        "a[\"a\"]\n",
        "xhr after xhr_send",
    );
    let r = post(addr, "/echo/000/bad_session/xhr_send", "[\"a\"]").await;
    assert_404(&r, "xhr_send to an unknown session");
}

#[tokio::test]
async fn a_second_receiver_is_refused() {
    let addr = server().await;
    let base = session("echo");
    open_xhr(addr, &base).await;
    let mut waiting = Conn::open(addr).await;
    waiting.send("POST", &format!("{base}/xhr"), &[], "").await;
    sleep(Duration::from_millis(250)).await;
    let r = poll(addr, &base).await;
    assert_reply(&r, 200, ANOTHER_CONNECTION, "second xhr while one waits");
}

#[tokio::test]
async fn close_service_over_xhr() {
    let addr = server().await;
    let base = session("close");
    open_xhr(addr, &base).await;
    for i in 1..=2 {
        let r = poll(addr, &base).await;
        assert_reply(
            &r,
            200,
            GO_AWAY,
            &format!("xhr #{i} after open on the close service"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket

#[tokio::test]
async fn websocket_transport() {
    let addr = server().await;
    let mut ws = ws_connect(addr, &format!("{}/websocket", session("echo"))).await;
    ws_expect(&mut ws, Some("o"), "expected the open frame").await;
    ws_send(&mut ws, "").await; // empty messages are ignored
    ws_send(&mut ws, "[\"a\"]").await;
    ws_expect(&mut ws, Some("a[\"a\"]"), "expected the echo a[\"a\"]").await;
}

#[tokio::test]
async fn websocket_close_service() {
    let addr = server().await;
    let mut ws = ws_connect(addr, &format!("{}/websocket", session("close"))).await;
    ws_expect(&mut ws, Some("o"), "expected the open frame").await;
    ws_expect(
        &mut ws,
        Some("c[3000,\"Go away!\"]"),
        "expected the close frame",
    )
    .await;
    ws_expect(
        &mut ws,
        None,
        "expected the connection to close after the close frame",
    )
    .await;
}

#[tokio::test]
async fn websocket_broken_json_closes_the_connection() {
    let addr = server().await;
    let mut ws = ws_connect(addr, &format!("{}/websocket", session("echo"))).await;
    ws_expect(&mut ws, Some("o"), "expected the open frame").await;
    ws_send(&mut ws, "[\"a").await;
    ws_expect(
        &mut ws,
        None,
        "expected the server to close the connection on broken JSON",
    )
    .await;
}

#[tokio::test]
async fn two_websockets_with_one_session_id_and_reuse() {
    let addr = server().await;
    let path = format!("{}/websocket", session("echo"));
    let mut ws1 = ws_connect(addr, &path).await;
    ws_expect(&mut ws1, Some("o"), "ws1: expected the open frame").await;
    let mut ws2 = ws_connect(addr, &path).await;
    ws_expect(&mut ws2, Some("o"), "ws2: expected the open frame").await;
    // A single JSON string (not an array) is a valid message too, as in the protocol suite.
    ws_send(&mut ws1, "\"a\"").await;
    ws_expect(&mut ws1, Some("a[\"a\"]"), "ws1: expected a[\"a\"]").await;
    ws_send(&mut ws2, "\"b\"").await;
    ws_expect(&mut ws2, Some("a[\"b\"]"), "ws2: expected a[\"b\"]").await;
    ws1.close(None).await.unwrap();
    ws2.close(None).await.unwrap();

    let mut ws = ws_connect(addr, &path).await;
    ws_expect(&mut ws, Some("o"), "reused id: expected the open frame").await;
    ws_send(&mut ws, "[\"a\"]").await;
    ws_expect(&mut ws, Some("a[\"a\"]"), "reused id: expected a[\"a\"]").await;
}

#[tokio::test]
async fn websocket_http_errors() {
    let addr = server().await;
    let r = get(addr, "/echo/0/0/websocket").await;
    assert_eq!(r.status, 400, "GET without upgrade headers: expected 400");
    assert!(
        r.body.contains("Can \"Upgrade\" only to \"WebSocket\"."),
        "GET without upgrade headers: expected the body to say Can \"Upgrade\" only to \"WebSocket\"., got {:?}",
        r.body
    );
    let upgrade_close = [("Upgrade", "WebSocket"), ("Connection", "close")];
    let r = request(addr, "GET", "/echo/0/0/websocket", &upgrade_close, "").await;
    assert_eq!(r.status, 400, "GET with Connection: close: expected 400");

    let upgrade: &[(&str, &str)] = &[("Upgrade", "WebSocket"), ("Connection", "Upgrade")];
    for headers in [upgrade, &[]] {
        let r = request(addr, "POST", "/echo/0/0/websocket", headers, "").await;
        let what = format!("POST to websocket with {headers:?}");
        assert_reply(&r, 405, "", &what);
        assert!(r.lacks("content-type"), "{what}: expected no Content-Type");
        assert!(!r.lacks("allow"), "{what}: expected an Allow header");
    }
}

#[tokio::test]
async fn websocket_handshake_with_keep_alive_upgrade_connection_header() {
    let addr = server().await;
    let headers = [
        ("Upgrade", "websocket"),
        ("Connection", "keep-alive, Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "x3JJHMbDL1EzLkh9GBhXDw=="),
    ];
    let (_conn, r) = stream(
        addr,
        "GET",
        &format!("{}/websocket", session("echo")),
        &headers,
    )
    .await;
    assert_eq!(r.status, 101, "expected 101 Switching Protocols");
    assert_eq!(
        r.header("sec-websocket-accept"),
        Some("HSmrc0sMlYUkAGmm5OPpG2HaGWk="),
        "expected Sec-WebSocket-Accept: HSmrc0sMlYUkAGmm5OPpG2HaGWk="
    );
}

/// A websocket over raw TCP, for what a WebSocket library will not send: fragments with a ping
/// between them, unmasked frames, invalid text.
async fn raw_ws(addr: SocketAddr, path: &str) -> Conn {
    let headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "x3JJHMbDL1EzLkh9GBhXDw=="),
    ];
    let (conn, r) = stream(addr, "GET", path, &headers).await;
    assert_eq!(r.status, 101, "expected 101 Switching Protocols at {path}");
    conn
}

/// A client frame, masked unless `mask` is false.
fn ws_frame(fin: bool, opcode: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![(u8::from(fin) << 7) | opcode];
    let bit = if mask { 0x80 } else { 0 };
    assert!(payload.len() < 126, "short frames only");
    f.push(bit | payload.len() as u8);
    if mask {
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

async fn ws_write(conn: &mut Conn, frames: &[Vec<u8>]) {
    conn.tcp.write_all(&frames.concat()).await.unwrap();
}

/// The next server frame (opcode, payload); `None` when the connection ends.
async fn ws_read(conn: &mut Conn) -> Option<(u8, Vec<u8>)> {
    timeout(WAIT, async {
        loop {
            if conn.buf.len() >= 2 {
                let (len, at) = match conn.buf[1] & 0x7f {
                    126 if conn.buf.len() >= 4 => (
                        usize::from(u16::from_be_bytes([conn.buf[2], conn.buf[3]])),
                        4,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (usize::from(n), 2),
                };
                if len != usize::MAX && conn.buf.len() >= at + len {
                    let opcode = conn.buf[0] & 0x0f;
                    let frame: Vec<u8> = conn.buf.drain(..at + len).collect();
                    return Some((opcode, frame[at..].to_vec()));
                }
            }
            if !conn.fill().await {
                return None;
            }
        }
    })
    .await
    .expect("expected a websocket frame or the end within 2 s")
}

/// Reads up to the server's close frame and returns its code.
async fn ws_close_code(conn: &mut Conn) -> Option<u16> {
    while let Some((opcode, payload)) = ws_read(conn).await {
        if opcode == 0x8 {
            return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
    None
}

#[tokio::test]
async fn websocket_fragmented_message_with_a_ping_between() {
    let addr = server().await;
    let mut ws = raw_ws(addr, &format!("{}/websocket", session("echo"))).await;
    assert_eq!(ws_read(&mut ws).await, Some((0x1, b"o".to_vec())));
    ws_write(
        &mut ws,
        &[
            ws_frame(false, 0x1, b"[\"a", true),
            ws_frame(true, 0x9, b"ping!", true),
            ws_frame(false, 0x0, b"b", true),
            ws_frame(true, 0x0, b"c\"]", true),
        ],
    )
    .await;
    assert_eq!(
        ws_read(&mut ws).await,
        Some((0xA, b"ping!".to_vec())),
        "expected the ping answered with its payload"
    );
    assert_eq!(
        ws_read(&mut ws).await,
        Some((0x1, b"a[\"abc\"]".to_vec())),
        "expected the three fragments echoed as one message"
    );
}

#[tokio::test]
async fn websocket_protocol_violations_close_with_their_codes() {
    let addr = server().await;
    let cases: [(&str, Vec<u8>, u16); 4] = [
        (
            "unmasked frame",
            ws_frame(true, 0x1, b"[\"a\"]", false),
            1002,
        ),
        (
            "text that is not UTF-8",
            ws_frame(true, 0x1, &[b'"', 0xff, b'"'], true),
            1007,
        ),
        (
            "continuation without a message",
            ws_frame(true, 0x0, b"[]", true),
            1002,
        ),
        // A header announcing 2 MiB, over the 1 MiB limit: refused before the payload.
        (
            "message over the size limit",
            vec![0x81, 0xff, 0, 0, 0, 0, 0, 0x20, 0, 0, 1, 2, 3, 4],
            1009,
        ),
    ];
    for (what, frame, code) in cases {
        let mut ws = raw_ws(addr, &format!("{}/websocket", session("echo"))).await;
        assert_eq!(ws_read(&mut ws).await, Some((0x1, b"o".to_vec())), "{what}");
        ws_write(&mut ws, &[frame]).await;
        assert_eq!(ws_close_code(&mut ws).await, Some(code), "{what}");
        assert_eq!(
            ws_read(&mut ws).await,
            None,
            "{what}: expected the connection to end"
        );
    }
}

#[tokio::test]
async fn websocket_client_close_is_answered() {
    let addr = server().await;
    let mut ws = raw_ws(addr, "/echo/websocket").await;
    ws_write(&mut ws, &[ws_frame(true, 0x8, &[3, 232], true)]).await;
    assert_eq!(ws_close_code(&mut ws).await, Some(1000));
    assert_eq!(ws_read(&mut ws).await, None);
}

#[tokio::test]
async fn websocket_answers_no_subprotocol_unless_configured() {
    // The echo services negotiate none: an offered subprotocol is not echoed back.
    let addr = server().await;
    for path in [
        "/echo/websocket".to_string(),
        format!("{}/websocket", session("echo")),
    ] {
        let headers = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "x3JJHMbDL1EzLkh9GBhXDw=="),
            ("Sec-WebSocket-Protocol", "v12.stomp"),
        ];
        let (_conn, r) = stream(addr, "GET", &path, &headers).await;
        assert_eq!(r.status, 101, "{path}: expected 101");
        assert!(
            r.lacks("sec-websocket-protocol"),
            "{path}: expected no subprotocol"
        );
    }
}

#[tokio::test]
async fn disabled_websocket_is_404() {
    let addr = server().await;
    assert_404(
        &get(addr, "/disabled_websocket_echo/0/0/websocket").await,
        "disabled websocket, plain GET",
    );
    let headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "x3JJHMbDL1EzLkh9GBhXDw=="),
    ];
    let r = request(
        addr,
        "GET",
        &format!("{}/websocket", session("disabled_websocket_echo")),
        &headers,
        "",
    )
    .await;
    assert_404(&r, "disabled websocket, handshake");
}

#[tokio::test]
async fn raw_websocket_echo() {
    let addr = server().await;
    let mut ws = ws_connect(addr, "/echo/websocket").await;
    ws_send(&mut ws, "Hello world!\u{ffff}").await;
    ws_expect(
        &mut ws,
        Some("Hello world!\u{ffff}"),
        "expected the raw message back, without SockJS framing",
    )
    .await;
}

#[tokio::test]
async fn raw_websocket_close_service() {
    let addr = server().await;
    let mut ws = ws_connect(addr, "/close/websocket").await;
    ws_expect(
        &mut ws,
        None,
        "expected the connection to close without any message",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// xhr polling

#[tokio::test]
async fn xhr_polling_transport() {
    let addr = server().await;
    let base = session("echo");
    let r = poll(addr, &base).await;
    assert_reply(&r, 200, "o\n", "xhr");
    assert_content_type(&r, "application/javascript;charset=UTF-8", "xhr");
    assert_cors(&r, None, "xhr");
    assert_not_cached(&r, "xhr");

    let r = post(addr, &format!("{base}/xhr_send"), "[\"x\"]").await;
    assert_reply(&r, 204, "", "xhr_send");
    assert_content_type(&r, "text/plain;charset=UTF-8", "xhr_send");
    assert_cors(&r, None, "xhr_send");
    assert_not_cached(&r, "xhr_send");

    assert_reply(
        &poll(addr, &base).await,
        200,
        "a[\"x\"]\n",
        "xhr after xhr_send",
    );
}

#[tokio::test]
async fn xhr_send_to_an_unknown_session_is_404() {
    let addr = server().await;
    let r = post(addr, &format!("{}/xhr_send", session("echo")), "[\"x\"]").await;
    assert_404(&r, "xhr_send to a session never opened");
}

#[tokio::test]
async fn xhr_send_invalid_payloads() {
    let addr = server().await;
    let base = session("echo");
    open_xhr(addr, &base).await;
    let r = post(addr, &format!("{base}/xhr_send"), "[\"x").await;
    assert_error(&r, "Broken JSON encoding.", "broken JSON");
    let r = post(addr, &format!("{base}/xhr_send"), "").await;
    assert_error(&r, "Payload expected.", "empty payload");
    // The protocol wants an array; a bare string is not a message.
    let r = post(addr, &format!("{base}/xhr_send"), "\"x\"").await;
    assert_error(&r, "Broken JSON encoding.", "a bare string");
    xhr_send(addr, &base, "[\"a\"]").await;
    assert_reply(
        &poll(addr, &base).await,
        200,
        "a[\"a\"]\n",
        "xhr after the errors",
    );
}

#[tokio::test]
async fn xhr_send_accepts_any_content_type() {
    let addr = server().await;
    let base = session("echo");
    open_xhr(addr, &base).await;
    let types = [
        "text/plain",
        "T",
        "application/json",
        "application/xml",
        "",
        "application/json; charset=utf-8",
        "text/xml; charset=utf-8",
        "text/xml",
    ];
    for ct in types {
        let r = request(
            addr,
            "POST",
            &format!("{base}/xhr_send"),
            &[("Content-Type", ct)],
            "[\"a\"]",
        )
        .await;
        assert_reply(&r, 204, "", &format!("xhr_send with Content-Type {ct:?}"));
    }
    let expected = format!("a[{}]\n", vec!["\"a\""; types.len()].join(","));
    assert_reply(
        &poll(addr, &base).await,
        200,
        &expected,
        "xhr after 8 sends",
    );
}

#[tokio::test]
async fn xhr_allows_the_requested_headers() {
    let addr = server().await;
    let r = request(
        addr,
        "POST",
        &format!("{}/xhr", session("echo")),
        &[("Access-Control-Request-Headers", "a, b, c")],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "expected 200");
    assert_cors(&r, None, "xhr with request headers");
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("a, b, c"),
        "expected Access-Control-Allow-Headers: a, b, c"
    );

    let r = request(
        addr,
        "POST",
        &format!("{}/xhr", session("echo")),
        &[("Access-Control-Request-Headers", "")],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "expected 200");
    assert_cors(&r, None, "xhr with empty request headers");
    assert!(
        r.lacks("access-control-allow-headers"),
        "empty request headers: expected no Access-Control-Allow-Headers"
    );

    let r = post(addr, &format!("{}/xhr", session("echo")), "").await;
    assert_eq!(r.status, 200, "expected 200");
    assert!(
        r.lacks("access-control-allow-headers"),
        "no request headers: expected no Access-Control-Allow-Headers"
    );
}

// ---------------------------------------------------------------------------------------------
// Streaming transports

fn prelude() -> String {
    "h".repeat(2048) + "\n"
}

#[tokio::test]
async fn xhr_streaming_transport() {
    let addr = server().await;
    let base = session("echo");
    let (mut s, r) = stream(addr, "POST", &format!("{base}/xhr_streaming"), &[]).await;
    assert_eq!(r.status, 200, "xhr_streaming: expected 200");
    assert_content_type(&r, "application/javascript;charset=UTF-8", "xhr_streaming");
    assert_cors(&r, None, "xhr_streaming");
    assert_not_cached(&r, "xhr_streaming");
    s.expect(&prelude()).await;
    s.expect("o\n").await;
    xhr_send(addr, &base, "[\"x\"]").await;
    s.expect("a[\"x\"]\n").await;
}

#[tokio::test]
async fn xhr_streaming_response_limit() {
    let addr = server().await;
    let base = session("echo");
    let (mut s, r) = stream(addr, "POST", &format!("{base}/xhr_streaming"), &[]).await;
    assert_eq!(r.status, 200, "xhr_streaming: expected 200");
    s.expect(&prelude()).await;
    s.expect("o\n").await;
    let msg = format!("\"{}\"", "x".repeat(128));
    for _ in 0..31 {
        xhr_send(addr, &base, &format!("[{msg}]")).await;
        s.expect(&format!("a[{msg}]\n")).await;
    }
    s.expect_end().await;
}

#[tokio::test]
async fn eventsource_transport() {
    let addr = server().await;
    let base = session("echo");
    let (mut s, r) = stream(addr, "GET", &format!("{base}/eventsource"), &[]).await;
    assert_eq!(r.status, 200, "eventsource: expected 200");
    assert_content_type(&r, "text/event-stream;charset=UTF-8", "eventsource");
    assert_not_cached(&r, "eventsource");
    s.expect("\r\n").await;
    s.expect("data: o\r\n\r\n").await;
    xhr_send(addr, &base, "[\"x\"]").await;
    s.expect("data: a[\"x\"]\r\n\r\n").await;
    xhr_send(addr, &base, r#"["  \u0000\n\r "]"#).await;
    s.expect("data: a[\"  \\u0000\\n\\r \"]\r\n\r\n").await;
}

#[tokio::test]
async fn eventsource_response_limit() {
    let addr = server().await;
    let base = session("echo");
    let (mut s, r) = stream(addr, "GET", &format!("{base}/eventsource"), &[]).await;
    assert_eq!(r.status, 200, "eventsource: expected 200");
    s.expect("\r\n").await;
    s.expect("data: o\r\n\r\n").await;
    let msg = "x".repeat(4096);
    xhr_send(addr, &base, &format!("[\"{msg}\"]")).await;
    s.expect(&format!("data: a[\"{msg}\"]\r\n\r\n")).await;
    s.expect_end().await;
}

const HTMLFILE_OPEN: &str = "<script>\np(\"o\");\n</script>\r\n";

#[tokio::test]
async fn htmlfile_transport() {
    let addr = server().await;
    let base = session("echo");
    let (mut s, r) = stream(addr, "GET", &format!("{base}/htmlfile?c=%63allback"), &[]).await;
    assert_eq!(r.status, 200, "htmlfile: expected 200");
    assert_content_type(&r, "text/html;charset=UTF-8", "htmlfile");
    assert_not_cached(&r, "htmlfile");
    let first = s.read_until(HTMLFILE_OPEN).await;
    let page = &first[..first.len() - HTMLFILE_OPEN.len()];
    for needle in [
        "var c = parent.callback;",
        "c.start();",
        "function p(d) {c.message(d);};",
    ] {
        assert!(
            page.contains(needle),
            "htmlfile: expected the page to contain {needle:?}, got {page:?}"
        );
    }
    assert!(
        page.len() > 1024,
        "htmlfile: expected the page to be over 1024 bytes, it is {}",
        page.len()
    );
    xhr_send(addr, &base, "[\"x\"]").await;
    s.expect("<script>\np(\"a[\\\"x\\\"]\");\n</script>\r\n")
        .await;
}

#[tokio::test]
async fn htmlfile_callback_errors() {
    let addr = server().await;
    let r = get(addr, "/echo/a/a/htmlfile").await;
    assert_error(&r, "\"callback\" parameter required", "htmlfile without c");
    for c in ["bad%3Cname", "%20", "*", "abc(", "abc%28"] {
        let r = get(addr, &format!("/echo/a/a/htmlfile?c={c}")).await;
        assert_error(
            &r,
            "invalid \"callback\" parameter",
            &format!("htmlfile with c={c}"),
        );
    }
}

#[tokio::test]
async fn htmlfile_response_limit() {
    let addr = server().await;
    let base = session("echo");
    let (mut s, r) = stream(addr, "GET", &format!("{base}/htmlfile?c=callback"), &[]).await;
    assert_eq!(r.status, 200, "htmlfile: expected 200");
    s.read_until(HTMLFILE_OPEN).await;
    let msg = "x".repeat(4096);
    xhr_send(addr, &base, &format!("[\"{msg}\"]")).await;
    s.expect(&format!(
        "<script>\np(\"a[\\\"{msg}\\\"]\");\n</script>\r\n"
    ))
    .await;
    s.expect_end().await;
}

// ---------------------------------------------------------------------------------------------
// jsonp

async fn jsonp_send(
    addr: SocketAddr,
    base: &str,
    content_type: (&str, &str),
    body: &str,
) -> Response {
    request(
        addr,
        "POST",
        &format!("{base}/jsonp_send"),
        &[content_type],
        body,
    )
    .await
}

#[tokio::test]
async fn jsonp_transport() {
    let addr = server().await;
    let base = session("echo");
    let r = get(addr, &format!("{base}/jsonp?c=%63allback")).await;
    assert_reply(&r, 200, "/**/callback(\"o\");\r\n", "jsonp");
    assert_content_type(&r, "application/javascript;charset=UTF-8", "jsonp");
    assert_not_cached(&r, "jsonp");

    let r = jsonp_send(addr, &base, FORM, "d=%5B%22x%22%5D").await;
    assert_reply(&r, 200, "ok", "jsonp_send");
    assert_content_type(&r, "text/plain;charset=UTF-8", "jsonp_send");
    assert_not_cached(&r, "jsonp_send");

    let r = get(addr, &format!("{base}/jsonp?c=%63allback")).await;
    assert_reply(
        &r,
        200,
        "/**/callback(\"a[\\\"x\\\"]\");\r\n",
        "jsonp after jsonp_send",
    );
}

#[tokio::test]
async fn jsonp_without_callback() {
    let addr = server().await;
    let r = get(addr, "/echo/a/a/jsonp").await;
    assert_error(&r, "\"callback\" parameter required", "jsonp without c");
}

#[tokio::test]
async fn jsonp_send_invalid_payloads() {
    let addr = server().await;
    let base = session("echo");
    assert_reply(
        &get(addr, &format!("{base}/jsonp?c=x")).await,
        200,
        "/**/x(\"o\");\r\n",
        "jsonp open",
    );
    let r = jsonp_send(addr, &base, FORM, "d=%5B%22x").await;
    assert_error(&r, "Broken JSON encoding.", "jsonp_send broken JSON");
    for body in ["", "d=", "p=p"] {
        let r = jsonp_send(addr, &base, FORM, body).await;
        assert_error(&r, "Payload expected.", &format!("jsonp_send {body:?}"));
    }
    assert_reply(
        &jsonp_send(addr, &base, FORM, "d=%5B%22b%22%5D").await,
        200,
        "ok",
        "jsonp_send after the errors",
    );
    assert_reply(
        &get(addr, &format!("{base}/jsonp?c=x")).await,
        200,
        "/**/x(\"a[\\\"b\\\"]\");\r\n",
        "jsonp after the errors",
    );
}

#[tokio::test]
async fn jsonp_send_content_types() {
    let addr = server().await;
    let base = session("echo");
    assert_reply(
        &get(addr, &format!("{base}/jsonp?c=x")).await,
        200,
        "/**/x(\"o\");\r\n",
        "jsonp open",
    );
    assert_reply(
        &jsonp_send(addr, &base, FORM, "d=%5B%22abc%22%5D").await,
        200,
        "ok",
        "form-encoded jsonp_send",
    );
    let text = ("Content-Type", "text/plain");
    assert_reply(
        &jsonp_send(addr, &base, text, "[\"%61bc\"]").await,
        200,
        "ok",
        "text/plain jsonp_send",
    );
    let r = get(addr, &format!("{base}/jsonp?c=x")).await;
    assert_reply(
        &r,
        200,
        "/**/x(\"a[\\\"abc\\\",\\\"%61bc\\\"]\");\r\n",
        "jsonp after both sends",
    );
}

#[tokio::test]
async fn jsonp_close_service() {
    let addr = server().await;
    let base = session("close");
    assert_reply(
        &get(addr, &format!("{base}/jsonp?c=x")).await,
        200,
        "/**/x(\"o\");\r\n",
        "jsonp open",
    );
    for i in 1..=2 {
        let r = get(addr, &format!("{base}/jsonp?c=x")).await;
        assert_reply(
            &r,
            200,
            "/**/x(\"c[3000,\\\"Go away!\\\"]\");\r\n",
            &format!("jsonp #{i} after open"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// JSESSIONID

#[tokio::test]
async fn jsessionid_cookie() {
    let addr = server().await;
    let base = session("cookie_needed_echo");
    let r = poll(addr, &base).await;
    assert_reply(&r, 200, "o\n", "xhr");
    assert_cookie(&r, "dummy", "xhr");

    let cookie = [("Cookie", "JSESSIONID=abcdef")];
    let r = request(
        addr,
        "POST",
        &format!("{}/xhr", session("cookie_needed_echo")),
        &cookie,
        "",
    )
    .await;
    assert_reply(&r, 200, "o\n", "xhr with a cookie");
    assert_cookie(&r, "abcdef", "xhr with a cookie");

    for (method, transport) in [
        ("POST", "xhr_streaming"),
        ("GET", "eventsource"),
        ("GET", "htmlfile?c=%63allback"),
    ] {
        let (_s, r) = stream(
            addr,
            method,
            &format!("{}/{transport}", session("cookie_needed_echo")),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{transport}: expected 200");
        assert_cookie(&r, "dummy", transport);
    }

    let base = session("cookie_needed_echo");
    let r = get(addr, &format!("{base}/jsonp?c=%63allback")).await;
    assert_reply(&r, 200, "/**/callback(\"o\");\r\n", "jsonp");
    assert_cookie(&r, "dummy", "jsonp");
    let r = jsonp_send(addr, &base, FORM, "d=%5B%22x%22%5D").await;
    assert_reply(&r, 200, "ok", "jsonp_send");
    assert_cookie(&r, "dummy", "jsonp_send");

    let r = post(addr, &format!("{}/xhr", session("echo")), "").await;
    assert!(
        r.lacks("set-cookie"),
        "echo service xhr: expected no Set-Cookie"
    );
}

// ---------------------------------------------------------------------------------------------
// JSON encoding

fn chars(ranges: &[(u32, u32)]) -> Vec<char> {
    ranges
        .iter()
        .flat_map(|&(a, b)| a..=b)
        .map(|c| char::from_u32(c).unwrap())
        .collect()
}

fn escaped(chars: &[char]) -> String {
    chars
        .iter()
        .map(|c| format!("\\u{:04x}", *c as u32))
        .collect()
}

#[tokio::test]
async fn server_escapes_dangerous_characters() {
    let addr = server().await;
    let base = session("echo");
    open_xhr(addr, &base).await;
    let cs = chars(&[
        (0x200c, 0x200f),
        (0x2028, 0x202f),
        (0x2060, 0x206f),
        (0xfff0, 0xffff),
    ]);
    let raw: String = cs.iter().collect();
    xhr_send(addr, &base, &format!("[\"{raw}\"]")).await;
    let r = poll(addr, &base).await;
    let expected = format!("a[\"{}\"]\n", escaped(&cs));
    assert_reply(
        &r,
        200,
        &expected,
        "xhr: expected every character as a lowercase \\uXXXX escape",
    );
}

#[tokio::test]
async fn server_decodes_escapes() {
    let addr = server().await;
    let base = session("echo");
    open_xhr(addr, &base).await;
    let cs = chars(&[
        (0x0000, 0x001f),
        (0x007f, 0x009f),
        (0x00ad, 0x00ad),
        (0x0600, 0x0604),
        (0x070f, 0x070f),
        (0x17b4, 0x17b5),
        (0x2000, 0x20ff),
        (0xfeff, 0xfeff),
        (0xfff0, 0xffff),
    ]);
    xhr_send(addr, &base, &format!("[\"{}\"]", escaped(&cs))).await;
    let r = poll(addr, &base).await;
    assert_eq!(r.status, 200, "xhr: expected 200");
    let messages: Vec<String> = r
        .body
        .strip_prefix('a')
        .and_then(|b| b.strip_suffix('\n'))
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or_else(|| panic!("expected an a[...] frame, got {:?}", r.body));
    assert_eq!(
        messages,
        vec![cs.iter().collect::<String>()],
        "expected the decoded string back"
    );
}

// ---------------------------------------------------------------------------------------------
// Closing, aborting

#[tokio::test]
async fn close_frame_ends_xhr_streaming() {
    let addr = server().await;
    let base = session("close");
    let (mut r1, _) = stream(addr, "POST", &format!("{base}/xhr_streaming"), &[]).await;
    r1.expect(&prelude()).await;
    r1.expect("o\n").await;
    r1.expect(GO_AWAY).await;
    r1.expect_end().await;
    let (mut r2, _) = stream(addr, "POST", &format!("{base}/xhr_streaming"), &[]).await;
    r2.expect(&prelude()).await;
    r2.expect(GO_AWAY).await;
    r2.expect_end().await;
}

#[tokio::test]
async fn second_xhr_streaming_is_refused() {
    let addr = server().await;
    let base = session("echo");
    let (mut r1, _) = stream(addr, "POST", &format!("{base}/xhr_streaming"), &[]).await;
    r1.expect(&prelude()).await;
    r1.expect("o\n").await;
    let (mut r2, _) = stream(addr, "POST", &format!("{base}/xhr_streaming"), &[]).await;
    r2.expect(&prelude()).await;
    r2.expect(ANOTHER_CONNECTION).await;
    r2.expect_end().await;
}

#[tokio::test]
async fn aborted_xhr_streaming() {
    let addr = server().await;
    let base = session("echo");
    let (mut r1, _) = stream(addr, "POST", &format!("{base}/xhr_streaming"), &[]).await;
    r1.expect(&prelude()).await;
    r1.expect("o\n").await;
    let (mut r2, _) = stream(addr, "POST", &format!("{base}/xhr_streaming"), &[]).await;
    r2.expect(&prelude()).await;
    r2.expect(ANOTHER_CONNECTION).await;
    r2.expect_end().await;
    drop(r1);
    sleep(Duration::from_millis(200)).await;
    let (mut r3, _) = stream(addr, "POST", &format!("{base}/xhr_streaming"), &[]).await;
    r3.expect(&prelude()).await;
    let frame = r3.read_until("\n").await;
    assert!(
        frame == "o\n" || frame == INTERRUPTED,
        "after an aborted receiver: expected o or c[1002,\"Connection interrupted\"], got {frame:?}"
    );
}

#[tokio::test]
async fn aborted_xhr_polling() {
    let addr = server().await;
    let base = session("echo");
    open_xhr(addr, &base).await;
    let mut r1 = Conn::open(addr).await;
    r1.send("POST", &format!("{base}/xhr"), &[], "").await;
    sleep(Duration::from_millis(250)).await;
    let r2 = poll(addr, &base).await;
    assert_reply(&r2, 200, ANOTHER_CONNECTION, "second xhr while one waits");
    drop(r1);
    sleep(Duration::from_millis(200)).await;
    let r3 = poll(addr, &base).await;
    assert!(
        r3.status == 200 && (r3.body == "o\n" || r3.body == INTERRUPTED),
        "after an aborted poll: expected 200 with o or c[1002,\"Connection interrupted\"], got {} {:?}",
        r3.status,
        r3.body
    );
}

// ---------------------------------------------------------------------------------------------
// Heartbeats, expiry, keep-alive

/// A server with a 200 ms heartbeat and a 300 ms disconnect delay.
async fn quick_server() -> SocketAddr {
    start(Duration::from_millis(200), Duration::from_millis(300)).await
}

#[tokio::test]
async fn heartbeat_on_xhr_polling() {
    let addr = quick_server().await;
    let base = session("echo");
    open_xhr(addr, &base).await;
    let started = Instant::now();
    let r = poll(addr, &base).await;
    assert_reply(&r, 200, "h\n", "waiting xhr: expected a heartbeat frame");
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(800),
        "expected the heartbeat about 200 ms after polling, it took {waited:?}"
    );
}

#[tokio::test]
async fn heartbeats_on_xhr_streaming() {
    let addr = quick_server().await;
    let (mut s, _) = stream(
        addr,
        "POST",
        &format!("{}/xhr_streaming", session("echo")),
        &[],
    )
    .await;
    s.expect(&prelude()).await;
    s.expect("o\n").await;
    let started = Instant::now();
    s.expect("h\n").await;
    s.expect("h\n").await;
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(1000),
        "expected two heartbeats within 1 s, they took {waited:?}"
    );
}

#[tokio::test]
async fn session_expires_without_receiver() {
    let addr = quick_server().await;
    let base = session("echo");
    open_xhr(addr, &base).await;
    sleep(Duration::from_millis(900)).await;
    let r = post(addr, &format!("{base}/xhr_send"), "[\"a\"]").await;
    assert_404(&r, "xhr_send after the disconnect delay");
    let r = poll(addr, &base).await;
    assert_reply(&r, 200, "o\n", "xhr after expiry: expected a new session");
}

#[tokio::test]
async fn keep_alive() {
    let addr = server().await;
    let mut c = Conn::open(addr).await;
    for i in 1..=2 {
        c.send("GET", "/echo", &[], "").await;
        let r = c.head().await;
        assert_eq!(
            r.status, 200,
            "greeting #{i} on one connection: expected 200"
        );
        assert_eq!(
            c.read_body().await,
            "Welcome to SockJS!\n",
            "greeting #{i}: expected the welcome text"
        );
    }
}
