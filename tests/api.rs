//! The backend publish API and health endpoint against a real node.

mod support;

use serde_json::json;
use stompbox::stomp::Command;
use support::*;

async fn post(
    node: &TestNode,
    tenant: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    http_request(
        node.http,
        "POST",
        &format!("/api/v1/tenants/{tenant}/publish"),
        key,
        body,
    )
    .await
}

#[tokio::test]
async fn string_content_is_text_and_json_content_is_serialized() {
    let node = TestNode::default().await;
    let mut c = tcp_user(&node, "alice").await;
    c.subscribe("1", "/topic/t", "auto").await;
    let (status, answer) = node
        .publish(json!({"destination": "/topic/t", "content": "plain text"}))
        .await;
    assert_eq!(status, 202);
    assert!(answer["id"].as_str().is_some_and(|id| !id.is_empty()));
    let m = c.expect_message("plain text").await;
    assert_eq!(m.get("content-type"), Some("text/plain"));

    node.publish(json!({"destination": "/topic/t", "content": [1, {"a": null}]}))
        .await;
    let m = c.expect_message(r#"[1,{"a":null}]"#).await;
    assert_eq!(m.get("content-type"), Some("application/json"));

    // JSON content arrives byte for byte: key order and formatting as published.
    let raw = r#"{"destination": "/topic/t", "content": {"z": 1, "a": [2.50]}}"#;
    let (status, _) = http_request(
        node.http,
        "POST",
        "/api/v1/tenants/default/publish",
        Some(API_KEY),
        raw,
    )
    .await;
    assert_eq!(status, 202);
    c.expect_message(r#"{"z": 1, "a": [2.50]}"#).await;

    // A publisher's own content-type wins.
    node.publish(json!({"destination": "/topic/t", "content": "<b/>", "headers": {"content-type": "text/html"}}))
        .await;
    let m = c.expect_message("<b/>").await;
    assert_eq!(m.get("content-type"), Some("text/html"));
}

#[tokio::test]
async fn errors_are_json_with_the_right_status() {
    let node = TestNode::default().await;
    let ok_body = json!({"destination": "/topic/t", "content": "x"}).to_string();
    let cases: Vec<(&str, Option<&str>, String, u16, &str)> = vec![
        (
            "nope",
            Some(API_KEY),
            ok_body.clone(),
            404,
            "unknown tenant",
        ),
        ("default", None, ok_body.clone(), 401, "missing"),
        (
            "default",
            Some("wrong-key-123"),
            ok_body.clone(),
            401,
            "invalid API key",
        ),
        (
            "default",
            Some(API_KEY),
            "{not json".into(),
            400,
            "invalid JSON",
        ),
        (
            "default",
            Some(API_KEY),
            json!({"destination": "/topic/t"}).to_string(),
            400,
            "content",
        ),
        (
            "default",
            Some(API_KEY),
            json!({"content": "x"}).to_string(),
            400,
            "missing 'destination'",
        ),
        (
            "default",
            Some(API_KEY),
            json!({"destination": "/elsewhere", "content": "x"}).to_string(),
            400,
            "unknown destination",
        ),
        (
            "default",
            Some(API_KEY),
            json!({"destination": "/topic/t", "content": "x", "surprise": 1}).to_string(),
            400,
            "surprise",
        ),
        (
            "default",
            Some(API_KEY),
            json!({"destination": "/topic/t", "channelCode": "A", "content": "x"}).to_string(),
            400,
            "not both",
        ),
        (
            "default",
            Some(API_KEY),
            json!({"channelCode": "ORDER_STATUS", "content": "x"}).to_string(),
            422,
            "unknown channel code",
        ),
        (
            "default",
            Some(API_KEY),
            json!({"receiver": "a", "destination": "/user/a/queue/x", "content": "x"}).to_string(),
            400,
            "without /user",
        ),
        (
            "default",
            Some(API_KEY),
            json!({"destination": "/topic/t", "content": "x", "headers": {"message-id": "1"}})
                .to_string(),
            400,
            "set by the broker",
        ),
        (
            "default",
            Some(API_KEY),
            json!({"destination": "/topic/t", "content": "x", "headers": {"x": 1}}).to_string(),
            400,
            "invalid JSON",
        ),
    ];
    for (tenant, key, body, status, text) in cases {
        let (got, answer) = post(&node, tenant, key, &body).await;
        assert_eq!(got, status, "{body} → {answer}");
        let error = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("JSON error body for {body}: {answer}"));
        assert!(error.contains(text), "'{error}' should mention '{text}'");
    }
    // Unknown paths are JSON too.
    let (status, answer) = http_request(node.http, "GET", "/api/v2/whatever", None, "").await;
    assert_eq!(status, 404);
    assert!(answer["error"].is_string());
}

#[tokio::test]
async fn oversized_content_is_refused() {
    let node = TestNode::start("[server]\nmax_frame_bytes = 1024\n").await;
    let (status, answer) = node
        .publish(json!({"destination": "/topic/t", "content": "x".repeat(1500)}))
        .await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("max_frame_bytes"));
}

