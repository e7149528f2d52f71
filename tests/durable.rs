//! Durable user messages across a cluster: two node processes and a `redis-server` of the
//! test's own. A message answered 202 is stored in Redis first, so it reaches the user across
//! the CONNECT→SUBSCRIBE window, while they are offline, across a move to another node, when
//! several nodes publish to them at once, and across a Redis restart that keeps its
//! append-only file; a Redis that restarts empty starts a new epoch and the client is told.
//! A topic with history is one stream for the cluster: a subscriber on either node replays it
//! from where it asks while both nodes publish, every offset once and in order. Every test but
//! those that restart or kill the single Redis runs on one Redis and on a Redis Cluster.

mod support;

use std::time::Duration;

use serde_json::json;
use stompbox::stomp::{Command, Frame};
use support::cluster::{await_ready, Backend, Backing, NodeProcess, Redis};
use support::*;

fn config() -> String {
    format!(
        "[cluster]\nnode_ttl_ms = 2000\n[[tenants]]\nid = \"default\"\napi_keys = [\"{API_KEY}\"]\nhistory_max_messages = 50\n\
         [[tenants.topic_history]]\nprefix = \"/topic/prices/\"\n"
    )
}

async fn two_nodes(redis: &impl Backing) -> (NodeProcess, NodeProcess) {
    let toml = config();
    let a = NodeProcess::start("node-a", &redis, &toml);
    let b = NodeProcess::start("node-b", &redis, &toml);
    await_ready(&a).await;
    await_ready(&b).await;
    (a, b)
}

/// Publishes `body` to `user`'s `/queue/notice` through `node`'s API: status and answer.
async fn to_user(node: &NodeProcess, user: &str, body: &str) -> (u16, serde_json::Value) {
    http_request(
        node.http,
        "POST",
        "/api/v1/tenants/default/publish",
        Some(API_KEY),
        &json!({"receiver": user, "destination": "/queue/notice", "content": body}).to_string(),
    )
    .await
}

async fn stored(node: &NodeProcess, user: &str, body: &str) -> serde_json::Value {
    let (status, answer) = to_user(node, user, body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["stored"], true, "{answer}");
    answer
}

async fn user_on(node: &NodeProcess, user: &str) -> Client {
    let mut client = Client::tcp(node.stomp).await;
    client.connect_as(user).await;
    client
}

/// SUBSCRIBE to `/user/queue/notice` with a receipt and `headers`: the replay, and the
/// RECEIPT.
async fn subscribe(client: &mut Client, headers: &[(&str, &str)]) -> (Vec<Frame>, Frame) {
    client
        .subscribe_replay("1", "/user/queue/notice", "auto", headers)
        .await
}

/// What reaches `client` until it has been quiet for `quiet`.
async fn drain(client: &mut Client, quiet: Duration) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(frame) = client.recv_within(quiet).await {
        if frame.command == Command::Message {
            frames.push(frame);
        }
    }
    frames
}

