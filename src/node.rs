//! One stompbox node: its tenants, admission limits, ids, and the shutdown signal and task
//! tracker that every connection registers with.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Broker, Interest, Subscription};
use crate::cluster::memory::Standalone;
use crate::cluster::redis::{RedisBackplane, RedisSettings};
use crate::cluster::Backplane;
use crate::config::{Config, ServerConfig, SockJsConfig, TenantConfig, DEFAULT_TENANT};
use crate::http::origin::AllowedOrigins;
use crate::metrics::Metrics;
use crate::plugin::{PluginLimits, PluginSlot};
use crate::policy::Policy;

/// A tenant: a separate namespace of destinations and users with its own keys and policy.
#[derive(Debug)]
pub struct Tenant {
    /// The tenant id.
    pub id: String,
    /// Its routing core on this node.
    pub broker: Broker,
    api_keys: Vec<String>,
    /// Web pages that may open browser connections.
    pub allowed_origins: AllowedOrigins,
    plugin: Arc<PluginSlot>,
    pub(crate) cluster: Arc<dyn Backplane>,
    pub(crate) metrics: Arc<Metrics>,
}

impl Tenant {
    fn new(
        config: &TenantConfig,
        server: &ServerConfig,
        cluster: Arc<dyn Backplane>,
        metrics: Arc<Metrics>,
    ) -> Tenant {
        Tenant {
            cluster,
            metrics,
            id: config.id.clone(),
            broker: Broker::new(server.max_queue_backlog),
            api_keys: config.api_keys.clone(),
            allowed_origins: AllowedOrigins::new(&config.allowed_origins),
            plugin: Arc::new(PluginSlot::new(
                &config.id,
                config.plugin.clone(),
                config.settings.clone(),
                PluginLimits {
                    deadline: std::time::Duration::from_millis(config.plugin_deadline_ms),
                    memory_bytes: config.plugin_memory_bytes,
                },
            )),
        }
    }

    /// The policy that decides identity and permissions for this tenant.
    pub fn policy(&self) -> Arc<dyn Policy> {
        self.plugin.clone()
    }

    fn mirror(&self, change: Option<Interest>) {
        if let Some(change) = change {
            self.cluster.interest(&self.id, &change);
        }
    }

    /// Adds a subscription here and, for a first one, tells the cluster.
    pub fn subscribe(&self, sub: Arc<Subscription>) {
        self.mirror(self.broker.subscribe(sub));
    }

    /// Removes a subscription here and, for a last one, tells the cluster.
    pub fn unsubscribe(&self, sub: &Arc<Subscription>) {
        self.mirror(self.broker.unsubscribe(sub));
    }

    /// Records a session of `user` (cluster presence for the first).
    pub fn user_connected(&self, user: &str) {
        self.mirror(self.broker.user_connected(user));
    }

    /// Forgets a session of `user` (cluster presence for the last).
    pub fn user_disconnected(&self, user: &str) {
        self.mirror(self.broker.user_disconnected(user));
    }

    /// The tenant's plugin slot (status, reload).
    pub fn plugin(&self) -> &Arc<PluginSlot> {
        &self.plugin
    }

    /// True when `key` is one of the tenant's API keys. Compares every key in full, so timing
    /// does not reveal how much of a key matched.
    pub fn accepts_api_key(&self, key: &str) -> bool {
        let mut found = false;
        for candidate in &self.api_keys {
            found |= constant_time_eq(candidate.as_bytes(), key.as_bytes());
        }
        found
    }

    /// True when the tenant has at least one API key.
    pub fn has_api_keys(&self) -> bool {
        !self.api_keys.is_empty()
    }
}

/// Compares secrets without revealing through timing how much of them matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The node.
#[derive(Debug)]
pub struct Node {
    /// `[server]` settings.
    pub server: ServerConfig,
    /// `[sockjs]` settings.
    pub sockjs: SockJsConfig,
    /// This node's id, the prefix of its session and message ids.
    pub node_id: String,
    /// Cancelled once to shut everything down.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// The cluster this node is part of (a single node when standalone).
    pub cluster: Arc<dyn Backplane>,
    /// The Redis backplane when clustered (its supervisor is started by the server).
    pub redis: Option<Arc<RedisBackplane>>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    tenants: HashMap<String, Arc<Tenant>>,
    next_id: AtomicU64,
    connections: Arc<Semaphore>,
}

/// A random-enough 64-bit value from the standard library's per-process hasher keys.
pub fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

impl Node {
    /// A node serving `config` (already validated).
    pub fn new(config: &Config) -> Arc<Node> {
        let node_id = config
            .cluster
            .node_id
            .clone()
            .unwrap_or_else(|| format!("{:08x}", random_u64() as u32));
        let redis = config.cluster.redis.as_ref().map(|url| {
            RedisBackplane::new(RedisSettings {
                url: url.clone(),
                node_id: node_id.clone(),
                node_ttl: std::time::Duration::from_millis(config.cluster.node_ttl_ms),
                presence_cache: std::time::Duration::from_millis(config.cluster.presence_cache_ms),
                ingress: config
                    .tenants
                    .iter()
                    .filter_map(|t| t.redis_ingress_channel.clone().map(|c| (t.id.clone(), c)))
                    .collect(),
            })
            .expect("the Redis URL was validated with the config")
        });
        let cluster: Arc<dyn Backplane> = match &redis {
            Some(r) => r.clone(),
            None => Arc::new(Standalone),
        };
        let metrics = Arc::new(Metrics::default());
        let tenants = config
            .tenants
            .iter()
            .map(|t| {
                let tenant = Tenant::new(t, &config.server, cluster.clone(), metrics.clone());
                (t.id.clone(), Arc::new(tenant))
            })
            .collect();
        Arc::new(Node {
            server: config.server.clone(),
            sockjs: config.sockjs.clone(),
            cluster,
            redis,
            metrics,
            node_id,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            tenants,
            next_id: AtomicU64::new(1),
            connections: Arc::new(Semaphore::new(config.server.max_connections)),
        })
    }

    /// The tenant with id `id`.
    pub fn tenant(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.tenants.get(id)
    }

    /// Every tenant.
    pub fn tenants(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.tenants.values()
    }

    /// The tenant for a connection that named none.
    pub fn default_tenant(&self) -> Option<&Arc<Tenant>> {
        self.tenant(DEFAULT_TENANT)
    }

    /// A new id, unique on this node and across nodes (it carries the node id).
    pub fn next_id(&self) -> String {
        format!(
            "{}-{}",
            self.node_id,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A connection slot, or `None` when the node is at `max_connections`.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.connections.clone().try_acquire_owned().ok()
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.server.max_connections - self.connections.available_permits()
    }
}
