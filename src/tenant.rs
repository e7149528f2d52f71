//! A tenant: a separate namespace of destinations and users with its own API keys, allowed
//! origins and policy, and the routing of a message published in it: first to this node's
//! subscribers through the tenant's broker, then to exactly the other nodes that need it
//! through the cluster backplane.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::broker::cursor::{CursorQueue, StreamCursor};
use crate::broker::{
    BacklogLimits, Broker, Budget, Content, Endpoint, Interest, Position, RouteError, Subscription,
    Target,
};
use crate::cluster::{Backplane, ClusterError, Forwarded, Holders};
use crate::config::{ServerConfig, TenantConfig, DEFAULT_TENANT};
use crate::history::order::Gate;
use crate::history::queue::QueueStore;
use crate::history::{Cursor, History, HistoryError};
use crate::metrics::{DropReason, Metrics};
use crate::plugin::{self, Capabilities, PluginLimits, PluginSlot};
use crate::policy::Policy;
use crate::upstream::Upstream;
use crate::web::origin::AllowedOrigins;

/// A tenant: a separate namespace of destinations and users with its own keys and policy.
#[derive(Debug)]
pub struct Tenant {
    /// The tenant id.
    pub id: String,
    /// Its routing core on this node.
    pub broker: Arc<Broker>,
    /// What an operator may change without closing the tenant's sessions: its API keys and
    /// allowed origins, and the settings they are part of.
    live: std::sync::RwLock<LiveSettings>,
    plugin: Arc<PluginSlot>,
    /// What decides identity and permissions: the plugin slot (tests put another policy here).
    policy: Arc<dyn Policy>,
    pub(crate) cluster: Arc<dyn Backplane>,
    pub(crate) metrics: Arc<Metrics>,
    /// Where its user messages are stored first; `None` when the tenant opted out.
    history: Option<Arc<dyn History>>,
    /// User destinations whose messages are not stored (prefixes).
    history_exclude: Vec<String>,
    /// Topics with history: a prefix and the store of the topics it starts, longest first.
    topic_history: TopicStores,
    /// One stream's messages (a user's, or a topic's) are stored and handed to the broker
    /// one at a time, so offsets reach subscriptions in order; streams are spread over these
    /// by hash.
    turns: Vec<tokio::sync::Mutex<()>>,
    /// With a store shared by the cluster: for each stream with a subscription here that
    /// read it, the order its messages are delivered in (see [`crate::history::order`]).
    orders: Mutex<HashMap<StreamOf, Arc<StreamOrder>>>,
    /// With a store shared by the cluster: where cursors that moved are queued, and the
    /// queue's end until [`Tenant::start`] hands it to the task that saves them.
    cursor_queue: Option<CursorQueue>,
    cursor_moves: Mutex<Option<mpsc::UnboundedReceiver<Arc<StreamCursor>>>>,
    /// This tenant, for the tasks it starts (fills, cursor saving, queue reads).
    me: OnceLock<Weak<Tenant>>,
    /// Its queues in a store shared by the cluster, and what reads them (see [`queues`]).
    durable: Option<queues::Durable>,
    /// Its backend side: messages to its application prefixes, and connection events.
    pub upstream: Upstream,
    /// Users who may not connect until when (ms): bans from the disconnect API.
    bans: Mutex<HashMap<String, u64>>,
    /// Cancelled when the tenant is deleted or replaced, and at shutdown (a child of the
    /// node's shutdown token): every connection of the tenant ends on it.
    pub closing: CancellationToken,
    /// Why it closed, for its sessions' ERROR frames.
    closed_because: OnceLock<String>,
    /// Sessions connected to it on this node, and the signal that the last one ended.
    sessions: std::sync::atomic::AtomicUsize,
    sessions_gone: tokio::sync::Notify,
}

mod queues;

/// How many streams' stores may run at once per tenant.
const TURNS: usize = 64;
/// How long a failed read of a gap waits before it is tried again.
const FILL_RETRY: Duration = Duration::from_millis(250);
/// Cursors taken from the queue in one round.
const CURSOR_BATCH: usize = 256;
/// How often cursors with deliveries not counted yet are looked at again.
const CURSOR_TICK: Duration = Duration::from_millis(10);
/// The shortest time between two rounds of cursor saving that wrote something: how far, at
/// most, a cursor in the store is behind what a socket was given, so how many frames a node
/// killed that instant may have its users' next sessions get again.
const CURSOR_ROUND: Duration = Duration::from_millis(1);

