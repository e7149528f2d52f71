//! Client SENDs to the tenant's backend: a message to an application prefix (`/app/...`) is
//! handed over through a signed webhook (a real HTTP receiver that checks the signature the
//! way a backend would) and through a Redis stream (a redis-server, or a Redis Cluster, of
//! the test's own), in order, with connection events when the tenant asks for them. A
//! RECEIPT comes once the backend took the message; a backend that does not (failing past
//! its retries, answering 4xx, a full queue, Redis gone) gets the client an ERROR saying so.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use stompbox::stomp::{Command, Frame};
use stompbox_testkit::WebhookReceiver;
use support::cluster::{await_ready, Backend, NodeProcess, Redis};
use support::*;

const SECRET: &str = "test-webhook-secret";

fn webhook_config(url: &str, extra: &str) -> String {
    format!(
        "[[tenants]]\nid = \"default\"\napi_keys = [\"{API_KEY}\"]\n[tenants.upstream]\nwebhook_url = \"{url}\"\nwebhook_secret = \"{SECRET}\"\n{extra}"
    )
}

fn send_app(dest: &str, body: &str, receipt: &str) -> Frame {
    Frame::new(Command::Send)
        .header("destination", dest)
        .header("receipt", receipt)
        .header("reply-to", "/user/queue/replies")
        .header("correlation-id", "c-1")
        .header("content-type", "text/plain")
        .body(body.as_bytes().to_vec())
}

#[tokio::test]
async fn a_send_to_app_reaches_the_webhook_signed_and_the_reply_comes_back() {
    let receiver = WebhookReceiver::start(SECRET).await;
    let node = TestNode::start(&webhook_config(&receiver.url(), "")).await;
    let mut alice = tcp_user(&node, "alice").await;
    alice.subscribe("r", "/user/queue/replies", "auto").await;
    // A header claiming another sender is dropped: the backend learns the session's user.
    alice
        .send(send_app("/app/echo", "ping", "r1").header("user-id", "mallory"))
        .await;
    alice.await_receipt("r1").await;
    // The RECEIPT came after the receiver answered 2xx.
    let received = receiver.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let request = &received[0];
    assert!(request.signed, "the signature checks out: {request:?}");
    assert_eq!(request.header("x-stompbox-tenant"), Some("default"));
    let items = receiver.items();
    let item = &items[0];
    assert_eq!(item["type"], "message");
    assert_eq!(item["user"], "alice");
    assert_eq!(item["tenant"], "default");
    assert_eq!(item["destination"], "/app/echo");
    assert_eq!(item["body"], "ping");
    assert_eq!(item["headers"]["reply-to"], "/user/queue/replies");
    assert_eq!(item["headers"]["correlation-id"], "c-1");
    assert_eq!(item["headers"]["content-type"], "text/plain");
    assert!(item["headers"].get("user-id").is_none(), "{item}");
    assert!(item["headers"].get("receipt").is_none(), "{item}");
    assert!(item["session"].as_str().is_some_and(|s| !s.is_empty()));

    // The backend answers the sender through the publish API.
    let (status, body) = node
        .publish(json!({
            "receiver": item["user"],
            "destination": "/queue/replies",
            "content": "pong",
            "headers": {"correlation-id": item["headers"]["correlation-id"]},
        }))
        .await;
    assert_eq!(status, 202, "{body}");
    let reply = alice.expect_message("pong").await;
    assert_eq!(reply.get("correlation-id"), Some("c-1"));
    node.stop().await;
}

#[tokio::test]
async fn a_webhook_failing_with_500_is_tried_again_and_the_receipt_waits_for_it() {
    let receiver = WebhookReceiver::start(SECRET).await;
    receiver.fail_next(2, 500);
    let node = TestNode::start(&webhook_config(&receiver.url(), "")).await;
    let mut alice = tcp_user(&node, "alice").await;
    alice.send(send_app("/app/orders", "1", "r1")).await;
    alice.await_receipt("r1").await;
    let received = receiver.received();
    assert_eq!(
        received.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![500, 500, 200]
    );
    // A retried batch is the same delivery with the same items.
    let deliveries: Vec<_> = received
        .iter()
        .map(|r| r.header("x-stompbox-delivery").unwrap().to_string())
        .collect();
    assert!(
        deliveries.iter().all(|d| d == &deliveries[0]),
        "{deliveries:?}"
    );
    assert!(received.iter().all(|r| r.signed));
    assert_eq!(receiver.items().len(), 1);
    let metrics = http_text(node.http, "/metrics").await;
    assert!(
        metrics.contains(
            "stompbox_upstream_failed_tries_total{tenant=\"default\",sink=\"webhook\"} 2"
        ),
        "{metrics}"
    );
    node.stop().await;
}

