//! Faults of a Redis Cluster under traffic, with every message accounted for: a Redis Cluster
//! of three primaries with a replica each, two `stompbox` nodes, a user on node A and a steady
//! stream of stored messages to her through node B's API. A primary killed (its replica takes
//! over), slots moved to another primary with `redis-cli --cluster reshard`, a whole shard
//! stopped: every message answered 202 reaches her once and in order, every other answer is a
//! 503, and users of the shards that answer are not affected. And a seed list that leads to
//! no cluster is refused at start.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use stompbox::cluster::redis::slots::slot;
use stompbox_testkit::RedisCluster;
use support::cluster::{await_ready, NodeProcess};
use support::traffic::{publish_for, publish_round, Account};
use support::*;

/// Messages published before a fault and after the recovery.
const ROUND: usize = 300;

fn config(cluster: &str) -> String {
    format!(
        "[cluster]\nnode_ttl_ms = 2000\n{cluster}[[tenants]]\nid = \"default\"\napi_keys = [\"{API_KEY}\"]\n"
    )
}

/// The slot of `user`'s keys.
fn user_slot(user: &str) -> u16 {
    slot(format!("default:{user}").as_bytes())
}

/// The first name `{prefix}{n}` for which `placed` holds.
fn name_where(prefix: &str, placed: impl Fn(&str) -> bool) -> String {
    (0..100_000)
        .map(|n| format!("{prefix}{n}"))
        .find(|name| placed(name))
        .expect("a name lands there")
}

/// Message `i` to `user`'s notices, as the publish API's body.
fn notice(user: &'static str) -> impl Fn(usize) -> serde_json::Value {
    move |i| json!({"receiver": user, "destination": "/queue/notice", "content": format!("m{i}")})
}

/// `user`, connected to `node` and subscribed to her notices, collecting what arrives
/// (offset, body) until quiet for 3 s after `done` is set.
async fn reader(
    node: &NodeProcess,
    user: &str,
    done: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(u64, String)>> {
    let mut client = Client::tcp(node.stomp).await;
    client.connect_as(user).await;
    client.subscribe("1", "/user/queue/notice", "auto").await;
    tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            match client.recv_within(Duration::from_secs(3)).await {
                Some(frame) if frame.command == stompbox::stomp::Command::Message => {
                    let offset = frame.get("x-stream-offset").unwrap().parse().unwrap();
                    got.push((offset, String::from_utf8_lossy(&frame.body).into_owned()));
                }
                Some(_) => {}
                None if done.load(Ordering::SeqCst) || client.is_closed() => return got,
                None => {}
            }
        }
    })
}

/// `content` to `user`'s notices through `node`'s API: its status and answer.
async fn notify(node: &NodeProcess, user: &str, content: &str) -> (u16, serde_json::Value) {
    http_request(
        node.http,
        "POST",
        "/api/v1/tenants/default/publish",
        Some(API_KEY),
        &json!({"receiver": user, "destination": "/queue/notice", "content": content}).to_string(),
    )
    .await
}

/// A probe message to `user` through `node`: its status and answer.
async fn probe(node: &NodeProcess, user: &str) -> (u16, serde_json::Value) {
    notify(node, user, "probe").await
}

