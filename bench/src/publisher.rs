//! Publishing: the pacing loop every publisher runs (rate, bursts, a bounded window of
//! deliveries in flight, message count or duration) over one of two transports, STOMP SEND
//! over WebSocket or the HTTP publish API (keep-alive, pipelined).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use crate::http::{self, RequestBuilder};
use crate::net::{self, Url};
use crate::stats::{Clock, ErrorLog, Progress};
use crate::stomp::{self, Frame, Stamp};
use crate::template::{render_headers, Expectation, HeaderTemplate};
use crate::ws::{self, Event};

/// How much and how fast to publish, over all publishers.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Messages in all; `None`: until `duration` is over.
    pub messages: Option<u64>,
    pub duration: Option<Duration>,
    /// Messages per second in all; 0: as fast as the window allows.
    pub rate: f64,
    /// Messages sent back to back each time (0: as many as are due, up to a batch).
    pub burst: usize,
    /// Messages in flight, converted to deliveries with the mean fan-out; 0: no window.
    pub window: u64,
    /// Deliveries in flight at most, whatever the fan-out: a window of messages alone would
    /// let a 10,000-subscriber fan-out queue millions of frames in the broker.
    pub window_deliveries: u64,
    pub publishers: usize,
    /// How long the window may see no delivery before its in-flight count is written off.
    pub stall: Duration,
}

/// What the publishers share and report.
pub struct Shared {
    pub plan: Plan,
    pub expectation: Expectation,
    pub clock: Clock,
    pub progress: Arc<Progress>,
    /// Deliveries expected from the messages sent so far.
    pub expected_sent: AtomicU64,
    /// Deliveries of messages the API refused: no longer expected.
    pub refused: AtomicU64,
    /// Deliveries the window gave up waiting for.
    pub written_off: AtomicU64,
    pub published: AtomicU64,
    pub first_ns: AtomicU64,
    pub last_ns: AtomicU64,
    pub window_stalls: AtomicU64,
    pub api_accepted: AtomicU64,
    pub api_refused: AtomicU64,
    pub errors: ErrorLog,
}

impl Shared {
    pub fn new(
        plan: Plan,
        expectation: Expectation,
        clock: Clock,
        progress: Arc<Progress>,
    ) -> Shared {
        Shared {
            plan,
            expectation,
            clock,
            progress,
            expected_sent: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            written_off: AtomicU64::new(0),
            published: AtomicU64::new(0),
            first_ns: AtomicU64::new(u64::MAX),
            last_ns: AtomicU64::new(0),
            window_stalls: AtomicU64::new(0),
            api_accepted: AtomicU64::new(0),
            api_refused: AtomicU64::new(0),
            errors: ErrorLog::default(),
        }
    }

    /// Deliveries expected from the messages accepted.
    pub fn expected(&self) -> u64 {
        self.expected_sent
            .load(Ordering::Acquire)
            .saturating_sub(self.refused.load(Ordering::Acquire))
    }

    fn in_flight(&self) -> u64 {
        self.expected()
            .saturating_sub(self.written_off.load(Ordering::Acquire))
            .saturating_sub(self.progress.received())
    }
}

/// One message of a batch.
#[derive(Debug, Clone, Copy)]
struct Msg {
    target: usize,
    stamp: Stamp,
    expected: u64,
}

/// The most messages written in one go when nothing else bounds a batch.
const MAX_BATCH: usize = 256;

/// Runs publisher `p` from `start` until its share of the plan is done. The transport comes
/// back so its connection stays open until the run ends: closing it early would make the
/// broker's answer (closing its side) look like a failure.
pub async fn drive(
    p: usize,
    mut transport: Transport,
    shared: Arc<Shared>,
    start: Instant,
) -> (Transport, anyhow::Result<()>) {
    let result = pace(p, &mut transport, &shared, start).await;
    (transport, result)
}