#[tokio::test]
async fn a_webhook_that_stays_down_gets_the_client_an_error() {
    let receiver = WebhookReceiver::start(SECRET).await;
    receiver.answer_always(Some(503));
    let node = TestNode::start(&webhook_config(&receiver.url(), "webhook_retries = 2\n")).await;
    let mut alice = tcp_user(&node, "alice").await;
    alice.send(send_app("/app/orders", "1", "r1")).await;
    let error = alice.expect_error("not accepted by the backend").await;
    assert_eq!(error.get("receipt-id"), Some("r1"));
    let detail = String::from_utf8_lossy(&error.body);
    assert!(
        detail.contains("503") && detail.contains("tried 3 times"),
        "{detail}"
    );
    assert_eq!(receiver.received().len(), 3);
    node.stop().await;
}

#[tokio::test]
async fn a_webhook_answering_4xx_is_not_tried_again() {
    let receiver = WebhookReceiver::start(SECRET).await;
    receiver.answer_always(Some(422));
    let node = TestNode::start(&webhook_config(&receiver.url(), "")).await;
    let mut alice = tcp_user(&node, "alice").await;
    alice.send(send_app("/app/orders", "1", "r1")).await;
    let error = alice.expect_error("not accepted by the backend").await;
    assert!(String::from_utf8_lossy(&error.body).contains("422"));
    assert_eq!(receiver.received().len(), 1);
    node.stop().await;
}

#[tokio::test]
async fn a_full_queue_refuses_at_once_and_other_tenants_go_on() {
    let receiver = WebhookReceiver::start(SECRET).await;
    receiver.delay(Duration::from_millis(1500));
    let toml = format!(
        "{}queue_bytes = 262144\nbatch_max = 1\n[[tenants]]\nid = \"other\"\n[tenants.upstream]\nwebhook_url = \"{}\"\nwebhook_secret = \"{SECRET}\"\n",
        webhook_config(&receiver.url(), ""),
        receiver.url()
    );
    let node = TestNode::start(&toml).await;
    let mut alice = tcp_user(&node, "alice").await;
    // 64 KiB bodies into a 256 KiB queue whose receiver takes 1.5 s per item: the fifth
    // cannot wait in memory and is refused with the limit named.
    let body = "x".repeat(60_000);
    for i in 0..6 {
        alice
            .send(send_app("/app/bulk", &body, &format!("r{i}")))
            .await;
    }
    let error = loop {
        let frame = alice.recv().await;
        if frame.command == Command::Error {
            break frame;
        }
    };
    let detail = String::from_utf8_lossy(&error.body).into_owned();
    assert!(
        detail.contains("queue") && detail.contains("262144"),
        "{detail}"
    );
    // Another tenant's queue is its own.
    let mut bob = Client::tcp(node.stomp).await;
    bob.connect(&[("host", "other"), ("userid", "bob")]).await;
    bob.send(send_app("/app/x", "small", "b1")).await;
    tokio::time::timeout(Duration::from_secs(20), bob.await_receipt("b1"))
        .await
        .expect("the other tenant's message is taken");
    node.stop().await;
}

#[tokio::test]
async fn without_a_backend_a_send_to_app_is_an_error_that_says_so() {
    let node = TestNode::default().await;
    let mut alice = tcp_user(&node, "alice").await;
    alice.send(send_app("/app/echo", "ping", "r1")).await;
    let error = alice.expect_error("not accepted by the backend").await;
    assert!(
        String::from_utf8_lossy(&error.body)
            .contains("no backend receives messages sent to /app/echo"),
        "{error:?}"
    );
    node.stop().await;
}

