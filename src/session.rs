//! The per-connection STOMP state machine, shared by every transport. It takes decoded frames
//! and timer verdicts, and answers by queueing frames on its connection's outbox, calling the
//! tenant's broker and policy, and telling the driver whether to go on. It owns no socket, so
//! it is tested frame by frame.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tracing::debug;

use crate::broker::destination::{self, Target};
use crate::broker::message::RESERVED_HEADERS;
use crate::broker::{AckMode, Content, Endpoint, Subscription};
use crate::node::Node;
use crate::policy::{ConnectInfo, Operation, Principal, TransportKind};
use crate::stomp::{encode, Command, Frame, Version};
use crate::tenant::Tenant;

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

/// The server name in CONNECTED frames.
pub const SERVER: &str = concat!("stompbox/", env!("CARGO_PKG_VERSION"));

/// How many authorization verdicts a session remembers; a session that sends to more distinct
/// destinations than this starts over. Sized for a backend that sends to every user of a large
/// tenant over one connection (a plugin call per SEND once the set cycles past the cache), at
/// about 1 MiB for a session that fills it; browsers' sessions hold a handful.
const VERDICT_CACHE: usize = 16_384;

/// The longest heart-beat interval honoured (a day); longer offers are treated as this.
const MAX_HEARTBEAT_MS: u64 = 24 * 60 * 60 * 1000;

/// Where the connection came from.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The transport.
    pub transport: TransportKind,
    /// The peer address.
    pub remote_addr: Option<String>,
    /// The tenant the transport already chose (WebSocket path); `None` = decide at CONNECT.
    pub tenant: Option<Arc<Tenant>>,
}

/// One STOMP session.
#[derive(Debug)]
pub struct Session {
    node: Arc<Node>,
    origin: Origin,
    endpoint: Arc<Endpoint>,
    phase: Phase,
    version: Version,
    tenant: Option<Arc<Tenant>>,
    principal: Principal,
    subs: HashMap<String, Arc<Subscription>>,
    transactions: HashMap<String, Vec<Frame>>,
    verdicts: HashSet<(Operation, String)>,
    heartbeat_in: Option<Duration>,
}

/// A protocol error: the ERROR frame's `message`, and more detail for its body.
struct Fault {
    message: String,
    detail: String,
}

fn fault(message: impl Into<String>, detail: impl Into<String>) -> Fault {
    Fault {
        message: message.into(),
        detail: detail.into(),
    }
}

type Outcome = Result<(), Fault>;

