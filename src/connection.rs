//! Drives one connection, whatever its transport: reads bytes into a buffer, decodes frames,
//! hands them to the [`Session`], enforces the CONNECT timeout, the heart-beat deadline and
//! the memory budget for a partial frame, tells the session when its writer has made room for
//! queue messages, and runs the writer task that drains the session's outbox in batches.
//!
//! Transports implement [`TransportIn`] and [`TransportOut`]; the driver knows nothing else of them.

use std::future::Future;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::broker::outbox::{Closing, Item, Written};
use crate::broker::Endpoint;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::session::{Fault, Flow, Session};
use crate::stomp::{Decoded, Decoder};

/// The read side of a transport.
pub trait TransportIn: Send {
    /// Appends received bytes to `buf`; `Ok(0)` means the peer closed. Must be cancel-safe.
    fn fill(&mut self, buf: &mut BytesMut) -> impl Future<Output = io::Result<usize>> + Send;
}

/// The write side of a transport.
pub trait TransportOut: Send + 'static {
    /// Writes whole frames, in order, in as few writes as the transport allows.
    fn write(&mut self, items: Vec<Item>) -> impl Future<Output = io::Result<()>> + Send;
    /// Closes the connection after what was written.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// How long a slow consumer has to take its ERROR frame before the connection is dropped.
const SLOW_CONSUMER_GOODBYE: Duration = Duration::from_secs(1);

/// Runs a connection to its end.
pub async fn run<I: TransportIn, O: TransportOut>(
    node: Arc<Node>,
    mut session: Session,
    inbound: I,
    outbound: O,
) {
    let writer_done = CancellationToken::new();
    let mut writer = node.tasks.spawn(write_loop(
        session.endpoint().clone(),
        outbound,
        writer_done.clone(),
        node.metrics.clone(),
    ));
    read_loop(&node, &mut session, inbound, &writer_done).await;
    // What was written in the last moments before this counts as not delivered.
    session
        .endpoint()
        .attachment
        .detached(crate::util::unix_ms());
    session.end();
    let grace = Duration::from_millis(node.server.shutdown_grace_ms);
    if timeout(grace, &mut writer).await.is_err() {
        debug!("writer did not finish within the grace period");
        writer.abort();
    }
}

