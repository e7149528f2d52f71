//! The session driven alone, frame by frame: a context with real tenants and brokers on a
//! standalone backplane (or a backplane that holds messages until told), no sockets.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

use super::*;
use crate::broker::{Content, Interest, Target};
use crate::cluster::standalone::Standalone;
use crate::cluster::{Backplane, ClusterError, Forwarded, LocalNode};
use crate::config::{Config, Overrides};
use crate::metrics::{Metrics, Sample};
use crate::policy::{Policy, PolicyError};
use crate::stomp::{decode, Decoded, Limits as CodecLimits};

struct Harness {
    ctx: Arc<Context>,
}

fn harness() -> Harness {
    harness_with(Arc::new(Standalone), None, "")
}

fn harness_with(
    cluster: Arc<dyn Backplane>,
    policy: Option<Arc<dyn Policy>>,
    toml: &str,
) -> Harness {
    let config = Config::from_toml(toml)
        .unwrap()
        .finish(Overrides::default())
        .unwrap();
    let metrics = Arc::new(Metrics::default());
    let tenants = Tenants::from_iter(config.tenants.iter().map(|t| {
        let node_backlog = Arc::new(crate::broker::Budget::new(config.server.node_backlog_bytes));
        let tenant = Tenant::new(
            t,
            &config.server,
            &node_backlog,
            Default::default(),
            cluster.clone(),
            metrics.clone(),
            "n1",
        );
        match &policy {
            Some(p) => tenant.with_policy(p.clone()),
            None => tenant,
        }
    }));
    Harness {
        ctx: Arc::new(Context {
            limits: crate::node::session_limits(&config.server),
            tenants: Arc::new(tenants),
            ids: Arc::new(Ids::new("n1".into())),
            tasks: TaskTracker::new(),
            metrics,
        }),
    }
}

impl Harness {
    fn session(&self) -> Session {
        Session::new(
            self.ctx.clone(),
            Peer {
                transport: TransportKind::Tcp,
                remote_addr: None,
                tenant: None,
                request_headers: Vec::new(),
            },
        )
    }

    /// A session connected as `user` with STOMP 1.2 (CONNECTED taken).
    async fn connected(&self, user: &str) -> Session {
        let mut s = self.session();
        let flow = s
            .handle(frame(
                Command::Connect,
                &[("accept-version", "1.2"), ("login", user)],
            ))
            .await;
        assert_eq!(flow, Flow::Continue);
        assert_eq!(out(&s).await[0].command, Command::Connected);
        s
    }

    fn tenant(&self) -> Arc<Tenant> {
        self.ctx.tenants.default_tenant().unwrap().clone()
    }
}

fn frame(command: Command, headers: &[(&str, &str)]) -> Frame {
    let mut f = Frame::new(command);
    for (k, v) in headers {
        f = f.header(*k, *v);
    }
    f
}

fn send(dest: &str, body: &str, headers: &[(&str, &str)]) -> Frame {
    frame(Command::Send, &[&[("destination", dest)], headers].concat())
        .body(Bytes::from(body.to_string()))
}

/// Every frame queued on the session's outbox now.
async fn out(s: &Session) -> Vec<Frame> {
    let mut frames = Vec::new();
    loop {
        let batch =
            match tokio::time::timeout(Duration::ZERO, s.endpoint().outbox.next_batch()).await {
                Ok(batch) => batch,
                Err(_) => return frames,
            };
        let mut bytes = BytesMut::new();
        for item in &batch.items {
            bytes.extend_from_slice(&item.head);
            bytes.extend_from_slice(&item.tail);
        }
        while let Some(decoded) =
            decode(&mut bytes, Version::V1_2, &CodecLimits::default()).unwrap()
        {
            if let Decoded::Frame(f) = decoded {
                frames.push(f);
            }
        }
        if batch.then_close.is_some() || batch.items.is_empty() {
            return frames;
        }
    }
}

async fn expect_error(s: &mut Session, f: Frame, message: &str) -> Frame {
    assert_eq!(s.handle(f).await, Flow::Close);
    let frames = out(s).await;
    let error = frames.last().expect("an ERROR frame").clone();
    assert_eq!(error.command, Command::Error, "{frames:?}");
    assert_eq!(error.get("message"), Some(message), "{error:?}");
    error
}

