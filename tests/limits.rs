//! Backpressure and limits: slow consumers, connection admission, graceful shutdown.

mod support;

use std::time::Duration;

use stompbox::stomp::{Command, Frame};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn a_slow_consumer_is_closed_and_the_others_keep_receiving() {
    let node = TestNode::start("[server]\noutbound_queue_bytes = 65536\n").await;
    // A consumer that subscribes and then never reads.
    let mut slow = TcpStream::connect(node.stomp).await.unwrap();
    slow.write_all(b"CONNECT\naccept-version:1.2\nuserid:slow\n\n\0SUBSCRIBE\nid:1\ndestination:/topic/flood\n\n\0")
        .await
        .unwrap();
    let mut fast = tcp_user(&node, "fast").await;
    fast.subscribe("1", "/topic/flood", "auto").await;
    let mut p = tcp_user(&node, "p").await;
    let body = "x".repeat(16 * 1024);
    // Far more than the socket buffers and the 64 KiB bound hold.
    for i in 0..400 {
        p.send(
            Frame::new(Command::Send)
                .header("destination", "/topic/flood")
                .body(body.clone().into_bytes()),
        )
        .await;
        let m = fast.expect(Command::Message).await;
        assert_eq!(m.body.len(), body.len(), "message {i}");
    }
    // The slow one was dropped from the topic: the node holds no more than its bound for it.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        p.send_to("/topic/flood", "probe").await;
        let m = fast.recv().await;
        if m.body == "probe".as_bytes() && node.node.open_connections() == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slow consumer still connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One connection closed; the messages it was not given are counted one by one.
    let metrics = &node.node.metrics;
    assert_eq!(metrics.slow_consumers_closed(), 1);
    let dropped = metrics.dropped_count(stompbox::metrics::DropReason::SlowConsumer);
    assert!(
        dropped >= 2,
        "messages dropped for the slow consumer: {dropped}"
    );
}

#[tokio::test]
async fn slow_consumer_gets_an_error_frame() {
    let node =
        TestNode::start("[server]\noutbound_queue_bytes = 2048\nmax_frame_bytes = 1024\n").await;
    let mut c = tcp_user(&node, "c").await;
    c.subscribe("1", "/topic/big", "auto").await;
    // Deliveries pushed faster than anyone could read: published straight into the broker.
    let tenant = node.node.default_tenant().unwrap().clone();
    let target = stompbox::broker::Target::Topic("/topic/big".into());
    let mut refused = false;
    for _ in 0..10_000 {
        let routed = tenant
            .broker
            .publish(
                &target,
                stompbox::broker::Content {
                    headers: vec![],
                    body: vec![b'x'; 1000].into(),
                },
            )
            .unwrap();
        if routed.delivered == 0 {
            refused = true;
            break;
        }
    }
    assert!(refused, "the bound was reached");
    loop {
        let frame = c.recv().await;
        if frame.command == Command::Error {
            assert_eq!(frame.get("message"), Some("slow consumer"));
            break;
        }
    }
    c.expect_closed().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_with_a_reason() {
    let node = TestNode::start("[server]\nmax_connections = 2\n").await;
    let _a = tcp_user(&node, "a").await;
    let _b = ws_user(&node, "b").await;
    let mut third = Client::tcp(node.stomp).await;
    third.expect_error("too many connections").await;
    let err = Client::try_ws(&node.ws_url("/ws"), "v12.stomp")
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("503"), "{err}");
    drop(_a);
    // The slot comes back once the first connection is gone.
    let deadline = tokio::time::Instant::now() + WAIT;
    while node.node.open_connections() > 1 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tcp_user(&node, "c").await;
}

#[tokio::test]
async fn shutdown_closes_sessions_with_an_error_and_stops_listening() {
    let node = TestNode::default().await;
    let mut tcp = tcp_user(&node, "a").await;
    let mut ws = ws_user(&node, "b").await;
    let stomp_addr = node.stomp;
    let started = tokio::time::Instant::now();
    let stopping = tokio::spawn(node.stop());
    tcp.expect_error("server shutting down").await;
    ws.expect_error("server shutting down").await;
    stopping.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        TcpStream::connect(stomp_addr).await.is_err(),
        "no longer accepting"
    );
}
