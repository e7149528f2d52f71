//! STOMP over WebSocket: subprotocols, frames split over messages and batched in one, binary
//! messages, unknown tenants.

mod support;

use std::time::Duration;

use stompbox::stomp::{Command, Frame};
use support::*;

#[tokio::test]
async fn negotiates_the_best_offered_subprotocol() {
    let node = TestNode::default().await;
    for (offered, chosen) in [
        ("v10.stomp, v11.stomp, v12.stomp", Some("v12.stomp")),
        ("v11.stomp", Some("v11.stomp")),
        ("v10.stomp", Some("v10.stomp")),
        ("", None),
    ] {
        let (mut c, got) = Client::ws_with_protocol(&node.ws_url("/ws"), offered).await;
        assert_eq!(got.as_deref(), chosen, "offered {offered}");
        c.connect_as("u").await;
    }
}

#[tokio::test]
async fn a_frame_split_over_several_messages_and_several_frames_in_one() {
    let node = TestNode::default().await;
    let mut sub = ws_user(&node, "s").await;
    sub.subscribe("1", "/topic/ws", "auto").await;
    let mut c = Client::ws(&node.ws_url("/ws"), "v12.stomp").await;
    // Spring's splitLargeFrames clients send one frame in pieces.
    c.send_raw(b"CONNECT\naccept-version:1.2\nho").await;
    c.send_raw(b"st:default\n\n").await;
    c.send_raw(b"\0").await;
    c.expect(Command::Connected).await;
    c.send_raw(b"SEND\ndestination:/topic/ws\n\none\0SEND\ndestination:/topic/ws\n\ntwo\0\n")
        .await;
    sub.expect_message("one").await;
    sub.expect_message("two").await;
}

#[tokio::test]
async fn binary_messages_and_binary_bodies() {
    let node = TestNode::default().await;
    let mut sub = ws_user(&node, "s").await;
    sub.subscribe("1", "/topic/bin", "auto").await;
    let mut c = ws_user(&node, "p").await;
    let body = [0u8, 255, 1, 2, 0xC3];
    let mut frame = b"SEND\ndestination:/topic/bin\ncontent-length:5\n\n".to_vec();
    frame.extend_from_slice(&body);
    frame.push(0);
    c.send_binary(&frame).await;
    let m = sub.expect(Command::Message).await;
    assert_eq!(&m.body[..], &body);
}

#[tokio::test]
async fn unknown_tenant_is_404() {
    let node = TestNode::default().await;
    let err = Client::try_ws(&node.ws_url("/ws/ghost"), "v12.stomp")
        .await
        .err()
        .expect("upgrade refused");
    assert!(err.to_string().contains("404"), "{err}");
}

#[tokio::test]
async fn many_messages_arrive_in_order_over_websocket() {
    let node = TestNode::default().await;
    let mut sub = ws_user(&node, "s").await;
    sub.subscribe("1", "/topic/burst", "auto").await;
    let mut p = tcp_user(&node, "p").await;
    let mut burst = Vec::new();
    for i in 0..500 {
        burst.extend_from_slice(format!("SEND\ndestination:/topic/burst\n\n{i}\0").as_bytes());
    }
    p.send_raw(&burst).await;
    for i in 0..500 {
        sub.expect_message(&i.to_string()).await;
    }
    sub.expect_nothing(Duration::from_millis(100)).await;
    // And the sender's connection is fine.
    p.send(Frame::new(Command::Disconnect).header("receipt", "d"))
        .await;
    p.expect(Command::Receipt).await;
}

/// A raw WebSocket client for checks below the STOMP level: sends masked frames as given and
/// reads server frames.
struct RawWs(tokio::net::TcpStream);