#[tokio::test]
async fn the_highest_common_version_is_chosen() {
    let h = harness();
    for (offer, chosen) in [
        (Some("1.0,1.1"), "1.1"),
        (Some("1.2,1.0"), "1.2"),
        (None, "1.0"),
    ] {
        let mut s = h.session();
        let headers: Vec<(&str, &str)> = offer.map(|o| ("accept-version", o)).into_iter().collect();
        s.handle(frame(Command::Connect, &headers)).await;
        let connected = &out(&s).await[0];
        assert_eq!(connected.get("version"), Some(chosen));
        assert_eq!(s.version().as_str(), chosen);
    }
}

#[tokio::test]
async fn no_version_in_common_lists_the_servers_versions() {
    let h = harness();
    let mut s = h.session();
    let error = expect_error(
        &mut s,
        frame(Command::Connect, &[("accept-version", "2.0")]),
        "unsupported STOMP version",
    )
    .await;
    assert_eq!(error.get("version"), Some("1.0,1.1,1.2"));
}

#[tokio::test]
async fn heart_beats_follow_the_specs_rule() {
    let h = harness();
    let mut s = h.session();
    s.handle(frame(
        Command::Connect,
        &[("accept-version", "1.2"), ("heart-beat", "1000,5000")],
    ))
    .await;
    let connected = &out(&s).await[0];
    assert_eq!(
        connected.get("heart-beat"),
        Some("1000,1000"),
        "the server's offer, its floor"
    );
    // In: the larger of the client's 1000 and the server's 1000, times the tolerance (2).
    assert_eq!(s.read_timeout(), Some(Duration::from_secs(2)));
    // Out: the larger of the server's 1000 and the client's 5000.
    assert_eq!(s.endpoint().heartbeat_out_ms.load(Ordering::Relaxed), 5_000);

    let mut silent = h.session();
    silent
        .handle(frame(
            Command::Connect,
            &[("accept-version", "1.2"), ("heart-beat", "0,0")],
        ))
        .await;
    assert_eq!(silent.read_timeout(), None);
    assert_eq!(
        silent.endpoint().heartbeat_out_ms.load(Ordering::Relaxed),
        0
    );

    let mut huge = h.session();
    huge.handle(frame(
        Command::Connect,
        &[
            ("accept-version", "1.2"),
            ("heart-beat", "18446744073709551615,1"),
        ],
    ))
    .await;
    assert!(
        huge.read_timeout().unwrap() <= Duration::from_secs(2 * 24 * 3600),
        "clamped"
    );

    let mut bad = h.session();
    expect_error(
        &mut bad,
        frame(
            Command::Connect,
            &[("accept-version", "1.2"), ("heart-beat", "soon")],
        ),
        "invalid heart-beat header",
    )
    .await;
}

#[tokio::test]
async fn connect_comes_first_and_once() {
    let h = harness();
    let mut s = h.session();
    expect_error(&mut s, send("/topic/a", "x", &[]), "expected CONNECT").await;
    assert_eq!(
        s.handle(frame(Command::Connect, &[])).await,
        Flow::Close,
        "closed stays closed"
    );

    let mut twice = h.connected("alice").await;
    expect_error(
        &mut twice,
        frame(Command::Connect, &[]),
        "already connected",
    )
    .await;
}

#[tokio::test]
async fn the_user_comes_from_the_policy() {
    let h = harness();
    let s = h.connected("alice").await;
    assert_eq!(s.user(), Some("alice"));
    assert!(s.is_connected());
    assert_eq!(h.tenant().broker.user_sessions("alice"), 1);
    drop(s);
    assert_eq!(
        h.tenant().broker.user_sessions("alice"),
        0,
        "dropping the session ends it"
    );
}

#[tokio::test]
async fn subscribe_receive_unsubscribe() {
    let h = harness();
    let mut alice = h.connected("alice").await;
    let mut bob = h.connected("bob").await;
    alice
        .handle(frame(
            Command::Subscribe,
            &[
                ("id", "s1"),
                ("destination", "/topic/news"),
                ("receipt", "r1"),
            ],
        ))
        .await;
    let receipt = &out(&alice).await[0];
    assert_eq!(
        (receipt.command, receipt.get("receipt-id")),
        (Command::Receipt, Some("r1"))
    );

    bob.handle(send("/topic/news", "hello", &[("x-kind", "greeting")]))
        .await;
    let message = &out(&alice).await[0];
    assert_eq!(message.command, Command::Message);
    assert_eq!(message.get("subscription"), Some("s1"));
    assert_eq!(message.get("destination"), Some("/topic/news"));
    assert_eq!(message.get("x-kind"), Some("greeting"));
    assert_eq!(message.body.as_ref(), b"hello");
    assert_eq!(message.get("ack"), None, "auto mode has no ack header");

    alice
        .handle(frame(Command::Unsubscribe, &[("id", "s1")]))
        .await;
    bob.handle(send("/topic/news", "again", &[])).await;
    assert!(out(&alice).await.is_empty());
    expect_error(
        &mut alice,
        frame(Command::Unsubscribe, &[("id", "s1")]),
        "unknown subscription",
    )
    .await;
}

