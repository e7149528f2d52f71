//! `stompbox-bench attack`: one hostile connection against a broker, each the way the hardening
//! review found it, while a bystander on the same broker measures its publish→receive round
//! trip. Reports what the attack added to the broker's memory (peak RSS over the RSS before)
//! and the bystander's latency while it ran.
//!
//! The attacker writes as fast as the broker reads; a broker that refuses ends the attack with
//! an ERROR, which is reported as how it ended. Every attack finishes with a frame asking for
//! a receipt, so what was sent has been handled before the next begins. One attacker follows
//! another, one at a time, for `--secs`: the bystander's figure rests on seconds of probes,
//! not on the fraction of a second a refused attacker lasts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use crate::net::{self, Url};
use crate::procfs;
use crate::stomp::{self, Scanner};
use crate::ws;

/// What the one hostile connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Opens 16 transactions and fills them round-robin with 60 KB SENDs (`--count` in all).
    Transactions,
    /// SENDs to `--count` distinct 1,000-byte destinations (one cached verdict each).
    Destinations,
    /// `--count` subscriptions with 1,000-byte destination names.
    Subscriptions,
    /// `--count` 60 KB SENDs to a queue nobody consumes.
    Backlog,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Transactions => "transactions",
            Kind::Destinations => "destinations",
            Kind::Subscriptions => "subscriptions",
            Kind::Backlog => "backlog",
        }
    }
}

/// Options of `stompbox-bench attack`.
#[derive(Debug, Clone, clap::Args)]
pub struct AttackOpts {
    /// The broker's STOMP WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// The attack.
    #[arg(long, value_enum)]
    pub kind: Kind,
    /// Frames the attack sends at most.
    #[arg(long)]
    pub count: usize,
    /// The broker processes whose memory is measured, repeatable.
    #[arg(long = "node-pid")]
    pub node_pids: Vec<u32>,
    /// How long to go on: each attacker that ends (refused, or its frames all sent and
    /// answered) is followed by another until this many seconds have passed.
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// How often the bystander sends itself a message, in ms.
    #[arg(long, default_value_t = 2)]
    pub probe_ms: u64,
    /// A name for the run, echoed in the report.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Print the report as one JSON line.
    #[arg(long)]
    pub json: bool,
}

/// The transactions a connection may open on a broker with default limits.
const TRANSACTIONS: usize = 16;
/// The body of the large SENDs: under the default 64 KiB frame limit with headers.
const LARGE_BODY: usize = 60_000;
/// The destination names of the name-heavy attacks: under the 1,024-byte limit.
const LONG_NAME: usize = 1_000;
/// The longest frame the tool's scanner takes from a broker.
const MAX_FRAME: usize = 1 << 20;

pub fn main(opts: AttackOpts) -> anyhow::Result<()> {
    if opts.count == 0 {
        bail!("--count must be at least 1");
    }
    crate::runtime(2)?.block_on(attack(opts))
}

/// One STOMP-over-WebSocket client connection: a writer, and a reader task handing complete
/// frames to a channel.
struct Conn {
    writer: OwnedWriteHalf,
    frames: mpsc::UnboundedReceiver<Vec<u8>>,
    rng: ws::Rng,
    out: Vec<u8>,
}

impl Conn {
    async fn open(url: &Url, seed: u64, user: &str) -> anyhow::Result<Conn> {
        let mut stream = net::connect(url.addr, None)
            .await
            .with_context(|| format!("connecting to {}", url.addr))?;
        let mut rng = ws::Rng::new(seed);
        let first =
            net::client_handshake(&mut stream, url, &["v12.stomp".into()], &mut rng).await?;
        let (reader, writer) = stream.into_split();
        let (tx, frames) = mpsc::unbounded_channel();
        tokio::spawn(read_frames(reader, first, tx));
        let mut conn = Conn {
            writer,
            frames,
            rng,
            out: Vec::new(),
        };
        let connect = stomp::connect_frame(&[
            ("host".into(), "default".into()),
            ("userid".into(), user.into()),
            ("login".into(), "guest".into()),
            ("passcode".into(), "guest".into()),
        ]);
        conn.send(&connect).await?;
        let reply = conn.next(Duration::from_secs(10)).await?;
        if !reply.starts_with(b"CONNECTED") {
            bail!("CONNECT answered with {}", first_line(&reply));
        }
        Ok(conn)
    }

    async fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.out.clear();
        let mask = self.rng.mask();
        ws::encode_client(&mut self.out, 0x1, frame, mask);
        self.writer.write_all(&self.out).await
    }

    /// The next frame within `wait`; an error when the connection closed or nothing came.
    async fn next(&mut self, wait: Duration) -> anyhow::Result<Vec<u8>> {
        match tokio::time::timeout(wait, self.frames.recv()).await {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => bail!("the broker closed the connection"),
            Err(_) => bail!("no frame within {wait:?}"),
        }
    }

    /// A frame that arrived already, if any.
    fn arrived(&mut self) -> Option<Vec<u8>> {
        self.frames.try_recv().ok()
    }
}

