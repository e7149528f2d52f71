//! A tenant: a separate namespace of destinations and users with its own API keys, allowed
//! origins and policy, and the routing of a message published in it: first to this node's
//! subscribers through the tenant's broker, then to exactly the other nodes that need it
//! through the cluster backplane.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{debug, warn};

use crate::broker::{
    BacklogLimits, Broker, Budget, Content, Interest, RouteError, Subscription, Target,
};
use crate::cluster::{Backplane, ClusterError};
use crate::config::{HistoryConfig, ServerConfig, TenantConfig, DEFAULT_TENANT};
use crate::history::memory::MemoryHistory;
use crate::history::History;
use crate::metrics::{DropReason, Metrics};
use crate::plugin::{PluginLimits, PluginSlot};
use crate::policy::Policy;
use crate::web::origin::AllowedOrigins;

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
    /// What decides identity and permissions: the plugin slot (tests put another policy here).
    policy: Arc<dyn Policy>,
    pub(crate) cluster: Arc<dyn Backplane>,
    pub(crate) metrics: Arc<Metrics>,
    /// Where its user messages are stored first; `None` when the tenant opted out.
    history: Option<Arc<dyn History>>,
    /// One user's messages are stored and handed to the broker one at a time, so offsets
    /// reach subscriptions in order; users are spread over these by hash.
    user_turns: Vec<tokio::sync::Mutex<()>>,
}

/// How many users' stores may run at once per tenant.
const USER_TURNS: usize = 64;

impl Tenant {
    pub(crate) fn new(
        config: &TenantConfig,
        server: &ServerConfig,
        node_backlog: &Arc<Budget>,
        history: Option<Arc<dyn History>>,
        cluster: Arc<dyn Backplane>,
        metrics: Arc<Metrics>,
    ) -> Tenant {
        let plugin = Arc::new(PluginSlot::new(
            &config.id,
            config.plugin.clone(),
            config.settings.clone(),
            PluginLimits {
                deadline: std::time::Duration::from_millis(config.plugin_deadline_ms),
                memory_bytes: config.plugin_memory_bytes,
            },
        ));
        Tenant {
            policy: plugin.clone(),
            plugin,
            cluster,
            metrics,
            id: config.id.clone(),
            broker: Broker::new(BacklogLimits::new(
                server.max_queue_backlog,
                server.max_queue_backlog_bytes,
                node_backlog.clone(),
            )),
            api_keys: config.api_keys.clone(),
            allowed_origins: AllowedOrigins::new(&config.allowed_origins),
            // Only a tenant that stores takes turns.
            user_turns: (0..if history.is_some() { USER_TURNS } else { 0 })
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            history,
        }
    }

    /// The store of this tenant's user messages, unless it opted out.
    pub fn history(&self) -> Option<&Arc<dyn History>> {
        self.history.as_ref()
    }

    fn user_turn(&self, user: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(user);
        &self.user_turns[(hash as usize) % self.user_turns.len()]
    }

    /// The policy that decides identity and permissions for this tenant.
    pub fn policy(&self) -> Arc<dyn Policy> {
        self.policy.clone()
    }

    /// This tenant deciding with `policy` instead of its plugin slot (for tests).
    #[cfg(test)]
    pub(crate) fn with_policy(mut self, policy: Arc<dyn Policy>) -> Tenant {
        self.policy = policy;
        self
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
            found |= crate::util::constant_time_eq(candidate.as_bytes(), key.as_bytes());
        }
        found
    }

    /// True when the tenant has at least one API key.
    pub fn has_api_keys(&self) -> bool {
        !self.api_keys.is_empty()
    }
}

/// The tenants of a node, by id.
#[derive(Debug, Default)]
pub struct Tenants {
    by_id: HashMap<String, Arc<Tenant>>,
}