#[tokio::test]
async fn user_destinations_reach_every_session_of_the_user() {
    let h = harness();
    let mut tab1 = h.connected("alice").await;
    let mut tab2 = h.connected("alice").await;
    let mut bob = h.connected("bob").await;
    for tab in [&mut tab1, &mut tab2] {
        tab.handle(frame(
            Command::Subscribe,
            &[("id", "1"), ("destination", "/user/queue/notice")],
        ))
        .await;
    }
    bob.handle(send("/user/alice/queue/notice", "hi", &[]))
        .await;
    for tab in [&tab1, &tab2] {
        let m = &out(tab).await[0];
        assert_eq!(m.get("destination"), Some("/user/queue/notice"));
        assert_eq!(m.body.as_ref(), b"hi");
    }
}

#[tokio::test]
async fn subscription_errors() {
    let h = harness();
    let error = expect_error(
        &mut h.connected("alice").await,
        frame(
            Command::Subscribe,
            &[("destination", "/topic/a"), ("receipt", "r9")],
        ),
        "missing id header",
    )
    .await;
    assert_eq!(
        error.get("receipt-id"),
        Some("r9"),
        "an ERROR answers the frame's receipt"
    );

    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[("id", "1"), ("destination", "/topic/b")],
            "duplicate subscription id",
        ),
        (
            &[("id", "2"), ("destination", "/elsewhere/a")],
            "invalid destination",
        ),
        (
            &[
                ("id", "2"),
                ("destination", "/topic/a"),
                ("ack", "sometimes"),
            ],
            "invalid ack mode",
        ),
        (&[("id", "2")], "missing destination header"),
    ];
    for (headers, message) in cases {
        let mut s = h.connected("alice").await;
        s.handle(frame(
            Command::Subscribe,
            &[("id", "1"), ("destination", "/topic/a")],
        ))
        .await;
        expect_error(&mut s, frame(Command::Subscribe, headers), message).await;
    }

    let mut s = h.connected("alice").await;
    expect_error(&mut s, frame(Command::Message, &[]), "unexpected frame").await;
}

#[tokio::test]
async fn too_many_subscriptions() {
    let h = harness_with(
        Arc::new(Standalone),
        None,
        "[server]\nmax_subscriptions = 2\n",
    );
    let mut s = h.connected("alice").await;
    for id in ["1", "2"] {
        assert_eq!(
            s.handle(frame(
                Command::Subscribe,
                &[("id", id), ("destination", "/topic/a")]
            ))
            .await,
            Flow::Continue
        );
    }
    expect_error(
        &mut s,
        frame(
            Command::Subscribe,
            &[("id", "3"), ("destination", "/topic/a")],
        ),
        "too many subscriptions",
    )
    .await;
    let text = h.ctx.metrics.render(&[]);
    assert!(
        text.contains("stompbox_session_errors_total{reason=\"limit\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn stomp_1_0_subscriptions_are_named_by_their_destination() {
    let h = harness();
    let mut s = h.session();
    s.handle(frame(Command::Connect, &[("login", "alice")]))
        .await;
    out(&s).await;
    s.handle(frame(Command::Subscribe, &[("destination", "/topic/a")]))
        .await;
    s.handle(frame(Command::Unsubscribe, &[("destination", "/topic/a")]))
        .await;
    assert!(s.is_connected());
}

#[tokio::test]
async fn client_individual_acks_and_nacks_requeue_to_another_consumer() {
    let h = harness();
    let mut first = h.connected("alice").await;
    let mut second = h.connected("bob").await;
    let mut producer = h.connected("carol").await;
    first
        .handle(frame(
            Command::Subscribe,
            &[
                ("id", "q"),
                ("destination", "/queue/jobs"),
                ("ack", "client-individual"),
            ],
        ))
        .await;
    producer.handle(send("/queue/jobs", "job-1", &[])).await;
    let message = out(&first).await.remove(0);
    let ack = message
        .get("ack")
        .expect("client modes carry an ack id")
        .to_string();
    // A second consumer joins; the NACKed message goes to it.
    second
        .handle(frame(
            Command::Subscribe,
            &[("id", "q"), ("destination", "/queue/jobs")],
        ))
        .await;
    first.handle(frame(Command::Nack, &[("id", &ack)])).await;
    let redelivered = out(&second).await;
    assert_eq!(redelivered.len(), 1, "{redelivered:?}");
    assert_eq!(redelivered[0].body.as_ref(), b"job-1");

    // An ACK settles; acking it again is no error.
    producer.handle(send("/queue/jobs", "job-2", &[])).await;
    let got: Vec<Frame> = [out(&first).await, out(&second).await].concat();
    let to_first = got.iter().find(|m| m.get("ack").is_some());
    if let Some(m) = to_first {
        let id = m.get("ack").unwrap().to_string();
        assert_eq!(
            first.handle(frame(Command::Ack, &[("id", &id)])).await,
            Flow::Continue
        );
        assert_eq!(
            first.handle(frame(Command::Ack, &[("id", &id)])).await,
            Flow::Continue
        );
    }
    expect_error(
        &mut first,
        frame(Command::Ack, &[("id", "n1-999-1")]),
        "unknown message",
    )
    .await;
}

#[tokio::test]
async fn unacknowledged_messages_go_back_to_the_queue_when_the_session_ends() {
    let h = harness();
    let mut holder = h.connected("alice").await;
    let mut producer = h.connected("carol").await;
    holder
        .handle(frame(
            Command::Subscribe,
            &[
                ("id", "q"),
                ("destination", "/queue/jobs"),
                ("ack", "client"),
            ],
        ))
        .await;
    producer.handle(send("/queue/jobs", "job-1", &[])).await;
    producer.handle(send("/queue/jobs", "job-2", &[])).await;
    let held = out(&holder).await;
    assert_eq!(held.len(), 2);
    // A cumulative ACK of the first leaves the second unacknowledged.
    let first_ack = held[0].get("ack").unwrap().to_string();
    holder
        .handle(frame(Command::Ack, &[("id", &first_ack)]))
        .await;
    holder.end();
    let mut next = h.connected("bob").await;
    next.handle(frame(
        Command::Subscribe,
        &[("id", "q"), ("destination", "/queue/jobs")],
    ))
    .await;
    let got = out(&next).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].body.as_ref(), b"job-2");
}

