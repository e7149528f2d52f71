//! The per-connection STOMP state machine, shared by every transport. It takes decoded frames
//! and the driver's verdicts (timeouts, transport errors), and answers by queueing frames on
//! its connection's outbox, calling the tenant's broker and policy, and telling the driver
//! whether to go on. It knows the node only through a narrow [`Context`] (limits, ids, the
//! tenants, where hand-off work runs) and owns no socket, so the tests below drive it frame by
//! frame.
//!
//! Routing a SEND is handed to the session's [`sequencer::Handoff`], which completes it at
//! once when it need not wait on the cluster and otherwise queues it, with the replies after
//! it, in order. Every ERROR is a [`Fault`].

pub mod fault;
pub mod sequencer;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tracing::debug;

use tokio_util::task::TaskTracker;

pub use fault::Fault;
use sequencer::{Handoff, Receipt, Route};

use crate::broker::destination::{self, Target};
use crate::broker::message::RESERVED_HEADERS;
use crate::broker::Message;
use crate::broker::{AckMode, Content, Endpoint, Subscription};
use crate::config::EventKind;
use crate::history::{ReadFrom, StartAt};
use crate::metrics::Metrics;
use crate::policy::{ConnectInfo, Operation, Principal, TransportKind};
use crate::stomp::{encode, Command, Frame, Version};
use crate::tenant::{Tenant, Tenants};
use crate::upstream::ItemKind;
use crate::util::Ids;

/// What the driver does after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Stop reading; the outbox is finishing (its last frame is an ERROR or a RECEIPT).
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingConnect,
    Connected,
    Closed,
}

/// The header that carries the authenticated user of a SEND's sender to its receivers
/// (RabbitMQ's name for it); whatever a client puts there itself is dropped.
pub const SENDER_HEADER: &str = "user-id";

/// The server name in CONNECTED frames.
pub const SERVER: &str = concat!("stompbox/", env!("CARGO_PKG_VERSION"));

/// How many bytes of authorization verdicts a session remembers (within its memory budget); a
/// session that sends to more distinct destinations than fit starts over. Sized for a backend
/// that sends to every user of a large tenant over one connection (about 16,000 verdicts on
/// typical destination names: a plugin call per SEND only once the set cycles past it);
/// browsers' sessions hold a handful.
const VERDICT_CACHE_BYTES: usize = 2 << 20;

/// What one cached verdict costs beyond its destination's bytes (the set's slot and the key's
/// `String`).
const VERDICT_OVERHEAD: usize = 64;

/// What a subscription costs beyond its id and destination: the `Subscription`, its slots in
/// the session's map and the broker's index, its encoded header line.
const SUBSCRIPTION_OVERHEAD: usize = 384;

/// What a frame buffered in a transaction costs beyond its bytes.
const FRAME_OVERHEAD: usize = 128;

/// The longest heart-beat interval honoured (a day); longer offers are treated as this.
const MAX_HEARTBEAT_MS: u64 = 24 * 60 * 60 * 1000;

/// The limits a session enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Queued outbound bytes before the connection is a slow consumer.
    pub outbound_queue_bytes: usize,
    /// What the connection may hold besides its outbound queue.
    pub connection_memory_bytes: usize,
    /// Subscriptions per connection.
    pub max_subscriptions: usize,
    /// Open transactions per connection.
    pub max_transactions: usize,
    /// Frames buffered per transaction.
    pub max_transaction_frames: usize,
    /// The server's heart-beat offer: [can send every, wants to receive every] in ms.
    pub heartbeat_ms: [u64; 2],
    /// A peer silent for its interval times this is dead.
    pub heartbeat_tolerance: f64,
    /// How long a connection must stay after a stored frame for it to count as delivered.
    pub delivery_confirm_ms: u64,
}

/// What a session needs from the node that runs it, shared by all its sessions.
#[derive(Debug, Clone)]
pub struct Context {
    /// The limits.
    pub limits: Limits,
    /// The node's tenants.
    pub tenants: Arc<Tenants>,
    /// Session ids (unique across the cluster: they carry the node id).
    pub ids: Arc<Ids>,
    /// Where a session's deferred routing runs (the node's task tracker).
    pub tasks: TaskTracker,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

/// Where the connection came from.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The transport.
    pub transport: TransportKind,
    /// The peer address.
    pub remote_addr: Option<String>,
    /// The tenant the transport already chose (WebSocket path); `None` = decide at CONNECT.
    pub tenant: Option<Arc<Tenant>>,
    /// What the policy may see of the request that opened the connection
    /// ([`crate::policy::REQUEST_HEADERS`]); handed over, and so dropped, at CONNECT.
    pub request_headers: Vec<(String, String)>,
}

