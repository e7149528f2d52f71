//! Reading the config file again while the node runs (SIGHUP). The new file is validated
//! whole first; a file that is not valid changes nothing. Then:
//!
//! - the tenants of the file are applied as the admin API would apply them (keys and origins
//!   in place; other changes replace the tenant, whose sessions reconnect), tenants new in the
//!   file are created and those gone from it are deleted; a tenant the admin API changed is
//!   the admin API's and stays as it is;
//! - the per-connection limits apply to connections opened from then on;
//! - whatever else changed (listen addresses, Redis, the admin token, history sizes, SockJS
//!   settings, node-wide limits) takes effect at the next start, and each such key is named.

use std::sync::Arc;

use serde_json::Value;

use super::tenancy::Applied;
use super::Node;
use crate::config::Config;

/// `[server]` keys a reload applies: what a new session is given.
const LIVE_SERVER_KEYS: [&str; 8] = [
    "max_subscriptions",
    "max_transactions",
    "max_transaction_frames",
    "outbound_queue_bytes",
    "connection_memory_bytes",
    "heartbeat_ms",
    "heartbeat_tolerance",
    "delivery_confirm_ms",
];

/// What a reload did.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct Reloaded {
    /// Each tenant of the file (or gone from it) and what applying it did.
    pub tenants: Vec<(String, Applied)>,
    /// Tenants of the file left as they are because the admin API changed them.
    pub kept_from_admin: Vec<String>,
    /// Tenants of the file whose settings this node does not take (the reason).
    pub refused: Vec<(String, String)>,
    /// `[server]` keys that changed and apply to new connections.
    pub applied_limits: Vec<String>,
    /// Keys that changed and take effect only after a restart.
    pub needs_restart: Vec<String>,
}

impl Node {
    /// Applies `config` (validated) as the node's config file, as the module docs say.
    pub async fn reload(&self, config: Config) -> Reloaded {
        let _one_at_a_time = self.tenant_changes.lock().await;
        let before = self
            .bootstrap
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut report = Reloaded::default();
        for (section, old, new) in [
            ("server", json(&before.server), json(&config.server)),
            ("cluster", json(&before.cluster), json(&config.cluster)),
            ("sockjs", json(&before.sockjs), json(&config.sockjs)),
            ("history", json(&before.history), json(&config.history)),
        ] {
            for key in changed_keys(&old, &new) {
                if section == "server" && LIVE_SERVER_KEYS.contains(&key.as_str()) {
                    report.applied_limits.push(format!("server.{key}"));
                } else {
                    report.needs_restart.push(format!("{section}.{key}"));
                }
            }
        }
        if !report.applied_limits.is_empty() {
            let mut sessions = self.sessions.write().unwrap_or_else(|e| e.into_inner());
            let mut context = (**sessions).clone();
            context.limits = super::session_limits(&config.server);
            *sessions = Arc::new(context);
        }
        *self.bootstrap.write().unwrap_or_else(|e| e.into_inner()) = config.clone();

        for tenant in &config.tenants {
            if self.tenant_from_admin(&tenant.id) {
                report.kept_from_admin.push(tenant.id.clone());
                continue;
            }
            if let Err(e) = self.check_tenant(tenant) {
                report.refused.push((tenant.id.clone(), e.to_string()));
                continue;
            }
            let applied = self.serve_tenant(tenant.clone()).await;
            report.tenants.push((tenant.id.clone(), applied));
        }
        for gone in before
            .tenants
            .iter()
            .filter(|t| !config.tenants.iter().any(|n| n.id == t.id))
        {
            if !self.tenant_from_admin(&gone.id) {
                let applied = self.delete_tenant(&gone.id).await;
                report.tenants.push((gone.id.clone(), applied));
            }
        }
        report
    }
}

fn json(section: &impl serde::Serialize) -> Value {
    serde_json::to_value(section).expect("config sections serialize")
}

/// The top-level keys whose values differ between two objects.
fn changed_keys(old: &Value, new: &Value) -> Vec<String> {
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return Vec::new();
    };
    let mut keys: Vec<String> = old
        .keys()
        .chain(new.keys())
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_keys_that_changed_are_named() {
        let old = serde_json::json!({"a": 1, "b": [1, 2], "c": null});
        let new = serde_json::json!({"a": 1, "b": [2], "d": true});
        assert_eq!(changed_keys(&old, &new), ["b", "c", "d"]);
    }
}