async fn pace(
    p: usize,
    transport: &mut Transport,
    shared: &Shared,
    start: Instant,
) -> anyhow::Result<()> {
    let plan = &shared.plan;
    let publishers = plan.publishers as u64;
    let quota = plan
        .messages
        .map(|m| m / publishers + u64::from((p as u64) < m % publishers));
    let rate = plan.rate / publishers as f64;
    let unit = plan.burst.max(1) as u64;
    let deadline = plan.duration.map(|d| start + d);
    let max_batch = if plan.burst > 0 {
        plan.burst
    } else {
        MAX_BATCH.min(transport.max_batch())
    } as u64;
    let mean = shared.expectation.mean();
    let window = if plan.window == 0 || mean == 0.0 {
        0
    } else {
        ((plan.window as f64 * mean).ceil() as u64)
            .min(plan.window_deliveries)
            .max(1)
    };
    let targets = shared.expectation.per_target.len() as u64;
    let mut sent = 0u64;
    let mut batch = Vec::with_capacity(max_batch as usize);
    tokio::time::sleep_until(start).await;
    loop {
        transport.check()?;
        let left = quota.map_or(u64::MAX, |q| q - sent);
        let now = Instant::now();
        if left == 0 || deadline.is_some_and(|d| now >= d) {
            return Ok(());
        }
        let mut n = max_batch.min(left);
        if plan.burst == 0 {
            // Send into whatever room the transport has now rather than waiting for a whole
            // batch's: an API pipeline that waits for all its responses leaves the server's
            // last small response waiting on our delayed ACK (Nagle), 40 ms a round.
            n = n.min(transport.room().await?);
        }
        if rate > 0.0 {
            let group_due = |g: u64| start + Duration::from_secs_f64((g * unit) as f64 / rate);
            let next = group_due(sent / unit);
            if next > now {
                let wake = deadline.map_or(next, |d| d.min(next));
                tokio::time::sleep_until(wake).await;
                continue;
            }
            if plan.burst == 0 {
                let due = ((now - start).as_secs_f64() * rate).floor() as u64 + 1;
                n = n.min(due.saturating_sub(sent).max(1));
            }
        }
        if window > 0 {
            let in_flight = shared.in_flight();
            if in_flight > 0 {
                let fits = (window.saturating_sub(in_flight) as f64 / mean) as u64;
                // A burst goes whole or waits; otherwise whatever fits goes.
                let go = if plan.burst > 0 { fits >= n } else { fits > 0 };
                if !go {
                    wait_for_room(shared, in_flight, window, deadline).await;
                    continue;
                }
                n = n.min(fits);
            }
        }
        let sent_ns = shared.clock.now_ns();
        batch.clear();
        let mut expected = 0;
        for m in sent..sent + n {
            let k = m * publishers + p as u64;
            let msg = Msg {
                target: (k % targets) as usize,
                stamp: Stamp {
                    sent_ns,
                    publisher: p as u32,
                    seq: m + 1,
                },
                expected: shared.expectation.of_message(k),
            };
            expected += msg.expected;
            batch.push(msg);
        }
        shared.expected_sent.fetch_add(expected, Ordering::AcqRel);
        shared.first_ns.fetch_min(sent_ns, Ordering::AcqRel);
        transport.send(&batch, shared).await?;
        shared.published.fetch_add(n, Ordering::AcqRel);
        shared
            .last_ns
            .fetch_max(shared.clock.now_ns(), Ordering::AcqRel);
        sent += n;
        if rate == 0.0 {
            // Lets this thread's subscribers read between batches instead of only when the
            // socket buffer fills.
            tokio::task::yield_now().await;
        }
    }
}

/// Waits until half the window is free. A window that sees no delivery for `stall` writes its
/// in-flight count off (lost messages must not stop the run) and counts a stall.
async fn wait_for_room(shared: &Shared, in_flight: u64, window: u64, deadline: Option<Instant>) {
    let received = shared.progress.received();
    let target = received + in_flight.saturating_sub(window / 2).max(1);
    let mut timeout = shared.plan.stall;
    if let Some(d) = deadline {
        timeout = timeout.min(d.saturating_duration_since(Instant::now()));
    }
    let reached = shared.progress.wait_for(target, timeout).await;
    if !reached
        && shared.progress.received() == received
        && deadline.is_none_or(|d| Instant::now() < d)
    {
        shared.window_stalls.fetch_add(1, Ordering::Relaxed);
        shared
            .written_off
            .fetch_add(shared.in_flight(), Ordering::AcqRel);
    }
}

