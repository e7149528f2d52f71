//! How far delivery of one stream subscription got (its user's cursor for the destination),
//! when a message counts as delivered, and the queue through which cursors that moved reach
//! the task that saves them.
//!
//! In `auto` mode nothing tells the broker that a page processed a frame, and a frame on its
//! way when the page unloads (a reload) or stuck in a buffer when the node dies is lost to
//! that page. So a written frame only counts once its connection has shown it was alive
//! after the frame: it stayed attached for [`Confirmation::after`] since the frame was handed
//! over, or its client came back for more (a SockJS poll after the one that carried it).
//! A frame written in the last moment before an abrupt end is therefore given to the user's
//! next session instead of being lost. What that costs: a frame the page did process in that
//! moment comes again. In client ack modes an ACK is the confirmation, at once.
//!
//! A cursor is queued for saving when it moves, once until the saver took it, and the saver
//! keeps looking at it while frames wait to count, so a subscription receiving thousands of
//! messages a second costs the store one write per round of the saver, not one per message.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::message::Position;

/// Where moved cursors go to be saved.
pub type CursorQueue = tokio::sync::mpsc::UnboundedSender<Arc<StreamCursor>>;

/// Whether a connection is there to take frames: every transport marks its end; SockJS marks
/// each receiver (a poll, a stream) coming and going.
#[derive(Debug)]
pub struct Attachment {
    /// How many times a receiver attached (1 for a plain socket).
    attaches: AtomicU64,
    /// When the last receiver went away, in ms since the Unix epoch; 0 while one is attached.
    detached_at_ms: AtomicU64,
    /// Frames go through a relay that may hold them (a SockJS session), not straight into a
    /// socket the kernel delivers from even if this process dies.
    relayed: AtomicBool,
}

impl Default for Attachment {
    fn default() -> Self {
        Attachment {
            attaches: AtomicU64::new(1),
            detached_at_ms: AtomicU64::new(0),
            relayed: AtomicBool::new(false),
        }
    }
}

impl Attachment {
    /// Frames go through a relay (SockJS): what was handed over is not yet on a socket.
    pub fn relayed(&self) {
        self.relayed.store(true, Ordering::Release);
    }

    /// A receiver came.
    pub fn attached(&self) {
        self.attaches.fetch_add(1, Ordering::AcqRel);
        self.detached_at_ms.store(0, Ordering::Release);
    }

    /// The receiver went away at `now_ms` (the connection ended, or a SockJS response did).
    pub fn detached(&self, now_ms: u64) {
        let _ = self.detached_at_ms.compare_exchange(
            0,
            now_ms.max(1),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    fn generation(&self) -> u64 {
        self.attaches.load(Ordering::Acquire)
    }
}

/// How long a connection must stay attached after a frame for the frame to count.
#[derive(Debug, Clone, Copy)]
pub struct Confirmation {
    /// The time.
    pub after: Duration,
}

/// A frame handed to the transport, not yet counted.
#[derive(Debug, Clone, Copy)]
struct Handed {
    at_ms: u64,
    generation: u64,
    offset: u64,
}

/// One subscription's cursor in one epoch of its user's stream.
#[derive(Debug)]
pub struct StreamCursor {
    /// The user.
    pub user: String,
    /// The destination, as stored (`/queue/notice`).
    pub dest: String,
    /// The epoch its offsets belong to.
    pub epoch: u64,
    /// Its subscription went on into this epoch from an earlier one (the store lost what it
    /// held meanwhile), so what the old epoch held undelivered may be gone.
    pub crossed: bool,
    /// The last offset that counts as delivered.
    offset: AtomicU64,
    /// The last offset handed to the transport.
    written: AtomicU64,
    /// The last offset given to the saver.
    saved: AtomicU64,
    handed: Mutex<VecDeque<Handed>>,
    attachment: Arc<Attachment>,
    confirmation: Confirmation,
    queued: AtomicBool,
    saver: Option<CursorQueue>,
}

/// Where a new cursor belongs: its stream, the connection it delivers on, and where it is
/// saved.
#[derive(Debug, Clone)]
pub struct CursorPlace<'a> {
    /// The user.
    pub user: &'a str,
    /// The destination.
    pub dest: &'a str,
    /// The epoch.
    pub epoch: u64,
    /// Whether delivery crossed into this epoch from a lost one.
    pub crossed: bool,
}

impl StreamCursor {
    /// A cursor at nothing yet in `place`'s epoch, for frames on `attachment`'s connection;
    /// with a `saver`, every move is queued there.
    pub fn new(
        place: CursorPlace<'_>,
        attachment: Arc<Attachment>,
        confirmation: Confirmation,
        saver: Option<CursorQueue>,
    ) -> Arc<StreamCursor> {
        Arc::new(StreamCursor {
            user: place.user.to_string(),
            dest: place.dest.to_string(),
            epoch: place.epoch,
            crossed: place.crossed,
            offset: AtomicU64::new(0),
            written: AtomicU64::new(0),
            saved: AtomicU64::new(0),
            handed: Mutex::new(VecDeque::new()),
            attachment,
            confirmation,
            queued: AtomicBool::new(false),
            saver,
        })
    }

