//! The benchmark's scenarios as data: every case with its sizes (small or full), the systems it
//! runs on, the figures its table rows show, and the `stompbox-bench run` flags of one run.

use std::path::Path;
use std::time::Duration;

use super::table::grouped;
use super::table::{
    F_BYSTANDER_P99, F_CONNECT_RATE, F_P50, F_P99, F_P999, F_RATE, F_RSS_ADDED, F_RSS_PER_CONN,
};

/// The publish API's key in every stompbox node the suite starts.
pub const API_KEY: &str = "bench-api-key-0123456789abcdef";
/// The `jwt-auth` plugin's secret in the auth scenario.
pub const JWT_SECRET: &str = "bench-jwt-secret-0123456789abcdef0123456789";

/// The systems under test, in the table's column order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum System {
    Stompbox,
    /// Stompbox from the earlier build (`--baseline-bin`), beside the current one.
    StompboxBefore,
    Rabbit,
    Null,
    /// Two stompbox nodes and Redis; shown in the stompbox column of a row of its own.
    Cluster,
    /// The same from the earlier build, both nodes.
    ClusterBefore,
}

impl System {
    /// Its name in logs and results.jsonl.
    pub fn name(self) -> &'static str {
        match self {
            System::Stompbox => "stompbox",
            System::StompboxBefore => "stompbox-before",
            System::Rabbit => "rabbitmq",
            System::Null => "null",
            System::Cluster => "stompbox-2",
            System::ClusterBefore => "stompbox-2-before",
        }
    }

    /// The earlier build's counterpart of a stompbox system.
    pub fn before(self) -> Option<System> {
        match self {
            System::Stompbox => Some(System::StompboxBefore),
            System::Cluster => Some(System::ClusterBefore),
            _ => None,
        }
    }

    /// The current build's system this one is run as: itself, unless it is an earlier build's.
    pub fn current(self) -> System {
        match self {
            System::StompboxBefore => System::Stompbox,
            System::ClusterBefore => System::Cluster,
            other => other,
        }
    }

    /// It runs the earlier build.
    pub fn is_before(self) -> bool {
        self.current() != self
    }
}

/// The scenarios, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Fanout,
    Targeted,
    Latency,
    Idle,
    Auth,
    Cluster,
    Attack,
}

impl Scenario {
    pub const ALL: [Scenario; 7] = [
        Scenario::Fanout,
        Scenario::Targeted,
        Scenario::Latency,
        Scenario::Idle,
        Scenario::Auth,
        Scenario::Cluster,
        Scenario::Attack,
    ];

    /// Its name for `--only`.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Targeted => "targeted",
            Scenario::Latency => "latency",
            Scenario::Idle => "idle",
            Scenario::Auth => "auth",
            Scenario::Cluster => "cluster",
            Scenario::Attack => "attack",
        }
    }

    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Its cell in the table's first column.
    pub fn group(self) -> &'static str {
        match self {
            Scenario::Fanout => "1. fan-out",
            Scenario::Targeted => "2. targeted",
            Scenario::Latency => "3. steady-rate latency",
            Scenario::Idle => "4. idle memory",
            Scenario::Auth => "5. connect with auth",
            Scenario::Cluster => "6. cluster",
            Scenario::Attack => "7. one hostile connection",
        }
    }
}

/// Which way a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Max,
    Min,
}

/// One row of a case: its label, the JSON field it shows, and which way is better.
#[derive(Debug)]
pub struct Figure {
    pub label: &'static str,
    pub field: &'static str,
    pub better: Better,
}

const fn figure(label: &'static str, field: &'static str, better: Better) -> Figure {
    Figure {
        label,
        field,
        better,
    }
}

pub const RATE: &[Figure] = &[figure("deliveries/s", F_RATE, Better::Max)];
/// At a steady rate every system keeps up or shows missing deliveries: the round is picked by
/// its tail.
pub const RATE_P99: &[Figure] = &[
    figure("p99 ms", F_P99, Better::Min),
    figure("deliveries/s", F_RATE, Better::Max),
];
pub const LATENCY: &[Figure] = &[
    figure("p99 ms", F_P99, Better::Min),
    figure("p50 ms", F_P50, Better::Min),
    figure("p99.9 ms", F_P999, Better::Min),
];
pub const MEMORY: &[Figure] = &[
    figure("KiB per connection", F_RSS_PER_CONN, Better::Min),
    figure("connects/s, no auth", F_CONNECT_RATE, Better::Max),
];
pub const CONNECT: &[Figure] = &[figure("connects/s", F_CONNECT_RATE, Better::Max)];
pub const ATTACK: &[Figure] = &[
    figure("MiB the node grew", F_RSS_ADDED, Better::Min),
    figure("bystander p99 ms", F_BYSTANDER_P99, Better::Min),
];

