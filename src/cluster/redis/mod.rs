//! The Redis backplane: node liveness, cluster-wide user presence, targeted forwarding of user
//! messages, topic channels joined only while there are local subscribers, queue consumers per
//! node, and the seed system's ingress channel.
//!
//! It runs on one Redis or on a Redis Cluster alike. Split by job: [`keys`] (the layout of keys
//! and channels), [`slots`] (which slot a key is in, and the map of slots to primaries),
//! [`shards`] (the command connections, one per primary, and routing by slot), [`resp`] and
//! [`subscriber`] (the subscription connections, one per primary), [`membership`] (joining,
//! heartbeat, announcements, dispatch, repair, leaving), [`presence`] (where a user is, and its
//! cache), [`outbound`] (the pipelined sender of messages for other nodes) and [`ingress`]
//! (which node handles an ingress message). This file holds the shared state and the
//! [`Backplane`] implementation.
//!
//! On a Redis Cluster, messages for a node's inbox and for topics travel over sharded pub/sub
//! (`SPUBLISH`/`SSUBSCRIBE`): a message costs work on the one primary that owns its channel,
//! where a classic `PUBLISH` is copied to every node of the cluster. Presence notices and the
//! seed-format ingress channel stay classic, because every node must hear them.
//!
//! A message published in the instant between a user's CONNECT on node A and B's cache
//! learning of it (the time of one Redis PUBLISH, well under a millisecond on a LAN) is routed
//! as before the CONNECT: the API answers `"online": false` when that means nobody received
//! it. Dead nodes' presence entries are ignored at once (the liveness filter) and removed
//! lazily by whichever node notices them.

mod asks;
mod ingress;
pub mod keys;
mod membership;
mod outbound;
mod presence;
pub mod queues;
pub mod resp;
pub mod shards;
pub mod slots;
pub mod store;
mod subscriber;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::IntoConnectionInfo;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use super::{
    Backplane, ClusterError, Envelope, Forwarded, Holders, Kind, LocalNode, Query, Replies,
    StreamEntry,
};
use crate::broker::{Content, Interest, Position};
use crate::metrics::Sample;
use membership::Control;
use presence::{LiveNodes, PresenceCache, UserKey};
use shards::{Routed, Shards};

/// Which Redis the backplane runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server: `redis://host:port/db`.
    Single(String),
    /// A Redis Cluster, found through these seed nodes (`redis://host:port`).
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// The URLs it names.
    pub fn urls(&self) -> Vec<String> {
        match self {
            RedisTarget::Single(url) => vec![url.clone()],
            RedisTarget::Cluster(seeds) => seeds.clone(),
        }
    }
}

/// Tunables of the Redis backplane.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// The server or cluster.
    pub target: RedisTarget,
    /// This node's id.
    pub node_id: String,
    /// A node is dead once its heartbeat is this old.
    pub node_ttl: Duration,
    /// How long a presence lookup is trusted without an invalidation.
    pub presence_cache: Duration,
    /// `(tenant, channel)` pairs of seed-format ingress channels.
    pub ingress: Vec<(String, String)>,
    /// Replicas that must confirm a stored message before it counts as stored (0: none).
    pub replica_acks: usize,
    /// How long to wait for them.
    pub replica_ack_timeout: Duration,
}

/// Why the Redis backplane could not do something.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisError {
    /// A configured URL does not parse (or names a database other than 0 for a cluster).
    #[error("invalid Redis URL '{url}': {source}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        source: redis::RedisError,
    },
    /// Not connected now; the last error, if any.
    #[error("{0}")]
    NotConnected(String),
    /// A command failed or the connection broke.
    #[error("{0}")]
    Command(#[from] redis::RedisError),
    /// The primary stored it, but not enough replicas confirmed it in time.
    #[error("stored on the Redis primary but confirmed by {got} of {wanted} replicas within {ms} ms, so it may not survive a failover")]
    Unconfirmed {
        /// Replicas that confirmed.
        got: usize,
        /// Replicas asked for.
        wanted: usize,
        /// How long was waited.
        ms: u64,
    },
    /// Redis answered something other than what the command gives.
    #[error("unexpected answer from Redis: {0}")]
    Reply(String),
    /// The subscription connection was closed.
    #[error("the Redis connection was closed")]
    Closed,
    /// Connecting took too long.
    #[error("connecting to Redis timed out")]
    ConnectTimeout,
    /// Too many messages are waiting for the cluster connection.
    #[error("the queue of messages for other nodes is full")]
    QueueFull,
    /// An envelope could not be encoded.
    #[error("an envelope could not be encoded: {0}")]
    Encode(String),
    /// The backplane was not started (or was stopped).
    #[error("the cluster backplane is not running")]
    NotStarted,
}

