//! One connection as the broker sees it (its outbox, delivery counter and memory budget) and
//! its subscriptions, including the messages they hold unacknowledged in client ack modes.
//!
//! A queue consumer takes a message only when it has room for it: space in the outbox (see
//! [`Outbox::push_if_room`]), fewer unacknowledged messages than its `prefetch-count`, and, for
//! a message it will hold until ACK, room in its connection's memory budget. Otherwise the
//! message waits in the queue, and the broker offers it again when room appears.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};

use super::budget::Budget;
use super::cursor::{Attachment, Confirmation, CursorPlace, CursorQueue, StreamCursor};

/// How long a connection must stay after a stored frame, unless configured.
pub const DEFAULT_CONFIRMATION: Confirmation = Confirmation {
    after: std::time::Duration::from_millis(50),
};
use super::destination::Target;
use super::message::{itoa, Message, Position};
use super::outbox::{Item, Outbox, Refused, Written};
use super::ticket::Delivered;
use crate::stomp::{escape_into, Version};

/// The part of a connection that routing needs: where to put frames and how to number them.
#[derive(Debug)]
pub struct Endpoint {
    /// The session id (also the prefix of every `message-id` sent to it).
    pub session_id: Arc<str>,
    /// Frames waiting for the connection's writer.
    pub outbox: Outbox,
    /// How often the writer must send something (a heart-beat EOL when idle), in ms; 0 = never.
    /// Set by the session once CONNECT has negotiated it.
    pub heartbeat_out_ms: AtomicU64,
    /// What the connection may hold besides its outbox: its session charges subscriptions,
    /// transactions, cached verdicts and partial frames; its subscriptions charge the queue
    /// messages they hold unacknowledged.
    pub budget: Budget,
    /// Set once a delivery here carries a mark the writer must record (a stream
    /// subscription's cursor, a durable queue's entry): only then does it look for them.
    pub feeds_streams: std::sync::atomic::AtomicBool,
    /// Whether the connection is there to take frames (see [`super::cursor`]).
    pub attachment: Arc<Attachment>,
    /// How long it must stay after a stored frame for the frame to count as delivered.
    pub confirmation: Confirmation,
    /// Signalled when the server closes the session from outside it (the disconnect API):
    /// the connection's reader ends it with an ERROR that says so.
    pub kicked: tokio::sync::Notify,
    next_seq: AtomicU64,
}

impl Endpoint {
    /// An endpoint whose outbox holds at most `outbound_bytes` and which may hold
    /// `memory_bytes` besides.
    pub fn new(session_id: Arc<str>, outbound_bytes: usize, memory_bytes: usize) -> Endpoint {
        Endpoint {
            session_id,
            outbox: Outbox::new(outbound_bytes),
            heartbeat_out_ms: AtomicU64::new(0),
            budget: Budget::new(memory_bytes),
            feeds_streams: std::sync::atomic::AtomicBool::new(false),
            attachment: Arc::new(Attachment::default()),
            confirmation: DEFAULT_CONFIRMATION,
            kicked: tokio::sync::Notify::new(),
            next_seq: AtomicU64::new(1),
        }
    }

    /// Asks the connection to close its session as disconnected by the server (a permit is
    /// kept if its reader is busy, so the request is never lost).
    pub fn kick(&self) {
        self.kicked.notify_one();
    }

    /// This endpoint counting a stored frame as delivered once the connection stayed
    /// `confirmation` after it.
    pub fn with_confirmation(mut self, confirmation: Confirmation) -> Endpoint {
        self.confirmation = confirmation;
        self
    }

    /// How many deliveries were numbered so far; an ACK for a higher number is invalid.
    pub fn issued(&self) -> u64 {
        self.next_seq.load(Ordering::Relaxed) - 1
    }

    /// Parses a `message-id`/`ack` value this endpoint issued, giving its sequence number.
    pub fn parse_ack_id(&self, id: &str) -> Option<u64> {
        let seq: u64 = id
            .strip_prefix(&*self.session_id)?
            .strip_prefix('-')?
            .parse()
            .ok()?;
        (seq >= 1 && seq <= self.issued()).then_some(seq)
    }
}

