//! The operator's console at `/admin`: one page, its script and its style, compiled into the
//! binary (no build step, nothing fetched at run time). The page signs in with the admin
//! token and drives the admin API; without an admin token the console is off, as the API is.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::node::Node;
use crate::web::json_error;

const PAGE: &str = include_str!("../../static/admin/index.html");
const SCRIPT: &str = include_str!("../../static/admin/console.js");
const STYLE: &str = include_str!("../../static/admin/console.css");

fn asset(node: &Node, content_type: &'static str, body: &'static str) -> Response {
    if node.server.admin_token.is_none() {
        return json_error(
            StatusCode::NOT_FOUND,
            "the console is off: start the node with --admin-token or set server.admin_token",
        );
    }
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            // The page runs only its own script and talks only to this node.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// `GET /admin`.
pub async fn page(State(node): State<Arc<Node>>) -> Response {
    asset(&node, "text/html; charset=utf-8", PAGE)
}

/// `GET /admin/console.js`.
pub async fn script(State(node): State<Arc<Node>>) -> Response {
    asset(&node, "text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /admin/console.css`.
pub async fn style(State(node): State<Arc<Node>>) -> Response {
    asset(&node, "text/css; charset=utf-8", STYLE)
}