impl Session {
    /// A session waiting for CONNECT.
    pub fn new(node: Arc<Node>, origin: Origin) -> Session {
        let endpoint = Arc::new(Endpoint::new(
            Arc::from(node.next_id()),
            node.server.outbound_queue_bytes,
        ));
        Session {
            node,
            origin,
            endpoint,
            phase: Phase::AwaitingConnect,
            version: Version::V1_0,
            tenant: None,
            principal: Principal::default(),
            subs: HashMap::new(),
            transactions: HashMap::new(),
            verdicts: HashSet::new(),
            heartbeat_in: None,
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
        let receipt = (frame.command != Command::Connect && frame.command != Command::Stomp)
            .then(|| frame.get("receipt").map(str::to_string))
            .flatten();
        let outcome = match self.phase {
            Phase::Closed => return Flow::Close,
            Phase::AwaitingConnect => match frame.command {
                Command::Connect | Command::Stomp => self.connect(&frame).await,
                other => Err(fault(
                    "expected CONNECT",
                    format!(
                        "the first frame must be CONNECT or STOMP, not {}",
                        other.as_str()
                    ),
                )),
            },
            Phase::Connected => self.connected_frame(frame).await,
        };
        match outcome {
            Err(f) => {
                self.fail(&f.message, &f.detail, receipt.as_deref());
                Flow::Close
            }
            Ok(()) if self.phase == Phase::Closed => Flow::Close,
            Ok(()) => {
                if let Some(id) = receipt {
                    self.reply(Frame::new(Command::Receipt).header("receipt-id", id));
                }
                Flow::Continue
            }
        }
    }

    async fn connected_frame(&mut self, frame: Frame) -> Outcome {
        match frame.command {
            Command::Connect | Command::Stomp => Err(fault(
                "already connected",
                "CONNECT was sent twice on one connection",
            )),
            Command::Send => self.send(frame).await,
            Command::Subscribe => self.subscribe(&frame).await,
            Command::Unsubscribe => self.unsubscribe(&frame),
            Command::Ack | Command::Nack => self.ack_or_nack(frame),
            Command::Begin => self.begin(&frame),
            Command::Commit => self.commit(&frame).await,
            Command::Abort => {
                let id = self.transaction_id(&frame)?;
                self.transactions.remove(&id);
                Ok(())
            }
            Command::Disconnect => {
                let receipt = frame
                    .get("receipt")
                    .map(|id| self.encode(&Frame::new(Command::Receipt).header("receipt-id", id)));
                self.endpoint.outbox.finish(receipt);
                self.phase = Phase::Closed;
                Ok(())
            }
            Command::Connected | Command::Message | Command::Receipt | Command::Error => {
                Err(fault(
                    "unexpected frame",
                    format!(
                        "{} is a frame only the server sends",
                        frame.command.as_str()
                    ),
                ))
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
                .ok_or_else(|| {
                    fault(
                        "unsupported STOMP version",
                        format!(
                            "this server speaks STOMP 1.0, 1.1 and 1.2; the client accepts {list}"
                        ),
                    )
                })?,
        };
        self.version = version;
        let tenant = match &self.origin.tenant {
            Some(t) => t.clone(),
            None => frame
                .get("host")
                .and_then(|h| self.node.tenant(h))
                .or_else(|| self.node.default_tenant())
                .cloned()
                .ok_or_else(|| {
                    fault(
                        "unknown tenant",
                        "the CONNECT host header names no tenant and this node has no 'default' tenant",
                    )
                })?,
        };
        let (client_send, client_recv) = match (version, frame.get("heart-beat")) {
            (Version::V1_0, _) | (_, None) => (0, 0),
            (_, Some(value)) => parse_heartbeat(value).ok_or_else(|| {
                fault(
                    "invalid heart-beat header",
                    format!("heart-beat must be two non-negative integers like 10000,10000, got '{value}'"),
                )
            })?,
        };
        let info = ConnectInfo {
            tenant: tenant.id.clone(),
            transport: self.origin.transport,
            remote_addr: self.origin.remote_addr.clone(),
            headers: frame.headers.clone(),
        };
        let principal = tenant
            .policy()
            .authenticate(&info)
            .await
            .map_err(|reason| fault("authentication failed", reason))?;

        let [server_send, server_recv] = if version == Version::V1_0 {
            [0, 0]
        } else {
            self.node.server.heartbeat_ms
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
            .then(|| Duration::from_millis(in_ms).mul_f64(self.node.server.heartbeat_tolerance));

        if let Some(user) = &principal.user {
            tenant.user_connected(user);
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
        self.tenant = Some(tenant);
        self.principal = principal;
        self.phase = Phase::Connected;
        self.reply(connected);
        Ok(())
    }

    fn tenant(&self) -> Result<Arc<Tenant>, Fault> {
        self.tenant
            .clone()
            .ok_or_else(|| fault("not connected", "no tenant"))
    }

    async fn authorize(&mut self, op: Operation, dest: &str) -> Outcome {
        let key = (op, dest.to_string());
        if self.verdicts.contains(&key) {
            return Ok(());
        }
        let tenant = self.tenant()?;
        tenant
            .policy()
            .authorize(&self.principal, op, dest)
            .await
            .map_err(|reason| {
                let verb = match op {
                    Operation::Subscribe => "subscribe to",
                    Operation::Send => "send to",
                };
                fault("access denied", format!("may not {verb} {dest}: {reason}"))
            })?;
        if self.verdicts.len() >= VERDICT_CACHE {
            self.verdicts.clear();
        }
        self.verdicts.insert(key);
        Ok(())
    }

    fn required<'f>(&self, frame: &'f Frame, name: &str) -> Result<&'f str, Fault> {
        frame.get(name).ok_or_else(|| {
            fault(
                format!("missing {name} header"),
                format!("{} requires a '{name}' header", frame.command.as_str()),
            )
        })
    }

    fn in_transaction(&mut self, frame: Frame) -> Result<Option<Frame>, Fault> {
        let Some(id) = frame.get("transaction") else {
            return Ok(Some(frame));
        };
        let limit = self.node.server.max_transaction_frames;
        let Some(frames) = self.transactions.get_mut(id) else {
            return Err(fault(
                "unknown transaction",
                format!("no transaction '{id}' was begun on this connection"),
            ));
        };
        if frames.len() >= limit {
            return Err(fault(
                "transaction too large",
                format!("a transaction may hold at most {limit} frames"),
            ));
        }
        frames.push(frame);
        Ok(None)
    }

    async fn send(&mut self, frame: Frame) -> Outcome {
        let dest = self.required(&frame, "destination")?.to_string();
        // The policy's verdict comes first, so a denied destination reads "access denied"
        // whatever its shape.
        self.authorize(Operation::Send, &dest).await?;
        let target = destination::for_send(&dest)
            .map_err(|e| fault("invalid destination", e.to_string()))?;
        let Some(frame) = self.in_transaction(frame)? else {
            return Ok(());
        };
        self.publish(&target, frame).await
    }

    async fn publish(&self, target: &Target, frame: Frame) -> Outcome {
        let headers = frame
            .headers
            .into_iter()
            .filter(|(k, _)| k != "transaction" && !RESERVED_HEADERS.contains(&k.as_str()))
            .collect();
        let content = Content {
            headers: dedup_first(headers),
            body: frame.body,
        };
        // A cluster outage is not the client's fault: the message went to this node's
        // subscribers, the loss is logged and counted, and the session goes on.
        self.tenant()?
            .route(target, content, false)
            .await
            .map(|_| ())
            .map_err(|e| fault("message not accepted", e.to_string()))
    }

    async fn subscribe(&mut self, frame: &Frame) -> Outcome {
        let dest = self.required(frame, "destination")?.to_string();
        let id = match (self.version, frame.get("id")) {
            (_, Some(id)) => id.to_string(),
            // STOMP 1.0 made the id optional; the destination then names the subscription.
            (Version::V1_0, None) => dest.clone(),
            (_, None) => {
                return Err(fault(
                    "missing id header",
                    "SUBSCRIBE requires an 'id' header",
                ))
            }
        };
        if self.subs.contains_key(&id) {
            return Err(fault(
                "duplicate subscription id",
                format!("subscription '{id}' already exists on this connection"),
            ));
        }
        let max = self.node.server.max_subscriptions;
        if self.subs.len() >= max {
            return Err(fault(
                "too many subscriptions",
                format!("a connection may hold at most {max} subscriptions"),
            ));
        }
        let ack = match frame.get("ack") {
            None => AckMode::Auto,
            Some(mode) => AckMode::parse(mode).ok_or_else(|| {
                fault(
                    "invalid ack mode",
                    format!("ack must be auto, client or client-individual, got '{mode}'"),
                )
            })?,
        };
        self.authorize(Operation::Subscribe, &dest).await?;
        let target = destination::for_subscribe(&dest, self.user())
            .map_err(|e| fault("invalid destination", e.to_string()))?;
        let sub = Arc::new(Subscription::new(
            id.clone(),
            target,
            ack,
            self.endpoint.clone(),
            self.version,
        ));
        self.tenant()?.subscribe(sub.clone());
        self.subs.insert(id, sub);
        Ok(())
    }

    fn unsubscribe(&mut self, frame: &Frame) -> Outcome {
        let id = match (self.version, frame.get("id")) {
            (_, Some(id)) => id.to_string(),
            (Version::V1_0, None) => self.required(frame, "destination")?.to_string(),
            (_, None) => {
                return Err(fault(
                    "missing id header",
                    "UNSUBSCRIBE requires an 'id' header",
                ))
            }
        };
        let sub = self.subs.remove(&id).ok_or_else(|| {
            fault(
                "unknown subscription",
                format!("there is no subscription '{id}' on this connection"),
            )
        })?;
        self.drop_subscription(&sub);
        Ok(())
    }

    fn drop_subscription(&self, sub: &Arc<Subscription>) {
        let Some(tenant) = &self.tenant else { return };
        tenant.unsubscribe(sub);
        for unacked in sub.close() {
            if let Some((queue, message)) = unacked.requeue {
                tenant.broker.requeue(&queue, message, self.id());
            }
        }
    }

    fn ack_or_nack(&mut self, frame: Frame) -> Outcome {
        let header = if self.version == Version::V1_2 {
            "id"
        } else {
            "message-id"
        };
        let ack_id = self.required(&frame, header)?.to_string();
        let seq = self.endpoint.parse_ack_id(&ack_id).ok_or_else(|| {
            fault(
                "unknown message",
                format!("'{ack_id}' is not the id of a message sent on this connection"),
            )
        })?;
        let Some(frame) = self.in_transaction(frame)? else {
            return Ok(());
        };
        // Already settled (e.g. by an earlier cumulative ACK) is not an error: clients that ACK
        // every message in `client` mode would otherwise be closed for doing the right thing.
        let Some(sub) = self.subs.values().find(|s| s.holds(seq)).cloned() else {
            return Ok(());
        };
        let settled = sub.settle(seq);
        if frame.command == Command::Nack {
            let tenant = self.tenant()?;
            for unacked in settled {
                if let Some((queue, message)) = unacked.requeue {
                    tenant.broker.requeue(&queue, message, self.id());
                }
            }
        }
        Ok(())
    }

    fn transaction_id(&self, frame: &Frame) -> Result<String, Fault> {
        let id = self.required(frame, "transaction")?;
        if !self.transactions.contains_key(id) {
            return Err(fault(
                "unknown transaction",
                format!("no transaction '{id}' was begun on this connection"),
            ));
        }
        Ok(id.to_string())
    }

    fn begin(&mut self, frame: &Frame) -> Outcome {
        let id = self.required(frame, "transaction")?;
        if self.transactions.contains_key(id) {
            return Err(fault(
                "duplicate transaction",
                format!("transaction '{id}' is already open"),
            ));
        }
        let max = self.node.server.max_transactions;
        if self.transactions.len() >= max {
            return Err(fault(
                "too many transactions",
                format!("a connection may hold at most {max} open transactions"),
            ));
        }
        self.transactions.insert(id.to_string(), Vec::new());
        Ok(())
    }

    async fn commit(&mut self, frame: &Frame) -> Outcome {
        let id = self.transaction_id(frame)?;
        let frames = self.transactions.remove(&id).unwrap_or_default();
        for mut frame in frames {
            frame.headers.retain(|(k, _)| k != "transaction");
            match frame.command {
                Command::Send => {
                    // Checked and authorized when it was sent into the transaction.
                    let dest = frame.get("destination").unwrap_or_default();
                    let target = destination::for_send(dest)
                        .map_err(|e| fault("invalid destination", e.to_string()))?;
                    self.publish(&target, frame).await?;
                }
                _ => self.ack_or_nack(frame)?,
            }
        }
        Ok(())
    }

    fn encode(&self, frame: &Frame) -> Bytes {
        let mut out = BytesMut::new();
        encode(frame, self.version, &mut out);
        out.freeze()
    }

    fn reply(&self, frame: Frame) {
        // A refusal means the connection is already closing; the reply has nowhere to go.
        let _ = self.endpoint.outbox.push_control(self.encode(&frame));
    }

    fn fail(&mut self, message: &str, detail: &str, receipt: Option<&str>) {
        let mut error = Frame::new(Command::Error)
            .header("message", one_line(message))
            .header("content-type", "text/plain");
        if let Some(id) = receipt {
            error = error.header("receipt-id", id);
        }
        if message == "unsupported STOMP version" {
            error = error.header("version", "1.0,1.1,1.2");
        }
        let error = error.body(Bytes::from(detail.to_string()));
        debug!(session = %self.id(), message, detail, "protocol error");
        self.endpoint.outbox.finish(Some(self.encode(&error)));
        self.phase = Phase::Closed;
    }

    /// Closes the session with an ERROR frame (bad input the codec rejected, a timeout, a
    /// shutdown): the last frame the client gets.
    pub fn close_with_error(&mut self, message: &str, detail: &str) {
        if self.phase != Phase::Closed {
            self.fail(message, detail, None);
        }
    }

    /// Releases everything the session holds in the broker: subscriptions (requeueing
    /// unacknowledged queue messages), its user registration, open transactions (aborted).
    pub fn end(&mut self) {
        self.transactions.clear();
        let subs: Vec<_> = self.subs.drain().map(|(_, s)| s).collect();
        for sub in &subs {
            self.drop_subscription(sub);
        }
        if let (Some(tenant), Some(user)) = (&self.tenant, &self.principal.user) {
            tenant.user_disconnected(user);
        }
        self.tenant = None;
        self.phase = Phase::Closed;
        self.endpoint.outbox.finish(None);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.tenant.is_some() {
            self.end();
        }
    }
}

/// Keeps the first of repeated headers, as the spec says receivers read them.
fn dedup_first(headers: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut seen = HashSet::new();
    headers
        .into_iter()
        .filter(|(k, _)| seen.insert(k.clone()))
        .collect()
}

fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

fn parse_heartbeat(value: &str) -> Option<(u64, u64)> {
    let (a, b) = value.split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}
