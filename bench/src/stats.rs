//! What subscribers measure and how it is gathered without a shared lock per message: each
//! runtime thread owns its counters and latency histogram (locked once per read, never by
//! another thread until the end), and the one shared counter, the delivery total the
//! publisher's window needs, is bumped once per read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Notify;

/// The tool's time base: publish stamps and arrival times are nanoseconds since one `Instant`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// Latencies up to a minute, to 3 significant digits (0.1%).
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(100, 60_000_000_000, 3).expect("valid bounds")
}

/// One thread's share of the subscribers' measurements.
#[derive(Debug, Clone)]
pub struct ThreadStats {
    /// Publish-to-arrival latencies, nanoseconds.
    pub latency: Histogram<u64>,
    /// MESSAGE frames carrying a stamp.
    pub received: u64,
    /// Same publisher and sequence number as the last one this subscriber saw from it.
    pub duplicates: u64,
    /// A lower sequence number than already seen from that publisher (reordered, or a late
    /// duplicate: the tool cannot tell which without keeping every number).
    pub out_of_order: u64,
    /// MESSAGE frames whose body carries no stamp.
    pub unstamped: u64,
    /// Arrival time of the last stamped message, ns on the tool's clock.
    pub last_ns: u64,
    /// Bytes read by subscribers (WebSocket framing included).
    pub bytes: u64,
}

impl ThreadStats {
    pub fn new() -> ThreadStats {
        ThreadStats {
            latency: histogram(),
            received: 0,
            duplicates: 0,
            out_of_order: 0,
            unstamped: 0,
            last_ns: 0,
            bytes: 0,
        }
    }

    fn merge(&mut self, other: &ThreadStats) {
        self.latency.add(&other.latency).expect("same bounds");
        self.received += other.received;
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.unstamped += other.unstamped;
        self.last_ns = self.last_ns.max(other.last_ns);
        self.bytes += other.bytes;
    }
}

/// Every thread's stats, so the end of a run can merge them.
static REGISTRY: Mutex<Vec<Arc<Mutex<ThreadStats>>>> = Mutex::new(Vec::new());

thread_local! {
    static LOCAL: Arc<Mutex<ThreadStats>> = {
        let stats = Arc::new(Mutex::new(ThreadStats::new()));
        REGISTRY
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(stats.clone());
        stats
    };
}

/// Runs `f` on this thread's stats. Only this thread takes the lock until [`merged`] runs, so
/// it is never contended on the hot path.
pub fn with_local<R>(f: impl FnOnce(&mut ThreadStats) -> R) -> R {
    LOCAL.with(|stats| f(&mut stats.lock().unwrap_or_else(PoisonError::into_inner)))
}

/// Starts every thread's stats afresh, so a measurement counts only what follows.
pub fn reset_all() {
    for stats in REGISTRY
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
    {
        *stats.lock().unwrap_or_else(PoisonError::into_inner) = ThreadStats::new();
    }
}

/// Every thread's stats added up.
pub fn merged() -> ThreadStats {
    let mut total = ThreadStats::new();
    for stats in REGISTRY
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
    {
        total.merge(&stats.lock().unwrap_or_else(PoisonError::into_inner));
    }
    total
}

/// The deliveries received so far, shared with whoever waits for a count (the publishers'
/// window, the drain at the end).
#[derive(Debug)]
pub struct Progress {
    received: AtomicU64,
    /// The lowest count someone waits for; `u64::MAX` when nobody does, so readers skip the
    /// wake-up entirely.
    wake_at: AtomicU64,
    notify: Notify,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            received: AtomicU64::new(0),
            wake_at: AtomicU64::new(u64::MAX),
            notify: Notify::new(),
        }
    }
}

impl Progress {
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }

    /// Adds a read's deliveries.
    pub fn add(&self, n: u64) {
        if n == 0 {
            return;
        }
        let now = self.received.fetch_add(n, Ordering::AcqRel) + n;
        if now >= self.wake_at.load(Ordering::Acquire) {
            self.wake_at.store(u64::MAX, Ordering::Release);
            self.notify.notify_waiters();
        }
    }

    /// Waits until at least `target` deliveries were received; false if `timeout` passed first.
    pub async fn wait_for(&self, target: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.wake_at.fetch_min(target, Ordering::AcqRel);
            if self.received() >= target {
                return true;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => return self.received() >= target,
            }
        }
    }
}

/// Distinct error messages and how often each happened; the first few kinds are kept, so a
/// run where 10,000 connections fail the same way reports one line.
#[derive(Debug, Default)]
pub struct ErrorLog {
    kinds: Mutex<Vec<(String, u64)>>,
}

const ERROR_KINDS: usize = 16;

impl ErrorLog {
    pub fn record(&self, message: impl Into<String>) {
        let message = message.into();
        let mut kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(kind) = kinds.iter_mut().find(|(m, _)| *m == message) {
            kind.1 += 1;
        } else if kinds.len() < ERROR_KINDS {
            kinds.push((message, 1));
        } else if let Some(other) = kinds.iter_mut().find(|(m, _)| m == "(other errors)") {
            other.1 += 1;
        } else {
            kinds.push(("(other errors)".into(), 1));
        }
    }

    pub fn kinds(&self) -> Vec<(String, u64)> {
        self.kinds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn progress_wakes_waiter_at_target() {
        let progress = Arc::new(Progress::default());
        let p = progress.clone();
        let waiter = tokio::spawn(async move { p.wait_for(10, Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        progress.add(4);
        progress.add(6);
        assert!(waiter.await.unwrap());
        assert!(!progress.wait_for(11, Duration::from_millis(20)).await);
    }

    #[test]
    fn thread_stats_merge() {
        let mut a = ThreadStats::new();
        let mut b = ThreadStats::new();
        a.received = 3;
        a.last_ns = 10;
        a.latency.record(1_000).unwrap();
        b.received = 2;
        b.last_ns = 7;
        b.latency.record(5_000_000).unwrap();
        a.merge(&b);
        assert_eq!(a.received, 5);
        assert_eq!(a.last_ns, 10);
        assert_eq!(a.latency.len(), 2);
        assert!(a.latency.max() >= 5_000_000);
    }
}
