//! Messages for other nodes: queued by the routing path without waiting, then sent by one
//! task that pipelines whatever has queued up, messages for one channel in one PUBLISH (a JSON
//! array of envelopes; a lone message goes as a bare envelope), each PUBLISH to the primary
//! owning its channel (`SPUBLISH` on a Redis Cluster). Each message's sender learns through a
//! oneshot how many subscribers Redis handed it to, or why it was not sent.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::shards::Routed;
use super::{RedisBackplane, RedisError};
use crate::cluster::{ClusterError, Confirmation, Envelope};

/// Most messages taken from the queue for one pipeline.
pub const SEND_BATCH: usize = 512;
/// Most messages waiting for the cluster connection; beyond it, forwarding fails fast.
pub const SEND_QUEUE: usize = 65_536;
/// A PUBLISH carrying several messages stops growing at about this size.
const GROUP_BYTES: usize = 1 << 20;

type Done = oneshot::Sender<Result<usize, ClusterError>>;

/// One message waiting for the sender task.
#[derive(Debug)]
pub struct Outgoing {
    channel: String,
    payload: Vec<u8>,
    done: Done,
}

/// Messages for one channel sent in one PUBLISH.
struct Group {
    channel: String,
    payload: Vec<u8>,
    done: Vec<Done>,
}

/// Gathers queued messages by channel, in order. Redis and every receiving node pay their
/// per-command cost (parsing, dispatch, a wake-up) once per group instead of once per message.
fn group_by_channel(batch: &mut Vec<Outgoing>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for item in batch.drain(..) {
        let open = groups
            .iter_mut()
            .rev()
            .find(|g| g.channel == item.channel && g.payload.len() < GROUP_BYTES);
        match open {
            Some(group) => {
                if group.done.len() == 1 {
                    group.payload.insert(0, b'[');
                }
                group.payload.push(b',');
                group.payload.extend_from_slice(&item.payload);
                group.done.push(item.done);
            }
            None => groups.push(Group {
                channel: item.channel,
                payload: item.payload,
                done: vec![item.done],
            }),
        }
    }
    for group in &mut groups {
        if group.done.len() > 1 {
            group.payload.push(b']');
        }
    }
    groups
}

/// Waits for work, then takes up to `limit` items into `batch` (emptied first). False at
/// `stop` or once every sender is gone.
pub async fn next_batch<T>(
    requests: &mut mpsc::Receiver<T>,
    batch: &mut Vec<T>,
    limit: usize,
    stop: &CancellationToken,
) -> bool {
    batch.clear();
    tokio::select! {
        _ = stop.cancelled() => false,
        n = requests.recv_many(batch, limit) => n > 0,
    }
}

impl RedisBackplane {
    /// Queues a PUBLISH of `envelope` on `channel` for the sender task.
    pub(super) fn enqueue(
        &self,
        channel: String,
        envelope: &Envelope,
    ) -> Result<Confirmation, RedisError> {
        let queue = self.outgoing.get().ok_or(RedisError::NotStarted)?;
        let payload =
            serde_json::to_vec(envelope).map_err(|e| RedisError::Encode(e.to_string()))?;
        let (done, confirmation) = oneshot::channel();
        queue
            .try_send(Outgoing {
                channel,
                payload,
                done,
            })
            .map_err(|_| RedisError::QueueFull)?;
        Ok(confirmation)
    }
}

/// Drains the outgoing queue into pipelined PUBLISHes until `stop`.
pub async fn send_loop(
    backplane: Arc<RedisBackplane>,
    mut outgoing: mpsc::Receiver<Outgoing>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(SEND_BATCH);
    let verb = backplane.inbox_publish();
    while next_batch(&mut outgoing, &mut batch, SEND_BATCH, &stop).await {
        let groups = group_by_channel(&mut batch);
        let commands = groups
            .iter()
            .map(|group| {
                let mut publish = redis::cmd(verb);
                publish.arg(&group.channel).arg(&group.payload);
                Routed::key(&group.channel, publish)
            })
            .collect();
        let replies = backplane.shards.run(commands).await;
        for (group, reply) in groups.into_iter().zip(replies) {
            let sent = group.done.len() as u64;
            match reply.and_then(super::shards::decode::<usize>) {
                Ok(n) => {
                    backplane.stats.forwarded.fetch_add(sent, Ordering::Relaxed);
                    for done in group.done {
                        let _ = done.send(Ok(n));
                    }
                }
                Err(e) => {
                    warn!(error = %e, lost = sent, channel = %group.channel, "messages for other nodes not sent");
                    backplane
                        .stats
                        .send_failures
                        .fetch_add(sent, Ordering::Relaxed);
                    let e = ClusterError::from(e);
                    for done in group.done {
                        let _ = done.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing(channel: &str, payload: &str) -> (Outgoing, Confirmation) {
        let (done, rx) = oneshot::channel();
        let item = Outgoing {
            channel: channel.into(),
            payload: payload.as_bytes().to_vec(),
            done,
        };
        (item, rx)
    }

    #[test]
    fn messages_for_one_channel_travel_together_in_order() {
        let (a1, _r1) = outgoing("a", r#"{"n":1}"#);
        let (b1, _r2) = outgoing("b", r#"{"n":2}"#);
        let (a2, _r3) = outgoing("a", r#"{"n":3}"#);
        let mut batch = vec![a1, b1, a2];
        let groups = group_by_channel(&mut batch);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].channel, "a");
        assert_eq!(groups[0].payload, br#"[{"n":1},{"n":3}]"#);
        assert_eq!(groups[0].done.len(), 2);
        assert_eq!(
            groups[1].payload, br#"{"n":2}"#,
            "a lone message is a bare envelope"
        );
    }

    #[test]
    fn a_group_stops_growing_at_its_size() {
        let big = format!("\"{}\"", "x".repeat(GROUP_BYTES));
        let (a1, _r1) = outgoing("a", &big);
        let (a2, _r2) = outgoing("a", r#"{"n":2}"#);
        let (a3, _r3) = outgoing("a", r#"{"n":3}"#);
        let mut batch = vec![a1, a2, a3];
        let groups = group_by_channel(&mut batch);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].done.len(), 1);
        assert_eq!(groups[1].payload, br#"[{"n":2},{"n":3}]"#);
    }

    #[tokio::test]
    async fn a_batch_takes_what_queued_and_ends_at_stop() {
        let (tx, mut rx) = mpsc::channel(8);
        for n in 0..5 {
            tx.send(n).await.unwrap();
        }
        let stop = CancellationToken::new();
        let mut batch = Vec::new();
        assert!(next_batch(&mut rx, &mut batch, 3, &stop).await);
        assert_eq!(batch, [0, 1, 2]);
        assert!(next_batch(&mut rx, &mut batch, 3, &stop).await);
        assert_eq!(batch, [3, 4]);
        stop.cancel();
        assert!(!next_batch(&mut rx, &mut batch, 3, &stop).await);
    }
}
