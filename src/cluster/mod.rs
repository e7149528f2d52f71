//! What crosses nodes, behind one trait. [`Backplane`] is all the broker and sessions know of
//! the cluster: interest changes go out (a user's first session here, a topic's first
//! subscriber here), and messages that may concern other nodes are forwarded. Two
//! implementations: [`standalone::Standalone`] (one node, nothing to forward) and
//! [`redis::RedisBackplane`]. The node names the concrete type only where it builds one.
//!
//! Messages arriving from other nodes come back in through [`LocalNode`], which the node
//! implements by delivering to its local broker only, so nothing is forwarded twice.

pub mod redis;
pub mod standalone;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::broker::{Content, Interest, Position};
use crate::metrics::Sample;

/// Why a message could not be forwarded to other nodes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// The cluster bus is down; the node keeps serving its own sessions meanwhile.
    #[error("the cluster bus (Redis) is unreachable: {0}")]
    Unavailable(String),
}

/// Resolves once Redis took a forwarded message: the number of nodes that received it.
pub type Confirmation = tokio::sync::oneshot::Receiver<Result<usize, ClusterError>>;

/// How a message went to other nodes. Forwarding is pipelined: the message is queued for the
/// cluster connection at once, and `confirmations` resolve when Redis has taken it. The
/// publish API waits for them (so it never answers 202 for a message Redis refused); STOMP
/// SENDs do not, so one client's stream of SENDs is not paced by Redis round trips.
#[derive(Debug, Default)]
pub struct Forwarded {
    /// One per message queued for Redis.
    pub confirmations: Vec<Confirmation>,
    /// For user and queue messages, the node each confirmation is for (topics: empty, the
    /// receivers are known only once confirmed).
    pub addressed: Vec<String>,
    /// For topics: this node is among the channel's receivers and must not be counted.
    pub counts_self: bool,
}

/// How many subscribers Redis handed one forwarded message to.
async fn receivers(confirmation: Confirmation) -> Result<usize, ClusterError> {
    confirmation
        .await
        .map_err(|_| ClusterError::Unavailable("the cluster connection was lost".into()))?
}

impl Forwarded {
    /// Other nodes it was addressed to (for topics: 0, unknown until confirmed).
    pub fn nodes(&self) -> usize {
        self.addressed.len()
    }

    /// Waits until Redis took every message; gives the nodes that received them.
    pub async fn confirmed(self) -> Result<usize, ClusterError> {
        let mut total = 0;
        for confirmation in self.confirmations {
            total += receivers(confirmation).await?;
        }
        Ok(total.saturating_sub(usize::from(self.counts_self)))
    }

    /// Waits until Redis took every message of a user or queue message; gives the nodes whose
    /// inbox had a subscriber (they received it) and those whose inbox had none (the node is
    /// gone or lost its subscription: it did not).
    pub async fn confirmed_by_node(self) -> Result<(Vec<String>, Vec<String>), ClusterError> {
        let (mut reached, mut missed) = (Vec::new(), Vec::new());
        for (node, confirmation) in self.addressed.into_iter().zip(self.confirmations) {
            if receivers(confirmation).await? > 0 {
                reached.push(node);
            } else {
                missed.push(node);
            }
        }
        Ok((reached, missed))
    }
}

/// Which nodes a user message goes to.
#[derive(Debug, Clone, Copy)]
pub enum Holders<'a> {
    /// The user's presence, from this node's cache when it may serve.
    Cached,
    /// These nodes, as the store read them when it stored the message.
    Known(&'a [String]),
    /// The user's presence read again from the cluster (not from a cache), but for these
    /// nodes, which already received the message.
    Reread {
        /// Nodes that already have it.
        skip: &'a [String],
    },
}