/// The frame of the auto-acknowledged deliveries of one message, kept from one subscriber to
/// the next: subscribers mostly use the same subscription id (clients number them from `sub-0`
/// or `0`) and version, so a fan-out to thousands builds one frame instead of thousands. A small
/// message is joined into a single buffer, so each delivery takes one reference, not two.
#[derive(Debug, Default)]
pub struct SharedHead {
    key: Option<(Bytes, Version)>,
    frame: Item,
}

/// Tails up to this size are copied next to the head once per fan-out; larger ones are shared.
const JOIN_TAIL_UPTO: usize = 4096;

impl SharedHead {
    fn get(&mut self, subscription_line: &Bytes, version: Version, message: &Message) -> Item {
        let hit = self
            .key
            .as_ref()
            .is_some_and(|(line, v)| *v == version && line == subscription_line);
        if !hit {
            let tail = message.tail(version);
            let digits = itoa(message.seq());
            let joined = tail.len() <= JOIN_TAIL_UPTO;
            let mut head = BytesMut::with_capacity(
                subscription_line.len() + 32 + if joined { tail.len() } else { 0 },
            );
            head.put_slice(subscription_line);
            head.put_slice(b"message-id:m");
            head.put_slice(digits.as_bytes());
            head.put_u8(b'\n');
            if joined {
                head.put_slice(tail);
            }
            self.key = Some((subscription_line.clone(), version));
            self.frame = Item {
                head: head.freeze(),
                tail: if joined { Bytes::new() } else { tail.clone() },
                text: message.tail_is_text(version),
                written: None,
            };
        }
        self.frame.clone()
    }
}

/// How a subscription acknowledges messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// Delivered is acknowledged.
    Auto,
    /// ACK acknowledges the message and every earlier one of the subscription.
    Client,
    /// ACK acknowledges just that message.
    ClientIndividual,
}

impl AckMode {
    /// Parses the SUBSCRIBE `ack` header.
    pub fn parse(value: &str) -> Option<AckMode> {
        match value {
            "auto" => Some(AckMode::Auto),
            "client" => Some(AckMode::Client),
            "client-individual" => Some(AckMode::ClientIndividual),
            _ => None,
        }
    }
}

/// A message delivered in a client ack mode and not yet acknowledged.
#[derive(Debug)]
pub struct Unacked {
    /// Its delivery number on the endpoint.
    pub seq: u64,
    /// For queue messages: the queue and the message, to hand to another consumer if this one
    /// NACKs it or goes away.
    pub requeue: Option<(Arc<str>, Arc<Message>)>,
    /// Its place in the user's stream, for a stored message.
    pub position: Option<Position>,
}

/// What only a subscription fed from its user's stream needs.
#[derive(Debug)]
struct StreamFeed {
    state: Mutex<Stream>,
    /// Where moved cursors are queued to be saved (a store shared by nodes); `None`: saved
    /// when the subscription ends.
    saver: Option<CursorQueue>,
    /// A user's stream, whose cursor the writer moves; a topic's subscribers name their own
    /// start, so their frames carry no mark.
    tracks_cursor: bool,
}

/// Where a stream subscription is: the next offset it delivers, and the messages waiting to be
/// delivered, in order: live ones held while the stream is read, then the replay and whatever
/// arrives while the connection has no room for it. What waits is also in the store, which
/// bounds it.
#[derive(Debug)]
struct Stream {
    /// The epoch of the stream it delivers from: set by the replay, changed when a live
    /// message of another epoch arrives (the store lost what it held and started again).
    epoch: u64,
    next: u64,
    replaying: bool,
    waiting: VecDeque<Arc<Message>>,
    /// How far delivery got in `epoch`.
    cursor: Arc<StreamCursor>,
}

impl Stream {
    /// Delivers from `epoch` on, with a cursor of its own.
    /// `crossed`: it was delivering from an earlier epoch, which the store lost.
    fn switch_epoch(
        &mut self,
        epoch: u64,
        crossed: bool,
        (user, dest): (&str, &str),
        endpoint: &Endpoint,
        saver: &Option<CursorQueue>,
    ) {
        self.epoch = epoch;
        self.next = 0;
        let place = CursorPlace {
            user,
            dest,
            epoch,
            crossed,
        };
        self.cursor = StreamCursor::new(
            place,
            endpoint.attachment.clone(),
            endpoint.confirmation,
            saver.clone(),
        );
    }

