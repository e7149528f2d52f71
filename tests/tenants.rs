//! Tenants changed while nodes run, through the admin API, on node processes: created,
//! changed (keys and origins in place; anything else by replacing the tenant, whose sessions
//! are asked to reconnect), deleted (its sessions told why), and API keys rotated with two
//! valid at once. A single node keeps the changes in its state file beside the config, so
//! they outlive a restart; a cluster keeps them in Redis (one Redis, and a Redis Cluster), and
//! a tenant created on one node serves on the other within a second, and on a node that
//! starts later; a plugin uploaded on one node serves on every node, and on one that starts
//! later.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stompbox::stomp::Command;
use support::cluster::{await_ready, Alone, Backend, NodeProcess};
use support::*;

const ADMIN: &str = "tenants-test-admin-token";

fn config() -> String {
    format!(
        "[server]\nadmin_token = \"{ADMIN}\"\n[cluster]\nnode_ttl_ms = 2000\n\
         [[tenants]]\nid = \"default\"\napi_keys = [\"{API_KEY}\"]\n"
    )
}

async fn admin(node: &NodeProcess, method: &str, path: &str, body: Value) -> (u16, Value) {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    http_request(node.http, method, path, Some(ADMIN), &body).await
}

/// The users every message goes to.
const USERS: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];

/// Publishes `content` to the `/queue/news` of each of [`USERS`] of `tenant` with `key` (a
/// stored message, so it reaches a session on any node): the status.
async fn publish(node: &NodeProcess, tenant: &str, key: &str, content: &str) -> u16 {
    let mut statuses = Vec::new();
    for user in USERS {
        let (status, answer) = http_request(
            node.http,
            "POST",
            &format!("/api/v1/tenants/{tenant}/publish"),
            Some(key),
            &json!({"receiver": user, "destination": "/queue/news", "content": content})
                .to_string(),
        )
        .await;
        assert!(status != 202 || answer["stored"] == true, "{answer}");
        statuses.push(status);
    }
    assert!(statuses.windows(2).all(|w| w[0] == w[1]), "{statuses:?}");
    statuses[0]
}

/// A WebSocket client of `tenant` on `node`, connected as `user` and subscribed to its
/// `/queue/news` from now on.
async fn subscriber(node: &NodeProcess, tenant: &str, user: &str) -> Client {
    let mut client = Client::ws(&format!("ws://{}/ws/{tenant}", node.http), "v12.stomp").await;
    client.connect_as(user).await;
    client
        .subscribe_replay(
            "1",
            "/user/queue/news",
            "auto",
            &[("x-stream-offset", "next")],
        )
        .await;
    client
}

