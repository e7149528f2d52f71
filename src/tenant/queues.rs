//! A tenant's durable queues on this node (a store shared by the cluster): storing what is
//! published, reading entries for this node's consumers, acknowledging them, giving back what
//! no consumer here will take, and claiming what dead nodes held.
//!
//! The broker's queues stay as they are (consumers with room, a backlog, round-robin); what
//! changes is where a message waits. It waits in the store until a node with consumers takes
//! it, and a node takes only [`READ_AHEAD`] more than its backlog holds, so a queue of any
//! length costs a node little. Each message carries its entry as a [`Ticket`]: delivering it in
//! `auto` mode or an ACK acknowledges it, and one task applies acknowledgements in batches.
//! Reads start when the store says the queue has entries (a notice from the node that stored
//! them), when a consumer here gains room, and once a [`TICK`] for every queue consumed here,
//! which also claims what nodes no longer alive held.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::Tenant;
use crate::broker::ticket::{SettleQueue, Settled, Ticket};
use crate::broker::{Content, Message, RouteError};
use crate::history::queue::{Entry, QueueStore};
use crate::metrics::Metrics;

/// Entries a node keeps waiting per queue beyond what its consumers hold.
pub const READ_AHEAD: usize = 64;
/// How often queues consumed here are read and claimed from, whatever notices said.
const TICK: Duration = Duration::from_millis(1_000);
/// How long failed acknowledgements wait before they are tried again.
const ACK_RETRY: Duration = Duration::from_millis(250);
/// How many times a batch of acknowledgements is tried (20 × 250 ms: a Redis outage of
/// 5 s) before it is given up: its entries stay pending under this node and are delivered
/// again if it dies, never lost.
const ACK_TRIES: usize = 20;
/// Acknowledgements applied in one round.
const ACK_BATCH: usize = 512;

/// What a tenant with durable queues holds for them.
#[derive(Debug)]
pub(super) struct Durable {
    store: Arc<dyn QueueStore>,
    settle: SettleQueue,
    settled: Mutex<Option<mpsc::UnboundedReceiver<Settled>>>,
    reads: Mutex<HashMap<String, Arc<Read>>>,
}

/// One queue's reading on this node: at most one read runs; a request while it runs makes it
/// go round once more.
#[derive(Debug, Default)]
struct Read {
    running: AtomicBool,
    again: AtomicBool,
}

impl Durable {
    pub(super) fn new(store: Arc<dyn QueueStore>) -> Durable {
        let (settle, settled) = mpsc::unbounded_channel();
        Durable {
            store,
            settle,
            settled: Mutex::new(Some(settled)),
            reads: Mutex::new(HashMap::new()),
        }
    }
}

impl Tenant {
    /// Stores a message of queue `dest` and tells the nodes with consumers; how many other
    /// nodes were told.
    pub(super) async fn push_queue(
        &self,
        dest: &str,
        content: &Content,
    ) -> Result<usize, RouteError> {
        let durable = self.durable.as_ref().expect("called for durable queues");
        let told = durable.store.push(dest, content).await.map_err(|e| {
            self.metrics.store.refused.fetch_add(1, Ordering::Relaxed);
            RouteError::NotStored(e.to_string())
        })?;
        self.metrics.store.stored.fetch_add(1, Ordering::Relaxed);
        if self.broker.has_consumers(dest) {
            self.read_queue(dest);
        }
        Ok(told)
    }

    /// True when this tenant's queues are kept in a store shared by the cluster.
    pub fn durable_queues(&self) -> bool {
        self.durable.is_some()
    }

    /// Hands queue `dest`'s backlog to consumers with room, and reads more of a durable queue
    /// when little waits: called when a consumer of it may have gained room.
    pub fn pump_queue(&self, dest: &str) {
        self.broker.pump(dest);
        if self.durable.is_some() && self.broker.waiting(dest) < READ_AHEAD / 2 {
            self.read_queue(dest);
        }
    }

    /// The store says queue `dest` has new entries (another node stored them).
    pub fn queue_stored(&self, dest: &str) {
        if self.durable.is_some() && self.broker.has_consumers(dest) {
            self.read_queue(dest);
        }
    }

    /// A consumer of queue `dest` here ended and gave back what it held: if it was the last,
    /// what waits here goes back to the store, for a node with consumers to claim.
    pub fn queue_consumer_left(&self, dest: &str) {
        let Some(durable) = &self.durable else { return };
        if self.broker.has_consumers(dest) {
            return;
        }
        // What a queue no one here consumes needs of this node: nothing (a read under way
        // keeps its own until it ends).
        durable
            .reads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(dest);
        let waiting: Vec<(Arc<str>, String)> = self
            .broker
            .take_backlog(dest)
            .iter()
            .filter_map(|m| m.ticket().map(|t| (t.queue.clone(), t.id.clone())))
            .collect();
        if waiting.is_empty() {
            return;
        }
        let (store, metrics) = (durable.store.clone(), self.metrics.clone());
        tokio::spawn(async move { give_back(&*store, &metrics, &waiting).await });
    }

    fn me(&self) -> Option<Arc<Tenant>> {
        self.me.get().and_then(Weak::upgrade)
    }