#[tokio::test]
async fn sends_in_a_transaction_go_to_the_backend_at_commit() {
    let receiver = WebhookReceiver::start(SECRET).await;
    let node = TestNode::start(&webhook_config(&receiver.url(), "")).await;
    let mut alice = tcp_user(&node, "alice").await;
    alice
        .send(Frame::new(Command::Begin).header("transaction", "t1"))
        .await;
    for body in ["a", "b"] {
        alice
            .send(
                Frame::new(Command::Send)
                    .header("destination", "/app/tx")
                    .header("transaction", "t1")
                    .body(body.as_bytes().to_vec()),
            )
            .await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(receiver.items().is_empty(), "nothing before COMMIT");
    alice
        .send(
            Frame::new(Command::Commit)
                .header("transaction", "t1")
                .header("receipt", "c"),
        )
        .await;
    alice.await_receipt("c").await;
    let bodies: Vec<Value> = receiver
        .wait_items(2, WAIT)
        .await
        .iter()
        .map(|i| i["body"].clone())
        .collect();
    assert_eq!(bodies, vec![json!("a"), json!("b")]);
    node.stop().await;
}

/// A stream entry's fields as text.
fn fields(entry: &redis::Value) -> Vec<(String, String)> {
    let redis::Value::Array(parts) = entry else {
        panic!("not an entry: {entry:?}")
    };
    let redis::Value::Array(kv) = &parts[1] else {
        panic!("no fields: {entry:?}")
    };
    kv.chunks(2)
        .map(|pair| {
            let text = |v: &redis::Value| match v {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                other => format!("{other:?}"),
            };
            (text(&pair[0]), text(&pair[1]))
        })
        .collect()
}

fn field<'a>(entry: &'a [(String, String)], name: &str) -> &'a str {
    entry
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

async fn stream_entries(backend: &Backend, key: &str) -> Vec<Vec<(String, String)>> {
    let entries: Vec<redis::Value> = backend
        .query(redis::cmd("XRANGE").arg(key).arg("-").arg("+"))
        .await;
    entries.iter().map(fields).collect()
}

const STREAM_TENANT: &str = "[[tenants]]\nid = \"default\"\n[tenants.upstream]\nstream = true\nevents = [\"connect\", \"disconnect\", \"subscribe\", \"unsubscribe\"]\n";

