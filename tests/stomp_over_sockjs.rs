//! STOMP over the node's SockJS endpoint: frames over SockJS's WebSocket and xhr transports,
//! several frames in one SockJS message, tenant paths, allowed origins on `/ws` and `/sockjs`,
//! admission limits, and the demo page.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use stompbox::stomp::{Command, Frame};
use support::{Client, TestNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One request on its own connection; returns the status, the head and the body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    request_from("127.0.0.1", addr, method, path, headers, body).await
}

/// `request`, sent from the loopback address `source` (127.0.0.x): the status, the head and
/// the body.
async fn request_from(
    source: &str,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// An xhr poll's messages (`a[...]`), after skipping heartbeats.
async fn poll(addr: SocketAddr, session: &str) -> Vec<String> {
    loop {
        let (status, _, body) = request(addr, "POST", &format!("{session}/xhr"), &[], "").await;
        assert_eq!(status, 200, "{body}");
        match body.trim_end().strip_prefix('a') {
            Some(array) => return serde_json::from_str(array).unwrap(),
            None => assert_eq!(body, "h\n", "expected messages, got {body}"),
        }
    }
}

async fn xhr_send(addr: SocketAddr, session: &str, messages: &[&str]) {
    let body = json!(messages).to_string();
    let (status, _, text) = request(addr, "POST", &format!("{session}/xhr_send"), &[], &body).await;
    assert_eq!(status, 204, "{text}");
}

/// The status of a WebSocket upgrade on `/ws` from a page of `origin`.
async fn upgrade_status(addr: SocketAddr, origin: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Origin: {origin}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    String::from_utf8_lossy(&head[9..12]).parse().unwrap()
}

const CONNECT: &str =
    "CONNECT\naccept-version:1.2\nhost:default\nheart-beat:0,0\nuserid:alice\n\n\0";

#[tokio::test]
async fn stomp_over_sockjs_websocket_with_several_frames_per_message() {
    let node = TestNode::default().await;
    let url = node.ws_url("/sockjs/000/ws-session/websocket");
    let mut client = Client::sockjs(&url).await;
    client.connect_as("alice").await;
    // SUBSCRIBE and a SEND with a receipt in one SockJS message.
    client
        .send_raw(
            b"SUBSCRIBE\nid:1\ndestination:/topic/news\n\n\0SEND\ndestination:/topic/news\nreceipt:r1\n\nhello\0",
        )
        .await;
    client.await_receipt("r1").await;
    client.expect_message("hello").await;
    let (status, body) = node
        .publish(json!({"receiver": "alice", "destination": "/queue/notice", "content": "x"}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["stored"], true, "{body}");
    client.subscribe("2", "/user/queue/notice", "auto").await;
    node.publish(
        json!({"receiver": "alice", "destination": "/queue/notice", "content": "for alice"}),
    )
    .await;
    // What was sent before the SUBSCRIBE was kept for it, and comes first.
    client.expect_message("x").await;
    client.expect_message("for alice").await;
    node.stop().await;
}

#[tokio::test]
async fn raw_sockjs_websocket_answers_the_stomp_subprotocol() {
    let node = TestNode::default().await;
    // Strict clients refuse an upgrade that does not name the subprotocol they offered.
    let (mut client, chosen) =
        Client::ws_with_protocol(&node.ws_url("/sockjs/websocket"), "v12.stomp").await;
    assert_eq!(chosen.as_deref(), Some("v12.stomp"));
    client.connect_as("alice").await;
    client.subscribe("1", "/topic/raw", "auto").await;
    client.send_to("/topic/raw", "over the raw websocket").await;
    client.expect_message("over the raw websocket").await;
    // The most preferred of those offered, as on `/ws`.
    let (_, chosen) =
        Client::ws_with_protocol(&node.ws_url("/sockjs/websocket"), "v10.stomp, v11.stomp").await;
    assert_eq!(chosen.as_deref(), Some("v11.stomp"));
    let (_, chosen) = Client::ws_with_protocol(&node.ws_url("/sockjs/websocket"), "").await;
    assert_eq!(chosen, None);
    node.stop().await;
}

#[tokio::test]
async fn framed_sockjs_websocket_answers_the_stomp_subprotocol() {
    let node = TestNode::default().await;
    let url = node.ws_url("/sockjs/000/protocol-session/websocket");
    let (mut client, chosen) = Client::sockjs_with_protocol(&url, "v12.stomp").await;
    assert_eq!(chosen.as_deref(), Some("v12.stomp"));
    client.connect_as("alice").await;
    client.subscribe("1", "/topic/framed", "auto").await;
    client.send_to("/topic/framed", "over SockJS framing").await;
    client.expect_message("over SockJS framing").await;
    node.stop().await;
}

#[tokio::test]
async fn sockjs_websocket_sessions_end_when_the_node_stops() {
    let node = TestNode::default().await;
    let url = node.ws_url("/sockjs/000/stopping/websocket");
    let mut framed = Client::sockjs(&url).await;
    framed.connect_as("alice").await;
    let mut raw = Client::ws(&node.ws_url("/sockjs/websocket"), "v12.stomp").await;
    raw.connect_as("bob").await;
    // `stop` waits for every task on the node's tracker, the WebSocket tasks included.
    node.stop().await;
    framed.expect_closed().await;
    raw.expect_closed().await;
}

#[tokio::test]
async fn stomp_over_xhr_polling_and_a_frame_split_over_messages() {
    let node = TestNode::default().await;
    let addr = node.http;
    let session = "/sockjs/000/xhr-session";
    let (status, _, body) = request(addr, "POST", &format!("{session}/xhr"), &[], "").await;
    assert_eq!((status, body.as_str()), (200, "o\n"));
    // The CONNECT frame arrives in two SockJS messages.
    let (first, second) = CONNECT.split_at(20);
    xhr_send(addr, session, &[first, second]).await;
    let messages = poll(addr, session).await;
    assert!(messages[0].starts_with("CONNECTED\n"), "{messages:?}");
    xhr_send(
        addr,
        session,
        &["SUBSCRIBE\nid:1\ndestination:/user/queue/notice\nreceipt:s\n\n\0"],
    )
    .await;
    assert!(poll(addr, session).await[0].starts_with("RECEIPT\nreceipt-id:s\n"));
    node.publish(json!({"receiver": "alice", "destination": "/queue/notice", "content": "polled"}))
        .await;
    let messages = poll(addr, session).await;
    assert!(
        messages[0].starts_with("MESSAGE\n") && messages[0].ends_with("\n\npolled\0"),
        "{messages:?}"
    );
    // DISCONNECT ends the STOMP session, and with it the SockJS session.
    xhr_send(addr, session, &["DISCONNECT\nreceipt:bye\n\n\0"]).await;
    assert!(poll(addr, session).await[0].starts_with("RECEIPT\nreceipt-id:bye"));
    let (_, _, body) = request(addr, "POST", &format!("{session}/xhr"), &[], "").await;
    assert_eq!(body, "c[3000,\"Go away!\"]\n");
    node.stop().await;
}

#[tokio::test]
async fn a_bad_frame_gets_an_error_frame_then_the_close_frame() {
    let node = TestNode::default().await;
    let addr = node.http;
    let session = "/sockjs/000/bad-frame";
    request(addr, "POST", &format!("{session}/xhr"), &[], "").await;
    xhr_send(addr, session, &["NONSENSE\n\n\0"]).await;
    let messages = poll(addr, session).await;
    assert!(messages[0].starts_with("ERROR\n"), "{messages:?}");
    let (_, _, body) = request(addr, "POST", &format!("{session}/xhr"), &[], "").await;
    assert_eq!(body, "c[3000,\"Go away!\"]\n");
    node.stop().await;
}

#[tokio::test]
async fn tenant_paths() {
    let node = TestNode::start("[[tenants]]\nid = \"acme\"\n[[tenants]]\nid = \"default\"\n").await;
    let (status, _, body) = request(node.http, "GET", "/sockjs/acme/info", &[], "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        request(node.http, "GET", "/sockjs/info", &[], "").await.0,
        200
    );
    assert_eq!(
        request(node.http, "GET", "/sockjs/acme", &[], "").await.2,
        "Welcome to SockJS!\n"
    );
    let mut client = Client::sockjs(&node.ws_url("/sockjs/acme/1/abc/websocket")).await;
    let connected = client.connect(&[("host", "acme")]).await;
    assert_eq!(connected.command, Command::Connected);
    assert_eq!(
        request(node.http, "POST", "/sockjs/nosuch/000/x/xhr", &[], "")
            .await
            .0,
        404,
        "an unknown tenant's session URL is not a SockJS URL"
    );
    node.stop().await;
}

#[tokio::test]
async fn allowed_origins_guard_websocket_and_sockjs() {
    let node = TestNode::start(
        "[[tenants]]\nid = \"default\"\nallowed_origins = [\"https://app.example\"]\n",
    )
    .await;
    let evil = [("Origin", "https://evil.example")];
    let (status, _, body) = request(node.http, "GET", "/sockjs/info", &evil, "").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("origin not allowed"), "{body}");
    assert_eq!(
        request(node.http, "POST", "/sockjs/000/s/xhr", &evil, "")
            .await
            .0,
        403
    );
    let good = [("Origin", "https://app.example")];
    let (status, head, _) = request(node.http, "GET", "/sockjs/info", &good, "").await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("access-control-allow-origin: https://app.example"),
        "{head}"
    );
    let same = format!("http://{}", node.http);
    assert_eq!(
        request(
            node.http,
            "GET",
            "/sockjs/info",
            &[("Origin", same.as_str())],
            ""
        )
        .await
        .0,
        200,
        "a page of the node itself is always allowed"
    );
    assert_eq!(upgrade_status(node.http, "https://evil.example").await, 403);
    assert_eq!(upgrade_status(node.http, "https://app.example").await, 101);
    node.stop().await;
}

