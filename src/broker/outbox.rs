//! The bounded outbound queue of one connection: what the broker and the session hand to the
//! transport's writer, with the slow-consumer policy that keeps a node's memory flat.
//!
//! Queue deliveries use the lower half of the bound only ([`Outbox::push_if_room`]): a queue
//! message that does not fit stays in the queue's backlog, and the outbox signals
//! [`Outbox::room`] when its writer has taken what was queued, so a backlog flows at the pace
//! the connection takes it instead of overflowing it. Topic deliveries, which have nowhere to
//! wait, use the whole bound and close a consumer that stays over it.
//!
//! Each item is one complete STOMP frame, kept as two shared pieces (a small per-delivery head
//! and a tail shared by every subscriber of the same message), so fan-out copies no body bytes
//! until the writer batches them into a socket write.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Why an outbox stopped taking frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// The session ends: the writer drains what is queued, then closes the connection.
    Drain,
    /// The consumer stayed over its byte bound: what was queued is dropped, an ERROR is written.
    SlowConsumer,
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The connection is closing; nothing more is written to it.
    #[error("connection is closing")]
    Closing,
    /// This frame pushed the consumer over its bound; the connection is now being closed.
    #[error("slow consumer")]
    SlowConsumer,
    /// No room for a queue delivery now; nothing changed, and [`Outbox::room`] will tell when
    /// there is.
    #[error("no room")]
    Full,
}

/// One frame waiting to be written: `head` then `tail` (either may be empty).
#[derive(Debug, Clone, Default)]
pub struct Item {
    /// Bytes specific to this delivery (command line and per-subscriber headers).
    pub head: Bytes,
    /// Bytes shared with other deliveries of the same message (headers, body, NUL).
    pub tail: Bytes,
    /// Both are valid UTF-8: the frame can travel in a WebSocket text message.
    pub text: bool,
    /// For a stored message: the mark the writer records once it has written the frame.
    pub written: Option<Written>,
}

/// What the writer must record once it has written an item.
#[derive(Debug, Clone)]
pub enum Written {
    /// A subscription's stream: its cursor moves on to the item's offset (the cursor of an
    /// auto-acknowledged user subscription).
    Cursor {
        /// The subscription's cursor.
        cursor: std::sync::Arc<super::cursor::StreamCursor>,
        /// The item's offset.
        offset: u64,
    },
    /// A durable queue's message delivered in `auto` mode: acknowledged once written, given
    /// back if dropped unwritten.
    Entry(std::sync::Arc<super::ticket::Delivered>),
}

impl Written {
    /// Tells the mark its frame was handed to the transport at `now_ms`.
    pub fn record(&self, now_ms: u64) {
        match self {
            Written::Cursor { cursor, offset } => cursor.written(*offset, now_ms),
            Written::Entry(delivered) => delivered.record(),
        }
    }
}

impl Item {
    /// A frame from `head` and `tail`, checked for UTF-8 here; deliveries, which share their
    /// tail, take the check made once per message instead.
    pub fn new(head: Bytes, tail: Bytes) -> Item {
        let text = std::str::from_utf8(&head).is_ok() && std::str::from_utf8(&tail).is_ok();
        Item {
            head,
            tail,
            text,
            written: None,
        }
    }

    /// A frame of static bytes.
    pub fn from_static(bytes: &'static [u8]) -> Item {
        Item::new(Bytes::from_static(bytes), Bytes::new())
    }

    /// Bytes this item occupies on the wire.
    pub fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// True for an item with no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Item>,
    bytes: usize,
    closing: Option<Closing>,
}

/// A batch taken by the writer.
#[derive(Debug, Default)]
pub struct Batch {
    /// Frames to write, in order.
    pub items: Vec<Item>,
    /// Set when the writer must close the connection after writing `items`.
    pub then_close: Option<Closing>,
}

/// The ERROR frame written to a slow consumer; it has no escaped characters, so it reads the
/// same in every STOMP version.
const SLOW_CONSUMER_ERROR: &[u8] = b"ERROR\nmessage:slow consumer\ncontent-type:text/plain\ncontent-length:73\n\nthe connection fell too far behind the messages sent to it and was closed\0";

