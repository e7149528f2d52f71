//! Test support: a real node on port 0 and STOMP clients over TCP and WebSocket built on the
//! project's codec. What does not need the crate (processes, Redis, the HTTP client, JWTs)
//! comes from the test kit, `testkit/`, which the benches and the load tool share.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use stompbox::config::{Config, Overrides};
use stompbox::node::Node;
use stompbox::stomp::{decode, encode, Command, Decoded, Frame, Limits, Version};
use stompbox_testkit::http;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub const API_KEY: &str = "test-api-key";
pub const WAIT: Duration = Duration::from_secs(5);

/// A node running in this process.
pub struct TestNode {
    pub node: Arc<Node>,
    pub http: SocketAddr,
    pub stomp: SocketAddr,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl TestNode {
    /// A node with the default configuration plus `toml`.
    pub async fn start(toml: &str) -> TestNode {
        let config = Config::from_toml(toml)
            .expect("test config parses")
            .finish(Overrides {
                api_key: Some(API_KEY.into()),
                ..Default::default()
            })
            .expect("test config is valid");
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stomp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (http_addr, stomp_addr) = (http.local_addr().unwrap(), stomp.local_addr().unwrap());
        let node = Node::new(&config);
        let server = tokio::spawn({
            let node = node.clone();
            async move {
                stompbox::server::run(node, http, stomp).await.unwrap();
            }
        });
        TestNode {
            node,
            http: http_addr,
            stomp: stomp_addr,
            server: Some(server),
        }
    }

    pub async fn default() -> TestNode {
        TestNode::start("").await
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.http, path)
    }

    /// Shuts the node down and waits for it to finish.
    pub async fn stop(mut self) {
        self.node.shutdown.cancel();
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .expect("node stops within 10 s")
                .unwrap();
        }
    }

    /// Publishes through the HTTP API of tenant `default`.
    pub async fn publish(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        http_request(
            self.http,
            "POST",
            "/api/v1/tenants/default/publish",
            Some(API_KEY),
            &body.to_string(),
        )
        .await
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.node.shutdown.cancel();
    }
}

/// A minimal HTTP/1.1 client: one JSON request per connection.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    exchange(
        addr,
        method,
        path,
        bearer,
        "application/json",
        body.as_bytes(),
    )
    .await
}

/// How long an answer may take: a plugin upload compiles the component first, and a
/// JavaScript or Python one takes many seconds of CPU on a machine the other tests share.
fn answer_limit(content_type: &str) -> Duration {
    if content_type == "application/wasm" {
        Duration::from_secs(120)
    } else {
        Duration::from_secs(30)
    }
}

/// One request with `body` of `content_type`; the status and the body as JSON (null if not).
async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let mut request = http::Request::new(method, path)
        .header("Host", "test")
        .header("Content-Type", content_type)
        .body(body);
    if let Some(token) = bearer {
        request = request.bearer(token);
    }
    let response = tokio::time::timeout(answer_limit(content_type), http::send(addr, &request))
        .await
        .expect("HTTP answer in time")
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let json = response.json().unwrap_or(serde_json::Value::Null);
    (response.status, json)
}

enum Wire {
    Tcp(TcpStream),
    Ws(Box<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>>),
}

/// A STOMP client for tests.
pub struct Client {
    wire: Wire,
    buf: BytesMut,
    pub version: Version,
    closed: bool,
    /// Speaks SockJS framing over the WebSocket (`/sockjs/.../websocket`).
    sockjs: bool,
    pub heartbeats: usize,
    /// Frames that arrived while waiting for a RECEIPT, handed out by later `recv`s.
    stash: std::collections::VecDeque<Frame>,
}

impl Client {
    pub async fn tcp(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Client::over(Wire::Tcp(stream))
    }

    /// A WebSocket client offering `protocols` (may be empty).
    pub async fn ws(url: &str, protocols: &str) -> Client {
        Client::try_ws(url, protocols)
            .await
            .expect("WebSocket upgrade")
    }

    pub async fn try_ws(
        url: &str,
        protocols: &str,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = Client::ws_handshake(url, protocols).await?;
        Ok(Client::over(Wire::Ws(Box::new(ws))))
    }

    /// A STOMP client over SockJS's WebSocket transport (`ws://.../sockjs/000/<id>/websocket`):
    /// each frame sent is a one-message JSON array, and `a[...]` frames carry what arrives.
    pub async fn sockjs(url: &str) -> Client {
        let mut client = Client::ws(url, "").await;
        client.sockjs = true;
        client
    }

