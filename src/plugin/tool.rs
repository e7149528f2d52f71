//! Plugin author tooling behind `stompbox plugin check` and `stompbox plugin call`: load a
//! `.wasm` exactly as a node would and report what it exports, or run one call and show the
//! result, so a plugin can be tried without a node or a browser.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};

use super::engine::{wit_types, Compiled, PluginEngine, PluginError, PluginLimits, Pool};
use super::{connect_info_to_wit, principal_from_wit};
use crate::policy::{ConnectInfo, TransportKind};

/// One call to make.
#[derive(Debug, Clone)]
pub enum ToolCall {
    /// `authenticate` with these connection facts.
    Authenticate {
        /// The tenant id the plugin sees.
        tenant: String,
        /// The transport.
        transport: TransportKind,
        /// The remote address.
        remote_addr: Option<String>,
        /// CONNECT headers.
        headers: Vec<(String, String)>,
    },
    /// `authorize`.
    Authorize {
        /// The principal's user ("" = anonymous).
        user: String,
        /// The principal's attributes.
        attributes: Vec<(String, String)>,
        /// `true` = subscribe, `false` = send.
        subscribe: bool,
        /// The destination.
        destination: String,
    },
    /// `resolve-channel`.
    ResolveChannel {
        /// The code.
        code: String,
    },
}

fn load(path: &Path) -> Result<Compiled, PluginError> {
    let bytes = std::fs::read(path)
        .map_err(|e| PluginError::Compile(format!("cannot read {}: {e}", path.display())))?;
    PluginEngine::global().compile(&bytes)
}

/// Loads and checks a plugin; describes it.
pub fn check(path: &Path) -> Result<Value, PluginError> {
    let compiled = load(path)?;
    Ok(json!({
        "file": path.display().to_string(),
        "world": "stompbox:plugin/tenant-plugin@0.1.0",
        "matches": true,
        "sha256": compiled.sha256,
        "size": compiled.size,
        "exports": compiled.exports,
        "imports": compiled.imports,
    }))
}

/// Runs one call with `settings`, as a node would (same deadline and memory cap).
pub fn call(
    path: &Path,
    settings: BTreeMap<String, String>,
    limits: PluginLimits,
    request: ToolCall,
) -> Result<Value, PluginError> {
    let compiled = Arc::new(load(path)?);
    let tenant = match &request {
        ToolCall::Authenticate { tenant, .. } => tenant.clone(),
        _ => "default".to_string(),
    };
    let pool = Pool::new(compiled, Arc::from(tenant), Arc::new(settings), limits);
    let started = std::time::Instant::now();
    let answer = match request {
        ToolCall::Authenticate {
            tenant,
            transport,
            remote_addr,
            headers,
        } => {
            let info = connect_info_to_wit(&ConnectInfo {
                tenant,
                transport,
                remote_addr,
                headers,
            });
            match pool.call(|p, s| p.call_authenticate(s, &info))? {
                Ok(principal) => {
                    let p = principal_from_wit(principal);
                    json!({"ok": {"user": p.user, "attributes": p.attributes}})
                }
                Err(reason) => json!({ "err": reason }),
            }
        }
        ToolCall::Authorize {
            user,
            attributes,
            subscribe,
            destination,
        } => {
            let who = wit_types::Principal { user, attributes };
            let op = if subscribe {
                wit_types::Operation::Subscribe
            } else {
                wit_types::Operation::Send
            };
            match pool.call(|p, s| p.call_authorize(s, &who, op, &destination))? {
                Ok(()) => json!({ "ok": null }),
                Err(reason) => json!({ "err": reason }),
            }
        }
        ToolCall::ResolveChannel { code } => {
            let destination = pool.call(|p, s| p.call_resolve_channel(s, &code))?;
            json!({ "ok": destination })
        }
    };
    let mut answer = answer;
    answer["elapsed_us"] = json!(started.elapsed().as_micros() as u64);
    Ok(answer)
}
