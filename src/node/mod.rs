//! One stompbox node: its tenants, admission limits, ids, and the shutdown signal and task
//! tracker that every connection registers with; and the node as the cluster sees it
//! ([`inbound`]: messages from other nodes and ingress come in there).

pub mod inbound;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::redis::{RedisBackplane, RedisSettings};
use crate::cluster::standalone::Standalone;
use crate::cluster::{Backplane, LocalNode};
use crate::config::{Config, ServerConfig, SockJsConfig, DEFAULT_TENANT};
use crate::metrics::Metrics;
use crate::tenant::Tenant;

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
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    tenants: HashMap<String, Arc<Tenant>>,
    next_id: AtomicU64,
    connections: Arc<Semaphore>,
}

impl Node {
    /// A node serving `config` (already validated).
    pub fn new(config: &Config) -> Arc<Node> {
        let node_id = config
            .cluster
            .node_id
            .clone()
            .unwrap_or_else(|| format!("{:08x}", crate::util::random_u64() as u32));
        // The one place that names a concrete backplane.
        let cluster: Arc<dyn Backplane> = match &config.cluster.redis {
            Some(url) => RedisBackplane::new(RedisSettings {
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
            .expect("the Redis URL was validated with the config"),
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

impl Node {
    /// Starts the cluster backplane (joining the cluster, when there is one).
    pub fn start_cluster(self: &Arc<Self>) {
        let local: Arc<dyn LocalNode> = Arc::new(inbound::NodeInbound(Arc::downgrade(self)));
        self.cluster.clone().start(local);
    }
}