fn bodies(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .map(|f| String::from_utf8_lossy(&f.body).into_owned())
        .collect()
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

on_both!(a_message_published_on_another_node_between_connect_and_subscribe_arrives);
async fn a_message_published_on_another_node_between_connect_and_subscribe_arrives(redis: Backend) {
    let (a, b) = two_nodes(&redis).await;
    for round in 0..5 {
        let user = format!("alice{round}");
        let mut alice = user_on(&a, &user).await;
        stored(&b, &user, "in the window").await;
        let (replayed, receipt) = subscribe(&mut alice, &[]).await;
        let mut got = bodies(&replayed);
        got.extend(bodies(&drain(&mut alice, Duration::from_millis(300)).await));
        assert_eq!(got, ["in the window"], "round {round}");
        assert_eq!(receipt.get("x-stream-recovered"), Some("true"));
    }
}

on_both!(an_offline_user_gets_everything_once_on_any_node_and_a_move_loses_nothing);
async fn an_offline_user_gets_everything_once_on_any_node_and_a_move_loses_nothing(redis: Backend) {
    let (a, b) = two_nodes(&redis).await;
    for i in 0..10 {
        let answer = stored(&a, "bob", &format!("m{i}")).await;
        assert_eq!(answer["online"], false, "{answer}");
    }
    let mut bob = user_on(&b, "bob").await;
    let (replayed, _) = subscribe(&mut bob, &[]).await;
    assert_eq!(bodies(&replayed), numbered("m", 0..10));
    // Live through the other node, then bob moves to A while messages keep coming.
    for i in 10..15 {
        let answer = stored(&a, "bob", &format!("m{i}")).await;
        assert_eq!(answer["online"], true, "{answer}");
    }
    let live = bodies(&drain(&mut bob, Duration::from_millis(500)).await);
    assert_eq!(live, numbered("m", 10..15));
    drop(bob);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 15..20 {
        stored(&b, "bob", &format!("m{i}")).await;
    }
    let mut bob = user_on(&a, "bob").await;
    let (replayed, receipt) = subscribe(&mut bob, &[]).await;
    assert_eq!(
        bodies(&replayed),
        numbered("m", 15..20),
        "only what he missed"
    );
    assert_eq!(receipt.get("x-stream-recovered"), Some("true"));
}

on_both!(publishes_through_both_nodes_at_once_arrive_in_offset_order_without_gaps);
async fn publishes_through_both_nodes_at_once_arrive_in_offset_order_without_gaps(redis: Backend) {
    let (a, b) = two_nodes(&redis).await;
    let mut carol = user_on(&a, "carol").await;
    subscribe(&mut carol, &[]).await;
    const EACH: usize = 200;
    let through = |node: &NodeProcess, prefix: &'static str| {
        let http = node.http;
        async move {
            for i in 0..EACH {
                let (status, answer) = http_request(
                    http,
                    "POST",
                    "/api/v1/tenants/default/publish",
                    Some(API_KEY),
                    &json!({"receiver": "carol", "destination": "/queue/notice", "content": format!("{prefix}{i}")})
                        .to_string(),
                )
                .await;
                assert_eq!(status, 202, "{answer}");
            }
        }
    };
    tokio::join!(through(&a, "a"), through(&b, "b"));
    let frames = drain(&mut carol, Duration::from_millis(800)).await;
    let offsets: Vec<u64> = frames
        .iter()
        .map(|f| f.get("x-stream-offset").unwrap().parse().unwrap())
        .collect();
    let expected: Vec<u64> = (1..=2 * EACH as u64).collect();
    assert_eq!(offsets, expected, "every offset once, in order");
    for prefix in ["a", "b"] {
        let mine: Vec<String> = bodies(&frames)
            .into_iter()
            .filter(|b| b.starts_with(prefix))
            .collect();
        assert_eq!(mine, numbered(prefix, 0..EACH), "each node's in its order");
    }
}