/// One STOMP session.
#[derive(Debug)]
pub struct Session {
    ctx: Arc<Context>,
    peer: Peer,
    endpoint: Arc<Endpoint>,
    handoff: Handoff,
    phase: Phase,
    version: Version,
    tenant: Option<Arc<Tenant>>,
    principal: Principal,
    subs: HashMap<String, Arc<Subscription>>,
    /// Open transactions' frames, each charged its [`frame_weight`] to the budget.
    transactions: HashMap<String, Vec<Frame>>,
    verdicts: HashSet<(Operation, String)>,
    /// Bytes the verdicts are charged to the budget.
    verdict_bytes: usize,
    /// Headers the next RECEIPT carries (a SUBSCRIBE's replay: whether it recovered all).
    receipt_headers: Vec<(&'static str, String)>,
    heartbeat_in: Option<Duration>,
    /// Why the session ended, for the backend's `disconnect` event: a fault's label, or
    /// `client` for a DISCONNECT; `None` until then (the connection closed).
    end_reason: Option<&'static str>,
}

/// Where a SEND goes.
enum Sending {
    /// To subscribers, through the broker.
    Route(Target),
    /// To the tenant's backend: a destination under an application prefix.
    Backend(String),
}

type Outcome = Result<(), Fault>;

impl Session {
    /// A session waiting for CONNECT.
    pub fn new(ctx: Arc<Context>, peer: Peer) -> Session {
        let endpoint = Arc::new(
            Endpoint::new(
                Arc::from(ctx.ids.next()),
                ctx.limits.outbound_queue_bytes,
                ctx.limits.connection_memory_bytes,
            )
            .with_confirmation(crate::broker::cursor::Confirmation {
                after: std::time::Duration::from_millis(ctx.limits.delivery_confirm_ms),
            }),
        );
        Session {
            handoff: Handoff::default(),
            ctx,
            peer,
            endpoint,
            phase: Phase::AwaitingConnect,
            version: Version::V1_0,
            tenant: None,
            principal: Principal::default(),
            subs: HashMap::new(),
            transactions: HashMap::new(),
            verdicts: HashSet::new(),
            verdict_bytes: 0,
            receipt_headers: Vec::new(),
            heartbeat_in: None,
            end_reason: None,
        }
    }

    /// Charges `bytes` for `what` to the connection's memory budget, or refuses with the fault
    /// that names the limit.
    fn charge(&self, what: &'static str, bytes: usize) -> Outcome {
        if self.endpoint.budget.try_take(bytes) {
            Ok(())
        } else {
            Err(self.over_budget(what))
        }
    }

    fn over_budget(&self, what: &'static str) -> Fault {
        Fault::MemoryBudget {
            what,
            limit: self.endpoint.budget.limit(),
        }
    }

    /// Checks that a frame still arriving, `partial_bytes` so far, fits in what the memory
    /// budget has left; the driver calls it while a frame is incomplete.
    pub fn check_partial_frame(&mut self, partial_bytes: usize) -> Flow {
        if partial_bytes <= self.endpoint.budget.room() {
            return Flow::Continue;
        }
        let fault = self.over_budget("a partial frame");
        self.close(fault);
        Flow::Close
    }

    /// Offers the backlogs of the queues this session consumes to its subscriptions again, and
    /// lets its user subscriptions' replays flow on: the driver calls it when the writer has
    /// taken what was queued, and the session after whatever gives back room (an ACK, a NACK,
    /// the end of a transaction).
    pub fn pump_queues(&self) {
        let Some(tenant) = &self.tenant else { return };
        for sub in self.subs.values() {
            match &sub.target {
                Target::Queue(dest) => tenant.pump_queue(dest),
                // A refusal means the connection is closing; its cursor stays where it was.
                Target::User { .. } => {
                    let _ = sub.pump_stream();
                }
                Target::Topic(_) => {}
            }
        }
    }

    /// The connection's outbox side, which its writer drains.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// The session id.
    pub fn id(&self) -> &str {
        &self.endpoint.session_id
    }

    /// The negotiated protocol version (1.0 until CONNECT).
    pub fn version(&self) -> Version {
        self.version
    }

    /// True between CONNECTED and the end.
    pub fn is_connected(&self) -> bool {
        self.phase == Phase::Connected
    }

    /// The user this session acts as.
    pub fn user(&self) -> Option<&str> {
        self.principal.user.as_deref()
    }

    /// How long the peer may stay silent before it is considered dead (negotiated heart-beat
    /// times the tolerance); `None` when it did not promise heart-beats.
    pub fn read_timeout(&self) -> Option<Duration> {
        self.heartbeat_in
    }

    /// Handles one frame from the client.
    pub async fn handle(&mut self, frame: Frame) -> Flow {
        // A routing fault found after the session went on has already closed the outbox.
        if self.endpoint.outbox.is_closing() {
            self.phase = Phase::Closed;
        }
        let mut receipt = (frame.command != Command::Connect && frame.command != Command::Stomp)
            .then(|| frame.get("receipt").map(str::to_string))
            .flatten();
        let receipt_id = receipt.clone();
        let outcome = match self.phase {
            Phase::Closed => return Flow::Close,
            Phase::AwaitingConnect => match frame.command {
                Command::Connect | Command::Stomp => self.connect(&frame).await,
                other => Err(Fault::ExpectedConnect(other)),
            },
            Phase::Connected => self.connected_frame(frame, &mut receipt).await,
        };
        match outcome {
            Err(f) => {
                self.fail(&f, receipt_id.as_deref());
                Flow::Close
            }
            Ok(()) if self.phase == Phase::Closed => Flow::Close,
            Ok(()) => {
                if let Some(id) = receipt {
                    let extra = std::mem::take(&mut self.receipt_headers);
                    let frame = self.receipt_with(&id, extra);
                    self.handoff.reply(&self.endpoint, frame, &self.ctx.tasks);
                }
                Flow::Continue
            }
        }
    }

