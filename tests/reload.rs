//! SIGHUP reads the config file again, on a node process: tenants and their keys and origins,
//! per-connection limits for new connections, and tenants added or removed, apply without a
//! restart and without closing a session whose tenant only changed keys; what needs a restart
//! (listen addresses, node-wide limits) is named in the log. A file that is not valid changes nothing and the
//! log names the key at fault.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use stompbox::stomp::{Command, Frame};
use stompbox_testkit::Signal;
use support::cluster::{Alone, NodeProcess};
use support::*;

fn config(acme_key: &str, max_subscriptions: usize, beta: bool, max_connections: usize) -> String {
    let mut toml = format!(
        "[server]\nmax_connections = {max_connections}\nmax_subscriptions = {max_subscriptions}\n\
         [[tenants]]\nid = \"default\"\napi_keys = [\"{API_KEY}\"]\n\
         [[tenants]]\nid = \"acme\"\napi_keys = [\"{acme_key}\"]\n"
    );
    if beta {
        toml.push_str("[[tenants]]\nid = \"beta\"\napi_keys = [\"beta-key-01\"]\n");
    }
    toml
}

async fn publish(node: &NodeProcess, tenant: &str, key: &str) -> u16 {
    http_request(
        node.http,
        "POST",
        &format!("/api/v1/tenants/{tenant}/publish"),
        Some(key),
        &json!({"destination": "/topic/news", "content": "hi"}).to_string(),
    )
    .await
    .0
}

/// Waits up to 5 s for `tenant` to answer `key` with `status`.
async fn until_status(node: &NodeProcess, tenant: &str, key: &str, status: u16) {
    let started = Instant::now();
    while publish(node, tenant, key).await != status {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{tenant} with {key} never answered {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many SUBSCRIBEs a new connection may make before `too many subscriptions`.
async fn subscriptions_allowed(node: &NodeProcess) -> usize {
    let mut client = Client::tcp(node.stomp).await;
    client.connect_as("counter").await;
    for n in 0..20 {
        client
            .send(
                Frame::new(Command::Subscribe)
                    .header("id", format!("s{n}").as_str())
                    .header("destination", format!("/topic/t{n}").as_str())
                    .header("receipt", format!("r{n}").as_str()),
            )
            .await;
        let frame = client.recv().await;
        if frame.command == Command::Error {
            assert_eq!(
                frame.get("message"),
                Some("too many subscriptions"),
                "{frame:?}"
            );
            return n;
        }
    }
    panic!("20 subscriptions allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_good_file_and_keeps_running_on_a_bad_one() {
    let mut node = NodeProcess::start("reloaded", &Alone, &config("acme-key-01", 5, false, 1000));
    assert_eq!(publish(&node, "acme", "acme-key-01").await, 202);
    assert_eq!(publish(&node, "beta", "beta-key-01").await, 404);
    assert_eq!(subscriptions_allowed(&node).await, 5);
    let mut alice = Client::ws(&format!("ws://{}/ws/acme", node.http), "v12.stomp").await;
    alice.connect_as("alice").await;
    alice.subscribe("1", "/topic/news", "auto").await;

    // A good file: a new key for acme, a new tenant, a lower limit, and a node-wide limit
    // that needs a restart.
    node.rewrite_config(&config("acme-key-02", 3, true, 2000));
    node.signal(Signal::Hup);
    until_status(&node, "acme", "acme-key-02", 202).await;
    assert_eq!(publish(&node, "acme", "acme-key-01").await, 401);
    until_status(&node, "beta", "beta-key-01", 202).await;
    assert_eq!(subscriptions_allowed(&node).await, 3);
    // Only acme's keys changed: alice's session goes on.
    assert_eq!(publish(&node, "acme", "acme-key-02").await, 202);
    alice.expect_message("hi").await;
    let log = node.log();
    assert!(
        log.contains("server.max_connections") && log.contains("restart"),
        "the log does not say server.max_connections needs a restart:\n{log}"
    );

    // A bad file: nothing changes, the log names the key.
    node.rewrite_config(&config("acme-key-03", 0, false, 1000));
    node.signal(Signal::Hup);
    let started = Instant::now();
    while !node.log().contains("server.max_subscriptions") {
        assert!(started.elapsed() < Duration::from_secs(5), "{}", node.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        node.log().contains("the running config stays"),
        "{}",
        node.log()
    );
    assert_eq!(publish(&node, "acme", "acme-key-02").await, 202);
    assert_eq!(publish(&node, "acme", "acme-key-03").await, 401);
    assert_eq!(publish(&node, "beta", "beta-key-01").await, 202);
    assert_eq!(subscriptions_allowed(&node).await, 3);

    // A tenant gone from the file is deleted; its sessions are told.
    let mut bob = Client::ws(&format!("ws://{}/ws/beta", node.http), "v12.stomp").await;
    bob.connect_as("bob").await;
    node.rewrite_config(&config("acme-key-02", 3, false, 2000));
    node.signal(Signal::Hup);
    let error = bob.expect_error("tenant closed").await;
    assert!(
        String::from_utf8_lossy(&error.body).contains("deleted"),
        "{error:?}"
    );
    until_status(&node, "beta", "beta-key-01", 404).await;
    assert!(node.running());
}
