//! The store of user messages shared by the cluster: each user's stream, its epoch and its
//! cursors in Redis (the layout is in [`keys`]), implementing [`History`].
//!
//! A message is stored by one script that numbers it (the next offset of the user's stream),
//! appends it, and reads the user's presence in the same atomic step. The nodes the script saw
//! are the ones the message is sent to: a node that joined the user's presence before the
//! script ran is sent the message, and one that joins after it finds the message in the stream
//! when its subscription reads it (a node reads only after its presence is applied, see
//! `Backplane::settled`). No presence cache can make the two miss each other.
//!
//! A stream's epoch is made when its first message is stored (the time in µs, with the
//! node's randomness in the low digits): a stream that Redis lost (restarted without
//! persistence) or that expired gets a new one, so positions from before are never read as
//! positions in it. Entry ids are `{offset}-{ms}`, so reading from an offset is a range read
//! and each entry carries when it was stored. The stream is capped near the retention count
//! (`MAXLEN ~`, cheap) and its keys expire between one and two retention ages after the last
//! message; reads apply the exact count and age, so a message past either is never delivered.
//!
//! A topic's stream ([`RedisHistory::for_topics`]) is the same but for its key names and for
//! reading no presence: its messages reach other nodes through the topic's channel.
//!
//! The scripts that take a batch of messages (append) or cursors (advance) take one owner's
//! keys per item; on a Redis Cluster a script's keys must share a slot, so a batch is split
//! per slot and the calls for one primary go as one pipeline.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use bytes::Bytes;
use redis::Value;
use tokio::sync::{mpsc, oneshot};

use super::shards::{Lua, Routed};
use super::{keys, slots, RedisBackplane, RedisError};
use crate::broker::Content;
use crate::history::{
    Appended, Cursor, History, HistoryError, Position, ReadFrom, Replay, Retention, StartAt, Stored,
};

/// Numbers, appends and reads presence in one step, for each of a batch of messages (one
/// call for what the node's appends queued meanwhile: a script call costs Redis more than the
/// commands in it). The keys live twice the retention age, refreshed only once less than the
/// age is left (the meta hash keeps when, `x`, so no append asks for a key's expiry): every
/// message is kept at least its age, and an append seldom pays (and propagates) an expiry.
/// `ARGV`: keys per message (3 for a user: meta, stream, presence; 2 for a topic), the
/// retention count, its age and now, then per message its destination, headers, body and the
/// epoch a new stream gets. Returns per message its epoch, offset and the presence read.
const APPEND: &str = r"
local per, cap, age, now = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for i = 0, #KEYS / per - 1 do
  local meta, stream, at = KEYS[i * per + 1], KEYS[i * per + 2], 4 + i * 4
  local seen = redis.call('HMGET', meta, 'e', 'x')
  local epoch = seen[1]
  if not epoch then
    epoch = ARGV[at + 4]
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'e', epoch)
  end
  local offset = redis.call('HINCRBY', meta, 'n', 1)
  redis.call('XADD', stream, 'MAXLEN', '~', cap, offset .. '-' .. ARGV[4],
    'd', ARGV[at + 1], 'h', ARGV[at + 2], 'b', ARGV[at + 3])
  if not seen[2] or tonumber(seen[2]) < now then
    redis.call('PEXPIRE', meta, 2 * age)
    redis.call('PEXPIRE', stream, 2 * age)
    redis.call('HSET', meta, 'x', now + age)
  end
  local members = {}
  if per == 3 then members = redis.call('SMEMBERS', KEYS[i * per + 3]) end
  out[#out + 1] = {epoch, offset, members}
end
return out
";

/// Messages stored by one call of [`APPEND`].
const APPEND_BATCH: usize = 64;
/// Calls of [`APPEND`] under way at once: while they run, the next batch gathers.
const APPENDS_IN_FLIGHT: usize = 2;

/// The stream's epoch, last offset, oldest entry id, and the entries from a start id, of one
/// destination or all; from the oldest when the epoch asked for is not the stream's.
const READ: &str = r"
local meta = redis.call('HMGET', KEYS[1], 'e', 'n')
local start = ARGV[1]
if ARGV[3] ~= '' and meta[1] ~= ARGV[3] then start = '-' end
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
local out = {}
for _, entry in ipairs(redis.call('XRANGE', KEYS[2], start, '+')) do
  if ARGV[2] == '' or entry[2][2] == ARGV[2] then out[#out + 1] = entry end
end
local first_id = false
if first[1] then first_id = first[1][1] end
return {meta[1], meta[2], first_id, out}
";

/// Moves destinations' cursors (`c:{dest}`) on, each only within its stream's current epoch,
/// and records whether one crossed from a lost epoch (`l:{dest}`): one call for a round of
/// the saver. `KEYS` are the streams' meta hashes; `ARGV` per key its epoch, destination,
/// offset and crossed flag. A cursor lives in its stream's meta hash, which the stream's
/// appends keep from expiring while it holds messages, so saving one touches no expiry.
const ADVANCE: &str = r"
for i, key in ipairs(KEYS) do
  local at = (i - 1) * 4
  local epoch, dest, offset, crossed = ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4]
  local now = redis.call('HMGET', key, 'e', 'c:' .. dest, 'l:' .. dest)
  if now[1] == epoch then
    if tonumber(offset) > tonumber(now[2] or '0') then
      redis.call('HSET', key, 'c:' .. dest, offset)
    end
    if crossed == '1' then
      if not now[3] then redis.call('HSET', key, 'l:' .. dest, '1') end
    elseif now[3] then
      redis.call('HDEL', key, 'l:' .. dest)
    end
  end
end
return 1
";

/// Cursors saved by one call of [`ADVANCE`].
const ADVANCE_BATCH: usize = 128;

/// Puts a destination's cursor back, only if it still stands where this node saved it.
const REWIND: &str = r"
if redis.call('HGET', KEYS[1], 'e') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'c:' .. ARGV[2]) ~= ARGV[3] then return 0 end
if ARGV[4] == '0' then
  redis.call('HDEL', KEYS[1], 'c:' .. ARGV[2])