    /// `receipt` is taken by a frame that writes its own (a SEND, after its routing).
    async fn connected_frame(&mut self, frame: Frame, receipt: &mut Option<String>) -> Outcome {
        match frame.command {
            Command::Connect | Command::Stomp => Err(Fault::AlreadyConnected),
            Command::Send => self.send(frame, receipt).await,
            Command::Subscribe => self.subscribe(&frame).await,
            Command::Unsubscribe => self.unsubscribe(&frame),
            Command::Ack | Command::Nack => self.ack_or_nack(frame, receipt).await,
            Command::Begin => self.begin(&frame),
            Command::Commit => self.commit(&frame).await,
            Command::Abort => {
                let id = self.transaction_id(&frame)?;
                self.close_transaction(&id);
                // What the transaction held is room for queue messages now.
                self.pump_queues();
                Ok(())
            }
            Command::Disconnect => {
                // Its receipt is the last frame, after everything handed off before it.
                let last = receipt.take().map(|id| self.receipt(&id));
                self.handoff.finish(&self.endpoint, last, &self.ctx.tasks);
                self.phase = Phase::Closed;
                self.end_reason = Some("client");
                Ok(())
            }
            Command::Connected | Command::Message | Command::Receipt | Command::Error => {
                Err(Fault::ServerFrame(frame.command))
            }
        }
    }

    async fn connect(&mut self, frame: &Frame) -> Outcome {
        let version = match frame.get("accept-version") {
            None => Version::V1_0,
            Some(list) => list
                .split(',')
                .filter_map(Version::parse)
                .max()
                .ok_or_else(|| Fault::UnsupportedVersion(list.to_string()))?,
        };
        self.version = version;
        let tenant = match &self.peer.tenant {
            Some(t) => t.clone(),
            None => frame
                .get("host")
                .and_then(|h| self.ctx.tenants.get(h))
                .or_else(|| self.ctx.tenants.default_tenant())
                .ok_or(Fault::UnknownTenant)?,
        };
        // The tenant the connection chose may have been replaced or deleted since.
        let tenant = if tenant.closing.is_cancelled() {
            self.ctx
                .tenants
                .get(&tenant.id)
                .filter(|t| !t.closing.is_cancelled())
                .ok_or_else(|| {
                    Fault::TenantClosed(tenant.closed_because().map_or_else(
                        || "the node is stopping; reconnect to another node".to_string(),
                        str::to_string,
                    ))
                })?
        } else {
            tenant
        };
        let (client_send, client_recv) = match (version, frame.get("heart-beat")) {
            (Version::V1_0, _) | (_, None) => (0, 0),
            (_, Some(value)) => {
                parse_heartbeat(value).ok_or_else(|| Fault::InvalidHeartBeat(value.to_string()))?
            }
        };
        let info = ConnectInfo {
            tenant: tenant.id.clone(),
            transport: self.peer.transport,
            remote_addr: self.peer.remote_addr.clone(),
            headers: frame.headers.clone(),
            request_headers: std::mem::take(&mut self.peer.request_headers),
        };
        let principal = tenant
            .policy()
            .authenticate(&info)
            .await
            .map_err(Fault::Authentication)?;

        if let Some(until) = principal
            .user
            .as_deref()
            .and_then(|u| tenant.banned_until(u))
        {
            return Err(Fault::Banned(until));
        }
        let [server_send, server_recv] = if version == Version::V1_0 {
            [0, 0]
        } else {
            self.ctx.limits.heartbeat_ms
        };
        // The spec's rule: each direction uses the larger of what one side can do and the other
        // wants, and none at all when either side says 0.
        // Clamped: a client may announce any u64, and timers that far out would overflow.
        let out_ms = if server_send == 0 || client_recv == 0 {
            0
        } else {
            server_send.max(client_recv).min(MAX_HEARTBEAT_MS)
        };
        let in_ms = if client_send == 0 || server_recv == 0 {
            0
        } else {
            client_send.max(server_recv).min(MAX_HEARTBEAT_MS)
        };
        self.endpoint
            .heartbeat_out_ms
            .store(out_ms, Ordering::Relaxed);
        self.heartbeat_in = (in_ms > 0)
            .then(|| Duration::from_millis(in_ms).mul_f64(self.ctx.limits.heartbeat_tolerance));

        if let Some(user) = &principal.user {
            tenant.user_connected(user, &self.endpoint);
        }
        let mut connected = Frame::new(Command::Connected)
            .header("version", version.as_str())
            .header("heart-beat", format!("{server_send},{server_recv}"))
            .header("server", SERVER)
            .header("session", self.id());
        if let Some(user) = &principal.user {
            connected = connected.header("user-name", user.clone());
        }
        debug!(tenant = %tenant.id, user = ?principal.user, version = version.as_str(), "connected");
        if tenant.upstream.wants(EventKind::Connect) {
            let mut event = tenant.upstream.item(
                ItemKind::Event(EventKind::Connect),
                self.id(),
                principal.user.as_deref(),
            );
            event
                .fields
                .push(("transport", self.peer.transport.as_str().into()));
            if let Some(addr) = &self.peer.remote_addr {
                event.fields.push(("remote_addr", addr.clone()));
            }
            tenant.upstream.event(event);
        }
        tenant.session_started();
        self.tenant = Some(tenant);
        self.principal = principal;
        self.phase = Phase::Connected;
        let connected = self.encode(&connected);
        self.handoff
            .reply(&self.endpoint, connected, &self.ctx.tasks);
        Ok(())
    }

