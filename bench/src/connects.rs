//! CONNECTs per second through a tenant's plugin: `clients` loops, each opening a STOMP
//! connection over TCP, sending CONNECT with a fresh HS256 JWT (`token` header, signed with
//! `secret`), waiting for CONNECTED and closing, for `seconds`. What it measures is the
//! plugin's `authenticate` under load (a JWT check in Rust, JavaScript or Python) plus the
//! node's accept and session setup, which are the same for every plugin.
//!
//! Every answer is checked: an ERROR or a CONNECTED for another user fails the run.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stomp::{self, Frame, Scanner};

#[derive(Debug, clap::Args)]
pub struct ConnectsOpts {
    /// The node's STOMP TCP address.
    #[arg(long)]
    pub stomp: SocketAddr,
    /// The tenant's `jwt_secret`.
    #[arg(long)]
    pub secret: String,
    /// The tenant (the CONNECT `host` header).
    #[arg(long, default_value = "default")]
    pub tenant: String,
    /// Connections being made at once.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// How long to keep connecting.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Worker threads of the tool.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

pub fn main(opts: ConnectsOpts) -> anyhow::Result<()> {
    crate::runtime(opts.threads)?.block_on(connects(opts))
}

async fn connects(opts: ConnectsOpts) -> anyhow::Result<()> {
    let opts = Arc::new(opts);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..opts.clients)
        .map(|c| {
            let (opts, stop) = (opts.clone(), stop.clone());
            tokio::spawn(async move { client(&opts, c, &stop).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(opts.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    if latencies.is_empty() {
        bail!("no CONNECT was answered");
    }
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{{\"connects\":{},\"seconds\":{:.1},\"connects_per_s\":{:.0},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"max_ms\":{:.2}}}",
        latencies.len(),
        elapsed,
        latencies.len() as f64 / elapsed,
        ms(pick(0.5)),
        ms(pick(0.99)),
        ms(*latencies.last().expect("not empty")),
    );
    Ok(())
}

/// One client's loop: connect, CONNECT, CONNECTED, close; the time of each.
async fn client(opts: &ConnectsOpts, c: usize, stop: &AtomicBool) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let user = format!("c{c}-{n}");
        n += 1;
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + 3600;
        let token = stompbox_testkit::jwt::hs256(
            &opts.secret,
            &serde_json::json!({"sub": user, "exp": exp}),
        );
        let frame = stomp::connect_frame(&[
            ("host".into(), opts.tenant.clone()),
            ("token".into(), token),
        ]);
        let began = Instant::now();
        let mut conn = TcpStream::connect(opts.stomp).await.context("connecting")?;
        conn.set_nodelay(true)?;
        conn.write_all(&frame).await?;
        let mut scanner = Scanner::new(64 * 1024);
        let mut answer: Option<Result<(), String>> = None;
        while answer.is_none() {
            let read = conn.read(&mut buf).await?;
            if read == 0 {
                bail!("the node closed the connection before answering CONNECT");
            }
            scanner.feed(&buf[..read], |raw| {
                let Some(frame) = Frame::parse(raw) else {
                    return;
                };
                answer = Some(match frame.command {
                    b"CONNECTED" if frame.header_str("user-name") == Some(user.as_str()) => Ok(()),
                    b"CONNECTED" => Err(format!(
                        "CONNECTED as {:?}, not {user}",
                        frame.header_str("user-name")
                    )),
                    _ => Err(format!(
                        "{}: {:?}",
                        String::from_utf8_lossy(frame.command),
                        frame.header_str("message")
                    )),
                });
            })?;
        }
        if let Some(Err(e)) = answer {
            bail!("CONNECT as {user} refused: {e}");
        }
        latencies.push(began.elapsed());
        let _ = conn.write_all(b"DISCONNECT\n\n\0").await;
    }
    Ok(latencies)
}