else
  redis.call('HSET', KEYS[1], 'c:' .. ARGV[2], ARGV[4])
end
return 1
";

static APPEND_SCRIPT: LazyLock<Lua> = LazyLock::new(|| Lua::new(APPEND));
static READ_SCRIPT: LazyLock<Lua> = LazyLock::new(|| Lua::new(READ));
static ADVANCE_SCRIPT: LazyLock<Lua> = LazyLock::new(|| Lua::new(ADVANCE));
static REWIND_SCRIPT: LazyLock<Lua> = LazyLock::new(|| Lua::new(REWIND));

/// One tenant's user streams in Redis, or the streams of its topics with history.
#[derive(Debug)]
pub struct RedisHistory {
    backplane: Arc<RedisBackplane>,
    tenant: String,
    retention: Retention,
    /// Streams of topics (named by the topic, no presence), not of users.
    topics: bool,
    /// Where appends queue for the task that stores them in batches (started by the first).
    appends: std::sync::OnceLock<mpsc::UnboundedSender<Append>>,
}

/// A message on its way into a stream, and where its place (and the presence read with it)
/// goes.
#[derive(Debug)]
struct Append {
    keys: [String; 3],
    dest: String,
    headers: String,
    body: Bytes,
    new_epoch: u64,
    stored: oneshot::Sender<Result<(Position, Vec<String>), HistoryError>>,
}

/// What the batching task needs of its store.
#[derive(Debug, Clone)]
struct Appender {
    backplane: Arc<RedisBackplane>,
    retention: Retention,
    topics: bool,
}