    /// What ends the session when its tenant closes (or the node shuts down), once connected.
    pub fn closing(&self) -> Option<&tokio_util::sync::CancellationToken> {
        self.tenant.as_ref().map(|t| &t.closing)
    }

    /// Why its tenant closed, when it did.
    pub fn closed_because(&self) -> Option<String> {
        self.tenant
            .as_ref()
            .and_then(|t| t.closed_because().map(String::from))
    }

    fn tenant(&self) -> Arc<Tenant> {
        self.tenant
            .clone()
            .expect("a connected session has a tenant")
    }

    async fn authorize(&mut self, op: Operation, dest: &str) -> Outcome {
        let key = (op, dest.to_string());
        if self.verdicts.contains(&key) {
            return Ok(());
        }
        self.tenant()
            .policy()
            .authorize(&self.principal, op, dest)
            .await
            .map_err(|error| Fault::Access {
                op,
                dest: dest.to_string(),
                error,
            })?;
        // A cache: when it is full, or the budget has no room for one more, it starts over
        // rather than refusing the SEND.
        let cost = VERDICT_OVERHEAD + key.1.len();
        if self.verdict_bytes + cost > VERDICT_CACHE_BYTES || !self.endpoint.budget.try_take(cost) {
            self.clear_verdicts();
            if !self.endpoint.budget.try_take(cost) {
                return Ok(());
            }
        }
        self.verdict_bytes += cost;
        self.verdicts.insert(key);
        Ok(())
    }

    fn clear_verdicts(&mut self) {
        self.verdicts.clear();
        self.endpoint.budget.give_back(self.verdict_bytes);
        self.verdict_bytes = 0;
    }

    fn required<'f>(&self, frame: &'f Frame, name: &'static str) -> Result<&'f str, Fault> {
        frame.get(name).ok_or(Fault::MissingHeader {
            command: frame.command,
            name,
        })
    }

    fn in_transaction(&mut self, frame: Frame) -> Result<Option<Frame>, Fault> {
        let Some(id) = frame.get("transaction") else {
            return Ok(Some(frame));
        };
        let limit = self.ctx.limits.max_transaction_frames;
        let Some(frames) = self.transactions.get(id) else {
            return Err(Fault::UnknownTransaction(id.to_string()));
        };
        if frames.len() >= limit {
            return Err(Fault::TransactionTooLarge(limit));
        }
        self.charge("a frame buffered in a transaction", frame_weight(&frame))?;
        let id = id.to_string();
        // Kept until COMMIT: copied out of the read buffer it was cut from, so that it holds
        // what it is charged and not the whole buffer.
        let mut frame = frame;
        frame.body = Bytes::copy_from_slice(&frame.body);
        self.transactions
            .get_mut(&id)
            .expect("looked up above")
            .push(frame);
        Ok(None)
    }

    async fn send(&mut self, frame: Frame, receipt: &mut Option<String>) -> Outcome {
        let dest = self.required(&frame, "destination")?.to_string();
        // A name too long to keep is refused before the policy sees it (and caches a verdict).
        destination::check_length(&dest).map_err(|e| Fault::InvalidDestination(e.to_string()))?;
        // The policy's verdict comes first, so a denied destination reads "access denied"
        // whatever its shape.
        self.authorize(Operation::Send, &dest).await?;
        let sending = self.sending(&dest)?;
        let Some(frame) = self.in_transaction(frame)? else {
            return Ok(());
        };
        let receipt = receipt.take().map(|id| self.receipt_of(&id));
        match sending {
            Sending::Route(target) => self.publish(target, frame, receipt).await,
            Sending::Backend(dest) => self.hand_to_backend(dest, frame, receipt).await,
        }
    }

    /// Where a SEND to `dest` goes: the tenant's backend for an application destination, else
    /// the subscribers the destination names.
    fn sending(&self, dest: &str) -> Result<Sending, Fault> {
        if self.tenant().upstream.is_application(dest) {
            return Ok(Sending::Backend(dest.to_string()));
        }
        destination::for_send(dest)
            .map(Sending::Route)
            .map_err(|e| Fault::InvalidDestination(e.to_string()))
    }

    /// Hands a SEND to an application destination to the tenant's backend, in order with the
    /// session's other SENDs; `receipt` is written once the backend took it, and a message it
    /// did not take ends the session with an ERROR saying why.
    async fn hand_to_backend(
        &mut self,
        dest: String,
        frame: Frame,
        receipt: Option<Receipt>,
    ) -> Outcome {
        let tenant = self.tenant();
        let mut item = tenant
            .upstream
            .item(ItemKind::Message, self.id(), self.user());
        item.fields.push(("destination", dest));
        item.headers = message_headers(frame.headers);
        // Copied out of the read buffer it was cut from: it may wait in the queue a while.
        item.body = Some(Bytes::copy_from_slice(&frame.body));
        let accepted = tenant.upstream.message(item);
        let route: Route = Box::pin(async move {
            accepted
                .map_err(|e| Fault::Upstream(e.to_string()))?
                .wait()
                .await
                .map_err(|e| Fault::Upstream(e.to_string()))
        });
        // Queued in order above, so what follows may go on meanwhile.
        self.handoff
            .route(
                &self.endpoint,
                self.version,
                route,
                receipt,
                true,
                &self.ctx.tasks,
            )
            .await
    }

