//! The Redis backplane: node liveness, cluster-wide user presence, targeted forwarding of user
//! messages, topic channels joined only while there are local subscribers, queue consumers per
//! node, and the seed system's ingress channel.
//!
//! Split by job: [`keys`] (the layout of keys and channels), [`presence`] (where a user is, and
//! its cache), [`outbound`] (the pipelined sender of messages for other nodes), [`supervisor`]
//! (connecting and reconnecting), [`connected`] (one connected period: announce, heartbeat,
//! dispatch, leave) and [`ingress`] (which node handles an ingress message). This file holds
//! the shared state and the [`Backplane`] implementation.
//!
//! A message published in the instant between a user's CONNECT on node A and B's cache
//! learning of it (the time of one Redis PUBLISH, well under a millisecond on a LAN) is routed
//! as before the CONNECT: the API answers `"online": false` when that means nobody received
//! it. Dead nodes' presence entries are ignored at once (the liveness filter) and removed
//! lazily by whichever node notices them.

mod connected;
mod ingress;
pub mod keys;
mod outbound;
mod presence;
pub mod queues;
pub mod store;
mod supervisor;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::IntoConnectionInfo;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use super::{Backplane, ClusterError, Envelope, Forwarded, Holders, Kind, LocalNode};
use crate::broker::{Content, Interest, Position};
use crate::metrics::Sample;
use connected::Control;
use presence::{LiveNodes, PresenceCache, UserKey};

/// Tunables of the Redis backplane.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://host:port/db`.
    pub url: String,
    /// This node's id.
    pub node_id: String,
    /// A node is dead once its heartbeat is this old.
    pub node_ttl: Duration,
    /// How long a presence lookup is trusted without an invalidation.
    pub presence_cache: Duration,
    /// `(tenant, channel)` pairs of seed-format ingress channels.
    pub ingress: Vec<(String, String)>,
}

/// Why the Redis backplane could not do something.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The configured URL does not parse.
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
    Encode(serde_json::Error),
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
    client: redis::Client,
    /// The command connection while connected (set and cleared by the supervisor).
    conn: RwLock<Option<MultiplexedConnection>>,
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
    /// This node has seen the store's `since` key (see [`store`]): finding it gone later
    /// means Redis lost what it held.
    store_seen: AtomicBool,
    tasks: TaskTracker,
    stop: CancellationToken,
    /// Counters.
    pub stats: ClusterStats,
}

impl RedisBackplane {
    /// A backplane for `settings`; nothing connects until it is started.
    pub fn new(settings: RedisSettings) -> Result<Arc<RedisBackplane>, RedisError> {
        let invalid = |source| RedisError::InvalidUrl {
            url: settings.url.clone(),
            source,
        };
        let info = settings
            .url
            .as_str()
            .into_connection_info()
            .map_err(invalid)?;
        // Without TCP_NODELAY a PUBLISH written while the previous one is unacknowledged
        // waits for the peer's delayed ACK (up to 40 ms on Linux): the cross-node tail.
        let info = info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info).map_err(invalid)?;
        Ok(Arc::new(RedisBackplane {
            presence_cache: Mutex::new(PresenceCache::new(settings.presence_cache)),
            settings,
            client,
            conn: RwLock::new(None),
            ready: AtomicBool::new(false),
            last_error: Mutex::new(None),
            control: OnceLock::new(),
            outgoing: OnceLock::new(),
            refresh: OnceLock::new(),
            live_nodes: Mutex::new(LiveNodes::default()),
            topics: Mutex::new(HashSet::new()),
            queue_cursor: AtomicUsize::new(0),
            store_seen: AtomicBool::new(false),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            stats: ClusterStats::default(),
        }))
    }

    /// The command connection, or why there is none.
    fn connection(&self) -> Result<MultiplexedConnection, RedisError> {
        if !self.ready.load(Ordering::Acquire) {
            let reason = self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_else(|| "not connected".into());
            return Err(RedisError::NotConnected(reason));
        }
        self.conn
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| RedisError::NotConnected("not connected".into()))
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
            .spawn(supervisor::run(self.clone(), local, control_rx, stop));
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
        let mut conn = self.connection()?;
        let nodes = match holders {
            Holders::Known(nodes) => nodes.to_vec(),
            Holders::Cached => self.presence(&mut conn, tenant, user).await?,
            Holders::Reread { skip } => {
                self.presence_changed(&(tenant.to_string(), user.to_string()));
                let mut nodes = self.presence(&mut conn, tenant, user).await?;
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
        self.connection()?;
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
        let mut conn = self.connection()?;
        let key = keys::consumers(tenant, dest);
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(RedisError::from)?;
        let mut nodes = self.only_live_others(&mut conn, &key, members).await?;
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

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn describe(&self) -> serde_json::Value {
        json!({
            "mode": "redis",
            "node": self.settings.node_id,
            "ready": self.is_ready(),
            "error": self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        })
    }

    fn metrics(&self) -> Vec<Sample> {
        let s = &self.stats;
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
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
        ]
    }
}