/// What one run of a case asks of the load tool.
#[derive(Debug, Clone, PartialEq)]
pub enum Load {
    /// One topic; `messages` in bursts of `burst`, as fast as the window allows.
    FanoutBurst {
        subs: usize,
        messages: usize,
        burst: usize,
    },
    /// One topic at `rate` messages/s for `secs`.
    FanoutSteady { subs: usize, rate: usize, secs: u64 },
    /// Each message to one of `users`, over STOMP from `publishers`.
    Targeted {
        users: usize,
        messages: usize,
        publishers: usize,
    },
    /// The same through the HTTP publish API (stompbox only).
    TargetedApi { users: usize, messages: usize },
    /// One topic, `subs` subscribers at `rate` messages/s for `secs`.
    Latency { subs: usize, rate: usize, secs: u64 },
    /// `n` subscribed clients, each on its own topic, publishing nothing.
    Idle {
        n: usize,
        settle_ms: u64,
        idle_secs: u64,
    },
    /// `n` clients connecting with credentials (a JWT each for stompbox, a user each for
    /// RabbitMQ).
    Auth { n: usize },
    /// Each message to one of `users`; at `rate` for `secs`, or `messages` as fast as
    /// possible.
    Cluster {
        users: usize,
        rate: Option<(usize, u64)>,
        messages: usize,
    },
    /// `consumers` of one queue (on node 2 of a cluster) and one publisher (on node 1) sending
    /// `messages` as fast as it can.
    ClusterQueue { consumers: usize, messages: usize },
    /// One hostile connection of `kind` (an `attack --kind` value) sending `count` frames at
    /// most, beside a bystander (`stompbox-bench attack`).
    Attack {
        kind: &'static str,
        count: usize,
        secs: u64,
    },
}

/// The load tool's subcommand for `load`.
pub fn subcommand(load: &Load) -> &'static str {
    match load {
        Load::Attack { .. } => "attack",
        _ => "run",
    }
}

/// One case: a row group of the table, run on each of `systems`, round after round.
#[derive(Debug)]
pub struct Case {
    pub scenario: Scenario,
    pub key: String,
    pub title: String,
    pub systems: Vec<System>,
    pub load: Load,
    /// The first picks each system's better round.
    pub figures: &'static [Figure],
    /// The most one run of the tool may take.
    pub timeout: Duration,
    pub note: String,
    /// A RabbitMQ node restarted before each of its runs: Erlang keeps the memory an earlier
    /// run freed, which would hide the growth being measured.
    pub fresh_rabbit: bool,
}

/// What the plan depends on besides `--small`.
#[derive(Debug, Clone)]
pub struct Machine {
    pub rabbit: bool,
    /// RabbitMQ's socket limit, as it reports it.
    pub rabbit_sockets: Option<u64>,
    /// Every process's hard descriptor limit.
    pub nofile_hard: u64,
    /// An earlier stompbox build is given (`--baseline-bin`): it runs beside the current one.
    pub baseline: bool,
}

impl Machine {
    /// The most connections one idle run may open: each process (the load tool, a node) holds
    /// one descriptor per connection; room is left for the rest (logs, listeners, the
    /// publishers), and RabbitMQ's socket limit is kept.
    pub fn most_connections(&self) -> usize {
        let mut most = self.nofile_hard.saturating_sub(1_000);
        if self.rabbit {
            if let Some(sockets) = self.rabbit_sockets {
                most = most.min(sockets.saturating_sub(500));
            }
        }
        (most / 1_000 * 1_000).max(1_000) as usize
    }
}

fn n(v: usize) -> String {
    grouped(v as f64, 0)
}

