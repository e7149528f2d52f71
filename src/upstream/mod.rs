//! A tenant's backend side: what clients SEND to an application prefix (`/app/...`, as with
//! Spring's `@MessageMapping`) and, opted into per kind, connection events, handed to the
//! tenant's backend through a Redis stream, a signed webhook, or both.
//!
//! Each way out is an [`outlet::Outlet`]: a queue bounded in bytes and one task delivering it
//! in order, in batches, with retries. A message counts as accepted once every way out took
//! it (the stream entry written, the webhook answered 2xx); only then does its SEND get its
//! RECEIPT. One that is not (a full queue, a webhook failing past its retries, Redis down) is
//! an ERROR to the client. Events have no client waiting: one not accepted is counted and
//! logged. Delivery is at least once: a batch tried again after a failure that hid a success
//! arrives twice, with the same item ids.

pub mod item;
pub mod outlet;
pub mod stream;
pub mod webhook;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::cluster::Backplane;
use crate::config::{EventKind, TenantConfig};
use crate::metrics::Sample;
use crate::util::Ids;
pub use item::{Item, ItemKind};
use outlet::Outlet;

/// Why the backend did not take a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The tenant names application prefixes but nothing receives them.
    #[error("no backend receives messages sent to {0}: the tenant has no [tenants.upstream] stream or webhook")]
    NoBackend(String),
    /// The queue for one way out is full.
    #[error("the queue for the backend's {sink} is full ({limit} bytes wait to go out)")]
    QueueFull {
        /// `stream` or `webhook`.
        sink: &'static str,
        /// The queue's limit.
        limit: usize,
    },
    /// The backend did not take it.
    #[error("the backend's {sink} did not take it: {reason}")]
    Failed {
        /// `stream` or `webhook`.
        sink: &'static str,
        /// Why.
        reason: String,
    },
    /// The node stopped before it could go out.
    #[error("the node stopped before it could go out")]
    Stopped,
}

/// Waits for every way out to take one message.
#[derive(Debug)]
pub struct Accepted(Vec<oneshot::Receiver<Result<(), UpstreamError>>>);

impl Accepted {
    /// Resolves once every way out took the message, or with the first that did not.
    pub async fn wait(self) -> Result<(), UpstreamError> {
        for taken in self.0 {
            taken.await.map_err(|_| UpstreamError::Stopped)??;
        }
        Ok(())
    }
}

/// How often at most a dropped event is logged (each is counted).
const DROP_LOG_EVERY_MS: u64 = 1_000;

/// A tenant's backend side on this node.
#[derive(Debug)]
pub struct Upstream {
    tenant: String,
    node: String,
    /// Application prefixes, without a trailing `/`.
    prefixes: Vec<String>,
    events: HashSet<EventKind>,
    outlets: Vec<Arc<Outlet>>,
    /// Item ids: the node id and a random part per process, so that they stay unique across
    /// a node's restarts.
    ids: Ids,
    dropped_events: AtomicU64,
    last_drop_log_ms: AtomicU64,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Upstream {
    /// The backend side of `config`'s tenant on node `node`; the stream goes through
    /// `cluster`.
    pub fn new(config: &TenantConfig, node: &str, cluster: &Arc<dyn Backplane>) -> Upstream {
        let u = &config.upstream;
        let mut outlets = Vec::new();
        if u.stream {
            let key = u
                .stream_key
                .clone()
                .unwrap_or_else(|| stream::default_key(&config.id));
            outlets.push(Arc::new(Outlet::new(
                Box::new(stream::Stream::new(cluster.clone(), key, u.stream_max_len)),
                stream::RETRIES,
                u.queue_bytes,
                u.batch_max,
            )));
        }
        if let (Some(url), Some(secret)) = (&u.webhook_url, &u.webhook_secret) {
            let uri = crate::web::client::parse_url(url).expect("checked with the config");
            outlets.push(Arc::new(Outlet::new(
                Box::new(webhook::Webhook::new(
                    &config.id,
                    uri,
                    secret,
                    Duration::from_millis(u.webhook_timeout_ms),
                )),
                u.webhook_retries,
                u.queue_bytes,
                u.batch_max,
            )));
        }
        Upstream {
            tenant: config.id.clone(),
            node: node.to_string(),
            prefixes: config
                .app_prefixes
                .iter()
                .map(|p| p.trim_end_matches('/').to_string())
                .collect(),
            events: u.events.iter().copied().collect(),
            outlets,
            ids: Ids::new(format!(
                "{node}-{:06x}",
                crate::util::random_u64() & 0xff_ffff
            )),
            dropped_events: AtomicU64::new(0),
            last_drop_log_ms: AtomicU64::new(0),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        }
    }

    /// Starts the delivery tasks. Called once the runtime runs.
    pub fn start(&self) {
        for outlet in &self.outlets {
            self.tasks.spawn(outlet.clone().run(self.stop.clone()));
        }
        self.tasks.close();
    }

    /// Stops once what is queued went out (or could not within a few seconds): called after
    /// the node's sessions closed, so that their last events go out too.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tasks.wait().await;
    }

