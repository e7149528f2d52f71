//! Plugin author tooling behind `stompbox plugin check` and `stompbox plugin call`: load a
//! `.wasm` exactly as a node would and report what it exports, or run one call and show the
//! result, so a plugin can be tried without a node or a browser. `stompbox plugin test` is in
//! [`super::cases`].

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};

use super::backend::Backend;
use super::cache::{CacheLimits, PluginCache};
use super::engine::{wit_types, Capabilities, Compiled, PluginEngine, PluginError, Pool, WORLD};
use super::{connect_info_to_wit, principal_from_wit, PluginLimits};
use crate::policy::{ConnectInfo, Operation};

/// One call to make.
#[derive(Debug, Clone)]
pub enum ToolCall {
    /// `authenticate` with these connection facts.
    Authenticate(ConnectInfo),
    /// `authorize`.
    Authorize {
        /// The principal's user ("" = anonymous).
        user: String,
        /// The principal's attributes.
        attributes: Vec<(String, String)>,
        /// The operation.
        op: Operation,
        /// The destination.
        destination: String,
    },
    /// `resolve-channel`.
    ResolveChannel {
        /// The code.
        code: String,
    },
}

/// Reads and compiles a plugin file, as a node loads one.
pub fn load(path: &Path) -> Result<Compiled, PluginError> {
    let bytes = std::fs::read(path)
        .map_err(|e| PluginError::Compile(format!("cannot read {}: {e}", path.display())))?;
    PluginEngine::global().compile(&bytes)
}

/// Loads and checks a plugin; describes it.
pub fn check(path: &Path) -> Result<Value, PluginError> {
    let compiled = load(path)?;
    let mut described = describe(&compiled);
    described["file"] = json!(path.display().to_string());
    Ok(described)
}

/// Compiles and checks a plugin's bytes against the world, as an upload would be, without
/// installing it; describes it.
pub fn check_bytes(bytes: &[u8]) -> Result<Value, PluginError> {
    Ok(describe(&PluginEngine::global().compile(bytes)?))
}

fn describe(compiled: &Compiled) -> Value {
    json!({
        "world": WORLD,
        "matches": true,
        "sha256": compiled.sha256,
        "size": compiled.size,
        "exports": compiled.exports,
        "imports": compiled.imports,
    })
}

/// A pool for a plugin outside a node: `tenant`'s `settings`, calls to `backend`, a fresh
/// in-memory cache.
pub fn pool(
    compiled: Compiled,
    tenant: &str,
    settings: BTreeMap<String, String>,
    backend: Arc<dyn Backend>,
    limits: PluginLimits,
) -> Pool {
    let cache = Arc::new(PluginCache::in_memory(CacheLimits::default()));
    Pool::new(
        Arc::new(compiled),
        Arc::from(tenant),
        Arc::new(settings),
        Arc::new(Capabilities::new(backend, cache)),
        limits,
    )
}

/// What one call answered, as JSON: `{"ok": ...}` or `{"err": "..."}` (the policy's own
/// verdict), or the failure of the call itself.
pub async fn run(pool: &Pool, request: ToolCall) -> Result<Value, PluginError> {
    Ok(match request {
        ToolCall::Authenticate(info) => {
            let request_headers = info.request_headers.clone();
            match pool
                .authenticate(&connect_info_to_wit(&info), request_headers)
                .await?
            {
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
            op,
            destination,
        } => {
            let who = wit_types::Principal { user, attributes };
            match pool
                .authorize(&who, super::operation_to_wit(op), &destination)
                .await?
            {
                Ok(()) => json!({ "ok": null }),
                Err(reason) => json!({ "err": reason }),
            }
        }
        ToolCall::ResolveChannel { code } => {
            json!({ "ok": pool.resolve_channel(&code).await? })
        }
    })
}

/// Runs one call with `settings`, as a node would (same deadline and memory cap), and says how
/// long it took.
pub async fn call(
    path: &Path,
    settings: BTreeMap<String, String>,
    backend: Arc<dyn Backend>,
    limits: PluginLimits,
    request: ToolCall,
) -> Result<Value, PluginError> {
    let tenant = match &request {
        ToolCall::Authenticate(info) => info.tenant.clone(),
        _ => "default".to_string(),
    };
    let pool = pool(load(path)?, &tenant, settings, backend, limits);
    let started = std::time::Instant::now();
    let mut answer = run(&pool, request).await?;
    answer["elapsed_us"] = json!(started.elapsed().as_micros() as u64);
    Ok(answer)
}