/// The cases in the order they run.
pub fn plan(small: bool, machine: &Machine) -> Vec<Case> {
    use System::*;
    let pick = |s: usize, full: usize| if small { s } else { full };
    let with_rabbit: Vec<System> = if machine.rabbit {
        vec![Stompbox, Rabbit]
    } else {
        vec![Stompbox]
    };
    let three: Vec<System> = with_rabbit.iter().copied().chain([Null]).collect();
    let run_s = pick(2, 10) as u64; // seconds of steady publishing
    let timeout = Duration::from_secs(pick(120, 900) as u64);
    let mut cases = Vec::new();
    let case = |scenario, key: String, title: String, systems: &[System], load, figures| Case {
        scenario,
        key,
        title,
        systems: systems.to_vec(),
        load,
        figures,
        timeout,
        note: String::new(),
        fresh_rabbit: false,
    };

    // 1. fan-out: one topic; bursts as fast as the window allows, then a steady rate.
    for subs in if small {
        vec![100]
    } else {
        vec![1_000, 10_000]
    } {
        let messages = (pick(20_000, 1_000_000) / subs).max(1);
        let burst = (messages / 10).max(1);
        cases.push(case(
            Scenario::Fanout,
            format!("fanout-{subs}-burst"),
            format!(
                "1 topic, {} subscribers: {} msgs in bursts of {}",
                n(subs),
                n(messages),
                n(burst)
            ),
            &three,
            Load::FanoutBurst {
                subs,
                messages,
                burst,
            },
            RATE,
        ));
        let rate = (pick(10_000, 50_000) / subs).max(1);
        cases.push(case(
            Scenario::Fanout,
            format!("fanout-{subs}-steady"),
            format!(
                "1 topic, {} subscribers: {} msgs/s ({} deliveries/s) for {run_s}s",
                n(subs),
                n(rate),
                n(rate * subs)
            ),
            &three,
            Load::FanoutSteady {
                subs,
                rate,
                secs: run_s,
            },
            RATE_P99,
        ));
    }

    // 2. targeted: each message to one user, over STOMP and (stompbox only) the publish API.
    let users = pick(200, 10_000);
    let messages = pick(10_000, 200_000);
    let mut c = case(
        Scenario::Targeted,
        "targeted".into(),
        format!("{} users, {} msgs, each to one user", n(users), n(messages)),
        &three,
        Load::Targeted {
            users,
            messages,
            publishers: 1,
        },
        RATE,
    );
    c.note = "stompbox and the null broker: CONNECT `userid=u{i}`, subscribe `/user/queue/bench`, \
             SEND to `/user/u{j}/queue/bench`; RabbitMQ (no user destinations): subscribe \
             `/topic/u.{i}`, SEND to `/topic/u.{j}`"
        .into();
    cases.push(c);
    // Four publishers: whether a system's figure was bounded by one publishing connection
    // (RabbitMQ serializes a connection's frames in one Erlang process).
    cases.push(case(
        Scenario::Targeted,
        "targeted-4-publishers".into(),
        "the same from 4 publishers".into(),
        &three,
        Load::Targeted {
            users,
            messages,
            publishers: 4,
        },
        RATE,
    ));
    cases.push(case(
        Scenario::Targeted,
        "targeted-api".into(),
        "the same through the HTTP publish API (`receiver: u{j}`)".into(),
        &[Stompbox],
        Load::TargetedApi { users, messages },
        RATE,
    ));

    // 3. latency at a steady 20,000 deliveries/s (small: 10,000).
    let offered = pick(10_000, 20_000);
    let lat_s = pick(3, 20) as u64;
    for subs in if small { vec![50] } else { vec![100, 1_000] } {
        let rate = offered / subs;
        cases.push(case(
            Scenario::Latency,
            format!("latency-{subs}"),
            format!(
                "{} deliveries/s: {} subscribers x {} msgs/s for {lat_s}s",
                n(offered),
                n(subs),
                n(rate)
            ),
            &three,
            Load::Latency {
                subs,
                rate,
                secs: lat_s,
            },
            LATENCY,
        ));
    }

    // 4. idle memory per connected, subscribed client (each on its own topic, as a browser
    // with its own channel would be).
    let most = machine.most_connections();
    for count in if small {
        vec![100, 200]
    } else {
        vec![10_000, most]
    } {
        let mut note = String::new();
        if count == most && !small {
            note = format!(
                "{} is the most this machine allows: every process's descriptors are capped at \
                 {} (`ulimit -Hn`; there is no CAP_SYS_RESOURCE to raise it)",
                n(most),
                grouped(machine.nofile_hard as f64, 0)
            );
            if let (true, Some(sockets)) = (machine.rabbit, machine.rabbit_sockets) {
                note += &format!(
                    " and RabbitMQ keeps its sockets to {} of those",
                    grouped(sockets as f64, 0)
                );
            }
            note += ". The issue's 50,000 needs a hard limit above ~51,000.";
        }
        let mut c = case(
            Scenario::Idle,
            format!("idle-{count}"),
            format!(
                "{} connected, subscribed clients: node RSS growth",
                n(count)
            ),
            &with_rabbit,
            Load::Idle {
                n: count,
                settle_ms: pick(500, 3000) as u64,
                idle_secs: pick(1, 5) as u64,
            },
            MEMORY,
        );
        c.note = note;
        c.fresh_rabbit = true;
        cases.push(c);
    }

    // 5. connect rate with authentication.
    let count = pick(200, 10_000);
    let mut c = case(
        Scenario::Auth,
        "auth".into(),
        format!("{} clients: CONNECT + SUBSCRIBE", n(count)),
        &with_rabbit,
        Load::Auth { n: count },
        CONNECT,
    );
    c.note = format!(
        "stompbox: the `jwt-auth` plugin, one HS256 JWT per user in `passcode`, then SUBSCRIBE \
         `/topic/auth` (one `authorize` call); RabbitMQ: {} internal users (SHA-256 password \
         hashes, imported), `login=u{{i}}`, `passcode=pw{{i}}`",
        n(count)
    );
    cases.push(c);

    // 6. cluster: the publisher on node 1, the subscribers on node 2.
    let users = pick(100, 1_000);
    let rate = pick(2_000, 10_000);
    let max_messages = pick(10_000, 200_000);
    let cluster: Vec<System> = [Cluster].into_iter().chain(three.iter().copied()).collect();
    let mut c = case(
        Scenario::Cluster,
        "cluster-steady".into(),
        format!(
            "{} users, each msg to one user, {} msgs/s for {run_s}s",
            n(users),
            n(rate)
        ),
        &cluster,
        Load::Cluster {
            users,
            rate: Some((rate, run_s)),
            messages: 0,
        },
        RATE_P99,
    );
    c.note = "2 nodes + Redis: subscribers on node 2, the publisher on node 1, so every message \
             crosses Redis; 1 node, RabbitMQ and the null broker: the same load on one server"
        .into();
    cases.push(c);
    cases.push(case(
        Scenario::Cluster,
        "cluster-max".into(),
        format!(
            "{} users, each msg to one user, {} msgs as fast as possible",
            n(users),
            n(max_messages)
        ),
        &cluster,
        Load::Cluster {
            users,
            rate: None,
            messages: max_messages,
        },
        RATE,
    ));
    let consumers = pick(20, 100);
    let queue_messages = pick(10_000, 100_000);
    let mut c = case(
        Scenario::Cluster,
        "cluster-queue".into(),
        format!(
            "1 queue, {} consumers, {} msgs as fast as possible",
            n(consumers),
            n(queue_messages)
        ),
        &cluster,
        Load::ClusterQueue {
            consumers,
            messages: queue_messages,
        },
        RATE,
    );
    c.note = "each message to one of the queue's consumers; 2 nodes + Redis: the consumers on \
             node 2, the publisher on node 1, each message stored in the queue's Redis stream"
        .into();
    cases.push(c);
    // 7. one hostile connection, each as the hardening review found it, beside a bystander.
    let attacks = [
        ("transactions", pick(200, 16_000)),
        ("destinations", pick(200, 16_000)),
        ("subscriptions", pick(200, 1_000)),
        ("backlog", pick(200, 12_000)),
    ];
    for (kind, count) in attacks {
        let title = match kind {
            "transactions" => format!("16 transactions filled with {} SENDs of 60 KB", n(count)),
            "destinations" => format!("SENDs to {} distinct 1,000-byte destinations", n(count)),
            "subscriptions" => format!("{} subscriptions with 1,000-byte names", n(count)),
            _ => format!("{} SENDs of 60 KB to a queue nobody consumes", n(count)),
        };
        let mut c = case(
            Scenario::Attack,
            format!("attack-{kind}"),
            title,
            &[Stompbox],
            Load::Attack {
                kind,
                count,
                secs: pick(1, 5) as u64,
            },
            ATTACK,
        );
        if kind == "transactions" {
            c.note = "one connection sends the frames as fast as the node reads them, and when it \
                      has ended (refused with an ERROR, or all sent and answered) the next \
                      attacker starts, for 5 s (1 s small); meanwhile a bystander sends itself \
                      a message every 2 ms. The node's growth is its peak RSS during the attack \
                      over its RSS before; the bystander's p99 is over its round trips during \
                      the attack. How the first attacker ended (the ERROR that refused it, or \
                      its receipt) is in results.jsonl (`ended`)"
                .into();
        }
        cases.push(c);
    }
    if machine.baseline {
        for c in &mut cases {
            c.systems = with_before(&c.systems);
        }
    }
    cases
}