/// How messages leave a publisher.
pub enum Transport {
    Stomp(StompPublisher),
    Api(ApiPublisher),
}

impl Transport {
    fn max_batch(&self) -> usize {
        match self {
            Transport::Stomp(_) => MAX_BATCH,
            Transport::Api(api) => api.depth,
        }
    }

    /// Messages that can go now without waiting on the transport (at least 1, after waiting).
    async fn room(&self) -> anyhow::Result<u64> {
        match self {
            Transport::Stomp(_) => Ok(MAX_BATCH as u64),
            Transport::Api(api) => {
                if api.slots.available_permits() == 0 {
                    // Wait for one slot without taking it.
                    drop(api.slots.acquire().await.context("API connection ended")?);
                }
                Ok(api.slots.available_permits().max(1) as u64)
            }
        }
    }

    /// Waits (up to `timeout`) until every request sent has its answer, so the counts of
    /// accepted and refused publishes are final.
    pub async fn settle(&self, timeout: Duration) {
        if let Transport::Api(api) = self {
            let all = api.slots.acquire_many(api.depth as u32);
            let _ = tokio::time::timeout(timeout, all).await;
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        let fatal = match self {
            Transport::Stomp(s) => &s.fatal,
            Transport::Api(a) => &a.fatal,
        };
        match fatal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            Some(reason) => bail!("{reason}"),
            None => Ok(()),
        }
    }

    async fn send(&mut self, batch: &[Msg], shared: &Shared) -> anyhow::Result<()> {
        match self {
            Transport::Stomp(s) => s.send(batch, shared).await,
            Transport::Api(a) => a.send(batch, shared).await,
        }
    }
}

/// Set by a transport's reader when the connection can no longer be used.
type Fatal = Arc<Mutex<Option<String>>>;

fn set_fatal(fatal: &Fatal, reason: String) {
    fatal
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert(reason);
}

/// A STOMP publisher: SEND frames over its own WebSocket, one masked WebSocket message per
/// SEND (as browser clients send them), a batch in one write.
pub struct StompPublisher {
    writer: OwnedWriteHalf,
    /// `SEND` + `destination` header + blank line, per target.
    heads: Arc<Vec<Vec<u8>>>,
    mask: [u8; 4],
    body_bytes: usize,
    buf: Vec<u8>,
    body: Vec<u8>,
    /// Pongs the reader owes the server; written before the next batch.
    pongs: mpsc::UnboundedReceiver<Vec<u8>>,
    fatal: Fatal,
}

/// Where STOMP publishers connect and what they send.
pub struct StompTarget {
    pub url: Url,
    pub protocols: Vec<String>,
    pub connect_headers: Vec<HeaderTemplate>,
    /// Destinations of targets `0..T`, rendered.
    pub destinations: Vec<String>,
    pub max_frame: usize,
}

