//! The cluster with real processes: three `stompbox` nodes per test on a `redis-server` of the
//! test's own, driven over WebSocket, TCP and the publish API. Every test but the one that
//! kills the single Redis runs twice: on one Redis, and on a Redis Cluster of three primaries
//! with a replica each (`on_both!`).

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::cluster::{await_ready, Backend, Backing, NodeProcess};
use support::*;

const QUIET: Duration = Duration::from_millis(300);

fn config(extra_tenant: &str) -> String {
    format!(
        "[cluster]\nnode_ttl_ms = 2000\npresence_cache_ms = 1000\n[[tenants]]\nid = \"default\"\napi_keys = [\"{API_KEY}\"]\nplugin = \"{}\"\nredis_ingress_channel = \"seed:push\"\n[tenants.settings]\nchannels = \"ORDER_STATUS=/queue/orders\"\n{extra_tenant}",
        plugin_wasm("seed_compat").display()
    )
}

/// `toml` with user messages not stored: the at-most-once path a tenant can opt into, whose
/// presence cache and local delivery during an outage some tests are about.
fn at_most_once(toml: String) -> String {
    format!("[history]\nenabled = false\n{toml}")
}

fn three_nodes(redis: &impl Backing) -> [NodeProcess; 3] {
    three_nodes_with(redis, &config(""))
}

fn three_nodes_with(redis: &impl Backing, toml: &str) -> [NodeProcess; 3] {
    ["node-a", "node-b", "node-c"].map(|id| NodeProcess::start(id, &redis, toml))
}

async fn publish_on(node: &NodeProcess, body: serde_json::Value) -> (u16, serde_json::Value) {
    http_request(
        node.http,
        "POST",
        "/api/v1/tenants/default/publish",
        Some(API_KEY),
        &body.to_string(),
    )
    .await
}

async fn ws_on(node: &NodeProcess, user: &str) -> Client {
    let mut c = Client::ws(&node.ws_url(), "v12.stomp").await;
    c.connect_as(user).await;
    c
}

/// The members of a set in Redis.
async fn members(redis: &Backend, key: &str) -> Vec<String> {
    redis.query(redis::cmd("SMEMBERS").arg(key)).await
}