async fn read_loop<I: TransportIn>(
    node: &Node,
    session: &mut Session,
    mut inbound: I,
    writer_done: &CancellationToken,
) {
    let limits = node.server.limits();
    let endpoint = session.endpoint().clone();
    let frame_timeout = Duration::from_millis(node.server.frame_timeout_ms);
    let mut buf = BytesMut::new();
    let mut decoder = Decoder::default();
    let connect_deadline = Instant::now() + node.server.connect_timeout();
    let mut last_read = Instant::now();
    // When the frame now arriving must be complete.
    let mut frame_deadline: Option<Instant> = None;
    // When this session closes for the node's drain, once it started.
    let mut drain_at: Option<Instant> = None;
    loop {
        loop {
            match decoder.decode(&mut buf, session.version(), &limits) {
                Ok(Some(Decoded::Frame(frame))) => {
                    if session.handle(frame).await == Flow::Close {
                        return;
                    }
                }
                Ok(Some(Decoded::HeartBeat)) => {}
                Ok(None) => break,
                Err(e) => {
                    session.close(Fault::MalformedFrame(e.to_string()));
                    return;
                }
            }
        }
        if decoder.in_frame() && session.check_partial_frame(buf.len()) == Flow::Close {
            return;
        }
        // An emptied buffer is given back, so an idle connection holds none; transports
        // allocate again only when data arrives.
        if buf.is_empty() && buf.capacity() > 0 {
            buf = BytesMut::new();
        }
        frame_deadline = match (decoder.in_frame(), frame_deadline) {
            (true, Some(at)) => Some(at),
            (true, None) => Some(Instant::now() + frame_timeout),
            (false, _) => None,
        };
        let idle_deadline = if session.is_connected() {
            session.read_timeout().map(|t| last_read + t)
        } else {
            Some(connect_deadline)
        };
        let deadline = [idle_deadline, frame_deadline, drain_at]
            .into_iter()
            .flatten()
            .min();
        let expired = async {
            match deadline {
                Some(at) => sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = writer_done.cancelled() => return,
            // A connected session's tenant token is a child of the node's shutdown token.
            _ = session.closing().unwrap_or(&node.shutdown).cancelled() => {
                session.close(match session.closed_because() {
                    Some(why) if !node.shutdown.is_cancelled() => Fault::TenantClosed(why),
                    _ => Fault::ShuttingDown,
                });
                return;
            }
            () = endpoint.kicked.notified() => {
                session.close(Fault::Disconnected);
                return;
            }
            _ = node.drain.started.cancelled(), if drain_at.is_none() => {
                drain_at = Some(node.drain.close_at());
            }
            // The writer took what was queued: a queue backlog may flow on.
            () = endpoint.outbox.room() => session.pump_queues(),
            read = inbound.fill(&mut buf) => match read {
                Ok(0) => {
                    debug!("peer closed the connection");
                    return;
                }
                Ok(_) => last_read = Instant::now(),
                Err(e) => {
                    debug!(error = %e, "read failed");
                    session.close(Fault::Transport(e.to_string()));
                    return;
                }
            },
            () = expired => {
                if drain_at.is_some_and(|at| at <= Instant::now()) {
                    session.close(Fault::Draining);
                } else if frame_deadline.is_some_and(|at| at <= Instant::now()) {
                    session.close(Fault::FrameTimeout(node.server.frame_timeout_ms));
                } else if session.is_connected() {
                    session.close(Fault::HeartBeatTimeout);
                } else {
                    session.close(Fault::ConnectTimeout(node.server.connect_timeout_ms));
                }
                return;
            }
        }
    }
}

async fn write_loop<O: TransportOut>(
    endpoint: Arc<Endpoint>,
    mut out: O,
    done: CancellationToken,
    metrics: Arc<Metrics>,
) {
    loop {
        let every = endpoint.heartbeat_out_ms.load(Ordering::Relaxed);
        let batch = if every == 0 {
            endpoint.outbox.next_batch().await
        } else {
            match timeout(Duration::from_millis(every), endpoint.outbox.next_batch()).await {
                Ok(batch) => batch,
                Err(_) => {
                    let beat = Item::from_static(b"\n");
                    if out.write(vec![beat]).await.is_err() {
                        break;
                    }
                    continue;
                }
            }
        };
        if !batch.items.is_empty() {
            // Stored messages' cursors move once their frames are written; a connection with
            // no stream subscription has none to look for.
            let marks: Vec<Written> = if endpoint.feeds_streams.load(Ordering::Acquire) {
                batch
                    .items
                    .iter()
                    .filter_map(|i| i.written.clone())
                    .collect()
            } else {
                Vec::new()
            };
            let written = if batch.then_close == Some(Closing::SlowConsumer) {
                // The batch is the slow-consumer ERROR itself: give it a moment to get out.
                timeout(SLOW_CONSUMER_GOODBYE, out.write(batch.items))
                    .await
                    .unwrap_or_else(|_| {
                        Err(io::Error::other("slow consumer did not read its ERROR"))
                    })
            } else {
                let in_write = batch.items.len();
                tokio::select! {
                    biased;
                    written = out.write(batch.items) => written,
                    // The peer stopped reading and the queue overflowed behind this write: no
                    // ERROR frame could reach it, so the connection is dropped.
                    () = endpoint.outbox.overflowed() => {
                        // What was being written is not known to have arrived either.
                        metrics.slow_consumer_closed(in_write + endpoint.outbox.dropped_frames());
                        debug!(session = %endpoint.session_id, "slow consumer dropped mid-write");
                        break;
                    }
                }
            };
            if let Err(e) = written {
                debug!(error = %e, "write failed");
                break;
            }
            if !marks.is_empty() {
                let now_ms = crate::util::unix_ms();
                for mark in &marks {
                    mark.record(now_ms);
                }
            }
        }
        if let Some(closing) = batch.then_close {
            if closing == Closing::SlowConsumer {
                metrics.slow_consumer_closed(endpoint.outbox.dropped_frames());
                debug!(session = %endpoint.session_id, "slow consumer closed");
            }
            out.close().await;
            break;
        }
    }
    endpoint.outbox.finish(None);
    done.cancel();
}