#[tokio::test]
async fn a_node_without_api_keys_says_how_to_set_one() {
    let node = TestNode::start("[[tenants]]\nid = \"open\"\n").await;
    let (status, answer) = post(&node, "open", Some("anything-at-all"), "{}").await;
    assert_eq!(status, 401);
    assert!(answer["error"].as_str().unwrap().contains("no API keys"));
}

#[tokio::test]
async fn healthz_answers() {
    let node = TestNode::default().await;
    let _c = tcp_user(&node, "a").await;
    let (status, answer) = http_request(node.http, "GET", "/healthz", None, "").await;
    assert_eq!(status, 200);
    assert_eq!(answer["status"], "ok");
    assert_eq!(answer["connections"], 1);
}

#[tokio::test]
async fn full_queue_backlog_is_refused_not_dropped() {
    let node = TestNode::start("[server]\nmax_queue_backlog = 2\n").await;
    for _ in 0..2 {
        let (status, answer) = node
            .publish(json!({"destination": "/queue/idle", "content": "x"}))
            .await;
        assert_eq!(status, 202);
        assert_eq!(answer["queued"], true);
    }
    let (status, answer) = node
        .publish(json!({"destination": "/queue/idle", "content": "x"}))
        .await;
    assert_eq!(status, 503, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("backlog"));
    // Over STOMP the same refusal is an ERROR.
    let mut c = tcp_user(&node, "a").await;
    c.send(
        stompbox::stomp::Frame::new(Command::Send)
            .header("destination", "/queue/idle")
            .header("receipt", "r"),
    )
    .await;
    let error = c.expect_error("message not accepted").await;
    assert_eq!(error.get("receipt-id"), Some("r"));
}

#[tokio::test]
async fn a_publish_obeys_the_limits_of_a_clients_frame() {
    let node = TestNode::default().await;
    let mut c = tcp_user(&node, "alice").await;
    c.subscribe("1", "/topic/t", "auto").await;
    let many: serde_json::Map<String, serde_json::Value> =
        (0..10_000).map(|i| (format!("h{i}"), json!(""))).collect();
    let (status, answer) = node
        .publish(json!({"destination": "/topic/t", "content": "x", "headers": many}))
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("max_headers"),
        "{answer}"
    );

    let (status, answer) = node
        .publish(json!({"destination": "/topic/t", "content": "x", "headers": {"x-big": "v".repeat(60_000)}}))
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("max_header_line"),
        "{answer}"
    );

    // Headers count toward the frame's size, as they do in a client's frame.
    let headers: serde_json::Map<String, serde_json::Value> = (0..17)
        .map(|i| (format!("x-h{i}"), json!("v".repeat(4000))))
        .collect();
    let (status, answer) = node
        .publish(json!({"destination": "/topic/t", "content": "x", "headers": headers}))
        .await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("max_frame_bytes"),
        "{answer}"
    );
    c.expect_nothing(std::time::Duration::from_millis(200))
        .await;

    // Within the limits it goes through.
    let (status, answer) = node
        .publish(json!({"destination": "/topic/t", "content": "ok", "headers": {"x-a": "1"}}))
        .await;
    assert_eq!(status, 202, "{answer}");
    c.expect_message("ok").await;
}