#[tokio::test]
async fn transactions_hold_sends_until_commit() {
    let h = harness();
    let mut sub = h.connected("alice").await;
    let mut tx = h.connected("bob").await;
    sub.handle(frame(
        Command::Subscribe,
        &[("id", "1"), ("destination", "/topic/t")],
    ))
    .await;
    tx.handle(frame(Command::Begin, &[("transaction", "t1")]))
        .await;
    tx.handle(send("/topic/t", "in t1", &[("transaction", "t1")]))
        .await;
    assert!(out(&sub).await.is_empty(), "nothing before COMMIT");
    tx.handle(frame(
        Command::Commit,
        &[("transaction", "t1"), ("receipt", "c1")],
    ))
    .await;
    let got = out(&sub).await;
    assert_eq!(got[0].body.as_ref(), b"in t1");
    assert_eq!(
        got[0].get("transaction"),
        None,
        "the transaction header stays with the sender"
    );
    assert_eq!(out(&tx).await[0].get("receipt-id"), Some("c1"));

    tx.handle(frame(Command::Begin, &[("transaction", "t2")]))
        .await;
    tx.handle(send("/topic/t", "aborted", &[("transaction", "t2")]))
        .await;
    tx.handle(frame(Command::Abort, &[("transaction", "t2")]))
        .await;
    assert!(out(&sub).await.is_empty());
    expect_error(
        &mut tx,
        frame(Command::Commit, &[("transaction", "t2")]),
        "unknown transaction",
    )
    .await;
}

#[tokio::test]
async fn transaction_limits() {
    let h = harness_with(
        Arc::new(Standalone),
        None,
        "[server]\nmax_transactions = 1\nmax_transaction_frames = 1\n",
    );
    let mut s = h.connected("alice").await;
    s.handle(frame(Command::Begin, &[("transaction", "a")]))
        .await;
    expect_error(
        &mut s,
        frame(Command::Begin, &[("transaction", "b")]),
        "too many transactions",
    )
    .await;

    let mut s = h.connected("alice").await;
    s.handle(frame(Command::Begin, &[("transaction", "a")]))
        .await;
    expect_error(
        &mut s,
        frame(Command::Begin, &[("transaction", "a")]),
        "duplicate transaction",
    )
    .await;

    let mut s = h.connected("alice").await;
    s.handle(frame(Command::Begin, &[("transaction", "a")]))
        .await;
    s.handle(send("/topic/t", "1", &[("transaction", "a")]))
        .await;
    expect_error(
        &mut s,
        send("/topic/t", "2", &[("transaction", "a")]),
        "transaction too large",
    )
    .await;

    let mut s = h.connected("alice").await;
    expect_error(
        &mut s,
        send("/topic/t", "x", &[("transaction", "nope")]),
        "unknown transaction",
    )
    .await;
}

