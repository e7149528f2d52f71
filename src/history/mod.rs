//! What a tenant keeps of the messages it accepted for its users, so that none is lost to a
//! reconnect, a node's death or the moment between a CONNECT and its SUBSCRIBE: one stream per
//! user, numbered without gaps, kept within the tenant's retention (a count, an age and a size),
//! and per user and destination a cursor, how far delivery got.
//!
//! A topic with history (`[[tenants.topic_history]]`) is kept by the same trait in a store of
//! its own per prefix: the stream's owner is the topic and its one destination the topic
//! itself; no cursor is kept (a topic's subscribers name their own start).
//!
//! Behind one trait, [`History`], like the backplane: [`memory::MemoryHistory`] keeps streams in
//! this process (one node alone; what a restart loses is what it held, and the new process
//! starts a new epoch, so that no position from before is read as one after). A store kept in
//! Redis implements the same trait.
//!
//! Positions are an epoch and an offset. Offsets count from 1 in each epoch; an epoch changes
//! whenever the store may have lost what it held, and a position from another epoch is never
//! read as a position in this one: reading after it says the history is not complete.

pub mod memory;
pub mod order;
pub mod queue;

use async_trait::async_trait;

use crate::broker::Content;

pub use crate::broker::Position;

/// A message as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Where it is in the user's stream.
    pub position: Position,
    /// The destination it was sent to, as the user subscribes to it (`/queue/notice`).
    pub dest: String,
    /// Its headers and body.
    pub content: Content,
    /// When it was stored, in ms since the Unix epoch.
    pub stored_at_ms: u64,
}

/// Where a subscription asks its stream to start: the values of RabbitMQ's `x-stream-offset`
/// SUBSCRIBE header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Everything the stream still holds.
    First,
    /// The last message it holds, then what follows.
    Last,
    /// Only what is stored from now on.
    Next,
    /// From this offset on (inclusive), so `offset=N+1` resumes after offset N.
    Offset(u64),
    /// From the first message stored at or after this time, in seconds since the Unix epoch.
    Timestamp(u64),
}

/// The forms `x-stream-offset` takes, for error messages.
pub const START_AT_FORMS: &str = "first, last, next, offset=N or timestamp=SECONDS";

/// An `x-stream-offset` value that is none of its forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("x-stream-offset must be one of {START_AT_FORMS}, got '{0}'")]
pub struct InvalidStartAt(pub String);

impl StartAt {
    /// Parses an `x-stream-offset` value.
    pub fn parse(value: &str) -> Result<StartAt, InvalidStartAt> {
        let invalid = || InvalidStartAt(value.to_string());
        let number = |digits: &str| -> Result<u64, InvalidStartAt> {
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            digits.parse().map_err(|_| invalid())
        };
        match value.trim() {
            "first" => Ok(StartAt::First),
            "last" => Ok(StartAt::Last),
            "next" => Ok(StartAt::Next),
            other => {
                if let Some(n) = other.strip_prefix("offset=") {
                    Ok(StartAt::Offset(number(n)?))
                } else if let Some(t) = other.strip_prefix("timestamp=") {
                    Ok(StartAt::Timestamp(number(t)?))
                } else {
                    Err(invalid())
                }
            }
        }
    }
}

/// What reading a user's stream for one destination gave.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Replay {
    /// The stream's epoch now.
    pub epoch: u64,
    /// The messages for the destination, oldest first.
    pub messages: Vec<Stored>,
    /// True when everything asked for was there: false when retention had already dropped
    /// some of it, or the position asked from was of another epoch (the store lost what it
    /// held since).
    pub complete: bool,
    /// The offset the stream's next message will get: live messages from here on follow.
    pub next_offset: u64,
}

/// How long a tenant keeps its users' messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Messages kept per user; older ones are dropped first.
    pub max_messages: usize,
    /// How long a message is kept, in ms.
    pub max_age_ms: u64,
}

/// Why the store did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// It holds as many bytes as it may.
    #[error("the message store is full ({0})")]
    Full(String),
    /// It could not be reached or did not answer in time.
    #[error("the message store is unavailable: {0}")]
    Unavailable(String),
}

/// A message just stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Where it is in the user's stream.
    pub position: Position,
    /// For a store shared by the cluster: the other live nodes holding sessions of the user
    /// when the message was stored, read in the same step, so that a node whose user
    /// subscribes later finds the message in the stream and one that held the user already is
    /// sent it. `None` for a store of one node.
    pub holders: Option<Vec<String>>,
}

