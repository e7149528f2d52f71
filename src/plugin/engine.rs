//! The WebAssembly side of plugins: one process-wide wasmtime engine with epoch interruption,
//! the linker that offers a plugin the `host`, `backend` and `cache` imports and an empty WASI
//! context, compiling and checking a component against the `tenant-plugin` world, and a pool
//! of warm instances per loaded plugin with a deadline and a memory cap on every call.
//!
//! Calls are async: the guest runs on the calling task and yields to the runtime at every
//! epoch tick (2 ms), so a busy guest never holds a worker thread for longer than that, and a
//! `backend.fetch` or a clustered `cache` read awaits instead of blocking a thread. The
//! deadline counts the ticks a call runs in, not the ticks it waits: sixteen calls sharing two
//! cores each take eight times their running time, and a wall-clock deadline cut the slow
//! ones short (a JavaScript plugin under a burst of CONNECTs did, measured with
//! `scripts/plugin-bench.sh`). A timer of four deadlines bounds the whole call, waiting
//! included; when either ends it, the call and its instance are dropped. This replaced running
//! each call on a blocking thread, where a call waiting on its backend would have held a
//! thread for the whole wait.
//!
//! Instances are reused between calls (instantiating costs far more than a call) and thrown
//! away after a trap, a deadline or a memory overrun, so a failure never leaks state into the
//! next call. WASI is linked because guests built with `std` (Rust), a JavaScript engine or a
//! Python interpreter import it; the context is empty: no preopened directories, no
//! environment, no sockets, stdio discarded.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::backend::Backend;
use super::cache::PluginCache;

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "tenant-plugin",
        imports: {
            "stompbox:plugin/backend": async,
            "stompbox:plugin/cache": async,
        },
        exports: { default: async },
    });
}

pub use bindings::exports::stompbox::plugin::policy as wit_policy;
pub use bindings::stompbox::plugin::backend as wit_backend;
use bindings::stompbox::plugin::cache as wit_cache;
use bindings::stompbox::plugin::host as wit_host;
pub use bindings::stompbox::plugin::types as wit_types;
use bindings::{TenantPlugin, TenantPluginPre};

/// The world plugins are checked against, as `plugin check` names it.
pub const WORLD: &str = "stompbox:plugin/tenant-plugin@0.1.1";

/// How often the engine's epoch advances: a running guest yields to the runtime this often.
const TICK: Duration = Duration::from_millis(2);
/// Warm instances kept per loaded plugin; more concurrent calls instantiate and drop extras.
const MAX_IDLE: usize = 8;
/// A call ends at this many times its deadline of wall time, whatever it waits for (its turn
/// on a worker under load; a backend call ends before the deadline itself).
const WALL_FACTOR: u32 = 4;
/// Calls after which an instance is replaced, so slow leaks inside a guest stay bounded (and
/// one whose memory passed three quarters of its cap is replaced at once).
const MAX_USES: u32 = 10_000;
/// Longest log line a plugin may write.
const MAX_LOG: usize = 4096;
/// The least time a new instance is given to start (its own budget, besides the call's
/// deadline): an interpreter's start is larger than any call, and happens once per instance.
const MIN_INSTANTIATE: Duration = Duration::from_secs(1);

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
    /// Time one call may run (counted in epoch ticks it runs in); the whole call, waiting
    /// included, ends at [`WALL_FACTOR`] times this.
    pub deadline: Duration,
    /// Bytes of linear memory an instance may hold.
    pub memory_bytes: usize,
    /// Calls of the tenant in flight at once (each on an instance of its own); more wait.
    pub concurrency: usize,
}

impl Default for PluginLimits {
    fn default() -> PluginLimits {
        PluginLimits {
            deadline: Duration::from_millis(50),
            memory_bytes: 32 << 20,
            concurrency: 16,
        }
    }
}

