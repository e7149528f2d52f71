//! Durable queues in Redis, implementing [`QueueStore`]: one stream per queue
//! (`sb:{tenant:queue}:queue`) with one consumer group in which every node is a consumer, so
//! Redis itself records which node holds which entry until it is acknowledged.
//!
//! A push is one script: it appends the entry (refusing past the queue's limit) and reads the
//! queue's consumer nodes in the same step; those nodes are told through their inbox that the
//! queue has entries and read them with `XREADGROUP`, each only as many as its consumers can
//! take soon, so an entry waits in Redis, not in a node, until a consumer has room. An entry
//! is acknowledged and deleted in one pipeline per round of acknowledgements. A node that dies
//! leaves its entries pending under its name; a node with consumers of the queue claims the
//! entries of consumers that are not live nodes (`XPENDING` then `XCLAIM`) and delivers them
//! again as `redelivered`. A consumer is named by its node and its process's start, so a
//! node restarted under its id claims what its earlier run held instead of leaving it
//! pending for ever.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use bytes::Bytes;
use redis::Value;
use tokio::sync::{mpsc, oneshot};

use super::shards::{Lua, Routed};
use super::store::{batched, malformed, store_error, stream_entry, text};
use super::{keys, slots, RedisBackplane};
use crate::broker::Content;
use crate::cluster::{Envelope, Kind};
use crate::history::queue::{Entry, QueueStore};
use crate::history::HistoryError;

