//! The admin API, with `Authorization: Bearer ADMIN_TOKEN`: a tenant's plugin (`GET` and
//! `PUT /admin/v1/tenants/{tenant}/plugin`) and the node's drain (`GET` and
//! `POST /admin/v1/drain`). Disabled when the node has no admin token.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::Refused;
use crate::node::drain::DrainStart;
use crate::node::Node;
use crate::plugin::Installed;
use crate::tenant::Tenant;
use crate::web::{body_error, json_error};

/// Largest plugin upload.
pub const MAX_PLUGIN_BYTES: usize = 64 << 20;

/// Passes when the request carries the node's admin token.
pub fn operator(node: &Node, headers: &HeaderMap) -> Result<(), Refused> {
    let Some(token) = node.server.admin_token.as_deref() else {
        return Err(Refused::new(
            StatusCode::FORBIDDEN,
            "the admin API is disabled: start the node with --admin-token or set server.admin_token",
        ));
    };
    let ok = crate::web::bearer(headers)
        .is_some_and(|given| crate::util::constant_time_eq(given.as_bytes(), token.as_bytes()));
    if !ok {
        return Err(Refused::new(
            StatusCode::UNAUTHORIZED,
            "missing or invalid 'Authorization: Bearer <admin token>'",
        ));
    }
    Ok(())
}

/// The body of an operator's request: the admin token checked first, then the body, read
/// within `limit` bytes; else the answer that says what is wrong.
pub fn operator_body(
    node: &Node,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, Refused> {
    operator(node, headers)?;
    body.map_err(|rejection| body_error(rejection, limit).into())
}

/// The tenant named in the path, when the request carries the admin token.
pub fn authorize(
    node: &Node,
    headers: &HeaderMap,
    tenant_id: &str,
) -> Result<Arc<Tenant>, Refused> {
    operator(node, headers)?;
    node.tenant(tenant_id).ok_or_else(|| {
        Refused::new(
            StatusCode::NOT_FOUND,
            &format!("unknown tenant '{tenant_id}'"),
        )
    })
}

/// Plugin status of a tenant.
pub async fn plugin_status(
    State(node): State<Arc<Node>>,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match authorize(&node, &headers, &tenant_id) {
        Ok(tenant) => Json(tenant.plugin().describe()).into_response(),
        Err(r) => r.into_response(),
    }
}

/// Replaces a tenant's plugin with the uploaded `.wasm`. When the tenant's plugin comes from a
/// file, the upload is written over it (atomically), so a restart keeps it and the file
/// watcher agrees with what serves.
pub async fn plugin_upload(
    State(node): State<Arc<Node>>,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return body_error(rejection, MAX_PLUGIN_BYTES),
    };
    let tenant = match authorize(&node, &headers, &tenant_id) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    if body.is_empty() {
        return json_error(
            StatusCode::BAD_REQUEST,
            "the body must be the plugin's .wasm bytes",
        );
    }
    let slot = tenant.plugin();
    match slot.install(body.to_vec(), "admin API").await {
        Ok(outcome) => {
            if let (Installed::Swapped { .. }, Some(path)) = (&outcome, slot.path()) {
                if let Err(e) = write_atomically(path, &body).await {
                    return json_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!(
                            "the plugin serves now, but writing it to {} failed: {e}",
                            path.display()
                        ),
                    );
                }
            }
            if let Err(e) = node
                .share_plugin(&tenant_id, &body, slot.path().is_some())
                .await
            {
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "the plugin serves on this node, but could not be kept for the other nodes or a restart ({e}); upload it again"
                    ),
                );
            }
            let mut answer = slot.describe();
            answer["changed"] = serde_json::json!(outcome != Installed::Unchanged);
            (StatusCode::OK, Json(answer)).into_response()
        }
        Err(e) => json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("plugin refused, the previous version keeps serving: {e}"),
        ),
    }
}

async fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("wasm.uploading");
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await
}

/// `POST /admin/v1/drain` body: the period over which sessions are closed (default
/// `server.drain_ms`).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainRequest {
    period_ms: Option<u64>,
}

/// The longest drain period the API takes: an hour.
const MAX_DRAIN_MS: u64 = 3_600_000;

/// Starts draining the node (202), or says it already is (200).
pub async fn drain(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match operator_body(&node, &headers, body, 4096) {
        Ok(body) => body,
        Err(refused) => return refused.into_response(),
    };
    let request: DrainRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DrainRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    &format!("the body must be empty or {{\"period_ms\": N}}: {e}"),
                )
            }
        }
    };
    let period_ms = request.period_ms.unwrap_or(node.server.drain_ms);
    if period_ms > MAX_DRAIN_MS {
        return json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("period_ms: at most {MAX_DRAIN_MS} (an hour), got {period_ms}"),
        );
    }
    let status = match node.drain(std::time::Duration::from_millis(period_ms)) {
        DrainStart::Started => StatusCode::ACCEPTED,
        DrainStart::AlreadyDraining => StatusCode::OK,
    };
    (status, Json(node.drain_status())).into_response()
}

/// Whether the node drains, since when and over what period, and its connections left.
pub async fn drain_status(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    match operator(&node, &headers) {
        Ok(()) => Json(node.drain_status()).into_response(),
        Err(r) => r.into_response(),
    }
}

/// `GET /admin/v1/cluster`: every live node's state (this one asked directly, the others
/// through the cluster within a second; those that did not answer are named), and the
/// cluster's Redis as this node sees it.
pub async fn cluster(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    if let Err(r) = operator(&node, &headers) {
        return r.into_response();
    }
    let mut nodes = vec![serde_json::json!({ "node": node.node_id, "status": node.status() })];
    let (missing, error) = match node
        .cluster
        .ask_others(&crate::cluster::Query::Status)
        .await
    {
        Ok(replies) => {
            for (id, reply) in replies.by_node {
                if let crate::cluster::Reply::Status { status } = reply {
                    nodes.push(serde_json::json!({ "node": id, "status": status }));
                }
            }
            (replies.missing, None)
        }
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    nodes[1..].sort_by(|a, b| a["node"].as_str().cmp(&b["node"].as_str()));
    Json(serde_json::json!({
        "node": node.node_id,
        "nodes": nodes,
        "unanswered": missing,
        "error": error,
        "redis": node.cluster.describe(),
        "tenants": node.tenants().len(),
    }))
    .into_response()
}

/// `POST /admin/v1/plugins/check`: compiles the `.wasm` in the body and checks it against the
/// world, as an upload would, without installing it (the console checks before it installs).
pub async fn plugin_check(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match operator_body(&node, &headers, body, MAX_PLUGIN_BYTES) {
        Ok(body) => body,
        Err(refused) => return refused.into_response(),
    };
    if body.is_empty() {
        return json_error(
            StatusCode::BAD_REQUEST,
            "the body must be the plugin's .wasm bytes",
        );
    }
    // Compiling a JavaScript or Python component takes seconds of CPU: off the async workers.
    match tokio::task::spawn_blocking(move || crate::plugin::tool::check_bytes(&body)).await {
        Ok(Ok(described)) => Json(described).into_response(),
        Ok(Err(e)) => json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("not a plugin this node can run: {e}"),
        ),
        Err(e) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("the check failed: {e}"),
        ),
    }
}
