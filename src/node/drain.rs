//! Draining a node for a rolling upgrade: once started (`POST /admin/v1/drain`, or SIGTERM
//! with `server.drain_ms`), the node takes no new connection, `/readyz` answers 503 so load
//! balancers move on, and every session is closed at a random moment of the drain period with
//! an ERROR that asks the client to reconnect; the node shuts down once none is left (or the
//! period and `shutdown_grace_ms` are over).
//!
//! Each session picks its own moment, uniformly over the period, when it sees the drain start:
//! no list of sessions is kept for it, and the reconnections reach the other nodes as an even
//! stream instead of one burst. With durable delivery nothing is lost meanwhile: a message for
//! a user between two sessions waits in the store and the next session reads it from the
//! user's cursor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::Node;

/// A node's drain.
#[derive(Debug)]
pub struct Drain {
    /// Cancelled when the drain starts, and at shutdown (it is a child of the shutdown
    /// token): what accepts connections stops on it.
    pub started: CancellationToken,
    /// The period, in ms, once started.
    period_ms: AtomicU64,
    /// When it started (ms since the epoch), 0 before.
    started_at_ms: AtomicU64,
}

/// What `POST /admin/v1/drain` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainStart {
    /// The drain started now.
    Started,
    /// It was already draining (or shutting down); nothing changed.
    AlreadyDraining,
}

impl Drain {
    /// A drain that has not started; it counts as started once `shutdown` is cancelled.
    pub fn new(shutdown: &CancellationToken) -> Drain {
        Drain {
            started: shutdown.child_token(),
            period_ms: AtomicU64::new(0),
            started_at_ms: AtomicU64::new(0),
        }
    }

    /// True once the node stopped taking connections (draining or shutting down).
    pub fn is_draining(&self) -> bool {
        self.started.is_cancelled()
    }

    /// When a session that sees the drain now should close: a uniform random moment of the
    /// period still ahead.
    pub fn close_at(&self) -> Instant {
        let started = self.started_at_ms.load(Ordering::Acquire);
        let period = self.period_ms.load(Ordering::Acquire);
        let left = (started + period).saturating_sub(crate::util::unix_ms());
        let fraction = (crate::util::random_u64() >> 11) as f64 / (1u64 << 53) as f64;
        Instant::now() + Duration::from_millis(left).mul_f64(fraction)
    }

    fn begin(&self, period: Duration) -> DrainStart {
        if self.is_draining() {
            return DrainStart::AlreadyDraining;
        }
        let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
        self.period_ms.store(period_ms, Ordering::Release);
        self.started_at_ms
            .store(crate::util::unix_ms(), Ordering::Release);
        self.started.cancel();
        DrainStart::Started
    }
}

impl Node {
    /// Starts draining over `period`: no new connections, `/readyz` not ready, every session
    /// closed at a random moment of the period, then the node shuts down.
    pub fn drain(self: &Arc<Self>, period: Duration) -> DrainStart {
        let outcome = self.drain.begin(period);
        if outcome == DrainStart::Started {
            info!(
                period_ms = period.as_millis() as u64,
                connections = self.open_connections(),
                "draining"
            );
            tokio::spawn(finish_drain(self.clone(), period));
        }
        outcome
    }

    /// The drain as the admin API shows it.
    pub fn drain_status(&self) -> serde_json::Value {
        let started = self.drain.started_at_ms.load(Ordering::Acquire);
        json!({
            "node": self.node_id,
            "draining": started > 0,
            "period_ms": self.drain.period_ms.load(Ordering::Acquire),
            "started_at_ms": (started > 0).then_some(started),
            "connections": self.open_connections(),
        })
    }
}

/// Shuts the node down once its last connection closed, or when the period and the grace
/// after it are over (a client that ignores the ERROR must not hold the node forever).
async fn finish_drain(node: Arc<Node>, period: Duration) {
    let give_up = Instant::now() + period + Duration::from_millis(node.server.shutdown_grace_ms);
    while node.open_connections() > 0 && Instant::now() < give_up {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            () = node.shutdown.cancelled() => return,
        }
    }
    info!(left = node.open_connections(), "drained; shutting down");
    node.shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_drain_starts_once_and_spreads_closing_over_its_period() {
        let shutdown = CancellationToken::new();
        let drain = Drain::new(&shutdown);
        assert!(!drain.is_draining());
        assert_eq!(drain.begin(Duration::from_secs(10)), DrainStart::Started);
        assert_eq!(
            drain.begin(Duration::from_secs(1)),
            DrainStart::AlreadyDraining
        );
        let now = Instant::now();
        let moments: Vec<Duration> = (0..1000).map(|_| drain.close_at() - now).collect();
        assert!(moments.iter().all(|m| *m <= Duration::from_secs(10)));
        let early = moments
            .iter()
            .filter(|m| **m < Duration::from_secs(5))
            .count();
        assert!(
            (350..650).contains(&early),
            "{early} of 1000 in the first half"
        );
    }

    #[test]
    fn shutdown_counts_as_draining() {
        let shutdown = CancellationToken::new();
        let drain = Drain::new(&shutdown);
        shutdown.cancel();
        assert!(drain.is_draining());
        assert_eq!(
            drain.begin(Duration::from_secs(1)),
            DrainStart::AlreadyDraining
        );
    }
}