    /// Reads entries of `dest` for the consumers here, unless a read runs (it then goes
    /// round once more).
    fn read_queue(&self, dest: &str) {
        let Some(durable) = &self.durable else { return };
        let read = durable
            .reads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(dest.to_string())
            .or_default()
            .clone();
        read.again.store(true, Ordering::Release);
        if read.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(me) = self.me() else {
            read.running.store(false, Ordering::Release);
            return;
        };
        let dest = dest.to_string();
        tokio::spawn(async move {
            loop {
                read.again.store(false, Ordering::Release);
                me.take_entries(&dest, false).await;
                read.running.store(false, Ordering::Release);
                // A request that came while the flag was still set is served here.
                if !read.again.load(Ordering::Acquire) || read.running.swap(true, Ordering::AcqRel)
                {
                    return;
                }
            }
        });
    }

    /// Takes entries of `dest` (new ones, or with `claim` those of dead nodes) while the
    /// consumers here have them waiting below [`READ_AHEAD`], and hands them on.
    async fn take_entries(&self, dest: &str, claim: bool) {
        let Some(durable) = &self.durable else { return };
        loop {
            if !self.broker.has_consumers(dest) {
                break;
            }
            let room = READ_AHEAD.saturating_sub(self.broker.waiting(dest));
            if room == 0 {
                break;
            }
            let taken = if claim {
                durable.store.claim(dest, room).await
            } else {
                durable.store.take(dest, room).await
            };
            let entries = match taken {
                Ok(entries) => entries,
                Err(e) => {
                    debug!(queue = dest, error = %e, "queue entries could not be read; read again at the next tick");
                    break;
                }
            };
            let full = entries.len() >= room;
            if claim {
                self.metrics
                    .store
                    .queue_claimed
                    .fetch_add(entries.len() as u64, Ordering::Relaxed);
            }
            for entry in entries {
                self.broker
                    .enqueue(Arc::new(self.queue_message(durable, dest, entry)));
            }
            if !full {
                break;
            }
        }
        // The last consumer may have left while entries were on their way.
        if !self.broker.has_consumers(dest) {
            self.queue_consumer_left(dest);
        }
    }

    fn queue_message(&self, durable: &Durable, dest: &str, entry: Entry) -> Message {
        let ticket = Ticket {
            queue: Arc::from(dest),
            id: entry.id,
            settle: durable.settle.clone(),
        };
        Message::new(dest.to_string(), entry.content).with_ticket(ticket, entry.redelivered)
    }

    /// Starts the tasks of durable queues: applying acknowledgements, and the tick that reads
    /// and claims for every queue consumed here.
    pub(super) fn start_queues(self: &Arc<Self>) {
        let Some(durable) = &self.durable else { return };
        let settled = durable
            .settled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(settled) = settled {
            tokio::spawn(acknowledge(
                settled,
                durable.store.clone(),
                self.metrics.clone(),
            ));
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(tenant) = me.upgrade() else { return };
                for dest in tenant.broker.consumed_queues() {
                    tenant.take_entries(&dest, true).await;
                    tenant.read_queue(&dest);
                }
            }
        });
    }
}

/// Applies acknowledgements in batches until the tenant is gone; a batch the store refused is
/// tried again (its entries stay pending meanwhile: acknowledged late, never lost).
async fn acknowledge(
    mut settled: mpsc::UnboundedReceiver<Settled>,
    store: Arc<dyn QueueStore>,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(ACK_BATCH);
    loop {
        if settled.recv_many(&mut batch, ACK_BATCH).await == 0 {
            return;
        }
        // Entries whose frames never reached a socket go back to the queue, for a node with
        // consumers to claim (this one included); a failure leaves them this node's, claimed
        // once it stops.
        let (returned, entries): (Vec<_>, Vec<_>) = batch
            .iter()
            .map(|s| (s.returned, (s.queue.clone(), s.id.clone())))
            .partition(|(returned, _)| *returned);
        let returned: Vec<(Arc<str>, String)> = returned.into_iter().map(|(_, e)| e).collect();
        let entries: Vec<(Arc<str>, String)> = entries.into_iter().map(|(_, e)| e).collect();
        if !returned.is_empty() {
            give_back(&*store, &metrics, &returned).await;
        }
        if entries.is_empty() {
            batch.clear();
            continue;
        }
        let mut applied = false;
        for _ in 0..ACK_TRIES {
            match store.acknowledge(&entries).await {
                Ok(()) => {
                    applied = true;
                    break;
                }
                Err(e) => {
                    debug!(error = %e, "queue acknowledgements were not applied; trying again");
                    tokio::time::sleep(ACK_RETRY).await;
                }
            }
        }
        if !applied {
            warn!(
                entries = entries.len(),
                "queue acknowledgements could not be applied; those messages may be delivered again"
            );
        }
        for done in batch.drain(..).filter_map(|s| s.done) {
            let _ = done.send(applied);
        }
    }
}

/// Gives `entries` back to the queue, counting them; failing, they stay this node's until it
/// dies, and then another claims them.
async fn give_back(store: &dyn QueueStore, metrics: &Metrics, entries: &[(Arc<str>, String)]) {
    metrics
        .store
        .queue_returned
        .fetch_add(entries.len() as u64, Ordering::Relaxed);
    if let Err(e) = store.give_back(entries).await {
        warn!(entries = entries.len(), error = %e, "queue entries could not be given back; they are claimed when this node stops");
    }
}