/// The cluster, as the node sees it.
#[async_trait]
pub trait Backplane: Send + Sync + std::fmt::Debug {
    /// Starts the backplane's tasks: joining the cluster, forwarding, and delivering what
    /// other nodes send to `local`. Called once, when the node starts serving.
    fn start(self: Arc<Self>, local: Arc<dyn LocalNode>);
    /// Leaves the cluster (what this node holds withdrawn, other nodes told) and stops the
    /// backplane's tasks. Called once, after the node's sessions have closed.
    async fn stop(&self);
    /// Mirrors a change of what this node holds for `tenant`. Never blocks: the cluster
    /// applies it in the background, and re-applies everything after a reconnect.
    fn interest(&self, tenant: &str, change: &Interest);
    /// Sends a user message (stored at `stored`, if it was) to other nodes where `user` has
    /// sessions, as `holders` says.
    async fn to_user(
        &self,
        tenant: &str,
        user: &str,
        dest: &str,
        content: &Content,
        stored: Option<Position>,
        holders: Holders<'_>,
    ) -> Result<Forwarded, ClusterError>;
    /// Resolves once the interest changes given so far are applied in the cluster (a user's
    /// presence is visible to every node), or fails when the cluster cannot be reached.
    async fn settled(&self) -> Result<(), ClusterError>;
    /// Sends a topic message (stored at `stored`, for a topic with history) to the other
    /// nodes with subscribers of `dest`.
    async fn to_topic(
        &self,
        tenant: &str,
        dest: &str,
        content: &Content,
        stored: Option<Position>,
    ) -> Result<Forwarded, ClusterError>;
    /// Hands a queue message to one other node with consumers of `dest`; `nodes == 0` when
    /// there is none (the caller keeps it).
    async fn to_queue(
        &self,
        tenant: &str,
        dest: &str,
        content: &Content,
    ) -> Result<Forwarded, ClusterError>;
    /// Appends `entries` to the Redis stream `key`, which keeps about `max_len` entries: a
    /// tenant's stream for its backends. Fails when Redis did not take them all, and always
    /// on a node without Redis.
    async fn append_stream(
        &self,
        key: &str,
        entries: &[&(dyn StreamEntry + Sync)],
        max_len: usize,
    ) -> Result<(), ClusterError>;
    /// Asks every other live node `query` and gathers their replies within about a second;
    /// nodes that did not reply in time are listed as missing. A single node has no others.
    async fn ask_others(&self, query: &Query) -> Result<Replies, ClusterError>;
    /// Records that `tenant`'s `user` may not connect until `until_ms` (ms since the epoch),
    /// so that nodes joining later learn it too.
    async fn ban(&self, tenant: &str, user: &str, until_ms: u64) -> Result<(), ClusterError>;
    /// Reads entry `key` of `tenant`'s plugin cache from the cluster's Redis.
    async fn cache_get(&self, tenant: &str, key: &str) -> Result<Option<String>, ClusterError>;
    /// Stores entry `key` of `tenant`'s plugin cache in the cluster's Redis for `ttl_ms`.
    async fn cache_set(
        &self,
        tenant: &str,
        key: &str,
        value: &str,
        ttl_ms: u64,
    ) -> Result<(), ClusterError>;
    /// Removes entry `key` of `tenant`'s plugin cache from the cluster's Redis.
    async fn cache_delete(&self, tenant: &str, key: &str) -> Result<(), ClusterError>;
    /// The documents of the tenants changed through the admin API, by tenant id (JSON the
    /// node reads; Redis holds them in one hash).
    async fn tenant_documents(&self) -> Result<Vec<(String, String)>, ClusterError>;
    /// The document of tenant `id`, if the admin API wrote one.
    async fn tenant_document(&self, id: &str) -> Result<Option<String>, ClusterError>;
    /// Writes the document of tenant `id` and tells every node it changed
    /// ([`LocalNode::tenants_changed`]).
    async fn put_tenant_document(&self, id: &str, document: &str) -> Result<(), ClusterError>;
    /// Keeps the plugin uploaded for `tenant` (`None`: forgets it) and tells every node
    /// ([`LocalNode::plugin_changed`]).
    async fn put_plugin(&self, tenant: &str, wasm: Option<&[u8]>) -> Result<(), ClusterError>;
    /// The plugin last uploaded for `tenant`, if one is kept.
    async fn plugin(&self, tenant: &str) -> Result<Option<Vec<u8>>, ClusterError>;
    /// True when the node shares a Redis with other nodes, so that what it keeps there (such
    /// as plugin cache entries) every node sees; false for a single node.
    fn is_shared(&self) -> bool;
    /// True while the cluster can route (always, for a single node).
    fn is_ready(&self) -> bool;
    /// A short description for health output.
    fn describe(&self) -> serde_json::Value;
    /// The backplane's own counters and gauges for `/metrics`.
    fn metrics(&self) -> Vec<Sample>;
}