/// Table elements an instance may hold (tables are memory too: 8 to 16 bytes an element); an
/// interpreter's function table holds tens of thousands.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// The memory cap of one instance, over all of its linear memories together (a component may
/// have several: an interpreter's and an adapter's), and what it holds now. A growth past the
/// cap is a trap.
struct Limiter {
    cap: usize,
    used: usize,
}

impl Limiter {
    fn new(cap: usize) -> Limiter {
        Limiter { cap, used: 0 }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let more = desired.saturating_sub(current);
        if maximum.is_some_and(|max| desired > max) || self.used + more > self.cap {
            wasmtime::bail!(
                "forcing a trap: growing memory by {more} bytes would pass the instance's memory limit of {} bytes",
                self.cap
            );
        }
        self.used += more;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        Err(error.context("memory growth failed: a trap"))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS || maximum.is_some_and(|max| desired > max) {
            wasmtime::bail!("forcing a trap: a table of {desired} elements is over the limit");
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        16
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        8
    }
}

/// What a plugin may reach besides its settings: its tenant's backend and cache, with
/// counters for the admin API.
#[derive(Debug)]
pub struct Capabilities {
    /// Carries `backend.fetch`.
    pub backend: Arc<dyn Backend>,
    /// Carries `cache.*`.
    pub cache: Arc<PluginCache>,
    /// `backend.fetch` calls made.
    pub backend_calls: AtomicU64,
    /// `backend.fetch` calls that got no answer (refused, timed out, failed).
    pub backend_failures: AtomicU64,
}

impl Capabilities {
    /// `backend` and `cache`, with zeroed counters.
    pub fn new(backend: Arc<dyn Backend>, cache: Arc<PluginCache>) -> Capabilities {
        Capabilities {
            backend,
            cache,
            backend_calls: AtomicU64::new(0),
            backend_failures: AtomicU64::new(0),
        }
    }
}

/// What the guest sees through its imports.
pub struct PluginState {
    tenant: Arc<str>,
    settings: Arc<BTreeMap<String, String>>,
    caps: Arc<Capabilities>,
    /// Headers of the request that opened the connection, during `authenticate` only.
    request_headers: Vec<(String, String)>,
    /// When a backend call of the call in progress must have its answer: the call's deadline
    /// less a tenth of it, which is left to the plugin to act on the answer (or its absence).
    backend_deadline: Instant,
    /// Epoch ticks the call in progress has been running in.
    ticks_run: u64,
    /// Ticks it may run in: its deadline.
    tick_budget: u64,
    limiter: Limiter,
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

    fn request_header(&mut self, name: String) -> Option<String> {
        self.request_headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&name))
            .map(|(_, v)| v.clone())
    }
}

impl wit_backend::Host for PluginState {
    async fn fetch(
        &mut self,
        request: wit_backend::Request,
    ) -> Result<wit_backend::Response, wit_backend::FetchError> {
        let budget = self
            .backend_deadline
            .saturating_duration_since(Instant::now());
        self.caps.backend_calls.fetch_add(1, Ordering::Relaxed);
        let answer = self.caps.backend.fetch(request, budget).await;
        if let Err(e) = &answer {
            self.caps.backend_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(tenant = %self.tenant, error = ?e, "plugin backend call failed");
        }
        answer
    }
}

impl wit_cache::Host for PluginState {
    async fn get(&mut self, key: String) -> Option<String> {
        self.caps.cache.get(&self.tenant, &key).await
    }

    async fn set(&mut self, key: String, value: String, ttl_ms: u64) -> bool {
        self.caps
            .cache
            .set(&self.tenant, &key, &value, ttl_ms)
            .await
    }

    async fn delete(&mut self, key: String) {
        self.caps.cache.delete(&self.tenant, &key).await
    }
}

/// Where the engine keeps compiled plugins between runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompileCache {
    /// Nowhere: every load compiles.
    Off,
    /// `$XDG_CACHE_HOME/stompbox/plugins`, else `~/.cache/stompbox/plugins`.
    Default,
    /// This directory.
    Dir(PathBuf),
}

