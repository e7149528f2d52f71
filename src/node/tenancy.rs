//! The tenants a node serves, as the operator changes them while it runs: building a tenant
//! from its settings, and applying a new version of them. A change to API keys or allowed
//! origins applies in place; any other change replaces the tenant: its sessions are closed
//! with an ERROR that asks them to reconnect, and once they are gone the new version takes
//! over what the old one held in memory (see [`Tenant::taking_over`]). Deleting a tenant
//! closes its sessions with an ERROR that says so.
//!
//! Changes are applied one at a time, so a change arriving from the cluster and one made on
//! this node never interleave; applying the same settings twice changes nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::tenant_store::Stored;
use super::Node;
use crate::broker::Budget;
use crate::cluster::redis::queues::RedisQueues;
use crate::cluster::redis::store::RedisHistory;
use crate::cluster::redis::RedisBackplane;
use crate::cluster::Backplane;
use crate::config::{HistoryConfig, ServerConfig, TenantConfig};
use crate::history::memory::MemoryHistory;
use crate::history::queue::QueueStore;
use crate::history::History;
use crate::metrics::Metrics;
use crate::tenant::{Tenant, TenantStores};

/// Builds a node's tenants from their settings.
#[derive(Debug)]
pub(super) struct TenantFactory {
    pub(super) server: ServerConfig,
    pub(super) stores: Stores,
    /// One ceiling for the queues of every tenant, so that together they cannot take the
    /// node's memory either.
    pub(super) node_backlog: Arc<Budget>,
    pub(super) cluster: Arc<dyn Backplane>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) node_id: String,
    pub(super) shutdown: CancellationToken,
}

impl TenantFactory {
    /// A tenant serving `config`, not started.
    pub(super) fn build(&self, config: &TenantConfig) -> Tenant {
        Tenant::new(
            config,
            &self.server,
            &self.node_backlog,
            self.stores.stores_for(config, &self.server),
            self.cluster.clone(),
            self.metrics.clone(),
            &self.node_id,
        )
        .closing_with(self.shutdown.child_token())
    }
}

/// What applying a tenant's settings did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Applied {
    /// The tenant is new.
    Created,
    /// Its keys or origins changed; no session was closed.
    Updated,
    /// Other settings changed: its sessions were closed and asked to reconnect.
    Replaced,
    /// It was deleted: its sessions were closed.
    Deleted,
    /// Nothing changed.
    Unchanged,
}

