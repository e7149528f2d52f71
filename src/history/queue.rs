//! Queues kept in a store shared by the cluster, so that a message accepted for `/queue/...`
//! reaches a consumer even if the node holding it dies before it is acknowledged. The
//! [`QueueStore`] trait is what a tenant needs of such a store; Redis implements it with a
//! stream and a consumer group per queue (`cluster::redis::queues`).
//!
//! An entry's life: stored by the node that accepted it ([`QueueStore::push`], which also
//! tells the nodes with consumers); taken by one of those nodes for its consumers
//! ([`QueueStore::take`], only as many as they can hold soon); removed once acknowledged
//! ([`QueueStore::acknowledge`]: delivered in `auto` mode, ACKed in the client modes). What a
//! node took and did not get acknowledged stays the node's in the store; when the node dies
//! (or its last consumer of the queue leaves, [`QueueStore::give_back`]), a node with consumers
//! claims it ([`QueueStore::claim`]) and delivers it again, marked `redelivered`.

use std::sync::Arc;

use async_trait::async_trait;

use super::HistoryError;
use crate::broker::Content;

/// An entry a node took from a queue's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its id in the stream.
    pub id: String,
    /// Headers and body.
    pub content: Content,
    /// Another node held it before (it died, or gave it back): it may have been delivered.
    pub redelivered: bool,
}

/// A tenant's queues in a store shared by the cluster.
#[async_trait]
pub trait QueueStore: Send + Sync + std::fmt::Debug {
    /// Stores a message in queue `dest` and tells the other nodes with consumers of it: how
    /// many were told. Refused when the queue is at its limit or the store cannot be reached.
    async fn push(&self, dest: &str, content: &Content) -> Result<usize, HistoryError>;

    /// Up to `count` entries of `dest` no node took yet, now this node's.
    async fn take(&self, dest: &str, count: usize) -> Result<Vec<Entry>, HistoryError>;

    /// Up to `count` entries of `dest` that nodes no longer alive held (or that were given
    /// back), now this node's.
    async fn claim(&self, dest: &str, count: usize) -> Result<Vec<Entry>, HistoryError>;

    /// Removes acknowledged entries: (queue, entry id) pairs.
    async fn acknowledge(&self, entries: &[(Arc<str>, String)]) -> Result<(), HistoryError>;

    /// Gives entries this node took and never delivered, (queue, entry id) pairs, back to the
    /// cluster (its last consumer of the queue left, or a frame never reached its socket), for
    /// a node with consumers to claim.
    async fn give_back(&self, entries: &[(Arc<str>, String)]) -> Result<(), HistoryError>;
}