impl Appender {
    /// Stores what queues, a batch per call, up to [`APPENDS_IN_FLIGHT`] calls at once, until
    /// the store is gone. One stream's messages are never in two calls at once: its tenant
    /// holds the stream's turn until an append is answered.
    async fn run(self, mut queued: mpsc::UnboundedReceiver<Append>) {
        let mut calls = futures_util::stream::FuturesUnordered::new();
        let mut open = true;
        loop {
            let mut batch = Vec::with_capacity(APPEND_BATCH);
            tokio::select! {
                n = queued.recv_many(&mut batch, APPEND_BATCH), if open && calls.len() < APPENDS_IN_FLIGHT => {
                    if n == 0 {
                        open = false;
                    } else {
                        calls.push(self.clone().store(batch));
                    }
                }
                Some(()) = futures_util::StreamExt::next(&mut calls), if !calls.is_empty() => {}
                else => return,
            }
        }
    }

    async fn store(self, batch: Vec<Append>) {
        let outcomes = self.call(&batch).await;
        for (append, outcome) in batch.into_iter().zip(outcomes) {
            let _ = append.stored.send(outcome);
        }
    }

    /// Per message of `batch`, where it was placed and the presence read with it (or why it
    /// was not stored): one script call per group of messages that may share one.
    async fn call(&self, batch: &[Append]) -> Vec<Placed> {
        let per = if self.topics { 2 } else { 3 };
        let now_ms = crate::util::unix_ms();
        let slots: Vec<u16> = batch
            .iter()
            .map(|a| slots::slot(a.keys[0].as_bytes()))
            .collect();
        let build = |group: &[usize]| {
            let mut call = APPEND_SCRIPT.call();
            call.arg(per)
                .arg(self.retention.max_messages)
                .arg(self.retention.max_age_ms)
                .arg(now_ms);
            for &i in group {
                let append = &batch[i];
                for key in &append.keys[..per] {
                    call.key(key);
                }
                call.arg(&append.dest)
                    .arg(&append.headers)
                    .arg(append.body.as_ref())
                    .arg(append.new_epoch);
            }
            call.routed()
        };
        batched(&self.backplane, &slots, build, "append", placement).await
    }
}

/// Where one message was placed and the presence read with it, or why it was not stored.
type Placed = Result<(Position, Vec<String>), HistoryError>;

/// One message's part of an [`APPEND`] answer: `[epoch, offset, presence]`.
fn placement(one: Value) -> Result<(Position, Vec<String>), HistoryError> {
    let Value::Array(parts) = one else {
        return Err(malformed("append"));
    };
    let [epoch, offset, members] =
        <[Value; 3]>::try_from(parts).map_err(|_| malformed("append"))?;
    let position = Position {
        epoch: number(&epoch).ok_or_else(|| malformed("epoch"))?,
        offset: number(&offset).ok_or_else(|| malformed("offset"))?,
    };
    let members = match members {
        Value::Array(m) | Value::Set(m) => m.iter().filter_map(text).collect(),
        _ => Vec::new(),
    };
    Ok((position, members))
}

/// Stores a batch with one script call per group of items that may share one (all together
/// on a single Redis, per slot on a cluster; `slots` has each item's), each call made by
/// `build` from its items' positions and confirmed by replicas as the settings ask; per item,
/// what `parse` reads from its part of its call's answer (a list, one element per item), or
/// why its call failed.
pub(super) async fn batched<T>(
    backplane: &RedisBackplane,
    slots: &[u16],
    build: impl Fn(&[usize]) -> Routed,
    what: &str,
    parse: impl Fn(Value) -> Result<T, HistoryError>,
) -> Vec<Result<T, HistoryError>> {
    let shards = &backplane.shards;
    let settings = &backplane.settings;
    let groups = shards.script_groups(slots);
    let calls = groups.iter().map(|group| build(group)).collect();
    let replies = shards
        .run_confirmed(calls, settings.replica_acks, settings.replica_ack_timeout)
        .await;
    let mut each: Vec<Option<Result<T, HistoryError>>> = (0..slots.len()).map(|_| None).collect();
    for (group, reply) in groups.iter().zip(replies) {
        let answers = reply.map_err(store_error).and_then(|value| match value {
            Value::Array(answers) if answers.len() == group.len() => Ok(answers),
            _ => Err(malformed(what)),
        });
        match answers {
            Ok(answers) => {
                for (&i, answer) in group.iter().zip(answers) {
                    each[i] = Some(parse(answer));
                }
            }
            Err(e) => {
                for &i in group {
                    each[i] = Some(Err(e.clone()));
                }
            }
        }
    }
    each.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(malformed(what))))
        .collect()
}