impl Node {
    /// Makes an operator's change to tenant `id` (its settings, checked with
    /// [`Node::check_tenant`], or its deletion): stores it where every node reads it, then
    /// applies it here. Nothing changes when it cannot be stored.
    pub async fn change_tenant(&self, id: &str, change: Stored) -> Result<Applied, String> {
        let _one_at_a_time = self.tenant_changes.lock().await;
        self.tenant_store.save(id, &change).await?;
        if matches!(change, Stored::Deleted { .. }) {
            // A tenant created again under this id starts with no uploaded plugin.
            if self.cluster.is_shared() {
                if let Err(e) = self.cluster.put_plugin(id, None).await {
                    warn!(tenant = %id, error = %e, "forgetting the deleted tenant's plugin failed");
                }
            }
            self.tenant_store.forget_plugin(id).await;
        }
        self.admin_made
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string());
        Ok(self.apply(id, change).await)
    }

    /// Reads tenant `id`'s document again (`None`: every document) and applies it: what a
    /// node does when the cluster says a tenant changed, and when it joins.
    pub async fn sync_tenants(&self, id: Option<&str>) {
        let _one_at_a_time = self.tenant_changes.lock().await;
        let documents = match id {
            Some(id) => self
                .tenant_store
                .load(id)
                .await
                .map(|d| d.into_iter().map(|d| (id.to_string(), d)).collect()),
            None => self
                .tenant_store
                .load_all()
                .await
                .map(|all| all.into_iter().collect::<Vec<_>>()),
        };
        match documents {
            Ok(documents) => {
                for (id, stored) in documents {
                    self.admin_made
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id.clone());
                    self.apply(&id, stored).await;
                }
                if id.is_none() && self.cluster.is_shared() {
                    for tenant in self.tenants.all() {
                        self.sync_plugin(&tenant.id).await;
                    }
                }
                self.tenants_loaded
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            Err(e) => warn!(error = %e, "reading the stored tenants failed"),
        }
    }

    /// Installs the plugin the cluster keeps for tenant `id`, if it keeps one and it is not
    /// the one serving: what a node does when told of an upload on another node, and for
    /// every tenant when it joins.
    pub async fn sync_plugin(&self, id: &str) {
        let Some(tenant) = self.tenants.get(id) else {
            return;
        };
        match self.cluster.plugin(id).await {
            Ok(Some(wasm)) => {
                // A refusal is logged and recorded by the slot; the previous version serves.
                let _ = tenant.plugin().install(wasm, "cluster").await;
            }
            Ok(None) => {}
            Err(e) => {
                warn!(tenant = %id, error = %e, "reading the tenant's uploaded plugin failed")
            }
        }
    }

    /// Keeps the plugin just installed here for tenant `id` where it outlives this process:
    /// in a cluster, in Redis, from where every node installs it (and nodes that start
    /// later); on a single node, beside the state file, unless the tenant has a plugin file
    /// of its own (the upload was written over it).
    pub async fn share_plugin(&self, id: &str, wasm: &[u8], has_file: bool) -> Result<(), String> {
        if self.cluster.is_shared() {
            return self
                .cluster
                .put_plugin(id, Some(wasm))
                .await
                .map_err(|e| e.to_string());
        }
        if !has_file {
            self.tenant_store.save_plugin(id, wasm).await?;
        }
        Ok(())
    }

    /// Installs the plugins a single node kept for tenants with no plugin file, then counts
    /// the node's tenants as loaded.
    pub async fn load_kept_plugins(&self) {
        for (id, file) in self.tenant_store.kept_plugins() {
            let Some(tenant) = self
                .tenants
                .get(&id)
                .filter(|t| t.plugin().path().is_none())
            else {
                continue;
            };
            match tokio::fs::read(&file).await {
                Ok(wasm) => {
                    let _ = tenant.plugin().install(wasm, "kept upload").await;
                }
                Err(e) => {
                    warn!(tenant = %id, file = %file.display(), error = %e, "cannot read the kept plugin")
                }
            }
        }
        self.tenants_loaded
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// True when tenant `id`'s settings come from the admin API rather than the config file.
    pub fn tenant_from_admin(&self, id: &str) -> bool {
        self.admin_made
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    /// Applies a document of tenant `id`: its settings, or its deletion. Settings that do
    /// not validate against this node's config (a document another node wrote) are logged
    /// and skipped: the running version keeps serving.
    async fn apply(&self, id: &str, stored: Stored) -> Applied {
        let config = match stored {
            Stored::Deleted { .. } => return self.delete_tenant(id).await,
            Stored::Tenant { tenant } => *tenant,
        };
        if config.id != id {
            warn!(tenant = %id, named = %config.id, "a stored tenant document names another tenant; skipped");
            return Applied::Unchanged;
        }
        if let Err(e) = self.check_tenant(&config) {
            warn!(tenant = %id, error = %e, "a stored tenant document is not valid here; the running version keeps serving");
            return Applied::Unchanged;
        }
        self.serve_tenant(config).await
    }

    /// Serves `config`: creates the tenant, updates it in place, or replaces it.
    pub(super) async fn serve_tenant(&self, config: TenantConfig) -> Applied {
        let id = config.id.clone();
        let Some(current) = self.tenants.get(&id) else {
            let tenant = Arc::new(self.factory.build(&config));
            self.tenants.insert(tenant.clone());
            tenant.start();
            info!(tenant = %id, "tenant created");
            return Applied::Created;
        };
        if current.config() == config {
            return Applied::Unchanged;
        }
        if current.update_live(&config) {
            info!(tenant = %id, "tenant's keys or origins changed");
            return Applied::Updated;
        }
        let closed = current.sessions();
        current.close(&format!(
            "the operator changed the settings of tenant '{id}'; reconnect"
        ));
        self.wait_sessions_gone(&current).await;
        let tenant = Arc::new(self.factory.build(&config).taking_over(&current));
        self.tenants.insert(tenant.clone());
        tenant.start();
        current.upstream.stop().await;
        info!(tenant = %id, sessions_closed = closed, "tenant replaced with new settings");
        Applied::Replaced
    }

    /// Stops serving tenant `id`: its sessions are closed with an ERROR that says it was
    /// deleted.
    pub(super) async fn delete_tenant(&self, id: &str) -> Applied {
        let Some(tenant) = self.tenants.remove(id) else {
            return Applied::Unchanged;
        };
        tenant.close(&format!("the operator deleted tenant '{id}'"));
        self.wait_sessions_gone(&tenant).await;
        tenant.upstream.stop().await;
        info!(tenant = %id, "tenant deleted");
        Applied::Deleted
    }

    /// Checks `tenant` as the node's config would: every key the config file may give, and
    /// that its Redis ingress channel, which the node subscribes to when it starts, is the
    /// one it started with. The error names the field (`api_keys[1]`,
    /// `upstream.webhook_url`).
    pub fn check_tenant(&self, tenant: &TenantConfig) -> Result<(), crate::config::ConfigError> {
        let started_with = self
            .ingress_at_start
            .iter()
            .find(|(id, _)| *id == tenant.id)
            .map(|(_, channel)| channel);
        if tenant.redis_ingress_channel.as_ref() != started_with {
            return Err(crate::config::ConfigError::Invalid {
                key: "redis_ingress_channel".into(),
                message: "the node subscribes to an ingress channel when it starts: set it in the config file and restart".into(),
            });
        }
        let mut alone = self
            .bootstrap
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        alone.tenants = vec![tenant.clone()];
        alone.validate().map_err(|e| match e {
            crate::config::ConfigError::Invalid { key, message } => {
                crate::config::ConfigError::Invalid {
                    key: key.strip_prefix("tenants[0].").unwrap_or(&key).to_string(),
                    message,
                }
            }
            other => other,
        })
    }

    /// Waits for a closed tenant's sessions to end (each was told why), at most the
    /// shutdown grace period.
    async fn wait_sessions_gone(&self, tenant: &Tenant) {
        let grace = Duration::from_millis(self.server.shutdown_grace_ms);
        if !tenant.sessions_closed(grace).await {
            warn!(tenant = %tenant.id, left = tenant.sessions(), "sessions of a closed tenant still open after the grace period");
        }
    }
}

/// Where tenants store their user messages: in Redis when the node is part of a cluster (the
/// store must be shared), else in this process's memory, within one byte budget for all.
#[derive(Debug)]
pub(super) struct Stores {
    history: HistoryConfig,
    redis: Option<Arc<RedisBackplane>>,
    memory_budget: Arc<Budget>,
    /// A new epoch per process for the memory store: what an earlier process stored is gone,
    /// and positions from it must read as such.
    memory_epoch: u64,
}

impl Stores {
    pub(super) fn new(history: &HistoryConfig, redis: Option<Arc<RedisBackplane>>) -> Stores {
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