/// For each of a batch of messages (`KEYS`: its queue's stream and consumer set; `ARGV`: the
/// limit, then its headers and body): appends it unless the queue holds its limit, and reads
/// the queue's consumer nodes; `{1, nodes}` or `{0}` (full) per message. A stream's group is
/// made with it, at its end: every entry is new to the group.
const PUSH: &str = r"
local out = {}
for i = 0, #KEYS / 2 - 1 do
  local stream, consumers = KEYS[2 * i + 1], KEYS[2 * i + 2]
  local full = false
  if redis.call('EXISTS', stream) == 0 then
    redis.call('XGROUP', 'CREATE', stream, 'g', '$', 'MKSTREAM')
  elseif redis.call('XLEN', stream) >= tonumber(ARGV[1]) then
    full = true
  end
  if full then
    out[#out + 1] = {0}
  else
    redis.call('XADD', stream, '*', 'h', ARGV[2 * i + 2], 'b', ARGV[2 * i + 3])
    out[#out + 1] = {1, redis.call('SMEMBERS', consumers)}
  end
end
return out
";

/// Messages stored by one call of [`PUSH`].
const PUSH_BATCH: usize = 64;

/// Up to ARGV[2] entries no node took yet, for node ARGV[1].
const TAKE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local read = redis.call('XREADGROUP', 'GROUP', 'g', ARGV[1], 'COUNT', ARGV[2], 'STREAMS', KEYS[1], '>')
if not read then return {} end
return read[1][2]
";

/// Up to ARGV[2] entries held by consumers of no live process, now consumer ARGV[1]'s (this
/// process, `{node}#{start}`; ARGV[3] is its node, ARGV[4..] the live nodes). A consumer is
/// live when its node is, unless its node is this one: then it is an earlier run of it.
const CLAIM: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local summary = redis.call('XPENDING', KEYS[1], 'g')
if not summary[4] then return {} end
local live = {}
for i = 4, #ARGV do live[ARGV[i]] = true end
local want = tonumber(ARGV[2])
local out = {}
for _, holder in ipairs(summary[4]) do
  if #out >= want then break end
  local node = string.match(holder[1], '^(.*)#[^#]*$')
  local gone = not node or not live[node] or node == ARGV[3]
  if gone and holder[1] ~= ARGV[1] then
    local pending = redis.call('XPENDING', KEYS[1], 'g', '-', '+', want - #out, holder[1])
    local ids = {}
    for _, p in ipairs(pending) do ids[#ids + 1] = p[1] end
    if #ids > 0 then
      for _, entry in ipairs(redis.call('XCLAIM', KEYS[1], 'g', ARGV[1], 0, unpack(ids))) do
        if entry then out[#out + 1] = entry end
      end
    end
  end
end
return out
";

static PUSH_SCRIPT: LazyLock<Lua> = LazyLock::new(|| Lua::new(PUSH));
static TAKE_SCRIPT: LazyLock<Lua> = LazyLock::new(|| Lua::new(TAKE));
static CLAIM_SCRIPT: LazyLock<Lua> = LazyLock::new(|| Lua::new(CLAIM));

/// A message on its way into its queue, and where the number of nodes told goes.
#[derive(Debug)]
struct Push {
    dest: String,
    headers: String,
    body: Bytes,
    pushed: oneshot::Sender<Result<usize, HistoryError>>,
}

/// One tenant's durable queues in Redis.
#[derive(Debug)]
pub struct RedisQueues {
    backplane: Arc<RedisBackplane>,
    tenant: String,
    /// Entries one queue may hold (`server.max_queue_backlog`).
    max_messages: usize,
    /// This process's consumer name in every queue's group: `{node}#{start, ms}`, so that a
    /// node restarted under its id claims what its earlier run held.
    consumer: String,
    /// Where pushes queue for the task that stores them (started by the first).
    pushes: std::sync::OnceLock<mpsc::UnboundedSender<Push>>,
}

impl RedisQueues {
    /// `tenant`'s queues through `backplane`'s connection, each holding at most
    /// `max_messages` entries.
    pub fn new(backplane: Arc<RedisBackplane>, tenant: &str, max_messages: usize) -> RedisQueues {
        RedisQueues {
            consumer: format!("{}#{}", backplane.settings.node_id, process_start_ms()),
            backplane,
            tenant: tenant.to_string(),
            max_messages,
            pushes: std::sync::OnceLock::new(),
        }
    }

    /// Runs one command or script call.
    async fn one<T: redis::FromRedisValue>(&self, routed: Routed) -> Result<T, HistoryError> {
        self.backplane.shards.one(routed).await.map_err(store_error)
    }

    /// Runs commands (one pipeline per primary); the first failure, if any.
    async fn all(&self, commands: Vec<Routed>) -> Result<(), HistoryError> {
        for reply in self.backplane.shards.run(commands).await {
            reply.map_err(store_error)?;
        }
        Ok(())
    }

    fn node(&self) -> &str {
        &self.backplane.settings.node_id
    }

    fn pusher(&self) -> Pusher {
        Pusher {
            backplane: self.backplane.clone(),
            tenant: self.tenant.clone(),
            max_messages: self.max_messages,
        }
    }
}

/// What the pushing task needs of its store.
struct Pusher {
    backplane: Arc<RedisBackplane>,
    tenant: String,
    max_messages: usize,
}

impl Pusher {
    /// Stores what queues, one batch per call and one call at a time (so a queue's entries
    /// are in the order they were pushed), until the store is gone.
    async fn run(self, mut queued: mpsc::UnboundedReceiver<Push>) {
        let mut batch = Vec::with_capacity(PUSH_BATCH);
        while queued.recv_many(&mut batch, PUSH_BATCH).await > 0 {
            let outcomes = self.store(&batch).await;
            for (push, outcome) in batch.drain(..).zip(outcomes) {
                let _ = push.pushed.send(outcome);
            }
        }
    }

    /// One call per group of `batch` that may share one (all together on a single Redis, per
    /// queue's slot on a cluster), then one notice per queue and consumer node: per message,
    /// the nodes told, or why it was refused.
    async fn store(&self, batch: &[Push]) -> Vec<Result<usize, HistoryError>> {
        let streams: Vec<String> = batch
            .iter()
            .map(|p| keys::queue_stream(&self.tenant, &p.dest))
            .collect();
        let slots: Vec<u16> = streams.iter().map(|k| slots::slot(k.as_bytes())).collect();
        let build = |group: &[usize]| {
            let mut call = PUSH_SCRIPT.call();
            call.arg(self.max_messages);
            for &i in group {
                call.key(&streams[i])
                    .key(keys::consumers(&self.tenant, &batch[i].dest))
                    .arg(&batch[i].headers)
                    .arg(batch[i].body.as_ref());
            }
            call.routed()
        };
        let outcomes = batched(&self.backplane, &slots, build, "push", pushed).await;
        // Per queue of the batch: the live other nodes with consumers, told once.
        let mut told: Vec<(&str, usize)> = Vec::new();
        let mut results = Vec::with_capacity(batch.len());
        for (push, outcome) in batch.iter().zip(outcomes) {
            let members = match outcome {
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
                Ok(None) => {
                    results.push(Err(HistoryError::Full(format!(
                        "queue '{}' holds its limit of {} messages (server.max_queue_backlog)",
                        push.dest, self.max_messages
                    ))));
                    continue;
                }
                Ok(Some(members)) => members,
            };
            if let Some((_, nodes)) = told.iter().find(|(dest, _)| *dest == push.dest) {
                results.push(Ok(*nodes));
                continue;
            }
            let consumers = keys::consumers(&self.tenant, &push.dest);
            let nodes = match self.backplane.only_live_others(&consumers, members).await {
                Ok(nodes) => nodes,
                Err(e) => {
                    results.push(Err(HistoryError::Unavailable(e.to_string())));
                    continue;
                }
            };
            let notice = Envelope::new(
                &self.backplane.settings.node_id,
                &self.tenant,
                Kind::QueueStored,
                None,
                &push.dest,
                &Content::default(),
            );
            // A notice that does not reach a node is made up for by its next read.
            let reached = nodes
                .iter()
                .filter(|node| self.backplane.enqueue(keys::inbox(node), &notice).is_ok())
                .count();
            told.push((&push.dest, reached));
            results.push(Ok(reached));
        }
        results
    }
}

/// One message's part of a [`PUSH`] answer: the queue's consumer nodes when it was stored,
/// `None` when the queue was full.
fn pushed(outcome: Value) -> Result<Option<Vec<String>>, HistoryError> {
    let Value::Array(parts) = outcome else {
        return Err(malformed("push"));
    };
    let mut parts = parts.into_iter();
    if !matches!(parts.next(), Some(Value::Int(1))) {
        return Ok(None);
    }
    Ok(Some(match parts.next() {
        Some(Value::Array(m) | Value::Set(m)) => m.iter().filter_map(text).collect(),
        _ => Vec::new(),
    }))
}

/// When this process first asked, in ms: one consumer name for all of its tenants.
fn process_start_ms() -> u64 {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *START.get_or_init(crate::util::unix_ms)
}

#[async_trait]
impl QueueStore for RedisQueues {
    async fn push(&self, dest: &str, content: &Content) -> Result<usize, HistoryError> {
        let headers = serde_json::to_string(&content.headers)
            .map_err(|e| HistoryError::Unavailable(e.to_string()))?;
        let (pushed, told) = oneshot::channel();
        let push = Push {
            dest: dest.to_string(),
            headers,
            body: content.body.clone(),
            pushed,
        };
        // Queued before anything is awaited: one session's SENDs reach the queue in the order
        // it sent them, even while several are under way.
        self.pushes
            .get_or_init(|| {
                let (queue, queued) = mpsc::unbounded_channel();
                tokio::spawn(self.pusher().run(queued));
                queue
            })
            .send(push)
            .map_err(|_| HistoryError::Unavailable("the store is shutting down".into()))?;
        told.await
            .map_err(|_| HistoryError::Unavailable("the store is shutting down".into()))?
    }

    async fn take(&self, dest: &str, count: usize) -> Result<Vec<Entry>, HistoryError> {
        let mut call = TAKE_SCRIPT.call();
        call.key(keys::queue_stream(&self.tenant, dest))
            .arg(&self.consumer)
            .arg(count.max(1));
        entries(self.one(call.routed()).await?, false)
    }

    async fn claim(&self, dest: &str, count: usize) -> Result<Vec<Entry>, HistoryError> {
        let live = self.backplane.live_nodes().await.map_err(store_error)?;
        let mut call = CLAIM_SCRIPT.call();
        call.key(keys::queue_stream(&self.tenant, dest))
            .arg(&self.consumer)
            .arg(count.max(1))
            .arg(self.node());
        for node in &live {
            call.arg(node);
        }
        entries(self.one(call.routed()).await?, true)
    }

    async fn acknowledge(&self, entries: &[(Arc<str>, String)]) -> Result<(), HistoryError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut commands = Vec::new();
        for (queue, ids) in by_queue(entries) {
            let key = keys::queue_stream(&self.tenant, queue);
            let mut ack = redis::cmd("XACK");
            ack.arg(&key).arg(keys::QUEUE_GROUP).arg(&ids);
            let mut del = redis::cmd("XDEL");
            del.arg(&key).arg(&ids);
            commands.push(Routed::key(&key, ack));
            commands.push(Routed::key(&key, del));
        }
        self.all(commands).await
    }

    async fn give_back(&self, entries: &[(Arc<str>, String)]) -> Result<(), HistoryError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut commands = Vec::new();
        for (queue, ids) in by_queue(entries) {
            let key = keys::queue_stream(&self.tenant, queue);
            let mut claim = redis::cmd("XCLAIM");
            claim
                .arg(&key)
                .arg(keys::QUEUE_GROUP)
                .arg(keys::RETURNED)
                .arg(0)
                .arg(&ids)
                .arg("JUSTID");
            commands.push(Routed::key(&key, claim));
        }
        self.all(commands).await
    }
}

/// (queue, entry id) pairs grouped by queue, in the order the queues first appear.
fn by_queue(entries: &[(Arc<str>, String)]) -> Vec<(&str, Vec<&str>)> {
    let mut grouped: Vec<(&str, Vec<&str>)> = Vec::new();
    for (queue, id) in entries {
        match grouped.iter_mut().find(|(q, _)| *q == &**queue) {
            Some((_, ids)) => ids.push(id),
            None => grouped.push((queue, vec![id])),
        }
    }
    grouped
}

/// Stream entries `[[id, [h, headers, b, body]], ...]`.
fn entries(value: Value, redelivered: bool) -> Result<Vec<Entry>, HistoryError> {
    let list = match value {
        Value::Array(list) => list,
        Value::Nil => Vec::new(),
        _ => return Err(malformed("entries")),
    };
    list.into_iter()
        .filter(|e| !matches!(e, Value::Nil))
        .map(|e| entry(e, redelivered).ok_or_else(|| malformed("entry")))
        .collect()
}

fn entry(value: Value, redelivered: bool) -> Option<Entry> {
    let (id, _, content) = stream_entry(value)?;
    Some(Entry {
        id,
        content,
        redelivered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_read_back_with_their_id_and_content() {
        let value = Value::Array(vec![
            Value::Array(vec![
                Value::BulkString(b"1700000000123-0".to_vec()),
                Value::Array(vec![
                    Value::BulkString(b"h".to_vec()),
                    Value::BulkString(br#"[["x-job","7"]]"#.to_vec()),
                    Value::BulkString(b"b".to_vec()),
                    Value::BulkString(vec![0, 159, 1]),
                ]),
            ]),
            Value::Nil,
        ]);
        let got = entries(value, true).unwrap();
        assert_eq!(got.len(), 1, "a deleted entry is skipped");
        assert_eq!(got[0].id, "1700000000123-0");
        assert_eq!(
            got[0].content.headers,
            [("x-job".to_string(), "7".to_string())]
        );
        assert_eq!(&got[0].content.body[..], &[0, 159, 1]);
        assert!(got[0].redelivered);
        assert!(entries(Value::Nil, false).unwrap().is_empty());
    }
}
