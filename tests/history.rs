//! Durable user messages on a node alone: stored before they are answered, replayed after the
//! user's cursor to a session that subscribes (the CONNECT→SUBSCRIBE window, an offline user, a
//! reload), resumed from a client's own `x-stream-offset`, within the tenant's retention, and
//! never twice to one session.

mod support;

use std::time::Duration;

use serde_json::json;
use stompbox::stomp::{Command, Frame};
use support::*;

/// Publishes `body` to `user`'s `/queue/notice` through the API; the answer.
async fn to_user(node: &TestNode, user: &str, body: &str) -> serde_json::Value {
    let (status, answer) = node
        .publish(json!({"receiver": user, "destination": "/queue/notice", "content": body}))
        .await;
    assert_eq!(status, 202, "{answer}");
    answer
}

/// SUBSCRIBE to `/user/queue/notice` with `headers` and a receipt: the replay, and the RECEIPT.
async fn subscribe(
    client: &mut Client,
    id: &str,
    ack: &str,
    headers: &[(&str, &str)],
) -> (Vec<Frame>, Frame) {
    client
        .subscribe_replay(id, "/user/queue/notice", ack, headers)
        .await
}

fn bodies(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .map(|f| String::from_utf8_lossy(&f.body).into_owned())
        .collect()
}