async fn read_frames(
    mut reader: OwnedReadHalf,
    first: Vec<u8>,
    tx: mpsc::UnboundedSender<Vec<u8>>,
) {
    let mut decoder = ws::Decoder::new(false);
    let mut scanner = Scanner::new(MAX_FRAME);
    let mut feed = |bytes: &mut [u8]| -> bool {
        let mut ok = true;
        let result = decoder.feed(bytes, |event| {
            if let ws::Event::Data(data) = event {
                if scanner
                    .feed(data, |frame| {
                        let _ = tx.send(frame.to_vec());
                    })
                    .is_err()
                {
                    ok = false;
                }
            }
        });
        ok && result.is_ok()
    };
    let mut first = first;
    if !feed(&mut first) {
        return;
    }
    loop {
        match net::read_with(&mut reader, &mut feed).await {
            Ok((0, _)) | Err(_) | Ok((_, Some(false))) => return,
            Ok(_) => {}
        }
    }
}

fn first_line(frame: &[u8]) -> String {
    let text = String::from_utf8_lossy(frame);
    let mut lines = text.lines();
    let command = lines.next().unwrap_or_default().to_string();
    match lines.find_map(|l| l.strip_prefix("message:")) {
        Some(message) => format!("{command} {message}"),
        None => command,
    }
}

/// The bystander's round trips, in ms, gathered while the attack runs (it probes from its
/// start, but keeps only the round trips that began while `measuring`).
struct Bystander {
    samples: Arc<Mutex<Vec<f64>>>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Bystander {
    async fn start(url: &Url, every: Duration) -> anyhow::Result<Bystander> {
        let mut conn = Conn::open(url, 7, "bystander").await?;
        let topic = format!("/topic/bystander.{}", std::process::id());
        conn.send(&stomp::subscribe_frame(&topic)).await?;
        let receipt = conn.next(Duration::from_secs(10)).await?;
        if !receipt.starts_with(b"RECEIPT") {
            bail!(
                "the bystander's SUBSCRIBE was answered {}",
                first_line(&receipt)
            );
        }
        let samples = Arc::new(Mutex::new(Vec::new()));
        let measuring = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (samples, measuring, stop) = (samples.clone(), measuring.clone(), stop.clone());
            async move {
                let mut head = stomp::send_head(&topic);
                head.extend_from_slice(b"probe\0");
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let counted = measuring.load(Ordering::Relaxed);
                    conn.send(&head).await?;
                    loop {
                        let frame = conn.next(Duration::from_secs(30)).await?;
                        if frame.starts_with(b"MESSAGE") {
                            break;
                        }
                    }
                    if counted {
                        let ms = sent.elapsed().as_secs_f64() * 1e3;
                        samples.lock().unwrap_or_else(|e| e.into_inner()).push(ms);
                    }
                    tokio::time::sleep(every).await;
                }
                Ok(())
            }
        });
        Ok(Bystander {
            samples,
            measuring,
            stop,
            task,
        })
    }

    /// From now on, round trips count.
    fn measure(&self) {
        self.measuring.store(true, Ordering::Relaxed);
    }

    /// Stops counting and probing; the round trips counted, in ms.
    async fn finish(self) -> anyhow::Result<Vec<f64>> {
        self.measuring.store(false, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.context("the bystander's task")??;
        let samples = self
            .samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Ok(samples)
    }
}

/// The RSS of the broker processes in KiB, summed.
fn rss(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&pid| procfs::rss_kib(pid)).sum()
}

/// Samples RSS every 20 ms until stopped; the highest seen.
fn watch_peak(pids: Vec<u32>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = rss(&pids);
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(rss(&pids));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak.max(rss(&pids))
    })
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[at])
}

/// The attack's frames, in order; the last asks for a receipt.
fn frames(kind: Kind, count: usize) -> Vec<Vec<u8>> {
    let name = |prefix: &str, i: usize| {
        format!("{prefix}{i:08}{}", "n".repeat(LONG_NAME - prefix.len() - 8))
    };
    let large = |head: String| {
        let mut frame = head.into_bytes();
        frame.extend(std::iter::repeat_n(b'x', LARGE_BODY));
        frame.push(0);
        frame
    };
    let mut out = Vec::with_capacity(count + TRANSACTIONS + 1);
    match kind {
        Kind::Transactions => {
            for t in 0..TRANSACTIONS {
                out.push(format!("BEGIN\ntransaction:t{t}\n\n\0").into_bytes());
            }
            for i in 0..count {
                out.push(large(format!(
                    "SEND\ndestination:/topic/attack\ntransaction:t{}\n\n",
                    i % TRANSACTIONS
                )));
            }
        }
        Kind::Destinations => {
            for i in 0..count {
                out.push(format!("SEND\ndestination:{}\n\nx\0", name("/topic/", i)).into_bytes());
            }
        }
        Kind::Subscriptions => {
            for i in 0..count {
                out.push(
                    format!(
                        "SUBSCRIBE\nid:{i}\ndestination:{}\n\n\0",
                        name("/topic/", i)
                    )
                    .into_bytes(),
                );
            }
        }
        Kind::Backlog => {
            for _ in 0..count {
                out.push(large("SEND\ndestination:/queue/attack\n\n".into()));
            }
        }
    }
    // Every frame before it has been handled once this is answered.
    out.push(b"SEND\ndestination:/topic/attack-done\nreceipt:done\n\n\0".to_vec());
    out
}