    /// A STOMP client over SockJS's WebSocket transport offering `protocols`, and the
    /// subprotocol the server chose.
    pub async fn sockjs_with_protocol(url: &str, protocols: &str) -> (Client, Option<String>) {
        let (mut client, chosen) = Client::ws_with_protocol(url, protocols).await;
        client.sockjs = true;
        (client, chosen)
    }

    /// Upgrades and returns the subprotocol the server chose.
    pub async fn ws_with_protocol(url: &str, protocols: &str) -> (Client, Option<String>) {
        let (ws, response) = Client::ws_handshake(url, protocols).await.unwrap();
        let chosen = response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_string());
        (Client::over(Wire::Ws(Box::new(ws))), chosen)
    }

    /// A WebSocket client whose upgrade request carries `cookie` (as a browser sends its
    /// cookies): `SESSION=abc`.
    pub async fn ws_with_cookie(url: &str, cookie: &str) -> Client {
        let mut request = url.into_client_request().unwrap();
        let headers = request.headers_mut();
        headers.insert("sec-websocket-protocol", "v12.stomp".parse().unwrap());
        headers.insert("cookie", cookie.parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        Client::over(Wire::Ws(Box::new(ws)))
    }

    async fn ws_handshake(
        url: &str,
        protocols: &str,
    ) -> Result<
        (
            tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
            tokio_tungstenite::tungstenite::handshake::client::Response,
        ),
        tokio_tungstenite::tungstenite::Error,
    > {
        let mut request = url.into_client_request().unwrap();
        if !protocols.is_empty() {
            request
                .headers_mut()
                .insert("sec-websocket-protocol", protocols.parse().unwrap());
        }
        tokio_tungstenite::connect_async(request).await
    }

    fn over(wire: Wire) -> Client {
        Client {
            wire,
            buf: BytesMut::new(),
            version: Version::V1_2,
            closed: false,
            sockjs: false,
            heartbeats: 0,
            stash: Default::default(),
        }
    }

    /// Sends raw bytes (one WebSocket text message when over WebSocket).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        if self.sockjs {
            let text = String::from_utf8(bytes.to_vec()).unwrap();
            let array = serde_json::json!([text]).to_string();
            let Wire::Ws(ws) = &mut self.wire else {
                unreachable!("SockJS clients are WebSocket clients")
            };
            ws.send(Message::Text(array.into())).await.unwrap();
            return;
        }
        match &mut self.wire {
            Wire::Tcp(s) => s.write_all(bytes).await.unwrap(),
            Wire::Ws(ws) => ws
                .send(Message::Text(
                    String::from_utf8(bytes.to_vec()).unwrap().into(),
                ))
                .await
                .unwrap(),
        }
    }

    /// Sends raw bytes as one binary WebSocket message.
    pub async fn send_binary(&mut self, bytes: &[u8]) {
        match &mut self.wire {
            Wire::Ws(ws) => ws
                .send(Message::Binary(bytes.to_vec().into()))
                .await
                .unwrap(),
            Wire::Tcp(_) => panic!("binary messages are a WebSocket thing"),
        }
    }

    pub async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        encode(&frame, self.version, &mut out);
        self.send_raw(&out).await;
    }

    /// Reads more bytes; false at end of stream.
    async fn read_more(&mut self) -> bool {
        match &mut self.wire {
            Wire::Tcp(s) => {
                let mut chunk = [0u8; 8192];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => false,
                    Ok(n) => {
                        self.buf.extend_from_slice(&chunk[..n]);
                        true
                    }
                }
            }
            Wire::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if self.sockjs => match t.as_bytes().first() {
                        Some(b'a') => {
                            let messages: Vec<String> = serde_json::from_str(&t[1..])
                                .unwrap_or_else(|e| panic!("bad SockJS frame {t}: {e}"));
                            for m in messages {
                                self.buf.extend_from_slice(m.as_bytes());
                            }
                            return true;
                        }
                        Some(b'c') => return false,
                        _ => continue,
                    },
                    Some(Ok(Message::Text(t))) => {
                        self.buf.extend_from_slice(t.as_bytes());
                        return true;
                    }
                    Some(Ok(Message::Binary(b))) => {
                        self.buf.extend_from_slice(&b);
                        return true;
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return false,
                    Some(Ok(_)) => continue,
                }
            },
        }
    }

    /// The next frame within `wait`, skipping heart-beats; `None` on timeout or close.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Frame> {
        let limits = Limits {
            max_frame_bytes: 16 << 20,
            ..Limits::default()
        };
        if let Some(frame) = self.stash.pop_front() {
            return Some(frame);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match decode(&mut self.buf, self.version, &limits).expect("server sent a valid frame") {
                Some(Decoded::Frame(f)) => return Some(f),
                Some(Decoded::HeartBeat) => {
                    self.heartbeats += 1;
                    continue;
                }
                None => {}
            }
            if self.closed {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.read_more()).await {
                Ok(true) => {}
                Ok(false) => self.closed = true,
                Err(_) => return None,
            }
        }
    }

    /// True once the server closed the connection (seen by a read).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The next frame; panics after [`WAIT`].
    pub async fn recv(&mut self) -> Frame {
        self.recv_within(WAIT)
            .await
            .expect("a frame from the server in time")
    }

    /// Expects a frame with `command`.
    pub async fn expect(&mut self, command: Command) -> Frame {
        let frame = self.recv().await;
        assert_eq!(frame.command, command, "unexpected frame: {frame:?}");
        frame
    }

    /// Expects no frame for `wait`.
    pub async fn expect_nothing(&mut self, wait: Duration) {
        if let Some(frame) = self.recv_within(wait).await {
            panic!("expected nothing, got {frame:?}");
        }
    }

    /// Expects the server to close the connection (after any frames it still had), within WAIT.
    pub async fn expect_closed(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.closed {
            match tokio::time::timeout_at(deadline, self.read_more()).await {
                Ok(true) => self.buf.clear(),
                Ok(false) => self.closed = true,
                Err(_) => panic!("connection still open"),
            }
        }
    }

    /// Expects an ERROR frame whose message contains `text`, then the close.
    pub async fn expect_error(&mut self, text: &str) -> Frame {
        let frame = self.expect(Command::Error).await;
        let message = frame.get("message").unwrap_or_default();
        assert!(
            message.contains(text),
            "ERROR message '{message}' lacks '{text}'; body: {}",
            String::from_utf8_lossy(&frame.body)
        );
        self.expect_closed().await;
        frame
    }

    /// CONNECT (STOMP 1.2, no heart-beats) with extra headers; returns CONNECTED.
    pub async fn connect(&mut self, headers: &[(&str, &str)]) -> Frame {
        let mut frame = Frame::new(Command::Connect)
            .header("accept-version", "1.2")
            .header("host", "default")
            .header("heart-beat", "0,0");
        for (k, v) in headers {
            frame = frame.header(*k, *v);
        }
        self.send(frame).await;
        let connected = self.expect(Command::Connected).await;
        self.version = Version::parse(connected.get("version").unwrap()).unwrap();
        connected
    }

    /// CONNECT as `user`.
    pub async fn connect_as(&mut self, user: &str) -> Frame {
        self.connect(&[("userid", user)]).await
    }

    /// SUBSCRIBE with a receipt, waiting for it so later publishes find the subscription.
    pub async fn subscribe(&mut self, id: &str, dest: &str, ack: &str) {
        let receipt = format!("sub-{id}");
        self.send(
            Frame::new(Command::Subscribe)
                .header("id", id)
                .header("destination", dest)
                .header("ack", ack)
                .header("receipt", receipt.as_str()),
        )
        .await;
        self.await_receipt(&receipt).await;
    }

    /// SUBSCRIBE to `dest` with `headers` and a receipt: the MESSAGE frames that came before
    /// the RECEIPT (a stream's replay), and the RECEIPT.
    pub async fn subscribe_replay(
        &mut self,
        id: &str,
        dest: &str,
        ack: &str,
        headers: &[(&str, &str)],
    ) -> (Vec<Frame>, Frame) {
        let mut frame = Frame::new(Command::Subscribe)
            .header("id", id)
            .header("destination", dest)
            .header("ack", ack)
            .header("receipt", format!("sub-{id}"));
        for (k, v) in headers {
            frame = frame.header(*k, *v);
        }
        self.send(frame).await;
        let mut replayed = Vec::new();
        loop {
            let frame = self.recv().await;
            match frame.command {
                Command::Message => replayed.push(frame),
                Command::Receipt => return (replayed, frame),
                _ => panic!("unexpected frame: {frame:?}"),
            }
        }
    }

    /// Waits for RECEIPT `id`, keeping other frames for later.
    pub async fn await_receipt(&mut self, id: &str) {
        let mut held = Vec::new();
        loop {
            let frame = self.recv().await;
            if frame.command == Command::Receipt && frame.get("receipt-id") == Some(id) {
                break;
            }
            assert_ne!(frame.command, Command::Error, "{frame:?}");
            held.push(frame);
        }
        self.stash.extend(held);
    }

    /// SEND with a receipt, waiting for it.
    pub async fn send_to(&mut self, dest: &str, body: &str) {
        self.send(
            Frame::new(Command::Send)
                .header("destination", dest)
                .header("receipt", "sent")
                .body(body.as_bytes().to_vec()),
        )
        .await;
        self.await_receipt("sent").await;
    }

    /// Expects a MESSAGE with `body`.
    pub async fn expect_message(&mut self, body: &str) -> Frame {
        let frame = self.expect(Command::Message).await;
        assert_eq!(String::from_utf8_lossy(&frame.body), body, "{frame:?}");
        frame
    }
}

