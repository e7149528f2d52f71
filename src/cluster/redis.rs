//! The Redis backplane: node liveness, cluster-wide user presence, targeted forwarding of user
//! messages, topic channels joined only while there are local subscribers, queue consumers
//! per node, and the seed system's ingress channel.
//!
//! Keys and channels (all prefixed `sb:`):
//! - `sb:nodes`: sorted set, node id → last heartbeat (ms). A node whose heartbeat is older
//!   than the expiry (10 s by default) is dead: nobody routes to it any more.
//! - `sb:alive:{node}`: set with the expiry at every heartbeat (`SET … GET`); finding it gone
//!   before it could expire means Redis lost its data, and the node re-announces everything.
//! - `sb:{tenant}:presence:{user}`: set of the nodes holding sessions of that user.
//! - `sb:{tenant}:consumers:{queue}`: set of the nodes with consumers of that queue.
//! - channel `sb:inbox:{node}`: messages for one node (user and queue messages).
//! - channel `sb:{tenant}:topic:{dest}`: a topic; subscribed only by nodes with subscribers.
//! - channel `sb:presence`: "a user's presence changed", to invalidate presence caches.
//!
//! The presence read stays off the critical path: each node caches "user → nodes", and every
//! change of a user's presence (first session on a node, last one gone) is announced on
//! `sb:presence`, which drops that entry from every node's cache. An entry older than
//! `presence_cache_ms` (2 s by default; the net under a lost notice) is still used while a
//! background task reads it again, so only a user a node has not routed to lately costs a
//! message a round trip to Redis. (Expiring entries outright made every user's next message
//! wait for one: at 10,000 msgs/s to 1,000 users that was 500 inline reads a second, and the
//! messages queued behind them set the cross-node p99.)
//!
//! A message published in the instant between a user's CONNECT on node A and B's cache
//! learning of it (the time of one Redis PUBLISH, well under a millisecond on a LAN) is routed
//! as before the CONNECT: the API answers `"online": false` when that means nobody received it. Dead nodes' presence entries are ignored at once (the liveness filter)
//! and removed lazily by whichever node notices them.
//!
//! All writes of presence and interest are state-based: the supervisor announces what the
//! node holds now, so a reconnect (or Redis restarting empty) is repaired by announcing
//! everything again, and queued changes from an outage are simply dropped.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Backplane, ClusterError, Confirmation, Envelope, Forwarded, Inbound, Kind};
use crate::broker::{Content, Interest};

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

/// (tenant, user) → the other live nodes holding the user, and when that was read.
type PresenceCache = HashMap<(String, String), CachedPresence>;

/// One user's nodes as last read from Redis.
#[derive(Debug)]
struct CachedPresence {
    nodes: Vec<String>,
    read_at: Instant,
    /// A background re-read is queued or running; the entry is served meanwhile.
    refreshing: bool,
}

impl CachedPresence {
    fn read_now(nodes: Vec<String>) -> CachedPresence {
        CachedPresence {
            nodes,
            read_at: Instant::now(),
            refreshing: false,
        }
    }
}

#[derive(Debug)]
struct Outgoing {
    channel: String,
    payload: Vec<u8>,
    done: oneshot::Sender<Result<usize, ClusterError>>,
}

/// Most messages taken from the queue for one pipeline.
const SEND_BATCH: usize = 512;
/// Most messages waiting for the cluster connection; beyond it, forwarding fails fast.
const SEND_QUEUE: usize = 65_536;
/// A PUBLISH carrying several messages stops growing at about this size.
const GROUP_BYTES: usize = 1 << 20;

/// Messages for one channel sent in one PUBLISH: a JSON array of envelopes (a lone message
/// goes as a bare envelope).
struct Group {
    channel: String,
    payload: Vec<u8>,
    done: Vec<oneshot::Sender<Result<usize, ClusterError>>>,
}

