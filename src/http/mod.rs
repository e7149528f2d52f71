//! The HTTP side of a node: one axum router with the WebSocket transport, the backend publish
//! API and health checks. Every error answer is JSON with an `error` message.

pub mod admin;
pub mod publish;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::node::Node;
use crate::transport::ws;

/// A JSON error answer.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// The node's HTTP routes.
pub fn router(node: Arc<Node>) -> Router {
    // The API takes a message of at most a frame, plus room for JSON quoting.
    let body_limit = node.server.max_frame_bytes * 2 + 4096;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/ws", any(ws::upgrade_default))
        .route("/ws/{tenant}", any(ws::upgrade_tenant))
        .route(
            "/api/v1/tenants/{tenant}/publish",
            post(publish::publish).layer(DefaultBodyLimit::max(body_limit)),
        )
        .route(
            "/admin/v1/tenants/{tenant}/plugin",
            get(admin::plugin_status)
                .put(admin::plugin_upload)
                .layer(DefaultBodyLimit::max(admin::MAX_PLUGIN_BYTES)),
        )
        .fallback(not_found)
        .with_state(node)
}

async fn healthz(axum::extract::State(node): axum::extract::State<Arc<Node>>) -> Response {
    Json(json!({
        "status": "ok",
        "node": node.node_id,
        "connections": node.open_connections(),
    }))
    .into_response()
}

async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "no such endpoint")
}
