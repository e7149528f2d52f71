//! The in-process [`History`]: one tenant's user streams in this node's memory, within the
//! tenant's retention and a byte budget shared by every tenant of the node.
//!
//! Each user's stream keeps its next offset for as long as the node runs, even once every
//! message in it has expired: offsets must never be handed out twice in one epoch, or a client
//! resuming from `offset=N` would skip what came after a restart of the count. What a user
//! record costs is charged to the budget with its messages.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    Appended, Cursor, History, HistoryError, Position, ReadFrom, Replay, Retention, StartAt, Stored,
};
use crate::broker::budget::headers_weight;
use crate::broker::{Budget, Content};

/// What one stored message costs beyond its bytes: the entry, its `String`s and slot.
const ENTRY_OVERHEAD: usize = 160;
/// What a user's record costs beyond its name: the map slot, the queue, the counters.
const USER_OVERHEAD: usize = 128;
/// What a cursor costs beyond its destination's name.
const CURSOR_OVERHEAD: usize = 64;

/// The clock the store reads, in ms since the Unix epoch (tests give their own).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

#[derive(Debug, Default)]
struct UserStream {
    /// Oldest first; each is charged its [`weight`] to the budget.
    entries: VecDeque<Stored>,
    next_offset: u64,
    /// When the newest dropped message was stored, in ms (0: none was).
    dropped_until_ms: u64,
    /// Per destination, the offset delivery got to.
    cursors: HashMap<String, u64>,
}

impl UserStream {
    fn new() -> UserStream {
        UserStream {
            next_offset: 1,
            ..UserStream::default()
        }
    }

    /// The offset of the oldest message kept, or the next one when none is: every offset below
    /// it was handed out and has since been dropped.
    fn first_kept(&self) -> u64 {
        self.entries
            .front()
            .map_or(self.next_offset, |s| s.position.offset)
    }

    fn drop_oldest(&mut self, budget: &Budget) {
        if let Some(stored) = self.entries.pop_front() {
            budget.give_back(weight(&stored.dest, &stored.content));
            self.dropped_until_ms = self.dropped_until_ms.max(stored.stored_at_ms);
        }
    }

    /// Drops what is past the retention's age.
    fn expire(&mut self, now_ms: u64, retention: &Retention, budget: &Budget) {
        while self
            .entries
            .front()
            .is_some_and(|s| now_ms.saturating_sub(s.stored_at_ms) > retention.max_age_ms)
        {
            self.drop_oldest(budget);
        }
    }
}

/// One tenant's user streams, in memory.
pub struct MemoryHistory {
    epoch: u64,
    retention: Retention,
    budget: Arc<Budget>,
    clock: Clock,
    users: Mutex<HashMap<String, UserStream>>,
}

impl std::fmt::Debug for MemoryHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryHistory")
            .field("epoch", &self.epoch)
            .field("retention", &self.retention)
            .field("bytes", &self.budget.used())
            .finish()
    }
}

/// The cost of storing `content` for `dest`.
fn weight(dest: &str, content: &Content) -> usize {
    ENTRY_OVERHEAD + dest.len() + content.body.len() + headers_weight(&content.headers)
}

impl MemoryHistory {
    /// A store in `epoch` (make it differ from any earlier process's: the start time in ms
    /// does) keeping `retention`, within `budget` (shared by the node's tenants).
    pub fn new(
        epoch: u64,
        retention: Retention,
        budget: Arc<Budget>,
        clock: Clock,
    ) -> MemoryHistory {
        MemoryHistory {
            epoch,
            retention,
            budget,
            clock,
            users: Mutex::new(HashMap::new()),
        }
    }

    fn users(&self) -> MutexGuard<'_, HashMap<String, UserStream>> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn full(&self) -> HistoryError {
        HistoryError::Full(format!(
            "the node's message history holds its limit of {} bytes (history.max_bytes)",
            self.budget.limit()
        ))
    }

    /// Drops every user's expired messages; called when the budget is full, so that messages
    /// of users nobody touched since do not hold it.
    fn expire_all(&self, users: &mut HashMap<String, UserStream>, now_ms: u64) {
        for stream in users.values_mut() {
            stream.expire(now_ms, &self.retention, &self.budget);
        }
    }

    /// Messages and bytes held (for metrics and tests).
    pub fn held(&self) -> (usize, usize) {
        let users = self.users();
        (
            users.values().map(|u| u.entries.len()).sum(),
            self.budget.used(),
        )
    }
}

