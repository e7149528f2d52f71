//! The WebAssembly side of plugins: one process-wide wasmtime engine with epoch interruption,
//! the linker that offers a plugin the `host` imports and an empty WASI context, compiling and
//! checking a component against the `tenant-plugin` world, and a pool of warm instances per
//! loaded plugin with a deadline and a memory cap on every call.
//!
//! Instances are reused between calls (instantiating costs far more than a call) and thrown
//! away after a trap, a deadline or a memory overrun, so a failure never leaks state into the
//! next call. WASI is linked because `wasm32-wasip2` guests built with `std` import it; the
//! context is empty: no preopened directories, no environment, no sockets, stdio discarded.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "tenant-plugin",
    });
}

pub use bindings::exports::stompbox::plugin::policy as wit_policy;
use bindings::stompbox::plugin::host as wit_host;
pub use bindings::stompbox::plugin::types as wit_types;
use bindings::{TenantPlugin, TenantPluginPre};

/// How often the engine's epoch advances; deadlines are counted in these ticks.
const TICK: Duration = Duration::from_millis(2);
/// Warm instances kept per loaded plugin; more concurrent calls instantiate and drop extras.
const MAX_IDLE: usize = 8;
/// Calls after which an instance is replaced, so slow leaks inside a guest stay bounded.
const MAX_USES: u32 = 10_000;
/// Longest log line a plugin may write.
const MAX_LOG: usize = 4096;

/// Why a plugin could not be loaded or a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// Not a valid WebAssembly component.
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    /// A component, but not one of the `stompbox:plugin` world.
    #[error("the component does not match the stompbox:plugin/tenant-plugin world: {0}")]
    World(String),
    /// The call ran past its deadline.
    #[error("the plugin exceeded its {0} ms deadline")]
    Deadline(u64),
    /// The instance tried to grow its memory past the cap.
    #[error("the plugin exceeded its memory limit of {0} bytes")]
    Memory(usize),
    /// The guest trapped (panic, unreachable, bad memory access...).
    #[error("the plugin failed: {0}")]
    Trap(String),
}

/// Per-tenant limits on plugin calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimits {
    /// Wall time one call may take.
    pub deadline: Duration,
    /// Bytes of linear memory an instance may hold.
    pub memory_bytes: usize,
}

impl Default for PluginLimits {
    fn default() -> PluginLimits {
        PluginLimits {
            deadline: Duration::from_millis(50),
            memory_bytes: 32 << 20,
        }
    }
}

/// What the guest sees through its imports.
pub struct PluginState {
    tenant: Arc<str>,
    settings: Arc<BTreeMap<String, String>>,
    limits: StoreLimits,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit_types::Host for PluginState {}

impl wit_host::Host for PluginState {
    fn log(&mut self, level: wit_host::Level, message: String) {
        let mut message = message;
        if message.len() > MAX_LOG {
            let mut cut = MAX_LOG;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let tenant = &*self.tenant;
        match level {
            wit_host::Level::Trace => tracing::trace!(tenant, plugin = true, "{message}"),
            wit_host::Level::Debug => tracing::debug!(tenant, plugin = true, "{message}"),
            wit_host::Level::Info => tracing::info!(tenant, plugin = true, "{message}"),
            wit_host::Level::Warn => tracing::warn!(tenant, plugin = true, "{message}"),
            wit_host::Level::Error => tracing::error!(tenant, plugin = true, "{message}"),
        }
    }

    fn setting(&mut self, key: String) -> Option<String> {
        self.settings.get(&key).cloned()
    }

    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default()
    }
}

/// The process-wide engine and linker.
pub struct PluginEngine {
    engine: Engine,
    linker: Linker<PluginState>,
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PluginEngine")
    }
}

impl PluginEngine {
    /// The engine, created on first use with its epoch ticker thread.
    pub fn global() -> &'static PluginEngine {
        static ENGINE: OnceLock<PluginEngine> = OnceLock::new();
        ENGINE.get_or_init(|| {
            let engine = PluginEngine::new().expect("the plugin engine configuration is valid");
            let ticker = engine.engine.clone();
            std::thread::Builder::new()
                .name("plugin-epoch".into())
                .spawn(move || loop {
                    std::thread::sleep(TICK);
                    ticker.increment_epoch();
                })
                .expect("spawning the plugin epoch thread");
            engine
        })
    }

    fn new() -> wasmtime::Result<PluginEngine> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // A deep recursion in a guest ends in a trap long before it could hurt the host stack.
        config.max_wasm_stack(1 << 20);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        TenantPlugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;
        Ok(PluginEngine { engine, linker })
    }

    /// Compiles `bytes` and checks it against the world. CPU-heavy: call it off the async
    /// runtime's worker threads.
    pub fn compile(&self, bytes: &[u8]) -> Result<Compiled, PluginError> {
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| PluginError::Compile(format!("{e:#}")))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::World(format!("{e:#}")))?;
        let pre = TenantPluginPre::new(pre).map_err(|e| PluginError::World(format!("{e:#}")))?;
        let ty = component.component_type();
        let exports = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let imports = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        Ok(Compiled {
            pre,
            sha256: crate::util::hex(&Sha256::digest(bytes)),
            size: bytes.len(),
            exports,
            imports,
        })
    }
}