on_both!(a_client_resumes_from_its_offset_on_another_node_and_learns_when_history_is_gone);
async fn a_client_resumes_from_its_offset_on_another_node_and_learns_when_history_is_gone(
    redis: Backend,
) {
    let (a, b) = two_nodes(&redis).await;
    for i in 0..10 {
        stored(&a, "dave", &format!("m{i}")).await;
    }
    let mut dave = user_on(&b, "dave").await;
    let (replayed, receipt) = subscribe(&mut dave, &[("x-stream-offset", "offset=4")]).await;
    assert_eq!(
        bodies(&replayed),
        numbered("m", 3..10),
        "offset=N starts at N"
    );
    assert_eq!(receipt.get("x-stream-recovered"), Some("true"));
    let epoch = receipt.get("x-stream-epoch").unwrap().to_string();
    assert_ne!(epoch, "0");
    drop(dave);
    // Past the retention of 50, offset 1 is gone.
    for i in 10..70 {
        stored(&b, "dave", &format!("m{i}")).await;
    }
    let mut dave = user_on(&a, "dave").await;
    let (replayed, receipt) = subscribe(
        &mut dave,
        &[("x-stream-offset", "offset=1"), ("x-stream-epoch", &epoch)],
    )
    .await;
    assert_eq!(receipt.get("x-stream-recovered"), Some("false"));
    assert_eq!(bodies(&replayed), numbered("m", 20..70), "what is kept");
    // An epoch the store never had is not read as this one.
    let mut dave = user_on(&a, "dave").await;
    let (replayed, receipt) = subscribe(
        &mut dave,
        &[
            ("x-stream-offset", "offset=60"),
            ("x-stream-epoch", "12345"),
        ],
    )
    .await;
    assert_eq!(receipt.get("x-stream-recovered"), Some("false"));
    assert_eq!(replayed.len(), 50, "from the oldest kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_with_its_append_only_file_loses_nothing() {
    let mut redis = Redis::start_persistent();
    let (a, b) = two_nodes(&redis).await;
    for i in 0..10 {
        stored(&b, "erin", &format!("m{i}")).await;
    }
    redis.kill();
    redis.restart();
    await_ready(&a).await;
    await_ready(&b).await;
    let mut erin = user_on(&a, "erin").await;
    let (replayed, receipt) = subscribe(&mut erin, &[]).await;
    assert_eq!(bodies(&replayed), numbered("m", 0..10));
    assert_eq!(receipt.get("x-stream-recovered"), Some("true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_starts_a_new_epoch_and_the_client_is_told() {
    let mut redis = Redis::start();
    let (a, b) = two_nodes(&redis).await;
    let mut frank = user_on(&a, "frank").await;
    let (_, first) = subscribe(&mut frank, &[]).await;
    for i in 0..5 {
        stored(&b, "frank", &format!("old{i}")).await;
    }
    assert_eq!(
        bodies(&drain(&mut frank, Duration::from_millis(500)).await),
        numbered("old", 0..5)
    );
    redis.restart();
    await_ready(&a).await;
    await_ready(&b).await;
    // Every node has seen Redis come back without its data.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for i in 0..3 {
        stored(&b, "frank", &format!("new{i}")).await;
    }
    assert_eq!(
        bodies(&drain(&mut frank, Duration::from_millis(800)).await),
        numbered("new", 0..3),
        "the live session goes on in the new epoch"
    );
    drop(frank);
    let mut frank = user_on(&b, "frank").await;
    let (replayed, receipt) = subscribe(&mut frank, &[]).await;
    assert_eq!(
        receipt.get("x-stream-recovered"),
        Some("false"),
        "the old epoch's cursor is gone with Redis: {receipt:?}"
    );
    assert_ne!(receipt.get("x-stream-epoch"), first.get("x-stream-epoch"));
    let replayed = bodies(&replayed);
    assert!(
        replayed.iter().all(|b| b.starts_with("new")),
        "nothing of the old epoch again: {replayed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_be_reached_refuses_with_the_reason() {
    let mut redis = Redis::start();
    let (a, _b) = two_nodes(&redis).await;
    redis.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, answer) = to_user(&a, "gina", "x").await;
        if status == 503 {
            let error = answer["error"].as_str().unwrap_or_default().to_string();
            assert!(error.contains("store"), "{answer}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

on_both!(a_message_on_its_way_when_the_page_went_comes_again_on_another_node);
async fn a_message_on_its_way_when_the_page_went_comes_again_on_another_node(redis: Backend) {
    let (a, b) = two_nodes(&redis).await;
    let mut ivy = user_on(&a, "ivy").await;
    subscribe(&mut ivy, &[]).await;
    stored(&b, "ivy", "settled").await;
    ivy.expect_message("settled").await;
    // Past server.delivery_confirm_ms (50 ms): "settled" counts as delivered.
    tokio::time::sleep(Duration::from_millis(150)).await;
    stored(&b, "ivy", "on its way").await;
    // Written to the socket (and saved, in case A died), but the page goes at once: it does
    // not count, and the cursor is put back.
    ivy.expect_message("on its way").await;
    drop(ivy);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.metric("stompbox_cursor_rewinds_total").await, 1);
    let mut ivy = user_on(&b, "ivy").await;
    let (replayed, receipt) = subscribe(&mut ivy, &[]).await;
    assert_eq!(bodies(&replayed), ["on its way"]);
    assert_eq!(receipt.get("x-stream-recovered"), Some("true"));
    assert!(b.metric("stompbox_stored_messages_total").await >= 2);
}

fn stream_offsets(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| f.get("x-stream-offset").unwrap().parse().unwrap())
        .collect()
}

on_both!(a_topic_with_history_replays_on_either_node_while_both_publish);
async fn a_topic_with_history_replays_on_either_node_while_both_publish(redis: Backend) {
    let (a, b) = two_nodes(&redis).await;
    const EACH: usize = 200;
    const TOPIC: &str = "/topic/prices/acme";
    let mut live_only = user_on(&a, "watcher").await;
    live_only.subscribe("1", TOPIC, "auto").await;
    let through = |node: &NodeProcess, prefix: &'static str| {
        let http = node.http;
        async move {
            for i in 0..EACH {
                let (status, answer) = http_request(
                    http,
                    "POST",
                    "/api/v1/tenants/default/publish",
                    Some(API_KEY),
                    &json!({"destination": TOPIC, "content": format!("{prefix}{i}")}).to_string(),
                )
                .await;
                assert_eq!(status, 202, "{answer}");
                assert_eq!(answer["stored"], true, "{answer}");
            }
        }
    };
    // Replaying subscribers join on both nodes while the publishes run.
    let join_late = |node: &NodeProcess, name: &'static str| {
        let stomp = node.stomp;
        async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let mut client = Client::tcp(stomp).await;
            client.connect_as(name).await;
            let (replayed, receipt) = client
                .subscribe_replay("1", TOPIC, "auto", &[("x-stream-offset", "first")])
                .await;
            assert_eq!(receipt.get("x-stream-recovered"), Some("true"), "{name}");
            (client, replayed)
        }
    };
    let (_, _, (mut on_a, replay_a), (mut on_b, replay_b)) = tokio::join!(
        through(&a, "a"),
        through(&b, "b"),
        join_late(&a, "late-a"),
        join_late(&b, "late-b")
    );
    let every: Vec<u64> = (1..=2 * EACH as u64).collect();
    for (name, client, mut frames) in [("A", &mut on_a, replay_a), ("B", &mut on_b, replay_b)] {
        frames.extend(drain(client, Duration::from_millis(800)).await);
        assert_eq!(
            stream_offsets(&frames),
            every,
            "replaying on {name}: each once, in order"
        );
    }
    // The live-only subscriber was there from the start: it got everything once.
    let mut seen = stream_offsets(&drain(&mut live_only, Duration::from_millis(300)).await);
    seen.sort_unstable();
    assert_eq!(seen, every, "live only: each once");
    // A subscriber that saw offset 300 resumes after it on the other node.
    let mut resumed = user_on(&b, "resumer").await;
    let (replayed, receipt) = resumed
        .subscribe_replay("1", TOPIC, "auto", &[("x-stream-offset", "offset=301")])
        .await;
    assert_eq!(receipt.get("x-stream-recovered"), Some("true"));
    assert_eq!(stream_offsets(&replayed), (301..=400).collect::<Vec<u64>>());
}

