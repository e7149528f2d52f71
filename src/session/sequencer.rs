//! Keeps what a session hands off in order: routing a SEND, the replies and the end that come
//! after it.
//!
//! Routing a message can wait on Redis (a presence read, a queue's consumer list). The session
//! must not: one client's reading would then be paced by Redis round trips. So a route is
//! polled once where the session runs; in the usual case (a standalone node, or a cached
//! presence) it completes right there and costs nothing more. When it cannot complete yet, it
//! is queued with everything the session emits after it (a RECEIPT, the DISCONNECT receipt,
//! the end of the outbox), and one task, spawned for as long as the queue is not empty, runs
//! them in order. Per-session order of messages, receipts after their SEND's routing, and "all
//! prior frames processed" before a DISCONNECT receipt all hold; the reader only waits when
//! more than [`MAX_PENDING`] routes are queued.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

use super::fault::Fault;
use crate::broker::Endpoint;

/// A route that may still be waiting for the cluster; `Err` ends the session with that fault.
pub type Route = Pin<Box<dyn Future<Output = Result<(), Fault>> + Send>>;

/// Routes queued at most before the session waits (one client's SENDs to a stalled Redis).
pub const MAX_PENDING: usize = 1024;

enum Job {
    /// Route, then write the receipt (if any).
    Route(Route, Option<Bytes>),
    /// A reply frame, already encoded.
    Reply(Bytes),
    /// End the outbox with this last frame.
    Finish(Option<Bytes>),
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    routes: usize,
    /// A task is draining `jobs`.
    running: bool,
}

/// The ordered hand-off of one session.
pub struct Sequencer {
    endpoint: Arc<Endpoint>,
    queue: Mutex<Queue>,
    /// Signalled when a queued route finished (a waiting session may go on).
    progressed: Notify,
    /// How a failed deferred route's ERROR is written (it needs the session's version).
    error_frame: Mutex<Option<ErrorFrame>>,
}

/// Encodes the ERROR that ends a session.
pub type ErrorFrame = Box<dyn Fn(&Fault) -> Bytes + Send + Sync>;

impl std::fmt::Debug for Sequencer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequencer")
            .field("pending", &self.lock().jobs.len())
            .finish()
    }
}

