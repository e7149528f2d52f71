//! Cross-node delivery: latency at a steady rate and throughput of targeted user messages,
//! through two nodes and Redis, beside the same figures on one node.
//!
//! `cargo bench --bench cluster` (needs `redis-server` on the PATH). Under `cargo test` it
//! runs once at a tiny size, to show it works.
//!
//! Users `u0..uN` subscribe to `/user/queue/bench` over WebSocket on the receiving node; one
//! STOMP-over-TCP client on the sending node SENDs to `/user/u{i}/queue/bench`, each body the
//! send time, so every delivery yields one latency sample.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use stompbox_testkit::{Node, Redis};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

/// A node from the built binary, in the cluster of `redis` if given.
fn node(id: &str, redis: Option<&str>) -> Node {
    let mut builder = Node::builder(env!("CARGO_BIN_EXE_stompbox"))
        .name(id)
        .args(["--node-id", id])
        .env("RUST_LOG", "error");
    if let Some(url) = redis {
        builder = builder.args(["--redis", url]);
    }
    builder.start().unwrap_or_else(|e| panic!("{e}"))
}

struct Samples {
    latencies_us: Mutex<Vec<u64>>,
    received: AtomicU64,
}

async fn subscribers(http: SocketAddr, users: usize, start: Instant, samples: Arc<Samples>) {
    for i in 0..users {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{http}/ws"))
            .await
            .unwrap();
        let frames = format!(
            "CONNECT\naccept-version:1.2\nuserid:u{i}\nheart-beat:0,0\n\n\0SUBSCRIBE\nid:0\ndestination:/user/queue/bench\nreceipt:r\n\n\0"
        );
        ws.send(Message::Text(frames.into())).await.unwrap();
        let mut got_receipt = false;
        while !got_receipt {
            if let Some(Ok(Message::Text(t))) = ws.next().await {
                got_receipt = t.contains("RECEIPT");
            }
        }
        let samples = samples.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = ws.next().await {
                let data = message.into_data();
                let mut batch = Vec::new();
                for frame in data.split(|b| *b == 0) {
                    let Some(at) = frame.windows(2).position(|w| w == b"\n\n") else {
                        continue;
                    };
                    if let Some(sent) = std::str::from_utf8(&frame[at + 2..])
                        .ok()
                        .and_then(|b| b.parse::<u64>().ok())
                    {
                        batch.push(start.elapsed().as_micros() as u64 - sent);
                    }
                }
                samples
                    .received
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                samples.latencies_us.lock().await.extend(batch);
            }
        });
    }
}

/// Sends `total` messages round-robin over `users`, `rate` per second (0 = as fast as possible).
async fn publish(
    stomp: SocketAddr,
    users: usize,
    total: usize,
    rate: u64,
    start: Instant,
) -> Duration {
    let mut s = tokio::net::TcpStream::connect(stomp).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(b"CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\0")
        .await
        .unwrap();
    let began = Instant::now();
    let per_ms = if rate == 0 {
        total as u64
    } else {
        (rate / 1000).max(1)
    };
    let mut sent = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while sent < total {
        tick.tick().await;
        let mut buf = Vec::new();
        for _ in 0..per_ms
            .min((total - sent) as u64)
            .min(if rate == 0 { 256 } else { u64::MAX })
        {
            let now = start.elapsed().as_micros();
            buf.extend_from_slice(
                format!(
                    "SEND\ndestination:/user/u{}/queue/bench\n\n{now}\0",
                    sent % users
                )
                .as_bytes(),
            );
            sent += 1;
        }
        s.write_all(&buf).await.unwrap();
        if rate == 0 {
            tick.reset_immediately();
        }
    }
    began.elapsed()
}

struct Figures {
    label: String,
    rate: String,
    received: u64,
    sent: usize,
    per_second: f64,
    p50: u64,
    p99: u64,
    max: u64,
}

async fn run(
    label: &str,
    send_to: SocketAddr,
    receive_on: SocketAddr,
    users: usize,
    total: usize,
    rate: u64,
) -> Figures {
    let start = Instant::now();
    let samples = Arc::new(Samples {
        latencies_us: Mutex::new(Vec::new()),
        received: AtomicU64::new(0),
    });
    subscribers(receive_on, users, start, samples.clone()).await;
    // Presence reaches the other node's cache within a moment; wait it out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = Instant::now();
    publish(send_to, users, total, rate, start).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while samples.received.load(Ordering::Relaxed) < total as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = first.elapsed();
    let mut lat = samples.latencies_us.lock().await.clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Figures {
        label: label.into(),
        rate: if rate == 0 {
            "max".into()
        } else {
            format!("{rate}/s")
        },
        received: samples.received.load(Ordering::Relaxed),
        sent: total,
        per_second: samples.received.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        max: lat.last().copied().unwrap_or(0),
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (users, steady, burst, rate) = if full {
        (200, 30_000, 50_000, 10_000)
    } else {
        (4, 100, 200, 1_000)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let redis = Redis::start().expect("redis-server on the PATH");
    let url = redis.url();
    let a = node("bench-a", Some(&url));
    let b = node("bench-b", Some(&url));
    let single = node("bench-single", None);
    let (a_http, b_stomp) = (a.http(), b.stomp());
    let (s_http, s_stomp) = (single.http(), single.stomp());
    std::thread::sleep(Duration::from_millis(500));
    let results = runtime.block_on(async {
        vec![
            run("one node", s_stomp, s_http, users, steady, rate).await,
            run("two nodes + Redis", b_stomp, a_http, users, steady, rate).await,
            run("one node", s_stomp, s_http, users, burst, 0).await,
            run("two nodes + Redis", b_stomp, a_http, users, burst, 0).await,
        ]
    });
    println!("\n{users} users, targeted user messages (publisher: STOMP over TCP; subscribers: WebSocket)\n");
    println!("| path | publish rate | delivered | deliveries/s | p50 µs | p99 µs | max µs |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for f in &results {
        println!(
            "| {} | {} | {}/{} | {:.0} | {} | {} | {} |",
            f.label, f.rate, f.received, f.sent, f.per_second, f.p50, f.p99, f.max
        );
        assert_eq!(f.received, f.sent as u64, "{}: messages missing", f.label);
    }
}
