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

pub mod destination;
pub mod message;
pub mod outbox;
pub mod subscription;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

pub use destination::Target;
pub use message::{Content, Message};
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
    /// Queues with no consumer hold at most this many messages per tenant.
    #[error("queue '{0}' has no consumer and the tenant's queue backlog is full ({1} messages)")]
    BacklogFull(String, usize),
}

#[derive(Debug)]
struct Queue {
    name: Arc<str>,
    consumers: Vec<Arc<Subscription>>,
    cursor: usize,
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
    sessions: usize,
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
    max_backlog: usize,
}

impl Broker {
    /// A broker whose queues keep at most `max_backlog` messages in all while nobody consumes.
    pub fn new(max_backlog: usize) -> Broker {
        Broker {
            index: Mutex::new(Index::default()),
            max_backlog,
        }
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a session of `user`; the first one is an interest change.
    pub fn user_connected(&self, user: &str) -> Option<Interest> {
        let mut index = self.index();
        let entry = index.users.entry(user.to_string()).or_default();
        entry.sessions += 1;
        (entry.sessions == 1).then(|| Interest::User {
            user: user.to_string(),
            held: true,
        })
    }

    /// Forgets a session of `user`; the last one is an interest change.
    pub fn user_disconnected(&self, user: &str) -> Option<Interest> {
        let mut index = self.index();
        let entry = index.users.get_mut(user)?;
        if entry.sessions == 0 {
            return None;
        }
        entry.sessions -= 1;
        let last = entry.sessions == 0;
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
            .filter(|(_, u)| u.sessions > 0)
            .map(|(name, _)| name.clone())
            .collect()
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

    /// Sessions `user` has on this node.
    pub fn user_sessions(&self, user: &str) -> usize {
        self.index().users.get(user).map_or(0, |u| u.sessions)
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
                while let Some(message) = queue.backlog.pop_front() {
                    if Self::hand_to_consumer(queue, &name, &message, None).is_none() {
                        queue.backlog.push_front(message);
                        break;
                    }
                    index.backlog_total -= 1;
                }
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
                    if entry.sessions == 0 && entry.dests.is_empty() {
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
        match target {
            Target::Topic(dest) => {
                let list = self.index().topics.get(dest).cloned();
                let message = Arc::new(Message::new(dest.clone(), content));
                Ok(Self::fan_out(list, &message))
            }
            Target::User { user, dest } => {
                let list = self
                    .index()
                    .users
                    .get(user)
                    .and_then(|u| u.dests.get(dest))
                    .cloned();
                let message = Arc::new(Message::new(destination::user_facing(dest), content));
                Ok(Self::fan_out(list, &message))
            }
            Target::Queue(dest) => {
                let message = Arc::new(Message::new(dest.clone(), content));
                let mut index = self.index();
                let index = &mut *index;
                if let Some(queue) = index.queues.get_mut(dest.as_str()) {
                    let name = queue.name.clone();
                    if queue.backlog.is_empty()
                        && Self::hand_to_consumer(queue, &name, &message, None).is_some()
                    {
                        return Ok(Routed {
                            delivered: 1,
                            queued: false,
                        });
                    }
                }
                if index.backlog_total >= self.max_backlog {
                    return Err(RouteError::BacklogFull(dest.clone(), self.max_backlog));
                }
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

    /// Gives a queue message back: to another consumer when there is one, else to `from_session`
    /// again if it still consumes the queue (a NACK with no one else to take it), else to the
    /// backlog. Requeued messages are never refused for a full backlog: they were accepted once.
    pub fn requeue(&self, queue_name: &Arc<str>, message: Arc<Message>, from_session: &str) {
        let mut index = self.index();
        let index = &mut *index;
        let queue = index
            .queues
            .entry(queue_name.clone())
            .or_insert_with(|| Queue::named(queue_name.clone()));
        if queue.backlog.is_empty() {
            if Self::hand_to_consumer(queue, queue_name, &message, Some(from_session)).is_some() {
                return;
            }
            if Self::hand_to_consumer(queue, queue_name, &message, None).is_some() {
                return;
            }
        }
        index.backlog_total += 1;
        queue.backlog.push_back(message);
    }

    fn fan_out(list: Option<SubList>, message: &Arc<Message>) -> Routed {
        let mut heads = SharedHead::default();
        let delivered = list.map_or(0, |subs| {
            subs.iter()
                .filter(|s| s.deliver(message, None, &mut heads).is_ok())
                .count()
        });
        Routed {
            delivered,
            queued: false,
        }
    }

    /// Round-robin over the queue's consumers, skipping `avoid_session` and those that refuse
    /// (closing or slow). Returns the index of the consumer that took it.
    fn hand_to_consumer(
        queue: &mut Queue,
        name: &Arc<str>,
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
            if consumer
                .deliver(message, Some(name), &mut SharedHead::default())
                .is_ok()
            {
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
        Arc::new(Endpoint::new(Arc::from(id), 1 << 20))
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

    #[tokio::test]
    async fn topic_reaches_every_subscriber() {
        let broker = Broker::new(10);
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
        let broker = Broker::new(2);
        let queue = Target::Queue("/queue/q".into());
        assert!(broker.publish(&queue, text("1")).unwrap().queued);
        assert!(broker.publish(&queue, text("2")).unwrap().queued);
        assert!(matches!(
            broker.publish(&queue, text("3")),
            Err(RouteError::BacklogFull(..))
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

    #[tokio::test]
    async fn unacked_queue_message_goes_to_another_consumer() {
        let broker = Broker::new(10);
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
        let broker = Broker::new(10);
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