impl StompPublisher {
    /// Connects publisher `p` and waits for CONNECTED.
    pub async fn connect(
        p: usize,
        target: &StompTarget,
        body_bytes: usize,
        shared: Arc<Shared>,
    ) -> anyhow::Result<StompPublisher> {
        let clock = shared.clock;
        let mut stream = net::connect(target.url.addr, None)
            .await
            .context("publisher connect")?;
        let mut rng = ws::Rng::new(clock.now_ns() ^ 0xABCD ^ p as u64);
        let leftover =
            net::client_handshake(&mut stream, &target.url, &target.protocols, &mut rng).await?;
        let mask = rng.mask();
        let mut connect = Vec::new();
        let headers = render_headers(&target.connect_headers, p);
        ws::encode_client(
            &mut connect,
            ws::OP_TEXT,
            &stomp::connect_frame(&headers),
            mask,
        );
        stream.write_all(&connect).await?;
        let (reader, writer) = stream.into_split();
        let (connected_tx, connected_rx) = oneshot::channel();
        let (pong_tx, pongs) = mpsc::unbounded_channel();
        let fatal = Fatal::default();
        tokio::spawn(stomp_reader(
            reader,
            leftover,
            connected_tx,
            pong_tx,
            mask,
            target.max_frame,
            fatal.clone(),
            shared,
        ));
        match tokio::time::timeout(Duration::from_secs(10), connected_rx).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => bail!(
                "publisher: no CONNECTED ({})",
                fatal
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
                    .unwrap_or_else(|| "connection ended".into())
            ),
            Err(_) => bail!("publisher: no CONNECTED within 10 s"),
        }
        let heads = target
            .destinations
            .iter()
            .map(|d| stomp::send_head(d))
            .collect();
        Ok(StompPublisher {
            writer,
            heads: Arc::new(heads),
            mask,
            body_bytes,
            buf: Vec::with_capacity(64 * 1024),
            body: Vec::with_capacity(body_bytes.max(64)),
            pongs,
            fatal,
        })
    }

    async fn send(&mut self, batch: &[Msg], _shared: &Shared) -> anyhow::Result<()> {
        self.buf.clear();
        while let Ok(pong) = self.pongs.try_recv() {
            self.buf.extend_from_slice(&pong);
        }
        for msg in batch {
            self.body.clear();
            stomp::write_body(&mut self.body, msg.stamp, self.body_bytes);
            let head = &self.heads[msg.target];
            let len = head.len() + self.body.len() + 1;
            ws::write_header(&mut self.buf, ws::OP_TEXT, len, Some(self.mask));
            let start = self.buf.len();
            self.buf.extend_from_slice(head);
            self.buf.extend_from_slice(&self.body);
            self.buf.push(0);
            ws::apply_mask(&mut self.buf[start..], self.mask, 0);
        }
        self.writer
            .write_all(&self.buf)
            .await
            .context("publisher write")?;
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::with_capacity(64 * 1024);
        }
        Ok(())
    }
}

/// Reads what the broker sends a STOMP publisher: CONNECTED, ERROR, pings, close.
#[allow(clippy::too_many_arguments)]
async fn stomp_reader(
    mut reader: OwnedReadHalf,
    mut leftover: Vec<u8>,
    connected: oneshot::Sender<()>,
    pongs: mpsc::UnboundedSender<Vec<u8>>,
    mask: [u8; 4],
    max_frame: usize,
    fatal: Fatal,
    shared: Arc<Shared>,
) {
    let mut decoder = ws::Decoder::new(false);
    let mut scanner = stomp::Scanner::new(max_frame);
    let mut connected = Some(connected);
    let mut process = |bytes: &mut [u8]| -> Option<String> {
        let mut problem = None;
        let result = decoder.feed(bytes, |event| match event {
            Event::Data(data) => {
                let scanned = scanner.feed(data, |frame| {
                    let Some(frame) = Frame::parse(frame) else {
                        return;
                    };
                    match frame.command {
                        b"CONNECTED" => {
                            if let Some(tx) = connected.take() {
                                let _ = tx.send(());
                            }
                        }
                        b"ERROR" => {
                            let message = frame.header_str("message").unwrap_or("");
                            let body =
                                String::from_utf8_lossy(&frame.body[..frame.body.len().min(200)]);
                            problem.get_or_insert(format!(
                                "publisher got ERROR {message}: {}",
                                body.trim()
                            ));
                        }
                        _ => {}
                    }
                });
                if let Err(e) = scanned {
                    problem.get_or_insert(e.to_string());
                }
            }
            Event::Ping(payload) => {
                let mut pong = Vec::new();
                ws::encode_client(&mut pong, ws::OP_PONG, payload, mask);
                let _ = pongs.send(pong);
            }
            Event::Pong => {}
            Event::Close => {
                problem.get_or_insert("publisher: broker closed the WebSocket".into());
            }
        });
        if let Err(e) = result {
            problem.get_or_insert(e.to_string());
        }
        problem
    };
    let mut problem = if leftover.is_empty() {
        None
    } else {
        process(&mut leftover)
    };
    while problem.is_none() {
        problem = match net::read_with(&mut reader, &mut process).await {
            Ok((0, _)) => Some("publisher: connection closed by the broker".into()),
            Ok((_, found)) => found.flatten(),
            Err(e) => Some(format!("publisher read: {e}")),
        };
    }
    let reason = problem.unwrap_or_default();
    shared.errors.record(reason.clone());
    set_fatal(&fatal, reason);
}

