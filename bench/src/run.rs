//! `stompbox-bench run`: the phases of a measurement (memory before, connect and subscribe
//! everyone, settle, memory, publish or idle, drain, memory) and the report they add up to.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};

use crate::http;
use crate::net::{self, Url};
use crate::procfs;
use crate::publisher::{
    self, ApiPublisher, ApiTarget, Plan, StompPublisher, StompTarget, Transport,
};
use crate::stats::{self, Clock, ErrorLog, Progress};
use crate::subscriber::{self, Setup};
use crate::template::{
    publish_key, render_headers, subscription_key, user_of, Expectation, HeaderTemplate, Template,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PublishMode {
    /// SEND frames over a STOMP WebSocket connection per publisher.
    Stomp,
    /// The HTTP publish API, one keep-alive pipelined connection per publisher.
    Api,
    /// Nothing: connect, subscribe, measure memory.
    None,
}

/// Options of `stompbox-bench run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunOpts {
    /// The subscribers' WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Sec-WebSocket-Protocol offer, a comma list; empty for none.
    #[arg(long, default_value = "v12.stomp")]
    pub subprotocol: String,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Connections in their handshake (TCP + upgrade + CONNECT + SUBSCRIBE) at once.
    #[arg(long, default_value_t = 256)]
    pub handshake_concurrency: usize,
    /// Source addresses for subscriber sockets, used round-robin (comma list).
    #[arg(long, value_delimiter = ',')]
    pub source_ips: Vec<IpAddr>,
    /// Bind subscriber sockets round-robin to 127.0.0.1 ..= 127.0.0.K (default: 1, or
    /// ceil(N / 20000) beyond 20,000 connections, so the ephemeral ports suffice).
    #[arg(long)]
    pub source_ip_count: Option<usize>,
    /// Subscriber CONNECT header `name=value`, repeatable; `{i}` is the connection index.
    #[arg(long = "connect-header")]
    pub connect_headers: Vec<HeaderTemplate>,
    /// Subscriber CONNECT header `name=PATH`, repeatable: connection i sends line i (modulo
    /// the line count) of the file, e.g. a token per user.
    #[arg(long = "connect-header-file", value_parser = HeaderTemplate::from_file)]
    pub connect_header_files: Vec<HeaderTemplate>,
    /// What each subscriber subscribes to; `{i}` is the connection index.
    #[arg(long, default_value = "/topic/bench")]
    pub subscribe: String,
    /// How to publish.
    #[arg(long, value_enum, default_value_t = PublishMode::Stomp)]
    pub publish: PublishMode,
    /// The STOMP publishers' WebSocket URL (default: --url).
    #[arg(long)]
    pub publish_url: Option<String>,
    /// Publisher CONNECT header `name=value`, repeatable; `{i}` is the publisher index.
    #[arg(long = "publish-connect-header")]
    pub publish_connect_headers: Vec<HeaderTemplate>,
    /// Publisher CONNECT header `name=PATH`, repeatable: publisher p sends line p of the file.
    #[arg(long = "publish-connect-header-file", value_parser = HeaderTemplate::from_file)]
    pub publish_connect_header_files: Vec<HeaderTemplate>,
    /// Publisher connections (STOMP or API).
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// The publish API's URL.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8080/api/v1/tenants/default/publish"
    )]
    pub api_url: String,
    /// The publish API's bearer key.
    #[arg(long)]
    pub api_key: Option<String>,
    /// API `receiver` template (`{j}` = target index); with it, --dest is the user destination
    /// (e.g. /queue/bench).
    #[arg(long)]
    pub api_receiver: Option<String>,
    /// API requests in flight per connection (HTTP/1.1 pipelining).
    #[arg(long, default_value_t = 32)]
    pub api_pipeline: usize,
    /// Publish destination template; `{j}` cycles over 0..--targets.
    #[arg(long, default_value = "/topic/bench")]
    pub dest: String,
    /// How many targets `{j}` cycles over.
    #[arg(long, default_value_t = 1)]
    pub targets: usize,
    /// Messages per second over all publishers; 0: as fast as the window allows.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Messages to publish in all (default: --duration 10 if neither is given).
    #[arg(long)]
    pub messages: Option<u64>,
    /// Seconds to publish for.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Send this many messages back to back each time (the rate then spaces the bursts).
    #[arg(long, default_value_t = 0)]
    pub burst: usize,
    /// Messages in flight (published, not yet delivered everywhere) at most; 0: unbounded.
    #[arg(long, default_value_t = 1000)]
    pub window: u64,
    /// Deliveries (messages x their subscribers) in flight at most.
    #[arg(long, default_value_t = 1_000_000)]
    pub window_deliveries: u64,
    /// Pad each body to this many bytes (the stamp takes the first ~20).
    #[arg(long, default_value_t = 0)]
    pub body_bytes: usize,
    /// How long to wait for stragglers after the last publish.
    #[arg(long, default_value_t = 2000)]
    pub drain_ms: u64,
    /// A broker process whose memory (VmRSS) and CPU time to report; repeatable.
    #[arg(long = "node-pid")]
    pub node_pids: Vec<u32>,
    /// Idle time after all connections are ready, before memory is read.
    #[arg(long, default_value_t = 1000)]
    pub settle_ms: u64,
    /// Connect and subscribe, wait this long, read memory, publish nothing.
    #[arg(long)]
    pub idle_secs: Option<f64>,
    /// Runtime threads of the tool (1: one core for the tool, the rest for the broker).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Time a connection gets from TCP connect to its subscription's RECEIPT.
    #[arg(long, default_value_t = 30)]
    pub ready_timeout_secs: u64,
    /// The longest STOMP frame accepted from the broker.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_frame: usize,
    /// A label carried into the result.
    #[arg(long)]
    pub label: Option<String>,
    /// Print the result as one JSON line on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn main(opts: RunOpts) -> anyhow::Result<()> {
    check(&opts)?;
    let want = opts.connections as u64 + opts.publishers as u64 + 256;
    let limit = procfs::raise_nofile(want);
    if limit < want {
        eprintln!("warning: open-file limit is {limit}, below the {want} this run needs");
    }
    let runtime = crate::runtime(opts.threads)?;
    let report = runtime.block_on(run(&opts))?;
    eprint!("{}", report.summary());
    if opts.json {
        println!("{}", report.json);
    }
    // Closing thousands of sockets one task at a time is not worth waiting for.
    runtime.shutdown_background();
    Ok(())
}

