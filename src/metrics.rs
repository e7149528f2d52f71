//! Node counters, rendered at `/metrics` in the Prometheus text format. Plain atomics: they
//! are bumped on the message path, so they take no lock.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a message was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A subscriber's outbox overflowed.
    SlowConsumer,
    /// The cluster bus was down and nobody here took it.
    ClusterUnavailable,
    /// A queue with no consumer was full.
    BacklogFull,
    /// A user message for a user connected nowhere.
    UserOffline,
    /// An ingress message that could not be routed (bad JSON, unknown code...).
    BadIngress,
}

impl DropReason {
    const ALL: [DropReason; 5] = [
        DropReason::SlowConsumer,
        DropReason::ClusterUnavailable,
        DropReason::BacklogFull,
        DropReason::UserOffline,
        DropReason::BadIngress,
    ];

    fn label(self) -> &'static str {
        match self {
            DropReason::SlowConsumer => "slow_consumer",
            DropReason::ClusterUnavailable => "cluster_unavailable",
            DropReason::BacklogFull => "backlog_full",
            DropReason::UserOffline => "user_offline",
            DropReason::BadIngress => "bad_ingress",
        }
    }
}

/// Why sessions ended with an ERROR, as labels of `stompbox_session_errors_total`.
pub const SESSION_ERRORS: [&str; 18] = [
    "authentication_denied",
    "access_denied",
    "policy_unavailable",
    "malformed_frame",
    "heartbeat_timeout",
    "connect_timeout",
    "frame_timeout",
    "shutdown",
    "draining",
    "tenant_closed",
    "disconnected",
    "banned",
    "transport_error",
    "not_accepted",
    "upstream_refused",
    "store_unavailable",
    "limit",
    "protocol_error",
];

/// A value owned elsewhere (a gauge, or a counter another part keeps), rendered with the
/// node's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The metric name.
    pub name: &'static str,
    /// Its `# HELP` text.
    pub help: &'static str,
    /// `counter` or `gauge`.
    pub kind: &'static str,
    /// The value now.
    pub value: u64,
    /// Labels, for a metric with a value per thing (`shard="host:port"`).
    pub labels: Vec<(&'static str, String)>,
}

impl Sample {
    /// A counter (only ever grows).
    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Sample {
        Sample {
            name,
            help,
            kind: "counter",
            value,
            labels: Vec::new(),
        }
    }

    /// A gauge (a level now).
    pub fn gauge(name: &'static str, help: &'static str, value: u64) -> Sample {
        Sample {
            name,
            help,
            kind: "gauge",
            value,
            labels: Vec::new(),
        }
    }

    /// This sample for one thing, named by a label (one more, when called again).
    pub fn labelled(mut self, name: &'static str, value: impl Into<String>) -> Sample {
        self.labels.push((name, value.into()));
        self
    }
}

/// The node's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Messages published on this node (API, STOMP SEND, ingress).
    pub published: AtomicU64,
    /// Deliveries into local subscriptions.
    pub delivered_local: AtomicU64,
    /// Messages sent on to other nodes (one per node).
    pub forwarded: AtomicU64,
    /// Messages received from other nodes.
    pub received_remote: AtomicU64,
    dropped: [AtomicU64; 5],
    session_errors: [AtomicU64; SESSION_ERRORS.len()],
    slow_consumers_closed: AtomicU64,
    /// What the message store did.
    pub store: StoreCounters,
}

/// The message store's counters.
#[derive(Debug, Default)]
pub struct StoreCounters {
    /// Messages stored: user messages, topic messages with history, durable queue messages.
    pub stored: AtomicU64,
    /// Messages the store refused or could not take (answered 503 / ERROR).
    pub refused: AtomicU64,
    /// Stored messages that reached this node's subscriptions by reading a gap from the
    /// store rather than from the cluster.
    pub filled: AtomicU64,
    /// Cursors written to the store.
    pub cursor_saves: AtomicU64,
    /// Cursors put back past deliveries that never counted (a connection ended just after).
    pub cursor_rewinds: AtomicU64,
    /// Durable queue entries claimed here from a node that is gone (or given back).
    pub queue_claimed: AtomicU64,
    /// Durable queue entries this node gave back (no consumer here took them, or their frame
    /// never reached a socket).
    pub queue_returned: AtomicU64,
}

impl Metrics {
    /// Counts a message not delivered.
    pub fn dropped(&self, why: DropReason) {
        self.dropped_many(why, 1);
    }