impl From<RedisError> for ClusterError {
    fn from(e: RedisError) -> ClusterError {
        ClusterError::Unavailable(e.to_string())
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Envelopes sent to other nodes.
    pub forwarded: AtomicU64,
    /// Envelopes received from other nodes and delivered here.
    pub received: AtomicU64,
    /// Successful reconnections to Redis after a loss.
    pub reconnects: AtomicU64,
    /// Presence lookups that went to Redis (cache misses).
    pub presence_lookups: AtomicU64,
    /// Times Redis was found to have lost its data.
    pub resyncs: AtomicU64,
    /// Ingress messages this node handled.
    pub ingress_handled: AtomicU64,
    /// Messages for other nodes that Redis did not take.
    pub send_failures: AtomicU64,
}

/// Timeout of one Redis command and of connecting.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long stopping waits for the backplane's tasks (leaving the cluster included).
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// The Redis backplane.
#[derive(Debug)]
pub struct RedisBackplane {
    settings: RedisSettings,
    /// The primaries and their command connections.
    shards: Shards,
    /// Every slot is served and subscribed (set by the membership loop).
    ready: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// The queues into the backplane's loops, created when it starts; each loop owns its
    /// receiver from the moment it is spawned.
    control: OnceLock<mpsc::UnboundedSender<Control>>,
    outgoing: OnceLock<mpsc::Sender<outbound::Outgoing>>,
    refresh: OnceLock<mpsc::Sender<UserKey>>,
    presence_cache: Mutex<PresenceCache>,
    live_nodes: Mutex<LiveNodes>,
    /// Topic channels this node is subscribed to (to tell its own echo in receiver counts).
    topics: Mutex<HashSet<String>>,
    queue_cursor: AtomicUsize,
    /// The store's `since` marks this node has seen (one per primary, see [`store`]): finding
    /// one gone later means Redis lost what that primary held.
    store_marks: Mutex<HashSet<String>>,
    /// Until when (ms) dead nodes are only skipped, not removed from presence sets: after
    /// this node reconnects, other nodes' heartbeats may be old only because Redis could not
    /// be reached, and they have one `node_ttl_ms` to beat again.
    prune_after_ms: AtomicU64,
    /// Questions to the other nodes awaiting their replies (see [`asks`]).
    waiting: asks::Waiting,
    tasks: TaskTracker,
    stop: CancellationToken,
    /// Counters.
    pub stats: ClusterStats,
}

impl RedisBackplane {
    /// A backplane for `settings`; nothing connects until it is started.
    pub fn new(settings: RedisSettings) -> Result<Arc<RedisBackplane>, RedisError> {
        let parse = |url: &String| {
            url.as_str()
                .into_connection_info()
                .map_err(|source| RedisError::InvalidUrl {
                    url: url.clone(),
                    source,
                })
        };
        let shards = match &settings.target {
            RedisTarget::Single(url) => Shards::single(parse(url)?),
            RedisTarget::Cluster(seeds) => {
                Shards::cluster(seeds.iter().map(parse).collect::<Result<_, _>>()?)
            }
        };
        Ok(Arc::new(RedisBackplane {
            presence_cache: Mutex::new(PresenceCache::new(settings.presence_cache)),
            settings,
            shards,
            ready: AtomicBool::new(false),
            last_error: Mutex::new(None),
            control: OnceLock::new(),
            outgoing: OnceLock::new(),
            refresh: OnceLock::new(),
            live_nodes: Mutex::new(LiveNodes::default()),
            topics: Mutex::new(HashSet::new()),
            queue_cursor: AtomicUsize::new(0),
            store_marks: Mutex::new(HashSet::new()),
            prune_after_ms: AtomicU64::new(0),
            waiting: Default::default(),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            stats: ClusterStats::default(),
        }))
    }