/// Waits up to `limit` for `check` to hold; how long it took.
async fn within<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn key_id(key: &str) -> String {
    stompbox::http::tenants::key_id(key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_keeps_tenant_changes_in_its_state_file() {
    let mut node = NodeProcess::start("alone", &Alone, &config());
    let acme = "/admin/v1/tenants/acme";

    // Refused with the field named.
    let (status, _) = http_request(node.http, "PUT", acme, None, "{}").await;
    assert_eq!(status, 401);
    for (body, field) in [
        (json!({"api_keys": ["short"]}), "api_keys[0]"),
        (json!({"plugin_deadline_ms": "soon"}), "plugin_deadline_ms"),
        (json!({"colour": "red"}), ""),
        (json!({"id": "other"}), "id"),
        (
            json!({"upstream": {"webhook_url": "ftp://x"}}),
            "upstream.webhook_url",
        ),
        (
            json!({"allowed_origins": ["not an origin"]}),
            "allowed_origins[0]",
        ),
    ] {
        let (status, answer) = admin(&node, "PUT", acme, body.clone()).await;
        assert_eq!(status, 422, "{body}: {answer}");
        if !field.is_empty() {
            assert_eq!(answer["field"], field, "{body}: {answer}");
        }
        assert!(!answer["error"].as_str().unwrap().is_empty());
    }
    let (status, answer) = admin(&node, "PUT", "/admin/v1/tenants/bad%20id", json!({})).await;
    assert_eq!((status, &answer["field"]), (422, &json!("id")), "{answer}");
    let (status, _) = http_request(node.http, "PUT", acme, Some(ADMIN), "{not json").await;
    assert_eq!(status, 400);

    // Created, and served at once.
    let (status, answer) = admin(&node, "PUT", acme, json!({"api_keys": ["acme-key-1"]})).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["applied"], "created");
    assert!(
        answer["stored_in"].as_str().unwrap().starts_with("file "),
        "{answer}"
    );
    assert_eq!(publish(&node, "acme", "acme-key-1", "hello").await, 202);
    assert_eq!(publish(&node, "acme", API_KEY, "hello").await, 401);
    let (status, list) = admin(&node, "GET", "/admin/v1/tenants", Value::Null).await;
    assert_eq!(status, 200);
    assert!(
        !list.to_string().contains("acme-key-1"),
        "a key shown: {list}"
    );
    let sources: Vec<(String, String)> = list["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().into(),
                t["source"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        sources,
        [
            ("acme".into(), "admin".into()),
            ("default".into(), "config".into())
        ]
    );

    // It outlives a restart, and so does a plugin uploaded for it.
    let wasm = std::fs::read(plugin_wasm("seed_compat")).unwrap();
    let (status, installed) = http_raw(
        node.http,
        "PUT",
        &format!("{acme}/plugin"),
        Some(ADMIN),
        &wasm,
    )
    .await;
    assert_eq!(status, 200, "{installed}");
    node.restart();
    assert_eq!(publish(&node, "acme", "acme-key-1", "again").await, 202);
    within(
        Duration::from_secs(5),
        "the kept plugin installed again",
        || async {
            let (_, now) = admin(&node, "GET", &format!("{acme}/plugin"), Value::Null).await;
            now["sha256"] == installed["sha256"] && now["policy"] == "wasm"
        },
    )
    .await;

    // A rotation: two keys work, then only the new one.
    let (status, answer) = admin(&node, "POST", &format!("{acme}/keys"), Value::Null).await;
    assert_eq!(status, 201, "{answer}");
    let new_key = answer["key"].as_str().unwrap().to_string();
    assert_eq!(publish(&node, "acme", &new_key, "m").await, 202);
    assert_eq!(publish(&node, "acme", "acme-key-1", "m").await, 202);
    let (status, answer) = admin(
        &node,
        "DELETE",
        &format!("{acme}/keys/{}", key_id("acme-key-1")),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(publish(&node, "acme", "acme-key-1", "m").await, 401);
    assert_eq!(publish(&node, "acme", &new_key, "m").await, 202);
    let (status, _) = admin(
        &node,
        "DELETE",
        &format!("{acme}/keys/000000000000"),
        Value::Null,
    )
    .await;
    assert_eq!(status, 404);

    // Deleting it closes its sessions, saying why; it stays deleted across a restart.
    let mut alice = subscriber(&node, "acme", "alice").await;
    assert_eq!(publish(&node, "acme", &new_key, "before").await, 202);
    alice.expect_message("before").await;
    let (status, answer) = admin(&node, "DELETE", acme, Value::Null).await;
    assert_eq!(
        (status, &answer["applied"]),
        (200, &json!("deleted")),
        "{answer}"
    );
    let error = alice.expect_error("tenant closed").await;
    assert!(
        String::from_utf8_lossy(&error.body).contains("deleted tenant 'acme'"),
        "{error:?}"
    );
    assert_eq!(publish(&node, "acme", &new_key, "after").await, 404);
    node.restart();
    assert_eq!(publish(&node, "acme", &new_key, "after").await, 404);
    let (status, _) = admin(&node, "GET", acme, Value::Null).await;
    assert_eq!(status, 404);
    let (status, _) = admin(&node, "PUT", acme, json!({"api_keys": ["acme-key-2"]})).await;
    assert_eq!(status, 201);
    assert_eq!(publish(&node, "acme", "acme-key-2", "back").await, 202);
    // Created again, it starts without the deleted one's plugin, restarts included.
    let (_, now) = admin(&node, "GET", &format!("{acme}/plugin"), Value::Null).await;
    assert_eq!(now["policy"], "builtin", "{now}");
    node.restart();
    await_ready(&node).await;
    let (_, now) = admin(&node, "GET", &format!("{acme}/plugin"), Value::Null).await;
    assert_eq!(now["policy"], "builtin", "{now}");
}

on_both!(a_tenant_changed_on_one_node_serves_on_every_node_within_a_second);
async fn a_tenant_changed_on_one_node_serves_on_every_node_within_a_second(redis: Backend) {
    let a = NodeProcess::start("node-a", &redis, &config());
    let mut b = NodeProcess::start("node-b", &redis, &config());
    await_ready(&a).await;
    await_ready(&b).await;

    // Created on A: B takes connections and publishes for it within a second.
    let (status, answer) = admin(
        &a,
        "PUT",
        "/admin/v1/tenants/acme",
        json!({"api_keys": ["acme-key-1"]}),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["stored_in"], "redis");
    let took = within(Duration::from_secs(1), "acme on node B", || async {
        let probe = json!({"receiver": "probe", "destination": "/queue/news", "content": "?"});
        let path = "/api/v1/tenants/acme/publish";
        http_request(b.http, "POST", path, Some("acme-key-1"), &probe.to_string())
            .await
            .0
            == 202
    })
    .await;
    eprintln!("a tenant created on node A served on node B after {took:?}");
    let mut bob = subscriber(&b, "acme", "bob").await;
    let mut alice = subscriber(&a, "acme", "alice").await;
    assert_eq!(publish(&a, "acme", "acme-key-1", "both").await, 202);
    bob.expect_message("both").await;
    alice.expect_message("both").await;

    // Origins change in place: nobody is closed.
    let (status, answer) = admin(
        &b,
        "PUT",
        "/admin/v1/tenants/acme",
        json!({"allowed_origins": ["https://app.example.com"]}),
    )
    .await;
    assert_eq!(
        (status, &answer["applied"]),
        (200, &json!("updated")),
        "{answer}"
    );
    assert_eq!(publish(&a, "acme", "acme-key-1", "still").await, 202);
    bob.expect_message("still").await;
    alice.expect_message("still").await;

    // Other settings replace the tenant on both nodes: sessions are asked to reconnect.
    let (status, answer) = admin(
        &b,
        "PUT",
        "/admin/v1/tenants/acme",
        json!({"allowed_origins": ["https://app.example.com"], "app_prefixes": ["/backend"]}),
    )
    .await;
    assert_eq!(
        (status, &answer["applied"]),
        (200, &json!("replaced")),
        "{answer}"
    );
    for client in [&mut alice, &mut bob] {
        let error = client.expect_error("tenant closed").await;
        assert!(
            String::from_utf8_lossy(&error.body).contains("reconnect"),
            "{error:?}"
        );
    }
    let mut alice = subscriber(&a, "acme", "alice").await;
    assert_eq!(publish(&b, "acme", "acme-key-1", "replaced").await, 202);
    alice.expect_message("replaced").await;
    let (_, shown) = admin(&a, "GET", "/admin/v1/tenants/acme", Value::Null).await;
    assert_eq!(
        shown["settings"]["app_prefixes"],
        json!(["/backend"]),
        "{shown}"
    );

    // Deleted on A: B's sessions are told, B forgets it.
    let mut carol = subscriber(&b, "acme", "carol").await;
    let (status, _) = admin(&a, "DELETE", "/admin/v1/tenants/acme", Value::Null).await;
    assert_eq!(status, 200);
    let error = carol.expect_error("tenant closed").await;
    assert!(
        String::from_utf8_lossy(&error.body).contains("deleted"),
        "{error:?}"
    );
    alice.expect_error("tenant closed").await;
    within(Duration::from_secs(1), "acme gone from node B", || async {
        admin(&b, "GET", "/admin/v1/tenants/acme", Value::Null)
            .await
            .0
            == 404
    })
    .await;

    // A plugin uploaded on A serves on B within a second.
    let wasm = std::fs::read(plugin_wasm("seed_compat")).unwrap();
    let (status, installed) = http_raw(
        a.http,
        "PUT",
        "/admin/v1/tenants/default/plugin",
        Some(ADMIN),
        &wasm,
    )
    .await;
    assert_eq!(status, 200, "{installed}");
    let sha256 = installed["sha256"].clone();
    let took = within(Duration::from_secs(1), "the plugin on node B", || async {
        let (_, on_b) = admin(&b, "GET", "/admin/v1/tenants/default/plugin", Value::Null).await;
        on_b["sha256"] == sha256
    })
    .await;
    eprintln!("a plugin uploaded on node A served on node B after {took:?}");

    // A node that starts later serves what was created meanwhile, and the uploaded plugin.
    b.kill9();
    let (status, _) = admin(
        &a,
        "PUT",
        "/admin/v1/tenants/gamma",
        json!({"api_keys": ["gamma-key-1"]}),
    )
    .await;
    assert_eq!(status, 201);
    b.restart();
    await_ready(&b).await;
    let (_, on_b) = admin(&b, "GET", "/admin/v1/tenants/default/plugin", Value::Null).await;
    assert_eq!(on_b["sha256"], sha256, "{on_b}");
    assert_eq!(publish(&b, "gamma", "gamma-key-1", "late").await, 202);
    assert_eq!(publish(&b, "acme", "acme-key-1", "gone").await, 404);
    let mut dave = subscriber(&b, "gamma", "dave").await;
    assert_eq!(publish(&a, "gamma", "gamma-key-1", "across").await, 202);
    let frame = dave.recv().await;
    assert_eq!(frame.command, Command::Message, "{frame:?}");
}