/// What the read script gave.
struct Read {
    epoch: Option<u64>,
    last: u64,
    first_offset: Option<u64>,
    entries: Vec<Stored>,
}

impl RedisHistory {
    /// The store of `tenant`'s user messages, kept as `retention` says, through `backplane`'s
    /// connection.
    pub fn new(backplane: Arc<RedisBackplane>, tenant: &str, retention: Retention) -> RedisHistory {
        RedisHistory {
            backplane,
            tenant: tenant.to_string(),
            retention,
            topics: false,
            appends: std::sync::OnceLock::new(),
        }
    }

    /// The store of `tenant`'s topics with history that `retention` keeps: one stream per
    /// topic, named by it, whose appends read no presence (a topic message reaches other
    /// nodes through the topic's channel).
    pub fn for_topics(
        backplane: Arc<RedisBackplane>,
        tenant: &str,
        retention: Retention,
    ) -> RedisHistory {
        RedisHistory {
            topics: true,
            ..RedisHistory::new(backplane, tenant, retention)
        }
    }

    /// The meta hash of the stream `owner` (a user, or a topic).
    fn meta(&self, owner: &str) -> String {
        if self.topics {
            keys::topic_meta(&self.tenant, owner)
        } else {
            keys::user_meta(&self.tenant, owner)
        }
    }

    /// The stream of `owner`.
    fn stream(&self, owner: &str) -> String {
        if self.topics {
            keys::topic_stream(&self.tenant, owner)
        } else {
            keys::user_stream(&self.tenant, owner)
        }
    }

    /// Runs one command or script call.
    async fn one<T: redis::FromRedisValue>(&self, routed: Routed) -> Result<T, HistoryError> {
        self.backplane.shards.one(routed).await.map_err(store_error)
    }

    /// The oldest offset a read may give: the retention count counted back from the last.
    fn count_floor(&self, last: u64) -> u64 {
        (last + 1)
            .saturating_sub(self.retention.max_messages as u64)
            .max(1)
    }

    async fn run_read(
        &self,
        user: &str,
        start: &str,
        dest: &str,
        epoch: Option<u64>,
    ) -> Result<Read, HistoryError> {
        let mut call = READ_SCRIPT.call();
        call.key(self.meta(user))
            .key(self.stream(user))
            .arg(start)
            .arg(dest)
            .arg(epoch.map(|e| e.to_string()).unwrap_or_default());
        let value: Value = self.one(call.routed()).await?;
        let Value::Array(parts) = value else {
            return Err(malformed("read"));
        };
        let [epoch, last, first, entries] =
            <[Value; 4]>::try_from(parts).map_err(|_| malformed("read"))?;
        let Value::Array(entries) = entries else {
            return Err(malformed("read entries"));
        };
        Ok(Read {
            epoch: number(&epoch),
            last: number(&last).unwrap_or(0),
            first_offset: text(&first).and_then(|id| parse_id(&id)).map(|(o, _)| o),
            entries: entries
                .into_iter()
                .map(|e| entry(e, epoch_or_zero(&epoch)))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| malformed("entry"))?,
        })
    }

    /// Whether Redis was found to have lost its data within the retention's age: a user with
    /// no cursor may then have lost messages, and is told so.
    async fn lost_recently(&self) -> Result<bool, HistoryError> {
        let mut get = redis::cmd("GET");
        get.arg(keys::HISTORY_LOST);
        let lost: Option<u64> = self.one(Routed::key(keys::HISTORY_LOST, get)).await?;
        Ok(lost.is_some_and(|at| {
            crate::util::unix_ms().saturating_sub(at) < self.retention.max_age_ms
        }))
    }

    /// Applies the exact retention to what was read: the messages still kept (oldest first),
    /// and whether any after `start` was dropped by it.
    fn kept(&self, read: &Read, start: u64) -> (Vec<Stored>, bool) {
        let floor = self.count_floor(read.last);
        let cutoff = crate::util::unix_ms().saturating_sub(self.retention.max_age_ms);
        let mut dropped = false;
        let mut kept = Vec::with_capacity(read.entries.len());
        for stored in &read.entries {
            if stored.position.offset < start {
                continue;
            }
            if stored.position.offset < floor || stored.stored_at_ms < cutoff {
                dropped = true;
                continue;
            }
            kept.push(stored.clone());
        }
        (kept, dropped)
    }

    /// The oldest offset still kept: every offset below it was handed out and is gone.
    fn low(&self, read: &Read) -> u64 {
        let physical = read.first_offset.unwrap_or(read.last + 1);
        physical.max(self.count_floor(read.last))
    }
}