    /// True when `message` is one this subscription already delivered.
    fn seen(&self, message: &Message) -> bool {
        message
            .position()
            .is_some_and(|p| p.epoch == self.epoch && p.offset < self.next)
    }
}

#[derive(Debug, Default)]
struct Pending {
    closed: bool,
    unacked: VecDeque<Unacked>,
}

/// One SUBSCRIBE of one session.
#[derive(Debug)]
pub struct Subscription {
    /// The client's subscription id.
    pub id: String,
    /// What it listens to.
    pub target: Target,
    /// How it acknowledges.
    pub ack: AckMode,
    /// Most queue messages held unacknowledged at once in client ack modes (RabbitMQ's
    /// `prefetch-count`); 0 = no count limit (the memory budget still bounds them).
    pub prefetch: usize,
    /// The connection it delivers to.
    pub endpoint: Arc<Endpoint>,
    version: Version,
    /// `MESSAGE\nsubscription:<id>\n`, escaped once at SUBSCRIBE.
    subscription_line: Bytes,
    /// `ack:<session>-` for 1.2 client modes, else empty.
    ack_prefix: Bytes,
    pending: Mutex<Pending>,
    /// Set for a subscription fed from its user's stream (boxed: others pay a pointer).
    stream: Option<Box<StreamFeed>>,
}

impl Subscription {
    /// A subscription delivering to `endpoint` in `version`'s encoding.
    pub fn new(
        id: String,
        target: Target,
        ack: AckMode,
        endpoint: Arc<Endpoint>,
        version: Version,
    ) -> Subscription {
        let mut line = BytesMut::with_capacity(24 + id.len());
        line.put_slice(b"MESSAGE\nsubscription:");
        escape_into(&id, version, &mut line);
        line.put_u8(b'\n');
        let ack_prefix = if ack != AckMode::Auto && version == Version::V1_2 {
            let mut p = BytesMut::with_capacity(6 + endpoint.session_id.len());
            p.put_slice(b"ack:");
            p.put_slice(endpoint.session_id.as_bytes());
            p.put_u8(b'-');
            p.freeze()
        } else {
            Bytes::new()
        };
        Subscription {
            id,
            target,
            ack,
            prefetch: 0,
            endpoint,
            version,
            subscription_line: line.freeze(),
            ack_prefix,
            pending: Mutex::new(Pending::default()),
            stream: None,
        }
    }

    /// This subscription fed from its stream (its user's, or its topic's): it holds live
    /// messages until
    /// [`Subscription::finish_replay`] has delivered what the stream kept, and delivers each
    /// offset once.
    /// With a `saver`, its cursor is saved whenever it moves; without, when it ends.
    pub fn from_stream(mut self, saver: Option<CursorQueue>) -> Subscription {
        let (user, dest) = self.stream_names();
        let tracks_cursor = matches!(self.target, Target::User { .. });
        if tracks_cursor {
            self.endpoint.feeds_streams.store(true, Ordering::Release);
        }
        self.stream = Some(Box::new(StreamFeed {
            state: Mutex::new(Stream {
                epoch: 0,
                next: 0,
                replaying: true,
                waiting: VecDeque::new(),
                cursor: StreamCursor::new(
                    CursorPlace {
                        user,
                        dest,
                        epoch: 0,
                        crossed: false,
                    },
                    self.endpoint.attachment.clone(),
                    self.endpoint.confirmation,
                    None,
                ),
            }),
            saver,
            tracks_cursor,
        }));
        self
    }

    /// The user and destination of a user subscription (empty for others).
    fn stream_names(&self) -> (&str, &str) {
        match &self.target {
            Target::User { user, dest } => (user, dest),
            _ => ("", ""),
        }
    }