    fn handed(&self) -> std::sync::MutexGuard<'_, VecDeque<Handed>> {
        self.handed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The transport took the frame at `offset` (an `auto` delivery): it counts once the
    /// connection has shown it was alive after it.
    pub fn written(self: &Arc<Self>, offset: u64, now_ms: u64) {
        self.written.fetch_max(offset, Ordering::AcqRel);
        if self.saver.is_none() {
            // No saver looks at it before the subscription ends: what counts is counted here,
            // so what waits stays the frames of the last confirmation time, not all of them.
            self.confirm(now_ms);
        }
        self.handed().push_back(Handed {
            at_ms: now_ms,
            generation: self.attachment.generation(),
            offset,
        });
        self.queue();
    }

    /// Delivery got to `offset` for certain (an ACK): it counts at once.
    pub fn acknowledged(self: &Arc<Self>, offset: u64) {
        if self.offset.fetch_max(offset, Ordering::AcqRel) < offset {
            self.queue();
        }
    }

    fn queue(self: &Arc<Self>) {
        if let Some(saver) = &self.saver {
            if !self.queued.swap(true, Ordering::AcqRel) {
                let _ = saver.send(self.clone());
            }
        }
    }

    /// Counts what the connection has confirmed by `now_ms`; true while frames still wait.
    pub fn confirm(&self, now_ms: u64) -> bool {
        let generation = self.attachment.generation();
        let detached_at = self.attachment.detached_at_ms.load(Ordering::Acquire);
        let after = self.confirmation.after.as_millis() as u64;
        let mut handed = self.handed();
        while let Some(frame) = handed.front() {
            let alive_until = if detached_at == 0 {
                now_ms
            } else {
                detached_at
            };
            let counts =
                generation > frame.generation || alive_until.saturating_sub(frame.at_ms) >= after;
            if !counts {
                break;
            }
            self.offset.fetch_max(frame.offset, Ordering::AcqRel);
            handed.pop_front();
        }
        !handed.is_empty()
    }

    /// For the saver, which took it off the queue (the next move queues it again): counts
    /// what now counts, and says whether frames still wait to (the saver then looks again).
    pub fn take(&self, now_ms: u64) -> bool {
        self.queued.store(false, Ordering::Release);
        self.confirm(now_ms)
    }

    /// What the saver must write, if it moved since the last call: in case this node dies,
    /// the last frame on a socket (the kernel still delivers it), or through a relay the last
    /// that counts. When the connection ends while this node lives, its subscription puts the
    /// cursor back to what counts (see [`StreamCursor::saved`]).
    pub fn unsaved(&self) -> Option<Position> {
        let counted = self.offset.load(Ordering::Acquire);
        let offset = if self.attachment.relayed.load(Ordering::Acquire) {
            counted
        } else {
            counted.max(self.written.load(Ordering::Acquire))
        };
        let before = self.saved.fetch_max(offset, Ordering::AcqRel);
        (before < offset).then_some(Position {
            epoch: self.epoch,
            offset,
        })
    }

    /// Starts counting after `offset`, where the store's cursor already stands.
    pub fn start_after(&self, offset: u64) {
        self.offset.fetch_max(offset, Ordering::AcqRel);
        self.saved.fetch_max(offset, Ordering::AcqRel);
    }

