//! How far delivery of one stream subscription got (its user's cursor for the destination),
//! and the queue through which cursors that moved reach the task that saves them.
//!
//! A cursor is queued once when it moves and not again until the saver took it, so a
//! subscription receiving thousands of messages a second costs the store one write per
//! round of the saver, not one per message; and a node that dies loses only the moves of
//! the round in flight.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::message::Position;

/// Where moved cursors go to be saved.
pub type CursorQueue = tokio::sync::mpsc::UnboundedSender<Arc<StreamCursor>>;

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
    offset: AtomicU64,
    queued: AtomicBool,
    saver: Option<CursorQueue>,
}

impl StreamCursor {
    /// A cursor at nothing yet in `epoch`; with a `saver`, every move is queued there.
    pub fn new(
        user: &str,
        dest: &str,
        epoch: u64,
        crossed: bool,
        saver: Option<CursorQueue>,
    ) -> Arc<StreamCursor> {
        Arc::new(StreamCursor {
            user: user.to_string(),
            dest: dest.to_string(),
            epoch,
            crossed,
            offset: AtomicU64::new(0),
            queued: AtomicBool::new(false),
            saver,
        })
    }

    /// Moves on to `offset` (never back), and queues the cursor for saving unless it waits
    /// there already.
    pub fn advance(self: &Arc<Self>, offset: u64) {
        let before = self.offset.fetch_max(offset, Ordering::AcqRel);
        if before >= offset {
            return;
        }
        if let Some(saver) = &self.saver {
            if !self.queued.swap(true, Ordering::AcqRel) {
                let _ = saver.send(self.clone());
            }
        }
    }

    /// Where it is, for the saver, which takes it off the queue: a move after this queues it
    /// again.
    pub fn take(&self) -> Option<Position> {
        self.queued.store(false, Ordering::Release);
        self.position()
    }

    /// Where it is; `None` before anything was delivered.
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

    #[test]
    fn a_cursor_is_queued_once_per_round_and_never_moves_back() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let cursor = StreamCursor::new("alice", "/queue/a", 7, false, Some(tx));
        assert_eq!(cursor.position(), None);
        cursor.advance(3);
        cursor.advance(5);
        cursor.advance(4);
        let queued = rx.try_recv().unwrap();
        assert!(rx.try_recv().is_err(), "queued once until taken");
        assert_eq!(
            queued.take(),
            Some(Position {
                epoch: 7,
                offset: 5
            })
        );
        cursor.advance(5);
        assert!(rx.try_recv().is_err(), "no move, nothing to save");
        cursor.advance(6);
        assert_eq!(rx.try_recv().unwrap().take().unwrap().offset, 6);
    }
}
