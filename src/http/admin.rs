//! The admin API: `GET` and `PUT /admin/v1/tenants/{tenant}/plugin`, with
//! `Authorization: Bearer ADMIN_TOKEN`. Disabled when the node has no admin token.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::Refused;
use crate::node::Node;
use crate::plugin::Installed;
use crate::tenant::Tenant;
use crate::web::{body_error, json_error};

/// Largest plugin upload.
pub const MAX_PLUGIN_BYTES: usize = 64 << 20;

fn authorize(node: &Node, headers: &HeaderMap, tenant_id: &str) -> Result<Arc<Tenant>, Refused> {
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
    node.tenant(tenant_id).cloned().ok_or_else(|| {
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
