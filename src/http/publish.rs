//! `POST /api/v1/tenants/{tenant}/publish` and `.../publish/batch`: how backends push
//! messages to a user, a topic or a queue, one per request or many. The key is the tenant's
//! API key as `Authorization: Bearer KEY`; each message is checked and routed by
//! [`crate::publish`], whose errors are mapped to status codes here.
//!
//! A batch is a JSON array of publish bodies, or NDJSON (one body per line, for batches too
//! large to build as one JSON value); its answer is one result per message, in order, each
//! with the status a single publish would have had (NDJSON in, NDJSON out). Messages to one
//! receiver (or one topic or queue) are routed one after another, in the batch's order;
//! different receivers' messages are routed beside each other.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::{api_tenant, Refused};
use crate::broker::destination::Target;
use crate::node::Node;
use crate::publish::{self, PublishError};
use crate::tenant::{Delivery, Tenant};
use crate::web::body_error;

/// The status code for a refused publish.
fn status(error: &PublishError) -> StatusCode {
    match error {
        PublishError::Invalid(_) => StatusCode::BAD_REQUEST,
        PublishError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        PublishError::UnknownChannel { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        PublishError::PolicyUnavailable(_)
        | PublishError::Refused(_)
        | PublishError::ClusterUnavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The 202 answer's body for a message routed as `d`.
fn accepted(id: String, target: &Target, d: &Delivery) -> Value {
    let mut answer = json!({ "id": id, "delivered": d.local, "nodes": d.nodes });
    if d.queued {
        answer["queued"] = json!(true);
    }
    if let Target::User { user, .. } = target {
        answer["receiver"] = json!(user);
        answer["online"] = json!(d.local > 0 || d.nodes > 0);
        // Stored: sessions of the user that subscribe later get it.
        answer["stored"] = json!(d.stored);
    }
    if matches!(target, Target::Topic(_) | Target::Queue(_)) && d.stored {
        // A topic with history (a SUBSCRIBE with x-stream-offset can replay it), or a
        // durable queue (it survives the loss of a node).
        answer["stored"] = json!(true);
    }
    if d.cluster_unreachable {
        // Delivered here, but other nodes could not be told: say so.
        answer["partial"] = json!(true);
        answer["warning"] =
            json!("the cluster bus (Redis) is unreachable: delivered on this node only");
    }
    answer
}

/// Publishes one message body: its status and answer.
async fn publish_one(node: &Node, tenant: &Tenant, body: &[u8]) -> (StatusCode, Value) {
    let id = node.next_id();
    match publish::publish(tenant, body, &node.server.limits()).await {
        Err(e) => (status(&e), json!({ "error": e.to_string() })),
        Ok((target, d)) => (StatusCode::ACCEPTED, accepted(id, &target, &d)),
    }
}

/// Handles one publish.
pub async fn publish(
    State(node): State<Arc<Node>>,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refused> {
    let body = body.map_err(|r| body_error(r, super::publish_body_limit(&node)))?;
    let tenant = api_tenant(&node, &tenant_id, &headers)?;
    let (status, answer) = publish_one(&node, &tenant, &body).await;
    Ok((status, Json(answer)).into_response())
}

/// Batches routed at once at most: groups of one receiver's messages in flight together.
const BATCH_GROUPS_IN_FLIGHT: usize = 64;

/// What routes a message one after another with others of its batch: its receiver, or its
/// destination (a message whose body does not parse is a group of its own).
fn group_of(body: &[u8], index: usize) -> String {
    #[derive(serde::Deserialize)]
    struct Address {
        receiver: Option<String>,
        destination: Option<String>,
        #[serde(rename = "channelCode")]
        channel_code: Option<String>,
    }
    match serde_json::from_slice::<Address>(body) {
        Ok(Address {
            receiver: Some(user),
            ..
        }) => format!("u\0{user}"),
        Ok(Address {
            destination: Some(dest),
            ..
        }) => format!("d\0{dest}"),
        Ok(Address {
            channel_code: Some(code),
            ..
        }) => format!("c\0{code}"),
        _ => format!("#\0{index}"),
    }
}

/// Handles a batch publish.
pub async fn publish_batch(
    State(node): State<Arc<Node>>,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refused> {
    let body = body.map_err(|r| body_error(r, node.server.max_batch_bytes))?;
    let tenant = api_tenant(&node, &tenant_id, &headers)?;
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.starts_with("application/x-ndjson") || v.starts_with("application/jsonl")
        });
    let messages: Vec<Bytes> = if ndjson {
        body.split(|b| *b == b'\n')
            .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
            .map(|line| body.slice_ref(line))
            .collect()
    } else {
        match serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(&body) {
            Ok(items) => items
                .iter()
                .map(|raw| Bytes::copy_from_slice(raw.get().as_bytes()))
                .collect(),
            Err(e) => {
                return Err(Refused::new(
                    StatusCode::BAD_REQUEST,
                    &format!("a batch is a JSON array of publish bodies (or NDJSON with Content-Type: application/x-ndjson): {e}"),
                ))
            }
        }
    };
    let max = node.server.max_batch_messages;
    if messages.len() > max {
        return Err(Refused::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "the batch has {} messages; at most {max} are allowed (server.max_batch_messages)",
                messages.len()
            ),
        ));
    }
    let results = route_batch(&node, &tenant, &messages).await;
    let accepted = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::ACCEPTED)
        .count();
    let results: Vec<Value> = results
        .into_iter()
        .map(|(status, mut answer)| {
            answer["status"] = json!(status.as_u16());
            answer
        })
        .collect();
    if ndjson {
        let mut text = String::new();
        for result in &results {
            text.push_str(&result.to_string());
            text.push('\n');
        }
        return Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], text).into_response());
    }
    Ok(Json(json!({
        "accepted": accepted,
        "failed": results.len() - accepted,
        "results": results,
    }))
    .into_response())
}

/// Routes every message of a batch: one group (receiver or destination) after another in
/// order, groups beside each other. Each message's result, in the batch's order.
async fn route_batch(node: &Node, tenant: &Tenant, messages: &[Bytes]) -> Vec<(StatusCode, Value)> {
    let mut groups: HashMap<String, Vec<usize>> = HashMap::new();
    let mut order = Vec::new();
    for (index, body) in messages.iter().enumerate() {
        let group = group_of(body, index);
        let members = groups.entry(group.clone()).or_default();
        if members.is_empty() {
            order.push(group);
        }
        members.push(index);
    }
    let mut results: Vec<Option<(StatusCode, Value)>> = vec![None; messages.len()];
    let mut done = futures_util::stream::iter(order.into_iter().map(|group| {
        let members = groups.remove(&group).unwrap_or_default();
        async move {
            let mut out = Vec::with_capacity(members.len());
            for index in members {
                out.push((index, publish_one(node, tenant, &messages[index]).await));
            }
            out
        }
    }))
    .buffer_unordered(BATCH_GROUPS_IN_FLIGHT);
    while let Some(group) = done.next().await {
        for (index, result) in group {
            results[index] = Some(result);
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every message has a result"))
        .collect()
}
