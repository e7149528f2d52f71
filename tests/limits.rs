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

/// Publishes `n` messages of about `size` bytes, numbered in their first 8 bytes, to `queue`
/// through the API while it has no consumer: every one is accepted and kept.
async fn fill_queue(node: &TestNode, queue: &str, n: usize, size: usize) {
    for i in 0..n {
        let content = format!("{i:08}{}", ".".repeat(size - 8));
        let (status, answer) = node
            .publish(serde_json::json!({"destination": queue, "content": content}))
            .await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["queued"], true, "{answer}");
    }
}

fn number(frame: &Frame) -> usize {
    std::str::from_utf8(&frame.body[..8])
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_queue_backlog_larger_than_the_outbound_queue_reaches_its_consumer_in_every_ack_mode() {
    // 1,000 × 10 KB waiting: more than twice the 4 MiB outbound queue of a connection.
    let node = TestNode::default().await;
    for ack in ["auto", "client", "client-individual"] {
        let queue = format!("/queue/bl-{ack}");
        fill_queue(&node, &queue, 1_000, 10_000).await;
        let mut consumer = tcp_user(&node, "consumer").await;
        consumer.subscribe("1", &queue, ack).await;
        for i in 0..1_000 {
            let m = consumer.expect(Command::Message).await;
            assert_eq!(number(&m), i, "{ack}: in order, none lost");
            if ack == "client-individual" || (ack == "client" && i % 100 == 99) {
                consumer
                    .send(Frame::new(Command::Ack).header("id", m.get("ack").unwrap()))
                    .await;
            }
        }
        consumer.expect_nothing(Duration::from_millis(200)).await;
        let backlog = node.node.default_tenant().unwrap().broker.backlog();
        assert_eq!(backlog, (0, 0), "{ack}: the backlog is empty");
    }
    let metrics = &node.node.metrics;
    assert_eq!(metrics.slow_consumers_closed(), 0, "no consumer was closed");
}

#[tokio::test]
async fn prefetch_count_bounds_the_unacknowledged_messages_of_a_queue_consumer() {
    let node = TestNode::default().await;
    fill_queue(&node, "/queue/pf", 10, 100).await;
    let mut c = tcp_user(&node, "c").await;
    c.send(
        Frame::new(Command::Subscribe)
            .header("id", "1")
            .header("destination", "/queue/pf")
            .header("ack", "client-individual")
            .header("prefetch-count", "3"),
    )
    .await;
    let held: Vec<Frame> = vec![
        c.expect(Command::Message).await,
        c.expect(Command::Message).await,
        c.expect(Command::Message).await,
    ];
    assert_eq!(held.iter().map(number).collect::<Vec<_>>(), [0, 1, 2]);
    c.expect_nothing(Duration::from_millis(300)).await;
    // Each ACK lets one more through; another consumer meanwhile takes the rest at once.
    c.send(Frame::new(Command::Ack).header("id", held[0].get("ack").unwrap()))
        .await;
    assert_eq!(number(&c.expect(Command::Message).await), 3);
    c.expect_nothing(Duration::from_millis(300)).await;
    let mut other = tcp_user(&node, "other").await;
    other.subscribe("1", "/queue/pf", "auto").await;
    for i in 4..10 {
        assert_eq!(number(&other.expect(Command::Message).await), i);
    }
}

#[tokio::test]
async fn queue_backlogs_are_bounded_in_bytes() {
    let node = TestNode::start("[server]\nmax_queue_backlog_bytes = 1048576\n").await;
    let content = "x".repeat(50_000);
    let mut accepted = 0;
    let (status, answer) = loop {
        let (status, answer) = node
            .publish(serde_json::json!({"destination": "/queue/big", "content": content}))
            .await;
        if status != 202 {
            break (status, answer);
        }
        accepted += 1;
    };
    assert_eq!(accepted, 20, "1 MiB holds twenty 50 KB messages");
    assert_eq!(status, 503);
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("server.max_queue_backlog_bytes"), "{error}");
    let (_, bytes) = node.node.default_tenant().unwrap().broker.backlog();
    assert!(bytes <= 1 << 20);
}

#[tokio::test]
async fn one_connection_cannot_take_more_than_its_memory_budget() {
    let node = TestNode::start("[server]\nconnection_memory_bytes = 1048576\n").await;
    // The attack that once took 1.28 GB: 16 transactions of 64 KB frames.
    let mut attacker = tcp_user(&node, "mallory").await;
    let body = "x".repeat(60_000);
    let mut sent = 0;
    for t in 0..16 {
        attacker
            .send(Frame::new(Command::Begin).header("transaction", format!("t{t}")))
            .await;
    }
    let error = loop {
        attacker
            .send(
                Frame::new(Command::Send)
                    .header("destination", "/topic/x")
                    .header("transaction", format!("t{}", sent % 16))
                    .body(body.clone().into_bytes()),
            )
            .await;
        sent += 1;
        if let Some(frame) = attacker.recv_within(Duration::from_millis(20)).await {
            break frame;
        }
        assert!(sent < 100, "no ERROR after {sent} frames");
    };
    assert_eq!(error.command, Command::Error);
    assert_eq!(
        error.get("message"),
        Some("connection memory budget exceeded")
    );
    assert!(String::from_utf8_lossy(&error.body).contains("server.connection_memory_bytes"));
    attacker.expect_closed().await;
    // Everyone else is served as before.
    let mut bystander = tcp_user(&node, "bob").await;
    bystander.subscribe("1", "/topic/b", "auto").await;
    bystander.send_to("/topic/b", "still here").await;
    bystander.expect_message("still here").await;
}