    /// Hands a SEND's message to the sequencer for routing; `receipt` is written once it is
    /// routed.
    async fn publish(&mut self, target: Target, frame: Frame, receipt: Option<Receipt>) -> Outcome {
        let mut headers = message_headers(frame.headers);
        // Whoever the client claims to be in its headers, receivers learn who sent it.
        if let Some(user) = &self.principal.user {
            headers.push((SENDER_HEADER.to_string(), user.clone()));
        }
        let content = Content {
            headers,
            body: frame.body,
        };
        // A cluster outage is not the client's fault: the message went to this node's
        // subscribers, the loss is logged and counted, and the session goes on.
        let tenant = self.tenant();
        // A stored message takes its stream's turn at its first poll, which fixes its order:
        // it may run beside the SENDs after it.
        let overlaps = match &target {
            Target::User { dest, .. } => tenant.history_for(dest).is_some(),
            Target::Topic(dest) => tenant.topic_history_for(dest).is_some(),
            // Queued for the store at its first poll, in order.
            Target::Queue(_) => tenant.durable_queues(),
        };
        let route: Route = Box::pin(async move {
            tenant
                .route(&target, content, false)
                .await
                .map(|_| ())
                .map_err(|e| Fault::NotAccepted(e.to_string()))
        });
        self.handoff
            .route(
                &self.endpoint,
                self.version,
                route,
                receipt,
                overlaps,
                &self.ctx.tasks,
            )
            .await
    }

    async fn subscribe(&mut self, frame: &Frame) -> Outcome {
        let dest = self.required(frame, "destination")?.to_string();
        let id = match (self.version, frame.get("id")) {
            (_, Some(id)) => id.to_string(),
            // STOMP 1.0 made the id optional; the destination then names the subscription.
            (Version::V1_0, None) => dest.clone(),
            (_, None) => {
                return Err(Fault::MissingHeader {
                    command: Command::Subscribe,
                    name: "id",
                })
            }
        };
        if self.subs.contains_key(&id) {
            return Err(Fault::DuplicateSubscription(id));
        }
        let max = self.ctx.limits.max_subscriptions;
        if self.subs.len() >= max {
            return Err(Fault::TooManySubscriptions(max));
        }
        let ack = match frame.get("ack") {
            None => AckMode::Auto,
            Some(mode) => {
                AckMode::parse(mode).ok_or_else(|| Fault::InvalidAckMode(mode.to_string()))?
            }
        };
        let prefetch = match frame.get(PREFETCH_HEADER) {
            None => 0,
            Some(value) => value
                .trim()
                .parse::<u32>()
                .map_err(|_| Fault::InvalidPrefetch(value.to_string()))?
                as usize,
        };
        let start = frame
            .get(STREAM_OFFSET_HEADER)
            .map(StartAt::parse)
            .transpose()
            .map_err(|e| Fault::InvalidStreamOffset(e.to_string()))?;
        let start_epoch = match frame.get(EPOCH_HEADER) {
            None => None,
            Some(value) => Some(value.trim().parse::<u64>().map_err(|_| {
                Fault::InvalidStreamOffset(format!(
                    "{EPOCH_HEADER} must be the number a RECEIPT's {EPOCH_HEADER} gave, got '{value}'"
                ))
            })?),
        };
        destination::check_length(&dest).map_err(|e| Fault::InvalidDestination(e.to_string()))?;
        self.authorize(Operation::Subscribe, &dest).await?;
        let target = destination::for_subscribe(&dest, self.user())
            .map_err(|e| Fault::InvalidDestination(e.to_string()))?;
        let tenant = self.tenant();
        // A user destination replays from its user's stream whenever it is stored; a topic
        // only when the client names a start (without one it stays live only).
        let history = match &target {
            Target::User { dest, .. } => tenant.history_for(dest).cloned(),
            Target::Topic(dest) if start.is_some() => tenant.topic_history_for(dest).cloned(),
            _ => None,
        };
        if start.is_some() && history.is_none() {
            return Err(Fault::NoStream(dest));
        }
        self.charge("a subscription", subscription_weight(&id, &target))?;
        let mut sub =
            Subscription::new(id.clone(), target, ack, self.endpoint.clone(), self.version)
                .with_prefetch(prefetch);
        if history.is_some() {
            let saver = match &sub.target {
                Target::User { .. } => tenant.cursor_queue(),
                _ => None,
            };
            sub = sub.from_stream(saver);
        }
        let sub = Arc::new(sub);
        tenant.subscribe(sub.clone());
        self.subs.insert(id, sub.clone());
        self.subscription_event(&tenant, EventKind::Subscribe, &sub);
        if let Some(history) = history {
            // Registered first, so live messages wait in the subscription while the stream is
            // read; then what was stored after the cursor (or where the client asked), then
            // those, each offset once.
            self.replay(&tenant, &history, &sub, start, start_epoch)
                .await?;
        }
        Ok(())
    }