#[tokio::test]
async fn disconnect_answers_its_receipt_last() {
    let h = harness();
    let mut s = h.connected("alice").await;
    assert_eq!(
        s.handle(frame(Command::Disconnect, &[("receipt", "bye")]))
            .await,
        Flow::Close
    );
    let frames = out(&s).await;
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].get("receipt-id"), Some("bye"));
    assert!(s.endpoint().outbox.is_closing());
}

#[tokio::test]
async fn driver_faults_end_the_session_with_their_error() {
    let h = harness();
    for (fault, message) in [
        (Fault::HeartBeatTimeout, "heart-beat timeout"),
        (Fault::ShuttingDown, "server shutting down"),
        (Fault::MalformedFrame("bad".into()), "malformed frame"),
    ] {
        let mut s = h.connected("alice").await;
        s.close(fault);
        let error = out(&s).await.remove(0);
        assert_eq!(error.get("message"), Some(message));
        s.close(Fault::Transport("again".into()));
        assert!(out(&s).await.is_empty(), "one ERROR only");
    }
}

#[tokio::test]
async fn a_broker_refusal_is_an_error_for_the_sender() {
    let h = harness_with(
        Arc::new(Standalone),
        None,
        "[server]\nmax_queue_backlog = 1\n",
    );
    let mut s = h.connected("alice").await;
    s.handle(send("/queue/nobody", "1", &[])).await;
    expect_error(
        &mut s,
        send("/queue/nobody", "2", &[]),
        "message not accepted",
    )
    .await;
}

/// A policy that denies one destination and cannot decide another.
#[derive(Debug)]
struct Picky;

#[async_trait]
impl Policy for Picky {
    async fn authenticate(&self, info: &ConnectInfo) -> Result<Principal, PolicyError> {
        match info.header("login") {
            Some("mallory") => Err(PolicyError::Denied("not welcome".into())),
            Some("crash") => Err(PolicyError::Unavailable("the plugin trapped".into())),
            user => Ok(Principal {
                user: user.map(str::to_string),
                attributes: Vec::new(),
            }),
        }
    }

    async fn authorize(&self, _: &Principal, _: Operation, dest: &str) -> Result<(), PolicyError> {
        match dest {
            "/topic/secret" => Err(PolicyError::Denied("secret".into())),
            "/topic/broken" => Err(PolicyError::Unavailable("deadline".into())),
            _ => Ok(()),
        }
    }

    async fn resolve_channel(&self, _: &str) -> Result<Option<String>, PolicyError> {
        Ok(None)
    }
}

#[tokio::test]
async fn denied_and_unavailable_policies_are_told_apart() {
    let h = harness_with(Arc::new(Standalone), Some(Arc::new(Picky)), "");
    let mut s = h.session();
    let denied = expect_error(
        &mut s,
        frame(Command::Connect, &[("login", "mallory")]),
        "authentication failed",
    )
    .await;
    assert_eq!(denied.body.as_ref(), b"not welcome");
    let mut s = h.session();
    let down = expect_error(
        &mut s,
        frame(Command::Connect, &[("login", "crash")]),
        "authentication failed",
    )
    .await;
    assert!(String::from_utf8_lossy(&down.body).contains("unavailable"));

    let mut s = h.connected("alice").await;
    expect_error(
        &mut s,
        frame(
            Command::Subscribe,
            &[("id", "1"), ("destination", "/topic/secret")],
        ),
        "access denied",
    )
    .await;
    let mut s = h.connected("alice").await;
    let error = expect_error(&mut s, send("/topic/broken", "x", &[]), "access denied").await;
    assert!(String::from_utf8_lossy(&error.body).contains("may not send to /topic/broken"));

    let text = h.ctx.metrics.render(&[]);
    for (reason, n) in [
        ("authentication_denied", 1),
        ("access_denied", 1),
        ("policy_unavailable", 2),
    ] {
        let line = format!("stompbox_session_errors_total{{reason=\"{reason}\"}} {n}");
        assert!(text.contains(&line), "{line} in\n{text}");
    }
}

/// A backplane whose user messages wait until [`Held::release`]: a Redis that is slow to
/// answer a presence read.
#[derive(Debug, Default)]
struct Held {
    open: Notify,
    released: std::sync::atomic::AtomicBool,
}