fn check(opts: &RunOpts) -> anyhow::Result<()> {
    if opts.connections == 0 && opts.publish != PublishMode::None {
        bail!("--connections must be at least 1 to receive anything");
    }
    if opts.publishers == 0 || opts.targets == 0 || opts.handshake_concurrency == 0 {
        bail!("--publishers, --targets and --handshake-concurrency must be at least 1");
    }
    if opts.rate < 0.0 || !opts.rate.is_finite() {
        bail!("--rate must be a non-negative number");
    }
    if opts.publish == PublishMode::Api && opts.api_key.is_none() {
        bail!("--publish api needs --api-key");
    }
    if opts.api_pipeline == 0 {
        bail!("--api-pipeline must be at least 1");
    }
    Ok(())
}

/// Memory of one broker process at the three points of a run, KiB.
#[derive(Debug, Clone)]
struct NodeMemory {
    pid: u32,
    before: Option<u64>,
    ready: Option<u64>,
    end: Option<u64>,
    cpu_secs: Option<f64>,
}

/// The figures of a run, as JSON and as a summary for people.
pub struct Report {
    pub json: serde_json::Value,
    lines: Vec<String>,
}

impl Report {
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

/// Subscriber CONNECT headers, templates first, then those from files.
fn connect_headers(opts: &RunOpts) -> Vec<HeaderTemplate> {
    [opts.connect_headers.as_slice(), &opts.connect_header_files].concat()
}

fn subscriber_sources(opts: &RunOpts) -> Vec<IpAddr> {
    if !opts.source_ips.is_empty() {
        return opts.source_ips.clone();
    }
    let count = opts
        .source_ip_count
        .unwrap_or(if opts.connections > 20_000 {
            opts.connections.div_ceil(20_000)
        } else {
            1
        });
    if count > 1 {
        net::loopback_sources(count)
    } else {
        Vec::new()
    }
}

/// Runs the phases; everything measured goes into the report.
pub async fn run(opts: &RunOpts) -> anyhow::Result<Report> {
    let clock = Clock::new();
    let url = Url::parse(&opts.url, "ws")?;
    let protocols: Vec<String> = opts
        .subprotocol
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    let progress = Arc::new(Progress::default());
    let subscribe = Template::parse(&opts.subscribe);
    let shared = Arc::new(subscriber::Shared {
        url: url.clone(),
        protocols: protocols.clone(),
        connect_headers: connect_headers(opts),
        subscribe: subscribe.clone(),
        sources: subscriber_sources(opts),
        publishers: opts.publishers,
        ready_timeout: Duration::from_secs(opts.ready_timeout_secs),
        max_frame: opts.max_frame,
        clock,
        progress: progress.clone(),
        disconnected: Default::default(),
        disconnects: ErrorLog::default(),
    });
    let me = std::process::id();
    let mut nodes: Vec<NodeMemory> = opts
        .node_pids
        .iter()
        .map(|&pid| NodeMemory {
            pid,
            before: procfs::rss_kib(pid),
            ready: None,
            end: None,
            cpu_secs: None,
        })
        .collect();
    for node in &nodes {
        if node.before.is_none() {
            bail!(
                "cannot read /proc/{}/status: is --node-pid right?",
                node.pid
            );
        }
    }
    let tool_before = procfs::rss_kib(me);

    // Connect phase.
    let n = opts.connections;
    let (setup_tx, mut setup_rx) = mpsc::unbounded_channel();
    let slots = Arc::new(Semaphore::new(opts.handshake_concurrency));
    let connect_start = Instant::now();
    {
        let shared = shared.clone();
        let slots = slots.clone();
        tokio::spawn(async move {
            for i in 0..n {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                tokio::spawn(subscriber::run(i, shared.clone(), permit, setup_tx.clone()));
            }
        });
    }
    let mut ready = vec![false; n];
    let (mut n_ready, mut n_failed) = (0usize, 0usize);
    let setup_errors = ErrorLog::default();
    let mut last_note = Instant::now();
    while n_ready + n_failed < n {
        let next = tokio::time::timeout(Duration::from_secs(2), setup_rx.recv()).await;
        match next {
            Ok(Some(Setup::Ready(i))) => {
                ready[i] = true;
                n_ready += 1;
            }
            Ok(Some(Setup::Failed(reason))) => {
                n_failed += 1;
                setup_errors.record(reason);
            }
            Ok(None) => break,
            Err(_) => {}
        }
        if last_note.elapsed() >= Duration::from_secs(2) {
            eprintln!("connecting: {n_ready} ready, {n_failed} failed of {n}");
            last_note = Instant::now();
        }
    }
    let connect_secs = connect_start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(opts.settle_ms)).await;
    for node in &mut nodes {
        node.ready = procfs::rss_kib(node.pid);
    }
    let tool_ready = procfs::rss_kib(me);

