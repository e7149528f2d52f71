//! One stompbox node: its tenants, admission limits, ids, and the shutdown signal and task
//! tracker that every connection registers with; and the node as the cluster sees it
//! ([`inbound`]: messages from other nodes and ingress come in there).

pub mod drain;
pub mod inbound;

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Budget;
use crate::cluster::redis::queues::RedisQueues;
use crate::cluster::redis::store::RedisHistory;
use crate::cluster::redis::{RedisBackplane, RedisSettings, RedisTarget};
use crate::cluster::standalone::Standalone;
use crate::cluster::{Backplane, LocalNode, Query, Reply};
use crate::config::{Config, HistoryConfig, ServerConfig, SockJsConfig, TenantConfig};
use crate::history::memory::MemoryHistory;
use crate::history::queue::QueueStore;
use crate::history::History;
use crate::metrics::Metrics;
use crate::session;
use crate::tenant::{Tenant, TenantStores, Tenants};
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
    /// The drain for a rolling upgrade (which shutdown also starts).
    pub drain: drain::Drain,
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
        let target = match (&config.cluster.redis, &config.cluster.redis_cluster) {
            (Some(url), _) => Some(RedisTarget::Single(url.clone())),
            (None, seeds) if !seeds.is_empty() => Some(RedisTarget::Cluster(seeds.clone())),
            _ => None,
        };
        let redis = target.map(|target| {
            RedisBackplane::new(RedisSettings {
                target,
                node_id: node_id.clone(),
                node_ttl: std::time::Duration::from_millis(config.cluster.node_ttl_ms),
                presence_cache: std::time::Duration::from_millis(config.cluster.presence_cache_ms),
                replica_acks: config.cluster.replica_acks,
                replica_ack_timeout: std::time::Duration::from_millis(
                    config.cluster.replica_ack_timeout_ms,
                ),
                tenants: config.tenants.iter().map(|t| t.id.clone()).collect(),
                ingress: config
                    .tenants
                    .iter()
                    .filter_map(|t| t.redis_ingress_channel.clone().map(|c| (t.id.clone(), c)))
                    .collect(),
            })
            .expect("the Redis URL was validated with the config")
        });
        let cluster: Arc<dyn Backplane> = match &redis {
            Some(redis) => redis.clone(),
            None => Arc::new(Standalone),
        };
        let metrics = Arc::new(Metrics::default());
        let stores = Stores::new(&config.history, redis);
        let shutdown = CancellationToken::new();
        let tenants = Arc::new(Tenants::new(
            &config.tenants,
            &config.server,
            &|t| stores.stores_for(t, &config.server),
            &cluster,
            &metrics,
            &node_id,
            &shutdown,
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
            drain: drain::Drain::new(&shutdown),
            shutdown,
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

    /// A connection slot, or why there is none: the node is draining (or shutting down), or
    /// at `max_connections`.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, NotAdmitted> {
        if self.drain.is_draining() {
            return Err(NotAdmitted::Draining);
        }
        self.connections
            .clone()
            .try_acquire_owned()
            .map_err(|_| NotAdmitted::Full)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.server.max_connections - self.connections.available_permits()
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAdmitted {
    /// The node is draining for a restart, or shutting down.
    Draining,
    /// The node holds `max_connections`.
    Full,
}

impl NotAdmitted {
    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            NotAdmitted::Draining => {
                "this node is stopping (draining for a restart, or shutting down); connect to another node"
            }
            NotAdmitted::Full => "the server is at its connection limit; try again later",
        }
    }
}

/// Where tenants store their user messages: in Redis when the node is part of a cluster (the
/// store must be shared), else in this process's memory, within one byte budget for all.
struct Stores {
    history: HistoryConfig,
    redis: Option<Arc<RedisBackplane>>,
    memory_budget: Arc<Budget>,
    /// A new epoch per process for the memory store: what an earlier process stored is gone,
    /// and positions from it must read as such.
    memory_epoch: u64,
}

