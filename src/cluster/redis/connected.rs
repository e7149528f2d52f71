//! One connected period of the Redis backplane: subscribe to this node's channels, heartbeat,
//! announce everything the node holds, then apply interest changes and dispatch what arrives
//! (envelopes from other nodes, presence notices, ingress) until the connection is lost or the
//! backplane is stopped, when the node leaves the cluster.
//!
//! All writes of presence and interest are state-based: a reconnect (or Redis restarting
//! empty) is repaired by announcing what the node holds now, so changes queued during an
//! outage are simply dropped.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures_util::{FutureExt, StreamExt};
use redis::aio::{MultiplexedConnection, PubSubSink};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::ingress::{Claims, CLAIM_TTL_MS};
use super::{keys, RedisBackplane, RedisError, REDIS_TIMEOUT};
use crate::broker::Interest;
use crate::cluster::{Envelope, LocalNode};

/// A change for the connected loop to apply.
#[derive(Debug)]
pub enum Control {
    /// What this node holds for a tenant changed.
    Interest(String, Interest),
    /// Answer once every change before it is applied.
    Settled(tokio::sync::oneshot::Sender<()>),
}

/// Most presence and queue announcements in one pipeline.
const ANNOUNCE_BATCH: usize = 1000;
/// Most interest changes taken from the queue at once: a storm of users connecting together
/// costs a pipeline per batch, not a round trip per user.
const CONTROL_BATCH: usize = 1000;

/// One connected period.
pub struct Period<'a> {
    /// The backplane.
    pub backplane: &'a Arc<RedisBackplane>,
    /// This node.
    pub local: &'a Arc<dyn LocalNode>,
    /// Cancelled when the backplane stops.
    pub stop: &'a CancellationToken,
    /// True after a loss (for the log and the reconnect counter).
    pub reconnected: bool,
}

impl Period<'_> {
    /// Runs the period. `Ok` = stopped and left the cluster; `Err` = the connection was lost.
    pub async fn serve(
        &self,
        mut conn: MultiplexedConnection,
        pubsub: redis::aio::PubSub,
        control: &mut mpsc::UnboundedReceiver<Control>,
    ) -> Result<(), RedisError> {
        let bp = self.backplane;
        let (mut sink, mut stream) = pubsub.split();
        let node = bp.settings.node_id.clone();
        let mut channels = vec![keys::inbox(&node), keys::PRESENCE_CHANNEL.to_string()];
        channels.extend(bp.settings.ingress.iter().map(|(_, c)| c.clone()));
        let holdings = self.local.holdings();
        let mut topics = HashSet::new();
        for (tenant, interests) in &holdings {
            for interest in interests {
                if let Interest::Topic { dest, held: true } = interest {
                    topics.insert(keys::topic_channel(tenant, dest));
                }
            }
        }
        channels.extend(topics.iter().cloned());
        sink.subscribe(&channels).await?;
        *bp.topics.lock().unwrap_or_else(|e| e.into_inner()) = topics;

        bp.heartbeat(&mut conn).await?;
        bp.announce_all(&mut conn, &holdings).await?;
        bp.note_store(&mut conn).await;
        bp.forget_presence();
        *bp.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        bp.ready.store(true, Ordering::Release);
        *bp.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if self.reconnected {
            bp.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            info!("reconnected to Redis; presence and subscriptions restored");
            self.local.resumed();
        } else {
            info!(node = %node, "joined the cluster");
        }

        let mut beat = tokio::time::interval(bp.settings.node_ttl / 4);
        beat.tick().await;
        let mut claims = Claims::default();
        let mut changes = Vec::with_capacity(CONTROL_BATCH);
        let lost = loop {
            tokio::select! {
                _ = self.stop.cancelled() => {
                    bp.leave(&mut conn, control, self.local).await;
                    return Ok(());
                }
                message = stream.next() => {
                    let Some(message) = message else {
                        break RedisError::Closed;
                    };
                    self.on_message(&mut conn, message, &mut claims).await;
                }
                n = control.recv_many(&mut changes, CONTROL_BATCH) => {
                    if n == 0 {
                        return Ok(());
                    }
                    if let Err(e) = bp.apply_all(&mut conn, &mut sink, &mut changes).await {
                        break e;
                    }
                }
                _ = beat.tick() => {
                    match bp.heartbeat(&mut conn).await {
                        Ok(false) => {}
                        Ok(true) => {
                            warn!("Redis lost this node's keys (restarted empty?); announcing everything again");
                            bp.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                            bp.forget_presence();
                            if let Err(e) = bp.announce_all(&mut conn, &self.local.holdings()).await {
                                break e;
                            }
                            bp.note_store(&mut conn).await;
                            self.local.resumed();
                        }
                        Err(e) => break e,
                    }
                    claims.expire(Instant::now());
                }
            }
        };
        // Messages Redis delivered before the connection was given up may still sit unread in
        // it (the loop was waiting on a command meanwhile); the nodes that sent them were told
        // they arrived, so they are delivered before the connection is dropped.
        let mut drained = 0;
        while let Some(Some(message)) = stream.next().now_or_never() {
            drained += self.deliver_buffered(message);
        }
        if drained > 0 {
            info!(
                drained,
                "delivered what arrived before the Redis connection was lost"
            );
        }
        Err(lost)
    }

    /// Delivers an envelope message read after the connection was lost (presence notices and
    /// ingress are left: the cache is cleared on reconnect, and ingress is claimed by a node
    /// that can still reach Redis). The number of envelopes delivered.
    fn deliver_buffered(&self, message: redis::Msg) -> usize {
        let bp = self.backplane;
        let channel = message.get_channel_name();
        if channel == keys::PRESENCE_CHANNEL
            || bp.settings.ingress.iter().any(|(_, c)| c == channel)
        {
            return 0;
        }
        self.deliver_envelopes(channel, message.get_payload_bytes())
    }

    async fn on_message(
        &self,
        conn: &mut MultiplexedConnection,
        message: redis::Msg,
        claims: &mut Claims,
    ) {
        let bp = self.backplane;
        let channel = message.get_channel_name();
        let payload = message.get_payload_bytes();
        if channel == keys::PRESENCE_CHANNEL {
            if let Some((tenant, user)) = keys::parse_presence_notice(payload) {
                bp.presence_changed(&(tenant.to_string(), user.to_string()));
            }
            return;
        }
        if let Some((tenant, _)) = bp.settings.ingress.iter().find(|(_, c)| c == channel) {
            let claim = claims.next(tenant, payload, Instant::now());
            let won: Option<String> = redis::cmd("SET")
                .arg(&claim)
                .arg(&bp.settings.node_id)
                .arg("NX")
                .arg("PX")
                .arg(CLAIM_TTL_MS)
                .query_async(conn)
                .await
                .unwrap_or(None);
            if won.is_some() {
                bp.stats.ingress_handled.fetch_add(1, Ordering::Relaxed);
                self.local.ingress(tenant, payload);
            }
            return;
        }
        self.deliver_envelopes(channel, payload);
    }

    /// Delivers the envelopes of a message on an inbox or topic channel (one, or a JSON array);
    /// the number delivered.
    fn deliver_envelopes(&self, channel: &str, payload: &[u8]) -> usize {
        let bp = self.backplane;
        let envelopes = if payload.first() == Some(&b'[') {
            serde_json::from_slice::<Vec<Envelope>>(payload)
        } else {
            serde_json::from_slice::<Envelope>(payload).map(|e| vec![e])
        };
        match envelopes {
            Ok(envelopes) => {
                let mut delivered = 0;
                for envelope in envelopes {
                    if envelope.origin != bp.settings.node_id {
                        bp.stats.received.fetch_add(1, Ordering::Relaxed);
                        self.local.deliver(envelope);
                        delivered += 1;
                    }
                }
                delivered
            }
            Err(e) => {
                warn!(channel, error = %e, "unreadable message on a cluster channel");
                0
            }
        }
    }
}