    let mut lines = Vec::new();
    let label = opts.label.clone().unwrap_or_default();
    lines.push(format!(
        "stompbox-bench {label} (tool: {} thread{}, {})",
        opts.threads,
        if opts.threads == 1 { "" } else { "s" },
        opts.url
    ));
    lines.push(format!(
        "connections: {n_ready} ready, {n_failed} failed of {n} in {connect_secs:.2} s ({:.0}/s)",
        n_ready as f64 / connect_secs.max(1e-9)
    ));
    for (reason, count) in setup_errors.kinds() {
        lines.push(format!("  failed x{count}: {reason}"));
    }

    let mut json = json!({
        "label": opts.label,
        "url": opts.url,
        "subprotocol": opts.subprotocol,
        "tool_threads": opts.threads,
        "connections": n,
        "connections_ready": n_ready,
        "connections_failed": n_failed,
        "connect_secs": connect_secs,
        "connect_rate": n_ready as f64 / connect_secs.max(1e-9),
        "connect_errors": errors_json(&setup_errors),
        "subscribe": opts.subscribe,
    });

    let publishing = opts.idle_secs.is_none() && opts.publish != PublishMode::None;
    let cpu_start = Instant::now();
    let tool_cpu_before = procfs::cpu_secs(me);
    let machine_before = procfs::machine_busy_secs();
    for node in &mut nodes {
        node.cpu_secs = procfs::cpu_secs(node.pid);
    }
    if let Some(idle) = opts.idle_secs {
        lines.push(format!("idle for {idle} s, publishing nothing"));
        json["idle_secs"] = json!(idle);
        tokio::time::sleep(Duration::from_secs_f64(idle)).await;
    }
    if publishing {
        let ready_keys: Vec<String> = (0..n)
            .filter(|&i| ready[i])
            .map(|i| {
                let headers = render_headers(&shared.connect_headers, i);
                subscription_key(&subscribe.render(i, i), user_of(&headers))
            })
            .collect();
        publish(
            opts,
            clock,
            &protocols,
            &url,
            &ready_keys,
            progress.clone(),
            &mut json,
            &mut lines,
        )
        .await?;
    }
    let wall = cpu_start.elapsed().as_secs_f64();
    for node in &mut nodes {
        node.end = procfs::rss_kib(node.pid);
        node.cpu_secs = match (node.cpu_secs, procfs::cpu_secs(node.pid)) {
            (Some(before), Some(after)) => Some(after - before),
            _ => None,
        };
    }
    let tool_end = procfs::rss_kib(me);
    let machine_busy = match (machine_before, procfs::machine_busy_secs()) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let tool_cpu = match (tool_cpu_before, procfs::cpu_secs(me)) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };

    let disconnected = shared.disconnected.load(Ordering::Relaxed);
    json["disconnected"] = json!(disconnected);
    json["disconnect_reasons"] = errors_json(&shared.disconnects);
    if disconnected > 0 {
        lines.push(format!("disconnected after ready: {disconnected}"));
        for (reason, count) in shared.disconnects.kinds() {
            lines.push(format!("  x{count}: {reason}"));
        }
    }

    // Memory.
    let mib = |kib: Option<u64>| kib.map(|k| k as f64 / 1024.0);
    let per_conn = |before: Option<u64>, ready: Option<u64>| match (before, ready) {
        (Some(b), Some(r)) if n_ready > 0 => Some((r as f64 - b as f64) / n_ready as f64),
        _ => None,
    };
    let sum = |f: fn(&NodeMemory) -> Option<u64>| -> Option<u64> {
        nodes.iter().map(f).sum::<Option<u64>>()
    };
    let (before_total, ready_total, end_total) =
        (sum(|n| n.before), sum(|n| n.ready), sum(|n| n.end));
    let node_cpu_total: Option<f64> = nodes.iter().map(|n| n.cpu_secs).sum();
    json["nodes"] = nodes
        .iter()
        .map(|node| {
            json!({
                "pid": node.pid,
                "rss_before_mib": mib(node.before),
                "rss_ready_mib": mib(node.ready),
                "rss_end_mib": mib(node.end),
                "cpu_secs": node.cpu_secs,
                "cpu_pct": node.cpu_secs.map(|c| 100.0 * c / wall),
            })
        })
        .collect();
    if !nodes.is_empty() {
        json["rss_before_mib"] = json!(mib(before_total));
        json["rss_ready_mib"] = json!(mib(ready_total));
        json["rss_end_mib"] = json!(mib(end_total));
        json["rss_per_conn_kib"] = json!(per_conn(before_total, ready_total));
        json["rss_per_conn_end_kib"] = json!(per_conn(before_total, end_total));
        json["node_cpu_pct"] = json!(node_cpu_total.map(|c| 100.0 * c / wall));
        for node in &nodes {
            lines.push(format!(
                "node pid {}: rss {:.1} MiB before, {:.1} MiB ready, {:.1} MiB at end; cpu {}",
                node.pid,
                mib(node.before).unwrap_or(f64::NAN),
                mib(node.ready).unwrap_or(f64::NAN),
                mib(node.end).unwrap_or(f64::NAN),
                node.cpu_secs
                    .map(|c| format!("{:.0}% of one core", 100.0 * c / wall))
                    .unwrap_or_else(|| "?".into()),
            ));
        }
        if let Some(kib) = per_conn(before_total, ready_total) {
            lines.push(format!(
                "node rss per connection: {kib:.1} KiB when ready, {:.1} KiB at end",
                per_conn(before_total, end_total).unwrap_or(f64::NAN)
            ));
        }
    }
    json["tool_rss_mib"] = json!(mib(tool_end));
    json["tool_rss_per_conn_kib"] = json!(per_conn(tool_before, tool_ready));
    json["tool_cpu_pct"] = json!(tool_cpu.map(|c| 100.0 * c / wall));
    // Everything busy on the machine but the tool and the nodes: other processes, and kernel
    // time (network soft interrupts) not charged to any process.
    let other =
        machine_busy.map(|busy| busy - tool_cpu.unwrap_or(0.0) - node_cpu_total.unwrap_or(0.0));
    json["machine_cpu_pct"] = json!(machine_busy.map(|c| 100.0 * c / wall));
    json["other_cpu_pct"] = json!(other.map(|c| 100.0 * c / wall));
    json["cores"] = json!(std::thread::available_parallelism().map(|n| n.get()).ok());
    lines.push(format!(
        "tool: rss {:.1} MiB ({:.1} KiB per connection), cpu {} over {wall:.2} s",
        mib(tool_end).unwrap_or(f64::NAN),
        per_conn(tool_before, tool_ready).unwrap_or(f64::NAN),
        tool_cpu
            .map(|c| format!("{:.0}%", 100.0 * c / wall))
            .unwrap_or_else(|| "?".into()),
    ));
    if let (Some(busy), Some(other)) = (machine_busy, other) {
        lines.push(format!(
            "machine: {:.0}% busy of {} cores; {:.0}% of one core outside the tool{}",
            100.0 * busy / wall,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            100.0 * other / wall,
            if nodes.is_empty() { "" } else { " and nodes" },
        ));
    }
    Ok(Report { json, lines })
}