    /// Whether a Redis Cluster is reachable through `seeds`: Ok with its primaries, or why
    /// not (for refusing a configuration at start).
    pub async fn probe_cluster(seeds: &[String]) -> Result<Vec<String>, String> {
        let infos = seeds
            .iter()
            .map(|url| {
                url.as_str()
                    .into_connection_info()
                    .map_err(|e| format!("'{url}': {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let shards = Shards::cluster(infos);
        shards.repair().await.map_err(|e| e.to_string())?;
        Ok(shards
            .layout()
            .topology
            .primaries
            .iter()
            .map(|p| p.addr.clone())
            .collect())
    }

    /// The command that publishes on a node's inbox or a topic channel: sharded on a Redis
    /// Cluster, classic on one Redis.
    fn inbox_publish(&self) -> &'static str {
        if self.shards.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    fn envelope(
        &self,
        tenant: &str,
        kind: Kind,
        user: Option<&str>,
        dest: &str,
        content: &Content,
    ) -> Envelope {
        Envelope::new(&self.settings.node_id, tenant, kind, user, dest, content)
    }
}

#[async_trait]
impl Backplane for RedisBackplane {
    fn start(self: Arc<Self>, local: Arc<dyn LocalNode>) {
        let (control, control_rx) = mpsc::unbounded_channel();
        let (outgoing, outgoing_rx) = mpsc::channel(outbound::SEND_QUEUE);
        let (refresh, refresh_rx) = mpsc::channel(presence::REFRESH_QUEUE);
        if self.control.set(control).is_err()
            || self.outgoing.set(outgoing).is_err()
            || self.refresh.set(refresh).is_err()
        {
            warn!("the cluster backplane was started twice; the second start is ignored");
            return;
        }
        let stop = self.stop.clone();
        self.tasks
            .spawn(outbound::send_loop(self.clone(), outgoing_rx, stop.clone()));
        self.tasks.spawn(presence::refresh_loop(
            self.clone(),
            refresh_rx,
            stop.clone(),
        ));
        self.tasks
            .spawn(membership::run(self.clone(), local, control_rx, stop));
        self.tasks.close();
    }

    async fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(STOP_TIMEOUT, self.tasks.wait())
            .await
            .is_err()
        {
            warn!("the cluster backplane did not stop in time");
        }
    }

    fn interest(&self, tenant: &str, change: &Interest) {
        if let Some(control) = self.control.get() {
            let _ = control.send(Control::Interest(tenant.to_string(), change.clone()));
        }
    }

    async fn to_user(
        &self,
        tenant: &str,
        user: &str,
        dest: &str,
        content: &Content,
        stored: Option<Position>,
        holders: Holders<'_>,
    ) -> Result<Forwarded, ClusterError> {
        let nodes = match holders {
            Holders::Known(nodes) => nodes.to_vec(),
            Holders::Cached => self.presence(tenant, user).await?,
            Holders::Reread { skip } => {
                self.presence_changed(&(tenant.to_string(), user.to_string()));
                let mut nodes = self.presence(tenant, user).await?;
                nodes.retain(|n| !skip.contains(n));
                nodes
            }
        };
        if nodes.is_empty() {
            return Ok(Forwarded::default());
        }
        let envelope = self
            .envelope(tenant, Kind::User, Some(user), dest, content)
            .stored_at(stored);
        let confirmations = nodes
            .iter()
            .map(|node| self.enqueue(keys::inbox(node), &envelope))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Forwarded {
            confirmations,
            addressed: nodes,
            counts_self: false,
        })
    }

    async fn settled(&self) -> Result<(), ClusterError> {
        let control = self.control.get().ok_or(RedisError::NotStarted)?;
        let (done, applied) = tokio::sync::oneshot::channel();
        control
            .send(Control::Settled(done))
            .map_err(|_| RedisError::NotStarted)?;
        match tokio::time::timeout(REDIS_TIMEOUT, applied).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(RedisError::Closed.into()),
            Err(_) => Err(RedisError::NotConnected(
                "interest changes were not applied within 2 s".into(),
            )
            .into()),
        }
    }

    async fn to_topic(
        &self,
        tenant: &str,
        dest: &str,
        content: &Content,
        stored: Option<Position>,
    ) -> Result<Forwarded, ClusterError> {
        let channel = keys::topic_channel(tenant, dest);
        let envelope = self
            .envelope(tenant, Kind::Topic, None, dest, content)
            .stored_at(stored);
        let here = self
            .topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&channel);
        Ok(Forwarded {
            confirmations: vec![self.enqueue(channel, &envelope)?],
            addressed: Vec::new(),
            counts_self: here,
        })
    }

