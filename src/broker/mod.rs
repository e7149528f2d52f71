//! The routing core of one tenant on one node: the subscription index (destination →
//! subscribers), the user registry (user → sessions), queue state (round-robin, backlog) and
//! delivery into connections' outboxes.
//!
//! One mutex owns the index. Topic and user fan-out clone an `Arc` of the subscriber list
//! under the lock and deliver after releasing it, so a large fan-out never stalls SUBSCRIBEs;
//! lists are copy-on-write (`Arc::make_mut`), which makes a SUBSCRIBE O(subscribers) of that
//! destination but keeps the per-message path free of allocation and locking per subscriber.
//! Queue delivery happens under the lock, because choosing the consumer and advancing the
//! round-robin cursor must be one step.
//!
//! A queue message goes to a consumer with room for it (see [`subscription`]); when none has,
//! it waits in the queue's backlog, in order, and [`Broker::pump`] hands the backlog on as room
//! appears (the consumer's session calls it when its writer has taken what was queued and
//! after an ACK). So a backlog of any size flows at the pace its consumers take it, and what
//! waits is bounded by message count per tenant and by bytes per tenant and per node.

pub mod budget;
pub mod cursor;
pub mod destination;
pub mod message;
pub mod outbox;
pub mod subscription;
pub mod ticket;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

pub use budget::Budget;
pub use destination::Target;
pub use message::{Content, Message, Position};
pub use subscription::{AckMode, Endpoint, SharedHead, Subscription, Unacked};

type SubList = Arc<Vec<Arc<Subscription>>>;

/// A change in what this node holds for a tenant, which the cluster mirrors: the first or last
/// local subscriber of a topic or queue, the first or last local session of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interest {
    /// `/topic/...` gained its first (`held: true`) or lost its last local subscriber.
    Topic {
        /// The topic.
        dest: String,
        /// Whether this node now has subscribers.
        held: bool,
    },
    /// `/queue/...` gained its first or lost its last local consumer.
    Queue {
        /// The queue.
        dest: String,
        /// Whether this node now has consumers.
        held: bool,
    },
    /// A user's first session connected or last session left.
    User {
        /// The user.
        user: String,
        /// Whether this node now has sessions of the user.
        held: bool,
    },
}

/// What happened to a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Routed {
    /// Subscriptions it was handed to.
    pub delivered: usize,
    /// True when a queue had no consumer and kept it for the next one.
    pub queued: bool,
}

/// Why a message could not be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// A user message could not be stored, so it was not routed (nor answered as sent).
    #[error("the message could not be stored: {0}")]
    NotStored(String),
    /// The queue's message had to wait, and waiting messages are at a limit.
    #[error("queue '{queue}' has no consumer with room and {limit} is reached")]
    BacklogFull {
        /// The queue.
        queue: String,
        /// The limit reached, with its configuration key.
        limit: String,
    },
}

/// How much queue messages may wait for a consumer with room.
#[derive(Debug)]
pub struct BacklogLimits {
    /// Messages, in all of the tenant's queues on this node.
    pub max_messages: usize,
    /// Bytes (see [`Message::weight`]), in all of the tenant's queues on this node.
    pub tenant: Budget,
    /// Bytes, in all queues of every tenant on this node.
    pub node: Arc<Budget>,
}

impl BacklogLimits {
    /// At most `max_messages` and `max_bytes` for one tenant, within a node-wide `node`.
    pub fn new(max_messages: usize, max_bytes: usize, node: Arc<Budget>) -> BacklogLimits {
        BacklogLimits {
            max_messages,
            tenant: Budget::new(max_bytes),
            node,
        }
    }