/// TCP client already connected as `user`.
pub async fn tcp_user(node: &TestNode, user: &str) -> Client {
    let mut client = Client::tcp(node.stomp).await;
    client.connect_as(user).await;
    client
}

/// WebSocket client on `/ws` already connected as `user`.
pub async fn ws_user(node: &TestNode, user: &str) -> Client {
    let mut client = Client::ws(&node.ws_url("/ws"), "v12.stomp").await;
    client.connect_as(user).await;
    client
}

/// Builds the example and hostile plugins once per test binary (a no-op when up to date) and
/// returns the path of `name.wasm` (`jwt_auth`, `seed_compat`, `hostile`, `wrong_world`).
pub fn plugin_wasm(name: &str) -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(path) = guest_plugin(name) {
        return path;
    }
    BUILT.get_or_init(|| {
        for workspace in ["plugins", "tests/plugins"] {
            let status = std::process::Command::new(env!("CARGO"))
                .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
                .current_dir(root.join(workspace))
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_TARGET_DIR")
                .status()
                .expect("running cargo to build the plugins");
            assert!(
                status.success(),
                "building {workspace} for wasm32-wasip2 failed; scripts/test.sh installs the target (rustup target add wasm32-wasip2)"
            );
        }
    });
    let workspace = if matches!(name, "hostile" | "wrong_world" | "world_0_1_0") {
        "tests/plugins"
    } else {
        "plugins"
    };
    root.join(workspace)
        .join("target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"))
}