impl RawWs {
    async fn connect(node: &TestNode, extra_headers: &str) -> (RawWs, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(node.http).await.unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra_headers}\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if stream.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
        (RawWs(stream), String::from_utf8_lossy(&head).into_owned())
    }

    async fn send(&mut self, first_byte: u8, payload: &[u8], masked: bool) {
        use tokio::io::AsyncWriteExt;
        let mask = [7u8, 1, 3, 9];
        let mut frame = vec![first_byte, (u8::from(masked) << 7) | payload.len() as u8];
        if masked {
            frame.extend_from_slice(&mask);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        } else {
            frame.extend_from_slice(payload);
        }
        self.0.write_all(&frame).await.unwrap();
    }

    /// The next server frame: opcode and payload; `None` at end of stream.
    async fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        let mut head = [0u8; 2];
        tokio::time::timeout(WAIT, self.0.read_exact(&mut head))
            .await
            .expect("a frame in time")
            .ok()?;
        let len = match head[1] & 0x7F {
            126 => {
                let mut n = [0u8; 2];
                self.0.read_exact(&mut n).await.ok()?;
                usize::from(u16::from_be_bytes(n))
            }
            127 => {
                let mut n = [0u8; 8];
                self.0.read_exact(&mut n).await.ok()?;
                u64::from_be_bytes(n) as usize
            }
            n => usize::from(n),
        };
        let mut payload = vec![0u8; len];
        self.0.read_exact(&mut payload).await.ok()?;
        Some((head[0] & 0x0F, payload))
    }

    /// Reads until a close frame; returns its code.
    async fn close_code(&mut self) -> u16 {
        while let Some((opcode, payload)) = self.recv().await {
            if opcode == 0x8 {
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
        panic!("the connection ended without a close frame");
    }
}

#[tokio::test]
async fn websocket_framing_rules() {
    let node = TestNode::default().await;
    let (mut ws, head) = RawWs::connect(&node, "Sec-WebSocket-Version: 13\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    // A ping is answered with a pong carrying its payload, even before CONNECT.
    ws.send(0x89, b"are you there", true).await;
    assert_eq!(ws.recv().await, Some((0xA, b"are you there".to_vec())));
    // A frame split in fragments, a ping between them.
    ws.send(0x01, b"CONNECT\naccept-version:1.2\n", true).await;
    ws.send(0x89, b"", true).await;
    ws.send(0x80, b"host:default\n\n\0", true).await;
    assert_eq!(ws.recv().await.unwrap().0, 0xA);
    let (opcode, connected) = ws.recv().await.unwrap();
    assert_eq!(opcode, 0x1, "STOMP text arrives in text messages");
    assert!(connected.starts_with(b"CONNECTED\n"));
    // The client's close is answered with a close.
    ws.send(0x88, &1000u16.to_be_bytes(), true).await;
    assert_eq!(ws.close_code().await, 1000);

    // Unmasked client frames break the protocol: ERROR, then close 1002.
    let (mut ws, _) = RawWs::connect(&node, "Sec-WebSocket-Version: 13\r\n").await;
    ws.send(0x81, b"CONNECT\n\n\0", false).await;
    let (_, error) = ws.recv().await.unwrap();
    assert!(
        error.starts_with(b"ERROR\n"),
        "{}",
        String::from_utf8_lossy(&error)
    );
    assert!(String::from_utf8_lossy(&error).contains("masked"));
    assert_eq!(ws.close_code().await, 1002);

    // Text that is not UTF-8 is refused.
    let (mut ws, _) = RawWs::connect(&node, "Sec-WebSocket-Version: 13\r\n").await;
    ws.send(0x81, b"CONNECT\nhost:\xff\n\n\0", true).await;
    let (_, error) = ws.recv().await.unwrap();
    assert!(String::from_utf8_lossy(&error).contains("UTF-8"));
    assert_eq!(ws.close_code().await, 1007);
    node.stop().await;
}

#[tokio::test]
async fn handshake_errors_say_what_is_wrong() {
    let node = TestNode::default().await;
    let (_, head) = RawWs::connect(&node, "Sec-WebSocket-Version: 8\r\n").await;
    assert!(head.starts_with("HTTP/1.1 426"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{head}"
    );
    let (status, body) = http_request(node.http, "GET", "/ws", None, "").await;
    assert_eq!(status, 426);
    assert!(
        body["error"].as_str().unwrap().contains("WebSocket"),
        "{body}"
    );
    node.stop().await;
}
