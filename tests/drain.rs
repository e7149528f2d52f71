//! Draining a node for a rolling upgrade, with two node processes on a `redis-server` of the
//! test's own: `POST /admin/v1/drain` (and SIGTERM with `server.drain_ms`) stops the node
//! taking connections, makes `/readyz` answer 503, closes every session at a moment of the
//! drain period with an ERROR that asks it to reconnect, and the node exits once they are
//! gone. Clients that reconnect to the other node, as stomp.js clients do, get every message
//! published meanwhile: each one answered 202 arrives at least once.
//!
//! `DRAIN_CLIENTS` sets the number of clients of the main test (default 2,000).

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use stompbox::stomp::Command;
use support::cluster::{await_ready, Backend, NodeProcess};
use support::*;

const ADMIN: &str = "drain-test-admin-token";

fn config(drain_ms: u64) -> String {
    format!(
        "[server]\nadmin_token = \"{ADMIN}\"\ndrain_ms = {drain_ms}\n\
         [cluster]\nnode_ttl_ms = 2000\n\
         [[tenants]]\nid = \"default\"\napi_keys = [\"{API_KEY}\"]\nhistory_max_messages = 1000\n"
    )
}

/// What one client saw: its user, the bodies it received, when the node told it to go, and
/// which node it ended on.
struct Seen {
    user: String,
    bodies: Vec<String>,
    told_to_go: Option<Instant>,
    ended_on_b: bool,
}

/// Connects as `user` to `stomp` and subscribes to its notices: the client and the replay.
async fn session(stomp: std::net::SocketAddr, user: &str) -> (Client, Vec<String>) {
    let mut client = Client::tcp(stomp).await;
    client.connect_as(user).await;
    let (replayed, _) = client
        .subscribe_replay("1", "/user/queue/notice", "auto", &[])
        .await;
    let bodies = replayed
        .iter()
        .map(|f| String::from_utf8_lossy(&f.body).into_owned())
        .collect();
    (client, bodies)
}