impl Held {
    fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
        self.open.notify_waiters();
    }
}

#[async_trait]
impl Backplane for Held {
    fn start(self: Arc<Self>, _: Arc<dyn LocalNode>) {}
    async fn stop(&self) {}
    fn interest(&self, _: &str, _: &Interest) {}
    async fn to_user(
        &self,
        _: &str,
        _: &str,
        _: &str,
        _: &Content,
        _: Option<crate::broker::Position>,
        _: crate::cluster::Holders<'_>,
    ) -> Result<Forwarded, ClusterError> {
        while !self.released.load(Ordering::SeqCst) {
            let opened = self.open.notified();
            if self.released.load(Ordering::SeqCst) {
                break;
            }
            opened.await;
        }
        Ok(Forwarded::default())
    }
    async fn settled(&self) -> Result<(), ClusterError> {
        Ok(())
    }
    async fn to_topic(
        &self,
        _: &str,
        _: &str,
        _: &Content,
        _: Option<crate::broker::Position>,
    ) -> Result<Forwarded, ClusterError> {
        Ok(Forwarded::default())
    }
    async fn to_queue(&self, _: &str, _: &str, _: &Content) -> Result<Forwarded, ClusterError> {
        Ok(Forwarded::default())
    }
    async fn append_stream(
        &self,
        _: &str,
        _: &[&(dyn crate::cluster::StreamEntry + Sync)],
        _: usize,
    ) -> Result<(), ClusterError> {
        Ok(())
    }
    async fn ask_others(
        &self,
        _: &crate::cluster::Query,
    ) -> Result<crate::cluster::Replies, ClusterError> {
        Ok(Default::default())
    }
    async fn ban(&self, _: &str, _: &str, _: u64) -> Result<(), ClusterError> {
        Ok(())
    }
    async fn cache_get(&self, _: &str, _: &str) -> Result<Option<String>, ClusterError> {
        Ok(None)
    }
    async fn cache_set(&self, _: &str, _: &str, _: &str, _: u64) -> Result<(), ClusterError> {
        Ok(())
    }
    async fn cache_delete(&self, _: &str, _: &str) -> Result<(), ClusterError> {
        Ok(())
    }
    async fn tenant_documents(&self) -> Result<Vec<(String, String)>, ClusterError> {
        Ok(Vec::new())
    }
    async fn tenant_document(&self, _: &str) -> Result<Option<String>, ClusterError> {
        Ok(None)
    }
    async fn put_tenant_document(&self, _: &str, _: &str) -> Result<(), ClusterError> {
        Ok(())
    }
    async fn put_plugin(&self, _: &str, _: Option<&[u8]>) -> Result<(), ClusterError> {
        Ok(())
    }
    async fn plugin(&self, _: &str) -> Result<Option<Vec<u8>>, ClusterError> {
        Ok(None)
    }
    fn is_shared(&self) -> bool {
        false
    }
    fn is_ready(&self) -> bool {
        true
    }
    fn describe(&self) -> serde_json::Value {
        serde_json::json!({"mode": "held"})
    }
    fn metrics(&self) -> Vec<Sample> {
        Vec::new()
    }
}

#[tokio::test]
async fn a_send_waiting_on_the_cluster_does_not_stop_the_session() {
    let held = Arc::new(Held::default());
    let h = harness_with(held.clone(), None, "");
    let mut bob = h.connected("bob").await;
    bob.handle(frame(
        Command::Subscribe,
        &[("id", "1"), ("destination", "/user/queue/n")],
    ))
    .await;
    let mut alice = h.connected("alice").await;
    let sends = [
        send("/user/bob/queue/n", "1", &[("receipt", "r1")]),
        send("/user/bob/queue/n", "2", &[]),
    ];
    for f in sends {
        // Returns at once: the routes wait in the session's sequencer, not in its reader.
        let flow = tokio::time::timeout(Duration::from_secs(1), alice.handle(f)).await;
        assert_eq!(flow, Ok(Flow::Continue));
    }
    alice
        .handle(frame(
            Command::Subscribe,
            &[("id", "2"), ("destination", "/topic/x"), ("receipt", "r2")],
        ))
        .await;
    // The first message was delivered here; the second waits behind the first's cluster part
    // (order per session), and so do the receipts.
    let delivered: Vec<_> = out(&bob).await.into_iter().map(|m| m.body).collect();
    assert_eq!(delivered, [Bytes::from("1")]);
    assert!(
        out(&alice).await.is_empty(),
        "no receipt before its routing is done"
    );
    held.release();
    h.ctx.tasks.close();
    h.ctx.tasks.wait().await;
    let delivered: Vec<_> = out(&bob).await.into_iter().map(|m| m.body).collect();
    assert_eq!(delivered, [Bytes::from("2")]);
    let receipts: Vec<_> = out(&alice)
        .await
        .into_iter()
        .map(|f| f.get("receipt-id").unwrap_or_default().to_string())
        .collect();
    assert_eq!(receipts, ["r1", "r2"], "in order");
}