impl Stores {
    fn new(history: &HistoryConfig, redis: Option<Arc<RedisBackplane>>) -> Stores {
        Stores {
            history: history.clone(),
            redis,
            memory_budget: Arc::new(Budget::new(history.max_bytes)),
            memory_epoch: crate::util::unix_ms(),
        }
    }

    /// Where tenant `t` keeps what it accepts.
    fn stores_for(&self, t: &TenantConfig, server: &ServerConfig) -> TenantStores {
        TenantStores {
            history: self.store_for(t),
            topics: self.topic_stores_for(t),
            // Queues survive a node only with a store the nodes share.
            queues: self
                .redis
                .as_ref()
                .filter(|_| t.durable_queues)
                .map(|redis| {
                    Arc::new(RedisQueues::new(
                        redis.clone(),
                        &t.id,
                        server.max_queue_backlog,
                    )) as Arc<dyn QueueStore>
                }),
        }
    }

    /// The store of tenant `t`'s user messages, unless it (or the node) opted out.
    fn store_for(&self, t: &TenantConfig) -> Option<Arc<dyn History>> {
        if !(self.history.enabled && t.history) {
            return None;
        }
        let retention = t.retention(&self.history);
        Some(match &self.redis {
            Some(redis) => Arc::new(RedisHistory::new(redis.clone(), &t.id, retention)),
            None => Arc::new(MemoryHistory::new(
                self.memory_epoch,
                retention,
                self.memory_budget.clone(),
                Arc::new(crate::util::unix_ms),
            )),
        })
    }

    /// The stores of tenant `t`'s topics with history, one per prefix (each keeps its own
    /// retention), unless the node stores nothing.
    fn topic_stores_for(&self, t: &TenantConfig) -> crate::tenant::TopicStores {
        if !self.history.enabled {
            return Vec::new();
        }
        t.topic_history
            .iter()
            .map(|topics| {
                let retention = topics.retention(&self.history);
                let store: Arc<dyn History> = match &self.redis {
                    Some(redis) => {
                        Arc::new(RedisHistory::for_topics(redis.clone(), &t.id, retention))
                    }
                    None => Arc::new(MemoryHistory::new(
                        self.memory_epoch,
                        retention,
                        self.memory_budget.clone(),
                        Arc::new(crate::util::unix_ms),
                    )),
                };
                (topics.prefix.clone(), store)
            })
            .collect()
    }
}

impl Node {
    /// Starts the tenants' tasks and the cluster backplane (joining the cluster, when there
    /// is one).
    pub fn start_cluster(self: &Arc<Self>) {
        for tenant in self.tenants() {
            tenant.start();
        }
        let local: Arc<dyn LocalNode> = Arc::new(inbound::NodeInbound(Arc::downgrade(self)));
        self.cluster.clone().start(local);
    }

    /// Answers `query` from what this node holds (the presence and disconnect APIs ask every
    /// node this, this one directly).
    pub fn answer_here(&self, query: &Query) -> Reply {
        let count = |n| Reply::Count { n };
        match query {
            Query::Sessions { tenant, user } => count(
                self.tenant(tenant)
                    .map_or(0, |t| t.broker.user_sessions(user)),
            ),
            Query::Users {
                tenant,
                after,
                limit,
            } => Reply::Users {
                names: self.tenant(tenant).map_or_else(Vec::new, |t| {
                    t.broker.connected_users_after(after.as_deref(), *limit)
                }),
            },
            Query::Subscribers { tenant, dest } => count(
                self.tenant(tenant)
                    .map_or(0, |t| t.broker.subscriber_count(dest)),
            ),
            Query::Disconnect {
                tenant,
                user,
                until_ms,
            } => count(self.tenant(tenant).map_or(0, |t| {
                t.ban(user, *until_ms);
                t.disconnect_user(user)
            })),
        }
    }

    /// Sends on what the tenants still hold for their backends (the sessions' last events
    /// included) and stops their delivery: after the sessions closed, before the node leaves
    /// the cluster (a stream needs Redis).
    pub async fn stop_upstream(&self) {
        for tenant in self.tenants() {
            tenant.upstream.stop().await;
        }
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
        delivery_confirm_ms: s.delivery_confirm_ms,
    }
}