impl RedisBackplane {
    /// Refreshes this node's liveness; `Ok(true)` when Redis had lost it (data loss).
    async fn heartbeat(&self, conn: &mut MultiplexedConnection) -> Result<bool, RedisError> {
        let node = &self.settings.node_id;
        let ttl_ms = self.settings.node_ttl.as_millis() as u64;
        let (previous, _): (Option<String>, usize) = redis::pipe()
            .cmd("SET")
            .arg(keys::alive(node))
            .arg("1")
            .arg("PX")
            .arg(ttl_ms)
            .arg("GET")
            .cmd("ZADD")
            .arg(keys::NODES)
            .arg(crate::util::unix_ms())
            .arg(node)
            .query_async(conn)
            .await?;
        Ok(previous.is_none())
    }

    /// Makes Redis show exactly what this node holds: withdraws what it announced before and
    /// no longer holds (the users and queues of an earlier run under this node id, or changes
    /// lost during an outage), then announces everything it holds now. Nothing it still holds
    /// is withdrawn even for a moment, so other nodes keep routing to it throughout.
    async fn announce_all(
        &self,
        conn: &mut MultiplexedConnection,
        holdings: &[(String, Vec<Interest>)],
    ) -> Result<(), RedisError> {
        let node = &self.settings.node_id;
        let recorded: HashSet<String> = redis::cmd("SMEMBERS")
            .arg(keys::holdings(node))
            .query_async(conn)
            .await?;
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
        let mut pipe = redis::pipe();
        let mut count = 0;
        // Gathered first: the loop awaits, and an iterator of borrowed closures across an
        // await would make the connected loop's future not `Send`.
        let mut changes: Vec<(&str, &Interest)> =
            stale.iter().map(|(t, i)| (t.as_str(), i)).collect();
        for (tenant, interests) in holdings {
            changes.extend(interests.iter().map(|i| (tenant.as_str(), i)));
        }
        for (tenant, interest) in changes {
            if !self.push_interest(&mut pipe, tenant, interest) {
                continue;
            }
            count += 1;
            if count == ANNOUNCE_BATCH {
                pipe.query_async::<()>(conn).await?;
                pipe = redis::pipe();
                count = 0;
            }
        }
        if count == 0 {
            // Redis refuses an empty pipeline.
            return Ok(());
        }
        Ok(pipe.query_async::<()>(conn).await?)
    }

