//! Routing against a real node: topics, queues with acknowledgements, Spring user destinations,
//! and tenant isolation, over TCP and WebSocket.

mod support;

use std::time::Duration;

use serde_json::json;
use stompbox::stomp::{Command, Frame};
use support::*;

const QUIET: Duration = Duration::from_millis(200);

#[tokio::test]
async fn topic_broadcasts_to_every_subscriber_on_every_transport() {
    let node = TestNode::default().await;
    let mut a = tcp_user(&node, "a").await;
    let mut b = ws_user(&node, "b").await;
    a.subscribe("1", "/topic/news", "auto").await;
    b.subscribe("1", "/topic/news", "auto").await;
    let (status, answer) = node
        .publish(json!({"destination": "/topic/news", "content": "extra"}))
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["delivered"], 2);
    a.expect_message("extra").await;
    b.expect_message("extra").await;
    // After UNSUBSCRIBE, nothing more.
    a.send(
        Frame::new(Command::Unsubscribe)
            .header("id", "1")
            .header("receipt", "u"),
    )
    .await;
    a.expect(Command::Receipt).await;
    b.send_to("/topic/news", "again").await;
    b.expect_message("again").await;
    a.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn queue_messages_go_to_one_consumer_round_robin() {
    let node = TestNode::default().await;
    let mut a = tcp_user(&node, "a").await;
    let mut b = tcp_user(&node, "b").await;
    a.subscribe("1", "/queue/work", "auto").await;
    b.subscribe("1", "/queue/work", "auto").await;
    let mut p = tcp_user(&node, "p").await;
    for i in 0..4 {
        p.send_to("/queue/work", &format!("job{i}")).await;
    }
    let mut got = Vec::new();
    for c in [&mut a, &mut b] {
        for _ in 0..2 {
            got.push(String::from_utf8(c.expect(Command::Message).await.body.to_vec()).unwrap());
        }
        c.expect_nothing(QUIET).await;
    }
    got.sort();
    assert_eq!(got, ["job0", "job1", "job2", "job3"]);
}

#[tokio::test]
async fn queue_keeps_messages_until_a_consumer_comes() {
    let node = TestNode::default().await;
    let (status, answer) = node
        .publish(json!({"destination": "/queue/later", "content": "kept"}))
        .await;
    assert_eq!(status, 202);
    assert_eq!(answer["queued"], true);
    assert_eq!(answer["delivered"], 0);
    let mut c = tcp_user(&node, "c").await;
    c.subscribe("1", "/queue/later", "auto").await;
    c.expect_message("kept").await;
}