    /// Charges a message about to wait, or says which limit refuses it.
    fn take(&self, waiting: usize, weight: usize) -> Result<(), String> {
        if waiting >= self.max_messages {
            return Err(format!(
                "the tenant's queue backlog limit of {} messages (server.max_queue_backlog)",
                self.max_messages
            ));
        }
        if !self.tenant.try_take(weight) {
            return Err(format!(
                "the tenant's queue backlog limit of {} bytes (server.max_queue_backlog_bytes)",
                self.tenant.limit()
            ));
        }
        if !self.node.try_take(weight) {
            self.tenant.give_back(weight);
            return Err(format!(
                "the node's queue backlog limit of {} bytes (server.node_backlog_bytes)",
                self.node.limit()
            ));
        }
        Ok(())
    }

    /// Charges a message that must wait whatever the limits (one given back by a consumer:
    /// it was accepted once).
    fn force(&self, weight: usize) {
        self.tenant.take_anyway(weight);
        self.node.take_anyway(weight);
    }

    fn give_back(&self, weight: usize) {
        self.tenant.give_back(weight);
        self.node.give_back(weight);
    }
}

#[derive(Debug)]
struct Queue {
    name: Arc<str>,
    consumers: Vec<Arc<Subscription>>,
    cursor: usize,
    /// Messages waiting for a consumer with room, oldest first; each is charged its
    /// [`Message::weight`] to the backlog limits.
    backlog: VecDeque<Arc<Message>>,
}

impl Queue {
    fn named(name: Arc<str>) -> Queue {
        Queue {
            name,
            consumers: Vec::new(),
            cursor: 0,
            backlog: VecDeque::new(),
        }
    }
}

#[derive(Debug, Default)]
struct User {
    /// The user's sessions here (their outboxes), so that they can be closed from outside
    /// (the disconnect API).
    sessions: Vec<Arc<Endpoint>>,
    dests: HashMap<String, SubList>,
}

#[derive(Debug, Default)]
struct Index {
    topics: HashMap<String, SubList>,
    queues: HashMap<Arc<str>, Queue>,
    users: HashMap<String, User>,
    backlog_total: usize,
}

/// The broker of one tenant on this node.
#[derive(Debug)]
pub struct Broker {
    index: Mutex<Index>,
    backlog: BacklogLimits,
}