/// `systems` with the earlier build's counterpart just before each stompbox system, so that a
/// round runs before, after, before, after.
pub fn with_before(systems: &[System]) -> Vec<System> {
    systems
        .iter()
        .flat_map(|&s| s.before().into_iter().chain([s]))
        .collect()
}

/// Where and how one system under test is reached in one run.
#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    /// The subscribers' WebSocket URL.
    pub url: String,
    /// The STOMP publishers' WebSocket URL.
    pub publish_url: String,
    /// The publish API's base URL (`http://host:port`), for stompbox.
    pub api_url: String,
    /// CONNECT headers every connection sends.
    pub headers: Vec<String>,
    /// The broker processes to measure.
    pub pids: Vec<u32>,
}

fn strings<const N: usize>(items: [&str; N]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Subscribers: `connections` on `subscribe`, publishing to `dest`.
fn common(
    ep: &Endpoint,
    connections: usize,
    subscribe: &str,
    dest: &str,
    extra_headers: &[&str],
    targets: Option<usize>,
) -> Vec<String> {
    let mut a = strings(["--url", &ep.url, "--subprotocol", "v12.stomp"]);
    a.extend(strings(["--connections", &connections.to_string()]));
    a.extend(strings(["--subscribe", subscribe, "--dest", dest]));
    if let Some(t) = targets {
        a.extend(strings(["--targets", &t.to_string()]));
    }
    for h in ep
        .headers
        .iter()
        .map(String::as_str)
        .chain(extra_headers.iter().copied())
    {
        a.extend(strings(["--connect-header", h]));
    }
    // No --source-ip-count: the tool's default (one address up to 20,000 connections) leaves
    // the port choice to connect(), which reuses ports the previous run left in TIME_WAIT
    // towards another address. Bound to an address first, a socket cannot, and with a previous
    // run's thousands of TIME_WAITs the connect rate fell fivefold.
    a
}

fn stomp_publish(ep: &Endpoint, publishers: usize) -> Vec<String> {
    let mut a = strings(["--publish", "stomp", "--publish-url", &ep.publish_url]);
    a.extend(strings(["--publishers", &publishers.to_string()]));
    for h in ep.headers.iter().filter(|h| !h.contains("{i}")) {
        a.extend(strings(["--publish-connect-header", h]));
    }
    a
}

/// `n` users, message j to user j: stompbox's (and the null broker's) user destinations, or
/// for RabbitMQ, which has none, a topic per user.
fn user_dests(system: System, ep: &Endpoint, n: usize) -> Vec<String> {
    if system == System::Rabbit {
        common(ep, n, "/topic/u.{i}", "/topic/u.{j}", &[], Some(n))
    } else {
        let dest = "/user/u{j}/queue/bench";
        common(ep, n, "/user/queue/bench", dest, &["userid=u{i}"], Some(n))
    }
}

/// The flags of one run of `load` on `system` (without `--node-pid`, `--label`, `--json`);
/// `tokens` is the file of per-user JWTs for stompbox's auth runs.
pub fn args(load: &Load, system: System, ep: &Endpoint, tokens: Option<&Path>) -> Vec<String> {
    const TOPIC: &str = "/topic/bench";
    const QUEUE: &str = "/queue/bench";
    let flags = |pairs: &[(&str, String)]| -> Vec<String> {
        pairs
            .iter()
            .flat_map(|(k, v)| [k.to_string(), v.clone()])
            .collect()
    };
    match *load {
        Load::FanoutBurst {
            subs,
            messages,
            burst,
        } => {
            // Two bursts in flight at most: the publisher keeps pace with the broker, so the
            // run lasts until the broker has delivered everything, however slow it is.
            let mut a = common(ep, subs, TOPIC, TOPIC, &[], None);
            a.extend(stomp_publish(ep, 1));
            a.extend(flags(&[
                ("--rate", "0".into()),
                ("--messages", messages.to_string()),
                ("--burst", burst.to_string()),
                ("--window-deliveries", (2 * burst * subs).to_string()),
                ("--drain-ms", "15000".into()),
            ]));
            a
        }
        Load::FanoutSteady { subs, rate, secs } => {
            let mut a = common(ep, subs, TOPIC, TOPIC, &[], None);
            a.extend(stomp_publish(ep, 1));
            a.extend(flags(&[
                ("--rate", rate.to_string()),
                ("--duration", secs.to_string()),
                ("--drain-ms", "3000".into()),
            ]));
            a
        }
        Load::Targeted {
            users,
            messages,
            publishers,
        } => {
            let mut a = user_dests(system, ep, users);
            a.extend(stomp_publish(ep, publishers));
            a.extend(flags(&[
                ("--rate", "0".into()),
                ("--messages", messages.to_string()),
                ("--drain-ms", "5000".into()),
            ]));
            a
        }
        Load::TargetedApi { users, messages } => {
            let subscribe = "/user/queue/bench";
            let mut a = common(
                ep,
                users,
                subscribe,
                "/queue/bench",
                &["userid=u{i}"],
                Some(users),
            );
            a.extend(flags(&[
                ("--publish", "api".into()),
                (
                    "--api-url",
                    format!("{}/api/v1/tenants/default/publish", ep.api_url),
                ),
                ("--api-key", API_KEY.into()),
                ("--api-receiver", "u{j}".into()),
                ("--rate", "0".into()),
                ("--messages", messages.to_string()),
                ("--drain-ms", "5000".into()),
            ]));
            a
        }
        Load::Latency { subs, rate, secs } => {
            let mut a = common(ep, subs, TOPIC, TOPIC, &[], None);
            a.extend(stomp_publish(ep, 1));
            a.extend(flags(&[
                ("--rate", rate.to_string()),
                ("--duration", secs.to_string()),
                ("--drain-ms", "2000".into()),
            ]));
            a
        }
        Load::Idle {
            n,
            settle_ms,
            idle_secs,
        } => {
            let mut a = common(ep, n, "/topic/idle.{i}", "/topic/idle.0", &[], None);
            a.extend(flags(&[
                ("--publish", "none".into()),
                ("--settle-ms", settle_ms.to_string()),
                ("--idle-secs", idle_secs.to_string()),
            ]));
            a
        }
        Load::Auth { n } => {
            let mut a = common(ep, n, "/topic/auth", "/topic/auth", &[], None);
            if let (System::Stompbox, Some(path)) = (system.current(), tokens) {
                a.extend(flags(&[(
                    "--connect-header-file",
                    format!("passcode={}", path.display()),
                )]));
            }
            a.extend(flags(&[
                ("--publish", "none".into()),
                ("--settle-ms", "200".into()),
            ]));
            a
        }
        Load::Attack { kind, count, secs } => flags(&[
            ("--url", ep.url.clone()),
            ("--kind", kind.into()),
            ("--count", count.to_string()),
            ("--secs", secs.to_string()),
        ]),
        Load::ClusterQueue {
            consumers,
            messages,
        } => {
            let mut a = common(ep, consumers, QUEUE, QUEUE, &[], None);
            a.extend(stomp_publish(ep, 1));
            a.extend(flags(&[
                // Queue interest reaches the other node through Redis first.
                ("--settle-ms", "1000".into()),
                ("--rate", "0".into()),
                ("--messages", messages.to_string()),
                ("--drain-ms", "5000".into()),
            ]));
            a
        }
        Load::Cluster {
            users,
            rate,
            messages,
        } => {
            // Presence and topic interest reach the other node through Redis first.
            let mut a = user_dests(system, ep, users);
            a.extend(stomp_publish(ep, 1));
            a.extend(flags(&[("--settle-ms", "1000".into())]));
            match rate {
                Some((rate, secs)) => a.extend(flags(&[
                    ("--rate", rate.to_string()),
                    ("--duration", secs.to_string()),
                    ("--drain-ms", "3000".into()),
                ])),
                None => a.extend(flags(&[
                    ("--rate", "0".into()),
                    ("--messages", messages.to_string()),
                    ("--drain-ms", "5000".into()),
                ])),
            }
            a
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(rabbit: bool) -> Machine {
        Machine {
            rabbit,
            rabbit_sockets: Some(18_000),
            nofile_hard: 20_000,
            baseline: false,
        }
    }

    #[test]
    fn the_small_plan() {
        let cases = plan(true, &machine(true));
        let keys: Vec<&str> = cases.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "fanout-100-burst",
                "fanout-100-steady",
                "targeted",
                "targeted-4-publishers",
                "targeted-api",
                "latency-50",
                "idle-100",
                "idle-200",
                "auth",
                "cluster-steady",
                "cluster-max",
                "cluster-queue",
                "attack-transactions",
                "attack-destinations",
                "attack-subscriptions",
                "attack-backlog"
            ]
        );
        assert_eq!(
            cases[1].title,
            "1 topic, 100 subscribers: 100 msgs/s (10,000 deliveries/s) for 2s"
        );
        assert_eq!(
            cases[5].title,
            "10,000 deliveries/s: 50 subscribers x 200 msgs/s for 3s"
        );
        assert_eq!(
            cases[9].systems,
            [
                System::Cluster,
                System::Stompbox,
                System::Rabbit,
                System::Null
            ]
        );
        assert!(cases[6].fresh_rabbit && cases[6].note.is_empty());
        let without = plan(true, &machine(false));
        assert_eq!(without[0].systems, [System::Stompbox, System::Null]);
    }

    #[test]
    fn a_baseline_runs_before_every_stompbox_system() {
        use System::*;
        let plain = plan(true, &machine(true));
        let cases = plan(
            true,
            &Machine {
                baseline: true,
                ..machine(true)
            },
        );
        let keys = |cases: &[Case]| cases.iter().map(|c| c.key.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&cases), keys(&plain));
        assert_eq!(cases[0].systems, [StompboxBefore, Stompbox, Rabbit, Null]);
        assert_eq!(cases[4].systems, [StompboxBefore, Stompbox]);
        assert_eq!(cases[6].systems, [StompboxBefore, Stompbox, Rabbit]);
        assert_eq!(
            cases[9].systems,
            [
                ClusterBefore,
                Cluster,
                StompboxBefore,
                Stompbox,
                Rabbit,
                Null
            ]
        );
        assert_eq!(with_before(&[Rabbit, Null]), [Rabbit, Null]);
        for s in [StompboxBefore, ClusterBefore] {
            assert!(s.is_before() && !s.current().is_before());
            assert_eq!(s.current().before(), Some(s));
        }
        assert!(!Rabbit.is_before() && Rabbit.before().is_none());
    }

    #[test]
    fn the_full_plan_notes_the_descriptor_limit() {
        let cases = plan(false, &machine(true));
        let idle = cases.iter().find(|c| c.key == "idle-17000").unwrap();
        assert!(idle
            .note
            .starts_with("17,000 is the most this machine allows"));
        assert!(idle.note.contains("capped at 20,000") && idle.note.contains("to 18,000 of"));
        assert_eq!(
            cases[0].title,
            "1 topic, 1,000 subscribers: 1,000 msgs in bursts of 100"
        );
        assert_eq!(machine(false).most_connections(), 19_000);
    }

    #[test]
    fn flags_of_a_run() {
        let ep = Endpoint {
            url: "ws://a/ws".into(),
            publish_url: "ws://b/ws".into(),
            headers: vec!["login=u{i}".into(), "host=/".into()],
            ..Endpoint::default()
        };
        let a = args(
            &Load::Targeted {
                users: 3,
                messages: 10,
                publishers: 2,
            },
            System::Rabbit,
            &ep,
            None,
        );
        assert_eq!(
            a.join(" "),
            "--url ws://a/ws --subprotocol v12.stomp --connections 3 --subscribe /topic/u.{i} \
             --dest /topic/u.{j} --targets 3 --connect-header login=u{i} --connect-header host=/ \
             --publish stomp --publish-url ws://b/ws --publishers 2 --publish-connect-header \
             host=/ --rate 0 --messages 10 --drain-ms 5000"
        );
        let auth = args(
            &Load::Auth { n: 2 },
            System::Stompbox,
            &ep,
            Some(Path::new("/w/t.txt")),
        );
        assert!(auth
            .join(" ")
            .contains("--connect-header-file passcode=/w/t.txt --publish none"));
        let before = args(
            &Load::Auth { n: 2 },
            System::StompboxBefore,
            &ep,
            Some(Path::new("/w/t.txt")),
        );
        assert_eq!(before, auth);
    }
}
