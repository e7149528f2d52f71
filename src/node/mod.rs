//! One stompbox node: its tenants, admission limits, ids, and the shutdown signal and task
//! tracker that every connection registers with; and the node as the cluster sees it
//! ([`inbound`]: messages from other nodes and ingress come in there).

pub mod inbound;

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::redis::{RedisBackplane, RedisSettings};
use crate::cluster::standalone::Standalone;
use crate::cluster::{Backplane, LocalNode};
use crate::config::{Config, ServerConfig, SockJsConfig};
use crate::metrics::Metrics;
use crate::session;
use crate::tenant::{Tenant, Tenants};
use crate::util::Ids;

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
    /// What every session of this node is given.
    pub sessions: Arc<session::Context>,
    tenants: Arc<Tenants>,
    ids: Arc<Ids>,
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
        // Kept in this process's memory, so only for a node alone: across nodes the store
        // must be shared.
        let history = config.cluster.redis.is_none().then_some(&config.history);
        let tenants = Arc::new(Tenants::new(
            &config.tenants,
            &config.server,
            history,
            &cluster,
            &metrics,
        ));
        let ids = Arc::new(Ids::new(node_id.clone()));
        let tasks = TaskTracker::new();
        let sessions = Arc::new(session::Context {
            limits: session_limits(&config.server),
            tenants: tenants.clone(),
            ids: ids.clone(),
            tasks: tasks.clone(),
            metrics: metrics.clone(),
        });
        Arc::new(Node {
            server: config.server.clone(),
            sockjs: config.sockjs.clone(),
            cluster,
            metrics,
            node_id,
            shutdown: CancellationToken::new(),
            tasks,
            sessions,
            tenants,
            ids,
            connections: Arc::new(Semaphore::new(config.server.max_connections)),
        })
    }

    /// The tenant with id `id`.
    pub fn tenant(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.tenants.get(id)
    }

    /// Every tenant.
    pub fn tenants(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.tenants.iter()
    }

    /// The tenant for a connection that named none.
    pub fn default_tenant(&self) -> Option<&Arc<Tenant>> {
        self.tenants.default_tenant()
    }

    /// A new id, unique on this node and across nodes (it carries the node id).
    pub fn next_id(&self) -> String {
        self.ids.next()
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

/// What the `[server]` settings allow each session.
pub fn session_limits(s: &ServerConfig) -> session::Limits {
    session::Limits {
        outbound_queue_bytes: s.outbound_queue_bytes,
        connection_memory_bytes: s.connection_memory_bytes,
        max_subscriptions: s.max_subscriptions,
        max_transactions: s.max_transactions,
        max_transaction_frames: s.max_transaction_frames,
        heartbeat_ms: s.heartbeat_ms,
        heartbeat_tolerance: s.heartbeat_tolerance,
    }
}