/// Gathers queued messages by channel, in order. Redis and every receiving node pay their
/// per-command cost (parsing, dispatch, a wake-up) once per group instead of once per message.
fn group_by_channel(batch: &mut Vec<Outgoing>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for item in batch.drain(..) {
        let open = groups
            .iter_mut()
            .rev()
            .find(|g| g.channel == item.channel && g.payload.len() < GROUP_BYTES);
        match open {
            Some(group) => {
                if group.done.len() == 1 {
                    group.payload.insert(0, b'[');
                }
                group.payload.push(b',');
                group.payload.extend_from_slice(&item.payload);
                group.done.push(item.done);
            }
            None => groups.push(Group {
                channel: item.channel,
                payload: item.payload,
                done: vec![item.done],
            }),
        }
    }
    for group in &mut groups {
        if group.done.len() > 1 {
            group.payload.push(b']');
        }
    }
    groups
}

#[derive(Debug)]
enum Control {
    Interest(String, Interest),
}

/// The Redis backplane.
#[derive(Debug)]
pub struct RedisBackplane {
    settings: RedisSettings,
    client: redis::Client,
    conn: RwLock<Option<MultiplexedConnection>>,
    ready: AtomicBool,
    control: mpsc::UnboundedSender<Control>,
    control_rx: Mutex<Option<mpsc::UnboundedReceiver<Control>>>,
    outgoing: mpsc::Sender<Outgoing>,
    outgoing_rx: Mutex<Option<mpsc::Receiver<Outgoing>>>,
    presence_cache: Mutex<PresenceCache>,
    refresh: mpsc::Sender<(String, String)>,
    refresh_rx: Mutex<Option<mpsc::Receiver<(String, String)>>>,
    live_nodes: Mutex<(HashSet<String>, Option<Instant>)>,
    topics: Mutex<HashSet<String>>,
    queue_cursor: AtomicUsize,
    last_error: Mutex<Option<String>>,
    /// Counters.
    pub stats: ClusterStats,
}

/// Most entries in the presence cache before it starts over.
const PRESENCE_CACHE_MAX: usize = 100_000;
/// A cached presence older than this many cache lifetimes is not served while it is re-read
/// (its refreshes keep failing): the next message reads it inline instead.
const PRESENCE_STALE_LIMIT: u32 = 4;
/// Presence re-reads sent to Redis in one pipeline.
const REFRESH_BATCH: usize = 256;
/// Presence re-reads waiting at most; beyond it an old entry is served and asked for again on
/// its next use.
const REFRESH_QUEUE: usize = 65_536;
/// How long the list of live nodes is reused.
const LIVE_NODES_CACHE: Duration = Duration::from_millis(500);
/// Timeout of one Redis command and of connecting.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn unavailable(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Unavailable(e.to_string())
}

fn inbox(node: &str) -> String {
    format!("sb:inbox:{node}")
}

fn topic_channel(tenant: &str, dest: &str) -> String {
    format!("sb:{tenant}:topic:{dest}")
}

fn presence_key(tenant: &str, user: &str) -> String {
    format!("sb:{tenant}:presence:{user}")
}

fn consumers_key(tenant: &str, dest: &str) -> String {
    format!("sb:{tenant}:consumers:{dest}")
}

const PRESENCE_CHANNEL: &str = "sb:presence";

