//! Per-tenant WebAssembly policy plugins. A tenant's [`PluginSlot`] is its [`Policy`]: the
//! built-in policy when the tenant has no plugin, the loaded plugin's exports when it has one,
//! and a refusal (never a silent fallback) when its plugin failed to load. Hot reload swaps the
//! slot's pool atomically; sessions already connected keep their principal and stay connected.
//!
//! Plugin calls leave the async workers (`block_in_place` on the multi-threaded runtime, the
//! blocking pool otherwise), bounded per tenant by a semaphore, so a slow or hostile plugin
//! costs its own tenant's calls a wait and never stalls other connections.

pub mod engine;
pub mod tool;
pub mod watch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tracing::{error, info, warn};

use engine::{wit_types, WitPrincipal};
pub use engine::{Compiled, PluginEngine, PluginError, PluginLimits, Pool};

use crate::policy::{
    ConnectInfo, DefaultPolicy, Operation, Policy, PolicyError, Principal, TransportKind,
};

/// Plugin calls one tenant may have running at once; more wait their turn.
const CONCURRENT_CALLS: usize = 8;

#[derive(Debug, Clone)]
enum Active {
    /// No plugin configured or uploaded: the built-in policy.
    Builtin,
    /// A loaded plugin.
    Wasm(Arc<Pool>),
    /// The configured plugin failed to load and nothing replaced it: refuse.
    Broken(String),
}

#[derive(Debug, Default)]
struct Status {
    loaded_at: Option<SystemTime>,
    last_error: Option<String>,
    last_error_at: Option<SystemTime>,
    reloads: u64,
    rejected: u64,
}

/// A tenant's policy: built-in or plugin, with its load status and counters.
#[derive(Debug)]
pub struct PluginSlot {
    tenant: Arc<str>,
    path: Option<PathBuf>,
    settings: Arc<BTreeMap<String, String>>,
    limits: PluginLimits,
    active: RwLock<Active>,
    status: Mutex<Status>,
    calls: AtomicU64,
    failures: AtomicU64,
    permits: Semaphore,
}

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    /// A new version now serves.
    Swapped {
        /// Its SHA-256.
        sha256: String,
    },
    /// The bytes are the version already serving.
    Unchanged,
}

impl PluginSlot {
    /// A slot for `tenant`. With a `path`, loads it now (a failure leaves the slot refusing
    /// until a good version arrives); without, the built-in policy serves.
    pub fn new(
        tenant: &str,
        path: Option<PathBuf>,
        settings: BTreeMap<String, String>,
        limits: PluginLimits,
    ) -> PluginSlot {
        let slot = PluginSlot {
            tenant: Arc::from(tenant),
            path: path.clone(),
            settings: Arc::new(settings),
            limits,
            active: RwLock::new(Active::Builtin),
            status: Mutex::new(Status::default()),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            permits: Semaphore::new(CONCURRENT_CALLS),
        };
        if let Some(path) = path {
            let loaded = std::fs::read(&path)
                .map_err(|e| PluginError::Compile(format!("cannot read {}: {e}", path.display())))
                .and_then(|bytes| PluginEngine::global().compile(&bytes));
            match loaded {
                Ok(compiled) => {
                    info!(tenant, sha256 = %compiled.sha256, path = %path.display(), "plugin loaded");
                    slot.activate(compiled);
                }
                Err(e) => {
                    error!(tenant, path = %path.display(), error = %e, "plugin failed to load; the tenant refuses connections until it is fixed");
                    slot.record_error(&e.to_string());
                    *slot.active_mut() = Active::Broken(e.to_string());
                }
            }
        }
        slot
    }