#[async_trait]
impl History for RedisHistory {
    async fn append(
        &self,
        user: &str,
        dest: &str,
        content: &Content,
    ) -> Result<Appended, HistoryError> {
        let presence = keys::presence(&self.tenant, user);
        let headers = serde_json::to_string(&content.headers)
            .map_err(|e| HistoryError::Unavailable(e.to_string()))?;
        let now_ms = crate::util::unix_ms();
        let (stored, placed) = oneshot::channel();
        let append = Append {
            keys: [self.meta(user), self.stream(user), presence.clone()],
            dest: dest.to_string(),
            headers,
            body: content.body.clone(),
            // Distinct from any epoch this user's stream had before, even within one ms.
            new_epoch: now_ms * 1000 + crate::util::random_u64() % 1000,
            stored,
        };
        self.appends
            .get_or_init(|| {
                let (queue, queued) = mpsc::unbounded_channel();
                let appender = Appender {
                    backplane: self.backplane.clone(),
                    retention: self.retention,
                    topics: self.topics,
                };
                tokio::spawn(appender.run(queued));
                queue
            })
            .send(append)
            .map_err(|_| HistoryError::Unavailable("the store is shutting down".into()))?;
        let (position, members) = placed
            .await
            .map_err(|_| HistoryError::Unavailable("the store is shutting down".into()))??;
        if self.topics {
            return Ok(Appended {
                position,
                holders: None,
            });
        }
        let holders = self
            .backplane
            .only_live_others(&presence, members)
            .await
            .map_err(unavailable)?;
        Ok(Appended {
            position,
            holders: Some(holders),
        })
    }

    async fn read(&self, user: &str, dest: &str, from: ReadFrom) -> Result<Replay, HistoryError> {
        let (start_id, epoch) = match from {
            ReadFrom::After(p) => (format!("{}-0", p.offset.saturating_add(1)), Some(p.epoch)),
            ReadFrom::StartAt(StartAt::Offset(n)) => (format!("{}-0", n.max(1)), None),
            ReadFrom::StartAt(StartAt::Next) => ("+".to_string(), None),
            ReadFrom::StartAt(_) => ("-".to_string(), None),
        };
        let read = self.run_read(user, &start_id, dest, epoch).await?;
        let now_epoch = read.epoch.unwrap_or(0);
        let next_offset = read.last + 1;
        let low = self.low(&read);
        let (start, mut complete) = match from {
            ReadFrom::After(p) if read.epoch != Some(p.epoch) => (low, false),
            ReadFrom::After(p) => {
                let start = p.offset.saturating_add(1).min(next_offset);
                (start, start >= low)
            }
            ReadFrom::StartAt(StartAt::First) => (low, true),
            ReadFrom::StartAt(StartAt::Next) => (next_offset, true),
            ReadFrom::StartAt(StartAt::Last) => {
                let (kept, _) = self.kept(&read, low);
                let last = kept.last().map_or(next_offset, |s| s.position.offset);
                (last, true)
            }
            ReadFrom::StartAt(StartAt::Offset(n)) => {
                let start = n.max(1).min(next_offset);
                (start, start >= low)
            }
            ReadFrom::StartAt(StartAt::Timestamp(secs)) => {
                let at_ms = secs.saturating_mul(1000);
                let (kept, _) = self.kept(&read, low);
                let start = kept
                    .iter()
                    .find(|s| s.stored_at_ms >= at_ms)
                    .map_or(next_offset, |s| s.position.offset);
                let first_ms = kept.first().map_or(u64::MAX, |s| s.stored_at_ms);
                (start, low <= 1 || first_ms <= at_ms)
            }
        };
        let (messages, dropped) = self.kept(&read, start);
        complete &= !dropped;
        Ok(Replay {
            epoch: now_epoch,
            messages,
            complete,
            next_offset,
        })
    }