impl Broker {
    /// A broker whose queues keep what waits for a consumer within `backlog`.
    pub fn new(backlog: BacklogLimits) -> Broker {
        Broker {
            index: Mutex::new(Index::default()),
            backlog,
        }
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a session of `user`; the first one is an interest change.
    pub fn user_connected(&self, user: &str, session: &Arc<Endpoint>) -> Option<Interest> {
        let mut index = self.index();
        let entry = index.users.entry(user.to_string()).or_default();
        entry.sessions.push(session.clone());
        (entry.sessions.len() == 1).then(|| Interest::User {
            user: user.to_string(),
            held: true,
        })
    }

    /// Forgets a session of `user`; the last one is an interest change.
    pub fn user_disconnected(&self, user: &str, session: &Arc<Endpoint>) -> Option<Interest> {
        let mut index = self.index();
        let entry = index.users.get_mut(user)?;
        let at = entry
            .sessions
            .iter()
            .position(|s| Arc::ptr_eq(s, session))?;
        entry.sessions.swap_remove(at);
        let last = entry.sessions.is_empty();
        if last && entry.dests.is_empty() {
            index.users.remove(user);
        }
        last.then(|| Interest::User {
            user: user.to_string(),
            held: false,
        })
    }

    /// Users with sessions on this node (for re-announcing presence).
    pub fn connected_users(&self) -> Vec<String> {
        self.index()
            .users
            .iter()
            .filter(|(_, u)| !u.sessions.is_empty())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// How many users have a session here (without listing them).
    pub fn connected_user_count(&self) -> usize {
        self.index()
            .users
            .values()
            .filter(|u| !u.sessions.is_empty())
            .count()
    }

    /// Up to `limit` users with sessions here whose names sort after `after`, in order (a
    /// page of the presence API).
    pub fn connected_users_after(&self, after: Option<&str>, limit: usize) -> Vec<String> {
        let index = self.index();
        let mut names: Vec<&String> = index
            .users
            .iter()
            .filter(|(name, u)| !u.sessions.is_empty() && after.is_none_or(|a| name.as_str() > a))
            .map(|(name, _)| name)
            .collect();
        if names.len() > limit {
            names.select_nth_unstable(limit);
            names.truncate(limit);
        }
        names.sort_unstable();
        names.into_iter().cloned().collect()
    }

    /// The outboxes of `user`'s sessions here.
    pub fn user_endpoints(&self, user: &str) -> Vec<Arc<Endpoint>> {
        self.index()
            .users
            .get(user)
            .map_or_else(Vec::new, |u| u.sessions.clone())
    }

    /// Subscriptions to `dest` here: a topic, a queue, or a user destination as clients
    /// subscribe to it (`/user/queue/x`), summed over the users.
    pub fn subscriber_count(&self, dest: &str) -> usize {
        let index = self.index();
        if let Some(inner) = dest.strip_prefix("/user") {
            return index
                .users
                .values()
                .filter_map(|u| u.dests.get(inner))
                .map(|l| l.len())
                .sum();
        }
        if dest.starts_with("/queue/") {
            return index.queues.get(dest).map_or(0, |q| q.consumers.len());
        }
        index.topics.get(dest).map_or(0, |l| l.len())
    }

    /// Topics and queues with local subscribers (for re-subscribing after a reconnect).
    pub fn interests(&self) -> Vec<Interest> {
        let index = self.index();
        let topics = index.topics.keys().map(|t| Interest::Topic {
            dest: t.clone(),
            held: true,
        });
        let queues = index
            .queues
            .iter()
            .filter(|(_, q)| !q.consumers.is_empty())
            .map(|(name, _)| Interest::Queue {
                dest: name.to_string(),
                held: true,
            });
        topics.chain(queues).collect()
    }

    /// True when `/queue/...` `dest` has a consumer on this node.
    pub fn has_consumers(&self, dest: &str) -> bool {
        self.index()
            .queues
            .get(dest)
            .is_some_and(|q| !q.consumers.is_empty())
    }

    /// True when topic `dest` has a subscriber on this node.
    pub fn has_subscribers(&self, dest: &str) -> bool {
        self.index().topics.contains_key(dest)
    }

    /// Sessions `user` has on this node.
    pub fn user_sessions(&self, user: &str) -> usize {
        self.index().users.get(user).map_or(0, |u| u.sessions.len())
    }

    /// Adds a subscription to the index. A new queue consumer first receives what the queue
    /// kept while it had none.
    pub fn subscribe(&self, sub: Arc<Subscription>) -> Option<Interest> {
        let mut index = self.index();
        match &sub.target {
            Target::Topic(dest) => {
                let list = Arc::make_mut(index.topics.entry(dest.clone()).or_default());
                list.push(sub.clone());
                (list.len() == 1).then(|| Interest::Topic {
                    dest: dest.clone(),
                    held: true,
                })
            }
            Target::User { user, dest } => {
                let entry = index.users.entry(user.clone()).or_default();
                Arc::make_mut(entry.dests.entry(dest.clone()).or_default()).push(sub.clone());
                None
            }
            Target::Queue(dest) => {
                let name: Arc<str> = Arc::from(dest.as_str());
                let index = &mut *index;
                let queue = index
                    .queues
                    .entry(name.clone())
                    .or_insert_with(|| Queue::named(name.clone()));
                queue.consumers.push(sub.clone());
                let first = queue.consumers.len() == 1;
                Self::drain_backlog(queue, &mut index.backlog_total, &self.backlog);
                first.then(|| Interest::Queue {
                    dest: dest.clone(),
                    held: true,
                })
            }
        }
    }

    /// Removes a subscription from the index. The caller then closes it and requeues what it
    /// held (see [`Broker::requeue`]).
    pub fn unsubscribe(&self, sub: &Arc<Subscription>) -> Option<Interest> {
        let mut index = self.index();
        match &sub.target {
            Target::Topic(dest) => {
                let list = index.topics.get_mut(dest)?;
                let before = list.len();
                Arc::make_mut(list).retain(|s| !Arc::ptr_eq(s, sub));
                if list.is_empty() {
                    index.topics.remove(dest);
                    return (before > 0).then(|| Interest::Topic {
                        dest: dest.clone(),
                        held: false,
                    });
                }
                None
            }
            Target::User { user, dest } => {
                if let Some(entry) = index.users.get_mut(user) {
                    if let Some(list) = entry.dests.get_mut(dest) {
                        Arc::make_mut(list).retain(|s| !Arc::ptr_eq(s, sub));
                        if list.is_empty() {
                            entry.dests.remove(dest);
                        }
                    }
                    if entry.sessions.is_empty() && entry.dests.is_empty() {
                        index.users.remove(user);
                    }
                }
                None
            }
            Target::Queue(dest) => {
                let queue = index.queues.get_mut(dest.as_str())?;
                let before = queue.consumers.len();
                queue.consumers.retain(|s| !Arc::ptr_eq(s, sub));
                let last = before > 0 && queue.consumers.is_empty();
                if queue.consumers.is_empty() && queue.backlog.is_empty() {
                    index.queues.remove(dest.as_str());
                }
                last.then(|| Interest::Queue {
                    dest: dest.clone(),
                    held: false,
                })
            }
        }
    }

    /// Routes `content` to `target`.
    pub fn publish(&self, target: &Target, content: Content) -> Result<Routed, RouteError> {
        self.publish_at(target, content, None)
    }

    /// Routes `content` to `target`, stored at `position` of its stream (a user's, or a topic's
    /// with history).
    pub fn publish_at(
        &self,
        target: &Target,
        content: Content,
        position: Option<Position>,
    ) -> Result<Routed, RouteError> {
        match target {
            Target::Topic(dest) => {
                let list = self.index().topics.get(dest).cloned();
                let message = Arc::new(Message::stored_at(dest.clone(), content, position));
                Ok(Self::fan_out(list, &message))
            }
            Target::User { user, dest } => {
                let list = self
                    .index()
                    .users
                    .get(user)
                    .and_then(|u| u.dests.get(dest))
                    .cloned();
                let message = Arc::new(Message::stored_at(
                    destination::user_facing(dest),
                    content,
                    position,
                ));
                Ok(Self::fan_out(list, &message))
            }
            Target::Queue(dest) => {
                let message = Arc::new(Message::new(dest.clone(), content));
                let mut index = self.index();
                let index = &mut *index;
                if let Some(queue) = index.queues.get_mut(dest.as_str()) {
                    // Behind a backlog it waits its turn, so the queue stays in order.
                    if queue.backlog.is_empty()
                        && Self::hand_to_consumer(queue, &message, None).is_some()
                    {
                        return Ok(Routed {
                            delivered: 1,
                            queued: false,
                        });
                    }
                }
                let message = Arc::new(message.compacted());
                self.backlog
                    .take(index.backlog_total, message.weight())
                    .map_err(|limit| RouteError::BacklogFull {
                        queue: dest.clone(),
                        limit,
                    })?;
                index.backlog_total += 1;
                let name: Arc<str> = Arc::from(dest.as_str());
                index
                    .queues
                    .entry(name.clone())
                    .or_insert_with(|| Queue::named(name))
                    .backlog
                    .push_back(message);
                Ok(Routed {
                    delivered: 0,
                    queued: true,
                })
            }
        }
    }

    /// Hands `queue`'s backlog to its consumers for as long as one has room: called when a
    /// consumer of it may have gained room (its writer took what was queued, it ACKed).
    pub fn pump(&self, queue: &str) {
        let mut index = self.index();
        let index = &mut *index;
        if let Some(queue) = index.queues.get_mut(queue) {
            Self::drain_backlog(queue, &mut index.backlog_total, &self.backlog);
        }
    }

    /// Messages and bytes waiting in this tenant's queues (for metrics and tests).
    pub fn backlog(&self) -> (usize, usize) {
        (self.index().backlog_total, self.backlog.tenant.used())
    }

    fn drain_backlog(queue: &mut Queue, waiting: &mut usize, limits: &BacklogLimits) {
        while let Some(message) = queue.backlog.pop_front() {
            if Self::hand_to_consumer(queue, &message, None).is_none() {
                queue.backlog.push_front(message);
                return;
            }
            *waiting -= 1;
            limits.give_back(message.weight());
        }
    }

    /// Gives a queue message back: to another consumer with room when there is one, else to
    /// `from_session` again if it still consumes the queue (a NACK with no one else to take
    /// it), else to the front of the backlog, since it was first in line. Requeued messages are
    /// never refused for a full backlog: they were accepted once.
    pub fn requeue(&self, queue_name: &Arc<str>, message: Arc<Message>, from_session: &str) {
        // It may have been seen: its next frames say so.
        let message = Arc::new(message.redelivery());
        let mut index = self.index();
        let index = &mut *index;
        let queue = index
            .queues
            .entry(queue_name.clone())
            .or_insert_with(|| Queue::named(queue_name.clone()));
        if queue.backlog.is_empty() {
            if Self::hand_to_consumer(queue, &message, Some(from_session)).is_some() {
                return;
            }
            if Self::hand_to_consumer(queue, &message, None).is_some() {
                return;
            }
        }
        self.backlog.force(message.weight());
        index.backlog_total += 1;
        queue.backlog.push_front(message);
    }

    /// Hands a queue message read from a shared store to a consumer here, or keeps it behind
    /// the queue's backlog: it was accepted when it was stored, so no limit refuses it (what a
    /// node reads ahead of its consumers is bounded by the reader, see
    /// [`Broker::waiting`]).
    pub fn enqueue(&self, message: Arc<Message>) {
        let name: Arc<str> = Arc::from(message.destination());
        let mut index = self.index();
        let index = &mut *index;
        let queue = index
            .queues
            .entry(name.clone())
            .or_insert_with(|| Queue::named(name));
        if queue.backlog.is_empty() && Self::hand_to_consumer(queue, &message, None).is_some() {
            return;
        }
        self.backlog.force(message.weight());
        index.backlog_total += 1;
        queue.backlog.push_back(message);
    }

    /// Messages waiting in queue `dest`'s backlog here.
    pub fn waiting(&self, dest: &str) -> usize {
        self.index().queues.get(dest).map_or(0, |q| q.backlog.len())
    }

    /// Takes what waits in queue `dest`'s backlog when it has no consumer here any more (to
    /// give entries of a shared store back to it); nothing while it has one.
    pub fn take_backlog(&self, dest: &str) -> Vec<Arc<Message>> {
        let mut index = self.index();
        let index = &mut *index;
        let Some(queue) = index.queues.get_mut(dest) else {
            return Vec::new();
        };
        if !queue.consumers.is_empty() {
            return Vec::new();
        }
        let taken: Vec<Arc<Message>> = queue.backlog.drain(..).collect();
        index.queues.remove(dest);
        index.backlog_total -= taken.len();
        for message in &taken {
            self.backlog.give_back(message.weight());
        }
        taken
    }

    /// Queues with a consumer here.
    pub fn consumed_queues(&self) -> Vec<String> {
        self.index()
            .queues
            .iter()
            .filter(|(_, q)| !q.consumers.is_empty())
            .map(|(name, _)| name.to_string())
            .collect()
    }

    fn fan_out(list: Option<SubList>, message: &Arc<Message>) -> Routed {
        let mut heads = SharedHead::default();
        let delivered = list.map_or(0, |subs| {
            subs.iter()
                .filter(|s| s.deliver(message, &mut heads).is_ok())
                .count()
        });
        Routed {
            delivered,
            queued: false,
        }
    }

    /// Round-robin over the queue's consumers, skipping `avoid_session` and those that refuse
    /// (no room, closing). Returns the index of the consumer that took it.
    fn hand_to_consumer(
        queue: &mut Queue,
        message: &Arc<Message>,
        avoid_session: Option<&str>,
    ) -> Option<usize> {
        let n = queue.consumers.len();
        for _ in 0..n {
            let at = queue.cursor % n;
            queue.cursor = queue.cursor.wrapping_add(1);
            let consumer = &queue.consumers[at];
            if avoid_session.is_some_and(|s| *consumer.endpoint.session_id == *s) {
                continue;
            }
            if consumer.offer(message, &queue.name).is_ok() {
                return Some(at);
            }
        }
        None
    }

    /// Destinations with subscribers and users with sessions, for metrics and tests.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let index = self.index();
        (index.topics.len(), index.queues.len(), index.users.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stomp::Version;

    fn endpoint(id: &str) -> Arc<Endpoint> {
        Arc::new(Endpoint::new(Arc::from(id), 1 << 20, 16 << 20))
    }

    /// A broker whose backlog is limited in messages only.
    fn broker(max_messages: usize) -> Broker {
        Broker::new(BacklogLimits::new(
            max_messages,
            usize::MAX,
            Arc::new(Budget::new(usize::MAX)),
        ))
    }

    fn sub(ep: &Arc<Endpoint>, target: Target, ack: AckMode) -> Arc<Subscription> {
        Arc::new(Subscription::new(
            "0".into(),
            target,
            ack,
            ep.clone(),
            Version::V1_2,
        ))
    }

    fn text(s: &str) -> Content {
        Content {
            headers: vec![],
            body: bytes::Bytes::copy_from_slice(s.as_bytes()),
        }
    }

    async fn drained(ep: &Endpoint) -> Vec<String> {
        if ep.outbox.queued_bytes() == 0 {
            return vec![];
        }
        ep.outbox
            .next_batch()
            .await
            .items
            .iter()
            .map(|i| {
                let mut v = i.head.to_vec();
                v.extend_from_slice(&i.tail);
                String::from_utf8(v).unwrap()
            })
            .collect()
    }

    #[test]
    fn users_are_counted_while_they_have_a_session() {
        let b = broker(10);
        let (one, two) = (endpoint("s1"), endpoint("s2"));
        b.user_connected("alice", &one);
        b.user_connected("alice", &two);
        b.user_connected("bob", &endpoint("s3"));
        assert_eq!(b.connected_user_count(), 2);
        b.user_disconnected("alice", &one);
        assert_eq!(b.connected_user_count(), 2);
        b.user_disconnected("alice", &two);
        assert_eq!(b.connected_user_count(), 1);
        assert_eq!(b.connected_users(), ["bob"]);
    }

    #[tokio::test]
    async fn topic_reaches_every_subscriber() {
        let broker = broker(10);
        let (a, b) = (endpoint("a"), endpoint("b"));
        let topic = Target::Topic("/topic/t".into());
        broker.subscribe(sub(&a, topic.clone(), AckMode::Auto));
        broker.subscribe(sub(&b, topic.clone(), AckMode::Auto));
        let routed = broker.publish(&topic, text("hi")).unwrap();
        assert_eq!(routed.delivered, 2);
        let got = drained(&a).await;
        let (head, tail) = got[0].split_once("destination:").unwrap();
        assert!(
            head.starts_with("MESSAGE\nsubscription:0\nmessage-id:m"),
            "{head}"
        );
        assert_eq!(tail, "/topic/t\ncontent-length:2\n\nhi\0");
        // Auto-acknowledged deliveries of one message share their head.
        assert_eq!(drained(&b).await, got);
    }

    #[tokio::test]
    async fn queue_round_robins_and_keeps_a_backlog() {
        let broker = broker(2);
        let queue = Target::Queue("/queue/q".into());
        assert!(broker.publish(&queue, text("1")).unwrap().queued);
        assert!(broker.publish(&queue, text("2")).unwrap().queued);
        assert!(matches!(
            broker.publish(&queue, text("3")),
            Err(RouteError::BacklogFull { .. })
        ));
        let (a, b) = (endpoint("a"), endpoint("b"));
        broker.subscribe(sub(&a, queue.clone(), AckMode::Auto));
        assert_eq!(
            drained(&a).await.len(),
            2,
            "backlog drained to the new consumer"
        );
        broker.subscribe(sub(&b, queue.clone(), AckMode::Auto));
        for i in 0..4 {
            assert_eq!(
                broker
                    .publish(&queue, text(&i.to_string()))
                    .unwrap()
                    .delivered,
                1
            );
        }
        assert_eq!(drained(&a).await.len(), 2);
        assert_eq!(drained(&b).await.len(), 2);
    }

    fn sized(n: usize, i: usize) -> Content {
        let mut body = vec![b'.'; n];
        body[..8].copy_from_slice(format!("{i:08}").as_bytes());
        Content {
            headers: vec![],
            body: bytes::Bytes::from(body),
        }
    }

    /// The numbers of the messages in a batch of `sized` deliveries, in order.
    fn numbers(frames: &[String]) -> Vec<usize> {
        frames
            .iter()
            .map(|f| f.split_once("\n\n").unwrap().1[..8].parse().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_backlog_larger_than_the_outbox_flows_as_the_writer_takes_it() {
        let broker = broker(10_000);
        let queue = Target::Queue("/queue/bl".into());
        for i in 0..1_000 {
            assert!(broker.publish(&queue, sized(10_000, i)).unwrap().queued);
        }
        // 10 MB waiting for a consumer whose outbox holds 1 MiB.
        let ep = endpoint("a");
        broker.subscribe(sub(&ep, queue.clone(), AckMode::Auto));
        let mut got = Vec::new();
        while got.len() < 1_000 {
            let batch = drained(&ep).await;
            assert!(!batch.is_empty(), "stalled after {} messages", got.len());
            assert!(
                batch.len() * 10_000 <= 600_000,
                "at most half the outbox at once"
            );
            got.extend(numbers(&batch));
            // What the driver does when the writer took the batch.
            broker.pump("/queue/bl");
        }
        assert!(!ep.outbox.is_closing(), "never a slow consumer");
        assert_eq!(got, (0..1_000).collect::<Vec<_>>(), "all, once, in order");
        assert_eq!(broker.backlog(), (0, 0));
    }

    #[tokio::test]
    async fn prefetch_bounds_what_a_client_ack_consumer_holds() {
        let broker = broker(100);
        let queue = Target::Queue("/queue/p".into());
        for i in 0..5 {
            broker.publish(&queue, sized(10, i)).unwrap();
        }
        let ep = endpoint("a");
        let consumer = Arc::new(
            Subscription::new(
                "0".into(),
                queue.clone(),
                AckMode::ClientIndividual,
                ep.clone(),
                Version::V1_2,
            )
            .with_prefetch(2),
        );
        broker.subscribe(consumer.clone());
        assert_eq!(numbers(&drained(&ep).await), [0, 1]);
        assert_eq!(broker.backlog().0, 3);
        let held = ep.budget.used();
        assert!(held > 0, "held messages are charged to the connection");
        consumer.settle(1);
        broker.pump("/queue/p");
        assert_eq!(numbers(&drained(&ep).await), [2]);
        assert_eq!(ep.issued(), 3, "a refused offer numbers no delivery");
        consumer.settle(2);
        assert_eq!(
            ep.budget.used(),
            held / 2,
            "settled messages are given back"
        );
        consumer.settle(3);
        assert_eq!(ep.budget.used(), 0);
    }

    #[tokio::test]
    async fn backlogs_are_bounded_in_bytes_per_tenant_and_per_node() {
        let node = Arc::new(Budget::new(50_000));
        let a = Broker::new(BacklogLimits::new(1_000, 30_000, node.clone()));
        let b = Broker::new(BacklogLimits::new(1_000, 30_000, node.clone()));
        let queue = Target::Queue("/queue/q".into());
        let mut kept = 0;
        let err = loop {
            match a.publish(&queue, sized(5_000, kept)) {
                Ok(_) => kept += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(
            kept, 5,
            "30,000 bytes hold five 5,000-byte messages and their overhead"
        );
        assert!(
            err.to_string().contains("server.max_queue_backlog_bytes"),
            "{err}"
        );
        let mut in_b = 0;
        let err = loop {
            match b.publish(&queue, sized(5_000, in_b)) {
                Ok(_) => in_b += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(in_b, 4, "the node's 50,000 bytes are shared");
        assert!(
            err.to_string().contains("server.node_backlog_bytes"),
            "{err}"
        );
        // Consuming gives the bytes back.
        let ep = endpoint("c");
        a.subscribe(sub(&ep, queue.clone(), AckMode::Auto));
        assert_eq!(drained(&ep).await.len(), 5);
        assert_eq!(a.backlog(), (0, 0));
        assert!(b.publish(&queue, sized(5_000, 9)).is_ok());
    }

    #[tokio::test]
    async fn a_requeued_message_goes_first() {
        let broker = broker(100);
        let queue = Target::Queue("/queue/r".into());
        let ep = endpoint("a");
        let consumer = sub(&ep, queue.clone(), AckMode::Client);
        broker.subscribe(consumer.clone());
        broker.publish(&queue, sized(10, 0)).unwrap();
        drained(&ep).await;
        broker.unsubscribe(&consumer);
        broker.publish(&queue, sized(10, 1)).unwrap();
        for held in consumer.close() {
            let (q, m) = held.requeue.unwrap();
            broker.requeue(&q, m, "a");
        }
        let next = endpoint("b");
        broker.subscribe(sub(&next, queue.clone(), AckMode::Auto));
        assert_eq!(numbers(&drained(&next).await), [0, 1]);
    }

    #[tokio::test]
    async fn unacked_queue_message_goes_to_another_consumer() {
        let broker = broker(10);
        let queue = Target::Queue("/queue/q".into());
        let (a, b) = (endpoint("a"), endpoint("b"));
        let sa = sub(&a, queue.clone(), AckMode::ClientIndividual);
        broker.subscribe(sa.clone());
        broker.publish(&queue, text("x")).unwrap();
        assert_eq!(sa.unacked_count(), 1);
        broker.subscribe(sub(&b, queue.clone(), AckMode::Auto));
        broker.unsubscribe(&sa);
        for unacked in sa.close() {
            let (q, m) = unacked.requeue.unwrap();
            broker.requeue(&q, m, "a");
        }
        let got = drained(&b).await;
        assert_eq!(got.len(), 1);
        assert!(got[0].ends_with("\n\nx\0"));
    }

    #[tokio::test]
    async fn user_messages_reach_only_that_user() {
        let broker = broker(10);
        let (a1, a2, b) = (endpoint("a1"), endpoint("a2"), endpoint("b"));
        let mine = |u: &str| Target::User {
            user: u.into(),
            dest: "/queue/notice".into(),
        };
        broker.subscribe(sub(&a1, mine("alice"), AckMode::Auto));
        broker.subscribe(sub(&a2, mine("alice"), AckMode::Auto));
        broker.subscribe(sub(&b, mine("bob"), AckMode::Auto));
        assert_eq!(
            broker
                .publish(&mine("alice"), text("hi"))
                .unwrap()
                .delivered,
            2
        );
        let got = drained(&a2).await;
        assert!(got[0].contains("destination:/user/queue/notice\n"));
        assert!(drained(&b).await.is_empty());
    }
}
