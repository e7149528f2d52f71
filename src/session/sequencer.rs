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
//!
//! A route that fixes its order when it is first polled (a stored user message takes its
//! user's turn there) may run beside the ones after it, up to [`IN_FLIGHT`] at once: one
//! client's stream of SENDs to users is then paced by Redis's throughput, not by one round
//! trip per message. What they emit still comes out in order: each job's effect (a receipt,
//! a reply, the end) is applied only once every job before it finished. Other routes run
//! alone, as before.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

use super::fault::Fault;
use super::{encode_frame, error_frame};
use crate::broker::Endpoint;
use crate::stomp::Version;

/// A route that may still be waiting for the cluster; `Err` ends the session with that fault.
pub type Route = Pin<Box<dyn Future<Output = Result<(), Fault>> + Send>>;

/// The RECEIPT a route asked for: written once it is routed, and named (`receipt-id`) by
/// the ERROR when it fails.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// The client's `receipt` header.
    pub id: String,
    /// The RECEIPT frame, encoded.
    pub frame: Bytes,
}

/// Routes queued at most before the session waits (one client's SENDs to a stalled Redis).
pub const MAX_PENDING: usize = 1024;
/// Routes that fix their order at their first poll, running at once at most.
pub const IN_FLIGHT: usize = 256;

enum Job {
    /// Route, then write the receipt (if any); `overlaps`: it may run beside later jobs.
    Route(Route, Option<Receipt>, bool),
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

/// A session's hand-off: nothing at all until a route must wait (most sessions never need
/// one: subscribers, and publishers whose routes complete at once), then a [`Sequencer`].
#[derive(Debug, Default)]
pub struct Handoff {
    queue: Option<Arc<Sequencer>>,
}

impl Handoff {
    fn busy(&self) -> Option<&Arc<Sequencer>> {
        self.queue.as_ref().filter(|q| q.is_busy())
    }

    /// True while something handed off is not done.
    pub fn is_busy(&self) -> bool {
        self.busy().is_some()
    }

    /// Routes: at once when nothing is pending and the route completes without waiting (the
    /// receipt is then written here too), else after what is pending. `Err` is the fault of a
    /// route that completed at once; a deferred route's fault ends the session from the task
    /// (with an ERROR in `version`).
    ///
    /// `overlaps`: the route fixes its order among this session's routes when it is first
    /// polled, so it may run beside the routes after it.
    pub async fn route(
        &mut self,
        endpoint: &Arc<Endpoint>,
        version: Version,
        mut route: Route,
        receipt: Option<Receipt>,
        overlaps: bool,
        tasks: &TaskTracker,
    ) -> Result<(), Fault> {
        if self.busy().is_none() {
            let mut cx = Context::from_waker(Waker::noop());
            if let Poll::Ready(result) = route.as_mut().poll(&mut cx) {
                result?;
                if let Some(receipt) = receipt {
                    let _ = endpoint.outbox.push_control(receipt.frame);
                }
                return Ok(());
            }
        }
        let queue = self
            .queue
            .get_or_insert_with(|| Sequencer::new(endpoint.clone(), version));
        queue.defer(route, receipt, overlaps, tasks).await;
        Ok(())
    }

    /// Writes a reply after whatever is pending.
    pub fn reply(&self, endpoint: &Endpoint, frame: Bytes, tasks: &TaskTracker) {
        match self.busy() {
            Some(queue) => queue.push(Job::Reply(frame), tasks),
            // A refusal means the connection is already closing; the reply has nowhere to go.
            None => drop(endpoint.outbox.push_control(frame)),
        }
    }

    /// Ends the outbox (with `last` as its final frame) after whatever is pending.
    pub fn finish(&self, endpoint: &Endpoint, last: Option<Bytes>, tasks: &TaskTracker) {
        match self.busy() {
            Some(queue) => queue.push(Job::Finish(last), tasks),
            None => endpoint.outbox.finish(last),
        }
    }
}

/// The ordered queue of one session's deferred work.
pub struct Sequencer {
    endpoint: Arc<Endpoint>,
    /// The session's version, for the ERROR of a deferred route that fails.
    version: Version,
    queue: Mutex<Queue>,
    /// Signalled when a queued route finished (a waiting session may go on).
    progressed: Notify,
}

impl std::fmt::Debug for Sequencer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequencer")
            .field("pending", &self.lock().jobs.len())
            .finish()
    }
}

