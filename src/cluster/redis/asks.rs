//! Questions to every node and their replies: how the presence and disconnect APIs learn
//! what the other nodes hold. A question goes out on the classic channel `sb:ask` (every node
//! hears it); each node answers from its own broker into the asking node's inbox, where the
//! reply is told apart from envelopes by its first bytes; the asking node waits for every
//! live node, or [`ASK_TIMEOUT`], and names the nodes that did not reply.
//!
//! Bans live in Redis too, a sorted set per tenant (user → until when), so that a node that
//! joins or comes back after a ban learns it when it announces itself.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::debug;

use super::shards::Routed;
use super::{keys, RedisBackplane, RedisError};
use crate::cluster::{LocalNode, Query, Replies, Reply};

/// How long the asking node waits for replies.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// What the `sb:ask` channel carries.
#[derive(Debug, Serialize, Deserialize)]
struct Asked {
    id: String,
    from: String,
    query: Query,
}

/// What a reply in an inbox carries; `answer` comes first, which is how it is told apart.
#[derive(Debug, Serialize, Deserialize)]
struct Answered {
    answer: String,
    node: String,
    reply: Reply,
}

/// The first bytes of a reply in an inbox (envelopes start otherwise).
pub const REPLY_START: &[u8] = b"{\"answer\":";

/// Replies awaited, by question id.
pub type Waiting =
    std::sync::Mutex<std::collections::HashMap<String, mpsc::UnboundedSender<(String, Reply)>>>;

impl RedisBackplane {
    /// Asks the other live nodes `query` (see the module docs).
    pub(super) async fn ask(&self, query: &Query) -> Result<Replies, RedisError> {
        let me = &self.settings.node_id;
        let mut expected: Vec<String> = self
            .live_nodes()
            .await?
            .into_iter()
            .filter(|n| n != me)
            .collect();
        if expected.is_empty() {
            return Ok(Replies::default());
        }
        let id = format!("{me}-{:016x}", crate::util::random_u64());
        let (replies, mut arrived) = mpsc::unbounded_channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), replies);
        let asked = serde_json::to_vec(&Asked {
            id: id.clone(),
            from: me.clone(),
            query: query.clone(),
        })
        .map_err(|e| RedisError::Encode(e.to_string()))?;
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(keys::ASK_CHANNEL).arg(asked);
        let sent: Result<usize, RedisError> = self
            .shards
            .one(Routed::key(keys::ASK_CHANNEL, publish))
            .await;
        let mut by_node = Vec::new();
        if sent.is_ok() {
            let deadline = tokio::time::Instant::now() + ASK_TIMEOUT;
            while !expected.is_empty() {
                match tokio::time::timeout_at(deadline, arrived.recv()).await {
                    Ok(Some((node, reply))) => {
                        if let Some(at) = expected.iter().position(|n| *n == node) {
                            expected.swap_remove(at);
                            by_node.push((node, reply));
                        }
                    }
                    _ => break,
                }
            }
        }
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        sent?;
        expected.sort();
        Ok(Replies {
            by_node,
            missing: expected,
        })
    }

    /// A reply that arrived in this node's inbox.
    pub(super) fn replied(&self, payload: &[u8]) {
        match serde_json::from_slice::<Answered>(payload) {
            Ok(answered) => {
                let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(replies) = waiting.get(&answered.answer) {
                    let _ = replies.send((answered.node, answered.reply));
                }
            }
            Err(e) => debug!(error = %e, "unreadable reply in the inbox"),
        }
    }

    /// Answers a question from `sb:ask` (not this node's own), in the background.
    pub(super) fn answer_asked(self: &Arc<Self>, local: &Arc<dyn LocalNode>, payload: &[u8]) {
        let asked = match serde_json::from_slice::<Asked>(payload) {
            Ok(asked) if asked.from != self.settings.node_id => asked,
            Ok(_) => return,
            Err(e) => {
                debug!(error = %e, "unreadable question on the ask channel");
                return;
            }
        };
        let reply = local.answer(&asked.query);
        let Ok(answered) = serde_json::to_vec(&Answered {
            answer: asked.id,
            node: self.settings.node_id.clone(),
            reply,
        }) else {
            return;
        };
        let inbox = keys::inbox(&asked.from);
        let mut publish = redis::cmd(self.inbox_publish());
        publish.arg(&inbox).arg(answered);
        let bp = self.clone();
        tokio::spawn(async move {
            if let Err(e) = bp.shards.one::<usize>(Routed::key(&inbox, publish)).await {
                debug!(error = %e, "a reply to another node's question was not sent");
            }
        });
    }

    /// Records a ban in the tenant's set of bans (expired ones are dropped on the way).
    pub(super) async fn record_ban(
        &self,
        tenant: &str,
        user: &str,
        until_ms: u64,
    ) -> Result<(), RedisError> {
        let key = keys::bans(tenant);
        let mut add = redis::cmd("ZADD");
        add.arg(&key).arg(until_ms).arg(user);
        let mut prune = redis::cmd("ZREMRANGEBYSCORE");
        prune.arg(&key).arg("-inf").arg(crate::util::unix_ms());
        for reply in self
            .shards
            .run(vec![Routed::key(&key, add), Routed::key(&key, prune)])
            .await
        {
            reply?;
        }
        Ok(())
    }

    /// Tells the node of every ban still in force for the tenants it serves now.
    pub(super) async fn load_bans(&self, local: &Arc<dyn LocalNode>) {
        let now = crate::util::unix_ms();
        let tenants = local.tenant_ids();
        let calls = tenants
            .iter()
            .map(|t| {
                let key = keys::bans(t);
                let mut range = redis::cmd("ZRANGEBYSCORE");
                range.arg(&key).arg(now).arg("+inf").arg("WITHSCORES");
                Routed::key(&key, range)
            })
            .collect();
        for (tenant, reply) in tenants.iter().zip(self.shards.run(calls).await) {
            let Ok(value) = reply else { continue };
            let Ok(pairs) = super::shards::decode::<Vec<(String, u64)>>(value) else {
                continue;
            };
            for (user, until_ms) in pairs {
                local.banned(tenant, &user, until_ms);
            }
        }
    }
}