#[async_trait]
impl History for MemoryHistory {
    async fn append(
        &self,
        user: &str,
        dest: &str,
        content: &Content,
    ) -> Result<Appended, HistoryError> {
        let now_ms = (self.clock)();
        let mut users = self.users();
        if !users.contains_key(user) {
            if !self.budget.try_take(USER_OVERHEAD + user.len()) {
                self.expire_all(&mut users, now_ms);
                if !self.budget.try_take(USER_OVERHEAD + user.len()) {
                    return Err(self.full());
                }
            }
            users.insert(user.to_string(), UserStream::new());
        }
        let cost = weight(dest, content);
        let stream = users.get_mut(user).expect("inserted above");
        stream.expire(now_ms, &self.retention, &self.budget);
        while stream.entries.len() >= self.retention.max_messages.max(1) {
            stream.drop_oldest(&self.budget);
        }
        if !self.budget.try_take(cost) {
            self.expire_all(&mut users, now_ms);
            if !self.budget.try_take(cost) {
                return Err(self.full());
            }
        }
        let stream = users.get_mut(user).expect("inserted above");
        let position = Position {
            epoch: self.epoch,
            offset: stream.next_offset,
        };
        stream.next_offset += 1;
        // Copied out of whatever larger buffer the body was cut from: it is kept for long.
        let content = Content {
            headers: content.headers.clone(),
            body: Bytes::copy_from_slice(&content.body),
        };
        stream.entries.push_back(Stored {
            position,
            dest: dest.to_string(),
            content,
            stored_at_ms: now_ms,
        });
        Ok(Appended {
            position,
            holders: None,
        })
    }

    async fn read(&self, user: &str, dest: &str, from: ReadFrom) -> Result<Replay, HistoryError> {
        let now_ms = (self.clock)();
        let mut users = self.users();
        let Some(stream) = users.get_mut(user) else {
            // Nothing was ever stored for the user in this epoch: a position of this epoch
            // misses nothing; one of another epoch may have.
            let complete = match from {
                ReadFrom::After(p) => p.epoch == self.epoch,
                ReadFrom::StartAt(_) => true,
            };
            return Ok(Replay {
                epoch: self.epoch,
                messages: Vec::new(),
                complete,
                next_offset: 1,
            });
        };
        stream.expire(now_ms, &self.retention, &self.budget);
        let low = stream.first_kept();
        let for_dest = |s: &&Stored| s.dest == dest;
        let (start, complete) = match from {
            ReadFrom::After(p) if p.epoch != self.epoch => (low, false),
            ReadFrom::After(p) => {
                let start = p.offset.saturating_add(1).min(stream.next_offset);
                (start, start >= low)
            }
            ReadFrom::StartAt(StartAt::First) => (low, true),
            ReadFrom::StartAt(StartAt::Next) => (stream.next_offset, true),
            ReadFrom::StartAt(StartAt::Last) => {
                let last = stream
                    .entries
                    .iter()
                    .rev()
                    .find(for_dest)
                    .map_or(stream.next_offset, |s| s.position.offset);
                (last, true)
            }
            ReadFrom::StartAt(StartAt::Offset(n)) => {
                let start = n.max(1).min(stream.next_offset);
                (start, start >= low)
            }
            ReadFrom::StartAt(StartAt::Timestamp(secs)) => {
                let at_ms = secs.saturating_mul(1000);
                let start = stream
                    .entries
                    .iter()
                    .find(|s| s.stored_at_ms >= at_ms)
                    .map_or(stream.next_offset, |s| s.position.offset);
                (start, stream.dropped_until_ms < at_ms)
            }
        };
        let messages = stream
            .entries
            .iter()
            .filter(for_dest)
            .filter(|s| s.position.offset >= start)
            .cloned()
            .collect();
        Ok(Replay {
            epoch: self.epoch,
            messages,
            complete,
            next_offset: stream.next_offset,
        })
    }

    async fn since(&self, user: &str, after: Position) -> Result<Replay, HistoryError> {
        let now_ms = (self.clock)();
        let mut users = self.users();
        let Some(stream) = users.get_mut(user) else {
            return Ok(Replay {
                epoch: self.epoch,
                messages: Vec::new(),
                complete: after.epoch == self.epoch,
                next_offset: 1,
            });
        };
        stream.expire(now_ms, &self.retention, &self.budget);
        let low = stream.first_kept();
        let (start, complete) = if after.epoch == self.epoch {
            let start = after.offset.saturating_add(1);
            (start, start >= low)
        } else {
            (low, false)
        };
        Ok(Replay {
            epoch: self.epoch,
            messages: stream
                .entries
                .iter()
                .filter(|s| s.position.offset >= start)
                .cloned()
                .collect(),
            complete,
            next_offset: stream.next_offset,
        })
    }