/// The plugins written in TypeScript and Python, built once per test binary the way their
/// authors build them (`npm run build`, `./build.sh`); `None` for other names.
fn guest_plugin(name: &str) -> Option<std::path::PathBuf> {
    use std::sync::OnceLock;
    static TS: OnceLock<()> = OnceLock::new();
    static PY: OnceLock<()> = OnceLock::new();
    static HOSTILE_TS: OnceLock<()> = OnceLock::new();
    static HOSTILE_PY: OnceLock<()> = OnceLock::new();
    let (once, dir, typescript) = match name {
        "jwt_auth_ts" => (&TS, "plugins/jwt-auth-ts", true),
        "jwt_auth_py" => (&PY, "plugins/jwt-auth-py", false),
        "hostile_ts" => (&HOSTILE_TS, "tests/plugins/hostile-ts", true),
        "hostile_py" => (&HOSTILE_PY, "tests/plugins/hostile-py", false),
        _ => return None,
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    once.get_or_init(|| {
        let run = |program: &str, args: &[&str]| {
            let status = std::process::Command::new(program)
                .args(args)
                .current_dir(&dir)
                .status()
                .unwrap_or_else(|e| panic!("running {program} in {}: {e}", dir.display()));
            assert!(
                status.success(),
                "{program} {args:?} failed in {}; scripts/test.sh installs what it needs",
                dir.display()
            );
        };
        if typescript {
            if !dir.join("node_modules").exists() {
                run(
                    "npm",
                    &["ci", "--no-audit", "--no-fund", "--loglevel=error"],
                );
            }
            run("npm", &["run", "--silent", "build"]);
        } else {
            run("./build.sh", &[]);
        }
    });
    Some(dir.join("dist").join("plugin.wasm"))
}

/// A path as a TOML string holds it (forward slashes).
pub fn toml_path(p: &std::path::Path) -> String {
    p.display().to_string().replace('\\', "/")
}

/// An HS256 JWT with `claims`, signed with `secret`.
pub fn jwt(secret: &str, claims: serde_json::Value) -> String {
    stompbox_testkit::jwt::hs256(secret, &claims)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A request with a raw body (a `.wasm` upload), for the admin API.
pub async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &[u8],
) -> (u16, serde_json::Value) {
    exchange(addr, method, path, bearer, "application/wasm", body).await
}

pub mod cluster;
pub mod traffic;

/// GET `path` and return the body as text.
pub async fn http_text(addr: SocketAddr, path: &str) -> String {
    let request = http::Request::get(path).header("Host", "test");
    tokio::time::timeout(WAIT, http::send(addr, &request))
        .await
        .expect("HTTP answer in time")
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .text()
}