    async fn since(&self, user: &str, after: Position) -> Result<Replay, HistoryError> {
        let start_id = format!("{}-0", after.offset.saturating_add(1));
        let read = self
            .run_read(user, &start_id, "", Some(after.epoch))
            .await?;
        let low = self.low(&read);
        let same_epoch = read.epoch == Some(after.epoch);
        let start = if same_epoch {
            after.offset.saturating_add(1)
        } else {
            low
        };
        let (messages, dropped) = self.kept(&read, start);
        Ok(Replay {
            epoch: read.epoch.unwrap_or(0),
            messages,
            complete: same_epoch && start >= low && !dropped,
            next_offset: read.last + 1,
        })
    }

    async fn head(&self, user: &str) -> Result<Position, HistoryError> {
        let meta = self.meta(user);
        let mut hmget = redis::cmd("HMGET");
        hmget.arg(&meta).arg("e").arg("n");
        let (epoch, last): (Option<u64>, Option<u64>) = self.one(Routed::key(&meta, hmget)).await?;
        // No stream yet: epoch 0, which the first message's epoch replaces.
        Ok(Position {
            epoch: epoch.unwrap_or(0),
            offset: last.unwrap_or(0) + 1,
        })
    }

    async fn advance(&self, user: &str, dest: &str, cursor: Cursor) -> Result<(), HistoryError> {
        self.advance_many(&[(user.to_string(), dest.to_string(), cursor)])
            .await
    }

    async fn advance_many(&self, cursors: &[(String, String, Cursor)]) -> Result<(), HistoryError> {
        let metas: Vec<String> = cursors.iter().map(|(user, _, _)| self.meta(user)).collect();
        let slots: Vec<u16> = metas.iter().map(|m| slots::slot(m.as_bytes())).collect();
        let mut calls = Vec::new();
        for group in self.backplane.shards.script_groups(&slots) {
            for chunk in group.chunks(ADVANCE_BATCH) {
                let mut call = ADVANCE_SCRIPT.call();
                for &i in chunk {
                    let (_, dest, cursor) = &cursors[i];
                    call.key(&metas[i])
                        .arg(cursor.position.epoch)
                        .arg(dest)
                        .arg(cursor.position.offset)
                        .arg(if cursor.crossed { "1" } else { "0" });
                }
                calls.push(call.routed());
            }
        }
        for reply in self.backplane.shards.run(calls).await {
            reply.map_err(store_error)?;
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
        let mut call = REWIND_SCRIPT.call();
        call.key(self.meta(user))
            .arg(epoch)
            .arg(dest)
            .arg(saved)
            .arg(to);
        let _: i64 = self.one(call.routed()).await?;
        Ok(())
    }

    async fn cursor(&self, user: &str, dest: &str) -> Result<Option<Cursor>, HistoryError> {
        let meta = self.meta(user);
        let mut hmget = redis::cmd("HMGET");
        hmget
            .arg(&meta)
            .arg("e")
            .arg(format!("c:{dest}"))
            .arg(format!("l:{dest}"));
        let (epoch, offset, crossed): (Option<u64>, Option<u64>, Option<String>) =
            self.one(Routed::key(&meta, hmget)).await?;
        Ok(match (epoch, offset) {
            (Some(epoch), Some(offset)) => Some(Cursor {
                position: Position { epoch, offset },
                crossed: crossed.is_some(),
            }),
            _ => None,
        })
    }

    async fn no_cursor_complete(&self) -> Result<bool, HistoryError> {
        Ok(!self.lost_recently().await?)
    }

    fn shared(&self) -> bool {
        true
    }
}

fn unavailable(e: RedisError) -> HistoryError {
    HistoryError::Unavailable(e.to_string())
}

/// What a failed store command means for the message: Redis full, not known whether it
/// was stored (no answer in time), or not stored.
pub(super) fn store_error(e: RedisError) -> HistoryError {
    let RedisError::Command(e) = e else {
        return unavailable(e);
    };
    if e.code() == Some("OOM") {
        return HistoryError::Full(format!(
            "Redis is at its maxmemory and refuses writes ({e})"
        ));
    }
    if e.is_timeout() {
        return HistoryError::Unavailable(format!(
            "Redis did not answer within 2 s, so whether the message was stored is not known ({e})"
        ));
    }
    HistoryError::Unavailable(e.to_string())
}

pub(super) fn malformed(what: &str) -> HistoryError {
    HistoryError::Unavailable(format!("unexpected answer from Redis ({what})"))
}

pub(super) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn number(value: &Value) -> Option<u64> {
    match value {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => text(other)?.parse().ok(),
    }
}

fn epoch_or_zero(value: &Value) -> u64 {
    number(value).unwrap_or(0)
}

/// The offset and time of an entry id `{offset}-{ms}`.
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (offset, ms) = id.split_once('-')?;
    Some((offset.parse().ok()?, ms.parse().ok()?))
}