/// Waits until `node` routes to `user` (her presence is visible to it).
async fn await_routed(node: &NodeProcess, user: &str) {
    for _ in 0..200 {
        if probe(node, user).await.1["online"] == true {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{user} is never routed to");
}

/// Waits until `node` accepts a stored message for `user` again.
async fn await_accepted(node: &NodeProcess, user: &str) {
    for _ in 0..400 {
        if probe(node, user).await.0 == 202 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("messages to {user} are still refused");
}

/// With `replica_acks = 1` a message is accepted only once a replica has it, so killing a
/// primary loses none of them: those under way while its replica takes over, and those sent
/// while the new primary has no replica of its own, are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_and_every_accepted_message_arrives() {
    let mut cluster = RedisCluster::start(3, 1).unwrap();
    let toml = config("replica_acks = 1\n");
    let a = NodeProcess::start("node-a", &cluster, &toml);
    let b = NodeProcess::start("node-b", &cluster, &toml);
    await_ready(&a).await;
    await_ready(&b).await;
    let done = Arc::new(AtomicBool::new(false));
    let dora = reader(&a, "dora", done.clone()).await;
    await_routed(&b, "dora").await;
    let primary = cluster.primary_of(user_slot("dora")).unwrap();
    let replica = cluster.replicas_of(primary)[0];

    let body = notice("dora");
    let mut answers = Vec::new();
    publish_round(&b, &mut answers, ROUND, &body).await;
    cluster.node_at(primary).kill();
    publish_for(&b, &mut answers, Duration::from_secs(3), &body).await;
    cluster.await_healthy(Duration::from_secs(20)).unwrap();
    assert_eq!(cluster.primary_of(user_slot("dora")), Some(replica));
    // The new primary has no replica to confirm its writes until the old one comes back and
    // follows it, as an operator would bring it back.
    cluster.node_at(primary).restart().unwrap();
    cluster.await_healthy(Duration::from_secs(20)).unwrap();
    await_ready(&b).await;
    await_accepted(&b, "dora").await;
    publish_round(&b, &mut answers, ROUND, &body).await;
    done.store(true, Ordering::SeqCst);

    let account = Account::of(&answers, &dora.await.unwrap(), |i| format!("m{i}"));
    account.assert_nothing_lost();
    eprintln!("{} accepted, {} refused", account.accepted, account.refused);
    assert!(account.accepted >= 2 * ROUND, "{account:?}");
    assert!(
        b.metric("stompbox_redis_reconnects_total").await >= 1,
        "node B found the new primary"
    );
}

/// Slots move to another primary key by key while messages flow: the user's keys and node A's
/// inbox channel are among them, so stores meet `ASK` and `MOVED` redirections and node A's
/// sharded subscription is ended by the old primary and made again on the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_moved_under_traffic_lose_nothing() {
    const MOVED: usize = 300;
    let cluster = RedisCluster::start(3, 1).unwrap();
    let from = cluster.primary_of(0).unwrap();
    let to = *cluster.primaries().iter().find(|&&p| p != from).unwrap();
    // The reshard moves `from`'s lowest slots; the first slots `from` serves are 0 and up.
    let moved = |s: u16| usize::from(s) < MOVED;
    let user = name_where("user-", |u| moved(user_slot(u)));
    let node_a = name_where("node-a", |n| {
        moved(slot(format!("sb:inbox:{n}").as_bytes()))
    });
    let user: &'static str = Box::leak(user.into_boxed_str());
    let toml = config("");
    let a = NodeProcess::start(&node_a, &cluster, &toml);
    let b = NodeProcess::start("node-b", &cluster, &toml);
    await_ready(&a).await;
    await_ready(&b).await;
    let done = Arc::new(AtomicBool::new(false));
    let got = reader(&a, user, done.clone()).await;
    await_routed(&b, user).await;

    let mut answers = Vec::new();
    let body = notice(user);
    publish_round(&b, &mut answers, ROUND, &body).await;
    let reshard = tokio::task::spawn_blocking(move || {
        cluster.reshard(from, to, MOVED).unwrap();
        cluster
    });
    while !reshard.is_finished() {
        publish_round(&b, &mut answers, 8, &body).await;
    }
    let cluster = reshard.await.unwrap();
    assert_eq!(cluster.primary_of(user_slot(user)), Some(to));
    publish_round(&b, &mut answers, ROUND, &body).await;
    done.store(true, Ordering::SeqCst);

    let account = Account::of(&answers, &got.await.unwrap(), |i| format!("m{i}"));
    account.assert_nothing_lost();
    eprintln!("{} accepted, {} refused", account.accepted, account.refused);
    assert!(account.accepted >= 2 * ROUND, "{account:?}");
}

/// A shard stopped whole (its primary and its replica): its users' messages are refused with
/// the reason and the node says it is not ready, while a user on another shard is served as
/// before; when the shard comes back (empty), its users are served again without
/// reconnecting. The shard chosen holds neither node's inbox nor the list of live nodes, so
/// what is measured is the users' own data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_shard_fails_only_its_own_users() {
    let mut cluster = RedisCluster::start(3, 1).unwrap();
    let primaries = cluster.primaries();
    let shard_of = |key: &[u8]| cluster.primary_of(slot(key)).unwrap();
    let nodes_shard = shard_of(b"sb:nodes");
    let stopped = *primaries.iter().find(|&&p| p != nodes_shard).unwrap();
    let inbox_elsewhere = |n: &str| shard_of(format!("sb:inbox:{n}").as_bytes()) != stopped;
    let node_a = name_where("node-a", inbox_elsewhere);
    let node_b = name_where("node-b", inbox_elsewhere);
    let dora = name_where("dora", |u| {
        shard_of(format!("default:{u}").as_bytes()) == stopped
    });
    let eve = name_where("eve", |u| {
        shard_of(format!("default:{u}").as_bytes()) != stopped
    });
    let toml = config("");
    let a = NodeProcess::start(&node_a, &cluster, &toml);
    let b = NodeProcess::start(&node_b, &cluster, &toml);
    await_ready(&a).await;
    await_ready(&b).await;
    let mut on_a = Vec::new();
    for user in [&dora, &eve] {
        let mut client = Client::tcp(a.stomp).await;
        client.connect_as(user).await;
        client.subscribe("1", "/user/queue/notice", "auto").await;
        await_routed(&b, user).await;
        on_a.push(client);
    }
    let [mut dora_client, mut eve_client]: [Client; 2] = on_a.try_into().ok().unwrap();
    dora_client.recv_within(Duration::from_millis(300)).await;
    eve_client.recv_within(Duration::from_millis(300)).await;

    let replicas = cluster.replicas_of(stopped);
    cluster.node_at(stopped).kill();
    for replica in &replicas {
        cluster.node_at(*replica).kill();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http_request(b.http, "GET", "/readyz", None, "").await;
        if status == 503 {
            let cluster = &body["cluster"];
            let down = cluster["shards"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["connected"] == false);
            assert!(
                down || cluster["unowned_slots"].as_u64() > Some(0),
                "not ready, but for what? {body}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node B still says ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..20 {
        let (status, answer) = notify(&b, &dora, &format!("x{i}")).await;
        assert_eq!(status, 503, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("Redis"),
            "{answer}"
        );
        let (status, answer) = notify(&b, &eve, &format!("x{i}")).await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["stored"], true, "{answer}");
        assert_eq!(answer["online"], true, "{answer}");
        eve_client.expect_message(&format!("x{i}")).await;
    }

    // Back, empty: the nodes find it, announce dora again, and she is served.
    cluster.node_at(stopped).restart().unwrap();
    for replica in &replicas {
        cluster.node_at(*replica).restart().unwrap();
    }
    cluster.await_healthy(Duration::from_secs(20)).unwrap();
    await_ready(&b).await;
    await_routed(&b, &dora).await;
    let (status, answer) = notify(&b, &dora, "back").await;
    assert_eq!(status, 202, "{answer}");
    loop {
        let frame = dora_client.recv().await;
        if frame.body == "back".as_bytes() {
            break;
        }
    }
}

/// A seed list no Redis Cluster answers at is a configuration mistake: the node refuses to
/// start and names the key.
#[test]
fn a_node_refuses_to_start_when_no_seed_answers() {
    let port = stompbox_testkit::free_port();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_stompbox"))
        .args(["serve", "--http", "127.0.0.1:0", "--stomp", "127.0.0.1:0"])
        .arg("--redis-cluster")
        .arg(format!("redis://127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("cluster.redis_cluster") && said.contains(&port.to_string()),
        "{said}"
    );
}