#[tokio::test]
async fn pages_with_a_null_origin_get_credentialed_cors_where_the_tenant_allows_them() {
    let node = TestNode::start(
        "[[tenants]]\nid = \"default\"\nallowed_origins = [\"null\"]\n[[tenants]]\nid = \"strict\"\nallowed_origins = [\"https://app.example\"]\n",
    )
    .await;
    let null = [("Origin", "null")];
    let (status, head, _) = request(node.http, "GET", "/sockjs/info", &null, "").await;
    assert_eq!(status, 200, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("access-control-allow-origin: null"), "{head}");
    assert!(
        head.contains("access-control-allow-credentials: true"),
        "{head}"
    );
    let (status, _, _) = request(node.http, "GET", "/sockjs/strict/info", &null, "").await;
    assert_eq!(
        status, 403,
        "a tenant that does not list null refuses such pages"
    );
    node.stop().await;
}

#[tokio::test]
async fn origins_config_errors_name_the_key() {
    let err = stompbox::config::Config::from_toml(
        "[[tenants]]\nid = \"default\"\nallowed_origins = [\"app.example\"]\n",
    )
    .unwrap()
    .finish(Default::default())
    .unwrap_err()
    .to_string();
    assert!(err.contains("tenants[0].allowed_origins[0]"), "{err}");
    let err = stompbox::config::Config::from_toml("[sockjs]\nheartbeat_ms = 1\n")
        .unwrap()
        .finish(Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("sockjs.heartbeat_ms"), "{err}");
}

