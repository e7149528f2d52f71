//! Keeps the node in the cluster, shard by shard: one loop that owns the subscription
//! connections (one per primary), heartbeats, announces what the node holds, applies interest
//! changes, dispatches what arrives (envelopes from other nodes, presence notices, ingress),
//! and repairs what breaks, until the backplane stops and the node leaves.
//!
//! Repair is state-based. When a primary's connection is made again (it restarted, or a
//! replica took over at a new address), or a slot moved, the loop reconciles every
//! subscription connection with the channels this node wants on that primary now, announces
//! again the presence and queue keys that live there, and tells the node to read its stored
//! messages again ([`LocalNode::resumed`]): what was sent to it meanwhile may not have
//! arrived. Changes that failed meanwhile need no queue: the announcement writes what the node
//! holds now. A primary that stays down leaves only its own slots failing (503 for its users
//! and queues); the others keep serving.
//!
//! The order on joining matters: subscribe to this node's inbox first, then make the node
//! live, then announce its users, so no node can route to it before it listens.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::ingress::{Claims, CLAIM_TTL_MS};
use super::shards::{Layout, Routed};
use super::slots;
use super::subscriber::{Event, Source, Subscriber};
use super::{keys, RedisBackplane, RedisError, REDIS_TIMEOUT};
use crate::broker::Interest;
use crate::cluster::{Envelope, LocalNode};

/// A change for the loop to apply.
#[derive(Debug)]
pub enum Control {
    /// What this node holds for a tenant changed.
    Interest(String, Interest),
    /// Answer once every change before it is applied.
    Settled(tokio::sync::oneshot::Sender<()>),
}

/// Most presence and queue announcements in one round of pipelines.
const ANNOUNCE_BATCH: usize = 1000;
/// Most interest changes taken from the queue at once: a storm of users connecting together
/// costs a pipeline per batch, not a round trip per user.
const CONTROL_BATCH: usize = 1000;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How often a Redis Cluster's map is read again when nothing prompted it: a primary added,
/// or replicas that were still listed as primaries when the map was read, are seen within it.
const MAP_EVERY: Duration = Duration::from_secs(10);
/// At most this long between attempts to reach what is down: a replica that took over is
/// found within it.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The subscription connection to one primary and what it is subscribed to.
struct Listener {
    subscriber: Subscriber,
    /// The primary's connect count when this was made: a new count means it must be made
    /// again (the primary's connection was lost meanwhile).
    connects: u64,
    /// Channels subscribed on it (sharded in a cluster, classic on a single Redis).
    channels: HashSet<String>,
    /// It also carries the classic channels (presence notices, ingress).
    classic: bool,
}

/// The loop's state.
struct Membership {
    bp: Arc<RedisBackplane>,
    local: Arc<dyn LocalNode>,
    events: mpsc::UnboundedSender<(Source, Event)>,
    listeners: HashMap<Arc<str>, Listener>,
    /// Topic channels this node wants (it has local subscribers).
    topics: HashSet<String>,
    /// The node has joined once: later repairs tell it to read what it may have missed.
    joined: bool,
    /// Something may have been missed since the last repair (a moved slot's subscription).
    gap: bool,
    /// Primaries whose presence and queue keys are not announced since they came (back):
    /// kept until an announcement on them succeeds.
    unannounced: HashSet<Arc<str>>,
    claims: Claims,
}