/// Publishes `body` to queue `dest` through `node`'s API, expecting it stored.
async fn to_queue(node: &NodeProcess, dest: &str, body: &str) {
    let (status, answer) = http_request(
        node.http,
        "POST",
        "/api/v1/tenants/default/publish",
        Some(API_KEY),
        &json!({"destination": dest, "content": body}).to_string(),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["stored"], true, "{answer}");
}

/// Waits until `dest` has consumers on `n` nodes in Redis.
async fn await_consumers(redis: &Backend, dest: &str, n: usize) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let got: usize = redis
            .query(redis::cmd("SCARD").arg(format!("sb:{{default:{dest}}}:consumers")))
            .await;
        if got == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{dest}: {got} consumer nodes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// MESSAGE frames until `n` arrived (within 20 s), then nothing more for `quiet`.
async fn receive(client: &mut Client, n: usize, quiet: Duration) -> Vec<Frame> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut frames = Vec::new();
    while frames.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} arrived",
            frames.len()
        );
        if let Some(frame) = client.recv_within(Duration::from_millis(500)).await {
            assert_eq!(frame.command, Command::Message, "{frame:?}");
            frames.push(frame);
        }
    }
    frames.extend(drain(client, quiet).await);
    frames
}

on_both!(a_queue_consumer_killed_with_its_node_leaves_what_it_did_not_acknowledge_to_another);
async fn a_queue_consumer_killed_with_its_node_leaves_what_it_did_not_acknowledge_to_another(
    redis: Backend,
) {
    let (mut a, b) = two_nodes(&redis).await;
    let mut on_a = user_on(&a, "worker-a").await;
    on_a.subscribe("1", "/queue/jobs", "client-individual")
        .await;
    await_consumers(&redis, "/queue/jobs", 1).await;
    const N: usize = 1_000;
    for i in 0..N {
        to_queue(&b, "/queue/jobs", &format!("job{i}")).await;
    }
    let held = receive(&mut on_a, N, Duration::from_millis(200)).await;
    assert_eq!(
        bodies(&held),
        numbered("job", 0..N),
        "all of them, once, in order"
    );
    // Half acknowledged (the last ACK's RECEIPT comes once the store removed them all)...
    for (i, m) in held.iter().take(N / 2).enumerate() {
        let mut ack = Frame::new(Command::Ack).header("id", m.get("ack").unwrap());
        if i == N / 2 - 1 {
            ack = ack.header("receipt", "acked");
        }
        on_a.send(ack).await;
    }
    on_a.await_receipt("acked").await;
    // ...then its node is killed; a consumer on B gets the other half, marked redelivered.
    a.kill9();
    let mut on_b = user_on(&b, "worker-b").await;
    on_b.subscribe("1", "/queue/jobs", "auto").await;
    let got = receive(&mut on_b, N / 2, Duration::from_millis(1_500)).await;
    let mut bodies_b = bodies(&got);
    bodies_b.sort();
    let mut expected = numbered("job", N / 2..N);
    expected.sort();
    assert_eq!(bodies_b, expected, "the unacknowledged half, each once");
    assert!(
        got.iter().all(|m| m.get("redelivered") == Some("true")),
        "marked redelivered"
    );
}