    /// Counts `n` messages not delivered.
    fn dropped_many(&self, why: DropReason, n: u64) {
        let at = DropReason::ALL.iter().position(|d| *d == why).unwrap_or(0);
        self.dropped[at].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a connection closed as a slow consumer and the `frames` it was not given.
    pub fn slow_consumer_closed(&self, frames: usize) {
        self.slow_consumers_closed.fetch_add(1, Ordering::Relaxed);
        self.dropped_many(DropReason::SlowConsumer, frames as u64);
    }

    /// Connections closed as slow consumers.
    pub fn slow_consumers_closed(&self) -> u64 {
        self.slow_consumers_closed.load(Ordering::Relaxed)
    }

    /// Counts a session ended by an ERROR with `label` (one of [`SESSION_ERRORS`]).
    pub fn session_error(&self, label: &str) {
        let at = SESSION_ERRORS
            .iter()
            .position(|l| *l == label)
            .unwrap_or(SESSION_ERRORS.len() - 1);
        self.session_errors[at].fetch_add(1, Ordering::Relaxed);
    }

    /// Messages dropped, by reason (every reason, in a fixed order).
    pub fn dropped_by_reason(&self) -> Vec<(String, u64)> {
        DropReason::ALL
            .iter()
            .zip(&self.dropped)
            .map(|(why, n)| (why.label().to_string(), n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Messages dropped for `why`.
    pub fn dropped_count(&self, why: DropReason) -> u64 {
        let at = DropReason::ALL.iter().position(|d| *d == why).unwrap_or(0);
        self.dropped[at].load(Ordering::Relaxed)
    }

    /// The Prometheus text, plus `extra` lines (gauges owned elsewhere).
    pub fn render(&self, extra: &[Sample]) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            &mut out,
            "stompbox_messages_published_total",
            "Messages published on this node.",
            self.published.load(Ordering::Relaxed),
        );
        let _ = writeln!(out, "# HELP stompbox_messages_routed_total Messages routed, by route.\n# TYPE stompbox_messages_routed_total counter");
        let _ = writeln!(
            out,
            "stompbox_messages_routed_total{{route=\"local\"}} {}",
            self.delivered_local.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "stompbox_messages_routed_total{{route=\"remote\"}} {}",
            self.forwarded.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "stompbox_messages_routed_total{{route=\"from_remote\"}} {}",
            self.received_remote.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP stompbox_messages_dropped_total Messages not delivered, by reason.\n# TYPE stompbox_messages_dropped_total counter");
        for why in DropReason::ALL {
            let _ = writeln!(
                out,
                "stompbox_messages_dropped_total{{reason=\"{}\"}} {}",
                why.label(),
                self.dropped_count(why)
            );
        }
        counter(
            &mut out,
            "stompbox_slow_consumers_closed_total",
            "Connections closed because they fell too far behind.",
            self.slow_consumers_closed(),
        );
        for (name, help, value) in [
            (
                "stompbox_stored_messages_total",
                "Messages stored before they were answered or delivered (user, topic with history, durable queue).",
                &self.store.stored,
            ),
            (
                "stompbox_store_refused_total",
                "Messages the store refused or could not take (answered 503 or ERROR).",
                &self.store.refused,
            ),
            (
                "stompbox_store_gap_fills_total",
                "Stored messages delivered here after reading a gap from the store.",
                &self.store.filled,
            ),
            (
                "stompbox_cursor_saves_total",
                "Cursors written to the store.",
                &self.store.cursor_saves,
            ),
            (
                "stompbox_cursor_rewinds_total",
                "Cursors put back past deliveries that never counted.",
                &self.store.cursor_rewinds,
            ),
            (
                "stompbox_queue_claimed_total",
                "Durable queue entries claimed here from a node that is gone, or given back, and delivered again.",
                &self.store.queue_claimed,
            ),
            (
                "stompbox_queue_returned_total",
                "Durable queue entries this node gave back to the queue.",
                &self.store.queue_returned,
            ),
        ] {
            counter(&mut out, name, help, value.load(Ordering::Relaxed));
        }
        let _ = writeln!(out, "# HELP stompbox_session_errors_total Sessions ended with an ERROR frame, by reason.\n# TYPE stompbox_session_errors_total counter");
        for (label, count) in SESSION_ERRORS.iter().zip(&self.session_errors) {
            let _ = writeln!(
                out,
                "stompbox_session_errors_total{{reason=\"{label}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        // The text format wants each metric's samples together, after its one HELP and TYPE.
        let mut names: Vec<&str> = Vec::new();
        for sample in extra {
            if !names.contains(&sample.name) {
                names.push(sample.name);
            }
        }
        let grouped = names
            .iter()
            .flat_map(|n| extra.iter().filter(move |s| s.name == *n));
        let mut described = std::collections::HashSet::new();
        for Sample {
            name,
            help,
            kind,
            value,
            labels,
        } in grouped
        {
            if described.insert(*name) {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            }
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let labels: Vec<String> = labels
                    .iter()
                    .map(|(key, text)| {
                        let text = text.replace('\\', "\\\\").replace('"', "\\\"");
                        format!("{key}=\"{text}\"")
                    })
                    .collect();
                let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
            }
        }
        out
    }
}
