//! The admin API's tenants, with `Authorization: Bearer ADMIN_TOKEN`: `GET /admin/v1/tenants`,
//! `GET`, `PUT` and `DELETE /admin/v1/tenants/{tenant}`, and API key rotation
//! (`POST /admin/v1/tenants/{tenant}/keys`, `DELETE /admin/v1/tenants/{tenant}/keys/{id}`).
//!
//! A tenant's settings are the keys of a `[[tenants]]` table, as JSON. Secrets are
//! write-only: answers show API keys as an id and their last four characters, plugin
//! settings and the webhook secret by length only, and a `PUT` that leaves `api_keys`,
//! `settings` or `upstream.webhook_secret` out keeps the tenant's current ones, so what a
//! `GET` shows can be edited and put back.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use sha2::Digest;

use super::admin::{authorize, operator, operator_body};
use crate::config::{ConfigError, TenantConfig};
use crate::node::tenancy::Applied;
use crate::node::tenant_store::Stored;
use crate::node::Node;
use crate::tenant::Tenant;
use crate::web::json_error;

/// The largest tenant settings body read.
pub const MAX_TENANT_BYTES: usize = 256 << 10;

/// A key's id: the first 12 hex digits of its SHA-256, which names it without revealing it.
pub fn key_id(key: &str) -> String {
    crate::util::hex(&sha2::Sha256::digest(key.as_bytes())[..6])
}

/// A key as answers show it.
fn masked_key(key: &str) -> Value {
    let tail: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    json!({ "id": key_id(key), "hint": format!("…{tail}") })
}

/// A tenant's settings as answers show them: secrets masked.
fn masked_settings(config: &TenantConfig) -> Value {
    let mut shown = serde_json::to_value(config).expect("tenant settings serialize");
    shown["api_keys"] = config.api_keys.iter().map(|k| masked_key(k)).collect();
    shown["settings"] = config
        .settings
        .iter()
        .map(|(name, value)| {
            (
                name.clone(),
                json!(format!("({} characters)", value.chars().count())),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    if let Some(secret) = &config.upstream.webhook_secret {
        shown["upstream"]["webhook_secret"] =
            json!(format!("({} characters)", secret.chars().count()));
    }
    shown
}

/// What the admin API shows of a tenant.
fn view(node: &Node, tenant: &Tenant) -> Value {
    let config = tenant.config();
    let plugin = tenant.plugin().describe();
    json!({
        "id": tenant.id,
        "source": if node.tenant_from_admin(&tenant.id) { "admin" } else { "config" },
        "sessions": tenant.sessions(),
        "users_here": tenant.broker.connected_user_count(),
        "plugin": plugin,
        "settings": masked_settings(&config),
    })
}

/// `GET /admin/v1/tenants`: every tenant this node serves.
pub async fn list(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    if let Err(r) = operator(&node, &headers) {
        return r.into_response();
    }
    let tenants: Vec<Value> = node.tenants().iter().map(|t| view(&node, t)).collect();
    Json(json!({
        "node": node.node_id,
        "stored_in": node.tenant_store.describe(),
        "tenants": tenants,
    }))
    .into_response()
}

/// `GET /admin/v1/tenants/{tenant}`.
pub async fn get(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match authorize(&node, &headers, &id) {
        Ok(tenant) => Json(view(&node, &tenant)).into_response(),
        Err(refused) => refused.into_response(),
    }
}

/// `PUT /admin/v1/tenants/{tenant}`: creates the tenant (201) or changes it (200), on every
/// node of the cluster.
pub async fn put(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match operator_body(&node, &headers, body, MAX_TENANT_BYTES) {
        Ok(body) => body,
        Err(refused) => return refused.into_response(),
    };
    let mut given: Value = match serde_json::from_slice(&body) {
        Ok(Value::Object(map)) => Value::Object(map),
        Ok(_) => return refused_field("", "the body must be a JSON object of tenant settings"),
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("the body is not JSON: {e}"),
            )
        }
    };
    match given.get("id") {
        None => given["id"] = json!(id),
        Some(named) if named == &json!(id) => {}
        Some(named) => {
            return refused_field(
                "id",
                &format!("the body names tenant {named}, the path '{id}'"),
            )
        }
    }
    let current = node.tenant(&id).map(|t| t.config());
    if let Some(current) = &current {
        keep_secrets(&mut given, current);
    }
    let mut config: TenantConfig = match serde_path_to_error::deserialize(given) {
        Ok(config) => config,
        Err(e) => {
            let field = e.path().to_string();
            return refused_field(&field, &e.inner().to_string());
        }
    };
    if let Some(plugin) = &config.plugin {
        if let (true, Some(dir)) = (plugin.is_relative(), &node.server.config_dir) {
            config.plugin = Some(dir.join(plugin));
        }
    }
    if let Err(e) = node.check_tenant(&config) {
        return match e {
            ConfigError::Invalid { key, message } => refused_field(&key, &message),
            other => refused_field("", &other.to_string()),
        };
    }
    change(&node, &id, Stored::tenant(config)).await
}

/// `DELETE /admin/v1/tenants/{tenant}`: on every node, its sessions closed with an ERROR that
/// says it was deleted.
pub async fn delete(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = authorize(&node, &headers, &id) {
        return refused.into_response();
    }
    change(&node, &id, Stored::deleted()).await
}

/// `POST /admin/v1/tenants/{tenant}/keys`: adds an API key, made here (or `{"key": "..."}`
/// given), beside the ones in use: a rotation begins. The key is shown this once.
pub async fn add_key(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match operator_body(&node, &headers, body, 4096) {
        Ok(body) => body,
        Err(refused) => return refused.into_response(),
    };
    let tenant = match authorize(&node, &headers, &id) {
        Ok(tenant) => tenant,
        Err(refused) => return refused.into_response(),
    };
    let key = if body.iter().all(u8::is_ascii_whitespace) {
        format!(
            "sbk_{}",
            crate::util::hex(
                &[crate::util::random_u64(), crate::util::random_u64()]
                    .map(u64::to_le_bytes)
                    .concat()
            )
        )
    } else {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Given {
            key: String,
        }
        match serde_json::from_slice::<Given>(&body) {
            Ok(given) => given.key,
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    &format!("the body must be empty or {{\"key\": \"...\"}}: {e}"),
                )
            }
        }
    };
    let mut config = tenant.config();
    if config.api_keys.contains(&key) {
        return refused_field("key", "the tenant already has this key");
    }
    config.api_keys.push(key.clone());
    if let Err(ConfigError::Invalid {
        key: field,
        message,
    }) = node.check_tenant(&config)
    {
        let field = if field.starts_with("api_keys") {
            "key".to_string()
        } else {
            field
        };
        return refused_field(&field, &message);
    }
    let answer = change(&node, &id, Stored::tenant(config)).await;
    if answer.status() != StatusCode::OK {
        return answer;
    }
    let mut shown = node
        .tenant(&id)
        .map(|t| view(&node, &t))
        .unwrap_or_default();
    shown["key"] = json!(key);
    shown["key_id"] = json!(key_id(&key));
    (StatusCode::CREATED, Json(shown)).into_response()
}