/// An API publisher: one keep-alive connection with up to `depth` requests in flight.
pub struct ApiPublisher {
    writer: OwnedWriteHalf,
    request: RequestBuilder,
    /// The JSON body up to its `content` string, per target.
    prefixes: Arc<Vec<Vec<u8>>>,
    body_bytes: usize,
    depth: usize,
    slots: Arc<Semaphore>,
    /// Deliveries expected from each request in flight, oldest first, so a refused one can be
    /// taken off the expectation.
    pending: Arc<Mutex<VecDeque<u64>>>,
    buf: Vec<u8>,
    body: Vec<u8>,
    fatal: Fatal,
}

/// Where API publishers send and what.
pub struct ApiTarget {
    pub url: Url,
    pub api_key: String,
    /// JSON prefixes of targets `0..T`.
    pub prefixes: Vec<Vec<u8>>,
    pub depth: usize,
}

impl ApiPublisher {
    pub async fn connect(
        target: &ApiTarget,
        body_bytes: usize,
        shared: Arc<Shared>,
    ) -> anyhow::Result<ApiPublisher> {
        let stream = net::connect(target.url.addr, None)
            .await
            .context("API connect")?;
        let (reader, writer) = stream.into_split();
        let slots = Arc::new(Semaphore::new(target.depth));
        let pending = Arc::new(Mutex::new(VecDeque::new()));
        let fatal = Fatal::default();
        tokio::spawn(api_reader(
            reader,
            slots.clone(),
            pending.clone(),
            fatal.clone(),
            shared,
        ));
        Ok(ApiPublisher {
            writer,
            request: RequestBuilder::new(&target.url.host, &target.url.path, &target.api_key),
            prefixes: Arc::new(target.prefixes.clone()),
            body_bytes,
            depth: target.depth,
            slots,
            pending,
            buf: Vec::with_capacity(64 * 1024),
            body: Vec::with_capacity(body_bytes.max(64)),
            fatal,
        })
    }

    async fn send(&mut self, batch: &[Msg], _shared: &Shared) -> anyhow::Result<()> {
        self.slots
            .acquire_many(batch.len() as u32)
            .await
            .context("API connection ended")?
            .forget();
        self.buf.clear();
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            for msg in batch {
                self.body.clear();
                stomp::write_body(&mut self.body, msg.stamp, self.body_bytes);
                self.request.write(
                    &mut self.buf,
                    &[&self.prefixes[msg.target], &self.body, http::JSON_END],
                );
                pending.push_back(msg.expected);
            }
        }
        self.writer
            .write_all(&self.buf)
            .await
            .context("API write")?;
        Ok(())
    }
}

/// Reads the API's responses in order, frees a pipeline slot for each, and takes refused
/// publishes off the expectation.
async fn api_reader(
    mut reader: OwnedReadHalf,
    slots: Arc<Semaphore>,
    pending: Arc<Mutex<VecDeque<u64>>>,
    fatal: Fatal,
    shared: Arc<Shared>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let reason = loop {
        let read = net::read_with(&mut reader, |bytes| buf.extend_from_slice(bytes)).await;
        match read {
            Ok((0, _)) => break "API: connection closed by the server".to_string(),
            Err(e) => break format!("API read: {e}"),
            Ok(_) => {}
        }
        let mut at = 0;
        let mut problem = None;
        while let Some(response) = match http::parse_response(&buf[at..]) {
            Ok(r) => r,
            Err(e) => {
                problem = Some(format!("API: {e}"));
                None
            }
        } {
            at += response.len;
            let expected = pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop_front()
                .unwrap_or(0);
            if (200..300).contains(&response.status) {
                shared.api_accepted.fetch_add(1, Ordering::Relaxed);
            } else {
                shared.api_refused.fetch_add(1, Ordering::Relaxed);
                shared.refused.fetch_add(expected, Ordering::AcqRel);
                let body = String::from_utf8_lossy(&response.body[..response.body.len().min(200)]);
                shared
                    .errors
                    .record(format!("API {}: {}", response.status, body.trim()));
            }
            slots.add_permits(1);
            if response.close {
                problem = Some("API: server closed the keep-alive connection".into());
                break;
            }
        }
        buf.drain(..at);
        if let Some(problem) = problem {
            break problem;
        }
    };
    shared.errors.record(reason.clone());
    set_fatal(&fatal, reason);
    slots.close();
}