/// One entry of a stream for a tenant's backends: it writes its fields straight into the
/// command that appends it, so that an entry is not built twice on its way to Redis.
pub trait StreamEntry {
    /// Calls `field` with each field's name and value, in order.
    fn write_fields(&self, field: &mut dyn FnMut(&str, &[u8]));
}

/// This node, as the backplane calls it: where messages from other nodes are delivered.
pub trait LocalNode: Send + Sync {
    /// Delivers an envelope from another node to local subscribers only.
    fn deliver(&self, envelope: Envelope);
    /// Tenants and what this node holds for each, to re-announce after Redis lost its data or
    /// the connection was re-established.
    fn holdings(&self) -> Vec<(String, Vec<Interest>)>;
    /// A message from a tenant's ingress channel (the seed system's JSON format).
    fn ingress(&self, tenant: &str, payload: &[u8]);
    /// The cluster connection was lost and is back (or Redis lost its data): messages sent
    /// to this node meanwhile may not have arrived, so stored ones are read again.
    fn resumed(&self);
    /// Answers a question another node asked about what this node holds.
    fn answer(&self, query: &Query) -> Reply;
    /// `tenant`'s `user` may not connect until `until_ms` (read from the cluster on joining).
    fn banned(&self, tenant: &str, user: &str, until_ms: u64);
    /// The ids of the tenants the node serves now.
    fn tenant_ids(&self) -> Vec<String>;
    /// The stored document of tenant `id` changed (`None`: any may have, as after joining or
    /// a reconnect): the node reads it again.
    fn tenants_changed(&self, id: Option<&str>);
    /// A plugin was uploaded for `tenant` on another node: the node installs it too.
    fn plugin_changed(&self, tenant: &str);
}

/// A question every node answers about what it holds: the presence and disconnect APIs ask
/// it of every node and add the replies up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "q", rename_all = "snake_case")]
pub enum Query {
    /// How many sessions `user` has on the node.
    Sessions {
        /// The tenant.
        tenant: String,
        /// The user.
        user: String,
    },
    /// Users with sessions on the node: up to `limit` names sorting after `after`, in order.
    Users {
        /// The tenant.
        tenant: String,
        /// The last name of the page before.
        after: Option<String>,
        /// The page's size.
        limit: usize,
    },
    /// How many subscriptions `dest` has on the node.
    Subscribers {
        /// The tenant.
        tenant: String,
        /// The destination as clients subscribe to it.
        dest: String,
    },
    /// The node's state for the operator's console: its connections and counters.
    Status,
    /// Close `user`'s sessions on the node (and refuse their CONNECTs until `until_ms`, when
    /// it is later than now): how many were closed.
    Disconnect {
        /// The tenant.
        tenant: String,
        /// The user.
        user: String,
        /// Until when the user may not connect again (0: no ban).
        until_ms: u64,
    },
}

/// One node's reply to a [`Query`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
pub enum Reply {
    /// A count (sessions, subscriptions, sessions closed).
    Count {
        /// The count.
        n: usize,
    },
    /// A page of user names.
    Users {
        /// The names, in order.
        names: Vec<String>,
    },
    /// A node's state.
    Status {
        /// The state.
        status: NodeStatus,
    },
}