    async fn to_queue(
        &self,
        tenant: &str,
        dest: &str,
        content: &Content,
    ) -> Result<Forwarded, ClusterError> {
        let key = keys::consumers(tenant, dest);
        let mut smembers = redis::cmd("SMEMBERS");
        smembers.arg(&key);
        let members: Vec<String> = self.shards.one(Routed::key(&key, smembers)).await?;
        let mut nodes = self.only_live_others(&key, members).await?;
        if nodes.is_empty() {
            return Ok(Forwarded::default());
        }
        nodes.sort();
        let pick = &nodes[self.queue_cursor.fetch_add(1, Ordering::Relaxed) % nodes.len()];
        let envelope = self.envelope(tenant, Kind::Queue, None, dest, content);
        Ok(Forwarded {
            confirmations: vec![self.enqueue(keys::inbox(pick), &envelope)?],
            addressed: vec![pick.clone()],
            counts_self: false,
        })
    }

    async fn append_stream(
        &self,
        key: &str,
        entries: &[&(dyn StreamEntry + Sync)],
        max_len: usize,
    ) -> Result<(), ClusterError> {
        let calls = entries
            .iter()
            .map(|entry| {
                let mut xadd = redis::cmd("XADD");
                xadd.arg(key).arg("MAXLEN").arg("~").arg(max_len).arg("*");
                entry.write_fields(&mut |name, value| {
                    xadd.arg(name).arg(value);
                });
                Routed::key(key, xadd)
            })
            .collect();
        let replies = self
            .shards
            .run_confirmed(
                calls,
                self.settings.replica_acks,
                self.settings.replica_ack_timeout,
            )
            .await;
        for reply in replies {
            reply?;
        }
        Ok(())
    }

    async fn ask_others(&self, query: &Query) -> Result<Replies, ClusterError> {
        Ok(self.ask(query).await?)
    }

    async fn ban(&self, tenant: &str, user: &str, until_ms: u64) -> Result<(), ClusterError> {
        Ok(self.record_ban(tenant, user, until_ms).await?)
    }

    async fn tenant_documents(&self) -> Result<Vec<(String, String)>, ClusterError> {
        let mut all = redis::cmd("HGETALL");
        all.arg(keys::TENANTS);
        Ok(self.shards.one(Routed::key(keys::TENANTS, all)).await?)
    }

    async fn tenant_document(&self, id: &str) -> Result<Option<String>, ClusterError> {
        let mut get = redis::cmd("HGET");
        get.arg(keys::TENANTS).arg(id);
        Ok(self.shards.one(Routed::key(keys::TENANTS, get)).await?)
    }

    async fn put_tenant_document(&self, id: &str, document: &str) -> Result<(), ClusterError> {
        let mut set = redis::cmd("HSET");
        set.arg(keys::TENANTS).arg(id).arg(document);
        self.shards
            .one::<usize>(Routed::key(keys::TENANTS, set))
            .await?;
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(keys::TENANT_CHANNEL).arg(id);
        self.shards
            .one::<usize>(Routed::key(keys::TENANT_CHANNEL, publish))
            .await?;
        Ok(())
    }

    async fn put_plugin(&self, tenant: &str, wasm: Option<&[u8]>) -> Result<(), ClusterError> {
        let key = keys::plugin(tenant);
        let command = match wasm {
            Some(bytes) => {
                let mut set = redis::cmd("SET");
                set.arg(&key).arg(bytes);
                set
            }
            None => {
                let mut del = redis::cmd("DEL");
                del.arg(&key);
                del
            }
        };
        self.shards.one::<()>(Routed::key(&key, command)).await?;
        let mut publish = redis::cmd("PUBLISH");
        publish
            .arg(keys::TENANT_CHANNEL)
            .arg(format!("{}{tenant}", keys::PLUGIN_NOTICE));
        self.shards
            .one::<usize>(Routed::key(keys::TENANT_CHANNEL, publish))
            .await?;
        Ok(())
    }