    fn stream_state(feed: &StreamFeed) -> std::sync::MutexGuard<'_, Stream> {
        feed.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Goes live after the stream (of `epoch`) was read: what it kept for this subscription
    /// (in offset order), then the live messages held meanwhile, each offset once, delivered
    /// as far as the connection has room (the rest by [`Subscription::pump_stream`]).
    /// `after` is where the user's cursor stood in `epoch` when the stream was read (0: none).
    pub fn finish_replay(
        &self,
        epoch: u64,
        after: u64,
        replayed: Vec<Arc<Message>>,
    ) -> Result<(), Refused> {
        let Some(feed) = self.stream.as_deref() else {
            return Ok(());
        };
        let mut stream = Self::stream_state(feed);
        stream.switch_epoch(
            epoch,
            false,
            self.stream_names(),
            &self.endpoint,
            &feed.saver,
        );
        stream.cursor.start_after(after);
        stream.replaying = false;
        let mut held: Vec<Arc<Message>> = std::mem::take(&mut stream.waiting).into();
        // Live messages may have come from several nodes in any order while the stream was
        // read; the replay's epoch first, in offset order.
        held.sort_by_key(|m| m.position().map(|p| (p.epoch != epoch, p.offset)));
        stream.waiting = replayed.into_iter().chain(held).collect();
        self.drain_waiting(feed, &mut stream)
    }

    /// Delivers what waits for room, as far as there is room now; called when the
    /// connection's writer has taken what was queued.
    pub fn pump_stream(&self) -> Result<(), Refused> {
        match self.stream.as_deref() {
            Some(feed) => self.drain_waiting(feed, &mut Self::stream_state(feed)),
            None => Ok(()),
        }
    }

    /// Hands waiting messages on in order while the outbox has room, skipping offsets already
    /// given; a replay of any size thus flows at the connection's pace instead of
    /// overflowing it.
    fn drain_waiting(&self, feed: &StreamFeed, stream: &mut Stream) -> Result<(), Refused> {
        while let Some(message) = stream.waiting.front() {
            if stream.seen(message) {
                stream.waiting.pop_front();
                continue;
            }
            if !self.endpoint.outbox.has_room() {
                return Ok(());
            }
            let message = stream.waiting.pop_front().expect("looked at above");
            // One of an epoch the store has left behind is still delivered, once, but does
            // not move this epoch's place.
            if let Some(p) = message.position().filter(|p| p.epoch == stream.epoch) {
                stream.next = p.offset + 1;
            }
            let cursor = feed.tracks_cursor.then_some(&stream.cursor);
            self.deliver_now(&message, cursor, &mut SharedHead::default())?;
        }
        Ok(())
    }

    /// Where the user's cursor for this subscription's destination can be put when it ends,
    /// given what it held unacknowledged (`held`, from [`Subscription::close`]): in auto mode
    /// the last offset its writer wrote; in client modes the offset before the first it still
    /// held, or the last it delivered if it held none. With the stream's epoch; `None` when it
    /// delivered nothing.
    pub fn stream_cursor(&self, held: &[Unacked]) -> Option<Arc<StreamCursor>> {
        let feed = self.stream.as_deref().filter(|f| f.tracks_cursor)?;
        let stream = Self::stream_state(feed);
        if self.ack != AckMode::Auto {
            Self::acknowledged_up_to(&stream, held.iter().filter_map(|u| u.position));
        }
        stream.cursor.confirm(crate::util::unix_ms());
        Some(stream.cursor.clone())
    }

    /// In client modes the cursor stands before the first message still held, or at the last
    /// delivered when none is held.
    fn acknowledged_up_to(stream: &Stream, held: impl Iterator<Item = Position>) {
        let first_held = held
            .filter(|p| p.epoch == stream.epoch)
            .map(|p| p.offset)
            .min();
        let at = match first_held {
            Some(first) => first - 1,
            None => stream.next.saturating_sub(1),
        };
        if at > 0 {
            stream.cursor.acknowledged(at);
        }
    }

