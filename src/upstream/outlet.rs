//! One way out to a backend (the stream, or the webhook): a queue bounded in bytes, and the
//! one task that delivers it in batches, in order, trying a failed batch again with backoff.
//!
//! Order is kept by delivering one batch at a time: what a session handed over reaches the
//! backend in that order, and a batch that keeps failing holds back the ones after it until
//! it is given up. While it holds them, the queue fills, and what arrives beyond its limit is
//! refused at once (a SEND's client gets an ERROR), so a backend that is down costs a tenant
//! at most `queue_bytes` of memory, never another tenant's.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::item::Item;
use super::UpstreamError;

/// Why a batch was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It may succeed later (a connection error, a timeout, a 5xx): tried again.
    Transient(String),
    /// It will not (the backend answered 4xx): not tried again.
    Permanent(String),
}

/// Where batches go.
#[async_trait]
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// Its name in errors and metrics (`stream`, `webhook`).
    fn name(&self) -> &'static str;
    /// Delivers `items`, all of them or none.
    async fn deliver(&self, items: &[Arc<Item>]) -> Result<(), Refusal>;
}

/// The first wait before a failed batch is tried again; it doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between tries.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Once the node stops, how long what is still queued may take to go out.
const DRAIN: Duration = Duration::from_secs(5);
/// Bytes of items in one batch at most (besides `batch_max`).
const BATCH_BYTES: usize = 1 << 20;

/// What an outlet did, for `/metrics`.
#[derive(Debug, Default)]
pub struct OutletStats {
    /// Items the backend took.
    pub delivered: AtomicU64,
    /// Tries of a batch that failed (each try counts once).
    pub failed_tries: AtomicU64,
    /// Items refused because the queue was full.
    pub refused_full: AtomicU64,
    /// Items given up after their last try (or at shutdown).
    pub given_up: AtomicU64,
}

struct Pending {
    item: Arc<Item>,
    weight: usize,
    done: Option<oneshot::Sender<Result<(), UpstreamError>>>,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Pending>,
    /// Bytes of what waits and what is being delivered.
    bytes: usize,
}

/// A queue and its delivery loop.
pub struct Outlet {
    sink: Box<dyn Sink>,
    /// Tries of a batch after the first.
    retries: u32,
    limit_bytes: usize,
    batch_max: usize,
    queue: Mutex<Queue>,
    wake: Notify,
    /// Counters.
    pub stats: OutletStats,
}

impl std::fmt::Debug for Outlet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outlet")
            .field("sink", &self.sink)
            .field("queued_bytes", &self.queued_bytes())
            .finish()
    }
}

impl Outlet {
    /// An outlet to `sink`.
    pub fn new(sink: Box<dyn Sink>, retries: u32, limit_bytes: usize, batch_max: usize) -> Outlet {
        Outlet {
            sink,
            retries,
            limit_bytes,
            batch_max,
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            stats: OutletStats::default(),
        }
    }

    /// Its sink's name.
    pub fn name(&self) -> &'static str {
        self.sink.name()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes waiting or being delivered.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Queues `item`; `done` learns whether the backend took it. Refused at once when the
    /// queue is full.
    pub fn offer(
        &self,
        item: Arc<Item>,
        done: Option<oneshot::Sender<Result<(), UpstreamError>>>,
    ) -> Result<(), UpstreamError> {
        let weight = item.weight();
        {
            let mut queue = self.lock();
            if queue.bytes + weight > self.limit_bytes {
                drop(queue);
                self.stats.refused_full.fetch_add(1, Ordering::Relaxed);
                return Err(UpstreamError::QueueFull {
                    sink: self.name(),
                    limit: self.limit_bytes,
                });
            }
            queue.bytes += weight;
            queue.items.push_back(Pending { item, weight, done });
        }
        self.wake.notify_one();
        Ok(())
    }