    async fn plugin(&self, tenant: &str) -> Result<Option<Vec<u8>>, ClusterError> {
        let key = keys::plugin(tenant);
        let mut get = redis::cmd("GET");
        get.arg(&key);
        Ok(self.shards.one(Routed::key(&key, get)).await?)
    }

    async fn cache_get(&self, tenant: &str, key: &str) -> Result<Option<String>, ClusterError> {
        let key = keys::plugin_cache(tenant, key);
        let mut get = redis::cmd("GET");
        get.arg(&key);
        Ok(self.shards.one(Routed::key(&key, get)).await?)
    }

    async fn cache_set(
        &self,
        tenant: &str,
        key: &str,
        value: &str,
        ttl_ms: u64,
    ) -> Result<(), ClusterError> {
        let key = keys::plugin_cache(tenant, key);
        let mut set = redis::cmd("SET");
        set.arg(&key).arg(value).arg("PX").arg(ttl_ms.max(1));
        self.shards.one::<()>(Routed::key(&key, set)).await?;
        Ok(())
    }

    async fn cache_delete(&self, tenant: &str, key: &str) -> Result<(), ClusterError> {
        let key = keys::plugin_cache(tenant, key);
        let mut del = redis::cmd("DEL");
        del.arg(&key);
        self.shards.one::<()>(Routed::key(&key, del)).await?;
        Ok(())
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn describe(&self) -> serde_json::Value {
        let layout = self.shards.layout();
        let shards: Vec<serde_json::Value> = layout
            .topology
            .primaries
            .iter()
            .zip(&layout.links)
            .map(|(primary, link)| {
                json!({
                    "primary": primary.addr,
                    "slots": primary.slots,
                    "connected": link.is_up(),
                })
            })
            .collect();
        json!({
            "mode": if self.shards.is_cluster() { "redis-cluster" } else { "redis" },
            "node": self.settings.node_id,
            "ready": self.is_ready(),
            "shards": shards,
            "unowned_slots": layout.topology.unowned(),
            "error": self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        })
    }

    fn metrics(&self) -> Vec<Sample> {
        let s = &self.stats;
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let layout = self.shards.layout();
        let mut samples = vec![
            Sample::counter(
                "stompbox_redis_reconnects_total",
                "Reconnections to Redis.",
                count(&s.reconnects),
            ),
            Sample::counter(
                "stompbox_redis_resyncs_total",
                "Times Redis had lost this node's keys.",
                count(&s.resyncs),
            ),
            Sample::counter(
                "stompbox_cluster_forwarded_total",
                "Messages sent to other nodes.",
                count(&s.forwarded),
            ),
            Sample::counter(
                "stompbox_cluster_received_total",
                "Messages received from other nodes.",
                count(&s.received),
            ),
            Sample::counter(
                "stompbox_presence_lookups_total",
                "Presence reads that went to Redis.",
                count(&s.presence_lookups),
            ),
            Sample::counter(
                "stompbox_ingress_handled_total",
                "Ingress messages this node handled.",
                count(&s.ingress_handled),
            ),
            Sample::counter(
                "stompbox_cluster_send_failures_total",
                "Messages for other nodes that Redis did not take.",
                count(&s.send_failures),
            ),
            Sample::gauge(
                "stompbox_redis_unowned_slots",
                "Hash slots no reachable Redis primary serves (0 when every slot is served).",
                layout.topology.unowned() as u64,
            ),
        ];
        let per_shard: [(&'static str, &'static str, bool); 3] = [
            (
                "stompbox_redis_shard_up",
                "Whether this node's connection to a Redis primary is up, by primary.",
                false,
            ),
            (
                "stompbox_redis_shard_commands_total",
                "Commands this node sent to a Redis primary, by primary.",
                true,
            ),
            (
                "stompbox_redis_shard_failures_total",
                "Commands to a Redis primary that failed (connection lost, no answer), by primary.",
                true,
            ),
        ];
        for (index, (name, help, counter)) in per_shard.into_iter().enumerate() {
            for link in &layout.links {
                let value = match index {
                    0 => u64::from(link.is_up()),
                    1 => count(&link.commands),
                    _ => count(&link.failures),
                };
                let sample = if counter {
                    Sample::counter(name, help, value)
                } else {
                    Sample::gauge(name, help, value)
                };
                samples.push(sample.labelled("shard", &link.addr));
            }
        }
        samples
    }
}