    /// This subscription holding at most `prefetch` unacknowledged queue messages (0 = no
    /// count limit). Auto-acknowledged subscriptions hold none, so for them it changes nothing.
    pub fn with_prefetch(mut self, prefetch: usize) -> Subscription {
        self.prefetch = prefetch;
        self
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands `message` to this subscription's connection. `queue` names the queue it came from,
    /// so that in client ack modes it can be redelivered elsewhere. `heads` carries the frame
    /// head between the deliveries of one message.
    pub fn deliver(&self, message: &Arc<Message>, heads: &mut SharedHead) -> Result<(), Refused> {
        if let (Some(feed), Some(position)) = (self.stream.as_deref(), message.position()) {
            // Held under the stream's lock while delivering, so a replay finishing at the same
            // time cannot interleave with it.
            let mut stream = Self::stream_state(feed);
            if stream.replaying {
                stream.waiting.push_back(message.clone());
                return Ok(());
            }
            if position.epoch != stream.epoch {
                // The store lost what it held and numbers from 1 again: what this
                // subscription delivered before is no place in the new epoch.
                // Epoch 0 is a stream that had no message yet when it was read.
                let crossed = stream.epoch != 0;
                stream.switch_epoch(
                    position.epoch,
                    crossed,
                    self.stream_names(),
                    &self.endpoint,
                    &feed.saver,
                );
            }
            if stream.seen(message) {
                return Ok(()); // the replay delivered it
            }
            if !stream.waiting.is_empty() {
                // Behind a replay still flowing: it waits its turn.
                stream.waiting.push_back(message.clone());
                return self.drain_waiting(feed, &mut stream);
            }
            stream.next = position.offset + 1;
            let cursor = feed.tracks_cursor.then_some(&stream.cursor);
            return self.deliver_now(message, cursor, heads);
        }
        self.deliver_now(message, None, heads)
    }

    fn deliver_now(
        &self,
        message: &Arc<Message>,
        cursor: Option<&Arc<StreamCursor>>,
        heads: &mut SharedHead,
    ) -> Result<(), Refused> {
        if self.ack == AckMode::Auto {
            // Nothing will acknowledge this delivery, so its `message-id` is the message's
            // own number and every subscriber with the same subscription id shares one frame.
            let mut frame = heads.get(&self.subscription_line, self.version, message);
            if let (Some(cursor), Some(position)) = (cursor, message.position()) {
                if position.epoch == cursor.epoch {
                    frame.written = Some(Written::Cursor {
                        cursor: cursor.clone(),
                        offset: position.offset,
                    });
                }
            }
            return self.endpoint.outbox.push(frame);
        }
        self.deliver_held(message, None)
    }

    /// Offers this consumer a message of `queue`: it takes it only if it has room (see the
    /// module notes), else refuses with [`Refused::Full`] and nothing changes.
    pub fn offer(&self, message: &Arc<Message>, queue: &Arc<str>) -> Result<(), Refused> {
        if self.ack == AckMode::Auto {
            // Looked at first, so that a backlog offered to consumers without room costs no
            // frame building.
            if !self.endpoint.outbox.has_room() {
                return Err(Refused::Full);
            }
            let mut frame =
                SharedHead::default().get(&self.subscription_line, self.version, message);
            let Some(ticket) = message.ticket() else {
                return self.endpoint.outbox.push_if_room(frame);
            };
            // Written is acknowledged in auto mode: the store drops its entry once the socket
            // took the frame, and takes it back if the frame never gets there.
            self.endpoint.feeds_streams.store(true, Ordering::Release);
            let delivered = Delivered::new(ticket.clone());
            frame.written = Some(Written::Entry(delivered.clone()));
            let pushed = self.endpoint.outbox.push_if_room(frame);
            if pushed.is_err() {
                delivered.cancel();
            }
            return pushed;
        }
        self.deliver_held(message, Some(queue))
    }

    /// A delivery in a client ack mode, held until ACK; from a queue only if there is room.
    fn deliver_held(
        &self,
        message: &Arc<Message>,
        queue: Option<&Arc<str>>,
    ) -> Result<(), Refused> {
        // Held across the delivery, the same lock `close` takes: a message is either requeued
        // by `close` or refused here, never lost between the two.
        let mut pending = self.pending();
        if pending.closed {
            return Err(Refused::Closing);
        }
        let charged = match queue {
            None => 0,
            Some(_) => {
                if self.prefetch > 0 && pending.unacked.len() >= self.prefetch {
                    return Err(Refused::Full);
                }
                if !self.endpoint.outbox.has_room() {
                    return Err(Refused::Full);
                }
                let charged = message.held_weight();
                if !self.endpoint.budget.try_take(charged) {
                    return Err(Refused::Full);
                }
                charged
            }
        };
        let seq = self.endpoint.next_seq.fetch_add(1, Ordering::Relaxed);
        let item = self.held_frame(message, seq);
        let pushed = match queue {
            None => self.endpoint.outbox.push(item),
            Some(_) => self.endpoint.outbox.push_if_room(item),
        };
        if let Err(refused) = pushed {
            self.endpoint.budget.give_back(charged);
            return Err(refused);
        }
        pending.unacked.push_back(Unacked {
            seq,
            requeue: queue.map(|q| (q.clone(), message.clone())),
            position: message.position(),
        });
        Ok(())
    }

    /// The MESSAGE frame of delivery `seq`, with its own `message-id` (and `ack` in 1.2).
    fn held_frame(&self, message: &Message, seq: u64) -> Item {
        let digits = itoa(seq);
        let session = self.endpoint.session_id.as_bytes();
        let mut head = BytesMut::with_capacity(
            self.subscription_line.len() + 2 * (session.len() + digits.as_bytes().len()) + 24,
        );
        head.put_slice(&self.subscription_line);
        head.put_slice(b"message-id:");
        head.put_slice(session);
        head.put_u8(b'-');
        head.put_slice(digits.as_bytes());
        head.put_u8(b'\n');
        if !self.ack_prefix.is_empty() {
            head.put_slice(&self.ack_prefix);
            head.put_slice(digits.as_bytes());
            head.put_u8(b'\n');
        }
        Item {
            head: head.freeze(),
            tail: message.tail(self.version).clone(),
            text: message.tail_is_text(self.version),
            written: None,
        }
    }

    /// True when this subscription holds delivery `seq` unacknowledged.
    pub fn holds(&self, seq: u64) -> bool {
        self.pending().unacked.iter().any(|u| u.seq == seq)
    }

    /// Removes what an ACK or NACK of delivery `seq` covers: in `client` mode that delivery and
    /// every earlier one, else just that one.
    pub fn settle(&self, seq: u64) -> Vec<Unacked> {
        let mut pending = self.pending();
        let settled: Vec<Unacked> = match self.ack {
            AckMode::Auto => Vec::new(),
            AckMode::Client => {
                let upto = pending.unacked.iter().take_while(|u| u.seq <= seq).count();
                pending.unacked.drain(..upto).collect()
            }
            AckMode::ClientIndividual => match pending.unacked.iter().position(|u| u.seq == seq) {
                Some(at) => pending.unacked.remove(at).into_iter().collect(),
                None => Vec::new(),
            },
        };
        self.release(&settled);
        if let (Some(feed), false) = (self.stream.as_deref(), settled.is_empty()) {
            let still_held: Vec<Position> =
                pending.unacked.iter().filter_map(|u| u.position).collect();
            // The stream's lock is taken after this one is let go: delivery takes them the
            // other way round.
            drop(pending);
            Self::acknowledged_up_to(&Self::stream_state(feed), still_held.into_iter());
        }
        settled
    }

    /// Stops deliveries and gives back what was held unacknowledged.
    pub fn close(&self) -> Vec<Unacked> {
        let mut pending = self.pending();
        pending.closed = true;
        let held: Vec<Unacked> = pending.unacked.drain(..).collect();
        self.release(&held);
        held
    }

    fn release(&self, settled: &[Unacked]) {
        // A held queue message was charged its held weight (see `deliver_held`); others nothing.
        let charged: usize = settled
            .iter()
            .filter_map(|u| u.requeue.as_ref())
            .map(|(_, message)| message.held_weight())
            .sum();
        self.endpoint.budget.give_back(charged);
    }

    /// Messages this subscription holds unacknowledged.
    pub fn unacked_count(&self) -> usize {
        self.pending().unacked.len()
    }
}