impl Sequencer {
    /// A sequencer writing to `endpoint`.
    pub fn new(endpoint: Arc<Endpoint>) -> Arc<Sequencer> {
        Arc::new(Sequencer {
            endpoint,
            queue: Mutex::new(Queue::default()),
            progressed: Notify::new(),
            error_frame: Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets how an ERROR from a deferred route is encoded (at CONNECT, once the version is
    /// known).
    pub fn set_error_frame(&self, encode: ErrorFrame) {
        *self.error_frame.lock().unwrap_or_else(|e| e.into_inner()) = Some(encode);
    }

    /// True while something handed off is not done.
    pub fn is_busy(&self) -> bool {
        let queue = self.lock();
        queue.running || !queue.jobs.is_empty()
    }

    /// Routes: at once when nothing is pending and the route completes without waiting (the
    /// receipt is then written here too), else after what is pending. `Err` is a fault of a
    /// route that completed at once; a deferred route's fault ends the session from the task.
    pub async fn route(
        self: &Arc<Self>,
        mut route: Route,
        receipt: Option<Bytes>,
        tasks: &TaskTracker,
    ) -> Result<(), Fault> {
        if !self.is_busy() {
            let mut cx = Context::from_waker(Waker::noop());
            if let Poll::Ready(result) = route.as_mut().poll(&mut cx) {
                result?;
                if let Some(receipt) = receipt {
                    let _ = self.endpoint.outbox.push_control(receipt);
                }
                return Ok(());
            }
        }
        loop {
            let progressed = self.progressed.notified();
            {
                let mut queue = self.lock();
                if queue.routes < MAX_PENDING {
                    queue.routes += 1;
                    queue.jobs.push_back(Job::Route(route, receipt));
                    self.kick(queue, tasks);
                    return Ok(());
                }
            }
            progressed.await;
        }
    }

    /// Writes a reply after whatever is pending.
    pub fn reply(self: &Arc<Self>, frame: Bytes, tasks: &TaskTracker) {
        let mut queue = self.lock();
        if queue.running || !queue.jobs.is_empty() {
            queue.jobs.push_back(Job::Reply(frame));
            self.kick(queue, tasks);
        } else {
            drop(queue);
            // A refusal means the connection is already closing; the reply has nowhere to go.
            let _ = self.endpoint.outbox.push_control(frame);
        }
    }

    /// Ends the outbox (with `last` as its final frame) after whatever is pending.
    pub fn finish(self: &Arc<Self>, last: Option<Bytes>, tasks: &TaskTracker) {
        let mut queue = self.lock();
        if queue.running || !queue.jobs.is_empty() {
            queue.jobs.push_back(Job::Finish(last));
            self.kick(queue, tasks);
        } else {
            drop(queue);
            self.endpoint.outbox.finish(last);
        }
    }

    /// Starts the draining task if none runs.
    fn kick(self: &Arc<Self>, mut queue: MutexGuard<'_, Queue>, tasks: &TaskTracker) {
        if queue.running {
            return;
        }
        queue.running = true;
        drop(queue);
        tasks.spawn(self.clone().drain());
    }

    async fn drain(self: Arc<Self>) {
        loop {
            let job = {
                let mut queue = self.lock();
                match queue.jobs.pop_front() {
                    Some(job) => job,
                    None => {
                        queue.running = false;
                        return;
                    }
                }
            };
            match job {
                Job::Route(route, receipt) => {
                    let result = route.await;
                    self.lock().routes -= 1;
                    self.progressed.notify_waiters();
                    match result {
                        Ok(()) => {
                            if let Some(receipt) = receipt {
                                let _ = self.endpoint.outbox.push_control(receipt);
                            }
                        }
                        Err(fault) => {
                            let error = self
                                .error_frame
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .as_ref()
                                .map(|encode| encode(&fault));
                            self.endpoint.outbox.finish(error);
                            let mut queue = self.lock();
                            queue.jobs.clear();
                            queue.routes = 0;
                            queue.running = false;
                            self.progressed.notify_waiters();
                            return;
                        }
                    }
                }
                Job::Reply(frame) => {
                    let _ = self.endpoint.outbox.push_control(frame);
                }
                Job::Finish(last) => self.endpoint.outbox.finish(last),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn endpoint() -> Arc<Endpoint> {
        Arc::new(Endpoint::new(Arc::from("s-1"), 1 << 20))
    }

    async fn written(endpoint: &Endpoint) -> Vec<Bytes> {
        let batch = endpoint.outbox.next_batch().await;
        batch
            .items
            .into_iter()
            .map(|i| [i.head, i.tail].concat().into())
            .collect()
    }

    #[tokio::test]
    async fn a_route_that_completes_at_once_writes_its_receipt_at_once() {
        let endpoint = endpoint();
        let seq = Sequencer::new(endpoint.clone());
        let tasks = TaskTracker::new();
        seq.route(Box::pin(async { Ok(()) }), Some(Bytes::from("R1")), &tasks)
            .await
            .unwrap();
        assert!(!seq.is_busy());
        assert_eq!(written(&endpoint).await, [Bytes::from("R1")]);
        assert!(tasks.is_empty(), "no task for a route that did not wait");
    }

    #[tokio::test]
    async fn what_follows_a_waiting_route_waits_for_it() {
        let endpoint = endpoint();
        let seq = Sequencer::new(endpoint.clone());
        let tasks = TaskTracker::new();
        let (go, wait) = oneshot::channel::<()>();
        let slow: Route = Box::pin(async move {
            let _ = wait.await;
            Ok(())
        });
        seq.route(slow, Some(Bytes::from("R1")), &tasks)
            .await
            .unwrap();
        seq.route(Box::pin(async { Ok(()) }), Some(Bytes::from("R2")), &tasks)
            .await
            .unwrap();
        seq.reply(Bytes::from("R3"), &tasks);
        seq.finish(Some(Bytes::from("LAST")), &tasks);
        assert!(seq.is_busy());
        assert_eq!(
            endpoint.outbox.queued_bytes(),
            0,
            "nothing written before the slow route"
        );
        go.send(()).unwrap();
        tasks.close();
        tasks.wait().await;
        let mut all = Vec::new();
        loop {
            let batch = endpoint.outbox.next_batch().await;
            all.extend(
                batch
                    .items
                    .into_iter()
                    .map(|i| Bytes::from([i.head, i.tail].concat())),
            );
            if batch.then_close.is_some() {
                break;
            }
        }
        assert_eq!(all, ["R1", "R2", "R3", "LAST"].map(Bytes::from));
    }

    #[tokio::test]
    async fn a_deferred_fault_ends_the_session_with_its_error() {
        let endpoint = endpoint();
        let seq = Sequencer::new(endpoint.clone());
        seq.set_error_frame(Box::new(|f: &Fault| Bytes::from(f.message())));
        let tasks = TaskTracker::new();
        let (go, wait) = oneshot::channel::<()>();
        let failing: Route = Box::pin(async move {
            let _ = wait.await;
            Err(Fault::NotAccepted("full".into()))
        });
        seq.route(failing, None, &tasks).await.unwrap();
        seq.reply(Bytes::from("never"), &tasks);
        go.send(()).unwrap();
        tasks.close();
        tasks.wait().await;
        let batch = endpoint.outbox.next_batch().await;
        let frames: Vec<Bytes> = batch
            .items
            .into_iter()
            .map(|i| Bytes::from([i.head, i.tail].concat()))
            .collect();
        assert_eq!(frames, [Bytes::from("message not accepted")]);
        assert!(!seq.is_busy());
    }

    #[tokio::test]
    async fn a_route_that_fails_at_once_is_the_callers_fault() {
        let seq = Sequencer::new(endpoint());
        let tasks = TaskTracker::new();
        let result = seq
            .route(
                Box::pin(async { Err(Fault::NotAccepted("x".into())) }),
                None,
                &tasks,
            )
            .await;
        assert_eq!(result, Err(Fault::NotAccepted("x".into())));
    }
}
