//! Who is online and closing a user's sessions, cluster-wide: two (or three) node processes
//! on a Redis of the test's own, or on a Redis Cluster, asked through either node's API.

mod support;

use std::time::Duration;

use serde_json::Value;
use stompbox::stomp::Command;
use support::cluster::{await_ready, Backend, NodeProcess};
use support::*;

fn config() -> String {
    format!("[[tenants]]\nid = \"default\"\napi_keys = [\"{API_KEY}\"]\n")
}

async fn get(node: &NodeProcess, path: &str) -> (u16, Value) {
    http_request(node.http, "GET", path, Some(API_KEY), "").await
}

async fn user_on(node: &NodeProcess, user: &str) -> Client {
    let mut client = Client::tcp(node.stomp).await;
    client.connect_as(user).await;
    client
}

/// A CONNECT as `user` on `node` that gets an ERROR saying `why`.
async fn refused(node: &NodeProcess, user: &str, why: &str) {
    let mut client = Client::tcp(node.stomp).await;
    client
        .send(
            stompbox::stomp::Frame::new(Command::Connect)
                .header("accept-version", "1.2")
                .header("userid", user),
        )
        .await;
    client.expect_error(why).await;
}

/// Presence and subscriber counts asked of either node add up both nodes' sessions.
async fn presence_is_cluster_wide(backend: Backend) {
    let a = NodeProcess::start("node-a", &backend, &config());
    let b = NodeProcess::start("node-b", &backend, &config());
    await_ready(&a).await;
    await_ready(&b).await;
    let mut alice1 = user_on(&a, "alice").await;
    let mut alice2 = user_on(&a, "alice").await;
    let mut bob = user_on(&b, "bob").await;
    let mut carol = user_on(&b, "carol").await;
    alice1.subscribe("1", "/topic/news", "auto").await;
    bob.subscribe("1", "/topic/news", "auto").await;
    alice2.subscribe("2", "/user/queue/n", "auto").await;
    carol.subscribe("2", "/user/queue/n", "auto").await;

    for asked in [&a, &b] {
        let (status, alice) = get(asked, "/api/v1/tenants/default/users/alice").await;
        assert_eq!(status, 200, "{alice}");
        assert_eq!(alice["online"], true);
        assert_eq!(alice["sessions"], 2);
        assert_eq!(
            alice["nodes"],
            serde_json::json!([{"node": "node-a", "sessions": 2}])
        );
        assert_eq!(alice["unanswered"], serde_json::json!([]));
        let (_, nobody) = get(asked, "/api/v1/tenants/default/users/nobody").await;
        assert_eq!(nobody["online"], false);
        assert_eq!(nobody["sessions"], 0);

        let (_, news) = get(asked, "/api/v1/tenants/default/destinations/topic/news").await;
        assert_eq!(news["subscribers"], 2, "{news}");
        let (_, encoded) = get(
            asked,
            "/api/v1/tenants/default/destinations/%2Fuser%2Fqueue%2Fn",
        )
        .await;
        assert_eq!(encoded["destination"], "/user/queue/n");
        assert_eq!(encoded["subscribers"], 2, "{encoded}");

        // Pages of two, in name order, across both nodes.
        let mut seen = Vec::new();
        let mut path = "/api/v1/tenants/default/users?limit=2".to_string();
        loop {
            let (status, page) = get(asked, &path).await;
            assert_eq!(status, 200, "{page}");
            for user in page["users"].as_array().unwrap() {
                seen.push(user.as_str().unwrap().to_string());
            }
            match page["next_cursor"].as_str() {
                Some(cursor) => {
                    path = format!("/api/v1/tenants/default/users?limit=2&cursor={cursor}")
                }
                None => break,
            }
        }
        assert_eq!(seen, vec!["alice", "bob", "carol"]);
    }
    let (status, bad) = get(&a, "/api/v1/tenants/default/users?limit=0").await;
    assert_eq!(status, 400, "{bad}");
    let (status, bad) = get(&a, "/api/v1/tenants/default/destinations/nowhere").await;
    assert_eq!(status, 400, "{bad}");
    let (status, _) = http_request(
        a.http,
        "GET",
        "/api/v1/tenants/default/users/alice",
        None,
        "",
    )
    .await;
    assert_eq!(status, 401);
    drop((alice1, alice2, bob, carol));
}
on_both!(presence_is_cluster_wide);

/// A disconnect asked of one node closes the user's sessions on both, and a ban keeps them
/// out everywhere, on a node that starts after it too, until it ends.
async fn disconnect_closes_every_session_and_a_ban_holds(backend: Backend) {
    let a = NodeProcess::start("node-a", &backend, &config());
    let b = NodeProcess::start("node-b", &backend, &config());
    await_ready(&a).await;
    await_ready(&b).await;
    let mut on_a = user_on(&a, "alice").await;
    let mut on_b = user_on(&b, "alice").await;
    let mut bob = user_on(&b, "bob").await;
    let (status, answer) = http_request(
        a.http,
        "DELETE",
        "/api/v1/tenants/default/users/alice/sessions?ban_seconds=3",
        Some(API_KEY),
        "",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["closed"], 2, "{answer}");
    assert!(answer["banned_until"].as_u64().is_some());
    for client in [&mut on_a, &mut on_b] {
        let error = client.expect_error("disconnected by the server").await;
        assert!(String::from_utf8_lossy(&error.body).contains("closed every session"));
    }
    // Bob stays.
    bob.send_to("/topic/x", "still here").await;

    refused(&b, "alice", "user banned").await;
    // A node that joins during the ban learns it from Redis.
    let c = NodeProcess::start("node-c", &backend, &config());
    await_ready(&c).await;
    refused(&c, "alice", "user banned").await;

    tokio::time::sleep(Duration::from_millis(3200)).await;
    let _back = user_on(&b, "alice").await;
    let (_, alice) = get(&c, "/api/v1/tenants/default/users/alice").await;
    assert_eq!(alice["sessions"], 1, "{alice}");
    let metrics = http_text(a.http, "/metrics").await;
    assert!(
        metrics.contains("stompbox_session_errors_total{reason=\"disconnected\"} 1"),
        "{metrics}"
    );
}
on_both!(disconnect_closes_every_session_and_a_ban_holds);

#[tokio::test]
async fn a_single_node_answers_presence_by_itself() {
    let node = TestNode::default().await;
    let mut alice = tcp_user(&node, "alice").await;
    alice.subscribe("1", "/queue/jobs", "auto").await;
    let (status, answer) = http_request(
        node.http,
        "GET",
        "/api/v1/tenants/default/users/alice",
        Some(API_KEY),
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["sessions"], 1);
    let (_, jobs) = http_request(
        node.http,
        "GET",
        "/api/v1/tenants/default/destinations/queue/jobs",
        Some(API_KEY),
        "",
    )
    .await;
    assert_eq!(jobs["subscribers"], 1);
    let (_, closed) = http_request(
        node.http,
        "DELETE",
        "/api/v1/tenants/default/users/alice/sessions",
        Some(API_KEY),
        "",
    )
    .await;
    assert_eq!(closed["closed"], 1);
    assert!(closed["banned_until"].is_null());
    alice.expect_error("disconnected by the server").await;
    // No ban: alice may come back at once.
    let _again = tcp_user(&node, "alice").await;
    node.stop().await;
}
