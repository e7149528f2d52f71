//! A recovery storm: many users, each with stored messages they have not received, all
//! connect and subscribe at the same moment; how long until every one of them has every
//! message. The messages are published through the HTTP API while nobody is connected (the
//! users were offline, or their node went away), then every user opens a STOMP connection
//! over TCP at once, and each subscription's replay brings what was missed.
//!
//! Counts are checked, not assumed: the figure is only printed when every user received
//! exactly the messages published to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::{self, RequestBuilder, JSON_END};
use crate::stomp::{self, Frame, Scanner};

#[derive(Debug, clap::Args)]
pub struct StormOpts {
    /// The node's STOMP TCP address (where the users connect).
    #[arg(long)]
    pub stomp: SocketAddr,
    /// The node's HTTP address (where the messages are published).
    #[arg(long)]
    pub http: SocketAddr,
    /// The publish API key.
    #[arg(long, default_value = "bench-key")]
    pub api_key: String,
    /// Users.
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    /// Messages each user missed.
    #[arg(long, default_value_t = 20)]
    pub missed: usize,
    /// HTTP connections publishing, each pipelining its requests.
    #[arg(long, default_value_t = 16)]
    pub publishers: usize,
    /// Worker threads of the tool.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Give up after this long (seconds).
    #[arg(long, default_value_t = 120)]
    pub timeout_s: u64,
    /// A run id in the users' names, so runs against one Redis do not share streams.
    #[arg(long, default_value = "storm")]
    pub run: String,
}

pub fn main(opts: StormOpts) -> anyhow::Result<()> {
    crate::runtime(opts.threads)?.block_on(storm(opts))
}

fn user(opts: &StormOpts, i: usize) -> String {
    format!("{}-u{i}", opts.run)
}

async fn storm(opts: StormOpts) -> anyhow::Result<()> {
    let opts = Arc::new(opts);
    let started = Instant::now();
    publish_all(&opts).await?;
    let published_in = started.elapsed();

    let deadline = Duration::from_secs(opts.timeout_s);
    let storm = Instant::now();
    let tasks: Vec<_> = (0..opts.users)
        .map(|i| {
            let opts = opts.clone();
            tokio::spawn(async move { recover(&opts, i, storm, deadline).await })
        })
        .collect();
    let mut connected = Vec::with_capacity(opts.users);
    let mut finished = Vec::with_capacity(opts.users);
    let mut failures = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await? {
            Ok((subscribed, done)) => {
                connected.push(subscribed);
                finished.push(done);
            }
            Err(e) => failures.push(format!("{}: {e}", user(&opts, i))),
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} users did not recover: {}",
            failures.len(),
            opts.users,
            failures[..failures.len().min(5)].join("; ")
        );
    }
    finished.sort();
    connected.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pick = |v: &[Duration], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    println!(
        "{{\"users\":{},\"missed_each\":{},\"published_s\":{:.2},\"all_subscribed_ms\":{:.0},\
         \"recovered_p50_ms\":{:.0},\"recovered_p99_ms\":{:.0},\"last_message_ms\":{:.0},\
         \"messages\":{}}}",
        opts.users,
        opts.missed,
        published_in.as_secs_f64(),
        ms(*connected.last().expect("users > 0")),
        ms(pick(&finished, 0.5)),
        ms(pick(&finished, 0.99)),
        ms(*finished.last().expect("users > 0")),
        opts.users * opts.missed
    );
    Ok(())
}

/// Publishes `missed` messages to every user through the API, `publishers` connections at a
/// time, each pipelining up to 64 requests; fails on any answer but 202 `"stored":true`.
async fn publish_all(opts: &Arc<StormOpts>) -> anyhow::Result<()> {
    let tasks: Vec<_> = (0..opts.publishers)
        .map(|p| {
            let opts = opts.clone();
            tokio::spawn(async move {
                let mut conn = TcpStream::connect(opts.http).await?;
                conn.set_nodelay(true)?;
                let host = opts.http.to_string();
                let builder =
                    RequestBuilder::new(&host, "/api/v1/tenants/default/publish", &opts.api_key);
                let mine: Vec<(usize, usize)> = (0..opts.users)
                    .flat_map(|u| (0..opts.missed).map(move |m| (u, m)))
                    .skip(p)
                    .step_by(opts.publishers)
                    .collect();
                let mut buf = Vec::with_capacity(64 * 1024);
                for chunk in mine.chunks(64) {
                    let mut out = Vec::new();
                    for &(u, m) in chunk {
                        let prefix = http::json_prefix("/queue/storm", Some(&user(&opts, u)));
                        builder.write(&mut out, &[&prefix, format!("m{m}").as_bytes(), JSON_END]);
                    }
                    conn.write_all(&out).await?;
                    let mut answered = 0;
                    while answered < chunk.len() {
                        while let Some(response) = http::parse_response(&buf)? {
                            if response.status != 202
                                || !contains(response.body, b"\"stored\":true")
                            {
                                bail!(
                                    "publish answered {} {}",
                                    response.status,
                                    String::from_utf8_lossy(response.body)
                                );
                            }
                            let len = response.len;
                            buf.drain(..len);
                            answered += 1;
                            if answered == chunk.len() {
                                break;
                            }
                        }
                        if answered < chunk.len() {
                            let mut read = [0u8; 16 * 1024];
                            let n = conn.read(&mut read).await?;
                            if n == 0 {
                                bail!("the API closed the connection");
                            }
                            buf.extend_from_slice(&read[..n]);
                        }
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// User `i` connects, subscribes and reads until it has every missed message: the time from
/// the storm's start to its RECEIPT and to its last message.
async fn recover(
    opts: &StormOpts,
    i: usize,
    storm: Instant,
    deadline: Duration,
) -> anyhow::Result<(Duration, Duration)> {
    let work = async {
        let mut conn = TcpStream::connect(opts.stomp).await.context("connect")?;
        conn.set_nodelay(true)?;
        let mut out = stomp::connect_frame(&[
            ("login".to_string(), user(opts, i)),
            ("host".to_string(), "default".to_string()),
        ]);
        out.extend_from_slice(&stomp::subscribe_frame("/user/queue/storm"));
        conn.write_all(&out).await?;
        let mut scanner = Scanner::new(1 << 20);
        let mut read = vec![0u8; 16 * 1024];
        let (mut subscribed, mut got) = (None, 0usize);
        let mut error = None;
        while got < opts.missed || subscribed.is_none() {
            let n = conn.read(&mut read).await?;
            if n == 0 {
                bail!("closed after {got} messages");
            }
            scanner.feed(&read[..n], |frame| {
                let Some(frame) = Frame::parse(frame) else {
                    return;
                };
                match frame.command {
                    b"MESSAGE" => got += 1,
                    b"RECEIPT" => subscribed = Some(storm.elapsed()),
                    b"ERROR" => {
                        error = Some(frame.header_str("message").unwrap_or("?").to_string())
                    }
                    _ => {}
                }
            })?;
            if let Some(e) = error.take() {
                bail!("ERROR {e}");
            }
        }
        if got != opts.missed {
            bail!("{got} messages, {} expected", opts.missed);
        }
        Ok((subscribed.expect("looped until set"), storm.elapsed()))
    };
    tokio::time::timeout(deadline, work)
        .await
        .map_err(|_| anyhow::anyhow!("not recovered within {deadline:?}"))?
}