static COMPILE_CACHE: OnceLock<CompileCache> = OnceLock::new();

/// Chooses where compiled plugins are kept. The engine is one per process, so the first
/// choice made before it starts holds; later ones are ignored (and said so in the log).
pub fn configure_compile_cache(choice: CompileCache) {
    if COMPILE_CACHE.set(choice.clone()).is_err() && COMPILE_CACHE.get() != Some(&choice) {
        tracing::debug!(?choice, "the plugin compile cache was chosen already");
    }
}

fn compile_cache() -> Option<wasmtime::Cache> {
    let dir = match COMPILE_CACHE.get().unwrap_or(&CompileCache::Off) {
        CompileCache::Off => return None,
        CompileCache::Dir(dir) => dir.clone(),
        CompileCache::Default => {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            base.join("stompbox").join("plugins")
        }
    };
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let mut config = wasmtime::CacheConfig::new();
    config.with_directory(&dir);
    match wasmtime::Cache::new(config) {
        Ok(cache) => Some(cache),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %format!("{e:#}"), "plugin compile cache unusable; plugins compile at every load");
            None
        }
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
        config.cache(compile_cache());
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
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
    caps: Arc<Capabilities>,
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

/// What a call gives back: the guest's answer, or why there is none.
type Called<R> = Result<R, PluginError>;