/// A client as a browser's stomp.js runs it: on an ERROR or a close it reconnects, here to
/// node B, and subscribes again; it runs until `stop` and a quiet moment.
async fn client(
    user: String,
    mut client: Client,
    b: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> Seen {
    let mut seen = Seen {
        user,
        bodies: Vec::new(),
        told_to_go: None,
        ended_on_b: false,
    };
    loop {
        match client.recv_within(Duration::from_millis(200)).await {
            Some(frame) if frame.command == Command::Message => seen
                .bodies
                .push(String::from_utf8_lossy(&frame.body).into_owned()),
            Some(frame) if frame.command == Command::Error => {
                assert_eq!(
                    frame.get("message"),
                    Some("server draining"),
                    "{}: {frame:?}",
                    seen.user
                );
                assert!(seen.told_to_go.is_none(), "{} told twice", seen.user);
                seen.told_to_go = Some(Instant::now());
            }
            Some(frame) => panic!("{}: unexpected {frame:?}", seen.user),
            None if client.is_closed() => {
                assert!(!seen.ended_on_b, "{}: node B closed it", seen.user);
                let (next, replayed) = session(b, &seen.user).await;
                seen.bodies.extend(replayed);
                client = next;
                seen.ended_on_b = true;
            }
            None if stop.load(Ordering::Acquire) => return seen,
            None => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_loses_no_message_and_its_clients_end_on_the_other_node() {
    let clients: usize = std::env::var("DRAIN_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let redis = Backend::single();
    let mut a = NodeProcess::start("node-a", &redis, &config(0));
    let b = NodeProcess::start("node-b", &redis, &config(0));
    await_ready(&a).await;
    await_ready(&b).await;

    let users: Vec<String> = (0..clients).map(|i| format!("u{i}")).collect();
    let sessions: Vec<(Client, Vec<String>)> = futures_util::stream::iter(users.iter())
        .map(|user| session(a.stomp, user))
        .buffered(64)
        .collect()
        .await;
    assert_eq!(a.metric("stompbox_connections").await, clients as u64);
    let stop = Arc::new(AtomicBool::new(false));
    let running: Vec<_> = users
        .iter()
        .zip(sessions)
        .map(|(user, (c, replayed))| {
            assert!(replayed.is_empty());
            tokio::spawn(client(user.clone(), c, b.stomp, stop.clone()))
        })
        .collect();

    // Messages for every user through node B, before, during and after the drain.
    let body = |i: usize| json!({"receiver": format!("u{}", i % clients), "destination": "/queue/notice", "content": format!("m{i}")});
    let mut answers = Vec::new();
    traffic::publish_for(&b, &mut answers, Duration::from_millis(500), &body).await;

    let (status, answer) = http_request(a.http, "POST", "/admin/v1/drain", None, "").await;
    assert_eq!(status, 401, "{answer}");
    let (status, answer) = http_request(
        a.http,
        "POST",
        "/admin/v1/drain",
        Some(ADMIN),
        r#"{"period":3}"#,
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("period"),
        "{answer}"
    );
    let period = Duration::from_millis(3_000);
    let drain_started = Instant::now();
    let (status, answer) = http_request(
        a.http,
        "POST",
        "/admin/v1/drain",
        Some(ADMIN),
        &json!({"period_ms": period.as_millis() as u64}).to_string(),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["draining"], true, "{answer}");
    let (status, answer) = http_request(a.http, "GET", "/readyz", None, "").await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("draining"),
        "{answer}"
    );
    let (status, _) = http_request(a.http, "POST", "/admin/v1/drain", Some(ADMIN), "").await;
    assert_eq!(status, 200, "a second drain changes nothing");
    // The STOMP port no longer takes connections.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(a.stomp).await.is_err(),
        "node A still accepts STOMP connections while draining"
    );

    while a.running() {
        assert!(
            drain_started.elapsed() < period + Duration::from_secs(10),
            "node A did not exit after its drain"
        );
        traffic::publish_round(&b, &mut answers, traffic::IN_FLIGHT, &body).await;
    }
    let drained_in = drain_started.elapsed();
    assert!(a.exit_success(), "node A exits cleanly after its drain");
    traffic::publish_for(&b, &mut answers, Duration::from_millis(500), &body).await;

    // Every client is on node B now.
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.metric("stompbox_connections").await != clients as u64 {
        assert!(Instant::now() < deadline, "not every client reached node B");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Release);
    let mut seen = Vec::new();
    for task in running {
        seen.push(task.await.unwrap());
    }

    // Every client was told to go, at moments spread over the period, and ended on B.
    let moments: Vec<Duration> = seen
        .iter()
        .map(|s| {
            s.told_to_go
                .unwrap_or_else(|| panic!("{} was never told to go", s.user))
                - drain_started
        })
        .collect();
    let first_half = moments.iter().filter(|m| **m < period / 2).count();
    assert!(
        first_half > clients / 4 && first_half < clients * 3 / 4,
        "{first_half} of {clients} closed in the first half of the period"
    );
    assert!(seen.iter().all(|s| s.ended_on_b));

    // Every message answered 202 reached its user.
    let mut got: HashMap<&str, HashSet<&str>> = HashMap::new();
    let mut deliveries = 0;
    for s in &seen {
        deliveries += s.bodies.len();
        got.entry(&s.user)
            .or_default()
            .extend(s.bodies.iter().map(String::as_str));
    }
    let mut accepted = 0;
    let mut lost = Vec::new();
    for (i, (status, answer)) in answers.iter().enumerate() {
        assert!(
            *status == 202 && answer["stored"] == true,
            "message {i}: {status} {answer}"
        );
        accepted += 1;
        let user = format!("u{}", i % clients);
        if !got
            .get(user.as_str())
            .is_some_and(|b| b.contains(format!("m{i}").as_str()))
        {
            lost.push(i);
        }
    }
    let again = deliveries - got.values().map(HashSet::len).sum::<usize>();
    eprintln!(
        "{clients} clients drained in {drained_in:?}; {accepted} messages accepted, {} lost, {again} delivered twice",
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "accepted and never received: {:?}",
        &lost[..lost.len().min(20)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_over_the_configured_period() {
    let redis = Backend::single();
    let mut a = NodeProcess::start("node-a", &redis, &config(1_500));
    await_ready(&a).await;
    let mut clients = Vec::new();
    for i in 0..40 {
        clients.push(session(a.stomp, &format!("t{i}")).await.0);
    }
    let started = Instant::now();
    a.signal_terminate();
    let moments: Vec<Duration> =
        futures_util::future::join_all(clients.iter_mut().map(|client| async move {
            let error = client.expect_error("server draining").await;
            assert!(
                String::from_utf8_lossy(&error.body).contains("reconnect"),
                "{error:?}"
            );
            started.elapsed()
        }))
        .await;
    let (first, last) = (moments.iter().min().unwrap(), moments.iter().max().unwrap());
    assert!(
        *last - *first > Duration::from_millis(500),
        "closes not spread: {first:?}..{last:?}"
    );
    assert!(*last < Duration::from_millis(1_500 + 1_000), "{last:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.running() {
        assert!(Instant::now() < deadline, "node A did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.exit_success());
}