#[tokio::test]
async fn a_disconnect_after_waiting_sends_is_answered_after_them() {
    let held = Arc::new(Held::default());
    let h = harness_with(held.clone(), None, "");
    let mut alice = h.connected("alice").await;
    alice
        .handle(send("/user/bob/queue/n", "1", &[("receipt", "r1")]))
        .await;
    assert_eq!(
        alice
            .handle(frame(Command::Disconnect, &[("receipt", "bye")]))
            .await,
        Flow::Close
    );
    alice.end();
    assert!(
        !alice.endpoint().outbox.is_closing(),
        "the end waits for the pending route"
    );
    held.release();
    h.ctx.tasks.close();
    h.ctx.tasks.wait().await;
    let receipts: Vec<_> = out(&alice)
        .await
        .into_iter()
        .map(|f| f.get("receipt-id").unwrap_or_default().to_string())
        .collect();
    assert_eq!(receipts, ["r1", "bye"]);
    assert!(alice.endpoint().outbox.is_closing());
}

#[tokio::test]
async fn routing_to_a_target_works_from_outside_a_session() {
    // The same tenant routing the API and other nodes use reaches a session's subscription.
    let h = harness();
    let mut s = h.connected("alice").await;
    s.handle(frame(
        Command::Subscribe,
        &[("id", "1"), ("destination", "/topic/api")],
    ))
    .await;
    let content = Content {
        headers: vec![("content-type".into(), "text/plain".into())],
        body: Bytes::from("from the api"),
    };
    let d = h
        .tenant()
        .route(&Target::Topic("/topic/api".into()), content, true)
        .await
        .unwrap();
    assert_eq!(d.local, 1);
    assert_eq!(out(&s).await[0].body.as_ref(), b"from the api");
}

#[tokio::test]
async fn receivers_learn_the_authenticated_sender_whatever_it_claims() {
    let h = harness();
    let mut bob = h.connected("bob").await;
    bob.handle(frame(
        Command::Subscribe,
        &[("id", "1"), ("destination", "/user/queue/notice")],
    ))
    .await;
    let mut alice = h.connected("alice").await;
    alice
        .handle(send(
            "/user/bob/queue/notice",
            "hi",
            &[("user-id", "admin"), ("user-name", "admin")],
        ))
        .await;
    let m = out(&bob).await.remove(0);
    assert_eq!(m.get("user-id"), Some("alice"));
    assert_eq!(
        m.headers.iter().filter(|(k, _)| k == "user-id").count(),
        1,
        "{m:?}"
    );

    let mut anonymous = h.session();
    anonymous
        .handle(frame(Command::Connect, &[("accept-version", "1.2")]))
        .await;
    out(&anonymous).await;
    anonymous
        .handle(send("/user/bob/queue/notice", "x", &[("user-id", "alice")]))
        .await;
    let m = out(&bob).await.remove(0);
    assert_eq!(m.get("user-id"), None, "an anonymous sender claims nobody");
}

#[tokio::test]
async fn a_destination_name_has_a_length_limit() {
    let h = harness();
    let long = format!("/topic/{}", "x".repeat(2000));
    let mut s = h.connected("alice").await;
    let error = expect_error(
        &mut s,
        frame(Command::Subscribe, &[("id", "1"), ("destination", &long)]),
        "invalid destination",
    )
    .await;
    assert!(String::from_utf8_lossy(&error.body).contains("at most 1024"));
    let mut s = h.connected("alice").await;
    expect_error(&mut s, send(&long, "x", &[]), "invalid destination").await;
}

/// The smallest budget the configuration allows: four frames of the default largest size.
const SMALL_BUDGET: &str = "[server]\nconnection_memory_bytes = 262144\n";