/// A connection's outbound queue, bounded in bytes.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    wake: Notify,
    /// Cancelled when the consumer is declared slow, so a writer stuck in a write to a peer
    /// that stopped reading gives up at once instead of holding the connection open.
    overflow: CancellationToken,
    limit: usize,
    /// Frames thrown away when the consumer was declared slow (those queued and the one that
    /// did not fit), for the drop counter.
    dropped: std::sync::atomic::AtomicUsize,
    /// Set when a queue delivery was refused for room: the next batch the writer takes
    /// signals `room`.
    room_wanted: AtomicBool,
    room: Notify,
}

impl Outbox {
    /// An empty outbox that takes at most `limit` queued bytes.
    pub fn new(limit: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            overflow: CancellationToken::new(),
            limit,
            dropped: std::sync::atomic::AtomicUsize::new(0),
            room_wanted: AtomicBool::new(false),
            room: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue half-updated in a way that
        // matters more than losing the connection, so a poisoned lock is simply reused.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one frame. Over the bound, the consumer is declared slow: everything queued is
    /// dropped and the writer is told to send an ERROR and close.
    pub fn push(&self, item: Item) -> Result<(), Refused> {
        let mut state = self.lock();
        if state.closing.is_some() {
            return Err(Refused::Closing);
        }
        let len = item.len();
        if state.bytes + len > self.limit {
            self.dropped
                .store(state.items.len() + 1, std::sync::atomic::Ordering::Relaxed);
            state.items.clear();
            state
                .items
                .push_back(Item::from_static(SLOW_CONSUMER_ERROR));
            state.bytes = SLOW_CONSUMER_ERROR.len();
            state.closing = Some(Closing::SlowConsumer);
            drop(state);
            self.overflow.cancel();
            self.wake.notify_one();
            return Err(Refused::SlowConsumer);
        }
        self.enqueue(state, item);
        Ok(())
    }

    fn enqueue(&self, mut state: std::sync::MutexGuard<'_, State>, item: Item) {
        state.bytes += item.len();
        state.items.push_back(item);
        let first = state.items.len() == 1;
        drop(state);
        // The writer only sleeps on an empty queue, so only the first item needs to wake it.
        if first {
            self.wake.notify_one();
        }
    }

    /// Queues a queue delivery if the outbox is below half its bound (and the frame fits in
    /// the whole of it); otherwise refuses with [`Refused::Full`], changing nothing, and
    /// remembers to signal [`Outbox::room`] once the writer has taken what is queued.
    pub fn push_if_room(&self, item: Item) -> Result<(), Refused> {
        let state = self.lock();
        if state.closing.is_some() {
            return Err(Refused::Closing);
        }
        if state.bytes >= self.limit / 2 || state.bytes + item.len() > self.limit {
            self.room_wanted.store(true, Ordering::Release);
            return Err(Refused::Full);
        }
        self.enqueue(state, item);
        Ok(())
    }

    /// True while a queue delivery would be taken (the outbox is open and below half its
    /// bound); when not, the next batch the writer takes signals [`Outbox::room`].
    pub fn has_room(&self) -> bool {
        let state = self.lock();
        let room = state.closing.is_none() && state.bytes < self.limit / 2;
        if !room {
            self.room_wanted.store(true, Ordering::Release);
        }
        room
    }

    /// Completes when a queue delivery refused for room may now fit: the writer took the
    /// queued frames. Cancel-safe; a signal given while nobody waits is kept for the next wait.
    pub async fn room(&self) {
        self.room.notified().await
    }

    /// Queues a frame whatever the bound (the session's own replies: CONNECTED, RECEIPT).
    pub fn push_control(&self, frame: Bytes) -> Result<(), Refused> {
        let mut state = self.lock();
        if state.closing.is_some() {
            return Err(Refused::Closing);
        }
        state.bytes += frame.len();
        state.items.push_back(Item::new(frame, Bytes::new()));
        drop(state);
        self.wake.notify_one();
        Ok(())
    }

    /// Queues a last frame (usually an ERROR or a RECEIPT for DISCONNECT) and closes the outbox:
    /// the writer drains it, then closes the connection.
    pub fn finish(&self, last: Option<Bytes>) {
        let mut state = self.lock();
        if state.closing.is_some() {
            return;
        }
        if let Some(frame) = last {
            state.bytes += frame.len();
            state.items.push_back(Item::new(frame, Bytes::new()));
        }
        state.closing = Some(Closing::Drain);
        drop(state);
        self.wake.notify_one();
    }

    /// Frames thrown away when the consumer was declared slow (0 if it never was).
    pub fn dropped_frames(&self) -> usize {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Completes once the consumer has been declared slow.
    pub async fn overflowed(&self) {
        self.overflow.cancelled().await
    }

    /// True once the outbox takes no more frames.
    pub fn is_closing(&self) -> bool {
        self.lock().closing.is_some()
    }

    /// Bytes queued and not yet taken by the writer.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Takes every queued frame, waiting while the queue is empty and open. Cancel-safe.
    pub async fn next_batch(&self) -> Batch {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            // Registering before looking at the queue means a push between the look and the
            // wait still wakes us.
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if !state.items.is_empty() || state.closing.is_some() {
                    state.bytes = 0;
                    let batch = Batch {
                        items: state.items.drain(..).collect(),
                        then_close: state.closing,
                    };
                    drop(state);
                    if self.room_wanted.swap(false, Ordering::AcqRel) {
                        self.room.notify_one();
                    }
                    return batch;
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: usize) -> Item {
        Item {
            text: true,
            head: Bytes::from(vec![b'x'; n]),
            tail: Bytes::new(),
            written: None,
        }
    }

    #[tokio::test]
    async fn batches_everything_queued() {
        let outbox = Outbox::new(100);
        outbox.push(item(10)).unwrap();
        outbox.push(item(20)).unwrap();
        let batch = outbox.next_batch().await;
        assert_eq!(batch.items.len(), 2);
        assert_eq!(batch.then_close, None);
        assert_eq!(outbox.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn over_the_bound_is_a_slow_consumer() {
        let outbox = Outbox::new(100);
        outbox.push(item(60)).unwrap();
        assert_eq!(outbox.push(item(60)), Err(Refused::SlowConsumer));
        assert_eq!(outbox.push(item(1)), Err(Refused::Closing));
        let batch = outbox.next_batch().await;
        assert_eq!(batch.then_close, Some(Closing::SlowConsumer));
        assert_eq!(batch.items.len(), 1);
        assert!(batch.items[0]
            .head
            .starts_with(b"ERROR\nmessage:slow consumer\n"));
    }

    #[test]
    fn slow_consumer_error_declares_its_true_length() {
        let text = std::str::from_utf8(SLOW_CONSUMER_ERROR).unwrap();
        let (head, body) = text.split_once("\n\n").unwrap();
        let declared: usize = head
            .rsplit_once("content-length:")
            .unwrap()
            .1
            .parse()
            .unwrap();
        assert_eq!(declared, body.len() - 1, "body minus the NUL");
    }

    #[tokio::test]
    async fn finish_drains_then_closes() {
        let outbox = Outbox::new(100);
        outbox.push(item(5)).unwrap();
        outbox.finish(Some(Bytes::from_static(b"RECEIPT\n\n\0")));
        assert_eq!(outbox.push(item(1)), Err(Refused::Closing));
        let batch = outbox.next_batch().await;
        assert_eq!(batch.items.len(), 2);
        assert_eq!(batch.then_close, Some(Closing::Drain));
    }

    #[tokio::test]
    async fn a_queue_delivery_waits_for_room_instead_of_overflowing() {
        let outbox = Outbox::new(100);
        outbox.push_if_room(item(50)).unwrap();
        assert_eq!(outbox.push_if_room(item(10)), Err(Refused::Full));
        assert!(!outbox.is_closing(), "refusing for room closes nothing");
        assert_eq!(outbox.queued_bytes(), 50);
        let soon = std::time::Duration::from_millis(20);
        assert!(
            tokio::time::timeout(soon, outbox.room()).await.is_err(),
            "no room until the writer takes the batch"
        );
        assert_eq!(outbox.next_batch().await.items.len(), 1);
        tokio::time::timeout(soon, outbox.room())
            .await
            .expect("the batch taken signals room");
        outbox.push_if_room(item(10)).unwrap();
    }

    #[tokio::test]
    async fn writer_wakes_on_push() {
        let outbox = std::sync::Arc::new(Outbox::new(100));
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.next_batch().await.items.len() }
        });
        tokio::task::yield_now().await;
        outbox.push(item(3)).unwrap();
        assert_eq!(waiter.await.unwrap(), 1);
    }
}