fn offsets(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| f.get("x-stream-offset").unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn a_message_sent_between_connect_and_subscribe_arrives() {
    let node = TestNode::default().await;
    let mut alice = tcp_user(&node, "alice").await;
    let answer = to_user(&node, "alice", "in the window").await;
    assert_eq!(answer["stored"], true);
    assert_eq!(answer["delivered"], 0, "no subscription yet");
    let (replayed, receipt) = subscribe(&mut alice, "1", "auto", &[]).await;
    assert_eq!(bodies(&replayed), ["in the window"]);
    assert_eq!(replayed[0].get("destination"), Some("/user/queue/notice"));
    assert_eq!(receipt.get("x-stream-recovered"), Some("true"));
    assert!(receipt.get("x-stream-epoch").is_some());
    // Then live, with the next offset.
    to_user(&node, "alice", "live").await;
    let live = alice.expect_message("live").await;
    assert_eq!(live.get("x-stream-offset"), Some("2"));
}

#[tokio::test]
async fn an_offline_user_gets_everything_in_order_once_on_any_later_session() {
    let node = TestNode::default().await;
    for i in 1..=10 {
        let answer = to_user(&node, "bob", &format!("m{i}")).await;
        assert_eq!(answer["online"], false, "{answer}");
        assert_eq!(answer["stored"], true, "{answer}");
    }
    let mut bob = ws_user(&node, "bob").await;
    let (replayed, receipt) = subscribe(&mut bob, "s", "auto", &[]).await;
    assert_eq!(
        bodies(&replayed),
        (1..=10).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    assert_eq!(offsets(&replayed), (1..=10).collect::<Vec<_>>());
    assert_eq!(receipt.get("x-stream-recovered"), Some("true"));
    bob.expect_nothing(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_reload_gets_what_was_sent_while_it_was_away_and_nothing_twice() {
    let node = TestNode::default().await;
    let mut page = tcp_user(&node, "carol").await;
    subscribe(&mut page, "1", "auto", &[]).await;
    for i in 1..=5 {
        to_user(&node, "carol", &format!("m{i}")).await;
        page.expect_message(&format!("m{i}")).await;
    }
    // A moment for the last delivery to count (server.delivery_confirm_ms, 50 ms).
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(page);
    // The node notices the closed socket and saves the cursor; meanwhile more arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 6..=8 {
        to_user(&node, "carol", &format!("m{i}")).await;
    }
    let mut reloaded = tcp_user(&node, "carol").await;
    let (replayed, _) = subscribe(&mut reloaded, "1", "auto", &[]).await;
    assert_eq!(bodies(&replayed), ["m6", "m7", "m8"]);
    to_user(&node, "carol", "m9").await;
    reloaded.expect_message("m9").await;
}

/// A frame written in the instant before a connection ends (a page unloading with it on the
/// way) does not count as delivered: the next session gets it again rather than never.
#[tokio::test]
async fn a_message_written_just_before_an_abrupt_close_comes_again() {
    let node = TestNode::default().await;
    let mut page = tcp_user(&node, "erin").await;
    subscribe(&mut page, "1", "auto", &[]).await;
    to_user(&node, "erin", "settled").await;
    page.expect_message("settled").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    to_user(&node, "erin", "on its way").await;
    drop(page);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut reloaded = tcp_user(&node, "erin").await;
    let (replayed, _) = subscribe(&mut reloaded, "1", "auto", &[]).await;
    assert_eq!(bodies(&replayed), ["on its way"]);
}

#[tokio::test]
async fn a_client_resumes_from_its_own_offset_and_learns_when_history_is_gone() {
    let node = TestNode::start(
        "[[tenants]]\nid = \"default\"\nhistory_max_messages = 5\napi_keys = [\"test-api-key\"]\n",
    )
    .await;
    for i in 1..=8 {
        to_user(&node, "dave", &format!("m{i}")).await;
    }
    let mut dave = tcp_user(&node, "dave").await;
    let (replayed, receipt) =
        subscribe(&mut dave, "1", "auto", &[("x-stream-offset", "offset=6")]).await;
    assert_eq!(
        bodies(&replayed),
        ["m6", "m7", "m8"],
        "offset=N is inclusive"
    );
    assert_eq!(receipt.get("x-stream-recovered"), Some("true"));
    let mut other = tcp_user(&node, "dave").await;
    let (replayed, receipt) =
        subscribe(&mut other, "1", "auto", &[("x-stream-offset", "offset=2")]).await;
    assert_eq!(
        bodies(&replayed),
        ["m4", "m5", "m6", "m7", "m8"],
        "five are kept"
    );
    assert_eq!(
        receipt.get("x-stream-recovered"),
        Some("false"),
        "2 and 3 are gone, and the client is told"
    );
    let mut late = tcp_user(&node, "dave").await;
    let (replayed, _) = subscribe(&mut late, "1", "auto", &[("x-stream-offset", "next")]).await;
    assert!(replayed.is_empty());
    let (replayed, _) = subscribe(&mut late, "2", "auto", &[("x-stream-offset", "last")]).await;
    assert_eq!(bodies(&replayed), ["m8"]);
}

#[tokio::test]
async fn unacknowledged_messages_come_back_to_the_next_session() {
    let node = TestNode::default().await;
    for i in 1..=3 {
        to_user(&node, "erin", &format!("m{i}")).await;
    }
    let mut first = tcp_user(&node, "erin").await;
    let (replayed, _) = subscribe(&mut first, "1", "client-individual", &[]).await;
    assert_eq!(bodies(&replayed), ["m1", "m2", "m3"]);
    first
        .send(Frame::new(Command::Ack).header("id", replayed[0].get("ack").unwrap()))
        .await;
    first
        .send(Frame::new(Command::Disconnect).header("receipt", "bye"))
        .await;
    first.expect(Command::Receipt).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut second = tcp_user(&node, "erin").await;
    let (replayed, _) = subscribe(&mut second, "1", "auto", &[]).await;
    assert_eq!(bodies(&replayed), ["m2", "m3"], "only m1 was acknowledged");
}

#[tokio::test]
async fn concurrent_publishes_reach_a_subscriber_in_offset_order_without_gaps() {
    let node = TestNode::default().await;
    let mut frank = tcp_user(&node, "frank").await;
    subscribe(&mut frank, "1", "auto", &[]).await;
    let publishers: Vec<_> = (0..8)
        .map(|p| {
            let http = node.http;
            tokio::spawn(async move {
                for i in 0..25 {
                    let body = json!({"receiver": "frank", "destination": "/queue/notice", "content": format!("{p}-{i}")});
                    let (status, _) = http_request(
                        http,
                        "POST",
                        "/api/v1/tenants/default/publish",
                        Some(API_KEY),
                        &body.to_string(),
                    )
                    .await;
                    assert_eq!(status, 202);
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..200 {
        got.push(frank.expect(Command::Message).await);
    }
    assert_eq!(offsets(&got), (1..=200).collect::<Vec<_>>());
    frank.expect_nothing(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_tenant_that_opts_out_keeps_at_most_once_delivery() {
    let node = TestNode::start(
        "[[tenants]]\nid = \"default\"\nhistory = false\napi_keys = [\"test-api-key\"]\n",
    )
    .await;
    let answer = to_user(&node, "gina", "not kept").await;
    assert_eq!(answer["stored"], false);
    assert_eq!(answer["online"], false);
    let mut gina = tcp_user(&node, "gina").await;
    let (replayed, receipt) = subscribe(&mut gina, "1", "auto", &[]).await;
    assert!(replayed.is_empty());
    assert_eq!(receipt.get("x-stream-recovered"), None);
    to_user(&node, "gina", "live").await;
    let live = gina.expect_message("live").await;
    assert_eq!(live.get("x-stream-offset"), None);
}

#[tokio::test]
async fn a_destination_prefix_that_opts_out_keeps_at_most_once_delivery() {
    let node = TestNode::start(
        "[[tenants]]\nid = \"default\"\nhistory_exclude = [\"/queue/typing\"]\napi_keys = [\"test-api-key\"]\n",
    )
    .await;
    let (status, typing) = node
        .publish(json!({"receiver": "hal", "destination": "/queue/typing/doc-1", "content": "..."}))
        .await;
    assert_eq!(status, 202, "{typing}");
    assert_eq!(typing["stored"], false, "{typing}");
    assert_eq!(to_user(&node, "hal", "kept").await["stored"], true);
    let mut hal = tcp_user(&node, "hal").await;
    let (replayed, _) = subscribe(&mut hal, "1", "auto", &[]).await;
    assert_eq!(bodies(&replayed), ["kept"]);
    hal.send(
        Frame::new(Command::Subscribe)
            .header("id", "2")
            .header("destination", "/user/queue/typing/doc-1")
            .header("x-stream-offset", "first"),
    )
    .await;
    hal.expect_error("no stream for x-stream-offset").await;
}

#[tokio::test]
async fn bad_stream_offsets_and_streamless_destinations_are_refused_by_name() {
    let node = TestNode::default().await;
    let mut c = tcp_user(&node, "hank").await;
    c.send(
        Frame::new(Command::Subscribe)
            .header("id", "1")
            .header("destination", "/user/queue/notice")
            .header("x-stream-offset", "yesterday"),
    )
    .await;
    let error = c.expect_error("invalid x-stream-offset").await;
    let detail = String::from_utf8_lossy(&error.body);
    assert!(
        detail.contains("first, last, next, offset=N or timestamp=SECONDS"),
        "{detail}"
    );
    let mut c = tcp_user(&node, "hank").await;
    c.send(
        Frame::new(Command::Subscribe)
            .header("id", "1")
            .header("destination", "/topic/news")
            .header("x-stream-offset", "first"),
    )
    .await;
    c.expect_error("no stream for x-stream-offset").await;
}

#[tokio::test]
async fn a_full_store_refuses_the_publish_with_its_limit() {
    let node = TestNode::start("[history]\nmax_bytes = 262144\n").await;
    let content = "x".repeat(50_000);
    let mut accepted = 0;
    let answer = loop {
        let (status, answer) = node
            .publish(json!({"receiver": "ivy", "destination": "/queue/notice", "content": content}))
            .await;
        if status != 202 {
            assert_eq!(status, 503, "{answer}");
            break answer;
        }
        accepted += 1;
    };
    assert_eq!(accepted, 5, "256 KiB holds five 50 KB messages");
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("history.max_bytes"), "{error}");
}

#[tokio::test]
async fn a_replay_larger_than_the_outbound_queue_flows_at_the_connections_pace() {
    // 1,000 × 10 KB stored: more than twice a connection's 4 MiB outbound queue.
    let node = TestNode::default().await;
    for i in 0..1_000 {
        let content = format!("{i:08}{}", ".".repeat(10_000 - 8));
        to_user(&node, "jill", &content).await;
    }
    let mut jill = tcp_user(&node, "jill").await;
    jill.send(
        Frame::new(Command::Subscribe)
            .header("id", "1")
            .header("destination", "/user/queue/notice"),
    )
    .await;
    for i in 0..1_000 {
        let m = jill.expect(Command::Message).await;
        let n: usize = std::str::from_utf8(&m.body[..8]).unwrap().parse().unwrap();
        assert_eq!(n, i, "in order, none lost");
    }
    // Live messages after a replay still flowing wait their turn behind it.
    to_user(&node, "jill", "after").await;
    jill.expect_message("after").await;
    assert_eq!(node.node.metrics.slow_consumers_closed(), 0);
}

/// A tenant whose `/topic/prices/` topics keep their last five messages.
const TOPIC_HISTORY: &str = "[[tenants]]\nid = \"default\"\napi_keys = [\"test-api-key\"]\n\
[[tenants.topic_history]]\nprefix = \"/topic/prices/\"\nmax_messages = 5\n";

async fn to_topic(node: &TestNode, topic: &str, body: &str) -> serde_json::Value {
    let (status, answer) = node
        .publish(json!({"destination": topic, "content": body}))
        .await;
    assert_eq!(status, 202, "{answer}");
    answer
}

#[tokio::test]
async fn a_topic_with_history_replays_from_where_a_subscriber_asks_and_then_goes_live() {
    let node = TestNode::start(TOPIC_HISTORY).await;
    for i in 1..=3 {
        let answer = to_topic(&node, "/topic/prices/acme", &format!("p{i}")).await;
        assert_eq!(answer["stored"], true, "{answer}");
    }
    let mut from_first = tcp_user(&node, "kim").await;
    let (replayed, receipt) = from_first
        .subscribe_replay(
            "1",
            "/topic/prices/acme",
            "auto",
            &[("x-stream-offset", "first")],
        )
        .await;
    assert_eq!(bodies(&replayed), ["p1", "p2", "p3"]);
    assert_eq!(offsets(&replayed), [1, 2, 3]);
    assert_eq!(replayed[0].get("destination"), Some("/topic/prices/acme"));
    assert_eq!(receipt.get("x-stream-recovered"), Some("true"));
    let epoch = receipt.get("x-stream-epoch").unwrap().to_string();
    // Without x-stream-offset: live only, as for any topic, but with offsets.
    let mut live_only = tcp_user(&node, "lee").await;
    let (nothing, receipt) = live_only
        .subscribe_replay("1", "/topic/prices/acme", "auto", &[])
        .await;
    assert!(nothing.is_empty());
    assert_eq!(receipt.get("x-stream-recovered"), None);
    to_topic(&node, "/topic/prices/acme", "p4").await;
    assert_eq!(
        from_first.expect_message("p4").await.get("x-stream-offset"),
        Some("4")
    );
    assert_eq!(
        live_only.expect_message("p4").await.get("x-stream-offset"),
        Some("4")
    );
    // A subscriber that saw offset 2 resumes exactly after it.
    let mut resumed = tcp_user(&node, "max").await;
    let (replayed, receipt) = resumed
        .subscribe_replay(
            "1",
            "/topic/prices/acme",
            "auto",
            &[("x-stream-offset", "offset=3"), ("x-stream-epoch", &epoch)],
        )
        .await;
    assert_eq!(bodies(&replayed), ["p3", "p4"]);
    assert_eq!(receipt.get("x-stream-recovered"), Some("true"));
    // Past the retention of five: asking for offset 1 says the gap is not closed.
    for i in 5..=7 {
        to_topic(&node, "/topic/prices/acme", &format!("p{i}")).await;
    }
    let mut late = tcp_user(&node, "ned").await;
    let (replayed, receipt) = late
        .subscribe_replay(
            "1",
            "/topic/prices/acme",
            "auto",
            &[("x-stream-offset", "offset=1")],
        )
        .await;
    assert_eq!(bodies(&replayed), ["p3", "p4", "p5", "p6", "p7"]);
    assert_eq!(receipt.get("x-stream-recovered"), Some("false"));
    // Each topic is a stream of its own; a topic outside the prefixes keeps none.
    let other = to_topic(&node, "/topic/prices/globex", "g1").await;
    assert_eq!(other["stored"], true);
    let plain = to_topic(&node, "/topic/news", "n1").await;
    assert_eq!(plain.get("stored"), None, "{plain}");
    let mut globex = tcp_user(&node, "oz").await;
    let (replayed, _) = globex
        .subscribe_replay(
            "1",
            "/topic/prices/globex",
            "auto",
            &[("x-stream-offset", "first")],
        )
        .await;
    assert_eq!(offsets(&replayed), [1]);
    globex
        .send(
            Frame::new(Command::Subscribe)
                .header("id", "2")
                .header("destination", "/topic/news")
                .header("x-stream-offset", "first"),
        )
        .await;
    globex.expect_error("no stream for x-stream-offset").await;
}

#[tokio::test]
async fn stomp_sends_to_a_topic_with_history_are_stored_in_order_while_a_replay_flows() {
    let node = TestNode::start(TOPIC_HISTORY).await;
    let mut publisher = tcp_user(&node, "pub").await;
    for i in 1..=5 {
        publisher.send_to("/topic/prices/x", &format!("s{i}")).await;
    }
    // Publishes keep coming while a subscriber replays: it gets every offset once, in order.
    let sender = tokio::spawn(async move {
        for i in 6..=200 {
            publisher.send_to("/topic/prices/x", &format!("s{i}")).await;
        }
        publisher
    });
    let mut reader = tcp_user(&node, "reader").await;
    let (mut got, _) = reader
        .subscribe_replay(
            "1",
            "/topic/prices/x",
            "client-individual",
            &[("x-stream-offset", "first")],
        )
        .await;
    while got
        .last()
        .map_or(0, |f| offsets(std::slice::from_ref(f))[0])
        < 200
    {
        got.push(reader.expect(Command::Message).await);
    }
    let seen = offsets(&got);
    // What the replay found (the last five at most), then everything live: no gap, no repeat.
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "{seen:?}");
    assert_eq!(*seen.last().unwrap(), 200);
    assert_eq!(
        bodies(&got),
        seen.iter().map(|o| format!("s{o}")).collect::<Vec<_>>()
    );
    sender.await.unwrap();
}