impl Sequencer {
    /// A sequencer writing to `endpoint`, in `version`.
    pub fn new(endpoint: Arc<Endpoint>, version: Version) -> Arc<Sequencer> {
        Arc::new(Sequencer {
            endpoint,
            version,
            queue: Mutex::new(Queue::default()),
            progressed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True while something queued is not done.
    pub fn is_busy(&self) -> bool {
        let queue = self.lock();
        queue.running || !queue.jobs.is_empty()
    }

    /// Queues a route (and its receipt) after what is pending; waits only while
    /// [`MAX_PENDING`] routes are queued.
    async fn defer(
        self: &Arc<Self>,
        route: Route,
        receipt: Option<Receipt>,
        overlaps: bool,
        tasks: &TaskTracker,
    ) {
        let mut job = Some(Job::Route(route, receipt, overlaps));
        loop {
            let progressed = self.progressed.notified();
            {
                let mut queue = self.lock();
                if queue.routes < MAX_PENDING {
                    queue.routes += 1;
                    queue.jobs.extend(job.take());
                    self.kick(queue, tasks);
                    return;
                }
            }
            progressed.await;
        }
    }

    /// Queues a reply or the end after what is pending.
    fn push(self: &Arc<Self>, job: Job, tasks: &TaskTracker) {
        let mut queue = self.lock();
        queue.jobs.push_back(job);
        self.kick(queue, tasks);
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
        let mut in_flight: FuturesOrdered<Pin<Box<dyn Future<Output = Effect> + Send>>> =
            FuturesOrdered::new();
        loop {
            // Start what may start: jobs in order, while each may run beside the next.
            while in_flight.len() < IN_FLIGHT {
                let job = {
                    let mut queue = self.lock();
                    let alone = matches!(queue.jobs.front(), Some(Job::Route(_, _, false)));
                    if alone && !in_flight.is_empty() {
                        break; // it waits until everything before it is done
                    }
                    match queue.jobs.pop_front() {
                        Some(job) => job,
                        None if in_flight.is_empty() => {
                            queue.running = false;
                            return;
                        }
                        None => break,
                    }
                };
                let alone = matches!(job, Job::Route(_, _, false));
                in_flight.push_back(match job {
                    Job::Route(route, receipt, _) => {
                        Box::pin(async move { Effect::Routed(route.await, receipt) })
                    }
                    Job::Reply(frame) => Box::pin(std::future::ready(Effect::Reply(frame))),
                    Job::Finish(last) => Box::pin(std::future::ready(Effect::Finish(last))),
                });
                if alone {
                    break; // nothing after it starts before it is done
                }
            }
            let Some(effect) = in_flight.next().await else {
                continue;
            };
            match effect {
                Effect::Routed(result, receipt) => {
                    self.lock().routes -= 1;
                    self.progressed.notify_waiters();
                    match result {
                        Ok(()) => {
                            if let Some(receipt) = receipt {
                                let _ = self.endpoint.outbox.push_control(receipt.frame);
                            }
                        }
                        Err(fault) => {
                            let id = receipt.as_ref().map(|r| r.id.as_str());
                            let error = encode_frame(&error_frame(&fault, id), self.version);
                            self.endpoint.outbox.finish(Some(error));
                            let mut queue = self.lock();
                            queue.jobs.clear();
                            queue.routes = 0;
                            queue.running = false;
                            self.progressed.notify_waiters();
                            return;
                        }
                    }
                }
                Effect::Reply(frame) => {
                    let _ = self.endpoint.outbox.push_control(frame);
                }
                Effect::Finish(last) => self.endpoint.outbox.finish(last),
            }
        }
    }
}

/// What a job leaves to be done once every job before it is done.
enum Effect {
    Routed(Result<(), Fault>, Option<Receipt>),
    Reply(Bytes),
    Finish(Option<Bytes>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stomp::{decode, Decoded, Limits};
    use bytes::BytesMut;
    use tokio::sync::oneshot;

    fn endpoint() -> Arc<Endpoint> {
        Arc::new(Endpoint::new(Arc::from("s-1"), 1 << 20, 1 << 20))
    }

    /// Everything written until the outbox closes (or nothing more is queued).
    async fn written(endpoint: &Endpoint) -> Vec<Bytes> {
        let mut all = Vec::new();
        loop {
            let Ok(batch) =
                tokio::time::timeout(std::time::Duration::ZERO, endpoint.outbox.next_batch()).await
            else {
                return all;
            };
            all.extend(
                batch
                    .items
                    .into_iter()
                    .map(|i| Bytes::from([i.head, i.tail].concat())),
            );
            if batch.then_close.is_some() {
                return all;
            }
        }
    }

    fn slow(result: Result<(), Fault>) -> (Route, oneshot::Sender<()>) {
        let (go, wait) = oneshot::channel::<()>();
        let route: Route = Box::pin(async move {
            let _ = wait.await;
            result
        });
        (route, go)
    }

    #[tokio::test]
    async fn a_route_that_completes_at_once_needs_no_queue() {
        let endpoint = endpoint();
        let mut handoff = Handoff::default();
        let tasks = TaskTracker::new();
        handoff
            .route(
                &endpoint,
                Version::V1_2,
                Box::pin(async { Ok(()) }),
                Some(Receipt {
                    id: String::from("R1"),
                    frame: Bytes::from("R1"),
                }),
                false,
                &tasks,
            )
            .await
            .unwrap();
        assert!(handoff.queue.is_none(), "nothing allocated");
        assert_eq!(written(&endpoint).await, [Bytes::from("R1")]);
        assert!(tasks.is_empty(), "no task for a route that did not wait");
    }

    #[tokio::test]
    async fn what_follows_a_waiting_route_waits_for_it() {
        let endpoint = endpoint();
        let mut handoff = Handoff::default();
        let tasks = TaskTracker::new();
        let (route, go) = slow(Ok(()));
        handoff
            .route(
                &endpoint,
                Version::V1_2,
                route,
                Some(Receipt {
                    id: String::from("R1"),
                    frame: Bytes::from("R1"),
                }),
                false,
                &tasks,
            )
            .await
            .unwrap();
        handoff
            .route(
                &endpoint,
                Version::V1_2,
                Box::pin(async { Ok(()) }),
                Some(Receipt {
                    id: String::from("R2"),
                    frame: Bytes::from("R2"),
                }),
                false,
                &tasks,
            )
            .await
            .unwrap();
        handoff.reply(&endpoint, Bytes::from("R3"), &tasks);
        handoff.finish(&endpoint, Some(Bytes::from("LAST")), &tasks);
        assert!(handoff.is_busy());
        assert_eq!(
            endpoint.outbox.queued_bytes(),
            0,
            "nothing written before the slow route"
        );
        go.send(()).unwrap();
        tasks.close();
        tasks.wait().await;
        assert_eq!(
            written(&endpoint).await,
            ["R1", "R2", "R3", "LAST"].map(Bytes::from)
        );
        assert!(!handoff.is_busy());
    }

    #[tokio::test]
    async fn overlapping_routes_run_together_and_their_receipts_keep_their_order() {
        let endpoint = endpoint();
        let mut handoff = Handoff::default();
        let tasks = TaskTracker::new();
        let (first, go_first) = slow(Ok(()));
        let (second, go_second) = slow(Ok(()));
        let (alone, go_alone) = slow(Ok(()));
        for (route, receipt, overlaps) in [
            (first, "R1", true),
            (second, "R2", true),
            (alone, "R3", false),
        ] {
            handoff
                .route(
                    &endpoint,
                    Version::V1_2,
                    route,
                    Some(Receipt {
                        id: String::from(receipt),
                        frame: Bytes::from(receipt),
                    }),
                    overlaps,
                    &tasks,
                )
                .await
                .unwrap();
        }
        handoff.reply(&endpoint, Bytes::from("R4"), &tasks);
        // The second finishes first: it ran beside the first, but its receipt waits.
        go_second.send(()).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(endpoint.outbox.queued_bytes(), 0, "R2 waits for R1");
        // A route that may not overlap has not started: releasing it now changes nothing
        // until the ones before it are done.
        go_alone.send(()).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(endpoint.outbox.queued_bytes(), 0);
        go_first.send(()).unwrap();
        tasks.close();
        tasks.wait().await;
        assert_eq!(
            written(&endpoint).await,
            ["R1", "R2", "R3", "R4"].map(Bytes::from)
        );
    }

    #[tokio::test]
    async fn a_deferred_fault_ends_the_session_with_its_error() {
        let endpoint = endpoint();
        let mut handoff = Handoff::default();
        let tasks = TaskTracker::new();
        let (route, go) = slow(Err(Fault::NotAccepted("full".into())));
        handoff
            .route(&endpoint, Version::V1_2, route, None, false, &tasks)
            .await
            .unwrap();
        handoff.reply(&endpoint, Bytes::from("never"), &tasks);
        go.send(()).unwrap();
        tasks.close();
        tasks.wait().await;
        let frames = written(&endpoint).await;
        assert_eq!(frames.len(), 1);
        let mut buf = BytesMut::from(&frames[0][..]);
        let Some(Decoded::Frame(error)) =
            decode(&mut buf, Version::V1_2, &Limits::default()).unwrap()
        else {
            panic!("an ERROR frame");
        };
        assert_eq!(error.get("message"), Some("message not accepted"));
        assert!(endpoint.outbox.is_closing());
        assert!(!handoff.is_busy());
    }

    #[tokio::test]
    async fn a_route_that_fails_at_once_is_the_callers_fault() {
        let mut handoff = Handoff::default();
        let tasks = TaskTracker::new();
        let result = handoff
            .route(
                &endpoint(),
                Version::V1_2,
                Box::pin(async { Err(Fault::NotAccepted("x".into())) }),
                None,
                false,
                &tasks,
            )
            .await;
        assert_eq!(result, Err(Fault::NotAccepted("x".into())));
    }
}