    async fn head(&self, user: &str) -> Result<Position, HistoryError> {
        Ok(Position {
            epoch: self.epoch,
            offset: self.users().get(user).map_or(1, |s| s.next_offset),
        })
    }

    async fn advance(&self, user: &str, dest: &str, cursor: Cursor) -> Result<(), HistoryError> {
        // One process keeps one epoch: a cursor never crosses into it from another.
        let position = cursor.position;
        if position.epoch != self.epoch {
            return Ok(());
        }
        let mut users = self.users();
        let Some(stream) = users.get_mut(user) else {
            return Ok(());
        };
        match stream.cursors.get_mut(dest) {
            Some(at) => *at = (*at).max(position.offset),
            None => {
                if !self.budget.try_take(CURSOR_OVERHEAD + dest.len()) {
                    return Err(self.full());
                }
                stream.cursors.insert(dest.to_string(), position.offset);
            }
        }
        Ok(())
    }

    async fn rewind(
        &self,
        user: &str,
        dest: &str,
        epoch: u64,
        saved: u64,
        to: u64,
    ) -> Result<(), HistoryError> {
        if epoch != self.epoch {
            return Ok(());
        }
        let mut users = self.users();
        let Some(stream) = users.get_mut(user) else {
            return Ok(());
        };
        if stream.cursors.get(dest) == Some(&saved) {
            if to == 0 {
                stream.cursors.remove(dest);
                self.budget.give_back(CURSOR_OVERHEAD + dest.len());
            } else {
                stream.cursors.insert(dest.to_string(), to);
            }
        }
        Ok(())
    }