    /// Reads what `sub`'s stream kept for it, hands it over and lets the subscription go
    /// live; the next RECEIPT says whether that was everything asked for.
    async fn replay(
        &mut self,
        tenant: &Tenant,
        history: &Arc<dyn crate::history::History>,
        sub: &Arc<Subscription>,
        start: Option<StartAt>,
        start_epoch: Option<u64>,
    ) -> Outcome {
        let unavailable = |e: crate::history::HistoryError| Fault::StoreUnavailable(e.to_string());
        // The stream's owner and the destination its messages were stored under and are shown
        // with: a user's, or the topic's own.
        let (owner, dest, shown) = match &sub.target {
            Target::User { user, dest } => {
                tenant.open_stream(user).await.map_err(unavailable)?;
                (user.as_str(), dest.as_str(), destination::user_facing(dest))
            }
            Target::Topic(topic) => {
                tenant.open_topic_stream(topic).await.map_err(unavailable)?;
                (topic.as_str(), topic.as_str(), topic.clone())
            }
            Target::Queue(_) => return Ok(()),
        };
        let user_stream = matches!(sub.target, Target::User { .. });
        // The user's stored cursor, when the client named no start of its own.
        let cursor = match start {
            None if user_stream => history.cursor(owner, dest).await.map_err(unavailable)?,
            _ => None,
        };
        let from = match (start, start_epoch, cursor) {
            // A position the client kept, with the epoch it was of.
            (Some(StartAt::Offset(n)), Some(epoch), _) => {
                ReadFrom::After(crate::history::Position {
                    epoch,
                    offset: n.saturating_sub(1),
                })
            }
            (Some(start), _, _) => ReadFrom::StartAt(start),
            (None, _, Some(cursor)) => ReadFrom::After(cursor.position),
            (None, _, None) => ReadFrom::StartAt(StartAt::First),
        };
        let mut replay = history.read(owner, dest, from).await.map_err(unavailable)?;
        match cursor {
            Some(cursor) => replay.complete &= !cursor.crossed,
            None if start.is_none() => {
                replay.complete &= history.no_cursor_complete().await.map_err(unavailable)?;
            }
            None => {}
        }
        let messages: Vec<Arc<Message>> = replay
            .messages
            .into_iter()
            .map(|m| {
                Arc::new(Message::stored_at(
                    shown.clone(),
                    m.content,
                    Some(m.position),
                ))
            })
            .collect();
        // Delivered at the pace the connection takes it (see `pump_queues`).
        // Where the stored cursor stands: this subscription counts on from there.
        let after = cursor
            .filter(|c| c.position.epoch == replay.epoch)
            .map_or(0, |c| c.position.offset);
        let _ = sub.finish_replay(replay.epoch, after, messages);
        self.receipt_headers = vec![
            (RECOVERED_HEADER, replay.complete.to_string()),
            (EPOCH_HEADER, replay.epoch.to_string()),
        ];
        Ok(())
    }

    fn unsubscribe(&mut self, frame: &Frame) -> Outcome {
        let id = match (self.version, frame.get("id")) {
            (_, Some(id)) => id.to_string(),
            (Version::V1_0, None) => self.required(frame, "destination")?.to_string(),
            (_, None) => {
                return Err(Fault::MissingHeader {
                    command: Command::Unsubscribe,
                    name: "id",
                })
            }
        };
        let sub = self
            .subs
            .remove(&id)
            .ok_or_else(|| Fault::UnknownSubscription(id.clone()))?;
        self.drop_subscription(&sub);
        Ok(())
    }

    /// Tells the tenant's backend of a subscription made or ended, when it asked to hear.
    fn subscription_event(&self, tenant: &Tenant, kind: EventKind, sub: &Subscription) {
        if !tenant.upstream.wants(kind) {
            return;
        }
        let mut event = tenant
            .upstream
            .item(ItemKind::Event(kind), self.id(), self.user());
        let dest = match &sub.target {
            Target::Topic(dest) | Target::Queue(dest) => dest.clone(),
            Target::User { dest, .. } => destination::user_facing(dest),
        };
        event.fields.push(("destination", dest));
        event.fields.push(("subscription", sub.id.to_string()));
        tenant.upstream.event(event);
    }

    fn drop_subscription(&self, sub: &Arc<Subscription>) {
        let Some(tenant) = &self.tenant else { return };
        self.endpoint
            .budget
            .give_back(subscription_weight(&sub.id, &sub.target));
        tenant.unsubscribe(sub);
        self.subscription_event(tenant, EventKind::Unsubscribe, sub);
        let held = sub.close();
        if let (Some(history), Target::User { user, dest }, Some(cursor)) = (
            tenant.history().cloned(),
            &sub.target,
            sub.stream_cursor(&held),
        ) {
            // The cursor stands where delivery counts for the user's next session: moved on,
            // or put back past frames its saver wrote that never counted.
            let (user, dest) = (user.clone(), dest.clone());
            let metrics = self.ctx.metrics.clone();
            self.ctx.tasks.spawn(async move {
                let counted = cursor.position().map_or(0, |p| p.offset);
                let saved = cursor.saved();
                let done = if saved > counted {
                    metrics.store.cursor_rewinds.fetch_add(1, Ordering::Relaxed);
                    history
                        .rewind(&user, &dest, cursor.epoch, saved, counted)
                        .await
                } else {
                    match crate::history::Cursor::of(&cursor) {
                        Some(at) => history.advance(&user, &dest, at).await,
                        None => Ok(()),
                    }
                };
                if let Err(e) = done {
                    debug!(error = %e, "a cursor was not saved; the next session may get those messages again");
                }
            });
        }
        for unacked in held {
            if let Some((queue, message)) = unacked.requeue {
                tenant.broker.requeue(&queue, message, self.id());
            }
        }
        if let Target::Queue(dest) = &sub.target {
            tenant.queue_consumer_left(dest);
        }
    }