/// `DELETE /admin/v1/tenants/{tenant}/keys/{id}`: retires the key with that id (the
/// rotation ends); it stops working on every node.
pub async fn remove_key(
    State(node): State<Arc<Node>>,
    Path((id, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let tenant = match authorize(&node, &headers, &id) {
        Ok(tenant) => tenant,
        Err(refused) => return refused.into_response(),
    };
    let mut config = tenant.config();
    let before = config.api_keys.len();
    config.api_keys.retain(|k| key_id(k) != key);
    if config.api_keys.len() == before {
        return json_error(
            StatusCode::NOT_FOUND,
            &format!("tenant '{id}' has no API key with id '{key}'"),
        );
    }
    change(&node, &id, Stored::tenant(config)).await
}

/// Stores and applies a change; the answer shows the tenant after it.
async fn change(node: &Node, id: &str, change: Stored) -> Response {
    match node.change_tenant(id, change).await {
        Ok(applied) => {
            let status = if applied == Applied::Created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let mut answer = json!({
                "applied": applied,
                "stored_in": node.tenant_store.describe(),
            });
            if let Some(tenant) = node.tenant(id) {
                answer["tenant"] = view(node, &tenant);
            }
            (status, Json(answer)).into_response()
        }
        Err(e) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("the change was not stored, so nothing changed: {e}"),
        ),
    }
}

/// Puts the tenant's current secrets into settings that leave them out.
fn keep_secrets(given: &mut Value, current: &TenantConfig) {
    if given.get("api_keys").is_none() {
        given["api_keys"] = json!(current.api_keys);
    }
    if given.get("settings").is_none() {
        given["settings"] = json!(current.settings);
    }
    if let (Some(upstream), Some(secret)) = (
        given.get_mut("upstream").and_then(Value::as_object_mut),
        &current.upstream.webhook_secret,
    ) {
        upstream
            .entry("webhook_secret")
            .or_insert_with(|| json!(secret));
    }
}

/// 422 naming the field at fault.
fn refused_field(field: &str, message: &str) -> Response {
    let error = if field.is_empty() || field == "." {
        message.to_string()
    } else {
        format!("{field}: {message}")
    };
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({ "error": error, "field": field })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_never_show_a_secret() {
        let mut config = TenantConfig::new("acme");
        config.api_keys = vec!["a-secret-key-1234".into()];
        config
            .settings
            .insert("jwt_secret".into(), "very-secret".into());
        config.upstream.webhook_secret = Some("signing-secret-0000".into());
        let shown = masked_settings(&config).to_string();
        for secret in ["a-secret-key", "very-secret", "signing-secret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("…1234"), "{shown}");
        assert_eq!(key_id("a-secret-key-1234").len(), 12);
    }

    #[test]
    fn a_put_that_leaves_secrets_out_keeps_them() {
        let mut current = TenantConfig::new("acme");
        current.api_keys = vec!["key-one-1".into()];
        current.settings.insert("s".into(), "v".into());
        current.upstream.webhook_secret = Some("x".repeat(16));
        let mut given = json!({"id": "acme", "upstream": {"webhook_url": "http://b/"}});
        keep_secrets(&mut given, &current);
        assert_eq!(given["api_keys"], json!(["key-one-1"]));
        assert_eq!(given["settings"], json!({"s": "v"}));
        assert_eq!(given["upstream"]["webhook_secret"], json!("x".repeat(16)));
        let mut replaced = json!({"api_keys": ["key-two-2"]});
        keep_secrets(&mut replaced, &current);
        assert_eq!(replaced["api_keys"], json!(["key-two-2"]));
    }
}
