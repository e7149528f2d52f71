//! Small HTTP and WebSocket building blocks shared by the HTTP API and the transports: bearer
//! tokens, header token lists, JSON error answers, allowed origins, socket reads and gathered
//! writes, WebSocket framing, message reassembly and WebSocket connections. A leaf below both,
//! so that the transports and the SockJS layer never import the HTTP API.

pub mod client;
pub mod origin;
pub mod socket;
pub mod websocket;
pub mod wsframe;
pub mod wsmessage;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// The token of an `Authorization: Bearer TOKEN` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Whether a comma-separated header (`Connection`, `Upgrade`, ...) holds `token`, ignoring case.
pub fn has_token(
    headers: &axum::http::HeaderMap,
    name: axum::http::HeaderName,
    token: &str,
) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The JSON answer for a request body that could not be read: too large for `limit`, or
/// broken off.
pub fn body_error(rejection: axum::extract::rejection::BytesRejection, limit: usize) -> Response {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        json_error(
            status,
            &format!("the request body is larger than this endpoint's limit of {limit} bytes"),
        )
    } else {
        json_error(
            status,
            &format!(
                "the request body could not be read: {}",
                rejection.body_text()
            ),
        )
    }
}

/// A JSON error answer.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}