/// Saves the cursors that moved, until the tenant is gone: at once for what an ACK moved,
/// and for `auto` deliveries once they count (see [`crate::broker::cursor`]), looking again
/// every [`CURSOR_TICK`] while some wait.
async fn save_cursors(
    mut moves: mpsc::UnboundedReceiver<Arc<StreamCursor>>,
    history: Arc<dyn History>,
    metrics: Arc<Metrics>,
) {
    // By address: a cursor queued again while it waits here is looked at once.
    let mut waiting: HashMap<usize, Arc<StreamCursor>> = HashMap::new();
    let mut arrived = Vec::with_capacity(CURSOR_BATCH);
    loop {
        if waiting.is_empty() {
            if moves.recv_many(&mut arrived, CURSOR_BATCH).await == 0 {
                return;
            }
        } else {
            tokio::select! {
                n = moves.recv_many(&mut arrived, CURSOR_BATCH) => if n == 0 { return },
                () = tokio::time::sleep(CURSOR_TICK) => {}
            }
        }
        let round = tokio::time::Instant::now();
        for cursor in arrived.drain(..) {
            waiting.insert(Arc::as_ptr(&cursor) as usize, cursor);
        }
        let now_ms = crate::util::unix_ms();
        let mut saves = Vec::new();
        waiting.retain(|_, cursor| {
            let still_waiting = cursor.take(now_ms);
            if let Some(position) = cursor.unsaved() {
                saves.push((
                    cursor.clone(),
                    Cursor {
                        position,
                        crossed: cursor.crossed,
                    },
                ));
            }
            still_waiting
        });
        metrics
            .store
            .cursor_saves
            .fetch_add(saves.len() as u64, Ordering::Relaxed);
        if saves.is_empty() {
            continue;
        }
        // One call for the round.
        let saves: Vec<(String, String, Cursor)> = saves
            .into_iter()
            .map(|(moved, cursor)| (moved.user.clone(), moved.dest.clone(), cursor))
            .collect();
        if let Err(e) = history.advance_many(&saves).await {
            debug!(error = %e, "cursors were not saved; each is saved again when it moves or its subscription ends");
        }
        // Rounds at most every CURSOR_ROUND: under load, each round saves many cursors in
        // one call, and a cursor that moved again meanwhile is written once.
        tokio::time::sleep_until(round + CURSOR_ROUND).await;
    }
}

/// Topics with history: a prefix and the store of the topics it starts.
pub type TopicStores = Vec<(String, Arc<dyn History>)>;

/// Where a tenant keeps what it accepted.
#[derive(Debug, Default)]
pub struct TenantStores {
    /// Its user messages; `None` when it opted out.
    pub history: Option<Arc<dyn History>>,
    /// Its topics with history.
    pub topics: TopicStores,
    /// Its queues, in a store shared by the cluster; `None`: in this node's memory.
    pub queues: Option<Arc<dyn QueueStore>>,
}

/// Whose stream: a user's (with the messages of all their destinations) or a topic's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum StreamOf {
    User(String),
    Topic(String),
}

impl StreamOf {
    fn name(&self) -> &str {
        match self {
            StreamOf::User(name) | StreamOf::Topic(name) => name,
        }
    }
}

/// One stream's stored messages on their way to its subscriptions here.
#[derive(Debug)]
struct StreamOrder {
    gate: Mutex<Gate<(String, Content)>>,
    seeded: tokio::sync::OnceCell<()>,
}

