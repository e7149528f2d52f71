//! One stompbox node: its tenants, admission limits, ids, and the shutdown signal and task
//! tracker that every connection registers with; and the node as the cluster sees it
//! ([`inbound`]: messages from other nodes and ingress come in there).

pub mod drain;
pub mod inbound;
pub mod reload;
pub mod tenancy;
pub mod tenant_store;

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Budget;
use crate::cluster::redis::{RedisBackplane, RedisSettings, RedisTarget};
use crate::cluster::standalone::Standalone;
use crate::cluster::{Backplane, LocalNode, Query, Reply};
use crate::config::{Config, ServerConfig, SockJsConfig, TenantConfig};
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
    /// The drain for a rolling upgrade (which shutdown also starts).
    pub drain: drain::Drain,
    /// Every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// The cluster this node is part of (a single node when standalone).
    pub cluster: Arc<dyn Backplane>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// What every new session of this node is given (new limits after a reload).
    pub(super) sessions: std::sync::RwLock<Arc<session::Context>>,
    tenants: Arc<Tenants>,
    /// Builds tenants as the operator adds or changes them.
    factory: tenancy::TenantFactory,
    /// Where the operator's tenant changes are kept.
    pub tenant_store: tenant_store::TenantStore,
    /// Tenant changes apply one at a time.
    pub(super) tenant_changes: tokio::sync::Mutex<()>,
    /// The tenants whose settings came from the admin API.
    admin_made: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// The config the node started with (its tenants the config file's), against which
    /// tenant settings from the admin API are checked.
    pub(super) bootstrap: std::sync::RwLock<Config>,
    /// The seed-format ingress channels the node subscribed to when it started, by tenant.
    ingress_at_start: Vec<(String, String)>,
    /// Set once the stored tenant changes were applied (at once for a single node; on
    /// joining the cluster otherwise): until then the node is not ready.
    tenants_loaded: std::sync::atomic::AtomicBool,
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
        let cluster_shared = cluster.is_shared();
        let metrics = Arc::new(Metrics::default());
        let shutdown = CancellationToken::new();
        crate::tenant::configure_plugins(&config.server);
        let factory = tenancy::TenantFactory {
            server: config.server.clone(),
            stores: tenancy::Stores::new(&config.history, redis),
            node_backlog: Arc::new(Budget::new(config.server.node_backlog_bytes)),
            cluster: cluster.clone(),
            metrics: metrics.clone(),
            node_id: node_id.clone(),
            shutdown: shutdown.clone(),
        };
        let tenant_store =
            tenant_store::TenantStore::new(&cluster, config.server.state_file.as_ref());
        // A single node applies its state file before it serves; a clustered one reads Redis
        // when it joins.
        let mut configs: std::collections::BTreeMap<String, TenantConfig> = config
            .tenants
            .iter()
            .map(|t| (t.id.clone(), t.clone()))
            .collect();
        let mut admin_made = std::collections::BTreeSet::new();
        match tenant_store.load_file() {
            Ok(stored) => {
                for (id, document) in stored {
                    admin_made.insert(id.clone());
                    match document {
                        tenant_store::Stored::Tenant { tenant } => {
                            configs.insert(id, *tenant);
                        }
                        tenant_store::Stored::Deleted { .. } => {
                            configs.remove(&id);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the tenants changed through the admin API are not applied")
            }
        }
        let tenants = Arc::new(Tenants::default());
        for tenant in configs.values() {
            tenants.insert(Arc::new(factory.build(tenant)));
        }
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
            sessions: std::sync::RwLock::new(sessions),
            tenants,
            // A single node is ready at once, unless it kept plugins to install again first.
            tenants_loaded: std::sync::atomic::AtomicBool::new(
                !cluster_shared && tenant_store.kept_plugins().is_empty(),
            ),
            factory,
            tenant_store,
            tenant_changes: tokio::sync::Mutex::new(()),
            admin_made: std::sync::Mutex::new(admin_made),
            bootstrap: std::sync::RwLock::new(config.clone()),
            ingress_at_start: config
                .tenants
                .iter()
                .filter_map(|t| t.redis_ingress_channel.clone().map(|c| (t.id.clone(), c)))
                .collect(),
            ids,
            connections: Arc::new(Semaphore::new(config.server.max_connections)),
        })
    }

    /// The tenant with id `id`.
    pub fn tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        self.tenants.get(id)
    }

    /// Every tenant, by id.
    pub fn tenants(&self) -> Vec<Arc<Tenant>> {
        self.tenants.all()
    }

    /// The tenant for a connection that named none.
    pub fn default_tenant(&self) -> Option<Arc<Tenant>> {
        self.tenants.default_tenant()
    }

    /// What a new session is given.
    pub fn session_context(&self) -> Arc<session::Context> {
        self.sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// True once the tenants changed through the admin API were read and applied.
    pub fn tenants_loaded(&self) -> bool {
        self.tenants_loaded
            .load(std::sync::atomic::Ordering::Acquire)
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

impl Node {
    /// Starts the tenants' tasks and the cluster backplane (joining the cluster, when there
    /// is one).
    pub fn start_cluster(self: &Arc<Self>) {
        for tenant in self.tenants() {
            tenant.start();
        }
        if !self.cluster.is_shared() {
            let node = self.clone();
            tokio::spawn(async move { node.load_kept_plugins().await });
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
            Query::Status => Reply::Status {
                status: self.status(),
            },
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

    /// This node's state for the console.
    pub fn status(&self) -> crate::cluster::NodeStatus {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.metrics;
        crate::cluster::NodeStatus {
            connections: self.open_connections() as u64,
            users: self
                .tenants()
                .iter()
                .map(|t| t.broker.connected_user_count() as u64)
                .sum(),
            published: m.published.load(Relaxed),
            delivered: m.delivered_local.load(Relaxed),
            forwarded: m.forwarded.load(Relaxed),
            received: m.received_remote.load(Relaxed),
            dropped: m.dropped_by_reason(),
            draining: self.drain.is_draining(),
            ready: self.cluster.is_ready() && self.tenants_loaded(),
            at_ms: crate::util::unix_ms(),
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