    fn active(&self) -> Active {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn active_mut(&self) -> std::sync::RwLockWriteGuard<'_, Active> {
        self.active.write().unwrap_or_else(|e| e.into_inner())
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record_error(&self, message: &str) {
        let mut status = self.status();
        status.last_error = Some(message.to_string());
        status.last_error_at = Some(SystemTime::now());
    }

    fn activate(&self, compiled: Compiled) {
        let pool = Pool::new(
            Arc::new(compiled),
            self.tenant.clone(),
            self.settings.clone(),
            self.limits,
        );
        *self.active_mut() = Active::Wasm(Arc::new(pool));
        self.status().loaded_at = Some(SystemTime::now());
    }

    /// The configured plugin file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The tenant this slot serves.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// SHA-256 of the version serving now.
    pub fn sha256(&self) -> Option<String> {
        match self.active() {
            Active::Wasm(pool) => Some(pool.compiled().sha256.clone()),
            _ => None,
        }
    }

    /// Compiles `bytes` off the async workers, checks it against the world, and swaps it in.
    /// A refused version leaves the serving one in place; the error is logged and kept for the
    /// admin API.
    pub async fn install(&self, bytes: Vec<u8>, origin: &str) -> Result<Installed, PluginError> {
        let sha = crate::util::hex(&Sha256::digest(&bytes));
        if self.sha256().as_deref() == Some(sha.as_str()) {
            return Ok(Installed::Unchanged);
        }
        let compiled = tokio::task::spawn_blocking(move || PluginEngine::global().compile(&bytes))
            .await
            .unwrap_or_else(|e| Err(PluginError::Compile(format!("compiler task failed: {e}"))));
        match compiled {
            Ok(compiled) => {
                let sha256 = compiled.sha256.clone();
                self.activate(compiled);
                self.status().reloads += 1;
                info!(tenant = %self.tenant, %sha256, origin, "plugin reloaded");
                Ok(Installed::Swapped { sha256 })
            }
            Err(e) => {
                warn!(tenant = %self.tenant, origin, error = %e, "plugin refused; the previous version keeps serving");
                self.record_error(&e.to_string());
                self.status().rejected += 1;
                Err(e)
            }
        }
    }

    /// The admin API's view of this slot.
    pub fn describe(&self) -> Value {
        let status = self.status();
        let (kind, sha256, size, exports) = match self.active() {
            Active::Builtin => ("builtin", None, None, None),
            Active::Wasm(pool) => (
                "wasm",
                Some(pool.compiled().sha256.clone()),
                Some(pool.compiled().size),
                Some(pool.compiled().exports.clone()),
            ),
            Active::Broken(_) => ("failed", None, None, None),
        };
        json!({
            "tenant": &*self.tenant,
            "policy": kind,
            "path": self.path.as_ref().map(|p| p.display().to_string()),
            "sha256": sha256,
            "size": size,
            "exports": exports,
            "loaded_at": status.loaded_at.map(crate::util::epoch_seconds),
            "calls": self.calls.load(Ordering::Relaxed),
            "failures": self.failures.load(Ordering::Relaxed),
            "reloads": status.reloads,
            "rejected": status.rejected,
            "last_error": status.last_error,
            "last_error_at": status.last_error_at.map(crate::util::epoch_seconds),
            "deadline_ms": self.limits.deadline.as_millis() as u64,
            "memory_bytes": self.limits.memory_bytes,
        })
    }

    /// Runs one plugin call on a blocking thread.
    async fn call<R: Send + 'static>(
        &self,
        pool: Arc<Pool>,
        f: impl FnOnce(
                &engine::wit_policy::Guest,
                &mut wasmtime::Store<engine::PluginState>,
            ) -> wasmtime::Result<R>
            + Send
            + 'static,
    ) -> Result<R, PolicyError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| PolicyError::Unavailable("plugin calls are shutting down".into()))?;
        self.calls.fetch_add(1, Ordering::Relaxed);
        let outcome = match tokio::runtime::Handle::current().runtime_flavor() {
            // The worker hands its other tasks to a fresh thread for the duration, which costs
            // far less than moving the call to the blocking pool and back (measured in
            // benches/plugin.rs).
            tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(move || pool.call(f))
            }
            _ => tokio::task::spawn_blocking(move || pool.call(f))
                .await
                .unwrap_or_else(|e| Err(PluginError::Trap(format!("plugin task failed: {e}")))),
        };
        outcome.map_err(|e| {
            self.failures.fetch_add(1, Ordering::Relaxed);
            let message = e.to_string();
            warn!(tenant = %self.tenant, error = %message, "plugin call failed");
            self.record_error(&message);
            PolicyError::Unavailable(message)
        })
    }

    fn refusal(&self, reason: &str) -> PolicyError {
        PolicyError::Unavailable(format!(
            "the plugin of tenant '{}' failed to load: {reason}",
            self.tenant
        ))
    }
}

/// Converts a WIT principal to the session's.
pub fn principal_from_wit(p: WitPrincipal) -> Principal {
    Principal {
        user: (!p.user.is_empty()).then_some(p.user),
        attributes: p.attributes,
    }
}

/// Converts the session's principal to WIT.
pub fn principal_to_wit(p: &Principal) -> WitPrincipal {
    WitPrincipal {
        user: p.user.clone().unwrap_or_default(),
        attributes: p.attributes.clone(),
    }
}

/// Converts connection facts to WIT.
pub fn connect_info_to_wit(info: &ConnectInfo) -> wit_types::ConnectInfo {
    wit_types::ConnectInfo {
        tenant: info.tenant.clone(),
        transport: match info.transport {
            TransportKind::WebSocket => wit_types::Transport::Websocket,
            TransportKind::SockJs => wit_types::Transport::Sockjs,
            TransportKind::Tcp => wit_types::Transport::Tcp,
        },
        remote_addr: info.remote_addr.clone(),
        headers: info.headers.clone(),
    }
}

#[async_trait]
impl Policy for PluginSlot {
    async fn authenticate(&self, info: &ConnectInfo) -> Result<Principal, PolicyError> {
        match self.active() {
            Active::Builtin => DefaultPolicy.authenticate(info).await,
            Active::Broken(reason) => Err(self.refusal(&reason)),
            Active::Wasm(pool) => {
                let info = connect_info_to_wit(info);
                self.call(pool, move |policy, store| {
                    policy.call_authenticate(store, &info)
                })
                .await?
                .map(principal_from_wit)
                .map_err(PolicyError::Denied)
            }
        }
    }

    async fn authorize(
        &self,
        who: &Principal,
        op: Operation,
        destination: &str,
    ) -> Result<(), PolicyError> {
        match self.active() {
            Active::Builtin => DefaultPolicy.authorize(who, op, destination).await,
            Active::Broken(reason) => Err(self.refusal(&reason)),
            Active::Wasm(pool) => {
                let who = principal_to_wit(who);
                let op = match op {
                    Operation::Subscribe => wit_types::Operation::Subscribe,
                    Operation::Send => wit_types::Operation::Send,
                };
                let destination = destination.to_string();
                self.call(pool, move |policy, store| {
                    policy.call_authorize(store, &who, op, &destination)
                })
                .await?
                .map_err(PolicyError::Denied)
            }
        }
    }

    async fn resolve_channel(&self, code: &str) -> Result<Option<String>, PolicyError> {
        match self.active() {
            Active::Builtin => DefaultPolicy.resolve_channel(code).await,
            Active::Broken(reason) => Err(self.refusal(&reason)),
            Active::Wasm(pool) => {
                let code = code.to_string();
                self.call(pool, move |policy, store| {
                    policy.call_resolve_channel(store, &code)
                })
                .await
            }
        }
    }
}
