//! `POST /api/v1/tenants/{tenant}/publish`: how backends push a message to a user, a topic or
//! a queue. The key is the tenant's API key as `Authorization: Bearer KEY`. The same body
//! format, published to a tenant's Redis ingress channel, is how the replaced system's
//! backends keep working unchanged ([`prepare`] is shared).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::json_error;
use crate::broker::destination::{self, Target};
use crate::broker::message::RESERVED_HEADERS;
use crate::broker::{Content, RouteError};
use crate::metrics::DropReason;
use crate::node::{Node, Tenant};

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// The user to deliver to; absent = deliver to `destination` itself.
    pub receiver: Option<String>,
    /// Where to deliver: with a receiver, the user destination (e.g. `/queue/notice`).
    pub destination: Option<String>,
    /// A channel code the tenant's policy maps to a destination (instead of `destination`).
    #[serde(rename = "channelCode")]
    pub channel_code: Option<String>,
    /// The body: a string as is, anything else as JSON, byte for byte as the publisher wrote it
    /// (so key order and number formatting survive).
    pub content: Box<RawValue>,
    /// Headers passed to subscribers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A refused publish: the status and what is wrong.
pub type Refused = (StatusCode, String);

fn bad(message: impl Into<String>) -> Refused {
    (StatusCode::BAD_REQUEST, message.into())
}

/// Parses and checks a publish body for `tenant`: where it goes and what it carries.
pub async fn prepare(
    tenant: &Tenant,
    body: &[u8],
    max_frame_bytes: usize,
) -> Result<(Target, Content), Refused> {
    let request: PublishRequest =
        serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))?;
    let dest = match (&request.destination, &request.channel_code) {
        (Some(_), Some(_)) => {
            return Err(bad("give either 'destination' or 'channelCode', not both"))
        }
        (None, None) => return Err(bad("missing 'destination' (or 'channelCode')")),
        (Some(d), None) => d.clone(),
        (None, Some(code)) => match tenant.policy().resolve_channel(code).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                return Err((
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("unknown channel code '{code}' for tenant '{}'", tenant.id),
                ))
            }
            Err(e) => {
                return Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("channel code '{code}' could not be resolved: {e}"),
                ))
            }
        },
    };
    let target = match &request.receiver {
        Some(user) if user.is_empty() => return Err(bad("'receiver' is empty")),
        Some(user) => {
            if dest.starts_with("/user/") {
                return Err(bad(format!(
                    "with a receiver, give the destination the user subscribed to without /user (e.g. '/queue/notice'), not '{dest}'"
                )));
            }
            match destination::for_send(&format!("/user/{user}{dest}")) {
                Ok(t) if !user.contains('/') => t,
                _ => {
                    return Err(bad(format!(
                        "'{dest}' is not a user destination: use /queue/... or /topic/... (and a receiver without '/')"
                    )))
                }
            }
        }
        None => destination::for_send(&dest).map_err(|e| bad(e.to_string()))?,
    };
    for (name, value) in &request.headers {
        if RESERVED_HEADERS.contains(&name.as_str()) {
            return Err(bad(format!(
                "header '{name}' is set by the broker and cannot be given"
            )));
        }
        if name.is_empty() || name.contains(['\n', '\r', ':']) {
            return Err(bad(format!(
                "invalid header name '{name}': it must be non-empty, without ':' or line breaks"
            )));
        }
        if value.contains(['\n', '\r']) {
            return Err(bad(format!("header '{name}' has a line break in its value, which STOMP 1.0 subscribers cannot receive")));
        }
    }
    let raw = request.content.get();
    let (content_type, body) = if raw.starts_with('"') {
        let text: String =
            serde_json::from_str(raw).map_err(|e| bad(format!("invalid JSON body: {e}")))?;
        ("text/plain", Bytes::from(text))
    } else {
        ("application/json", Bytes::copy_from_slice(raw.as_bytes()))
    };
    if body.len() > max_frame_bytes {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "content is {} bytes; the limit is server.max_frame_bytes = {max_frame_bytes}",
                body.len()
            ),
        ));
    }
    let mut headers: Vec<(String, String)> = Vec::with_capacity(request.headers.len() + 1);
    if !request.headers.contains_key("content-type") {
        headers.push(("content-type".into(), content_type.into()));
    }
    headers.extend(request.headers);
    Ok((target, Content { headers, body }))
}

/// Handles one publish.
pub async fn publish(
    State(node): State<Arc<Node>>,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(tenant) = node.tenant(&tenant_id).cloned() else {
        return json_error(
            StatusCode::NOT_FOUND,
            &format!("unknown tenant '{tenant_id}'"),
        );
    };
    let key = super::bearer(&headers);
    let authorized = key.is_some_and(|k| tenant.accepts_api_key(k));
    if !authorized {
        let message = if !tenant.has_api_keys() {
            format!("tenant '{tenant_id}' has no API keys configured; set api_keys in its config or start the node with --api-key")
        } else if key.is_none() {
            "missing 'Authorization: Bearer <API key>' header".to_string()
        } else {
            "invalid API key".to_string()
        };
        let mut response = json_error(StatusCode::UNAUTHORIZED, &message);
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer".parse().expect("static header"),
        );
        return response;
    }
    let (target, content) = match prepare(&tenant, &body, node.server.max_frame_bytes).await {
        Ok(prepared) => prepared,
        Err((status, message)) => return json_error(status, &message),
    };
    let id = node.next_id();
    match tenant.route(&target, content, true).await {
        Ok(d) if d.cluster_unreachable && !d.reached_anyone() => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster bus (Redis) is unreachable and no session on this node took the message: it was not delivered; retry later",
        ),
        Ok(d) => {
            let mut answer = json!({ "id": id, "delivered": d.local, "nodes": d.nodes });
            if d.queued {
                answer["queued"] = json!(true);
            }
            if let Target::User { user, .. } = &target {
                answer["receiver"] = json!(user);
                answer["online"] = json!(d.local > 0 || d.nodes > 0);
            }
            if d.cluster_unreachable {
                // Delivered here, but other nodes could not be told: say so.
                answer["partial"] = json!(true);
                answer["warning"] = json!("the cluster bus (Redis) is unreachable: delivered on this node only");
            }
            (StatusCode::ACCEPTED, Json(answer)).into_response()
        }
        Err(e @ RouteError::BacklogFull(..)) => {
            node.metrics.dropped(DropReason::BacklogFull);
            json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
    }
}