impl Pool {
    /// A pool for `compiled` serving `tenant` with its settings, capabilities and limits.
    pub fn new(
        compiled: Arc<Compiled>,
        tenant: Arc<str>,
        settings: Arc<BTreeMap<String, String>>,
        caps: Arc<Capabilities>,
        limits: PluginLimits,
    ) -> Pool {
        Pool {
            compiled,
            tenant,
            settings,
            caps,
            limits,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The compiled plugin behind this pool.
    pub fn compiled(&self) -> &Arc<Compiled> {
        &self.compiled
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Warm>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn instantiate(&self) -> Called<Warm> {
        let engine = PluginEngine::global();
        let state = PluginState {
            tenant: self.tenant.clone(),
            settings: self.settings.clone(),
            caps: self.caps.clone(),
            request_headers: Vec::new(),
            backend_deadline: Instant::now(),
            ticks_run: 0,
            // Starting an instance has its own budget (the timer below), not a call's.
            tick_budget: u64::MAX,
            limiter: Limiter::new(self.limits.memory_bytes),
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
        };
        let mut store = Store::new(&engine.engine, state);
        store.limiter(|s| &mut s.limiter);
        // At every tick the guest is running, it is charged the tick and yields; past its
        // budget it is stopped. A tick passes while it waits (for its backend, or for a
        // worker) costs it one charge at most, so calls that share the machine's cores are not
        // cut short by each other.
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            state.ticks_run += 1;
            if state.ticks_run > state.tick_budget {
                Ok(wasmtime::UpdateDeadline::Interrupt)
            } else {
                Ok(wasmtime::UpdateDeadline::Yield(1))
            }
        });
        store.set_epoch_deadline(1);
        let budget = self.limits.deadline.max(MIN_INSTANTIATE);
        let plugin = tokio::time::timeout(budget, self.compiled.pre.instantiate_async(&mut store))
            .await
            .map_err(|_| PluginError::Deadline(budget.as_millis() as u64))?
            .map_err(|e| self.classify(e))?;
        Ok(Warm {
            store,
            plugin,
            uses: 0,
        })
    }

    /// An idle instance, or a new one, ready for a call that must end by the deadline.
    async fn checkout(&self, request_headers: Vec<(String, String)>) -> Called<Warm> {
        let idle = self.idle().pop();
        let mut warm = match idle {
            Some(w) => w,
            None => self.instantiate().await?,
        };
        let state = warm.store.data_mut();
        state.backend_deadline = Instant::now() + self.limits.deadline * 9 / 10;
        state.ticks_run = 0;
        state.tick_budget = self.ticks();
        state.request_headers = request_headers;
        Ok(warm)
    }

    /// Ends a call: a healthy instance goes back to the pool, any other is dropped (it may be
    /// in any state after a trap or a deadline).
    fn checkin<R>(
        &self,
        mut warm: Warm,
        outcome: Result<wasmtime::Result<R>, tokio::time::error::Elapsed>,
    ) -> Called<R> {
        match outcome {
            Ok(Ok(value)) => {
                warm.uses += 1;
                warm.store.data_mut().request_headers = Vec::new();
                // An instance is retired once its memory passes three quarters of the cap:
                // a garbage-collected guest (JavaScript) grows its heap call after call until
                // its collector runs, and one more call would otherwise fail at the cap.
                let roomy = warm.store.data().limiter.used <= self.limits.memory_bytes / 4 * 3;
                if warm.uses < MAX_USES && roomy {
                    let mut idle = self.idle();
                    if idle.len() < MAX_IDLE {
                        idle.push(warm);
                    }
                }
                Ok(value)
            }
            Ok(Err(e)) => Err(self.classify(e)),
            Err(_) => Err(PluginError::Deadline(
                self.limits.deadline.as_millis() as u64
            )),
        }
    }

    /// Ticks of running a call may use: its deadline.
    fn ticks(&self) -> u64 {
        (self.limits.deadline.as_micros() as u64).div_ceil(TICK.as_micros() as u64)
    }

    /// The longest a call may take, waiting included: the deadline of its own running, times
    /// [`WALL_FACTOR`].
    fn wall_limit(&self) -> Duration {
        self.limits.deadline * WALL_FACTOR
    }

    /// Makes one instance ready now, so that a plugin that cannot even start is refused when it
    /// is installed, and the first connection does not wait for it.
    pub async fn warm_up(&self) -> Called<()> {
        if self.idle().is_empty() {
            let warm = self.instantiate().await?;
            self.idle().push(warm);
        }
        Ok(())
    }

    /// `authenticate`, with the headers of the request that opened the connection.
    pub async fn authenticate(
        &self,
        info: &wit_types::ConnectInfo,
        request_headers: Vec<(String, String)>,
    ) -> Called<Result<WitPrincipal, String>> {
        let mut warm = self.checkout(request_headers).await?;
        let Warm { store, plugin, .. } = &mut warm;
        let call = plugin
            .stompbox_plugin_policy()
            .call_authenticate(&mut *store, info);
        let outcome = tokio::time::timeout(self.wall_limit(), call).await;
        self.checkin(warm, outcome)
    }

    /// `authorize`.
    pub async fn authorize(
        &self,
        who: &WitPrincipal,
        op: wit_types::Operation,
        destination: &str,
    ) -> Called<Result<(), String>> {
        let mut warm = self.checkout(Vec::new()).await?;
        let Warm { store, plugin, .. } = &mut warm;
        let call =
            plugin
                .stompbox_plugin_policy()
                .call_authorize(&mut *store, who, op, destination);
        let outcome = tokio::time::timeout(self.wall_limit(), call).await;
        self.checkin(warm, outcome)
    }

    /// `resolve-channel`.
    pub async fn resolve_channel(&self, code: &str) -> Called<Option<String>> {
        let mut warm = self.checkout(Vec::new()).await?;
        let Warm { store, plugin, .. } = &mut warm;
        let call = plugin
            .stompbox_plugin_policy()
            .call_resolve_channel(&mut *store, code);
        let outcome = tokio::time::timeout(self.wall_limit(), call).await;
        self.checkin(warm, outcome)
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

    /// Warm instances waiting for calls.
    pub fn idle_instances(&self) -> usize {
        self.idle().len()
    }

    /// The linear memory of the largest warm instance, in bytes: what one instance of this
    /// plugin holds (at most `plugin_memory_bytes`).
    pub fn instance_memory_bytes(&self) -> usize {
        self.idle()
            .iter()
            .map(|w| w.store.data().limiter.used)
            .max()
            .unwrap_or(0)
    }
}
