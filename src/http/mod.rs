//! The HTTP side of a node: one axum router with the WebSocket and SockJS transports, the
//! backend publish API, the admin API, health checks and the demo page. Every error answer is JSON with an `error` message.

pub mod admin;
pub mod console;
pub mod demo;
pub mod presence;
pub mod publish;
pub mod tenants;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::metrics::Sample;
use crate::node::Node;
use crate::tenant::Tenant;
use crate::transport::{sockjs, ws};
use crate::web::json_error;

/// A request refused before its handler did its work: the JSON error answer, boxed so that
/// a handler's `Result` stays small.
pub struct Refused(Box<Response>);

impl Refused {
    /// A JSON error `{"error": message}` with `status`.
    pub fn new(status: StatusCode, message: &str) -> Refused {
        Refused(Box::new(json_error(status, message)))
    }
}

impl From<Response> for Refused {
    fn from(answer: Response) -> Refused {
        Refused(Box::new(answer))
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// The tenant named in the path, when the request carries one of its API keys; else the
/// answer that says what is wrong (404, or 401 with `WWW-Authenticate`).
pub fn api_tenant(
    node: &Node,
    tenant_id: &str,
    headers: &axum::http::HeaderMap,
) -> Result<Arc<Tenant>, Refused> {
    let Some(tenant) = node.tenant(tenant_id) else {
        return Err(Refused::new(
            StatusCode::NOT_FOUND,
            &format!("unknown tenant '{tenant_id}'"),
        ));
    };
    let key = crate::web::bearer(headers);
    if key.is_some_and(|k| tenant.accepts_api_key(k)) {
        return Ok(tenant);
    }
    let message = if !tenant.has_api_keys() {
        format!("tenant '{tenant_id}' has no API keys configured; set api_keys in its config or start the node with --api-key")
    } else if key.is_none() {
        "missing 'Authorization: Bearer <API key>' header".to_string()
    } else {
        "invalid API key".to_string()
    };
    let mut response = json_error(StatusCode::UNAUTHORIZED, &message);
    response.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        "Bearer".parse().expect("static header"),
    );
    Err(response.into())
}

/// The largest publish body read: a message of at most a frame, plus room for JSON quoting.
fn publish_body_limit(node: &Node) -> usize {
    node.server.max_frame_bytes * 2 + 4096
}

/// The node's HTTP routes.
pub fn router(node: Arc<Node>) -> Router {
    let body_limit = publish_body_limit(&node);
    let endpoints = sockjs::SockJsServices::new(&node);
    let sockjs_route = any(move |req: axum::extract::Request| endpoints.clone().serve(req));
    let router = if node.server.demo_page {
        demo::pages()
    } else {
        Router::new()
    };
    router
        .merge(demo::vendor())
        .route("/sockjs", sockjs_route.clone())
        .route("/sockjs/", sockjs_route.clone())
        .route("/sockjs/{*rest}", sockjs_route)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/ws", any(ws::upgrade_default))
        .route("/ws/{tenant}", any(ws::upgrade_tenant))
        .route(
            "/api/v1/tenants/{tenant}/publish",
            post(publish::publish).layer(DefaultBodyLimit::max(body_limit)),
        )
        .route(
            "/api/v1/tenants/{tenant}/publish/batch",
            post(publish::publish_batch).layer(DefaultBodyLimit::max(node.server.max_batch_bytes)),
        )
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/tenants/{tenant}/users", get(presence::users))
        .route("/api/v1/tenants/{tenant}/users/{user}", get(presence::user))
        .route(
            "/api/v1/tenants/{tenant}/users/{user}/sessions",
            axum::routing::delete(presence::disconnect),
        )
        .route(
            "/api/v1/tenants/{tenant}/destinations/{*destination}",
            get(presence::destination),
        )
        .route("/admin", get(console::page))
        .route("/admin/", get(console::page))
        .route("/admin/console.js", get(console::script))
        .route("/admin/console.css", get(console::style))
        .route(
            "/admin/v1/drain",
            get(admin::drain_status).post(admin::drain),
        )
        .route("/admin/v1/cluster", get(admin::cluster))
        .route(
            "/admin/v1/plugins/check",
            post(admin::plugin_check).layer(DefaultBodyLimit::max(admin::MAX_PLUGIN_BYTES)),
        )
        .route("/admin/v1/tenants", get(tenants::list))
        .route(
            "/admin/v1/tenants/{tenant}",
            get(tenants::get)
                .put(tenants::put)
                .delete(tenants::delete)
                .layer(DefaultBodyLimit::max(tenants::MAX_TENANT_BYTES)),
        )
        .route(
            "/admin/v1/tenants/{tenant}/keys",
            post(tenants::add_key).layer(DefaultBodyLimit::max(4096)),
        )
        .route(
            "/admin/v1/tenants/{tenant}/keys/{key}",
            axum::routing::delete(tenants::remove_key),
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

/// Ready when the node can route (always alone, and while Redis is reachable when clustered)
/// and is not draining.
async fn readyz(axum::extract::State(node): axum::extract::State<Arc<Node>>) -> Response {
    let cluster = node.cluster.describe();
    if node.cluster.is_ready() && !node.drain.is_draining() && node.tenants_loaded() {
        Json(json!({ "ready": true, "node": node.node_id, "cluster": cluster })).into_response()
    } else {
        let mut body = json!({ "ready": false, "node": node.node_id, "cluster": cluster });
        body["error"] = json!(if node.shutdown.is_cancelled() {
            "the node is shutting down"
        } else if node.drain.is_draining() {
            "the node is draining for a restart: it takes no new connections"
        } else if node.cluster.is_ready() {
            "the tenants changed through the admin API are not read yet"
        } else {
            "the cluster bus (Redis) is unreachable; only local delivery works"
        });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn metrics(axum::extract::State(node): axum::extract::State<Arc<Node>>) -> Response {
    let presence: usize = node
        .tenants()
        .iter()
        .map(|t| t.broker.connected_user_count())
        .sum();
    let (waiting, waiting_bytes) = node.tenants().iter().fold((0, 0), |(m, b), t| {
        let (tm, tb) = t.broker.backlog();
        (m + tm, b + tb)
    });
    let mut extra = vec![
        Sample::gauge(
            "stompbox_connections",
            "Open connections.",
            node.open_connections() as u64,
        ),
        Sample::gauge(
            "stompbox_presence_users",
            "Users with a session on this node.",
            presence as u64,
        ),
        Sample::gauge(
            "stompbox_queue_backlog_messages",
            "Queue messages waiting for a consumer with room, all tenants.",
            waiting as u64,
        ),
        Sample::gauge(
            "stompbox_queue_backlog_bytes",
            "Bytes those messages hold (the node's backlog budget counts these).",
            waiting_bytes as u64,
        ),
        Sample::gauge(
            "stompbox_cluster_ready",
            "1 while the cluster can route.",
            u64::from(node.cluster.is_ready()),
        ),
    ];
    extra.extend(node.cluster.metrics());
    for tenant in node.tenants() {
        extra.extend(tenant.upstream.samples());
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        node.metrics.render(&extra),
    )
        .into_response()
}

/// The OpenAPI 3.1 document of the HTTP API (`tests/openapi.rs` checks the node against it).
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "no such endpoint")
}