#[tokio::test]
async fn sessions_beyond_the_connection_limit_are_refused() {
    let node = TestNode::start("[server]\nmax_connections = 1\n").await;
    let mut first = Client::sockjs(&node.ws_url("/sockjs/0/first/websocket")).await;
    first.connect_as("a").await;
    let (status, _, body) = request(node.http, "POST", "/sockjs/0/second/xhr", &[], "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("connection limit"), "{body}");
    // The refused session was forgotten: sending to it is a 404.
    let (status, _, _) = request(
        node.http,
        "POST",
        "/sockjs/0/second/xhr_send",
        &[],
        "[\"x\"]",
    )
    .await;
    assert_eq!(status, 404);
    first.send(Frame::new(Command::Disconnect)).await;
    node.stop().await;
}

#[tokio::test]
async fn the_demo_page_and_switching_it_off() {
    let node = TestNode::default().await;
    let (status, _, body) = request(node.http, "GET", "/", &[], "").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("/vendor/sockjs-client/sockjs.min.js"),
        "{body}"
    );
    assert!(
        body.contains("not installed"),
        "the page explains missing libraries"
    );
    let (status, _, body) = request(node.http, "GET", "/demo.js", &[], "").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("Stomp.over(socket)") && body.contains("userid"),
        "{body}"
    );
    let (status, _, body) = request(node.http, "GET", "/vendor/nosuch/x.js", &[], "").await;
    assert_eq!(status, 404, "{body}");
    node.stop().await;

    let node = TestNode::start("[server]\ndemo_page = false\n").await;
    assert_eq!(request(node.http, "GET", "/", &[], "").await.0, 404);
    node.stop().await;
}