impl StreamOrder {
    fn of(stream: &StreamOf) -> StreamOrder {
        StreamOrder {
            gate: Mutex::new(match stream {
                StreamOf::User(_) => Gate::new(),
                StreamOf::Topic(_) => Gate::passing_below_seed(),
            }),
            seeded: tokio::sync::OnceCell::new(),
        }
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, Gate<(String, Content)>> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a tenant's plugin may reach: its backend (when configured) and its cache (in Redis
/// when the node shares one with others, else in memory).
fn plugin_reach(config: &TenantConfig, cluster: &Arc<dyn Backplane>) -> Capabilities {
    let backend: Arc<dyn plugin::Backend> = match &config.plugin_backend {
        Some(b) => Arc::new(plugin::HttpBackend::new(plugin::BackendAccess {
            allowed_hosts: b
                .allowed_hosts
                .iter()
                .filter_map(|h| crate::web::client::parse_authority(h).ok())
                .collect(),
            timeout: std::time::Duration::from_millis(b.timeout_ms),
            max_response_bytes: b.max_response_bytes,
        })),
        None => Arc::new(plugin::NoBackend {
            tenant: config.id.clone(),
        }),
    };
    let c = &config.plugin_cache;
    let limits = plugin::CacheLimits {
        max_bytes: c.max_bytes,
        max_entry_bytes: c.max_entry_bytes,
        max_ttl: std::time::Duration::from_millis(c.max_ttl_ms),
    };
    let cache = if cluster.is_shared() {
        let shared = SharedPluginCache {
            cluster: cluster.clone(),
            tenant: config.id.clone(),
        };
        plugin::PluginCache::new(Box::new(shared), limits)
    } else {
        plugin::PluginCache::in_memory(limits)
    };
    Capabilities::new(backend, Arc::new(cache))
}

/// A tenant's plugin cache kept in the cluster's Redis.
#[derive(Debug)]
struct SharedPluginCache {
    cluster: Arc<dyn Backplane>,
    tenant: String,
}

#[async_trait::async_trait]
impl plugin::CacheStore for SharedPluginCache {
    async fn get(&self, key: &str) -> Result<Option<String>, String> {
        self.cluster
            .cache_get(&self.tenant, key)
            .await
            .map_err(|e| e.to_string())
    }

    async fn set(&self, key: &str, value: &str, ttl: std::time::Duration) -> Result<(), String> {
        self.cluster
            .cache_set(&self.tenant, key, value, ttl.as_millis() as u64)
            .await
            .map_err(|e| e.to_string())
    }

    async fn delete(&self, key: &str) -> Result<(), String> {
        self.cluster
            .cache_delete(&self.tenant, key)
            .await
            .map_err(|e| e.to_string())
    }
}

impl Tenant {
    pub(crate) fn new(
        config: &TenantConfig,
        server: &ServerConfig,
        node_backlog: &Arc<Budget>,
        stores: TenantStores,
        cluster: Arc<dyn Backplane>,
        metrics: Arc<Metrics>,
        node_id: &str,
    ) -> Tenant {
        let TenantStores {
            history,
            topics: topic_history,
            queues,
        } = stores;
        let plugin = Arc::new(PluginSlot::new(
            &config.id,
            config.plugin.clone(),
            config.settings.clone(),
            plugin_reach(config, &cluster),
            PluginLimits {
                deadline: std::time::Duration::from_millis(config.plugin_deadline_ms),
                memory_bytes: config.plugin_memory_bytes,
                concurrency: config.plugin_concurrency,
            },
        ));
        let shared = history.as_ref().is_some_and(|h| h.shared());
        let stores = history.is_some() || !topic_history.is_empty();
        let mut topic_history = topic_history;
        topic_history.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        let (cursor_queue, cursor_moves) = if shared {
            let (queue, moves) = mpsc::unbounded_channel();
            (Some(queue), Some(moves))
        } else {
            (None, None)
        };
        Tenant {
            upstream: Upstream::new(config, node_id, &cluster),
            bans: Mutex::new(HashMap::new()),
            closing: CancellationToken::new(),
            closed_because: OnceLock::new(),
            sessions: Default::default(),
            sessions_gone: tokio::sync::Notify::new(),
            durable: queues.map(queues::Durable::new),
            orders: Mutex::new(HashMap::new()),
            cursor_queue,
            cursor_moves: Mutex::new(cursor_moves),
            me: OnceLock::new(),
            policy: plugin.clone(),
            plugin,
            cluster,
            metrics,
            id: config.id.clone(),
            broker: Arc::new(Broker::new(BacklogLimits::new(
                server.max_queue_backlog,
                server.max_queue_backlog_bytes,
                node_backlog.clone(),
            ))),
            live: std::sync::RwLock::new(LiveSettings::of(config)),
            // Only a tenant that stores takes turns.
            turns: (0..if stores { TURNS } else { 0 })
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            history,
            history_exclude: config.history_exclude.clone(),
            topic_history,
        }
    }

    /// The store of this tenant's user messages, unless it opted out.
    pub fn history(&self) -> Option<&Arc<dyn History>> {
        self.history.as_ref()
    }

    /// Where user messages to `dest` (`/queue/notice`) are stored, unless the tenant or the
    /// destination's prefix opted out.
    pub fn history_for(&self, dest: &str) -> Option<&Arc<dyn History>> {
        self.history.as_ref().filter(|_| {
            !self
                .history_exclude
                .iter()
                .any(|p| dest.starts_with(p.as_str()))
        })
    }

    /// Where messages of topic `dest` are stored, when a `topic_history` prefix covers it.
    pub fn topic_history_for(&self, dest: &str) -> Option<&Arc<dyn History>> {
        self.topic_history
            .iter()
            .find(|(prefix, _)| dest.starts_with(prefix.as_str()))
            .map(|(_, history)| history)
    }

    /// The store of `stream`'s messages.
    fn store_of(&self, stream: &StreamOf) -> Option<&Arc<dyn History>> {
        match stream {
            StreamOf::User(_) => self.history.as_ref(),
            StreamOf::Topic(dest) => self.topic_history_for(dest),
        }
    }

    /// The turn of the stream named `name` (a user, or a topic).
    fn turn(&self, name: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(name);
        &self.turns[(hash as usize) % self.turns.len()]
    }

    /// The policy that decides identity and permissions for this tenant.
    pub fn policy(&self) -> Arc<dyn Policy> {
        self.policy.clone()
    }

    /// This tenant, closing when `closing` is cancelled (a child of the node's shutdown).
    pub(crate) fn closing_with(mut self, closing: CancellationToken) -> Tenant {
        self.closing = closing;
        self
    }

    /// This tenant, about to replace `previous` (same id, other settings, every session of
    /// `previous` closed): it takes over what `previous` holds in this node's memory, so the
    /// replacement loses nothing: the broker (its queues' waiting messages) and, while the
    /// history settings are the same, the stores.
    pub(crate) fn taking_over(mut self, previous: &Tenant) -> Tenant {
        self.broker = previous.broker.clone();
        let (before, now) = (previous.config(), self.config());
        let same_history = before.history == now.history
            && before.history_max_messages == now.history_max_messages
            && before.history_max_age_ms == now.history_max_age_ms
            && before.topic_history == now.topic_history;
        if same_history {
            self.history.clone_from(&previous.history);
            self.topic_history.clone_from(&previous.topic_history);
        }
        self
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
        let change = self.broker.unsubscribe(sub);
        if let Some(Interest::Topic { dest, held: false }) = &change {
            // Unless a subscription came meanwhile, which may be opening the stream.
            if !self.broker.has_subscribers(dest) {
                self.lock_orders().remove(&StreamOf::Topic(dest.clone()));
            }
        }
        self.mirror(change);
    }

    /// Records a session of `user` (cluster presence for the first).
    pub fn user_connected(&self, user: &str, session: &Arc<Endpoint>) {
        self.mirror(self.broker.user_connected(user, session));
    }

    /// Forgets a session of `user` (cluster presence for the last).
    pub fn user_disconnected(&self, user: &str, session: &Arc<Endpoint>) {
        let change = self.broker.user_disconnected(user, session);
        if change.is_some() {
            self.lock_orders().remove(&StreamOf::User(user.to_string()));
        }
        self.mirror(change);
    }

    fn lock_orders(&self) -> std::sync::MutexGuard<'_, HashMap<StreamOf, Arc<StreamOrder>>> {
        self.orders.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where a stream subscription queues its cursor's moves to have them saved at once (a
    /// store shared by the cluster, where a node that dies must not take its cursors along);
    /// `None`: saved when the subscription ends.
    pub fn cursor_queue(&self) -> Option<CursorQueue> {
        self.cursor_queue.clone()
    }

    /// Starts the tenant's own task: saving the cursors that moved. Called once the runtime
    /// runs (the node starting).
    pub fn start(self: &Arc<Self>) {
        let _ = self.me.set(Arc::downgrade(self));
        let moves = self
            .cursor_moves
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let (Some(moves), Some(history)) = (moves, self.history.clone()) {
            tokio::spawn(save_cursors(moves, history, self.metrics.clone()));
        }
        self.start_queues();
        self.upstream.start();
    }

    /// Makes ready to deliver `user`'s stored messages here in order, before a subscription
    /// of theirs reads the stream: with a store shared by the cluster, waits until the user's
    /// presence here is visible to every node, then seeds the user's order with the stream's
    /// head. Once per user while they have sessions here.
    pub async fn open_stream(&self, user: &str) -> Result<(), HistoryError> {
        self.open(StreamOf::User(user.to_string())).await
    }

    /// [`Tenant::open_stream`] for a topic with history: waits until this node's subscription
    /// of the topic's channel is applied, then seeds the topic's order. Once per topic while
    /// it has subscribers here.
    pub async fn open_topic_stream(&self, dest: &str) -> Result<(), HistoryError> {
        self.open(StreamOf::Topic(dest.to_string())).await
    }

    async fn open(&self, stream: StreamOf) -> Result<(), HistoryError> {
        let Some(history) = self.store_of(&stream).filter(|h| h.shared()) else {
            return Ok(());
        };
        let order = self
            .lock_orders()
            .entry(stream.clone())
            .or_insert_with(|| Arc::new(StreamOrder::of(&stream)))
            .clone();
        order
            .seeded
            .get_or_try_init(|| async {
                self.cluster
                    .settled()
                    .await
                    .map_err(|e| HistoryError::Unavailable(e.to_string()))?;
                let head = history.head(stream.name()).await?;
                let fill = {
                    let mut gate = order.gate();
                    let released = gate.seed(head);
                    self.release(&stream, released.deliver);
                    released.fill
                };
                if let Some(after) = fill {
                    self.spawn_fill(&stream, &order, after);
                }
                Ok::<(), HistoryError>(())
            })
            .await?;
        Ok(())
    }

    /// Hands a stored message of `user` to their subscriptions here, in the user's order: the
    /// number of subscriptions it reached now (0 while it waits for an earlier one).
    pub fn deliver_stored(&self, user: &str, dest: &str, content: Content, at: Position) -> usize {
        self.deliver_in_order(&StreamOf::User(user.to_string()), dest, content, at)
    }

    /// Hands a stored message of topic `dest` to its subscriptions here, in the topic's order
    /// when a subscription here read its stream.
    pub fn deliver_stored_topic(&self, dest: &str, content: Content, at: Position) -> usize {
        self.deliver_in_order(&StreamOf::Topic(dest.to_string()), dest, content, at)
    }

    fn deliver_in_order(
        &self,
        stream: &StreamOf,
        dest: &str,
        content: Content,
        at: Position,
    ) -> usize {
        let order = match self.store_of(stream) {
            Some(h) if h.shared() => self.lock_orders().get(stream).cloned(),
            _ => None,
        };
        let Some(order) = order else {
            // No subscription here reads the stream: nothing to order for.
            return self.deliver_now(stream, dest.to_string(), content, at);
        };
        // Delivered under the gate's lock: what it lets through in order must reach the
        // subscriptions in that order, which two threads delivering apart could swap.
        let (delivered, fill) = {
            let mut gate = order.gate();
            let released = gate.offer(at, (dest.to_string(), content));
            (self.release(stream, released.deliver), released.fill)
        };
        if let Some(after) = fill {
            self.spawn_fill(stream, &order, after);
        }
        delivered
    }

    /// Reads again what may have been missed while the cluster connection was down, for
    /// every stream with a subscription here that read it.
    pub fn catch_up(&self) {
        let orders: Vec<(StreamOf, Arc<StreamOrder>)> = self
            .lock_orders()
            .iter()
            .map(|(u, o)| (u.clone(), o.clone()))
            .collect();
        for (stream, order) in orders {
            let after = order.gate().catch_up();
            if let Some(after) = after {
                self.spawn_fill(&stream, &order, after);
            }
        }
    }

    fn deliver_now(
        &self,
        stream: &StreamOf,
        dest: String,
        content: Content,
        at: Position,
    ) -> usize {
        let target = match stream {
            StreamOf::User(user) => Target::User {
                user: user.clone(),
                dest,
            },
            StreamOf::Topic(topic) => Target::Topic(topic.clone()),
        };
        match self.broker.publish_at(&target, content, Some(at)) {
            Ok(routed) => routed.delivered,
            Err(e) => {
                warn!(tenant = %self.id, error = %e, "a stored message was not delivered here");
                0
            }
        }
    }

    fn release(&self, stream: &StreamOf, messages: Vec<(Position, (String, Content))>) -> usize {
        messages
            .into_iter()
            .map(|(at, (dest, content))| self.deliver_now(stream, dest, content, at))
            .sum()
    }

    /// Reads `stream` after `after` for the gap its order found, and delivers what it lets
    /// through; tries again while the store cannot be read and the order still stands.
    fn spawn_fill(&self, stream: &StreamOf, order: &Arc<StreamOrder>, after: Position) {
        let Some(me) = self.me.get().and_then(Weak::upgrade) else {
            return;
        };
        let Some(history) = self.store_of(stream).cloned() else {
            return;
        };
        let (stream, order) = (stream.clone(), order.clone());
        tokio::spawn(async move {
            let mut after = after;
            loop {
                match history.since(stream.name(), after).await {
                    Ok(replay) => {
                        let found = replay
                            .messages
                            .into_iter()
                            .map(|m| (m.position.offset, (m.dest, m.content)))
                            .collect();
                        let fill = {
                            let mut gate = order.gate();
                            let released = gate.filled(replay.epoch, found, replay.next_offset);
                            me.metrics
                                .store
                                .filled
                                .fetch_add(released.deliver.len() as u64, Ordering::Relaxed);
                            me.release(&stream, released.deliver);
                            released.fill
                        };
                        match fill {
                            Some(next) => after = next,
                            None => return,
                        }
                    }
                    Err(e) => {
                        debug!(tenant = %me.id, stream = stream.name(), error = %e, "a gap in a stream's messages could not be read yet");
                        tokio::time::sleep(FILL_RETRY).await;
                        let current = me
                            .lock_orders()
                            .get(&stream)
                            .is_some_and(|o| Arc::ptr_eq(o, &order));
                        if !current {
                            return;
                        }
                        let retry = order.gate().fill_failed();
                        match retry {
                            Some(next) => after = next,
                            None => return,
                        }
                    }
                }
            }
        });
    }

    /// The tenant's plugin slot (status, reload).
    pub fn plugin(&self) -> &Arc<PluginSlot> {
        &self.plugin
    }

    /// Refuses `user`'s connections until `until_ms` (a later ban of the same user wins).
    pub fn ban(&self, user: &str, until_ms: u64) {
        let mut bans = self.bans.lock().unwrap_or_else(|e| e.into_inner());
        let now = crate::util::unix_ms();
        bans.retain(|_, until| *until > now);
        if until_ms > now {
            let until = bans.entry(user.to_string()).or_insert(until_ms);
            *until = (*until).max(until_ms);
        }
    }

    /// Until when `user` may not connect, while a ban is in force.
    pub fn banned_until(&self, user: &str) -> Option<u64> {
        let bans = self.bans.lock().unwrap_or_else(|e| e.into_inner());
        bans.get(user)
            .copied()
            .filter(|until| *until > crate::util::unix_ms())
    }

    /// Closes `user`'s sessions on this node, each with an ERROR saying it was disconnected
    /// by the server: how many.
    pub fn disconnect_user(&self, user: &str) -> usize {
        let sessions = self.broker.user_endpoints(user);
        for session in &sessions {
            session.kick();
        }
        sessions.len()
    }

    /// Closes every connection of the tenant with an ERROR that gives `why` (the operator
    /// deleted or replaced it); the first reason given is the one they are told.
    pub fn close(&self, why: &str) {
        let _ = self.closed_because.set(why.to_string());
        self.closing.cancel();
    }

    /// Why the tenant closed, once it did (not at shutdown, which says so itself).
    pub fn closed_because(&self) -> Option<&str> {
        self.closed_because.get().map(String::as_str)
    }

    /// True when `key` is one of the tenant's API keys. Compares every key in full, so timing
    /// does not reveal how much of a key matched.
    pub fn accepts_api_key(&self, key: &str) -> bool {
        let mut found = false;
        for candidate in &self.live().config.api_keys {
            found |= crate::util::constant_time_eq(candidate.as_bytes(), key.as_bytes());
        }
        found
    }

    /// True when the tenant has at least one API key.
    pub fn has_api_keys(&self) -> bool {
        !self.live().config.api_keys.is_empty()
    }

    /// The web pages that may open browser connections now.
    pub fn allowed_origins(&self) -> Arc<AllowedOrigins> {
        self.live().origins.clone()
    }

    /// The settings the tenant serves with now.
    pub fn config(&self) -> TenantConfig {
        self.live().config.clone()
    }

    /// Takes `config` without closing a session when it differs from the running settings
    /// only in what may change live (API keys, allowed origins); false when anything else
    /// differs, and the tenant must be replaced.
    pub fn update_live(&self, config: &TenantConfig) -> bool {
        let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
        let mut same_otherwise = config.clone();
        same_otherwise.api_keys.clone_from(&live.config.api_keys);
        same_otherwise
            .allowed_origins
            .clone_from(&live.config.allowed_origins);
        if same_otherwise != live.config {
            return false;
        }
        *live = LiveSettings::of(config);
        true
    }

    fn live(&self) -> std::sync::RwLockReadGuard<'_, LiveSettings> {
        self.live.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a session that connected to the tenant; [`Tenant::session_ended`] counts it out.
    pub fn session_started(&self) {
        self.sessions.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts out a session counted by [`Tenant::session_started`].
    pub fn session_ended(&self) {
        if self.sessions.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.sessions_gone.notify_waiters();
        }
    }

    /// Sessions connected to the tenant on this node.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Acquire)
    }

    /// Waits until the tenant has no session here, or `limit` passed; true when none is left.
    pub async fn sessions_closed(&self, limit: Duration) -> bool {
        let until = tokio::time::Instant::now() + limit;
        loop {
            let gone = self.sessions_gone.notified();
            if self.sessions() == 0 {
                return true;
            }
            if tokio::time::timeout_at(until, gone).await.is_err() {
                return self.sessions() == 0;
            }
        }
    }
}

/// A tenant's settings that change without a restart of the tenant.
#[derive(Debug)]
struct LiveSettings {
    config: TenantConfig,
    origins: Arc<AllowedOrigins>,
}

impl LiveSettings {
    fn of(config: &TenantConfig) -> LiveSettings {
        LiveSettings {
            config: config.clone(),
            origins: Arc::new(AllowedOrigins::new(&config.allowed_origins)),
        }
    }
}

/// Tells the plugin engine, once per process, where compiled plugins are kept
/// (`server.plugin_compile_cache`, `plugin_compile_cache_dir`).
pub fn configure_plugins(server: &ServerConfig) {
    plugin::engine::configure_compile_cache(
        match (
            &server.plugin_compile_cache,
            &server.plugin_compile_cache_dir,
        ) {
            (false, _) => plugin::engine::CompileCache::Off,
            (true, Some(dir)) => plugin::engine::CompileCache::Dir(dir.clone()),
            (true, None) => plugin::engine::CompileCache::Default,
        },
    );
}

/// The tenants a node serves now, by id: looked up by every connection and publish, changed
/// by the operator (the admin API, a config reload) while the node runs.
#[derive(Debug, Default)]
pub struct Tenants {
    by_id: std::sync::RwLock<HashMap<String, Arc<Tenant>>>,
}

impl Tenants {
    /// The tenant with id `id`.
    pub fn get(&self, id: &str) -> Option<Arc<Tenant>> {
        self.read().get(id).cloned()
    }