/// Everything a session does, in order, in the tenant's stream: on one Redis and on a Redis
/// Cluster.
async fn messages_and_events_in_the_stream_in_order(backend: Backend) {
    let node = NodeProcess::start("node-a", &backend, STREAM_TENANT);
    await_ready(&node).await;
    let mut alice = Client::tcp(node.stomp).await;
    alice.connect_as("alice").await;
    alice.subscribe("s1", "/user/queue/replies", "auto").await;
    for i in 0..20 {
        alice
            .send(send_app("/app/seq", &i.to_string(), &format!("r{i}")))
            .await;
    }
    alice.await_receipt("r19").await;
    alice
        .send(Frame::new(Command::Unsubscribe).header("id", "s1"))
        .await;
    alice
        .send(Frame::new(Command::Disconnect).header("receipt", "bye"))
        .await;
    alice.await_receipt("bye").await;
    let key = "sb:{default}:upstream";
    let deadline = tokio::time::Instant::now() + WAIT;
    let entries = loop {
        let entries = stream_entries(&backend, key).await;
        if entries.len() >= 24 || tokio::time::Instant::now() > deadline {
            break entries;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let kinds: Vec<&str> = entries.iter().map(|e| field(e, "type")).collect();
    let mut expected = vec!["connect", "subscribe"];
    expected.extend(std::iter::repeat_n("message", 20));
    expected.extend(["unsubscribe", "disconnect"]);
    assert_eq!(kinds, expected);
    let bodies: Vec<String> = entries[2..22]
        .iter()
        .map(|e| field(e, "body").to_string())
        .collect();
    assert_eq!(bodies, (0..20).map(|i| i.to_string()).collect::<Vec<_>>());
    let message = &entries[2];
    assert_eq!(field(message, "user"), "alice");
    assert_eq!(field(message, "node"), "node-a");
    assert_eq!(field(message, "destination"), "/app/seq");
    let headers: Value = serde_json::from_str(field(message, "headers")).unwrap();
    assert_eq!(headers["reply-to"], "/user/queue/replies");
    assert_eq!(field(&entries[0], "transport"), "tcp");
    assert_eq!(field(&entries[1], "destination"), "/user/queue/replies");
    assert_eq!(field(&entries[1], "subscription"), "s1");
    assert_eq!(field(&entries[23], "reason"), "client");
    let sessions: std::collections::HashSet<&str> =
        entries.iter().map(|e| field(e, "session")).collect();
    assert_eq!(sessions.len(), 1, "one session: {sessions:?}");
}
on_both!(messages_and_events_in_the_stream_in_order);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_gone_a_send_to_app_is_an_error_and_nothing_waits_forever() {
    let mut redis = Redis::start();
    let node = NodeProcess::start(
        "node-a",
        &redis,
        "[[tenants]]\nid = \"default\"\n[tenants.upstream]\nstream = true\n",
    );
    await_ready(&node).await;
    let mut alice = Client::tcp(node.stomp).await;
    alice.connect_as("alice").await;
    alice.send(send_app("/app/x", "before", "r0")).await;
    alice.await_receipt("r0").await;
    redis.kill();
    alice.send(send_app("/app/x", "after", "r1")).await;
    let error = tokio::time::timeout(Duration::from_secs(15), alice.expect(Command::Error))
        .await
        .expect("an ERROR within the retries");
    assert_eq!(
        error.get("message"),
        Some("message not accepted by the backend")
    );
    assert_eq!(error.get("receipt-id"), Some("r1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_and_a_webhook_both_take_each_message() {
    let redis = Redis::start();
    let receiver = WebhookReceiver::start(SECRET).await;
    let node = NodeProcess::start(
        "node-a",
        &redis,
        &format!(
            "[[tenants]]\nid = \"default\"\n[tenants.upstream]\nstream = true\nwebhook_url = \"{}\"\nwebhook_secret = \"{SECRET}\"\nevents = [\"connect\"]\n",
            receiver.url()
        ),
    );
    await_ready(&node).await;
    let mut alice = Client::tcp(node.stomp).await;
    alice.connect_as("alice").await;
    alice.send(send_app("/app/x", "both", "r1")).await;
    alice.await_receipt("r1").await;
    let hooked = receiver.wait_items(2, WAIT).await;
    assert_eq!(
        hooked.iter().map(|i| i["type"].clone()).collect::<Vec<_>>(),
        vec![json!("connect"), json!("message")]
    );
    let backend = Backend::Single(Box::new(redis));
    let streamed = stream_entries(&backend, "sb:{default}:upstream").await;
    assert_eq!(streamed.len(), 2);
    assert_eq!(field(&streamed[1], "id"), hooked[1]["id"].as_str().unwrap());
}

#[tokio::test]
async fn a_disconnect_event_says_why_the_session_ended() {
    let receiver = WebhookReceiver::start(SECRET).await;
    let node = TestNode::start(&webhook_config(
        &receiver.url(),
        "events = [\"connect\", \"disconnect\"]\n",
    ))
    .await;
    let mut alice = tcp_user(&node, "alice").await;
    let (status, _) = http_request(
        node.http,
        "DELETE",
        "/api/v1/tenants/default/users/alice/sessions",
        Some(API_KEY),
        "",
    )
    .await;
    assert_eq!(status, 200);
    alice.expect_error("disconnected by the server").await;
    let mut bob = tcp_user(&node, "bob").await;
    bob.send(
        Frame::new(Command::Subscribe)
            .header("destination", "/nowhere")
            .header("id", "1"),
    )
    .await;
    bob.expect_error("invalid destination").await;
    let events = receiver.wait_items(4, WAIT).await;
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                format!(
                    "{} {}",
                    e["type"].as_str().unwrap(),
                    e["user"].as_str().unwrap()
                ),
                e["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("connect alice".to_string(), String::new()),
            ("disconnect alice".to_string(), "disconnected".to_string()),
            ("connect bob".to_string(), String::new()),
            ("disconnect bob".to_string(), "protocol_error".to_string()),
        ]
    );
    node.stop().await;
}