#[tokio::test]
async fn nack_redelivers_to_another_consumer() {
    let node = TestNode::default().await;
    let mut a = tcp_user(&node, "a").await;
    a.subscribe("1", "/queue/n", "client-individual").await;
    let mut p = tcp_user(&node, "p").await;
    p.send_to("/queue/n", "hot potato").await;
    let m = a.expect_message("hot potato").await;
    let ack_id = m
        .get("ack")
        .expect("1.2 client mode has an ack header")
        .to_string();
    let mut b = tcp_user(&node, "b").await;
    b.subscribe("1", "/queue/n", "client").await;
    a.send(Frame::new(Command::Nack).header("id", ack_id.as_str()))
        .await;
    let m = b.expect_message("hot potato").await;
    b.send(
        Frame::new(Command::Ack)
            .header("id", m.get("ack").unwrap())
            .header("receipt", "r"),
    )
    .await;
    b.expect(Command::Receipt).await;
    a.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn nack_with_a_single_consumer_redelivers_to_it() {
    let node = TestNode::default().await;
    let mut a = tcp_user(&node, "a").await;
    a.subscribe("1", "/queue/solo", "client-individual").await;
    a.send_to("/queue/solo", "retry me").await;
    let m = a.expect_message("retry me").await;
    a.send(Frame::new(Command::Nack).header("id", m.get("ack").unwrap()))
        .await;
    let again = a.expect_message("retry me").await;
    assert_ne!(
        again.get("ack"),
        m.get("ack"),
        "a redelivery has a new ack id"
    );
}

#[tokio::test]
async fn unacked_messages_go_to_another_consumer_when_the_holder_leaves() {
    let node = TestNode::default().await;
    let mut a = tcp_user(&node, "a").await;
    a.subscribe("1", "/queue/d", "client").await;
    let mut p = tcp_user(&node, "p").await;
    for body in ["m1", "m2", "m3"] {
        p.send_to("/queue/d", body).await;
    }
    let first = a.expect_message("m1").await;
    a.expect_message("m2").await;
    a.expect_message("m3").await;
    // Cumulative ACK of m1 only; m2 and m3 stay unacknowledged.
    a.send(
        Frame::new(Command::Ack)
            .header("id", first.get("ack").unwrap())
            .header("receipt", "r"),
    )
    .await;
    a.expect(Command::Receipt).await;
    let mut b = tcp_user(&node, "b").await;
    b.subscribe("1", "/queue/d", "auto").await;
    drop(a);
    b.expect_message("m2").await;
    b.expect_message("m3").await;
    b.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn client_mode_ack_is_cumulative_and_stomp_1_1_acks_by_message_id() {
    let node = TestNode::default().await;
    let mut a = Client::tcp(node.stomp).await;
    a.send_raw(b"CONNECT\naccept-version:1.1\nuserid:a\n\n\0")
        .await;
    a.expect(Command::Connected).await;
    a.version = stompbox::stomp::Version::V1_1;
    a.subscribe("1", "/queue/c11", "client").await;
    let mut p = tcp_user(&node, "p").await;
    for body in ["x", "y"] {
        p.send_to("/queue/c11", body).await;
    }
    a.expect_message("x").await;
    let y = a.expect_message("y").await;
    assert_eq!(y.get("ack"), None, "1.1 has no ack header");
    a.send(
        Frame::new(Command::Ack)
            .header("subscription", "1")
            .header("message-id", y.get("message-id").unwrap())
            .header("receipt", "r"),
    )
    .await;
    a.expect(Command::Receipt).await;
    // Both are settled: a new consumer gets nothing when `a` leaves.
    let mut b = tcp_user(&node, "b").await;
    b.subscribe("1", "/queue/c11", "auto").await;
    drop(a);
    b.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn user_destinations_follow_spring_semantics() {
    let node = TestNode::default().await;
    // Alice has two tabs, one over TCP and one over WebSocket; bob has one.
    let mut alice1 = tcp_user(&node, "alice").await;
    let mut alice2 = ws_user(&node, "alice").await;
    let mut bob = ws_user(&node, "bob").await;
    for c in [&mut alice1, &mut alice2, &mut bob] {
        c.subscribe("n", "/user/queue/notice", "auto").await;
    }
    // From the API: every session of alice, not bob.
    let (status, answer) = node
        .publish(json!({"receiver": "alice", "destination": "/queue/notice", "content": {"order": 42}, "headers": {"x-kind": "order"}}))
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["delivered"], 2);
    for c in [&mut alice1, &mut alice2] {
        let m = c.expect_message(r#"{"order":42}"#).await;
        assert_eq!(m.get("destination"), Some("/user/queue/notice"));
        assert_eq!(m.get("content-type"), Some("application/json"));
        assert_eq!(m.get("x-kind"), Some("order"));
        assert_eq!(m.get("subscription"), Some("n"));
    }
    bob.expect_nothing(QUIET).await;

    // A client SEND to /user/bob/queue/notice reaches bob only.
    alice1.send_to("/user/bob/queue/notice", "hi bob").await;
    let m = bob.expect_message("hi bob").await;
    assert_eq!(m.get("destination"), Some("/user/queue/notice"));
    alice1.expect_nothing(QUIET).await;
    alice2.expect_nothing(Duration::from_millis(10)).await;

    // A user with no subscription: the API says nothing was delivered.
    let (_, answer) = node
        .publish(json!({"receiver": "nobody", "destination": "/queue/notice", "content": "lost?"}))
        .await;
    assert_eq!(answer["delivered"], 0);
}

#[tokio::test]
async fn user_destination_needs_a_user() {
    let node = TestNode::default().await;
    let mut anon = Client::tcp(node.stomp).await;
    anon.connect(&[]).await;
    anon.send(
        Frame::new(Command::Subscribe)
            .header("id", "1")
            .header("destination", "/user/queue/notice"),
    )
    .await;
    anon.expect_error("invalid destination").await;
}

#[tokio::test]
async fn tenants_are_separate_namespaces() {
    let node = TestNode::start(
        "[[tenants]]\nid = \"a\"\napi_keys = [\"key-of-tenant-a\"]\n[[tenants]]\nid = \"b\"\napi_keys = [\"key-of-tenant-b\"]\n",
    )
    .await;
    let mut in_a = Client::ws(&node.ws_url("/ws/a"), "v12.stomp").await;
    in_a.connect_as("alice").await;
    let mut in_b = Client::ws(&node.ws_url("/ws/b"), "v12.stomp").await;
    in_b.connect_as("alice").await;
    // Over TCP the CONNECT host header names the tenant.
    let mut tcp_b = Client::tcp(node.stomp).await;
    tcp_b
        .send_raw(b"CONNECT\naccept-version:1.2\nhost:b\nuserid:alice\n\n\0")
        .await;
    tcp_b.expect(Command::Connected).await;
    for c in [&mut in_a, &mut in_b, &mut tcp_b] {
        c.subscribe("1", "/topic/x", "auto").await;
        c.subscribe("2", "/user/queue/notice", "auto").await;
    }
    in_a.send_to("/topic/x", "only a").await;
    in_a.expect_message("only a").await;
    in_b.expect_nothing(QUIET).await;
    tcp_b.expect_nothing(Duration::from_millis(10)).await;

    let (status, answer) = http_request(
        node.http,
        "POST",
        "/api/v1/tenants/b/publish",
        Some("key-of-tenant-b"),
        &json!({"receiver": "alice", "destination": "/queue/notice", "content": "b's alice"})
            .to_string(),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["delivered"], 2);
    in_b.expect_message("b's alice").await;
    tcp_b.expect_message("b's alice").await;
    in_a.expect_nothing(QUIET).await;

    // A tenant's key does not open another tenant.
    let (status, _) = http_request(
        node.http,
        "POST",
        "/api/v1/tenants/a/publish",
        Some("key-of-tenant-b"),
        &json!({"destination": "/topic/x", "content": "x"}).to_string(),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_send_carries_its_senders_user_whatever_the_sender_claims() {
    let node = TestNode::default().await;
    let mut bob = tcp_user(&node, "bob").await;
    bob.subscribe("1", "/user/queue/notice", "auto").await;
    let mut alice = tcp_user(&node, "alice").await;
    alice
        .send_raw(b"SEND\ndestination:/user/bob/queue/notice\nuser-id:admin\nuser-name:admin\n\nfrom alice\0")
        .await;
    let message = bob.expect_message("from alice").await;
    assert_eq!(message.get("user-id"), Some("alice"), "{message:?}");
}