/// One stream entry `[id, [field, value, ...]]` as its id, its destination (`d`, absent in a
/// queue's entries) and its content (`h`: headers as JSON, `b`: body).
pub(super) fn stream_entry(value: Value) -> Option<(String, Option<String>, Content)> {
    let Value::Array(parts) = value else {
        return None;
    };
    let [id, fields] = <[Value; 2]>::try_from(parts).ok()?;
    let Value::Array(fields) = fields else {
        return None;
    };
    let (mut dest, mut headers, mut body) = (None, Vec::new(), Bytes::new());
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        match text(&name)?.as_str() {
            "d" => dest = text(&value),
            "h" => headers = serde_json::from_str(&text(&value)?).ok()?,
            "b" => {
                if let Value::BulkString(b) = value {
                    body = Bytes::from(b);
                }
            }
            _ => {}
        }
    }
    Some((text(&id)?, dest, Content { headers, body }))
}

/// One entry of a user's or topic's stream: `[id, [d, dest, h, headers, b, body]]`.
fn entry(value: Value, epoch: u64) -> Option<Stored> {
    let (id, dest, content) = stream_entry(value)?;
    let (offset, stored_at_ms) = parse_id(&id)?;
    Some(Stored {
        position: Position { epoch, offset },
        dest: dest?,
        content,
        stored_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_read_back_with_their_place_time_and_content() {
        let value = Value::Array(vec![
            Value::BulkString(b"12-1700000000123".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"d".to_vec()),
                Value::BulkString(b"/queue/a".to_vec()),
                Value::BulkString(b"h".to_vec()),
                Value::BulkString(br#"[["x-kind","order"]]"#.to_vec()),
                Value::BulkString(b"b".to_vec()),
                Value::BulkString(vec![0, 159, 1]),
            ]),
        ]);
        let stored = entry(value, 9).unwrap();
        assert_eq!(
            stored.position,
            Position {
                epoch: 9,
                offset: 12
            }
        );
        assert_eq!(stored.stored_at_ms, 1_700_000_000_123);
        assert_eq!(stored.dest, "/queue/a");
        assert_eq!(
            stored.content.headers,
            [("x-kind".to_string(), "order".to_string())]
        );
        assert_eq!(&stored.content.body[..], &[0, 159, 1]);
        assert_eq!(parse_id("bad"), None);
    }
}