fn errors_json(log: &ErrorLog) -> serde_json::Value {
    log.kinds()
        .into_iter()
        .map(|(reason, count)| json!({"reason": reason, "count": count}))
        .collect()
}

/// Connects the publishers, publishes, drains, and reports deliveries and latency.
#[allow(clippy::too_many_arguments)]
async fn publish(
    opts: &RunOpts,
    clock: Clock,
    protocols: &[String],
    url: &Url,
    ready_keys: &[String],
    progress: Arc<Progress>,
    json: &mut serde_json::Value,
    lines: &mut Vec<String>,
) -> anyhow::Result<()> {
    let dest = Template::parse(&opts.dest);
    let receiver = opts.api_receiver.as_deref().map(Template::parse);
    let receiver = if opts.publish == PublishMode::Api {
        receiver
    } else {
        None
    };
    let destinations: Vec<String> = (0..opts.targets).map(|j| dest.render(j, j)).collect();
    let receivers: Vec<Option<String>> = (0..opts.targets)
        .map(|j| receiver.as_ref().map(|r| r.render(j, j)))
        .collect();
    let keys: Vec<String> = destinations
        .iter()
        .zip(&receivers)
        .map(|(d, r)| publish_key(d, r.as_deref()))
        .collect();
    let expectation = Expectation::new(ready_keys.iter().map(String::as_str), &keys);
    let duration = match (opts.messages, opts.duration) {
        (None, None) => Some(Duration::from_secs(10)),
        (_, d) => d.map(Duration::from_secs_f64),
    };
    let plan = Plan {
        messages: opts.messages,
        duration,
        rate: opts.rate,
        burst: opts.burst,
        window: opts.window.max(opts.burst as u64),
        window_deliveries: opts.window_deliveries.max(1),
        publishers: opts.publishers,
        stall: Duration::from_millis(opts.drain_ms.max(100)),
    };
    let shared = Arc::new(publisher::Shared::new(
        plan,
        expectation,
        clock,
        progress.clone(),
    ));

    let mut transports = Vec::new();
    match opts.publish {
        PublishMode::Stomp => {
            let target = StompTarget {
                url: match &opts.publish_url {
                    Some(u) => Url::parse(u, "ws")?,
                    None => url.clone(),
                },
                protocols: protocols.to_vec(),
                connect_headers: [
                    opts.publish_connect_headers.as_slice(),
                    &opts.publish_connect_header_files,
                ]
                .concat(),
                destinations,
                max_frame: opts.max_frame,
            };
            for p in 0..opts.publishers {
                let publisher =
                    StompPublisher::connect(p, &target, opts.body_bytes, shared.clone())
                        .await
                        .with_context(|| format!("STOMP publisher {p}"))?;
                transports.push(Transport::Stomp(publisher));
            }
        }
        PublishMode::Api => {
            let target = ApiTarget {
                url: Url::parse(&opts.api_url, "http")?,
                api_key: opts.api_key.clone().unwrap_or_default(),
                prefixes: destinations
                    .iter()
                    .zip(&receivers)
                    .map(|(d, r)| http::json_prefix(d, r.as_deref()))
                    .collect(),
                // A burst is written whole, so it must fit in the pipeline.
                depth: opts.api_pipeline.max(opts.burst),
            };
            for p in 0..opts.publishers {
                let publisher = ApiPublisher::connect(&target, opts.body_bytes, shared.clone())
                    .await
                    .with_context(|| format!("API publisher {p}"))?;
                transports.push(Transport::Api(publisher));
            }
        }
        PublishMode::None => unreachable!("only called to publish"),
    }

    // Whatever arrived before (nothing, normally) is not part of the measurement.
    let received_before = progress.received();
    stats::reset_all();
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let tasks: Vec<_> = transports
        .into_iter()
        .enumerate()
        .map(|(p, t)| tokio::spawn(publisher::drive(p, t, shared.clone(), start)))
        .collect();
    // Held until the run ends; see `publisher::drive`.
    let mut transports = Vec::new();
    for task in tasks {
        match task.await {
            Ok((transport, result)) => {
                transports.push(transport);
                if let Err(e) = result {
                    shared.errors.record(format!("{e:#}"));
                }
            }
            Err(e) => shared.errors.record(format!("publisher task: {e}")),
        }
    }
    let publish_end_ns = clock.now_ns();
    for transport in &transports {
        transport.settle(Duration::from_millis(opts.drain_ms)).await;
    }
    let expected_total = shared.expected() + received_before;
    progress
        .wait_for(expected_total, Duration::from_millis(opts.drain_ms))
        .await;

    let stats = stats::merged();
    let published = shared.published.load(Ordering::Acquire);
    let first_ns = shared.first_ns.load(Ordering::Acquire);
    let last_pub_ns = shared.last_ns.load(Ordering::Acquire);
    let expected = shared.expected();
    let received = stats.received;
    let unique = received.saturating_sub(stats.duplicates);
    let missing = expected.saturating_sub(unique);
    let publish_secs = if published > 0 {
        (last_pub_ns.saturating_sub(first_ns)) as f64 / 1e9
    } else {
        0.0
    };
    let delivery_secs = if received > 0 {
        stats.last_ns.saturating_sub(first_ns) as f64 / 1e9
    } else {
        0.0
    };
    let rate = |count: u64, secs: f64| if secs > 0.0 { count as f64 / secs } else { 0.0 };
    let deliveries_per_sec = rate(received, delivery_secs);
    let ms = |ns: u64| ns as f64 / 1e6;
    let latency = (!stats.latency.is_empty()).then(|| {
        json!({
            "p50": ms(stats.latency.value_at_quantile(0.5)),
            "p90": ms(stats.latency.value_at_quantile(0.9)),
            "p99": ms(stats.latency.value_at_quantile(0.99)),
            "p999": ms(stats.latency.value_at_quantile(0.999)),
            "max": ms(stats.latency.max()),
            "mean": stats.latency.mean() / 1e6,
        })
    });

    let mode = match opts.publish {
        PublishMode::Stomp => "stomp",
        PublishMode::Api => "api",
        PublishMode::None => "none",
    };
    let extra = json!({
        "publish": mode,
        "publishers": opts.publishers,
        "dest": opts.dest,
        "api_receiver": receiver.as_ref().map(|_| opts.api_receiver.clone()),
        "targets": opts.targets,
        "rate_target": opts.rate,
        "burst": opts.burst,
        "window": opts.window,
        "window_deliveries": opts.window_deliveries,
        "body_bytes": opts.body_bytes,
        "fanout_mean": shared.expectation.mean(),
        "messages_published": published,
        "publish_secs": publish_secs,
        "publish_rate": rate(published, publish_secs),
        "deliveries_expected": expected,
        "received": received,
        "missing": missing,
        "duplicates": stats.duplicates,
        "out_of_order": stats.out_of_order,
        "unstamped": stats.unstamped,
        "delivery_secs": delivery_secs,
        "deliveries_per_sec": deliveries_per_sec,
        "latency_ms": latency,
        "window_stalls": shared.window_stalls.load(Ordering::Relaxed),
        "api_accepted": shared.api_accepted.load(Ordering::Relaxed),
        "api_refused": shared.api_refused.load(Ordering::Relaxed),
        "publish_errors": errors_json(&shared.errors),
        "bytes_received": stats.bytes,
        "drain_secs": (clock.now_ns().saturating_sub(publish_end_ns)) as f64 / 1e9,
    });
    if let (Some(obj), serde_json::Value::Object(more)) = (json.as_object_mut(), extra) {
        obj.extend(more);
    }

    lines.push(format!(
        "published: {published} msgs via {mode} x{} in {publish_secs:.2} s ({:.0}/s{}), mean fan-out {:.2}",
        opts.publishers,
        rate(published, publish_secs),
        if opts.rate > 0.0 {
            format!(", target {}/s", opts.rate)
        } else {
            String::new()
        },
        shared.expectation.mean(),
    ));
    if opts.publish == PublishMode::Api {
        lines.push(format!(
            "api: {} accepted, {} refused",
            shared.api_accepted.load(Ordering::Relaxed),
            shared.api_refused.load(Ordering::Relaxed)
        ));
    }
    lines.push(format!(
        "deliveries: expected {expected}, received {received}, missing {missing}, duplicates {}, out of order {}{}",
        stats.duplicates,
        stats.out_of_order,
        if stats.unstamped > 0 {
            format!(", unstamped {}", stats.unstamped)
        } else {
            String::new()
        }
    ));
    lines.push(format!(
        "throughput: {deliveries_per_sec:.0} deliveries/s (first publish to last delivery, {delivery_secs:.2} s)"
    ));
    if !stats.latency.is_empty() {
        let l = &stats.latency;
        lines.push(format!(
            "latency ms: p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            ms(l.value_at_quantile(0.5)),
            ms(l.value_at_quantile(0.99)),
            ms(l.value_at_quantile(0.999)),
            ms(l.max())
        ));
    }
    let stalls = shared.window_stalls.load(Ordering::Relaxed);
    if stalls > 0 {
        lines.push(format!(
            "window stalls: {stalls} (no delivery for {} ms with messages in flight)",
            opts.drain_ms
        ));
    }
    for (reason, count) in shared.errors.kinds() {
        lines.push(format!("  publish error x{count}: {reason}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        opts: RunOpts,
    }

    fn opts(args: &[&str]) -> RunOpts {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        Wrap::parse_from(all).opts
    }

    async fn null_broker() -> std::net::SocketAddr {
        let listener = crate::null_broker::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(crate::null_broker::serve(listener));
        addr
    }

    #[test]
    fn source_addresses_default() {
        assert!(subscriber_sources(&opts(&["--connections", "20000"])).is_empty());
        assert_eq!(
            subscriber_sources(&opts(&["--connections", "50000"])).len(),
            3
        );
        assert_eq!(
            subscriber_sources(&opts(&["--source-ips", "127.0.0.5,127.0.0.6"])).len(),
            2
        );
    }

    // The whole tool against the null broker: fan-out, then targeted user destinations. One
    // test, because the subscribers' stats are per thread and would mix across tests.
    #[tokio::test]
    async fn end_to_end_against_null_broker() {
        let addr = null_broker().await;
        let url = format!("ws://{addr}/ws");
        let me = std::process::id().to_string();
        let fanout = opts(&[
            "--url",
            &url,
            "--connections",
            "20",
            "--messages",
            "200",
            "--body-bytes",
            "64",
            "--settle-ms",
            "0",
            "--drain-ms",
            "2000",
            "--node-pid",
            &me,
            "--window",
            "50",
        ]);
        let report = run(&fanout).await.unwrap();
        let j = &report.json;
        assert_eq!(j["connections_ready"], 20, "{}", report.summary());
        assert_eq!(j["messages_published"], 200);
        assert_eq!(j["deliveries_expected"], 4000);
        assert_eq!(j["received"], 4000, "{}", report.summary());
        assert_eq!(j["missing"], 0);
        assert_eq!(j["duplicates"], 0);
        assert!(j["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
        assert!(j["rss_per_conn_kib"].is_number());

        let targeted = opts(&[
            "--url",
            &url,
            "--connections",
            "10",
            "--connect-header",
            "userid=u{i}",
            "--subscribe",
            "/user/queue/bench",
            "--dest",
            "/user/u{j}/queue/bench",
            "--targets",
            "12",
            "--messages",
            "120",
            "--rate",
            "2000",
            "--burst",
            "4",
            "--publishers",
            "2",
            "--settle-ms",
            "0",
            "--drain-ms",
            "500",
        ]);
        let report = run(&targeted).await.unwrap();
        let j = &report.json;
        // Targets 10 and 11 have no subscriber.
        assert_eq!(j["deliveries_expected"], 100, "{}", report.summary());
        assert_eq!(j["missing"], 0, "{}", report.summary());
        assert_eq!(j["out_of_order"], 0);
    }
}