    /// The tenant for a connection that named none.
    pub fn default_tenant(&self) -> Option<Arc<Tenant>> {
        self.get(DEFAULT_TENANT)
    }

    /// Every tenant, by id.
    pub fn all(&self) -> Vec<Arc<Tenant>> {
        let mut all: Vec<Arc<Tenant>> = self.read().values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Serves `tenant` under its id; the tenant it replaces, if any.
    pub fn insert(&self, tenant: Arc<Tenant>) -> Option<Arc<Tenant>> {
        let _ = tenant.me.set(Arc::downgrade(&tenant));
        self.by_id
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant.id.clone(), tenant)
    }

    /// Stops serving tenant `id`; the tenant, if it was served.
    pub fn remove(&self, id: &str) -> Option<Arc<Tenant>> {
        self.by_id
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Tenant>>> {
        self.by_id.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl FromIterator<Tenant> for Tenants {
    fn from_iter<I: IntoIterator<Item = Tenant>>(tenants: I) -> Tenants {
        let all = Tenants::default();
        for tenant in tenants {
            all.insert(Arc::new(tenant));
        }
        all
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
            Target::Topic(dest) => match self.topic_history_for(dest) {
                Some(history) => {
                    // As for a user: the turn is held until the message is queued for Redis.
                    let turn = self.turn(dest).lock().await;
                    let appended = self.store(history, dest, dest, &content).await?;
                    delivery.stored = true;
                    delivery.local =
                        self.deliver_stored_topic(dest, content.clone(), appended.position);
                    let forwarded = self
                        .cluster
                        .to_topic(&self.id, dest, &content, Some(appended.position))
                        .await;
                    drop(turn);
                    Some(Self::confirm_topic(forwarded, confirm).await)
                }
                None => {
                    delivery.local = self.broker.publish(target, content.clone())?.delivered;
                    let forwarded = self.cluster.to_topic(&self.id, dest, &content, None).await;
                    Some(Self::confirm_topic(forwarded, confirm).await)
                }
            },
            Target::User { user, dest } => match self.history_for(dest) {
                Some(history) => {
                    // The turn is held until the message is queued for other nodes, so this
                    // node sends one user's messages in offset order.
                    let turn = self.turn(user).lock().await;
                    let appended = self.store(history, user, dest, &content).await?;
                    delivery.stored = true;
                    delivery.local =
                        self.deliver_stored(user, dest, content.clone(), appended.position);
                    let holders = match &appended.holders {
                        Some(nodes) => Holders::Known(nodes),
                        None => Holders::Cached,
                    };
                    let forwarded = self
                        .cluster
                        .to_user(
                            &self.id,
                            user,
                            dest,
                            &content,
                            Some(appended.position),
                            holders,
                        )
                        .await;
                    drop(turn);
                    let stored = Some(appended.position);
                    Some(
                        self.confirm_user(user, dest, &content, stored, forwarded, confirm)
                            .await,
                    )
                }
                None => {
                    delivery.local = self.broker.publish(target, content.clone())?.delivered;
                    let forwarded = self
                        .cluster
                        .to_user(&self.id, user, dest, &content, None, Holders::Cached)
                        .await;
                    Some(
                        self.confirm_user(user, dest, &content, None, forwarded, confirm)
                            .await,
                    )
                }
            },
            Target::Queue(dest) if self.durable.is_some() => {
                delivery.nodes = self.push_queue(dest, &content).await?;
                delivery.stored = true;
                delivery.queued = true;
                None
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

    /// Stores a message in `owner`'s stream (a user, or a topic) of `history`, counting it.
    async fn store(
        &self,
        history: &Arc<dyn History>,
        owner: &str,
        dest: &str,
        content: &Content,
    ) -> Result<crate::history::Appended, RouteError> {
        let appended = history.append(owner, dest, content).await.map_err(|e| {
            self.metrics.store.refused.fetch_add(1, Ordering::Relaxed);
            RouteError::NotStored(e.to_string())
        })?;
        self.metrics.store.stored.fetch_add(1, Ordering::Relaxed);
        Ok(appended)
    }

    /// Other nodes with subscribers of the topic that received it (confirmed), or that it was
    /// queued for.
    async fn confirm_topic(
        forwarded: Result<Forwarded, ClusterError>,
        confirm: bool,
    ) -> Result<usize, ClusterError> {
        let forwarded = forwarded?;
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
    async fn confirm_user(
        &self,
        user: &str,
        dest: &str,
        content: &Content,
        stored: Option<Position>,
        forwarded: Result<Forwarded, ClusterError>,
        confirm: bool,
    ) -> Result<usize, ClusterError> {
        let forwarded = forwarded?;
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
            .to_user(
                &self.id,
                user,
                dest,
                content,
                stored,
                Holders::Reread { skip: &reached },
            )
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