impl Tenants {
    /// The tenants of `configs`, routing through `cluster`, storing user messages in memory
    /// under `history` (`None`: nowhere).
    pub fn new(
        configs: &[TenantConfig],
        server: &ServerConfig,
        history: Option<&HistoryConfig>,
        cluster: &Arc<dyn Backplane>,
        metrics: &Arc<Metrics>,
    ) -> Tenants {
        let history_budget = history.map(|h| Arc::new(Budget::new(h.max_bytes)));
        // A new epoch per process: what an earlier process stored is gone, and positions from
        // it must read as such.
        let epoch = crate::util::unix_ms();
        let clock: crate::history::memory::Clock = Arc::new(crate::util::unix_ms);
        // One ceiling for the queues of every tenant, so that together they cannot take the
        // node's memory either.
        let node_backlog = Arc::new(Budget::new(server.node_backlog_bytes));
        let by_id = configs
            .iter()
            .map(|t| {
                let store = match (history, &history_budget) {
                    (Some(h), Some(budget)) if h.enabled && t.history => {
                        let store: Arc<dyn History> = Arc::new(MemoryHistory::new(
                            epoch,
                            t.retention(h),
                            budget.clone(),
                            clock.clone(),
                        ));
                        Some(store)
                    }
                    _ => None,
                };
                let tenant = Tenant::new(
                    t,
                    server,
                    &node_backlog,
                    store,
                    cluster.clone(),
                    metrics.clone(),
                );
                (t.id.clone(), Arc::new(tenant))
            })
            .collect();
        Tenants { by_id }
    }

    /// The tenant with id `id`.
    pub fn get(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.by_id.get(id)
    }

    /// The tenant for a connection that named none.
    pub fn default_tenant(&self) -> Option<&Arc<Tenant>> {
        self.get(DEFAULT_TENANT)
    }

    /// Every tenant.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.by_id.values()
    }
}

impl FromIterator<Tenant> for Tenants {
    fn from_iter<I: IntoIterator<Item = Tenant>>(tenants: I) -> Tenants {
        Tenants {
            by_id: tenants
                .into_iter()
                .map(|t| (t.id.clone(), Arc::new(t)))
                .collect(),
        }
    }
}

/// Where a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delivery {
    /// Subscriptions on this node it was handed to.
    pub local: usize,
    /// Other nodes it was sent to.
    pub nodes: usize,
    /// A queue kept it for a later consumer.
    pub queued: bool,
    /// The cluster bus was down, so other nodes may have missed it.
    pub cluster_unreachable: bool,
    /// A user message was stored first: sessions that subscribe later get it.
    pub stored: bool,
}

impl Delivery {
    /// True when some session (here or on another node) was given the message, or a queue
    /// keeps it.
    pub fn reached_anyone(&self) -> bool {
        self.local > 0 || self.nodes > 0 || self.queued || self.stored
    }
}

