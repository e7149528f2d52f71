//! Per-tenant WebAssembly policy plugins. A tenant's [`PluginSlot`] is its [`Policy`]: the
//! built-in policy when the tenant has no plugin, the loaded plugin's exports when it has one,
//! and a refusal (never a silent fallback) when its plugin failed to load. Hot reload swaps the
//! slot's pool atomically; sessions already connected keep their principal and stay connected.
//!
//! Plugin calls are futures (see [`engine`]): a guest yields to the runtime every 2 ms and a
//! call to the tenant's backend awaits, so a slow or hostile plugin costs its own tenant's
//! calls a wait and never stalls other connections. A semaphore per tenant bounds the calls
//! in flight, and with them the instances (and their memory) a tenant can hold.

pub mod backend;
pub mod cache;
pub mod cases;
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

pub use backend::{Backend, BackendAccess, HttpBackend, NoBackend};
pub use cache::{CacheLimits, CacheStore, MemoryCache, PluginCache};
use engine::{wit_types, WitPrincipal};
pub use engine::{Capabilities, Compiled, PluginEngine, PluginError, PluginLimits, Pool};

use crate::policy::{
    ConnectInfo, DefaultPolicy, Operation, Policy, PolicyError, Principal, TransportKind,
};

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
    caps: Arc<Capabilities>,
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
    /// A slot for `tenant`, whose plugin reaches what `caps` offers. With a `path`, loads it
    /// now (a failure leaves the slot refusing until a good version arrives); without, the
    /// built-in policy serves.
    pub fn new(
        tenant: &str,
        path: Option<PathBuf>,
        settings: BTreeMap<String, String>,
        caps: Capabilities,
        limits: PluginLimits,
    ) -> PluginSlot {
        let slot = PluginSlot {
            tenant: Arc::from(tenant),
            path: path.clone(),
            settings: Arc::new(settings),
            caps: Arc::new(caps),
            limits,
            active: RwLock::new(Active::Builtin),
            status: Mutex::new(Status::default()),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            permits: Semaphore::new(limits.concurrency),
        };
        if let Some(path) = path {
            let loaded = std::fs::read(&path)
                .map_err(|e| PluginError::Compile(format!("cannot read {}: {e}", path.display())))
                .and_then(|bytes| PluginEngine::global().compile(&bytes));
            match loaded {
                Ok(compiled) => {
                    info!(tenant, sha256 = %compiled.sha256, path = %path.display(), "plugin loaded");
                    slot.activate(slot.pool(compiled));
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

    fn pool(&self, compiled: Compiled) -> Pool {
        Pool::new(
            Arc::new(compiled),
            self.tenant.clone(),
            self.settings.clone(),
            self.caps.clone(),
            self.limits,
        )
    }

    fn activate(&self, pool: Pool) {
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

    /// Compiles `bytes` off the async workers, checks it against the world, starts one
    /// instance of it, and swaps it in. A refused version leaves the serving one in place; the
    /// error is logged and kept for the admin API.
    pub async fn install(&self, bytes: Vec<u8>, origin: &str) -> Result<Installed, PluginError> {
        let sha = crate::util::hex(&Sha256::digest(&bytes));
        if self.sha256().as_deref() == Some(sha.as_str()) {
            return Ok(Installed::Unchanged);
        }
        let compiled = tokio::task::spawn_blocking(move || PluginEngine::global().compile(&bytes))
            .await
            .unwrap_or_else(|e| Err(PluginError::Compile(format!("compiler task failed: {e}"))));
        let started = match compiled {
            Ok(compiled) => {
                let pool = self.pool(compiled);
                pool.warm_up().await.map(|()| pool)
            }
            Err(e) => Err(e),
        };
        match started {
            Ok(pool) => {
                let sha256 = pool.compiled().sha256.clone();
                self.activate(pool);
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
        let (kind, sha256, size, exports, instances) = match self.active() {
            Active::Builtin => ("builtin", None, None, None, None),
            Active::Wasm(pool) => (
                "wasm",
                Some(pool.compiled().sha256.clone()),
                Some(pool.compiled().size),
                Some(pool.compiled().exports.clone()),
                Some((pool.idle_instances(), pool.instance_memory_bytes())),
            ),
            Active::Broken(_) => ("failed", None, None, None, None),
        };
        json!({
            "tenant": &*self.tenant,
            "policy": kind,
            "path": self.path.as_ref().map(|p| p.display().to_string()),
            "sha256": sha256,
            "size": size,
            "exports": exports,
            "warm_instances": instances.map(|(n, _)| n),
            "instance_memory_bytes": instances.map(|(_, bytes)| bytes),
            "loaded_at": status.loaded_at.map(crate::util::epoch_seconds),
            "calls": self.calls.load(Ordering::Relaxed),
            "failures": self.failures.load(Ordering::Relaxed),
            "reloads": status.reloads,
            "rejected": status.rejected,
            "last_error": status.last_error,
            "last_error_at": status.last_error_at.map(crate::util::epoch_seconds),
            "deadline_ms": self.limits.deadline.as_millis() as u64,
            "memory_bytes": self.limits.memory_bytes,
            "concurrency": self.limits.concurrency,
            "backend_calls": self.caps.backend_calls.load(Ordering::Relaxed),
            "backend_failures": self.caps.backend_failures.load(Ordering::Relaxed),
        })
    }

    /// A turn to call the plugin: at most `concurrency` calls of this tenant run at once.
    async fn turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, PolicyError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| PolicyError::Unavailable("plugin calls are shutting down".into()))?;
        self.calls.fetch_add(1, Ordering::Relaxed);
        Ok(permit)
    }

    /// A call's outcome as the session sees it: a failure is counted, logged and kept for the
    /// admin API.
    fn outcome<R>(&self, called: Result<R, PluginError>) -> Result<R, PolicyError> {
        called.map_err(|e| {
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

/// Converts an operation to WIT.
pub fn operation_to_wit(op: Operation) -> wit_types::Operation {
    match op {
        Operation::Subscribe => wit_types::Operation::Subscribe,
        Operation::Send => wit_types::Operation::Send,
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
                let _turn = self.turn().await?;
                let called = pool
                    .authenticate(&connect_info_to_wit(info), info.request_headers.clone())
                    .await;
                self.outcome(called)?
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
                let _turn = self.turn().await?;
                let called = pool
                    .authorize(&principal_to_wit(who), operation_to_wit(op), destination)
                    .await;
                self.outcome(called)?.map_err(PolicyError::Denied)
            }
        }
    }

    async fn resolve_channel(&self, code: &str) -> Result<Option<String>, PolicyError> {
        match self.active() {
            Active::Builtin => DefaultPolicy.resolve_channel(code).await,
            Active::Broken(reason) => Err(self.refusal(&reason)),
            Active::Wasm(pool) => {
                let _turn = self.turn().await?;
                let called = pool.resolve_channel(code).await;
                self.outcome(called)
            }
        }
    }
}