/// A node's state as the console shows it: counters only grow, so rates are differences.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Connections open.
    pub connections: u64,
    /// Users with a session there, all tenants.
    pub users: u64,
    /// Messages published there (API, SEND, ingress).
    pub published: u64,
    /// Deliveries into its subscriptions.
    pub delivered: u64,
    /// Messages it sent on to other nodes.
    pub forwarded: u64,
    /// Messages it received from other nodes.
    pub received: u64,
    /// Messages not delivered, by reason.
    pub dropped: Vec<(String, u64)>,
    /// Whether it drains for a restart.
    pub draining: bool,
    /// Whether it can route.
    pub ready: bool,
    /// When it answered, ms since the epoch.
    pub at_ms: u64,
}

/// What the other nodes replied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replies {
    /// Each node that replied, and its reply.
    pub by_node: Vec<(String, Reply)>,
    /// Live nodes that did not reply in time.
    pub missing: Vec<String>,
}

/// What kind of destination an envelope is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A user destination; `user` is set.
    User,
    /// A topic.
    Topic,
    /// A queue.
    Queue,
    /// A durable queue has new entries in the store (no content): a node with consumers of
    /// it reads them.
    QueueStored,
}

/// A message crossing nodes. Versioned by field names so that fields can be added (a
/// time-to-live, an offline-storage flag) without breaking older nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The node that published it (to drop its own echo).
    pub origin: String,
    /// The tenant.
    pub tenant: String,
    /// The destination kind.
    pub kind: Kind,
    /// For user messages: the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The destination (for user messages, without `/user`).
    pub dest: String,
    /// Headers for subscribers.
    pub headers: Vec<(String, String)>,
    /// The body as text when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The body, hex-encoded, when it is not UTF-8 (rare: STOMP bodies to browsers are text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hex: Option<String>,
    /// For a stored message (a user's, or a topic's with history): its stream's epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// For a stored message: its offset in the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

impl Envelope {
    /// An envelope for `content`.
    pub fn new(
        origin: &str,
        tenant: &str,
        kind: Kind,
        user: Option<&str>,
        dest: &str,
        content: &Content,
    ) -> Envelope {
        let (text, hex) = match std::str::from_utf8(&content.body) {
            Ok(t) => (Some(t.to_string()), None),
            Err(_) => (None, Some(crate::util::hex(&content.body))),
        };
        Envelope {
            origin: origin.to_string(),
            tenant: tenant.to_string(),
            kind,
            user: user.map(str::to_string),
            dest: dest.to_string(),
            headers: content.headers.clone(),
            text,
            hex,
            epoch: None,
            offset: None,
        }
    }

    /// This envelope for a message stored at `position`.
    pub fn stored_at(mut self, position: Option<Position>) -> Envelope {
        self.epoch = position.map(|p| p.epoch);
        self.offset = position.map(|p| p.offset);
        self
    }

    /// Where the message is stored, if it is.
    pub fn position(&self) -> Option<Position> {
        Some(Position {
            epoch: self.epoch?,
            offset: self.offset?,
        })
    }

    /// The content it carries; `None` when the body encoding is broken.
    pub fn content(&self) -> Option<Content> {
        let body = match (&self.text, &self.hex) {
            (Some(t), _) => Bytes::from(t.clone()),
            (None, Some(h)) => Bytes::from(crate::util::unhex(h)?),
            (None, None) => Bytes::new(),
        };
        Some(Content {
            headers: self.headers.clone(),
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_carry_text_and_binary_bodies() {
        for body in [&b"hello"[..], &[0u8, 159, 146, 150][..]] {
            let content = Content {
                headers: vec![("x".into(), "y".into())],
                body: Bytes::copy_from_slice(body),
            };
            let e = Envelope::new("n1", "t", Kind::Topic, None, "/topic/a", &content);
            let json = serde_json::to_string(&e).unwrap();
            let back: Envelope = serde_json::from_str(&json).unwrap();
            assert_eq!(back.content().unwrap(), content);
        }
    }
}