/// The receiver of one of the backplane's loops; `None` if that loop already runs.
fn take_receiver<T>(slot: &Mutex<Option<mpsc::Receiver<T>>>) -> Option<mpsc::Receiver<T>> {
    slot.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// Waits for work, then takes up to `limit` items into `batch` (emptied first). False at
/// shutdown or once every sender is gone.
async fn next_batch<T>(
    requests: &mut mpsc::Receiver<T>,
    batch: &mut Vec<T>,
    limit: usize,
    shutdown: &CancellationToken,
) -> bool {
    batch.clear();
    tokio::select! {
        _ = shutdown.cancelled() => false,
        n = requests.recv_many(batch, limit) => n > 0,
    }
}

impl RedisBackplane {
    /// A backplane for `settings`; nothing connects until [`RedisBackplane::run`].
    pub fn new(settings: RedisSettings) -> Result<Arc<RedisBackplane>, String> {
        let info = settings
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("invalid Redis URL '{}': {e}", settings.url))?;
        // Without TCP_NODELAY a PUBLISH written while the previous one is unacknowledged
        // waits for the peer's delayed ACK (up to 40 ms on Linux): the cross-node tail.
        let info = info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info)
            .map_err(|e| format!("invalid Redis URL '{}': {e}", settings.url))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = mpsc::channel(SEND_QUEUE);
        let (refresh, refresh_rx) = mpsc::channel(REFRESH_QUEUE);
        Ok(Arc::new(RedisBackplane {
            settings,
            client,
            conn: RwLock::new(None),
            ready: AtomicBool::new(false),
            control: tx,
            control_rx: Mutex::new(Some(rx)),
            outgoing: out_tx,
            outgoing_rx: Mutex::new(Some(out_rx)),
            presence_cache: Mutex::new(HashMap::new()),
            refresh,
            refresh_rx: Mutex::new(Some(refresh_rx)),
            live_nodes: Mutex::new((HashSet::new(), None)),
            topics: Mutex::new(HashSet::new()),
            queue_cursor: AtomicUsize::new(0),
            last_error: Mutex::new(None),
            stats: ClusterStats::default(),
        }))
    }

    fn connection(&self) -> Result<MultiplexedConnection, ClusterError> {
        if !self.ready.load(Ordering::Acquire) {
            let reason = self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_else(|| "not connected".into());
            return Err(ClusterError::Unavailable(reason));
        }
        self.conn
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| unavailable("not connected"))
    }

    async fn live_nodes(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<HashSet<String>, ClusterError> {
        {
            let cached = self.live_nodes.lock().unwrap_or_else(|e| e.into_inner());
            if cached.1.is_some_and(|at| at.elapsed() < LIVE_NODES_CACHE) {
                return Ok(cached.0.clone());
            }
        }
        let since = now_ms().saturating_sub(self.settings.node_ttl.as_millis() as u64);
        let nodes: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg("sb:nodes")
            .arg(since)
            .arg("+inf")
            .query_async(conn)
            .await
            .map_err(unavailable)?;
        let nodes: HashSet<String> = nodes.into_iter().collect();
        *self.live_nodes.lock().unwrap_or_else(|e| e.into_inner()) =
            (nodes.clone(), Some(Instant::now()));
        Ok(nodes)
    }

    /// Live nodes other than this one holding `user`'s sessions.
    ///
    /// A cached answer older than `presence_cache_ms` is still served while a background task
    /// re-reads it: a message never waits on Redis for a user this node has routed to
    /// recently, and a user's entry changes at once anyway when a `sb:presence` notice
    /// drops it. Only a user this node has not routed to (or whose entry was dropped) costs
    /// a round trip inline.
    async fn presence(
        &self,
        conn: &mut MultiplexedConnection,
        tenant: &str,
        user: &str,
    ) -> Result<Vec<String>, ClusterError> {
        let key = (tenant.to_string(), user.to_string());
        {
            let mut cache = self
                .presence_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = cache.get_mut(&key) {
                let age = entry.read_at.elapsed();
                let ttl = self.settings.presence_cache;
                if age < ttl {
                    return Ok(entry.nodes.clone());
                }
                if age < ttl * PRESENCE_STALE_LIMIT {
                    if !entry.refreshing && self.refresh.try_send(key.clone()).is_ok() {
                        entry.refreshing = true;
                    }
                    return Ok(entry.nodes.clone());
                }
            }
        }
        let nodes = self
            .read_presence(conn, std::slice::from_ref(&key))
            .await?
            .pop()
            .unwrap_or_default();
        let mut cache = self
            .presence_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if cache.len() >= PRESENCE_CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, CachedPresence::read_now(nodes.clone()));
        Ok(nodes)
    }

    /// Re-reads the presence entries [`RedisBackplane::presence`] found old, a pipeline of
    /// `SMEMBERS` per batch. A result is stored only if its entry is still cached: a
    /// `sb:presence` notice that dropped it meanwhile may be newer than what was read.
    async fn refresh_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(mut requests) = take_receiver(&self.refresh_rx) else {
            return;
        };
        let mut keys = Vec::with_capacity(REFRESH_BATCH);
        while next_batch(&mut requests, &mut keys, REFRESH_BATCH, &shutdown).await {
            let read = match self.connection() {
                Ok(mut conn) => self.read_presence(&mut conn, &keys).await,
                Err(e) => Err(e),
            };
            let mut cache = self
                .presence_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match read {
                Ok(read) => {
                    for (key, nodes) in keys.drain(..).zip(read) {
                        if let Some(entry) = cache.get_mut(&key) {
                            *entry = CachedPresence::read_now(nodes);
                        }
                    }
                }
                Err(e) => {
                    debug!(error = %e, "presence re-read failed; the entries are read again on use");
                    for key in &keys {
                        if let Some(entry) = cache.get_mut(key) {
                            entry.refreshing = false;
                        }
                    }
                }
            }
        }
    }

    /// The live other nodes holding each (tenant, user) of `keys`, in one pipeline of
    /// `SMEMBERS`.
    async fn read_presence(
        &self,
        conn: &mut MultiplexedConnection,
        keys: &[(String, String)],
    ) -> Result<Vec<Vec<String>>, ClusterError> {
        self.stats
            .presence_lookups
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        let set_keys: Vec<String> = keys.iter().map(|(t, u)| presence_key(t, u)).collect();
        let mut pipe = redis::pipe();
        for set_key in &set_keys {
            pipe.cmd("SMEMBERS").arg(set_key);
        }
        let sets: Vec<Vec<String>> = pipe.query_async(conn).await.map_err(unavailable)?;
        let mut read = Vec::with_capacity(sets.len());
        for (set_key, members) in set_keys.iter().zip(sets) {
            read.push(self.only_live_others(conn, set_key, members).await?);
        }
        Ok(read)
    }

    /// Keeps the live nodes other than this one; removes dead ones from `set_key`.
    async fn only_live_others(
        &self,
        conn: &mut MultiplexedConnection,
        set_key: &str,
        members: Vec<String>,
    ) -> Result<Vec<String>, ClusterError> {
        if members.is_empty() {
            return Ok(members);
        }
        let live = self.live_nodes(conn).await?;
        let (alive, dead): (Vec<String>, Vec<String>) =
            members.into_iter().partition(|n| live.contains(n));
        if !dead.is_empty() {
            debug!(key = set_key, ?dead, "removing dead nodes");
            let _: Result<(), _> = redis::cmd("SREM")
                .arg(set_key)
                .arg(&dead)
                .query_async(conn)
                .await;
        }
        Ok(alive
            .into_iter()
            .filter(|n| *n != self.settings.node_id)
            .collect())
    }

    /// Queues a PUBLISH for the sender task, which pipelines whatever has queued up.
    fn enqueue(&self, channel: String, envelope: &Envelope) -> Result<Confirmation, ClusterError> {
        let payload = serde_json::to_vec(envelope).map_err(unavailable)?;
        let (done, confirmation) = oneshot::channel();
        self.outgoing
            .try_send(Outgoing {
                channel,
                payload,
                done,
            })
            .map_err(|_| unavailable("the queue of messages for other nodes is full"))?;
        Ok(confirmation)
    }

    /// Drains the outgoing queue into pipelined PUBLISHes until shutdown.
    async fn send_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(mut outgoing) = take_receiver(&self.outgoing_rx) else {
            return;
        };
        let mut batch = Vec::with_capacity(SEND_BATCH);
        while next_batch(&mut outgoing, &mut batch, SEND_BATCH, &shutdown).await {
            let groups = group_by_channel(&mut batch);
            let result = match self.connection() {
                Ok(mut conn) => {
                    let mut pipe = redis::pipe();
                    for group in &groups {
                        pipe.cmd("PUBLISH").arg(&group.channel).arg(&group.payload);
                    }
                    pipe.query_async::<Vec<usize>>(&mut conn)
                        .await
                        .map_err(unavailable)
                }
                Err(e) => Err(e),
            };
            let sent: usize = groups.iter().map(|g| g.done.len()).sum();
            match result {
                Ok(receivers) => {
                    self.stats
                        .forwarded
                        .fetch_add(sent as u64, Ordering::Relaxed);
                    for (group, n) in groups.into_iter().zip(receivers) {
                        for done in group.done {
                            let _ = done.send(Ok(n));
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, lost = sent, "messages for other nodes not sent");
                    self.stats
                        .send_failures
                        .fetch_add(sent as u64, Ordering::Relaxed);
                    for done in groups.into_iter().flat_map(|g| g.done) {
                        let _ = done.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Connects, announces, listens; reconnects with backoff until `shutdown`.
    pub async fn run(self: Arc<Self>, inbound: Arc<dyn Inbound>, shutdown: CancellationToken) {
        tokio::spawn(self.clone().send_loop(shutdown.clone()));
        tokio::spawn(self.clone().refresh_loop(shutdown.clone()));
        let Some(mut control) = self
            .control_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let mut backoff = Duration::from_millis(100);
        let mut connected_before = false;
        let mut outage_logged = false;
        loop {
            // What changed while disconnected is in the broker's state, re-announced below.
            while control.try_recv().is_ok() {}
            if shutdown.is_cancelled() {
                return;
            }
            let attempt = tokio::time::timeout(REDIS_TIMEOUT * 2, self.connect()).await;
            let (conn, pubsub) = match attempt {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => {
                    self.mark_down(&e.to_string(), &mut outage_logged);
                    if sleep_or_shutdown(backoff, &shutdown).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
                Err(_) => {
                    self.mark_down("connecting timed out", &mut outage_logged);
                    if sleep_or_shutdown(backoff, &shutdown).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            match self
                .session(
                    conn,
                    pubsub,
                    &inbound,
                    &mut control,
                    &shutdown,
                    connected_before,
                )
                .await
            {
                Ok(()) => return,
                Err(e) => {
                    connected_before = true;
                    self.mark_down(&e, &mut outage_logged);
                }
            }
        }
    }

    fn mark_down(&self, reason: &str, logged: &mut bool) {
        self.ready.store(false, Ordering::Release);
        *self.conn.write().unwrap_or_else(|e| e.into_inner()) = None;
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_string());
        if !*logged {
            warn!(
                error = reason,
                "Redis unreachable; serving local sessions and retrying"
            );
            *logged = true;
        }
    }

    async fn connect(&self) -> redis::RedisResult<(MultiplexedConnection, redis::aio::PubSub)> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let pubsub = self.client.get_async_pubsub().await?;
        Ok((conn, pubsub))
    }

    /// One connected period. `Ok` = shut down cleanly; `Err` = the connection was lost.
    async fn session(
        &self,
        mut conn: MultiplexedConnection,
        pubsub: redis::aio::PubSub,
        inbound: &Arc<dyn Inbound>,
        control: &mut mpsc::UnboundedReceiver<Control>,
        shutdown: &CancellationToken,
        reconnected: bool,
    ) -> Result<(), String> {
        let (mut sink, mut stream) = pubsub.split();
        let node = self.settings.node_id.clone();
        let mut channels = vec![inbox(&node), PRESENCE_CHANNEL.to_string()];
        channels.extend(self.settings.ingress.iter().map(|(_, c)| c.clone()));
        let holdings = inbound.holdings();
        let mut topics = HashSet::new();
        for (tenant, interests) in &holdings {
            for interest in interests {
                if let Interest::Topic(dest, true) = interest {
                    topics.insert(topic_channel(tenant, dest));
                }
            }
        }
        channels.extend(topics.iter().cloned());
        sink.subscribe(&channels).await.map_err(|e| e.to_string())?;
        *self.topics.lock().unwrap_or_else(|e| e.into_inner()) = topics;

        self.heartbeat(&mut conn).await?;
        self.announce_all(&mut conn, &holdings).await?;
        self.presence_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        *self.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        self.ready.store(true, Ordering::Release);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if reconnected {
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            info!("reconnected to Redis; presence and subscriptions restored");
        } else {
            info!(node = %node, "joined the cluster");
        }

        let mut beat = tokio::time::interval(self.settings.node_ttl / 4);
        beat.tick().await;
        let mut ingress_seen: HashMap<String, (u64, Instant)> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.leave(&mut conn, inbound).await;
                    return Ok(());
                }
                message = stream.next() => {
                    let Some(message) = message else {
                        return Err("the Redis connection was closed".into());
                    };
                    self.on_message(&mut conn, inbound, message, &mut ingress_seen).await;
                }
                change = control.recv() => {
                    let Some(Control::Interest(tenant, interest)) = change else { return Ok(()) };
                    self.apply(&mut conn, &mut sink, &tenant, &interest).await?;
                }
                _ = beat.tick() => {
                    if self.heartbeat(&mut conn).await? {
                        warn!("Redis lost this node's keys (restarted empty?); announcing everything again");
                        self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                        self.presence_cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
                        self.announce_all(&mut conn, &inbound.holdings()).await?;
                    }
                    let cutoff = Instant::now() - Duration::from_secs(60);
                    ingress_seen.retain(|_, (_, at)| *at > cutoff);
                }
            }
        }
    }

    /// Refreshes this node's liveness; `Ok(true)` when Redis had lost it (data loss).
    async fn heartbeat(&self, conn: &mut MultiplexedConnection) -> Result<bool, String> {
        let node = &self.settings.node_id;
        let ttl_ms = self.settings.node_ttl.as_millis() as u64;
        let (previous, _): (Option<String>, usize) = redis::pipe()
            .cmd("SET")
            .arg(format!("sb:alive:{node}"))
            .arg("1")
            .arg("PX")
            .arg(ttl_ms)
            .arg("GET")
            .cmd("ZADD")
            .arg("sb:nodes")
            .arg(now_ms())
            .arg(node)
            .query_async(conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(previous.is_none())
    }

    async fn announce_all(
        &self,
        conn: &mut MultiplexedConnection,
        holdings: &[(String, Vec<Interest>)],
    ) -> Result<(), String> {
        let mut pipe = redis::pipe();
        let mut count = 0;
        for (tenant, interests) in holdings {
            for interest in interests {
                if !self.push_interest(&mut pipe, tenant, interest) {
                    continue;
                }
                count += 1;
                if count == 1000 {
                    pipe.query_async::<()>(conn)
                        .await
                        .map_err(|e| e.to_string())?;
                    pipe = redis::pipe();
                    count = 0;
                }
            }
        }
        if count == 0 {
            // Redis refuses an empty pipeline.
            return Ok(());
        }
        pipe.query_async::<()>(conn)
            .await
            .map_err(|e| e.to_string())
    }

    /// Adds to `pipe` what mirrors one presence or queue interest in Redis (`SADD` when held,
    /// `SREM` when given up; presence changes are also announced for cache invalidation).
    /// Topics are channel subscriptions, not keys: `false` for them.
    fn push_interest(&self, pipe: &mut redis::Pipeline, tenant: &str, interest: &Interest) -> bool {
        let node = &self.settings.node_id;
        let verb = |held: bool| if held { "SADD" } else { "SREM" };
        match interest {
            Interest::User(user, online) => {
                pipe.cmd(verb(*online))
                    .arg(presence_key(tenant, user))
                    .arg(node)
                    .ignore();
                pipe.cmd("PUBLISH")
                    .arg(PRESENCE_CHANNEL)
                    .arg(format!("{tenant}\0{user}"))
                    .ignore();
                true
            }
            Interest::Queue(dest, consuming) => {
                pipe.cmd(verb(*consuming))
                    .arg(consumers_key(tenant, dest))
                    .arg(node)
                    .ignore();
                true
            }
            Interest::Topic(..) => false,
        }
    }

    async fn apply(
        &self,
        conn: &mut MultiplexedConnection,
        sink: &mut redis::aio::PubSubSink,
        tenant: &str,
        interest: &Interest,
    ) -> Result<(), String> {
        let Interest::Topic(dest, subscribed) = interest else {
            let mut pipe = redis::pipe();
            self.push_interest(&mut pipe, tenant, interest);
            return pipe
                .query_async::<()>(conn)
                .await
                .map_err(|e| e.to_string());
        };
        let channel = topic_channel(tenant, dest);
        {
            let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
            if *subscribed {
                topics.insert(channel.clone());
            } else {
                topics.remove(&channel);
            }
        }
        let result = if *subscribed {
            sink.subscribe(&channel).await
        } else {
            sink.unsubscribe(&channel).await
        };
        result.map_err(|e| e.to_string())
    }

    async fn on_message(
        &self,
        conn: &mut MultiplexedConnection,
        inbound: &Arc<dyn Inbound>,
        message: redis::Msg,
        ingress_seen: &mut HashMap<String, (u64, Instant)>,
    ) {
        let channel = message.get_channel_name().to_string();
        let payload = message.get_payload_bytes();
        if channel == PRESENCE_CHANNEL {
            if let Some((tenant, user)) = std::str::from_utf8(payload)
                .ok()
                .and_then(|p| p.split_once('\0'))
            {
                self.presence_cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&(tenant.to_string(), user.to_string()));
            }
            return;
        }
        if let Some((tenant, _)) = self.settings.ingress.iter().find(|(_, c)| *c == channel) {
            // Every node hears the channel; the one that claims the n-th occurrence of these
            // bytes handles it. All subscribers see one channel's messages in the same order,
            // so identical payloads sent twice are two claims, not one.
            let digest = crate::plugin::engine::hex(&Sha256::digest(payload));
            let entry = ingress_seen
                .entry(digest.clone())
                .or_insert((0, Instant::now()));
            entry.0 += 1;
            entry.1 = Instant::now();
            let claim = format!("sb:{tenant}:ingress:{digest}:{}", entry.0);
            let won: Option<String> = redis::cmd("SET")
                .arg(&claim)
                .arg(&self.settings.node_id)
                .arg("NX")
                .arg("PX")
                .arg(60_000)
                .query_async(conn)
                .await
                .unwrap_or(None);
            if won.is_some() {
                self.stats.ingress_handled.fetch_add(1, Ordering::Relaxed);
                inbound.ingress(tenant, payload);
            }
            return;
        }
        let envelopes = if payload.first() == Some(&b'[') {
            serde_json::from_slice::<Vec<Envelope>>(payload)
        } else {
            serde_json::from_slice::<Envelope>(payload).map(|e| vec![e])
        };
        match envelopes {
            Ok(envelopes) => {
                for envelope in envelopes {
                    if envelope.origin != self.settings.node_id {
                        self.stats.received.fetch_add(1, Ordering::Relaxed);
                        inbound.deliver(envelope);
                    }
                }
            }
            Err(e) => warn!(channel, error = %e, "unreadable message on a cluster channel"),
        }
    }

    /// On shutdown: tells the others at once instead of letting the heartbeat expire.
    async fn leave(&self, conn: &mut MultiplexedConnection, inbound: &Arc<dyn Inbound>) {
        let node = &self.settings.node_id;
        let mut pipe = redis::pipe();
        for (tenant, interests) in inbound.holdings() {
            for interest in interests {
                let withdrawn = match interest {
                    Interest::User(user, _) => Interest::User(user, false),
                    Interest::Queue(dest, _) => Interest::Queue(dest, false),
                    Interest::Topic(..) => continue,
                };
                self.push_interest(&mut pipe, &tenant, &withdrawn);
            }
        }
        pipe.cmd("ZREM").arg("sb:nodes").arg(node).ignore();
        pipe.cmd("DEL").arg(format!("sb:alive:{node}")).ignore();
        let _ = tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<()>(conn)).await;
        self.ready.store(false, Ordering::Release);
    }
}

async fn sleep_or_shutdown(wait: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(wait) => false,
    }
}