    /// True when `dest` is under one of the application prefixes (`/app/echo` under `/app`).
    pub fn is_application(&self, dest: &str) -> bool {
        self.prefixes.iter().any(|p| {
            dest.strip_prefix(p.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|rest| !rest.is_empty())
        })
    }

    /// True when the backend wants events of `kind`.
    pub fn wants(&self, kind: EventKind) -> bool {
        !self.outlets.is_empty() && self.events.contains(&kind)
    }

    /// An item of `kind` for `session`, to fill in and hand over.
    pub fn item(&self, kind: ItemKind, session: &str, user: Option<&str>) -> Item {
        Item {
            kind,
            id: self.ids.next(),
            time_ms: crate::util::unix_ms(),
            tenant: self.tenant.clone(),
            node: self.node.clone(),
            session: session.to_string(),
            user: user.map(str::to_string),
            fields: Vec::new(),
            headers: Vec::new(),
            body: None,
        }
    }

    /// Hands a message over: queued at once on every way out (or refused at once), accepted
    /// once each took it.
    pub fn message(&self, item: Item) -> Result<Accepted, UpstreamError> {
        if self.outlets.is_empty() {
            let dest = item
                .fields
                .iter()
                .find(|(n, _)| *n == "destination")
                .map_or_else(String::new, |(_, d)| d.clone());
            return Err(UpstreamError::NoBackend(dest));
        }
        let item = Arc::new(item);
        let mut taken = Vec::with_capacity(self.outlets.len());
        for outlet in &self.outlets {
            let (done, result) = oneshot::channel();
            outlet.offer(item.clone(), Some(done))?;
            taken.push(result);
        }
        Ok(Accepted(taken))
    }

    /// Hands an event over; one that cannot be queued is counted and logged.
    pub fn event(&self, item: Item) {
        let item = Arc::new(item);
        for outlet in &self.outlets {
            if let Err(e) = outlet.offer(item.clone(), None) {
                self.dropped_events.fetch_add(1, Ordering::Relaxed);
                let now = crate::util::unix_ms();
                let last = self.last_drop_log_ms.load(Ordering::Relaxed);
                if now >= last + DROP_LOG_EVERY_MS
                    && self
                        .last_drop_log_ms
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    warn!(tenant = %self.tenant, error = %e, dropped = self.dropped_events.load(Ordering::Relaxed), "connection events for the backend are being dropped");
                }
            }
        }
    }

    /// Its counters and gauges for `/metrics`, labelled by tenant and way out.
    pub fn samples(&self) -> Vec<Sample> {
        let mut samples = Vec::new();
        for outlet in &self.outlets {
            let s = &outlet.stats;
            let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
            for sample in [
                Sample::counter(
                    "stompbox_upstream_delivered_total",
                    "Items (messages and events) the tenant's backend took, by tenant and sink.",
                    count(&s.delivered),
                ),
                Sample::counter(
                    "stompbox_upstream_failed_tries_total",
                    "Tries of a batch for the backend that failed, by tenant and sink.",
                    count(&s.failed_tries),
                ),
                Sample::counter(
                    "stompbox_upstream_refused_total",
                    "Items refused because the queue for the backend was full, by tenant and sink.",
                    count(&s.refused_full),
                ),
                Sample::counter(
                    "stompbox_upstream_given_up_total",
                    "Items given up after their last try, by tenant and sink.",
                    count(&s.given_up),
                ),
                Sample::gauge(
                    "stompbox_upstream_queued_bytes",
                    "Bytes of items waiting for the backend, by tenant and sink.",
                    outlet.queued_bytes() as u64,
                ),
            ] {
                samples.push(
                    sample
                        .labelled("tenant", &self.tenant)
                        .labelled("sink", outlet.name()),
                );
            }
        }
        if !self.events.is_empty() {
            samples.push(
                Sample::counter(
                    "stompbox_upstream_events_dropped_total",
                    "Connection events that could not be queued for the backend, by tenant.",
                    self.dropped_events.load(Ordering::Relaxed),
                )
                .labelled("tenant", &self.tenant),
            );
        }
        samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_destinations_are_under_a_prefix() {
        let mut config = TenantConfig::new("t");
        config.app_prefixes = vec!["/app".into(), "/backend/".into()];
        let cluster: Arc<dyn Backplane> = Arc::new(crate::cluster::standalone::Standalone);
        let upstream = Upstream::new(&config, "n1", &cluster);
        assert!(upstream.is_application("/app/echo"));
        assert!(upstream.is_application("/backend/x/y"));
        assert!(!upstream.is_application("/app"));
        assert!(!upstream.is_application("/app/"));
        assert!(!upstream.is_application("/apple/x"));
        assert!(!upstream.is_application("/topic/app"));
    }

    #[test]
    fn without_a_way_out_a_message_is_refused_with_the_reason() {
        let config = TenantConfig::new("t");
        let cluster: Arc<dyn Backplane> = Arc::new(crate::cluster::standalone::Standalone);
        let upstream = Upstream::new(&config, "n1", &cluster);
        let mut item = upstream.item(ItemKind::Message, "s1", None);
        item.fields.push(("destination", "/app/echo".into()));
        let err = upstream.message(item).unwrap_err();
        assert!(err.to_string().contains("/app/echo"), "{err}");
        assert!(!upstream.wants(EventKind::Connect));
    }
}