impl Tenant {
    /// Routes `content` to `target`, here and across the cluster. With `confirm`, waits until
    /// Redis took what was forwarded and counts only the nodes that received it (the publish
    /// API does, to answer truthfully); without, forwarding failures are logged and counted
    /// (STOMP SENDs, which no answer reports). Queue messages are always confirmed: one that
    /// no other node took stays in this node's backlog instead of being lost.
    pub async fn route(
        &self,
        target: &Target,
        content: Content,
        confirm: bool,
    ) -> Result<Delivery, RouteError> {
        self.metrics.published.fetch_add(1, Ordering::Relaxed);
        let mut delivery = Delivery::default();
        let remote = match target {
            Target::Topic(dest) => {
                delivery.local = self.broker.publish(target, content.clone())?.delivered;
                Some(self.forward_topic(dest, &content, confirm).await)
            }
            Target::User { user, dest } => {
                delivery.local = match &self.history {
                    Some(history) => {
                        let _turn = self.user_turn(user).lock().await;
                        let position = history
                            .append(user, dest, &content)
                            .await
                            .map_err(|e| RouteError::NotStored(e.to_string()))?;
                        delivery.stored = true;
                        self.broker
                            .publish_at(target, content.clone(), Some(position.offset))?
                            .delivered
                    }
                    None => self.broker.publish(target, content.clone())?.delivered,
                };
                Some(self.forward_user(user, dest, &content, confirm).await)
            }
            Target::Queue(dest) => {
                // Local consumers first: a queue message never crosses nodes needlessly.
                let forwarded = if self.broker.has_consumers(dest) {
                    None
                } else {
                    Some(self.forward_queue(dest, &content).await)
                };
                match forwarded {
                    Some(Ok(nodes)) if nodes > 0 => Some(Ok(nodes)),
                    other => {
                        let routed = self.broker.publish(target, content)?;
                        delivery.local = routed.delivered;
                        delivery.queued = routed.queued;
                        other.and_then(|r| r.err()).map(Err)
                    }
                }
            }
        };
        match remote {
            Some(Ok(nodes)) => delivery.nodes = nodes,
            Some(Err(e)) => {
                delivery.cluster_unreachable = true;
                if !delivery.reached_anyone() {
                    self.metrics.dropped(DropReason::ClusterUnavailable);
                }
                warn!(tenant = %self.id, error = %e, "message not forwarded to other nodes");
            }
            None => {}
        }
        self.metrics
            .delivered_local
            .fetch_add(delivery.local as u64, Ordering::Relaxed);
        self.metrics
            .forwarded
            .fetch_add(delivery.nodes as u64, Ordering::Relaxed);
        if matches!(target, Target::User { .. })
            && !delivery.reached_anyone()
            && !delivery.cluster_unreachable
        {
            self.metrics.dropped(DropReason::UserOffline);
        }
        Ok(delivery)
    }

    /// Other nodes with subscribers of the topic that received it (confirmed), or that it was
    /// queued for.
    async fn forward_topic(
        &self,
        dest: &str,
        content: &Content,
        confirm: bool,
    ) -> Result<usize, ClusterError> {
        let forwarded = self.cluster.to_topic(&self.id, dest, content).await?;
        if confirm {
            forwarded.confirmed().await
        } else {
            Ok(forwarded.nodes())
        }
    }

    /// Other nodes holding the user that received it (confirmed), or that it was queued for.
    /// Redis says how many subscribers each node's inbox had: a node in the user's presence
    /// whose inbox had none is gone (killed moments ago, or it lost its subscription), so the
    /// presence is read again and the nodes that did not get it are tried once more; a
    /// message that still reached nobody is answered as not delivered, never as sent.
    async fn forward_user(
        &self,
        user: &str,
        dest: &str,
        content: &Content,
        confirm: bool,
    ) -> Result<usize, ClusterError> {
        let forwarded = self
            .cluster
            .to_user(&self.id, user, dest, content, None)
            .await?;
        if !confirm {
            return Ok(forwarded.nodes());
        }
        let (mut reached, missed) = forwarded.confirmed_by_node().await?;
        if missed.is_empty() {
            return Ok(reached.len());
        }
        debug!(tenant = %self.id, user, ?missed, "nodes in the presence took nothing; reading it again");
        let retry = self
            .cluster
            .to_user(&self.id, user, dest, content, Some(&reached))
            .await?;
        let (again, _) = retry.confirmed_by_node().await?;
        reached.extend(again);
        Ok(reached.len())
    }

    /// Hands a queue message to another node with consumers; the number that received it
    /// (0 when there is none, or the chosen node's inbox had no subscriber).
    async fn forward_queue(&self, dest: &str, content: &Content) -> Result<usize, ClusterError> {
        let forwarded = self.cluster.to_queue(&self.id, dest, content).await?;
        if forwarded.nodes() == 0 {
            return Ok(0);
        }
        let (reached, _) = forwarded.confirmed_by_node().await?;
        Ok(reached.len())
    }
}
