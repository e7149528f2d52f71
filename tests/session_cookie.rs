//! The `session-cookie` plugin against a real backend (the test kit's session backend, an HTTP
//! server): a browser's cookie on the WebSocket upgrade authenticates it, the answer is
//! remembered in the tenant's cache (shared through Redis by two nodes), and every way the
//! backend call can fail gives the client a clear ERROR: a session the backend refuses, a slow
//! backend (the call's deadline), a backend that is down, and a host the tenant does not list.

mod support;

use std::time::Duration;

use stompbox::stomp::{Command, Frame};
use stompbox_testkit::session_backend::SessionBackend;
use support::cluster::Redis;
use support::*;

/// A tenant `default` whose plugin asks `verify_url`, allowed to call `allowed`.
fn tenant(verify_url: &str, allowed: &str, extra: &str) -> String {
    format!(
        "[server]\nadmin_token = \"{ADMIN}\"\n\
         [[tenants]]\nid = \"default\"\napi_keys = [\"{API_KEY}\"]\nplugin = \"{}\"\n\
         plugin_deadline_ms = 500\n\
         [tenants.plugin_backend]\nallowed_hosts = [\"{allowed}\"]\ntimeout_ms = 300\n\
         [tenants.settings]\nverify_url = \"{verify_url}\"\n{extra}",
        toml_path(&plugin_wasm("session_cookie"))
    )
}