#[async_trait]
impl Backplane for RedisBackplane {
    fn interest(&self, tenant: &str, change: &Interest) {
        let _ = self
            .control
            .send(Control::Interest(tenant.to_string(), change.clone()));
    }

    async fn to_user(
        &self,
        tenant: &str,
        user: &str,
        dest: &str,
        content: &Content,
    ) -> Result<Forwarded, ClusterError> {
        let mut conn = self.connection()?;
        let nodes = self.presence(&mut conn, tenant, user).await?;
        if nodes.is_empty() {
            return Ok(Forwarded::default());
        }
        let envelope = Envelope::new(
            &self.settings.node_id,
            tenant,
            Kind::User,
            Some(user),
            dest,
            content,
        );
        let confirmations = nodes
            .iter()
            .map(|node| self.enqueue(inbox(node), &envelope))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Forwarded {
            nodes: nodes.len(),
            confirmations,
            counts_self: false,
        })
    }

    async fn to_topic(
        &self,
        tenant: &str,
        dest: &str,
        content: &Content,
    ) -> Result<Forwarded, ClusterError> {
        self.connection()?;
        let channel = topic_channel(tenant, dest);
        let envelope = Envelope::new(
            &self.settings.node_id,
            tenant,
            Kind::Topic,
            None,
            dest,
            content,
        );
        let here = self
            .topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&channel);
        Ok(Forwarded {
            nodes: 0,
            confirmations: vec![self.enqueue(channel, &envelope)?],
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
        let key = consumers_key(tenant, dest);
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut nodes = self.only_live_others(&mut conn, &key, members).await?;
        if nodes.is_empty() {
            return Ok(Forwarded::default());
        }
        nodes.sort();
        let pick = &nodes[self.queue_cursor.fetch_add(1, Ordering::Relaxed) % nodes.len()];
        let envelope = Envelope::new(
            &self.settings.node_id,
            tenant,
            Kind::Queue,
            None,
            dest,
            content,
        );
        Ok(Forwarded {
            nodes: 1,
            confirmations: vec![self.enqueue(inbox(pick), &envelope)?],
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
}

#[cfg(test)]
mod grouping_tests {
    use super::*;

    fn outgoing(
        channel: &str,
        payload: &str,
    ) -> (Outgoing, oneshot::Receiver<Result<usize, ClusterError>>) {
        let (done, rx) = oneshot::channel();
        let item = Outgoing {
            channel: channel.into(),
            payload: payload.as_bytes().to_vec(),
            done,
        };
        (item, rx)
    }

    #[test]
    fn messages_for_one_channel_travel_together_in_order() {
        let (a1, _r1) = outgoing("a", r#"{"n":1}"#);
        let (b1, _r2) = outgoing("b", r#"{"n":2}"#);
        let (a2, _r3) = outgoing("a", r#"{"n":3}"#);
        let mut batch = vec![a1, b1, a2];
        let groups = group_by_channel(&mut batch);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].channel, "a");
        assert_eq!(groups[0].payload, br#"[{"n":1},{"n":3}]"#);
        assert_eq!(groups[0].done.len(), 2);
        assert_eq!(
            groups[1].payload, br#"{"n":2}"#,
            "a lone message is a bare envelope"
        );
    }
}