/// One tenant's store of its users' messages and cursors.
#[async_trait]
pub trait History: Send + Sync + std::fmt::Debug {
    /// Stores a message for `user` at `dest`; its position, once it is stored.
    async fn append(
        &self,
        user: &str,
        dest: &str,
        content: &Content,
    ) -> Result<Appended, HistoryError>;

    /// The messages for `user` at `dest` from where `start` says, and whether that was all.
    async fn read(&self, user: &str, dest: &str, start: ReadFrom) -> Result<Replay, HistoryError>;

    /// Every message of `user`'s stream after `after`, whatever its destination (to fill a gap
    /// in what reached this node); from the oldest kept when `after` is of another epoch.
    async fn since(&self, user: &str, after: Position) -> Result<Replay, HistoryError>;

    /// The stream's epoch and the offset its next message will get.
    async fn head(&self, user: &str) -> Result<Position, HistoryError>;

    /// Records that delivery of `user`'s `dest` got to `cursor` (a cursor only moves on).
    async fn advance(&self, user: &str, dest: &str, cursor: Cursor) -> Result<(), HistoryError>;

    /// [`History::advance`] for many cursors (user, destination, cursor) at once.
    async fn advance_many(&self, cursors: &[(String, String, Cursor)]) -> Result<(), HistoryError> {
        for (user, dest, cursor) in cursors {
            self.advance(user, dest, *cursor).await?;
        }
        Ok(())
    }

    /// Puts `user`'s `dest` cursor back to `to` (0: no cursor) if it still stands at `saved`
    /// in `epoch`: a connection that ended had its last frames saved as delivered (in case
    /// its node died) and, its node alive, found they never counted. Nothing changes when
    /// another session moved the cursor meanwhile.
    async fn rewind(
        &self,
        user: &str,
        dest: &str,
        epoch: u64,
        saved: u64,
        to: u64,
    ) -> Result<(), HistoryError>;

    /// How far delivery of `user`'s `dest` got, if it ever began.
    async fn cursor(&self, user: &str, dest: &str) -> Result<Option<Cursor>, HistoryError>;

    /// Whether a user with no cursor can be told nothing was lost: false while the store may
    /// have lost messages within the retention (Redis found restarted without its data).
    async fn no_cursor_complete(&self) -> Result<bool, HistoryError> {
        Ok(true)
    }

    /// True when other nodes write to it too: their messages for this node's users then come
    /// in over the cluster, in any order between nodes, and each node puts them back in order
    /// (see [`order`]).
    fn shared(&self) -> bool {
        false
    }
}

/// How far delivery of one user's destination got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The last message delivered (auto) or acknowledged (client modes).
    pub position: Position,
    /// Delivery went on into this epoch from an earlier one the store lost: what the old epoch
    /// held undelivered is gone, so the next subscription is told its history is not complete.
    pub crossed: bool,
}

impl Cursor {
    /// Where a subscription's cursor stands, to be saved; `None` before it delivered anything.
    pub fn of(cursor: &crate::broker::cursor::StreamCursor) -> Option<Cursor> {
        Some(Cursor {
            position: cursor.position()?,
            crossed: cursor.crossed,
        })
    }
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// After this position (a cursor, or the last position a client saw).
    After(Position),
    /// Where the client's `x-stream-offset` says, in the current epoch.
    StartAt(StartAt),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x_stream_offset_takes_rabbitmqs_forms() {
        assert_eq!(StartAt::parse("first"), Ok(StartAt::First));
        assert_eq!(StartAt::parse("last"), Ok(StartAt::Last));
        assert_eq!(StartAt::parse(" next "), Ok(StartAt::Next));
        assert_eq!(StartAt::parse("offset=42"), Ok(StartAt::Offset(42)));
        assert_eq!(
            StartAt::parse("timestamp=1700000000"),
            Ok(StartAt::Timestamp(1_700_000_000))
        );
        for bad in [
            "",
            "offset=",
            "offset=-1",
            "offset=1.5",
            "offset=99999999999999999999999",
            "timestamp=now",
            "FIRST",
            "5",
        ] {
            let error = StartAt::parse(bad).unwrap_err();
            assert!(error.to_string().contains(START_AT_FORMS), "{error}");
        }
    }
}