    /// `receipt` is taken by an ACK that must wait for the store (see below).
    async fn ack_or_nack(&mut self, frame: Frame, receipt: &mut Option<String>) -> Outcome {
        let header = if self.version == Version::V1_2 {
            "id"
        } else {
            "message-id"
        };
        let ack_id = self.required(&frame, header)?.to_string();
        let seq = self
            .endpoint
            .parse_ack_id(&ack_id)
            .ok_or_else(|| Fault::UnknownMessage(ack_id.clone()))?;
        let Some(frame) = self.in_transaction(frame)? else {
            return Ok(());
        };
        // Already settled (e.g. by an earlier cumulative ACK) is not an error: clients that ACK
        // every message in `client` mode would otherwise be closed for doing the right thing.
        let Some(sub) = self.subs.values().find(|s| s.holds(seq)).cloned() else {
            return Ok(());
        };
        let settled = sub.settle(seq);
        let tenant = self.tenant();
        let mut stored = Vec::new();
        for unacked in settled {
            let Some((queue, message)) = unacked.requeue else {
                continue;
            };
            if frame.command == Command::Nack {
                tenant.broker.requeue(&queue, message, self.id());
            } else if let Some(ticket) = message.ticket() {
                // A durable queue's entry is removed from the store; a RECEIPT the client
                // asked for comes once it is, so that an acknowledged message never comes
                // again after this node dies.
                let wait = receipt.is_some().then(|| {
                    let (done, applied) = tokio::sync::oneshot::channel();
                    stored.push(applied);
                    done
                });
                ticket.acknowledged(wait);
            }
        }
        // Settling made room under the prefetch count and the budget.
        if let Target::Queue(dest) = &sub.target {
            tenant.pump_queue(dest);
        }
        if !stored.is_empty() {
            let receipt = receipt.take().map(|id| self.receipt_of(&id));
            let route: Route = Box::pin(async move {
                for applied in stored {
                    if applied.await != Ok(true) {
                        return Err(Fault::StoreUnavailable(
                            "the acknowledgement could not be stored; the message may come again"
                                .into(),
                        ));
                    }
                }
                Ok(())
            });
            self.handoff
                .route(
                    &self.endpoint,
                    self.version,
                    route,
                    receipt,
                    false,
                    &self.ctx.tasks,
                )
                .await?;
        }
        Ok(())
    }

    /// Removes a transaction, giving back what its frames were charged, and returns them.
    fn close_transaction(&mut self, id: &str) -> Vec<Frame> {
        let frames = self.transactions.remove(id).unwrap_or_default();
        self.give_back_frames(&frames);
        frames
    }

    fn give_back_frames(&self, frames: &[Frame]) {
        let charged: usize = frames.iter().map(frame_weight).sum();
        self.endpoint.budget.give_back(charged);
    }

    fn transaction_id(&self, frame: &Frame) -> Result<String, Fault> {
        let id = self.required(frame, "transaction")?;
        if !self.transactions.contains_key(id) {
            return Err(Fault::UnknownTransaction(id.to_string()));
        }
        Ok(id.to_string())
    }

    fn begin(&mut self, frame: &Frame) -> Outcome {
        let id = self.required(frame, "transaction")?;
        if self.transactions.contains_key(id) {
            return Err(Fault::DuplicateTransaction(id.to_string()));
        }
        let max = self.ctx.limits.max_transactions;
        if self.transactions.len() >= max {
            return Err(Fault::TooManyTransactions(max));
        }
        self.transactions.insert(id.to_string(), Vec::new());
        Ok(())
    }

    async fn commit(&mut self, frame: &Frame) -> Outcome {
        let id = self.transaction_id(frame)?;
        let frames = self.close_transaction(&id);
        self.pump_queues();
        for mut frame in frames {
            frame.headers.retain(|(k, _)| k != "transaction");
            match frame.command {
                Command::Send => {
                    // Checked and authorized when it was sent into the transaction.
                    let dest = frame.get("destination").unwrap_or_default();
                    match self.sending(dest)? {
                        Sending::Route(target) => self.publish(target, frame, None).await?,
                        Sending::Backend(dest) => self.hand_to_backend(dest, frame, None).await?,
                    }
                }
                _ => self.ack_or_nack(frame, &mut None).await?,
            }
        }
        Ok(())
    }

    fn encode(&self, frame: &Frame) -> Bytes {
        encode_frame(frame, self.version)
    }

    fn receipt_of(&self, id: &str) -> Receipt {
        Receipt {
            id: id.to_string(),
            frame: self.receipt(id),
        }
    }

    fn receipt(&self, id: &str) -> Bytes {
        self.receipt_with(id, Vec::new())
    }

