//! `POST /api/v1/tenants/{tenant}/publish`: how backends push a message to a user, a topic or
//! a queue. The key is the tenant's API key as `Authorization: Bearer KEY`; the body is
//! checked and routed by [`crate::publish`], whose errors are mapped to status codes here.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::broker::destination::Target;
use crate::node::Node;
use crate::publish::{self, PublishError};
use crate::web::{body_error, json_error};

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

/// Handles one publish.
pub async fn publish(
    State(node): State<Arc<Node>>,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return body_error(rejection, super::publish_body_limit(&node)),
    };
    let Some(tenant) = node.tenant(&tenant_id).cloned() else {
        return json_error(
            StatusCode::NOT_FOUND,
            &format!("unknown tenant '{tenant_id}'"),
        );
    };
    let key = crate::web::bearer(&headers);
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
    let id = node.next_id();
    match publish::publish(&tenant, &body, &node.server.limits()).await {
        Err(e) => json_error(status(&e), &e.to_string()),
        Ok((target, d)) => {
            let mut answer = json!({ "id": id, "delivered": d.local, "nodes": d.nodes });
            if d.queued {
                answer["queued"] = json!(true);
            }
            if let Target::User { user, .. } = &target {
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
            (StatusCode::ACCEPTED, Json(answer)).into_response()
        }
    }
}