    /// The next batch, taken from the front (its bytes stay charged until it is done).
    fn next_batch(&self) -> Vec<Pending> {
        let mut queue = self.lock();
        let mut batch = Vec::new();
        let mut bytes = 0;
        while batch.len() < self.batch_max {
            let Some(front) = queue.items.front() else {
                break;
            };
            if !batch.is_empty() && bytes + front.weight > BATCH_BYTES {
                break;
            }
            bytes += front.weight;
            batch.push(queue.items.pop_front().expect("looked at above"));
        }
        batch
    }

    /// Delivers until `stop`, then for at most [`DRAIN`] what is still queued (one try per
    /// batch), and gives up the rest.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut drain_until = None;
        loop {
            if stop.is_cancelled() && drain_until.is_none() {
                drain_until = Some(tokio::time::Instant::now() + DRAIN);
            }
            let batch = self.next_batch();
            if batch.is_empty() {
                if stop.is_cancelled() {
                    return;
                }
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = stop.cancelled() => {}
                }
                continue;
            }
            let result = if drain_until.is_some_and(|at| tokio::time::Instant::now() >= at) {
                Err(UpstreamError::Stopped)
            } else {
                self.deliver(&batch, &stop).await
            };
            self.finish(batch, result);
        }
    }

    /// Tries a batch until it is delivered, refused for good, or out of tries (one try only
    /// once the node stops).
    async fn deliver(
        &self,
        batch: &[Pending],
        stop: &CancellationToken,
    ) -> Result<(), UpstreamError> {
        let items: Vec<Arc<Item>> = batch.iter().map(|p| p.item.clone()).collect();
        let mut backoff = FIRST_BACKOFF;
        let mut tries = 0;
        loop {
            let reason = match self.sink.deliver(&items).await {
                Ok(()) => return Ok(()),
                Err(Refusal::Permanent(reason)) => {
                    self.stats.failed_tries.fetch_add(1, Ordering::Relaxed);
                    return Err(self.failed(reason));
                }
                Err(Refusal::Transient(reason)) => reason,
            };
            self.stats.failed_tries.fetch_add(1, Ordering::Relaxed);
            tries += 1;
            if tries > self.retries || stop.is_cancelled() {
                return Err(self.failed(format!("{reason} (tried {tries} times)")));
            }
            warn!(sink = self.name(), error = %reason, retry_in_ms = backoff.as_millis() as u64, "a batch for the backend failed; trying again");
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop.cancelled() => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn failed(&self, reason: String) -> UpstreamError {
        UpstreamError::Failed {
            sink: self.name(),
            reason,
        }
    }

    fn finish(&self, batch: Vec<Pending>, result: Result<(), UpstreamError>) {
        let bytes: usize = batch.iter().map(|p| p.weight).sum();
        self.lock().bytes -= bytes;
        let counter = match &result {
            Ok(()) => &self.stats.delivered,
            Err(e) => {
                warn!(sink = self.name(), items = batch.len(), error = %e, "items for the backend were given up");
                &self.stats.given_up
            }
        };
        counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
        for pending in batch {
            if let Some(done) = pending.done {
                let _ = done.send(result.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::item::ItemKind;

    /// Fails the first `fail` tries (transiently, or for good), then records what it got.
    #[derive(Debug, Default)]
    struct Recorder {
        fail: Mutex<u32>,
        permanent: bool,
        got: Mutex<Vec<Vec<String>>>,
    }

    #[async_trait]
    impl Sink for Arc<Recorder> {
        fn name(&self) -> &'static str {
            "test"
        }
        async fn deliver(&self, items: &[Arc<Item>]) -> Result<(), Refusal> {
            {
                let mut fail = self.fail.lock().unwrap();
                if *fail > 0 {
                    *fail -= 1;
                    return Err(if self.permanent {
                        Refusal::Permanent("HTTP 400".into())
                    } else {
                        Refusal::Transient("HTTP 500".into())
                    });
                }
            }
            self.got
                .lock()
                .unwrap()
                .push(items.iter().map(|i| i.id.clone()).collect());
            Ok(())
        }
    }

    fn item(id: &str) -> Arc<Item> {
        Arc::new(Item {
            kind: ItemKind::Message,
            id: id.into(),
            time_ms: 0,
            tenant: "t".into(),
            node: "n".into(),
            session: "s".into(),
            user: None,
            fields: Vec::new(),
            headers: Vec::new(),
            body: None,
        })
    }

    fn offer(outlet: &Outlet, id: &str) -> oneshot::Receiver<Result<(), UpstreamError>> {
        let (done, result) = oneshot::channel();
        outlet.offer(item(id), Some(done)).unwrap();
        result
    }

    #[tokio::test(start_paused = true)]
    async fn batches_go_in_order_and_a_failed_one_is_tried_again() {
        let recorder = Arc::new(Recorder {
            fail: Mutex::new(2),
            ..Recorder::default()
        });
        let outlet = Arc::new(Outlet::new(Box::new(recorder.clone()), 5, 1 << 20, 2));
        let results: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|id| offer(&outlet, id))
            .collect();
        let stop = CancellationToken::new();
        tokio::spawn(outlet.clone().run(stop.clone()));
        for result in results {
            assert_eq!(result.await.unwrap(), Ok(()));
        }
        assert_eq!(
            *recorder.got.lock().unwrap(),
            vec![vec!["a".to_string(), "b".into()], vec!["c".into()]]
        );
        assert_eq!(outlet.stats.failed_tries.load(Ordering::Relaxed), 2);
        assert_eq!(outlet.queued_bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_out_of_tries_is_not_accepted_and_the_next_goes_on() {
        let recorder = Arc::new(Recorder {
            fail: Mutex::new(3),
            ..Recorder::default()
        });
        let outlet = Arc::new(Outlet::new(Box::new(recorder.clone()), 2, 1 << 20, 1));
        let first = offer(&outlet, "a");
        let second = offer(&outlet, "b");
        tokio::spawn(outlet.clone().run(CancellationToken::new()));
        let err = first.await.unwrap().unwrap_err();
        assert!(
            err.to_string().contains("HTTP 500 (tried 3 times)"),
            "{err}"
        );
        assert_eq!(second.await.unwrap(), Ok(()));
        assert_eq!(outlet.stats.given_up.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_refusal_is_not_tried_again() {
        let recorder = Arc::new(Recorder {
            fail: Mutex::new(1),
            permanent: true,
            ..Recorder::default()
        });
        let outlet = Arc::new(Outlet::new(Box::new(recorder.clone()), 5, 1 << 20, 1));
        let first = offer(&outlet, "a");
        tokio::spawn(outlet.clone().run(CancellationToken::new()));
        assert!(first
            .await
            .unwrap()
            .unwrap_err()
            .to_string()
            .contains("HTTP 400"));
        assert_eq!(outlet.stats.failed_tries.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        let outlet = Outlet::new(Box::new(Arc::new(Recorder::default())), 0, 600, 10);
        outlet.offer(item("a"), None).unwrap();
        outlet.offer(item("b"), None).unwrap();
        let err = outlet.offer(item("c"), None).unwrap_err();
        assert!(
            matches!(err, UpstreamError::QueueFull { limit: 600, .. }),
            "{err}"
        );
        assert_eq!(outlet.stats.refused_full.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn what_is_queued_goes_out_when_the_node_stops() {
        let recorder = Arc::new(Recorder::default());
        let outlet = Arc::new(Outlet::new(Box::new(recorder.clone()), 5, 1 << 20, 10));
        let stop = CancellationToken::new();
        stop.cancel();
        let result = offer(&outlet, "a");
        outlet.clone().run(stop).await;
        assert_eq!(result.await.unwrap(), Ok(()));
    }
}