    async fn cursor(&self, user: &str, dest: &str) -> Result<Option<Cursor>, HistoryError> {
        Ok(self
            .users()
            .get(user)
            .and_then(|s| s.cursors.get(dest))
            .map(|&offset| Cursor {
                position: Position {
                    epoch: self.epoch,
                    offset,
                },
                crossed: false,
            }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    struct Fixture {
        store: MemoryHistory,
        now: Arc<AtomicU64>,
    }

    fn fixture(max_messages: usize, max_age_ms: u64, bytes: usize) -> Fixture {
        let now = Arc::new(AtomicU64::new(1_000_000));
        let clock: Clock = {
            let now = now.clone();
            Arc::new(move || now.load(Ordering::Relaxed))
        };
        let store = MemoryHistory::new(
            7,
            Retention {
                max_messages,
                max_age_ms,
            },
            Arc::new(Budget::new(bytes)),
            clock,
        );
        Fixture { store, now }
    }

    fn text(s: &str) -> Content {
        Content {
            headers: vec![],
            body: Bytes::copy_from_slice(s.as_bytes()),
        }
    }

    fn bodies(replay: &Replay) -> Vec<String> {
        replay
            .messages
            .iter()
            .map(|m| String::from_utf8_lossy(&m.content.body).into_owned())
            .collect()
    }

    const N: &str = "/queue/notice";

    fn at(offset: u64) -> ReadFrom {
        ReadFrom::After(Position { epoch: 7, offset })
    }

    #[tokio::test]
    async fn offsets_are_contiguous_per_user_and_reads_pick_the_destination() {
        let f = fixture(100, 60_000, 1 << 20);
        let s = &f.store;
        assert_eq!(
            s.append("alice", N, &text("a1"))
                .await
                .unwrap()
                .position
                .offset,
            1
        );
        assert_eq!(
            s.append("bob", N, &text("b1"))
                .await
                .unwrap()
                .position
                .offset,
            1
        );
        assert_eq!(
            s.append("alice", "/queue/other", &text("o"))
                .await
                .unwrap()
                .position
                .offset,
            2
        );
        let p = s.append("alice", N, &text("a2")).await.unwrap();
        assert_eq!(
            p.position,
            Position {
                epoch: 7,
                offset: 3
            }
        );
        let all = s
            .read("alice", N, ReadFrom::StartAt(StartAt::First))
            .await
            .unwrap();
        assert_eq!(bodies(&all), ["a1", "a2"]);
        assert!(all.complete);
        assert_eq!(all.next_offset, 4);
        let after = s.read("alice", N, at(1)).await.unwrap();
        assert_eq!(bodies(&after), ["a2"]);
        assert!(after.complete);
        assert_eq!(
            bodies(
                &s.read("alice", N, ReadFrom::StartAt(StartAt::Offset(3)))
                    .await
                    .unwrap()
            ),
            ["a2"],
            "offset=N is inclusive"
        );
        assert!(bodies(
            &s.read("alice", N, ReadFrom::StartAt(StartAt::Next))
                .await
                .unwrap()
        )
        .is_empty());
        assert_eq!(
            bodies(
                &s.read("alice", N, ReadFrom::StartAt(StartAt::Last))
                    .await
                    .unwrap()
            ),
            ["a2"]
        );
    }

    #[tokio::test]
    async fn cursors_only_move_on_and_belong_to_one_epoch() {
        let f = fixture(100, 60_000, 1 << 20);
        let s = &f.store;
        s.append("alice", N, &text("1")).await.unwrap();
        assert_eq!(s.cursor("alice", N).await.unwrap(), None);
        let cursor_at = |epoch, offset| Cursor {
            position: Position { epoch, offset },
            crossed: false,
        };
        s.advance("alice", N, cursor_at(7, 1)).await.unwrap();
        s.advance("alice", N, cursor_at(7, 0)).await.unwrap();
        assert_eq!(s.cursor("alice", N).await.unwrap(), Some(cursor_at(7, 1)));
        s.advance("alice", N, cursor_at(3, 9)).await.unwrap();
        assert_eq!(
            s.cursor("alice", N).await.unwrap().unwrap().position.offset,
            1
        );
        // A position of another epoch reads as incomplete: the store may have lost messages.
        s.append("alice", N, &text("2")).await.unwrap();
        let old = s
            .read(
                "alice",
                N,
                ReadFrom::After(Position {
                    epoch: 3,
                    offset: 1,
                }),
            )
            .await
            .unwrap();
        assert!(!old.complete);
        assert_eq!(
            bodies(&old),
            ["1", "2"],
            "what the store holds, marked incomplete"
        );
        let unknown = s
            .read(
                "carol",
                N,
                ReadFrom::After(Position {
                    epoch: 3,
                    offset: 1,
                }),
            )
            .await
            .unwrap();
        assert!(!unknown.complete);
        assert!(s.read("carol", N, at(0)).await.unwrap().complete);
    }

    #[tokio::test]
    async fn retention_drops_the_oldest_by_count_and_age_and_says_so() {
        let f = fixture(3, 10_000, 1 << 20);
        let s = &f.store;
        for i in 1..=5 {
            s.append("alice", N, &text(&i.to_string())).await.unwrap();
        }
        let kept = s.read("alice", N, at(0)).await.unwrap();
        assert_eq!(bodies(&kept), ["3", "4", "5"]);
        assert!(!kept.complete, "1 and 2 were dropped");
        assert!(s.read("alice", N, at(2)).await.unwrap().complete);
        assert!(
            !s.read("alice", N, ReadFrom::StartAt(StartAt::Offset(1)))
                .await
                .unwrap()
                .complete
        );
        f.now.fetch_add(5_000, Ordering::Relaxed);
        s.append("alice", N, &text("6")).await.unwrap();
        f.now.fetch_add(6_000, Ordering::Relaxed);
        let fresh = s.read("alice", N, at(5)).await.unwrap();
        assert_eq!(bodies(&fresh), ["6"], "3, 4 and 5 are older than 10 s");
        assert!(fresh.complete);
        assert!(!s.read("alice", N, at(4)).await.unwrap().complete);
        let since = s
            .read("alice", N, ReadFrom::StartAt(StartAt::Timestamp(1_004)))
            .await
            .unwrap();
        assert_eq!(bodies(&since), ["6"]);
        assert!(
            since.complete,
            "nothing stored from that second on was dropped"
        );
        f.now.fetch_add(20_000, Ordering::Relaxed);
        let none = s.read("alice", N, at(6)).await.unwrap();
        assert!(none.messages.is_empty() && none.complete);
        assert_eq!(
            none.next_offset, 7,
            "offsets go on after everything expired"
        );
        assert_eq!(
            s.append("alice", N, &text("7"))
                .await
                .unwrap()
                .position
                .offset,
            7
        );
    }

    #[tokio::test]
    async fn the_byte_budget_refuses_with_the_key_and_expired_messages_make_room() {
        let f = fixture(1_000, 10_000, 10_000);
        let s = &f.store;
        let big = "x".repeat(2_000);
        let mut stored = 0;
        let error = loop {
            match s.append(&format!("u{stored}"), N, &text(&big)).await {
                Ok(_) => stored += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(
            stored, 4,
            "10,000 bytes hold four 2 KB messages and their users"
        );
        assert!(error.to_string().contains("history.max_bytes"), "{error}");
        f.now.fetch_add(11_000, Ordering::Relaxed);
        s.append("u9", N, &text(&big))
            .await
            .expect("expired messages gave their bytes back");
        assert_eq!(s.held().0, 1);
    }
}