    /// Adds to `pipe` what mirrors one presence or queue interest in Redis (`SADD` when held,
    /// `SREM` when given up; presence changes are also announced for cache invalidation).
    /// Topics are channel subscriptions, not keys: `false` for them.
    fn push_interest(&self, pipe: &mut redis::Pipeline, tenant: &str, interest: &Interest) -> bool {
        let node = &self.settings.node_id;
        let verb = |held: bool| if held { "SADD" } else { "SREM" };
        if let Some(member) = keys::holding(tenant, interest) {
            let held = matches!(
                interest,
                Interest::User { held: true, .. } | Interest::Queue { held: true, .. }
            );
            pipe.cmd(verb(held))
                .arg(keys::holdings(node))
                .arg(member)
                .ignore();
        }
        match interest {
            Interest::User { user, held } => {
                pipe.cmd(verb(*held))
                    .arg(keys::presence(tenant, user))
                    .arg(node)
                    .ignore();
                pipe.cmd("PUBLISH")
                    .arg(keys::PRESENCE_CHANNEL)
                    .arg(keys::presence_notice(tenant, user))
                    .ignore();
                true
            }
            Interest::Queue { dest, held } => {
                pipe.cmd(verb(*held))
                    .arg(keys::consumers(tenant, dest))
                    .arg(node)
                    .ignore();
                true
            }
            Interest::Topic { .. } => false,
        }
    }

    /// Applies `changes` in order (emptied): presence and queue changes together in one
    /// pipeline, a topic's subscription on its own; a `Settled` is answered once everything
    /// before it is applied.
    async fn apply_all(
        &self,
        conn: &mut MultiplexedConnection,
        sink: &mut PubSubSink,
        changes: &mut Vec<Control>,
    ) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        let mut piped = false;
        let mut settled = Vec::new();
        for change in changes.drain(..) {
            match change {
                Control::Settled(done) => settled.push(done),
                Control::Interest(tenant, interest @ Interest::Topic { .. }) => {
                    if piped {
                        pipe.query_async::<()>(conn).await?;
                        pipe = redis::pipe();
                        piped = false;
                    }
                    for done in settled.drain(..) {
                        let _ = done.send(());
                    }
                    self.apply(conn, sink, &tenant, &interest).await?;
                }
                Control::Interest(tenant, interest) => {
                    self.push_interest(&mut pipe, &tenant, &interest);
                    piped = true;
                }
            }
        }
        if piped {
            pipe.query_async::<()>(conn).await?;
        }
        for done in settled {
            let _ = done.send(());
        }
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut MultiplexedConnection,
        sink: &mut PubSubSink,
        tenant: &str,
        interest: &Interest,
    ) -> Result<(), RedisError> {
        let Interest::Topic {
            dest,
            held: subscribed,
        } = interest
        else {
            let mut pipe = redis::pipe();
            self.push_interest(&mut pipe, tenant, interest);
            return Ok(pipe.query_async::<()>(conn).await?);
        };
        let channel = keys::topic_channel(tenant, dest);
        {
            let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
            if *subscribed {
                topics.insert(channel.clone());
            } else {
                topics.remove(&channel);
            }
        }
        if *subscribed {
            sink.subscribe(&channel).await?;
        } else {
            sink.unsubscribe(&channel).await?;
        }
        Ok(())
    }

    /// Leaves the cluster when the node stops: applies the changes its closing sessions
    /// queued, withdraws whatever it still holds, and removes its liveness, so that other
    /// nodes stop routing to it at once instead of after `node_ttl_ms`.
    async fn leave(
        &self,
        conn: &mut MultiplexedConnection,
        control: &mut mpsc::UnboundedReceiver<Control>,
        local: &Arc<dyn LocalNode>,
    ) {
        let node = &self.settings.node_id;
        let mut pipe = redis::pipe();
        while let Ok(change) = control.try_recv() {
            if let Control::Interest(tenant, interest) = change {
                self.push_interest(&mut pipe, &tenant, &interest);
            }
        }
        for (tenant, interests) in local.holdings() {
            for interest in interests {
                let withdrawn = match interest {
                    Interest::User { user, .. } => Interest::User { user, held: false },
                    Interest::Queue { dest, .. } => Interest::Queue { dest, held: false },
                    Interest::Topic { .. } => continue,
                };
                self.push_interest(&mut pipe, &tenant, &withdrawn);
            }
        }
        pipe.cmd("ZREM").arg(keys::NODES).arg(node).ignore();
        pipe.cmd("DEL").arg(keys::alive(node)).ignore();
        pipe.cmd("DEL").arg(keys::holdings(node)).ignore();
        self.ready.store(false, Ordering::Release);
        match tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<()>(conn)).await {
            Ok(Ok(())) => info!(node = %node, "left the cluster"),
            Ok(Err(e)) => {
                warn!(error = %e, "leaving the cluster failed; other nodes notice within node_ttl_ms")
            }
            Err(_) => warn!("leaving the cluster timed out; other nodes notice within node_ttl_ms"),
        }
    }
}