on_both!(queue_messages_wait_in_redis_for_a_consumer_and_survive_the_node_that_took_them);
async fn queue_messages_wait_in_redis_for_a_consumer_and_survive_the_node_that_took_them(
    redis: Backend,
) {
    let (mut a, b) = two_nodes(&redis).await;
    // Stored through A while no node consumes the queue, then A is killed.
    for i in 0..20 {
        to_queue(&a, "/queue/later", &format!("l{i}")).await;
    }
    a.kill9();
    let mut on_b = user_on(&b, "worker").await;
    on_b.subscribe("1", "/queue/later", "auto").await;
    let got = receive(&mut on_b, 20, Duration::from_millis(300)).await;
    assert_eq!(bodies(&got), numbered("l", 0..20));
    assert!(
        got.iter().all(|m| m.get("redelivered").is_none()),
        "first deliveries"
    );
    // A consumer that leaves without acknowledging gives back what it held.
    let mut leaver = user_on(&b, "leaver").await;
    leaver.subscribe("2", "/queue/handover", "client").await;
    await_consumers(&redis, "/queue/handover", 1).await;
    for i in 0..10 {
        to_queue(&b, "/queue/handover", &format!("h{i}")).await;
    }
    receive(&mut leaver, 10, Duration::from_millis(100)).await;
    drop(leaver);
    await_consumers(&redis, "/queue/handover", 0).await;
    // No consumer anywhere now: what it held waits in Redis for the next one.
    let mut next = user_on(&b, "next").await;
    next.subscribe("3", "/queue/handover", "auto").await;
    let got = receive(&mut next, 10, Duration::from_millis(300)).await;
    assert_eq!(bodies(&got), numbered("h", 0..10));
    assert!(got.iter().all(|m| m.get("redelivered") == Some("true")));
}

on_both!(a_node_restarted_under_its_id_delivers_again_what_its_earlier_run_held);
async fn a_node_restarted_under_its_id_delivers_again_what_its_earlier_run_held(redis: Backend) {
    let (mut a, _b) = two_nodes(&redis).await;
    let mut holder = user_on(&a, "holder").await;
    holder.subscribe("1", "/queue/restart", "client").await;
    await_consumers(&redis, "/queue/restart", 1).await;
    for i in 0..5 {
        to_queue(&a, "/queue/restart", &format!("r{i}")).await;
    }
    receive(&mut holder, 5, Duration::from_millis(100)).await;
    a.kill9();
    // Back at once under the same id: node-a is live, but the entries were its earlier run's.
    let a = NodeProcess::start("node-a", &redis, &config());
    await_ready(&a).await;
    let mut next = user_on(&a, "next").await;
    next.subscribe("1", "/queue/restart", "auto").await;
    let got = receive(&mut next, 5, Duration::from_millis(300)).await;
    assert_eq!(bodies(&got), numbered("r", 0..5));
    assert!(got.iter().all(|m| m.get("redelivered") == Some("true")));
}