#[tokio::test]
async fn transactions_are_bounded_by_the_memory_budget_in_bytes() {
    let h = harness_with(Arc::new(Standalone), None, SMALL_BUDGET);
    let mut s = h.connected("alice").await;
    let body = "x".repeat(60_000);
    let mut buffered = 0;
    let error = loop {
        let tx = format!("t{}", buffered % 16);
        if buffered < 16 {
            s.handle(frame(Command::Begin, &[("transaction", &tx)]))
                .await;
        }
        let flow = s
            .handle(send("/topic/t", &body, &[("transaction", &tx)]))
            .await;
        if flow == Flow::Close {
            break out(&s).await.pop().unwrap();
        }
        buffered += 1;
    };
    assert_eq!(
        buffered, 4,
        "four 60 KB frames fit in 256 KiB, the fifth does not"
    );
    assert_eq!(
        error.get("message"),
        Some("connection memory budget exceeded")
    );
    let detail = String::from_utf8_lossy(&error.body);
    assert!(
        detail.contains("server.connection_memory_bytes"),
        "{detail}"
    );
    assert!(detail.contains("262144"), "{detail}");
    s.end();
    assert_eq!(s.endpoint().budget.used(), 0, "everything given back");
}

#[tokio::test]
async fn what_a_transaction_held_is_given_back_at_commit_and_abort() {
    let h = harness_with(Arc::new(Standalone), None, SMALL_BUDGET);
    let mut s = h.connected("alice").await;
    let body = "x".repeat(60_000);
    // Far more than the budget over the session's life, never more than it at once.
    for round in 0..20 {
        let tx = format!("t{round}");
        s.handle(frame(Command::Begin, &[("transaction", &tx)]))
            .await;
        for _ in 0..3 {
            let flow = s
                .handle(send("/topic/t", &body, &[("transaction", &tx)]))
                .await;
            assert_eq!(flow, Flow::Continue, "round {round}");
        }
        let end = if round % 2 == 0 {
            Command::Commit
        } else {
            Command::Abort
        };
        assert_eq!(
            s.handle(frame(end, &[("transaction", &tx)])).await,
            Flow::Continue
        );
    }
    assert!(
        s.endpoint().budget.used() < 10_000,
        "only the verdict cache remains"
    );
}

#[tokio::test]
async fn subscriptions_are_bounded_by_the_memory_budget() {
    let h = harness_with(Arc::new(Standalone), None, SMALL_BUDGET);
    let mut s = h.connected("alice").await;
    let mut held = 0;
    let error = loop {
        let dest = format!("/topic/{held:04}{}", "n".repeat(1000));
        let flow = s
            .handle(frame(
                Command::Subscribe,
                &[("id", &held.to_string()), ("destination", &dest)],
            ))
            .await;
        if flow == Flow::Close {
            break out(&s).await.pop().unwrap();
        }
        held += 1;
    };
    // Each costs about 3 KB of the budget and 1 KB of cached verdict.
    assert!((40..100).contains(&held), "{held} subscriptions");
    assert_eq!(
        error.get("message"),
        Some("connection memory budget exceeded")
    );
}

#[tokio::test]
async fn the_verdict_cache_is_bounded_in_bytes_and_starts_over() {
    let h = harness();
    let mut s = h.connected("alice").await;
    // 16,000 distinct 1,000-byte destinations: 16 MB of names if all were kept.
    for i in 0..16_000 {
        let dest = format!("/topic/{i:05}{}", "d".repeat(990));
        assert_eq!(s.handle(send(&dest, "x", &[])).await, Flow::Continue);
        assert!(
            s.verdict_bytes <= VERDICT_CACHE_BYTES,
            "{} bytes",
            s.verdict_bytes
        );
    }
    assert!(s.endpoint().budget.used() <= VERDICT_CACHE_BYTES);
    assert!(!s.verdicts.is_empty());
}

#[tokio::test]
async fn prefetch_count_must_be_a_number() {
    let h = harness();
    let mut s = h.connected("alice").await;
    let error = expect_error(
        &mut s,
        frame(
            Command::Subscribe,
            &[
                ("id", "1"),
                ("destination", "/queue/q"),
                ("ack", "client"),
                ("prefetch-count", "many"),
            ],
        ),
        "invalid prefetch-count",
    )
    .await;
    assert!(String::from_utf8_lossy(&error.body).contains("'many'"));
}

#[tokio::test]
async fn a_partial_frame_must_fit_in_what_the_budget_has_left() {
    let h = harness_with(Arc::new(Standalone), None, SMALL_BUDGET);
    let mut s = h.connected("alice").await;
    assert_eq!(s.check_partial_frame(60_000), Flow::Continue);
    assert_eq!(s.check_partial_frame(300_000), Flow::Close);
    let error = out(&s).await.pop().unwrap();
    assert_eq!(
        error.get("message"),
        Some("connection memory budget exceeded")
    );
}
