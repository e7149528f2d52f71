//! Upstream throughput: many clients SEND to an application destination (`/app/bench`), each
//! with a receipt and a window of SENDs in flight, for a while; how many the backend side
//! accepted per second (a RECEIPT is only written once the stream entry was written or the
//! webhook answered 2xx) and how long each took from SEND to RECEIPT. `webhook-sink` is a
//! local webhook receiver that checks each request's signature and counts the items, so the
//! webhook path can be measured without a backend of its own.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::stomp::{self, Frame, Scanner};

#[derive(Debug, clap::Args)]
pub struct UpstreamOpts {
    /// The node's STOMP TCP address.
    #[arg(long)]
    pub stomp: SocketAddr,
    /// Client connections, each a user of its own.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// SENDs each client keeps in flight (awaiting their RECEIPT).
    #[arg(long, default_value_t = 4)]
    pub window: usize,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Bytes of each body.
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,
    /// The destination.
    #[arg(long, default_value = "/app/bench")]
    pub dest: String,
    /// Worker threads of the tool.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

pub fn main(opts: UpstreamOpts) -> anyhow::Result<()> {
    crate::runtime(opts.threads)?.block_on(run(Arc::new(opts)))
}

async fn run(opts: Arc<UpstreamOpts>) -> anyhow::Result<()> {
    let started = Instant::now();
    let stop_at = started + Duration::from_secs(opts.duration);
    let tasks: Vec<_> = (0..opts.clients)
        .map(|i| {
            let opts = opts.clone();
            tokio::spawn(async move { client(&opts, i, stop_at).await })
        })
        .collect();
    let mut latency = Histogram::<u64>::new(3)?;
    let mut accepted = 0u64;
    let mut failures = Vec::new();
    for task in tasks {
        match task.await? {
            Ok((n, histogram)) => {
                accepted += n;
                latency.add(histogram)?;
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if !failures.is_empty() {
        bail!(
            "{} of {} clients failed: {}",
            failures.len(),
            opts.clients,
            failures[..failures.len().min(3)].join("; ")
        );
    }
    let ms = |v: u64| v as f64 / 1000.0;
    println!(
        "{{\"clients\":{},\"window\":{},\"accepted\":{accepted},\"seconds\":{elapsed:.2},\
         \"per_second\":{:.0},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"max_ms\":{:.2}}}",
        opts.clients,
        opts.window,
        accepted as f64 / elapsed,
        ms(latency.value_at_quantile(0.5)),
        ms(latency.value_at_quantile(0.99)),
        ms(latency.max()),
    );
    Ok(())
}

/// One client: CONNECT, then SENDs with receipts, `window` in flight, until `stop_at`, then
/// waits for the last receipts. Its accepted count and SEND→RECEIPT latencies (µs).
async fn client(
    opts: &UpstreamOpts,
    i: usize,
    stop_at: Instant,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let mut conn = TcpStream::connect(opts.stomp).await.context("connect")?;
    conn.set_nodelay(true)?;
    let connect = stomp::connect_frame(&[
        ("login".to_string(), format!("up-{i}")),
        ("host".to_string(), "default".to_string()),
    ]);
    conn.write_all(&connect).await?;
    let body = vec![b'x'; opts.body_bytes];
    let head = format!(
        "SEND\ndestination:{}\nreply-to:/user/queue/replies\n",
        stomp::escape(&opts.dest)
    );
    let mut scanner = Scanner::new(1 << 20);
    let mut read = vec![0u8; 16 * 1024];
    let mut in_flight: VecDeque<Instant> = VecDeque::new();
    let mut histogram = Histogram::<u64>::new(3)?;
    let (mut accepted, mut next) = (0u64, 0u64);
    let mut connected = false;
    let mut error = None;
    loop {
        let sending = Instant::now() < stop_at;
        if connected && sending && in_flight.len() < opts.window {
            let mut out = Vec::new();
            while in_flight.len() < opts.window {
                out.extend_from_slice(head.as_bytes());
                out.extend_from_slice(format!("receipt:{next}\n\n").as_bytes());
                out.extend_from_slice(&body);
                out.push(0);
                next += 1;
                in_flight.push_back(Instant::now());
            }
            conn.write_all(&out).await?;
        }
        if connected && !sending && in_flight.is_empty() {
            return Ok((accepted, histogram));
        }
        let n = conn.read(&mut read).await?;
        if n == 0 {
            bail!("closed after {accepted} receipts");
        }
        scanner.feed(&read[..n], |frame| {
            let Some(frame) = Frame::parse(frame) else {
                return;
            };
            match frame.command {
                b"CONNECTED" => connected = true,
                b"RECEIPT" => {
                    if let Some(sent) = in_flight.pop_front() {
                        let _ = histogram.record(sent.elapsed().as_micros() as u64);
                        accepted += 1;
                    }
                }
                b"ERROR" => {
                    error = Some(format!(
                        "ERROR {}: {}",
                        frame.header_str("message").unwrap_or("?"),
                        String::from_utf8_lossy(frame.body)
                    ))
                }
                _ => {}
            }
        })?;
        if let Some(e) = error.take() {
            bail!(e);
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct SinkOpts {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The webhook secret the signatures are checked with.
    #[arg(long)]
    pub secret: String,
}

/// A webhook receiver: checks every signature, answers 200 (401 for a bad one), counts the
/// items, and prints `listening ADDR` and then a line with the totals each second.
pub fn sink(opts: SinkOpts) -> anyhow::Result<()> {
    crate::runtime(1)?.block_on(async move {
        let listener = TcpListener::bind(opts.listen).await?;
        println!("listening {}", listener.local_addr()?);
        let items = Arc::new(AtomicU64::new(0));
        let bad = Arc::new(AtomicU64::new(0));
        let secret: Arc<[u8]> = opts.secret.as_bytes().into();
        tokio::spawn({
            let (items, bad) = (items.clone(), bad.clone());
            async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    println!(
                        "{{\"items\":{},\"bad_signatures\":{}}}",
                        items.load(Ordering::Relaxed),
                        bad.load(Ordering::Relaxed)
                    );
                }
            }
        });
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(serve(stream, secret.clone(), items.clone(), bad.clone()));
        }
    })
}

async fn serve(
    mut stream: TcpStream,
    secret: Arc<[u8]>,
    items: Arc<AtomicU64>,
    bad: Arc<AtomicU64>,
) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
                .map(|v| v.trim().to_string())
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < end + 4 + length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = &buf[end + 4..end + 4 + length];
        let signed = match (
            header("x-stompbox-timestamp"),
            header("x-stompbox-signature"),
        ) {
            (Some(ts), Some(sig)) => {
                stompbox_testkit::webhook::expected_signature(&secret, &ts, body) == sig
            }
            _ => false,
        };
        let status = if signed {
            let count = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["items"].as_array().map(Vec::len))
                .unwrap_or(0);
            items.fetch_add(count as u64, Ordering::Relaxed);
            "200 OK"
        } else {
            bad.fetch_add(1, Ordering::Relaxed);
            "401 Unauthorized"
        };
        buf.drain(..end + 4 + length);
        let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}