async fn attack(opts: AttackOpts) -> anyhow::Result<()> {
    let url = Url::parse(&opts.url, "ws")?;
    let bystander = Bystander::start(&url, Duration::from_millis(opts.probe_ms)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss(&opts.node_pids);
    let stop_watch = Arc::new(AtomicBool::new(false));
    let peak = watch_peak(opts.node_pids.clone(), stop_watch.clone());
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(opts.secs);
    bystander.measure();

    let plan = frames(opts.kind, opts.count);
    let (mut rounds, mut sent, mut sent_bytes) = (0u64, 0usize, 0usize);
    let mut ended = None;
    // One attacker at a time, again as soon as the last one ended, until the time is up.
    loop {
        let mut attacker = Conn::open(&url, 11 + rounds, "mallory").await?;
        let mut this_end = None;
        for frame in &plan {
            if let Some(reply) = attacker.arrived() {
                this_end = Some(first_line(&reply));
                break;
            }
            if attacker.send(frame).await.is_err() {
                break;
            }
            sent += 1;
            sent_bytes += frame.len();
        }
        if this_end.is_none() {
            // The receipt, or the ERROR the broker ended the attack with.
            this_end = Some(match attacker.next(Duration::from_secs(120)).await {
                Ok(reply) => first_line(&reply),
                Err(e) => e.to_string(),
            });
        }
        rounds += 1;
        ended = ended.or(this_end);
        if Instant::now() >= deadline {
            break;
        }
    }
    let attack_secs = started.elapsed().as_secs_f64();
    let mut samples = bystander.finish().await?;
    stop_watch.store(true, Ordering::Relaxed);
    let rss_peak = peak.await.context("the memory watcher")?;
    let rss_after = rss(&opts.node_pids);
    samples.sort_by(f64::total_cmp);

    let ended = ended.unwrap_or_default();
    let added_mib = rss_peak.saturating_sub(rss_before) as f64 / 1024.0;
    let report = json!({
        "label": opts.label,
        "kind": opts.kind.name(),
        "attackers": rounds,
        "frames_sent": sent,
        "bytes_sent": sent_bytes,
        "ended": ended,
        "refused": !ended.starts_with("RECEIPT"),
        "attack_secs": attack_secs,
        "rss_before_kib": rss_before,
        "rss_peak_kib": rss_peak,
        "rss_after_kib": rss_after,
        "rss_added_mib": added_mib,
        "bystander_ms": {
            "samples": samples.len(),
            "p50": percentile(&samples, 0.50),
            "p99": percentile(&samples, 0.99),
            "max": samples.last(),
        },
    });
    if opts.json {
        println!("{report}");
    } else {
        println!(
            "{}: {rounds} attackers, {} frames ({:.1} MB) in {attack_secs:.1}s; the first ended: {ended}\n\
             broker RSS {rss_before} KiB before, {rss_peak} KiB at the peak: +{added_mib:.1} MiB\n\
             bystander round trip over {} probes: p50 {} ms, p99 {} ms",
            opts.kind.name(),
            sent,
            sent_bytes as f64 / 1e6,
            samples.len(),
            fmt_ms(percentile(&samples, 0.50)),
            fmt_ms(percentile(&samples, 0.99)),
        );
    }
    Ok(())
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.2}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_attack_ends_with_a_receipt_request() {
        for kind in [
            Kind::Transactions,
            Kind::Destinations,
            Kind::Subscriptions,
            Kind::Backlog,
        ] {
            let plan = frames(kind, 3);
            assert!(plan
                .last()
                .unwrap()
                .starts_with(b"SEND\ndestination:/topic/attack-done\nreceipt:done\n"));
            assert!(plan.iter().all(|f| f.ends_with(b"\0")));
        }
        let names = frames(Kind::Destinations, 2);
        let first = String::from_utf8_lossy(&names[0]);
        let dest = first
            .lines()
            .nth(1)
            .unwrap()
            .strip_prefix("destination:")
            .unwrap();
        assert_eq!(dest.len(), LONG_NAME);
        assert_eq!(frames(Kind::Transactions, 5).len(), TRANSACTIONS + 5 + 1);
    }

    #[test]
    fn percentiles_pick_the_sample_at_or_above() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.99), Some(99.0));
        assert_eq!(percentile(&sorted, 0.5), Some(50.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
