//! The webhook: each batch is one POST of `{"tenant": ..., "items": [...]}` to the tenant's
//! URL, signed so that the backend can tell it came from this cluster and is not a replay.
//!
//! The signature is `X-Stompbox-Signature: v1=HEX`, where HEX is HMAC-SHA256, keyed with the
//! tenant's `webhook_secret`, over `{timestamp}.{body}`; `X-Stompbox-Timestamp` is the
//! timestamp (Unix seconds). A receiver recomputes it over the bytes it got, compares in
//! constant time, and refuses a timestamp more than a few minutes away from its clock. A
//! retried batch carries the same `X-Stompbox-Delivery` and item ids, and a new timestamp.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::{HeaderName, HeaderValue, Uri};
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use serde_json::json;

use super::item::Item;
use super::outlet::{Refusal, Sink};
use crate::web::client::HttpClient;

/// The header with the signature.
pub const SIGNATURE_HEADER: &str = "x-stompbox-signature";
/// The header with the signing time.
pub const TIMESTAMP_HEADER: &str = "x-stompbox-timestamp";
/// The header with the batch's id (its first item's), the same on every try.
pub const DELIVERY_HEADER: &str = "x-stompbox-delivery";
/// The header with the tenant.
pub const TENANT_HEADER: &str = "x-stompbox-tenant";

/// The largest answer body read (it is only quoted in errors).
const MAX_ANSWER_BYTES: usize = 64 << 10;

/// `v1=HEX`: the signature of `body` signed at `timestamp` with `secret`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", crate::util::hex(&mac.finalize().into_bytes()))
}

/// A tenant's webhook.
#[derive(Debug)]
pub struct Webhook {
    tenant: String,
    uri: Uri,
    secret: Vec<u8>,
    timeout: Duration,
    client: HttpClient,
}

impl Webhook {
    /// The webhook at `uri` (already checked by the config).
    pub fn new(tenant: &str, uri: Uri, secret: &str, timeout: Duration) -> Webhook {
        Webhook {
            tenant: tenant.to_string(),
            uri,
            secret: secret.as_bytes().to_vec(),
            timeout,
            client: HttpClient::new(),
        }
    }
}

fn header(name: &'static str, value: &str) -> Option<(HeaderName, HeaderValue)> {
    Some((
        HeaderName::from_static(name),
        HeaderValue::from_str(value).ok()?,
    ))
}

#[async_trait]
impl Sink for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }

    async fn deliver(&self, items: &[Arc<Item>]) -> Result<(), Refusal> {
        let body = json!({
            "tenant": self.tenant,
            "items": items.iter().map(|i| i.to_json()).collect::<Vec<_>>(),
        });
        let body = Bytes::from(body.to_string());
        let timestamp = crate::util::unix_ms() / 1000;
        let signed = signature(&self.secret, timestamp, &body);
        let delivery = items.first().map_or("", |i| i.id.as_str());
        let headers: Vec<_> = [
            header("content-type", "application/json"),
            header(
                "user-agent",
                concat!("stompbox/", env!("CARGO_PKG_VERSION")),
            ),
            header(SIGNATURE_HEADER, &signed),
            header(TIMESTAMP_HEADER, &timestamp.to_string()),
            header(DELIVERY_HEADER, delivery),
            header(TENANT_HEADER, &self.tenant),
        ]
        .into_iter()
        .flatten()
        .collect();
        let answer = self
            .client
            .send(
                axum::http::Method::POST,
                &self.uri,
                &headers,
                body,
                self.timeout,
                MAX_ANSWER_BYTES,
            )
            .await
            // No answer to act on (none, or one too large to read): tried again.
            .map_err(|e| Refusal::Transient(format!("webhook {}: {e}", self.uri)))?;
        let status = answer.status;
        if status.is_success() {
            return Ok(());
        }
        let said = String::from_utf8_lossy(&answer.body[..answer.body.len().min(200)]).into_owned();
        let reason = format!("webhook {} answered {status}: {}", self.uri, said.trim());
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Err(Refusal::Transient(reason))
        } else {
            Err(Refusal::Permanent(reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // HMAC-SHA256(key = "secret", "1700000000.{}"), computed independently with
        // `printf '1700000000.{}' | openssl dgst -sha256 -hmac secret`.
        assert_eq!(
            signature(b"secret", 1_700_000_000, b"{}"),
            "v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }
}