/// Waits until Redis shows `user` present on exactly `nodes`.
async fn await_presence(redis: &Backend, user: &str, nodes: &[&str]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut members = members(redis, &format!("sb:{{default:{user}}}:presence")).await;
        members.sort();
        if members == nodes {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "presence of {user}: {members:?}, expected {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `channel` (a node's inbox, a topic: sharded on a Redis Cluster; or classic)
/// has `count` subscribers (nodes) in Redis.
async fn await_subscribers(redis: &Backend, channel: &str, classic: bool, count: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let n = if classic {
            redis.classic_subscribers(channel).await
        } else {
            redis.subscribers(channel).await
        };
        if n == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{channel} has {n} subscribers, expected {count}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Nodes A and B (with `node_ttl_ms`), carol on A over TCP subscribed to her notices, and dave
/// on A consuming `/queue/jobs`, with carol's presence in Redis.
async fn carol_and_a_worker_on_a(
    redis: &Backend,
    node_ttl_ms: u64,
) -> (NodeProcess, NodeProcess, Client, Client) {
    let toml = config("").replace(
        "node_ttl_ms = 2000",
        &format!("node_ttl_ms = {node_ttl_ms}"),
    );
    let a = NodeProcess::start("node-a", &redis, &toml);
    let b = NodeProcess::start("node-b", &redis, &toml);
    await_ready(&a).await;
    await_ready(&b).await;
    let mut carol = Client::tcp(a.stomp).await;
    carol.connect_as("carol").await;
    carol.subscribe("1", "/user/queue/notice", "auto").await;
    let mut worker = ws_on(&a, "dave").await;
    worker.subscribe("1", "/queue/jobs", "auto").await;
    await_presence(redis, "carol", &["node-a"]).await;
    (a, b, carol, worker)
}

on_both!(a_user_on_node_a_receives_what_a_backend_sends_through_node_b);
async fn a_user_on_node_a_receives_what_a_backend_sends_through_node_b(redis: Backend) {
    let [a, b, c] = three_nodes(&redis);
    for n in [&a, &b, &c] {
        await_ready(n).await;
    }
    let mut alice = ws_on(&a, "alice").await;
    alice.subscribe("1", "/user/queue/notice", "auto").await;
    alice.subscribe("2", "/user/queue/orders", "auto").await;
    let mut bob = ws_on(&c, "bob").await;
    bob.subscribe("1", "/user/queue/notice", "auto").await;
    await_presence(&redis, "alice", &["node-a"]).await;

    let (status, answer) = publish_on(
        &b,
        json!({"receiver": "alice", "destination": "/queue/notice", "content": "from B"}),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["online"], true);
    assert_eq!(answer["nodes"], 1);
    let m = alice.expect_message("from B").await;
    assert_eq!(m.get("destination"), Some("/user/queue/notice"));

    // By channel code, resolved by the tenant's plugin on node B.
    let (status, answer) = publish_on(
        &b,
        json!({"receiver": "alice", "channelCode": "ORDER_STATUS", "content": {"order": 1}}),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    alice.expect_message(r#"{"order":1}"#).await;
    bob.expect_nothing(QUIET).await;

    // Targeted: the messages crossed to node A only, never to node C.
    assert_eq!(a.metric("stompbox_cluster_received_total").await, 2);
    assert_eq!(c.metric("stompbox_cluster_received_total").await, 0);
    assert_eq!(b.metric("stompbox_cluster_forwarded_total").await, 2);

    // A user connected nowhere: the backend is told.
    let (status, answer) = publish_on(
        &b,
        json!({"receiver": "nobody", "destination": "/queue/notice", "content": "?"}),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(answer["online"], false);
    assert_eq!(answer["delivered"], 0);
    assert_eq!(answer["nodes"], 0);
}

on_both!(one_copy_per_session_across_nodes_for_users_and_topics);
async fn one_copy_per_session_across_nodes_for_users_and_topics(redis: Backend) {
    let [a, b, c] = three_nodes(&redis);
    for n in [&a, &b, &c] {
        await_ready(n).await;
    }
    // A user with sessions on A and C.
    let mut on_a = ws_on(&a, "dana").await;
    let mut on_c = Client::tcp(c.stomp).await;
    on_c.connect_as("dana").await;
    for s in [&mut on_a, &mut on_c] {
        s.subscribe("1", "/user/queue/notice", "auto").await;
    }
    await_presence(&redis, "dana", &["node-a", "node-c"]).await;
    let (_, answer) = publish_on(
        &b,
        json!({"receiver": "dana", "destination": "/queue/notice", "content": "both tabs"}),
    )
    .await;
    assert_eq!(answer["nodes"], 2, "{answer}");
    on_a.expect_message("both tabs").await;
    on_c.expect_message("both tabs").await;
    on_a.expect_nothing(QUIET).await;
    on_c.expect_nothing(Duration::from_millis(10)).await;

    // A topic subscriber on every node: exactly one copy each, whoever publishes.
    let mut subs = Vec::new();
    for n in [&a, &b, &c] {
        let mut s = ws_on(n, "reader").await;
        s.subscribe("t", "/topic/news", "auto").await;
        subs.push(s);
    }
    await_subscribers(&redis, "sb:default:topic:/topic/news", false, 3).await;
    let (_, answer) = publish_on(
        &b,
        json!({"destination": "/topic/news", "content": "via API on B"}),
    )
    .await;
    assert_eq!(answer["delivered"], 1);
    assert_eq!(answer["nodes"], 2);
    let mut sender = ws_on(&a, "writer").await;
    sender.send_to("/topic/news", "via SEND on A").await;
    for s in &mut subs {
        s.expect_message("via API on B").await;
        s.expect_message("via SEND on A").await;
        s.expect_nothing(QUIET).await;
    }

    // A node leaves the topic's channel when its last subscriber goes.
    let mut last_on_c = subs.pop().unwrap();
    last_on_c
        .send(
            stompbox::stomp::Frame::new(stompbox::stomp::Command::Unsubscribe)
                .header("id", "t")
                .header("receipt", "u"),
        )
        .await;
    last_on_c.expect(stompbox::stomp::Command::Receipt).await;
    await_subscribers(&redis, "sb:default:topic:/topic/news", false, 2).await;
}

on_both!(queues_deliver_each_message_once_cluster_wide);
async fn queues_deliver_each_message_once_cluster_wide(redis: Backend) {
    let [a, b, c] = three_nodes(&redis);
    for n in [&a, &b, &c] {
        await_ready(n).await;
    }
    let mut worker_a = ws_on(&a, "w1").await;
    let mut worker_c = ws_on(&c, "w2").await;
    worker_a.subscribe("q", "/queue/jobs", "auto").await;
    worker_c.subscribe("q", "/queue/jobs", "auto").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let n: usize = redis
            .query(redis::cmd("SCARD").arg("sb:{default:/queue/jobs}:consumers"))
            .await;
        if n == 2 {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Published on B, which has no consumer: stored in the queue's stream, A and C are told,
    // and each job goes to exactly one of them.
    for i in 0..6 {
        let (status, answer) = publish_on(
            &b,
            json!({"destination": "/queue/jobs", "content": format!("job{i}")}),
        )
        .await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["stored"], true, "{answer}");
        assert_eq!(answer["nodes"], 2, "{answer}");
    }
    let mut got = Vec::new();
    for w in [&mut worker_a, &mut worker_c] {
        while let Some(m) = w.recv_within(QUIET).await {
            got.push(String::from_utf8(m.body.to_vec()).unwrap());
        }
    }
    got.sort();
    assert_eq!(got, (0..6).map(|i| format!("job{i}")).collect::<Vec<_>>());
}

on_both!(seed_format_ingress_reaches_the_user_exactly_once);
async fn seed_format_ingress_reaches_the_user_exactly_once(redis: Backend) {
    let [a, b, c] = three_nodes(&redis);
    for n in [&a, &b, &c] {
        await_ready(n).await;
    }
    let mut alice = ws_on(&b, "alice").await;
    alice.subscribe("1", "/user/queue/orders", "auto").await;
    await_presence(&redis, "alice", &["node-b"]).await;
    await_subscribers(&redis, "seed:push", true, 3).await;
    // What the replaced system's backends publish, unchanged; the same payload twice is two
    // messages.
    let payload =
        json!({"receiver": "alice", "channelCode": "ORDER_STATUS", "content": {"order": 42}})
            .to_string();
    for _ in 0..2 {
        let _receivers: usize = redis
            .query(redis::cmd("PUBLISH").arg("seed:push").arg(&payload))
            .await;
    }
    alice.expect_message(r#"{"order":42}"#).await;
    alice.expect_message(r#"{"order":42}"#).await;
    alice.expect_nothing(Duration::from_millis(500)).await;
    let handled: u64 = [
        a.metric("stompbox_ingress_handled_total").await,
        b.metric("stompbox_ingress_handled_total").await,
        c.metric("stompbox_ingress_handled_total").await,
    ]
    .iter()
    .sum();
    assert_eq!(handled, 2, "one node handled each message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_local_delivery_and_recovers_without_reconnecting_clients() {
    let mut redis = Backend::single();
    let [a, b, c] = three_nodes_with(&redis, &at_most_once(config("")));
    for n in [&a, &b, &c] {
        await_ready(n).await;
    }
    let mut alice = ws_on(&a, "alice").await;
    alice.subscribe("1", "/user/queue/notice", "auto").await;
    let mut reader = ws_on(&c, "reader").await;
    reader.subscribe("t", "/topic/news", "auto").await;
    await_presence(&redis, "alice", &["node-a"]).await;

    redis.single_redis().kill();
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, _) = http_request(a.http, "GET", "/readyz", None, "").await;
        if status == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "node A still says ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Local delivery goes on.
    let (status, answer) = publish_on(
        &a,
        json!({"receiver": "alice", "destination": "/queue/notice", "content": "local"}),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["partial"], true);
    alice.expect_message("local").await;
    // Cross-node: refused, not silently dropped.
    let (status, answer) = publish_on(
        &b,
        json!({"receiver": "alice", "destination": "/queue/notice", "content": "lost?"}),
    )
    .await;
    assert_eq!(status, 503, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("Redis"));

    // Redis comes back empty: nodes reconnect, re-announce and re-subscribe by themselves.
    redis.single_redis().restart();
    for n in [&a, &b, &c] {
        await_ready(n).await;
    }
    await_presence(&redis, "alice", &["node-a"]).await;
    await_subscribers(&redis, "sb:default:topic:/topic/news", false, 1).await;
    let (status, answer) = publish_on(
        &b,
        json!({"receiver": "alice", "destination": "/queue/notice", "content": "after"}),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    alice.expect_message("after").await;
    publish_on(
        &b,
        json!({"destination": "/topic/news", "content": "news after"}),
    )
    .await;
    reader.expect_message("news after").await;
    assert!(a.metric("stompbox_redis_reconnects_total").await >= 1);
}

on_both!(a_killed_node_leaves_presence_and_the_others_keep_flowing);
async fn a_killed_node_leaves_presence_and_the_others_keep_flowing(redis: Backend) {
    let [a, b, mut c] = three_nodes(&redis);
    for n in [&a, &b, &c] {
        await_ready(n).await;
    }
    let mut alice = ws_on(&a, "alice").await;
    alice.subscribe("1", "/user/queue/notice", "auto").await;
    let mut carol = ws_on(&c, "carol").await;
    carol.subscribe("1", "/user/queue/notice", "auto").await;
    await_presence(&redis, "carol", &["node-c"]).await;
    let (_, answer) = publish_on(
        &b,
        json!({"receiver": "carol", "destination": "/queue/notice", "content": "hi carol"}),
    )
    .await;
    assert_eq!(answer["online"], true);
    carol.expect_message("hi carol").await;

    c.kill9();
    let killed = Instant::now();
    // Messages to alice keep flowing throughout; carol is reported offline as soon as C's
    // inbox has no subscriber (Redis says no node took the message), well before C's
    // heartbeat (2 s here) expires.
    let mut i = 0;
    loop {
        i += 1;
        let (status, _) = publish_on(&b, json!({"receiver": "alice", "destination": "/queue/notice", "content": format!("m{i}")})).await;
        assert_eq!(status, 202);
        alice.expect_message(&format!("m{i}")).await;
        let (_, answer) = publish_on(
            &b,
            json!({"receiver": "carol", "destination": "/queue/notice", "content": "anyone?"}),
        )
        .await;
        if answer["online"] == false {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "carol still online: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

on_both!(an_old_presence_entry_routes_while_it_is_read_again);
/// A presence change whose `sb:presence` notice never arrived (here Redis is edited behind the
/// nodes' backs) reaches a node through the background re-read of an old cache entry; until
/// that re-read lands, the old entry keeps routing instead of making a message wait on Redis.
async fn an_old_presence_entry_routes_while_it_is_read_again(redis: Backend) {
    let toml = at_most_once(config(""));
    let a = NodeProcess::start("node-a", &redis, &toml);
    let b = NodeProcess::start("node-b", &redis, &toml);
    await_ready(&a).await;
    await_ready(&b).await;
    let mut alice = ws_on(&a, "alice").await;
    alice.subscribe("1", "/user/queue/notice", "auto").await;
    await_presence(&redis, "alice", &["node-a"]).await;
    let to_alice =
        |text: &str| json!({"receiver": "alice", "destination": "/queue/notice", "content": text});

    let (status, answer) = publish_on(&b, to_alice("first")).await;
    assert_eq!((status, &answer["nodes"]), (202, &json!(1)), "{answer}");
    alice.expect_message("first").await;

    let _: () = redis
        .query(
            redis::cmd("SREM")
                .arg("sb:{default:alice}:presence")
                .arg("node-a"),
        )
        .await;
    // Past presence_cache_ms (1 s): node B's entry is old, still used, and read again.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (_, answer) = publish_on(&b, to_alice("old entry")).await;
    assert_eq!(answer["nodes"], 1, "{answer}");
    alice.expect_message("old entry").await;

    let deadline = Instant::now() + WAIT;
    loop {
        let (_, answer) = publish_on(&b, to_alice("probe")).await;
        if answer["nodes"] == 0 {
            assert_eq!(answer["online"], false, "{answer}");
            break;
        }
        alice.expect_message("probe").await;
        assert!(
            Instant::now() < deadline,
            "node B still routes by the entry it read before the change: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(b.metric("stompbox_presence_lookups_total").await >= 2);
}

on_both!(a_node_stopped_with_sigterm_leaves_the_cluster_at_once);
async fn a_node_stopped_with_sigterm_leaves_the_cluster_at_once(redis: Backend) {
    // A long node_ttl_ms: an answer that waited for A's heartbeat to expire would take 30 s.
    let (mut a, b, mut carol, _worker) = carol_and_a_worker_on_a(&redis, 30_000).await;

    let notice = json!({"receiver": "carol", "destination": "/queue/notice", "content": "before"});
    let (status, answer) = publish_on(&b, notice.clone()).await;
    assert_eq!((status, &answer["online"]), (202, &json!(true)), "{answer}");
    carol.expect_message("before").await;

    assert!(a.terminate(), "node A exits cleanly on SIGTERM");
    carol.expect_error("server shutting down").await;

    let (status, answer) = publish_on(&b, notice).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["online"], false, "{answer}");
    assert_eq!(answer["nodes"], 0, "{answer}");
    let presence = members(&redis, "sb:{default:carol}:presence").await;
    assert!(presence.is_empty(), "carol's presence: {presence:?}");
    let consumers = members(&redis, "sb:{default:/queue/jobs}:consumers").await;
    assert!(consumers.is_empty(), "queue consumers: {consumers:?}");
    let score: Option<f64> = redis
        .query(redis::cmd("ZSCORE").arg("sb:nodes").arg("node-a"))
        .await;
    assert_eq!(score, None, "node-a is no longer a live node");
}

on_both!(a_node_restarted_under_its_id_withdraws_what_its_last_run_held);
async fn a_node_restarted_under_its_id_withdraws_what_its_last_run_held(redis: Backend) {
    let (mut a, b, _carol, _worker) = carol_and_a_worker_on_a(&redis, 2_000).await;

    a.kill9();
    let a = NodeProcess::start("node-a", &redis, &config(""));
    await_ready(&a).await;
    // Without the withdrawal, node-a (alive again) stays in carol's presence for ever.
    await_presence(&redis, "carol", &[]).await;
    let consumers = members(&redis, "sb:{default:/queue/jobs}:consumers").await;
    assert!(consumers.is_empty(), "queue consumers: {consumers:?}");
    let (status, answer) = publish_on(
        &b,
        json!({"receiver": "carol", "destination": "/queue/notice", "content": "lost?"}),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["online"], false, "{answer}");

    // What the new run holds is announced as usual.
    let mut carol = Client::tcp(a.stomp).await;
    carol.connect_as("carol").await;
    carol.subscribe("1", "/user/queue/notice", "auto").await;
    await_presence(&redis, "carol", &["node-a"]).await;
}

on_both!(a_message_no_node_took_is_not_answered_as_sent);
async fn a_message_no_node_took_is_not_answered_as_sent(redis: Backend) {
    // A long node_ttl_ms: A stays "live" by its heartbeat long after it was killed.
    let (mut a, b, _carol, _worker) = carol_and_a_worker_on_a(&redis, 30_000).await;
    let notice = json!({"receiver": "carol", "destination": "/queue/notice", "content": "n"});
    let (status, answer) = publish_on(&b, notice.clone()).await;
    assert_eq!((status, &answer["nodes"]), (202, &json!(1)), "{answer}");

    a.kill9();
    await_subscribers(&redis, "sb:inbox:node-a", false, 0).await;
    for _ in 0..20 {
        let (status, answer) = publish_on(&b, notice.clone()).await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["nodes"], 0, "no node took it: {answer}");
        assert_eq!(answer["online"], false, "{answer}");
    }
    // A queue message for the dead node's consumer stays here until a consumer comes.
    let (status, answer) =
        publish_on(&b, json!({"destination": "/queue/jobs", "content": "job"})).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["queued"], true, "{answer}");
    let mut next = ws_on(&b, "erin").await;
    next.subscribe("1", "/queue/jobs", "auto").await;
    next.expect_message("job").await;
}
