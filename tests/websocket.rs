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