    fn receipt_with(&self, id: &str, extra: Vec<(&'static str, String)>) -> Bytes {
        let mut receipt = Frame::new(Command::Receipt).header("receipt-id", id);
        for (name, value) in extra {
            receipt = receipt.header(name, value);
        }
        self.encode(&receipt)
    }

    fn fail(&mut self, fault: &Fault, receipt: Option<&str>) {
        debug!(session = %self.id(), reason = fault.label(), message = %fault.message(), detail = %fault.detail(), "session error");
        self.ctx.metrics.session_error(fault.label());
        self.end_reason.get_or_insert(fault.label());
        let error = self.encode(&error_frame(fault, receipt));
        self.handoff
            .finish(&self.endpoint, Some(error), &self.ctx.tasks);
        self.phase = Phase::Closed;
    }

    /// Closes the session with an ERROR frame for a fault the driver found (bad input the
    /// codec rejected, a timeout, a shutdown): the last frame the client gets.
    pub fn close(&mut self, fault: Fault) {
        if self.phase != Phase::Closed {
            self.fail(&fault, None);
        }
    }

    /// Releases everything the session holds in the broker: subscriptions (requeueing
    /// unacknowledged queue messages), its user registration, open transactions (aborted).
    pub fn end(&mut self) {
        for (_, frames) in std::mem::take(&mut self.transactions) {
            self.give_back_frames(&frames);
        }
        self.clear_verdicts();
        let subs: Vec<_> = self.subs.drain().map(|(_, s)| s).collect();
        for sub in &subs {
            self.drop_subscription(sub);
        }
        if let (Some(tenant), Some(user)) = (&self.tenant, &self.principal.user) {
            tenant.user_disconnected(user, &self.endpoint);
        }
        if let Some(tenant) = &self.tenant {
            if tenant.upstream.wants(EventKind::Disconnect) {
                let mut event = tenant.upstream.item(
                    ItemKind::Event(EventKind::Disconnect),
                    self.id(),
                    self.user(),
                );
                let reason = self.end_reason.unwrap_or("closed");
                event.fields.push(("reason", reason.to_string()));
                tenant.upstream.event(event);
            }
        }
        if let Some(tenant) = self.tenant.take() {
            tenant.session_ended();
        }
        self.phase = Phase::Closed;
        self.handoff.finish(&self.endpoint, None, &self.ctx.tasks);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.tenant.is_some() {
            self.end();
        }
    }
}

/// The SUBSCRIBE header that says where a user subscription's stream starts, and the MESSAGE
/// header that carries each stored message's offset (RabbitMQ's name and forms).
pub const STREAM_OFFSET_HEADER: &str = "x-stream-offset";

/// The SUBSCRIBE RECEIPT header that says whether everything after the position asked from
/// was replayed (`false`: retention had dropped some of it, or the store lost it since).
pub const RECOVERED_HEADER: &str = "x-stream-recovered";

/// The SUBSCRIBE RECEIPT header with the stream's epoch, which a SUBSCRIBE may send back with
/// `x-stream-offset: offset=N` so that an offset from an epoch since lost is not read as one
/// in the new epoch: positions of another epoch are not positions in this one.
pub const EPOCH_HEADER: &str = "x-stream-epoch";

/// The SUBSCRIBE header that bounds how many messages a client-ack queue consumer holds
/// unacknowledged (RabbitMQ's name and meaning; 0 or absent = no count limit).
pub const PREFETCH_HEADER: &str = "prefetch-count";

/// What a subscription is charged to the connection's budget: its id and destination are kept
/// about three times over (the session's map, the subscription, the broker's index).
fn subscription_weight(id: &str, target: &Target) -> usize {
    let names = match target {
        Target::Topic(dest) | Target::Queue(dest) => dest.len(),
        Target::User { user, dest } => user.len() + dest.len(),
    };
    SUBSCRIPTION_OVERHEAD + 2 * id.len() + 3 * names
}

/// What a frame buffered in a transaction is charged.
fn frame_weight(frame: &Frame) -> usize {
    FRAME_OVERHEAD + frame.body.len() + crate::broker::budget::headers_weight(&frame.headers)
}

/// A SEND's headers as receivers see them: the client's, but for the frame's own and a
/// claimed sender.
fn message_headers(headers: Vec<(String, String)>) -> Vec<(String, String)> {
    let headers = headers
        .into_iter()
        .filter(|(k, _)| {
            k != "transaction" && k != SENDER_HEADER && !RESERVED_HEADERS.contains(&k.as_str())
        })
        .collect();
    dedup_first(headers)
}

/// Keeps the first of repeated headers, as the spec says receivers read them.
fn dedup_first(headers: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut seen = HashSet::new();
    headers
        .into_iter()
        .filter(|(k, _)| seen.insert(k.clone()))
        .collect()
}

/// The ERROR frame for `fault`.
fn error_frame(fault: &Fault, receipt: Option<&str>) -> Frame {
    let mut error = Frame::new(Command::Error)
        .header("message", one_line(&fault.message()))
        .header("content-type", "text/plain");
    if let Some(id) = receipt {
        error = error.header("receipt-id", id);
    }
    for (name, value) in fault.extra_headers() {
        error = error.header(*name, *value);
    }
    error.body(Bytes::from(fault.detail()))
}

fn encode_frame(frame: &Frame, version: Version) -> Bytes {
    let mut out = BytesMut::new();
    encode(frame, version, &mut out);
    out.freeze()
}

fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

fn parse_heartbeat(value: &str) -> Option<(u64, u64)> {
    let (a, b) = value.split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}