#[tokio::test]
async fn a_session_id_alone_does_not_let_another_client_in() {
    let node = TestNode::default().await;
    let addr = node.http;
    // POST to alice's session at `path` from `source`: the status and the body.
    let post = |source: &'static str, path: &'static str, body: &'static str| async move {
        let path = format!("/sockjs/000/alice-session/{path}");
        let (status, _, body) = request_from(source, addr, "POST", &path, &[], body).await;
        (status, body)
    };
    let (status, body) = post("127.0.0.1", "xhr", "").await;
    assert_eq!((status, body.as_str()), (200, "o\n"));
    let connect = r#"["CONNECT\naccept-version:1.2\nuserid:alice\n\n\u0000"]"#;
    assert_eq!(post("127.0.0.1", "xhr_send", connect).await.0, 204);
    // Someone else who learned the id can neither read nor send.
    let (status, _) = post("127.0.0.2", "xhr", "").await;
    assert_eq!(status, 404, "reading another client's session");
    let send = r#"["SEND\ndestination:/topic/x\n\nas alice\u0000"]"#;
    let (status, _) = post("127.0.0.2", "xhr_send", send).await;
    assert_eq!(status, 404, "sending into another client's session");
    // Its own client still can.
    let (status, body) = post("127.0.0.1", "xhr", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("CONNECTED"), "{body}");
    node.stop().await;
}

/// Opens an xhr-polling session at `session` and subscribes it as alice to her notices.
async fn polling_subscriber(addr: SocketAddr, session: &str) {
    let (status, _, body) = request(addr, "POST", &format!("{session}/xhr"), &[], "").await;
    assert_eq!((status, body.as_str()), (200, "o\n"));
    xhr_send(addr, session, &[CONNECT]).await;
    assert!(poll(addr, session).await[0].starts_with("CONNECTED\n"));
    xhr_send(
        addr,
        session,
        &["SUBSCRIBE\nid:1\ndestination:/user/queue/notice\nreceipt:s\n\n\0"],
    )
    .await;
}

/// The bodies of the MESSAGE frames among `frames`.
fn message_bodies(frames: &[String]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f.starts_with("MESSAGE\n"))
        .map(|f| {
            let body = f.split_once("\n\n").unwrap().1;
            body.trim_end_matches('\0').to_string()
        })
        .collect()
}

#[tokio::test]
async fn a_polling_page_that_reloads_gets_what_its_old_session_never_fetched_or_never_confirmed() {
    let node = TestNode::start("[sockjs]\ndisconnect_delay_ms = 300\n").await;
    let addr = node.http;
    let old = "/sockjs/000/before-reload";
    polling_subscriber(addr, old).await;
    let mut got = Vec::new();
    while !got.iter().any(|f: &String| f.starts_with("RECEIPT")) {
        got.extend(poll(addr, old).await);
    }
    node.publish(
        json!({"receiver": "alice", "destination": "/queue/notice", "content": "fetched"}),
    )
    .await;
    assert_eq!(message_bodies(&poll(addr, old).await), ["fetched"]);
    // The page reloads: its old session is never polled again, and what is published now
    // waits in it until it expires.
    for body in ["unfetched 1", "unfetched 2"] {
        let (status, answer) = node
            .publish(json!({"receiver": "alice", "destination": "/queue/notice", "content": body}))
            .await;
        assert_eq!(status, 202, "{answer}");
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let new = "/sockjs/000/after-reload";
    polling_subscriber(addr, new).await;
    let mut frames = Vec::new();
    while message_bodies(&frames).len() < 3 {
        frames.extend(poll(addr, new).await);
    }
    // The old page never polled again after "fetched", so it is not known to have processed
    // it (it may have reloaded with the answer on its way): it comes again, rather than never.
    assert_eq!(
        message_bodies(&frames),
        ["fetched", "unfetched 1", "unfetched 2"],
        "what the old session never handed to a response, and what it handed to a poll that no other followed"
    );
    node.stop().await;
}
