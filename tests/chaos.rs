//! Faults injected while messages flow, with every message accounted for: two node processes
//! and a real `redis-server`, a user on node A, a steady stream of publishes to that user
//! through node B's API while Redis is paused, or killed and restarted empty, or A is killed
//! and started again under its id. Every message answered `202` with `"online": true` must
//! reach the user exactly once; every other answer must say it did not (`503`, or
//! `"online": false`).

mod support;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use support::cluster::{await_ready, NodeProcess, Redis};
use support::*;

/// Messages published before the fault and after the recovery (more go out during it), and
/// the pause between two rounds of publishes.
const BEFORE: usize = 1_000;
const AFTER: usize = 1_000;
const EVERY: Duration = Duration::from_millis(2);
/// Publishes in flight at once.
const IN_FLIGHT: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    RedisPaused,
    RedisRestartedEmpty,
    NodeRestarted,
}

fn config() -> String {
    format!(
        "[cluster]\nnode_ttl_ms = 2000\npresence_cache_ms = 1000\n[[tenants]]\nid = \"default\"\napi_keys = [\"{API_KEY}\"]\n"
    )
}

/// carol, connected to `node` and subscribed to her notices.
async fn carol_on(node: &NodeProcess) -> Client {
    let mut carol = Client::tcp(node.stomp).await;
    carol
        .send_raw(b"CONNECT\naccept-version:1.2\nheart-beat:0,0\nlogin:carol\n\n\0")
        .await;
    carol.expect(stompbox::stomp::Command::Connected).await;
    carol.subscribe("1", "/user/queue/notice", "auto").await;
    carol
}

/// Reads what reaches `carol` until she has been silent for a while or her node is gone.
fn collect(mut carol: Client) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut bodies = Vec::new();
        while let Some(frame) = carol.recv_within(Duration::from_secs(6)).await {
            if frame.command == stompbox::stomp::Command::Message {
                bodies.push(String::from_utf8_lossy(&frame.body).into_owned());
            }
        }
        bodies
    })
}

/// Waits until node B routes to carol again (after a fault that took her away).
async fn await_online(b: &NodeProcess) {
    for _ in 0..400 {
        let (_, answer) = http_request(
            b.http,
            "POST",
            "/api/v1/tenants/default/publish",
            Some(API_KEY),
            &json!({"receiver": "carol", "destination": "/queue/probe", "content": "probe"})
                .to_string(),
        )
        .await;
        if answer["online"] == true {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("carol never came back online");
}

async fn run(fault: Fault) {
    let mut redis = Redis::start();
    let toml = config();
    let mut a = NodeProcess::start("node-a", &redis.url(), &toml);
    let b = NodeProcess::start("node-b", &redis.url(), &toml);
    await_ready(&a).await;
    await_ready(&b).await;
    let mut readers = vec![collect(carol_on(&a).await)];
    await_online(&b).await;

    // Publishes go out IN_FLIGHT at a time, so that some are always between B and A when
    // the fault strikes: BEFORE of them, then for 3 s through the fault, then AFTER more once
    // carol can be reached again.
    let mut answers: Vec<(u16, serde_json::Value)> = Vec::new();
    while answers.len() < BEFORE {
        publish_some(&b, &mut answers).await;
        tokio::time::sleep(EVERY).await;
    }
    match fault {
        Fault::RedisPaused => redis.pause(),
        Fault::RedisRestartedEmpty => redis.kill(),
        Fault::NodeRestarted => a.kill9(),
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        publish_some(&b, &mut answers).await;
        tokio::time::sleep(EVERY).await;
    }
    match fault {
        Fault::RedisPaused => redis.resume(),
        Fault::RedisRestartedEmpty => redis.restart(),
        Fault::NodeRestarted => {
            a = NodeProcess::start("node-a", &redis.url(), &toml);
            await_ready(&a).await;
            readers.push(collect(carol_on(&a).await));
        }
    }
    // Published while the nodes recover, then once carol is reachable again.
    for _ in 0..20 {
        publish_some(&b, &mut answers).await;
        tokio::time::sleep(EVERY).await;
    }
    await_online(&b).await;
    let resumed = answers.len();
    while answers.len() < resumed + AFTER {
        publish_some(&b, &mut answers).await;
        tokio::time::sleep(EVERY).await;
    }

    let mut received: HashMap<String, usize> = HashMap::new();
    for reader in readers {
        for body in reader.await.unwrap() {
            *received.entry(body).or_default() += 1;
        }
    }
    let mut sent_online = 0;
    let mut lost = Vec::new();
    let mut untruthful = Vec::new();
    for (i, (status, answer)) in answers.iter().enumerate() {
        let body = format!("m{i}");
        let got = received.get(&body).copied().unwrap_or(0);
        assert!(got <= 1, "{fault:?}: {body} arrived {got} times");
        match (status, answer["online"].as_bool()) {
            (202, Some(true)) => {
                sent_online += 1;
                if got != 1 {
                    lost.push(i);
                }
            }
            (202, Some(false)) | (503, _) => {}
            _ => untruthful.push(format!("{i}: {status} {answer}")),
        }
    }
    assert!(
        untruthful.is_empty(),
        "{fault:?}: answers that are neither a delivery nor a refusal: {untruthful:?}"
    );
    assert!(
        lost.is_empty(),
        "{fault:?}: {} of {sent_online} messages answered 202 online:true never arrived: {:?}\nnode A's log:\n{}",
        lost.len(),
        &lost[..lost.len().min(20)],
        a.log()
    );
    assert!(
        sent_online >= BEFORE + AFTER,
        "{fault:?}: only {sent_online} of {} were delivered",
        answers.len()
    );
}

/// Publishes the next IN_FLIGHT messages at once, recording their answers in order.
async fn publish_some(b: &NodeProcess, answers: &mut Vec<(u16, serde_json::Value)>) {
    let first = answers.len();
    let batch = (first..first + IN_FLIGHT).map(|i| publish(b, i));
    answers.extend(futures_util::future::join_all(batch).await);
}

async fn publish(b: &NodeProcess, i: usize) -> (u16, serde_json::Value) {
    http_request(
        b.http,
        "POST",
        "/api/v1/tenants/default/publish",
        Some(API_KEY),
        &json!({"receiver": "carol", "destination": "/queue/notice", "content": format!("m{i}")})
            .to_string(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_accounted_for_while_redis_is_paused() {
    run(Fault::RedisPaused).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_accounted_for_while_redis_restarts_empty() {
    run(Fault::RedisRestartedEmpty).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_accounted_for_while_the_users_node_restarts() {
    run(Fault::NodeRestarted).await;
}