async fn refused(node: &TestNode, cookie: &str, text: &str) -> String {
    let mut c = Client::ws_with_cookie(&node.ws_url("/ws"), cookie).await;
    c.send_raw(b"CONNECT\naccept-version:1.2\nhost:default\n\n\0")
        .await;
    let error = c.expect_error("authentication failed").await;
    let body = String::from_utf8_lossy(&error.body).into_owned();
    assert!(body.contains(text), "'{text}' not in: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_session_cookie_is_checked_by_the_backend_once() {
    let backend = SessionBackend::start().await;
    backend.sign_in("s3cr3t", "alice");
    let node = TestNode::start(&tenant(&backend.verify_url(), &backend.authority(), "")).await;

    // The cookie rides on the WebSocket upgrade, as a browser sends it; CONNECT says nothing.
    let mut alice = Client::ws_with_cookie(&node.ws_url("/ws"), "theme=dark; SESSION=s3cr3t").await;
    let connected = alice.connect(&[]).await;
    assert_eq!(connected.get("user-name"), Some("alice"));
    assert_eq!(backend.checks(), 1);

    // Her own queue is hers; someone else's is not.
    alice.subscribe("1", "/user/queue/notice", "auto").await;
    let (status, answer) = node
        .publish(serde_json::json!({"receiver": "alice", "destination": "/queue/notice", "content": "hi"}))
        .await;
    assert_eq!(status, 202, "{answer}");
    alice.expect_message("hi").await;
    alice
        .send(
            Frame::new(Command::Subscribe)
                .header("id", "2")
                .header("destination", "/user/bob/queue/notice"),
        )
        .await;
    alice.expect_error("access denied").await;

    // The second connection with the same cookie is answered from the cache.
    let mut again = Client::ws_with_cookie(&node.ws_url("/ws"), "SESSION=s3cr3t").await;
    assert_eq!(again.connect(&[]).await.get("user-name"), Some("alice"));
    assert_eq!(backend.checks(), 1, "the verified session was remembered");

    // A claimed userid that is not the session's user is refused.
    let mut forged = Client::ws_with_cookie(&node.ws_url("/ws"), "SESSION=s3cr3t").await;
    forged
        .send_raw(b"CONNECT\naccept-version:1.2\nhost:default\nuserid:bob\n\n\0")
        .await;
    forged.expect_error("authentication failed").await;

    // A session the backend does not know, and no session at all.
    refused(&node, "SESSION=forged", "not valid").await;
    refused(&node, "theme=dark", "no session").await;

    let status = plugin_status(&node).await;
    assert_eq!(status["backend_calls"], 2, "{status}");
    assert_eq!(status["backend_failures"], 0, "{status}");
    // What one warm instance holds is shown, and stays within the tenant's cap.
    let memory = status["instance_memory_bytes"].as_u64().unwrap_or(0);
    assert!(memory > 0 && memory <= 32 << 20, "{status}");
    assert!(status["warm_instances"].as_u64() >= Some(1), "{status}");
}

const ADMIN: &str = "admin-token-for-tests";

async fn plugin_status(node: &TestNode) -> serde_json::Value {
    let (status, body) = http_raw(
        node.http,
        "GET",
        "/admin/v1/tenants/default/plugin",
        Some(ADMIN),
        b"",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_absent_backend_is_a_clear_error_and_costs_only_the_wait() {
    let backend = SessionBackend::start().await;
    backend.sign_in("s1", "alice");
    let node = TestNode::start(&tenant(
        &backend.verify_url(),
        &backend.authority(),
        "cache_ttl_ms = \"0\"\n",
    ))
    .await;

    // Slower than the backend timeout (300 ms), inside the call's deadline (500 ms).
    backend.delay(Duration::from_millis(800));
    let started = std::time::Instant::now();
    let body = refused(&node, "SESSION=s1", "did not answer in time").await;
    assert!(started.elapsed() < Duration::from_secs(2), "{body}");

    // Meanwhile other connections are served: a slow backend holds only its own calls.
    let slow = tokio::spawn({
        let url = node.ws_url("/ws");
        async move {
            let mut c = Client::ws_with_cookie(&url, "SESSION=s1").await;
            c.send_raw(b"CONNECT\naccept-version:1.2\nhost:default\n\n\0")
                .await;
            c.expect_error("authentication failed").await;
        }
    });
    let mut other = Client::tcp(node.stomp).await;
    other
        .send_raw(b"CONNECT\naccept-version:1.2\nhost:default\nsession:nope\n\n\0")
        .await;
    let quick = std::time::Instant::now();
    other.expect_error("authentication failed").await;
    assert!(quick.elapsed() < Duration::from_millis(1_500));
    slow.await.unwrap();

    // Down: refused connections, then closed ones.
    backend.delay(Duration::ZERO);
    backend.stop();
    refused(&node, "SESSION=s1", "unreachable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_the_tenant_does_not_list_is_never_called() {
    let backend = SessionBackend::start().await;
    backend.sign_in("s1", "alice");
    // The plugin is pointed at the backend, but the tenant lists another host.
    let node = TestNode::start(&tenant(&backend.verify_url(), "127.0.0.1:1", "")).await;
    refused(&node, "SESSION=s1", "not allowed").await;
    assert_eq!(backend.checks(), 0, "nothing was sent");

    // And a tenant with no [tenants.plugin_backend] at all.
    let config = format!(
        "[[tenants]]\nid = \"default\"\nplugin = \"{}\"\n[tenants.settings]\nverify_url = \"{}\"\n",
        toml_path(&plugin_wasm("session_cookie")),
        backend.verify_url()
    );
    let node = TestNode::start(&config).await;
    refused(&node, "SESSION=s1", "allows its plugin no backend calls").await;
    assert_eq!(backend.checks(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clustered_nodes_share_what_the_cache_learned() {
    let redis = Redis::start();
    let backend = SessionBackend::start().await;
    backend.sign_in("shared", "carol");
    let node = |id: &str| {
        format!(
            "[cluster]\nredis = \"{}\"\nnode_id = \"{id}\"\n{}",
            redis.url(),
            tenant(&backend.verify_url(), &backend.authority(), "")
        )
    };
    let a = TestNode::start(&node("cache-a")).await;
    let b = TestNode::start(&node("cache-b")).await;
    let mut on_a = Client::ws_with_cookie(&a.ws_url("/ws"), "SESSION=shared").await;
    assert_eq!(on_a.connect(&[]).await.get("user-name"), Some("carol"));
    let mut on_b = Client::ws_with_cookie(&b.ws_url("/ws"), "SESSION=shared").await;
    assert_eq!(on_b.connect(&[]).await.get("user-name"), Some("carol"));
    assert_eq!(backend.checks(), 1, "node b found node a's answer in Redis");

    // The entry is in Redis, under a key that does not hold the cookie.
    let mut conn = redis.client().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("sb:*plugin-cache")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(!keys[0].contains("shared"), "{keys:?}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        (1..=60_000).contains(&ttl),
        "expires with cache_ttl_ms: {ttl}"
    );
}