/// A component compiled and checked against the world.
pub struct Compiled {
    pre: TenantPluginPre<PluginState>,
    /// SHA-256 of the `.wasm` bytes.
    pub sha256: String,
    /// Size of the `.wasm` in bytes.
    pub size: usize,
    /// Names the component exports.
    pub exports: Vec<String>,
    /// Names the component imports.
    pub imports: Vec<String>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

struct Warm {
    store: Store<PluginState>,
    plugin: TenantPlugin,
    uses: u32,
}

/// Warm instances of one compiled plugin for one tenant.
pub struct Pool {
    compiled: Arc<Compiled>,
    tenant: Arc<str>,
    settings: Arc<BTreeMap<String, String>>,
    limits: PluginLimits,
    idle: Mutex<Vec<Warm>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("tenant", &self.tenant)
            .field("sha256", &self.compiled.sha256)
            .finish_non_exhaustive()
    }
}

/// The host's view of a principal crossing into the guest.
pub type WitPrincipal = wit_types::Principal;

impl Pool {
    /// A pool for `compiled` serving `tenant` with its settings and limits.
    pub fn new(
        compiled: Arc<Compiled>,
        tenant: Arc<str>,
        settings: Arc<BTreeMap<String, String>>,
        limits: PluginLimits,
    ) -> Pool {
        Pool {
            compiled,
            tenant,
            settings,
            limits,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The compiled plugin behind this pool.
    pub fn compiled(&self) -> &Arc<Compiled> {
        &self.compiled
    }

    fn ticks(&self) -> u64 {
        (self.limits.deadline.as_micros() as u64).div_ceil(TICK.as_micros() as u64) + 1
    }

    fn instantiate(&self) -> Result<Warm, PluginError> {
        let engine = PluginEngine::global();
        let state = PluginState {
            tenant: self.tenant.clone(),
            settings: self.settings.clone(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.memory_bytes)
                .instances(16)
                .tables(64)
                .memories(8)
                .trap_on_grow_failure(true)
                .build(),
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
        };
        let mut store = Store::new(&engine.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.ticks());
        let plugin = self
            .compiled
            .pre
            .instantiate(&mut store)
            .map_err(|e| self.classify(e))?;
        Ok(Warm {
            store,
            plugin,
            uses: 0,
        })
    }

    fn classify(&self, error: wasmtime::Error) -> PluginError {
        let text = format!("{error:#}");
        if text.contains("memory") && (text.contains("grow") || text.contains("limit")) {
            return PluginError::Memory(self.limits.memory_bytes);
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => PluginError::Deadline(self.limits.deadline.as_millis() as u64),
            // The trap itself says what happened; the wasm backtrace is for the plugin's
            // author and goes to the debug log only.
            Some(trap) => {
                tracing::debug!(tenant = %self.tenant, "plugin trap: {text}");
                PluginError::Trap(trap.to_string())
            }
            None => PluginError::Trap(text),
        }
    }

    /// Runs `f` on a warm instance (instantiating one when none is idle), with the deadline and
    /// memory cap. Blocking: call it from a blocking thread.
    pub fn call<R>(
        &self,
        f: impl FnOnce(&wit_policy::Guest, &mut Store<PluginState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let warm = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut warm = match warm {
            Some(w) => w,
            None => self.instantiate()?,
        };
        warm.store.set_epoch_deadline(self.ticks());
        let result = f(warm.plugin.stompbox_plugin_policy(), &mut warm.store);
        match result {
            Ok(value) => {
                warm.uses += 1;
                if warm.uses < MAX_USES {
                    let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                    if idle.len() < MAX_IDLE {
                        idle.push(warm);
                    }
                }
                Ok(value)
            }
            // The instance may be in any state after a trap: it is dropped, not reused.
            Err(e) => Err(self.classify(e)),
        }
    }

    /// Warm instances waiting for calls.
    pub fn idle_instances(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