/// Runs the node's membership until `stop`, then leaves the cluster.
pub async fn run(
    bp: Arc<RedisBackplane>,
    local: Arc<dyn LocalNode>,
    mut control: mpsc::UnboundedReceiver<Control>,
    stop: CancellationToken,
) {
    let (events, mut arrived) = mpsc::unbounded_channel();
    let mut m = Membership {
        bp: bp.clone(),
        local,
        events,
        listeners: HashMap::new(),
        topics: HashSet::new(),
        joined: false,
        gap: false,
        unannounced: HashSet::new(),
        claims: Claims::default(),
    };
    let mut backoff = FIRST_BACKOFF;
    let mut repair_at = Some(tokio::time::Instant::now());
    let mut outage_logged = false;
    let beat_every = bp.settings.node_ttl / 4;
    let mut beat = tokio::time::interval(beat_every);
    beat.tick().await;
    let beats_per_map = (MAP_EVERY.as_millis() / beat_every.as_millis().max(1)).max(1) as u64;
    let mut beats: u64 = 0;
    let mut changes = Vec::with_capacity(CONTROL_BATCH);
    loop {
        let due = repair_at.unwrap_or_else(|| tokio::time::Instant::now() + MAX_BACKOFF);
        tokio::select! {
            _ = stop.cancelled() => {
                m.leave(&mut control).await;
                return;
            }
            _ = tokio::time::sleep_until(due), if repair_at.is_some() => {
                match m.repair().await {
                    Ok(()) => {
                        backoff = FIRST_BACKOFF;
                        repair_at = None;
                        outage_logged = false;
                    }
                    Err(e) => {
                        m.mark_down(&e, &mut outage_logged);
                        repair_at = Some(tokio::time::Instant::now() + backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            _ = bp.shards.changed(), if repair_at.is_none() => {
                bp.ready.store(bp.shards.layout().serves_every_slot(), Ordering::Release);
                repair_at = Some(tokio::time::Instant::now());
            }
            arrival = arrived.recv() => {
                let Some((source, event)) = arrival else { return };
                if m.on_event(&source, event).await && repair_at.is_none() {
                    repair_at = Some(tokio::time::Instant::now());
                }
            }
            n = control.recv_many(&mut changes, CONTROL_BATCH) => {
                if n == 0 {
                    return;
                }
                m.apply_all(&mut changes).await;
            }
            _ = beat.tick() => {
                if m.joined && m.heartbeat().await {
                    warn!("Redis lost this node's keys (restarted empty?); announcing everything again");
                    bp.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                    if m.announce(None).await.is_err() {
                        let all: Vec<Arc<str>> = m.listeners.keys().cloned().collect();
                        m.unannounced.extend(all);
                        repair_at.get_or_insert_with(tokio::time::Instant::now);
                    }
                    m.note_store(None).await;
                    bp.forget_presence();
                    m.local.resumed();
                }
                m.claims.expire(Instant::now());
                beats += 1;
                if bp.shards.is_cluster() && beats.is_multiple_of(beats_per_map) {
                    bp.shards.mark_stale();
                }
            }
        }
    }
}

impl Membership {
    fn mark_down(&self, reason: &RedisError, logged: &mut bool) {
        self.bp.ready.store(false, Ordering::Release);
        *self.bp.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_string());
        if !*logged {
            warn!(error = %reason, "Redis not fully reachable; serving what can be served and retrying");
            *logged = true;
        }
    }

    /// The channels this node wants on primary `index` of `layout`.
    fn wanted(&self, layout: &Layout, index: usize) -> HashSet<String> {
        let inbox = keys::inbox(&self.bp.settings.node_id);
        let mine = |channel: &String| {
            !layout.topology.cluster
                || layout.topology.owner(slots::slot(channel.as_bytes())) == Some(index)
        };
        std::iter::once(inbox)
            .chain(self.topics.iter().cloned())
            .filter(|c| mine(c))
            .collect()
    }

    /// The classic channels: presence notices and the seed-format ingress channels.
    fn classic_channels(&self) -> Vec<String> {
        let mut channels = vec![
            keys::PRESENCE_CHANNEL.to_string(),
            keys::ASK_CHANNEL.to_string(),
            keys::TENANT_CHANNEL.to_string(),
        ];
        channels.extend(self.bp.settings.ingress.iter().map(|(_, c)| c.clone()));
        channels
    }

    /// Connects what is not connected, and brings every subscription and announcement up to
    /// date with the primaries that came (back). Ok when every slot is served.
    async fn repair(&mut self) -> Result<(), RedisError> {
        let bp = self.bp.clone();
        let served = bp.shards.repair().await;
        let layout = bp.shards.layout();
        let sharded = layout.topology.cluster;
        // Subscription connections: one per connected primary, made again after its loss.
        let mut fresh = Vec::new();
        let live: HashSet<&str> = layout
            .links
            .iter()
            .filter(|l| l.is_up())
            .map(|l| l.addr.as_str())
            .collect();
        self.listeners.retain(|addr, _| live.contains(&**addr));
        for (index, link) in layout.links.iter().enumerate() {
            if !link.is_up() {
                continue;
            }
            let connects = link.connects.load(Ordering::Acquire);
            if self
                .listeners
                .get(link.addr.as_str())
                .is_some_and(|l| l.connects == connects)
            {
                continue;
            }
            self.listeners.remove(link.addr.as_str());
            let Some(info) = bp.shards.info_for(&link.addr) else {
                continue;
            };
            match Subscriber::connect(&link.addr, &info, self.events.clone()).await {
                Ok(subscriber) => {
                    self.listeners.insert(
                        link.addr.as_str().into(),
                        Listener {
                            subscriber,
                            connects,
                            channels: HashSet::new(),
                            classic: false,
                        },
                    );
                    fresh.push(index);
                }
                Err(e) => {
                    warn!(shard = %link.addr, error = %e, "subscription connection failed");
                    bp.shards.drop_link(link);
                }
            }
        }
        // The classic channels ride on one of them.
        if !self.listeners.values().any(|l| l.classic) {
            let classic = self.classic_channels();
            let host = layout
                .links
                .iter()
                .find(|l| self.listeners.contains_key(l.addr.as_str()));
            if let Some(link) = host {
                let listener = self
                    .listeners
                    .get_mut(link.addr.as_str())
                    .expect("listener exists");
                match listener.subscriber.subscribe(&classic, false).await {
                    Ok(()) => listener.classic = true,
                    Err(_) => bp.shards.drop_link(link),
                }
                // Presence notices may have been missed while they were not heard.
                bp.forget_presence();
            }
        }
        // Every listener's channels as this node wants them on its primary now.
        for (index, link) in layout.links.iter().enumerate() {
            let Some(listener) = self.listeners.get(link.addr.as_str()) else {
                continue;
            };
            let wanted = self.wanted(&layout, index);
            let add: Vec<String> = wanted.difference(&listener.channels).cloned().collect();
            let remove: Vec<String> = listener.channels.difference(&wanted).cloned().collect();
            let outcome = async {
                listener.subscriber.subscribe(&add, sharded).await?;
                listener.subscriber.unsubscribe(&remove, sharded).await
            }
            .await;
            match outcome {
                Ok(()) => {
                    let listener = self
                        .listeners
                        .get_mut(link.addr.as_str())
                        .expect("listener exists");
                    listener.channels = wanted;
                }
                Err(e) => {
                    warn!(shard = %link.addr, error = %e, "subscribing failed");
                    bp.shards.drop_link(link);
                }
            }
        }
        *bp.topics.lock().unwrap_or_else(|e| e.into_inner()) = self.topics.clone();
        for &index in &fresh {
            self.unannounced
                .insert(layout.links[index].addr.as_str().into());
        }
        self.unannounced
            .retain(|addr| self.listeners.contains_key(addr));
        if !self.unannounced.is_empty() || self.gap {
            let targets: Vec<usize> = (0..layout.links.len())
                .filter(|&i| self.unannounced.contains(layout.links[i].addr.as_str()))
                .collect();
            // Live before announcing: other nodes route only to live nodes, and after an
            // outage every node's heartbeat is old until it beats again.
            bp.hold_off_pruning();
            self.heartbeat().await;
            if let Err(e) = self.announce(Some(&targets)).await {
                // Said again at the next repair, until it is written.
                warn!(error = %e, "announcing what this node holds failed; retrying");
                return Err(e);
            }
            self.unannounced.clear();
            self.note_store(Some(&targets)).await;
            bp.load_bans(&self.local).await;
            // Tenants changed while this node was away (or before it started) apply now.
            self.local.tenants_changed(None);
            bp.forget_presence();
            if self.joined {
                bp.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                info!(
                    shards = targets.len(),
                    "Redis connection restored; presence and subscriptions restored"
                );
                self.local.resumed();
            } else if served.is_ok() {
                info!(node = %bp.settings.node_id, "joined the cluster");
                self.joined = true;
            } else if !targets.is_empty() {
                // Part of the deployment answers: serve it, and count the rest as an outage.
                self.joined = true;
            }
            self.gap = false;
        }
        served?;
        let complete = layout.serves_every_slot()
            && layout
                .links
                .iter()
                .all(|l| self.listeners.contains_key(l.addr.as_str()));
        if !complete {
            return Err(RedisError::NotConnected(
                "a subscription connection is missing".into(),
            ));
        }
        bp.ready.store(true, Ordering::Release);
        *bp.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    /// Handles what a subscription connection reported; true when a repair is needed.
    async fn on_event(&mut self, source: &Source, event: Event) -> bool {
        let addr = &source.addr;
        // A late event of a connection already replaced says nothing about the new one.
        let current = self
            .listeners
            .get(addr)
            .is_some_and(|l| l.subscriber.id == source.id);
        match event {
            Event::Message { channel, payload } => {
                self.on_message(&channel, &payload).await;
                false
            }
            Event::Unsubscribed(_) | Event::Lost(_) if !current => false,
            Event::Unsubscribed(channel) => {
                // The channel's slot moved: subscribe where it lives now, and read again
                // what may have been sent to it in between.
                if let Some(listener) = self.listeners.get_mut(addr) {
                    listener.channels.remove(&channel);
                }
                self.gap = true;
                self.bp.shards.mark_stale();
                true
            }
            Event::Lost(reason) => {
                let layout = self.bp.shards.layout();
                if self.listeners.remove(addr).is_some() {
                    warn!(shard = %addr, reason, "subscription connection lost");
                }
                if let Some(link) = layout.link_at(addr) {
                    self.bp.shards.drop_link(link);
                }
                true
            }
        }
    }

    async fn on_message(&mut self, channel: &[u8], payload: &[u8]) {
        let bp = &self.bp;
        if channel == keys::PRESENCE_CHANNEL.as_bytes() {
            if let Some((tenant, user)) = keys::parse_presence_notice(payload) {
                bp.presence_changed(&(tenant.to_string(), user.to_string()));
            }
            return;
        }
        if channel == keys::ASK_CHANNEL.as_bytes() {
            bp.answer_asked(&self.local, payload);
            return;
        }
        if channel == keys::TENANT_CHANNEL.as_bytes() {
            match std::str::from_utf8(payload) {
                Ok(notice) => match notice.strip_prefix(keys::PLUGIN_NOTICE) {
                    Some(tenant) => self.local.plugin_changed(tenant),
                    None => self.local.tenants_changed(Some(notice)),
                },
                Err(_) => debug!("a tenant change notice that is not UTF-8"),
            }
            return;
        }
        let ingress = bp
            .settings
            .ingress
            .iter()
            .find(|(_, c)| c.as_bytes() == channel)
            .map(|(t, _)| t.clone());
        if let Some(tenant) = ingress {
            let claim = self.claims.next(&tenant, payload, Instant::now());
            let mut set = redis::cmd("SET");
            set.arg(&claim)
                .arg(&bp.settings.node_id)
                .arg("NX")
                .arg("PX")
                .arg(CLAIM_TTL_MS);
            let won: Option<String> = bp
                .shards
                .one(Routed::key(&claim, set))
                .await
                .unwrap_or(None);
            if won.is_some() {
                bp.stats.ingress_handled.fetch_add(1, Ordering::Relaxed);
                self.local.ingress(&tenant, payload);
            }
            return;
        }
        self.deliver_envelopes(channel, payload);
    }

    /// Delivers the envelopes of a message on an inbox or topic channel (one, or a JSON array).
    fn deliver_envelopes(&self, channel: &[u8], payload: &[u8]) {
        let bp = &self.bp;
        if payload.starts_with(super::asks::REPLY_START) {
            bp.replied(payload);
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
                    if envelope.origin != bp.settings.node_id {
                        bp.stats.received.fetch_add(1, Ordering::Relaxed);
                        self.local.deliver(envelope);
                    }
                }
            }
            Err(e) => {
                let channel = String::from_utf8_lossy(channel);
                warn!(%channel, error = %e, "unreadable message on a cluster channel");
            }
        }
    }

    /// Refreshes this node's liveness and checks every primary answers; true when Redis had
    /// lost the node's liveness key (its data).
    async fn heartbeat(&self) -> bool {
        let bp = &self.bp;
        let node = &bp.settings.node_id;
        let ttl_ms = bp.settings.node_ttl.as_millis() as u64;
        let mut alive = redis::cmd("SET");
        alive
            .arg(keys::alive(node))
            .arg("1")
            .arg("PX")
            .arg(ttl_ms)
            .arg("GET");
        let mut live = redis::cmd("ZADD");
        live.arg(keys::NODES).arg(crate::util::unix_ms()).arg(node);
        let mut batch = vec![
            Routed::key(keys::alive(node), alive),
            Routed::key(keys::NODES, live),
        ];
        // A primary nothing else asked lately is asked too: a stalled one is found here.
        let layout = bp.shards.layout();
        for index in 0..layout.links.len() {
            if let Some(slot) = layout.topology.any_slot_of(index) {
                batch.push(Routed {
                    slot,
                    cmd: redis::cmd("PING"),
                    script: None,
                });
            }
        }
        let mut replies = bp.shards.run(batch).await.into_iter();
        matches!(replies.next(), Some(Ok(Value::Nil)))
    }

    /// Makes Redis show what this node holds on the given primaries (all, for `None`):
    /// withdraws what it announced before and no longer holds (an earlier run under this
    /// node id, or changes lost during an outage), then announces everything it holds now.
    /// Nothing it still holds is withdrawn even for a moment. The first failure, if any.
    async fn announce(&self, only: Option<&[usize]>) -> Result<(), RedisError> {
        let bp = &self.bp;
        let node = &bp.settings.node_id;
        let holdings = self.local.holdings();
        let mut smembers = redis::cmd("SMEMBERS");
        smembers.arg(keys::holdings(node));
        let recorded: HashSet<String> = bp
            .shards
            .one(Routed::key(keys::holdings(node), smembers))
            .await
            .unwrap_or_default();
        let held: HashSet<String> = holdings
            .iter()
            .flat_map(|(tenant, interests)| {
                interests
                    .iter()
                    .filter_map(move |i| keys::holding(tenant, i))
            })
            .collect();
        let stale: Vec<(String, Interest)> = recorded
            .difference(&held)
            .filter_map(|member| keys::parse_holding(member))
            .collect();
        if !stale.is_empty() {
            info!(
                count = stale.len(),
                "withdrawing what this node announced and no longer holds"
            );
        }
        let layout = bp.shards.layout();
        let wanted = |routed: &Routed| match only {
            None => true,
            Some(indexes) => layout
                .topology
                .owner(routed.slot)
                .is_some_and(|i| indexes.contains(&i)),
        };
        // Built whole first: an iterator of borrowing closures held across an await would
        // make this loop's future not `Send`.
        let mut commands = Vec::new();
        for (tenant, interest) in &stale {
            bp.push_interest(&mut commands, tenant, interest);
        }
        for (tenant, interests) in &holdings {
            for interest in interests {
                bp.push_interest(&mut commands, tenant, interest);
            }
        }
        commands.retain(|r| wanted(r));
        let mut first_error = None;
        for batch in commands.chunks(ANNOUNCE_BATCH) {
            for reply in bp.shards.run(batch.to_vec()).await {
                if let Err(e) = reply {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Marks, on each given primary, when it began keeping history, and records that Redis
    /// lost its data when a mark this node saw before is gone.
    async fn note_store(&self, only: Option<&[usize]>) {
        let bp = &self.bp;
        let layout = bp.shards.layout();
        let now = crate::util::unix_ms();
        let indexes: Vec<usize> = match only {
            Some(i) => i.to_vec(),
            None => (0..layout.links.len()).collect(),
        };
        for index in indexes {
            let Some(slot) = layout.topology.any_slot_of(index) else {
                continue;
            };
            let key = keys::history_since(slots::tag_for(slot));
            let mut set = redis::cmd("SET");
            set.arg(&key).arg(now).arg("NX");
            let Ok(created) = bp
                .shards
                .one::<Option<String>>(Routed::key(&key, set))
                .await
            else {
                continue;
            };
            let seen_before = !bp
                .store_marks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key);
            if created.is_some() && seen_before {
                warn!("Redis lost stored messages; users without a cursor are told their history is not complete");
                let mut lost = redis::cmd("SET");
                lost.arg(keys::HISTORY_LOST).arg(now);
                let _ = bp
                    .shards
                    .one::<()>(Routed::key(keys::HISTORY_LOST, lost))
                    .await;
            }
        }
    }

    /// Applies `changes` in order (emptied): presence and queue changes together, a topic's
    /// subscription on the connection of its primary; a `Settled` is answered once everything
    /// before it is applied, and dropped (its waiter is told) when something failed: the
    /// repair of that primary writes it again.
    async fn apply_all(&mut self, changes: &mut Vec<Control>) {
        let bp = self.bp.clone();
        let mut batch = Vec::new();
        let mut settled = Vec::new();
        let mut failed = false;
        for change in changes.drain(..) {
            match change {
                Control::Settled(done) => settled.push(done),
                Control::Interest(tenant, Interest::Topic { dest, held }) => {
                    failed |= !flush(&bp, &mut batch).await;
                    self.answer(&mut settled, failed);
                    failed |= !self
                        .apply_topic(&keys::topic_channel(&tenant, &dest), held)
                        .await;
                }
                Control::Interest(tenant, interest) => {
                    bp.push_interest(&mut batch, &tenant, &interest);
                }
            }
        }
        failed |= !flush(&bp, &mut batch).await;
        self.answer(&mut settled, failed);
    }

    fn answer(&self, settled: &mut Vec<tokio::sync::oneshot::Sender<()>>, failed: bool) {
        for done in settled.drain(..) {
            if !failed {
                let _ = done.send(());
            }
        }
    }

    /// Subscribes to or leaves a topic's channel on its primary; false when that failed.
    async fn apply_topic(&mut self, channel: &str, subscribed: bool) -> bool {
        let bp = &self.bp;
        if subscribed {
            self.topics.insert(channel.to_string());
        } else {
            self.topics.remove(channel);
        }
        *bp.topics.lock().unwrap_or_else(|e| e.into_inner()) = self.topics.clone();
        let layout = bp.shards.layout();
        let sharded = layout.topology.cluster;
        let link = if sharded {
            layout.link_for(slots::slot(channel.as_bytes()))
        } else {
            layout.links.first()
        };
        let Some(link) = link else { return false };
        let Some(listener) = self.listeners.get_mut(link.addr.as_str()) else {
            return false;
        };
        let channels = [channel.to_string()];
        let outcome = if subscribed {
            listener.subscriber.subscribe(&channels, sharded).await
        } else {
            listener.subscriber.unsubscribe(&channels, sharded).await
        };
        match outcome {
            Ok(()) => {
                if subscribed {
                    listener.channels.insert(channel.to_string());
                } else {
                    listener.channels.remove(channel);
                }
                true
            }
            Err(e) => {
                warn!(shard = %link.addr, error = %e, "a topic subscription failed");
                bp.shards.drop_link(link);
                false
            }
        }
    }

    /// Leaves the cluster when the node stops: applies the changes its closing sessions
    /// queued, withdraws whatever it still holds, and removes its liveness, so that other
    /// nodes stop routing to it at once instead of after `node_ttl_ms`.
    async fn leave(&self, control: &mut mpsc::UnboundedReceiver<Control>) {
        let bp = &self.bp;
        let node = &bp.settings.node_id;
        let mut batch = Vec::new();
        while let Ok(change) = control.try_recv() {
            if let Control::Interest(tenant, interest) = change {
                bp.push_interest(&mut batch, &tenant, &interest);
            }
        }
        for (tenant, interests) in self.local.holdings() {
            for interest in interests {
                let withdrawn = match interest {
                    Interest::User { user, .. } => Interest::User { user, held: false },
                    Interest::Queue { dest, .. } => Interest::Queue { dest, held: false },
                    Interest::Topic { .. } => continue,
                };
                bp.push_interest(&mut batch, &tenant, &withdrawn);
            }
        }
        let mut zrem = redis::cmd("ZREM");
        zrem.arg(keys::NODES).arg(node);
        batch.push(Routed::key(keys::NODES, zrem));
        for key in [keys::alive(node), keys::holdings(node)] {
            let mut del = redis::cmd("DEL");
            del.arg(&key);
            batch.push(Routed::key(&key, del));
        }
        bp.ready.store(false, Ordering::Release);
        match tokio::time::timeout(REDIS_TIMEOUT, bp.shards.run(batch)).await {
            Ok(replies) => match replies.into_iter().find_map(Result::err) {
                None => info!(node = %node, "left the cluster"),
                Some(e) => {
                    warn!(error = %e, "leaving the cluster failed in part; other nodes notice within node_ttl_ms")
                }
            },
            Err(_) => warn!("leaving the cluster timed out; other nodes notice within node_ttl_ms"),
        }
    }
}

/// Runs the queued presence and queue commands; false when one failed.
async fn flush(bp: &RedisBackplane, batch: &mut Vec<Routed>) -> bool {
    if batch.is_empty() {
        return true;
    }
    bp.shards
        .run(std::mem::take(batch))
        .await
        .iter()
        .all(Result::is_ok)
}

impl RedisBackplane {
    /// Adds the commands that mirror one presence or queue interest in Redis (`SADD` when
    /// held, `SREM` when given up; presence changes are also announced, for the caches).
    /// Topics are channel subscriptions, not keys: nothing for them.
    pub(super) fn push_interest(&self, batch: &mut Vec<Routed>, tenant: &str, interest: &Interest) {
        let node = &self.settings.node_id;
        let verb = |held: bool| if held { "SADD" } else { "SREM" };
        let set = |key: String, member: &str, held: bool| {
            let mut cmd = redis::cmd(verb(held));
            cmd.arg(&key).arg(member);
            Routed::key(key, cmd)
        };
        if let Some(member) = keys::holding(tenant, interest) {
            let held = matches!(
                interest,
                Interest::User { held: true, .. } | Interest::Queue { held: true, .. }
            );
            batch.push(set(keys::holdings(node), &member, held));
        }
        match interest {
            Interest::User { user, held } => {
                batch.push(set(keys::presence(tenant, user), node, *held));
                let mut publish = redis::cmd("PUBLISH");
                publish
                    .arg(keys::PRESENCE_CHANNEL)
                    .arg(keys::presence_notice(tenant, user));
                // A classic PUBLISH reaches every node of a Redis Cluster from any primary;
                // the user's own primary takes it, so the notice follows the presence write.
                batch.push(Routed::key(keys::presence(tenant, user), publish));
            }
            Interest::Queue { dest, held } => {
                batch.push(set(keys::consumers(tenant, dest), node, *held));
            }
            Interest::Topic { .. } => {}
        }
    }
}