#[tokio::test]
async fn an_oversized_request_body_gets_a_json_error() {
    let node = TestNode::start("[server]\nmax_frame_bytes = 1024\n").await;
    let body = json!({"destination": "/topic/t", "content": "x".repeat(20_000)}).to_string();
    let (status, answer) = post(&node, "default", Some(API_KEY), &body).await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("limit")),
        "a JSON error body: {answer}"
    );
}

async fn batch(node: &TestNode, content_type: &str, body: &str) -> (u16, serde_json::Value) {
    let response = stompbox_testkit::http::send(
        node.http,
        &stompbox_testkit::http::Request::new("POST", "/api/v1/tenants/default/publish/batch")
            .header("Host", "test")
            .header("Content-Type", content_type)
            .bearer(API_KEY)
            .body(body.as_bytes().to_vec()),
    )
    .await
    .unwrap();
    let json = response.json().unwrap_or_else(|| json!(response.text()));
    (response.status, json)
}

#[tokio::test]
async fn a_batch_gives_one_result_per_message_and_keeps_each_receivers_order() {
    let node = TestNode::default().await;
    let mut alice = tcp_user(&node, "alice").await;
    alice.subscribe("1", "/user/queue/n", "auto").await;
    let mut bob = tcp_user(&node, "bob").await;
    bob.subscribe("1", "/user/queue/n", "auto").await;
    let mut messages = Vec::new();
    for i in 0..50 {
        messages.push(
            json!({"receiver": "alice", "destination": "/queue/n", "content": format!("a{i}")}),
        );
        messages.push(
            json!({"receiver": "bob", "destination": "/queue/n", "content": format!("b{i}")}),
        );
    }
    // Mixed in: a message without content, one to no known kind of destination, one that is
    // not an object.
    messages.insert(3, json!({"receiver": "alice", "destination": "/queue/n"}));
    messages.insert(7, json!({"destination": "/nowhere", "content": "x"}));
    messages.insert(9, json!(42));
    let (status, answer) = batch(&node, "application/json", &json!(messages).to_string()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 100);
    assert_eq!(answer["failed"], 3);
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 103);
    for (i, result) in results.iter().enumerate() {
        if [3, 7, 9].contains(&i) {
            assert_eq!(result["status"], 400, "{i}: {result}");
            assert!(
                result["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{result}"
            );
        } else {
            assert_eq!(result["status"], 202, "{i}: {result}");
            assert_eq!(result["online"], true);
        }
    }
    assert!(results[7]["error"].as_str().unwrap().contains("/nowhere"));
    for i in 0..50 {
        alice.expect_message(&format!("a{i}")).await;
        bob.expect_message(&format!("b{i}")).await;
    }
    node.stop().await;
}

#[tokio::test]
async fn a_batch_in_ndjson_is_answered_in_ndjson() {
    let node = TestNode::default().await;
    let mut c = tcp_user(&node, "alice").await;
    c.subscribe("1", "/topic/t", "auto").await;
    let body = "{\"destination\": \"/topic/t\", \"content\": \"one\"}\n\n{not json\n{\"destination\": \"/topic/t\", \"content\": \"two\"}\n";
    let (status, answer) = batch(&node, "application/x-ndjson", body).await;
    assert_eq!(status, 200);
    let lines: Vec<serde_json::Value> = answer
        .as_str()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines
            .iter()
            .map(|l| l["status"].clone())
            .collect::<Vec<_>>(),
        vec![json!(202), json!(400), json!(202)]
    );
    assert!(lines[1]["error"].as_str().unwrap().contains("invalid JSON"));
    c.expect_message("one").await;
    c.expect_message("two").await;
    node.stop().await;
}

#[tokio::test]
async fn a_batch_names_its_limits_and_needs_the_api_key() {
    let node = TestNode::start("[server]\nmax_batch_messages = 3\n").await;
    let four = json!([1, 2, 3, 4]).to_string();
    let (status, answer) = batch(&node, "application/json", &four).await;
    assert_eq!(status, 413);
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("server.max_batch_messages"));
    let (status, answer) = batch(&node, "application/json", "{\"not\": \"an array\"}").await;
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().unwrap().contains("JSON array"));
    let (status, _) = http_request(
        node.http,
        "POST",
        "/api/v1/tenants/default/publish/batch",
        Some("wrong-key-123"),
        "[]",
    )
    .await;
    assert_eq!(status, 401);
    node.stop().await;
}