    /// What the saver last wrote (0: nothing).
    pub fn saved(&self) -> u64 {
        self.saved.load(Ordering::Acquire)
    }

    /// Where it is (what counts now); `None` before anything counted.
    pub fn position(&self) -> Option<Position> {
        let offset = self.offset.load(Ordering::Acquire);
        (offset > 0).then_some(Position {
            epoch: self.epoch,
            offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: Confirmation = Confirmation {
        after: Duration::from_millis(50),
    };

    fn cursor(saver: Option<CursorQueue>) -> (Arc<StreamCursor>, Arc<Attachment>) {
        let attachment = Arc::new(Attachment::default());
        let place = CursorPlace {
            user: "alice",
            dest: "/queue/a",
            epoch: 7,
            crossed: false,
        };
        (
            StreamCursor::new(place, attachment.clone(), AFTER, saver),
            attachment,
        )
    }

    #[test]
    fn a_frame_counts_once_its_connection_stayed_for_the_confirmation_time() {
        let (cursor, _) = cursor(None);
        cursor.written(1, 1_000);
        cursor.written(2, 1_030);
        assert!(cursor.confirm(1_040));
        assert_eq!(cursor.position(), None);
        assert!(cursor.confirm(1_050));
        assert_eq!(cursor.position().unwrap().offset, 1);
        assert!(!cursor.confirm(1_080));
        assert_eq!(
            cursor.position(),
            Some(Position {
                epoch: 7,
                offset: 2
            })
        );
    }

    #[test]
    fn without_a_saver_what_waits_to_count_stays_bounded() {
        let (cursor, _) = cursor(None);
        for offset in 1..=10_000 {
            cursor.written(offset, 1_000 + offset);
        }
        assert!(cursor.handed().len() <= 51, "{}", cursor.handed().len());
        assert_eq!(cursor.position().unwrap().offset, 10_000 - 50);
    }

    #[test]
    fn frames_just_before_an_abrupt_end_do_not_count() {
        let (cursor, attachment) = cursor(None);
        cursor.written(1, 1_000);
        cursor.written(2, 1_090);
        attachment.detached(1_100);
        cursor.confirm(5_000);
        assert_eq!(
            cursor.position().unwrap().offset,
            1,
            "2 goes to the next session"
        );
    }

    #[test]
    fn a_client_that_comes_back_confirms_what_it_was_given() {
        let (cursor, attachment) = cursor(None);
        // A SockJS poll carried 1 and ended at once; the next poll confirms it.
        cursor.written(1, 1_000);
        attachment.detached(1_001);
        cursor.confirm(1_010);
        assert_eq!(cursor.position(), None);
        attachment.attached();
        cursor.confirm(1_012);
        assert_eq!(cursor.position().unwrap().offset, 1);
    }

    #[test]
    fn the_saver_keeps_a_sockets_last_frame_but_a_relays_last_counted() {
        let (cursor, attachment) = cursor(None);
        cursor.written(4, 1_000);
        assert_eq!(
            cursor.unsaved().unwrap().offset,
            4,
            "the kernel delivers it if we die"
        );
        assert_eq!(cursor.saved(), 4);
        assert_eq!(cursor.unsaved(), None, "nothing moved");
        attachment.relayed();
        cursor.written(5, 1_010);
        assert_eq!(cursor.unsaved(), None, "5 waits in the relay");
        cursor.confirm(1_100);
        assert_eq!(cursor.unsaved().unwrap().offset, 5);
    }

    #[test]
    fn acknowledgements_count_at_once_and_the_queue_is_used_once_per_round() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (cursor, _) = cursor(Some(tx));
        cursor.acknowledged(3);
        cursor.acknowledged(2);
        let queued = rx.try_recv().unwrap();
        assert!(rx.try_recv().is_err(), "queued once until taken");
        assert!(!queued.take(0));
        assert_eq!(
            queued.position(),
            Some(Position {
                epoch: 7,
                offset: 3
            })
        );
        cursor.written(4, 100);
        let waiting = rx.try_recv().unwrap().take(120);
        assert!(waiting, "4 does not count yet: it stays queued");
        cursor.take(150);
        assert_eq!(cursor.position().unwrap().offset, 4);
    }
}
