//! `stompbox-bench suite`: the benchmark's scenarios against stompbox, RabbitMQ Web-STOMP and
//! the null broker, all on this machine, and one Markdown table of their figures.
//!
//! scripts/bench.sh installs and builds what is needed and prepares a RabbitMQ node; the suite
//! starts that node and everything each run needs (stompbox nodes, the null broker, Redis),
//! runs `stompbox-bench run ... --json` once per case, system and round, appends every result
//! to results.jsonl and renders the table (results.md).
//!
//! Each case runs its systems in turn, round after round (A B A B), so that a slow spell of
//! this shared machine hits every system alike; the table shows each system's better round.
//! With `--baseline-bin`, an earlier stompbox build runs in the same rotation, just before the
//! current one, in every case that runs stompbox: a refactoring shows beside what it replaced.

mod cases;
mod systems;
mod table;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use stompbox_testkit::{jwt, Log, Process};

use cases::{Case, Load, Machine, Scenario, System};
use systems::{Failure, Rabbit, Started, Systems};
use table::Run;

/// Options of `stompbox-bench suite`.
#[derive(Debug, Clone, clap::Args)]
pub struct SuiteOpts {
    /// The stompbox binary to start nodes from (a release build).
    #[arg(long)]
    pub stompbox_bin: PathBuf,
    /// An earlier stompbox build (a release binary) to run beside the current one as
    /// "stompbox (before)", both nodes of the cluster included.
    #[arg(long)]
    pub baseline_bin: Option<PathBuf>,
    /// Tenant settings (TOML lines) for the "before" systems only: with the current binary as
    /// --baseline-bin, `history = false` runs its at-most-once path as "before", against the
    /// stored path.
    #[arg(long, default_value = "")]
    pub baseline_tenant: String,
    /// Tenant settings (TOML lines, last in the tenant's table) for the current build's
    /// systems only: `[[tenants.topic_history]]` with `prefix = "/topic/"` runs the fan-out
    /// with history, against the same build without it as --baseline-bin.
    #[arg(long, default_value = "")]
    pub tenant: String,
    /// Where results.jsonl, results.md and logs/ go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// A directory for config files, tokens and the record of started processes (default: a
    /// new one under the temporary directory, removed at the end).
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Every scenario once (one round) at a small size: 50-200 connections, a second or two
    /// each.
    #[arg(long)]
    pub small: bool,
    /// Only these scenarios (comma list): fanout, targeted, latency, idle, auth, cluster,
    /// attack.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Runs per case and system, alternating systems (default 2; 1 with --small).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// The jwt-auth plugin, for the auth scenario.
    #[arg(long)]
    pub jwt_wasm: Option<PathBuf>,
    /// The redis-server binary, for the cluster scenario.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: PathBuf,
    /// No RabbitMQ: stompbox and the null broker only.
    #[arg(long)]
    pub skip_rabbitmq: bool,
    /// The prepared RabbitMQ node's Web-STOMP URL.
    #[arg(long)]
    pub rabbitmq_url: Option<String>,
    /// The command that starts the prepared node.
    #[arg(long)]
    pub rabbitmq_server: Option<PathBuf>,
    /// RabbitMQ's own start script, which that command execs.
    #[arg(long)]
    pub rabbitmq_start_script: Option<PathBuf>,
    /// rabbitmqctl bound to the prepared node.
    #[arg(long)]
    pub rabbitmqctl: Option<PathBuf>,
    /// RabbitMQ's version, for the table's machine line.
    #[arg(long, default_value = "")]
    pub rabbitmq_version: String,
}

/// A progress line on stderr.
pub fn log(message: &str) {
    eprintln!("==> {message}");
}

/// The processes the suite started, each a file in WORK/pids (name: pid, content: its
/// executable), so that scripts/bench.sh can stop what a suite that was itself killed left.
pub struct Pids(PathBuf);

impl Pids {
    /// Records `pid`; its executable is read from /proc unless given.
    pub fn add(&self, pid: u32, exe: Option<&Path>) {
        let exe = exe
            .map(Path::to_path_buf)
            .or_else(|| std::fs::read_link(format!("/proc/{pid}/exe")).ok());
        if let Some(exe) = exe {
            let _ = std::fs::write(
                self.0.join(pid.to_string()),
                exe.as_os_str().as_encoded_bytes(),
            );
        }
    }

    pub fn remove(&self, pid: u32) {
        let _ = std::fs::remove_file(self.0.join(pid.to_string()));
    }
}

/// The work directory, removed at the end if the suite made it.
struct Work {
    path: PathBuf,
    ours: bool,
}

impl Drop for Work {
    fn drop(&mut self) {
        if self.ours {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

pub fn main(opts: SuiteOpts) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut only = Vec::new();
    for name in &opts.only {
        only.push(Scenario::parse(name).with_context(|| {
            format!(
                "unknown scenario '{name}' (one of: {})",
                Scenario::ALL.map(Scenario::name).join(" ")
            )
        })?);
    }
    let rounds = opts.rounds.unwrap_or(if opts.small { 1 } else { 2 });
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if let Some(bin) = &opts.baseline_bin {
        if !bin.is_file() {
            bail!("--baseline-bin {}: no such file", bin.display());
        }
    }
    let work = match &opts.work {
        Some(path) => Work {
            path: path.clone(),
            ours: false,
        },
        None => Work {
            path: std::env::temp_dir().join(format!("stompbox-suite.{}", std::process::id())),
            ours: true,
        },
    };
    std::fs::create_dir_all(work.path.join("pids"))?;
    let logs = opts.out.join("logs");
    std::fs::create_dir_all(&logs)?;
    let results_path = opts.out.join("results.jsonl");
    std::fs::File::create(&results_path)?;

    // Every process started inherits the hard descriptor limit as its soft one.
    let nofile_hard = match rlimit::Resource::NOFILE.get() {
        Ok((_, hard)) => {
            let _ = rlimit::Resource::NOFILE.set(hard, hard);
            hard
        }
        Err(_) => 1024,
    };
    let mut rabbit = match (&opts.rabbitmq_url, opts.skip_rabbitmq) {
        (_, true) => None,
        (Some(url), false) => Some(Rabbit::new(
            url,
            opts.rabbitmq_server
                .clone()
                .context("--rabbitmq-server is missing")?,
            opts.rabbitmqctl
                .clone()
                .context("--rabbitmqctl is missing")?,
            opts.rabbitmq_start_script
                .clone()
                .context("--rabbitmq-start-script is missing")?,
            &logs,
            &work.path,
        )?),
        (None, false) => bail!(
            "no RabbitMQ node: give --rabbitmq-url and the commands scripts/bench.sh prepares, \
             or --skip-rabbitmq"
        ),
    };
    let systems = Systems {
        stompbox_bin: opts.stompbox_bin.clone(),
        baseline_bin: opts.baseline_bin.clone(),
        baseline_tenant: opts.baseline_tenant.clone(),
        tenant: opts.tenant.clone(),
        bench_bin: std::env::current_exe().context("the suite's own binary")?,
        redis_server: opts.redis_server.clone(),
        jwt_wasm: opts.jwt_wasm.clone(),
        logs,
        pids: Pids(work.path.join("pids")),
    };
    let mut suite = Suite {
        systems,
        results_path,
        work: work.path.clone(),
        rounds,
        rabbit_settle: Duration::from_secs(if opts.small { 1 } else { 3 }),
        runs: Vec::new(),
        serial: 0,
    };

    let outcome = (|| -> anyhow::Result<Vec<Case>> {
        if let Some(rabbit) = &mut rabbit {
            rabbit.start(&suite.systems.pids)?;
        }
        let machine = Machine {
            rabbit: rabbit.is_some(),
            rabbit_sockets: rabbit.as_ref().and_then(|r| r.sockets),
            nofile_hard,
            baseline: opts.baseline_bin.is_some(),
        };
        let cases: Vec<Case> = cases::plan(opts.small, &machine)
            .into_iter()
            .filter(|c| only.is_empty() || only.contains(&c.scenario))
            .collect();
        for case in &cases {
            log(&format!("case {}: {}", case.key, case.title));
            suite.run_case(case, rabbit.as_mut())?;
        }
        Ok(cases)
    })();
    if let Some(rabbit) = &mut rabbit {
        log("stopping RabbitMQ");
        rabbit.stop(&suite.systems.pids);
    }
    let cases = outcome?;

    let table = table::render(&suite.runs, &cases, opts.baseline_bin.is_some());
    let size = if opts.small {
        "small sizes"
    } else {
        "full sizes"
    };
    let rounds_text = if rounds == 1 {
        "1 round".to_string()
    } else {
        format!("better of {rounds} rounds")
    };
    let mut out = vec![
        format!("## stompbox benchmark ({size}, {rounds_text}, A B A B)"),
        String::new(),
        machine_line(
            nofile_hard,
            rabbit.as_ref().map(|_| opts.rabbitmq_version.as_str()),
            opts.baseline_bin.as_deref(),
        ),
        String::new(),
    ];
    out.extend(table.rows);
    out.push(String::new());
    out.push(format!(
        "Ratios are stompbox ÷ the other system: above 1 is better for deliveries/s and \
         connects/s, below 1 is better for latency and memory. Each cell is the system's better \
         round; every run is in target/bench/results.jsonl. The null broker is `stompbox-bench \
         null-broker`, a minimal fan-out server: the ceiling of this machine. † the load tool \
         used {}%+ of its core: the tool may be the limit. ‡ other processes used {}%+ of a core \
         during the run: a noisy figure. Not delivered: expected deliveries that had not arrived \
         when the run ended, a few seconds after the last publish (at a steady rate: the backlog \
         of a broker that could not keep up).",
        table::TOOL_BOUND_PCT,
        table::OTHER_LOAD_PCT
    ));
    if let Some(bin) = &opts.baseline_bin {
        out.push(String::new());
        out.push(format!(
            "stompbox (before) is the earlier build `{}` (both nodes in its 2 nodes + Redis \
             cells), configured alike{} and run in turn with the current build: before, after, \
             before, after. stompbox ÷ before is the current build ÷ the earlier one, read like \
             the other ratios.",
            bin.display(),
            match (
                one_line(&opts.baseline_tenant).as_str(),
                one_line(&opts.tenant).as_str(),
            ) {
                ("", "") => String::new(),
                (before, "") => format!(" but for its tenant's `{before}`"),
                ("", now) => format!(" but for the current build's tenant's `{now}`"),
                (before, now) => {
                    format!(" but for its tenant's `{before}` and the current's `{now}`")
                }
            }
        ));
    }
    for (i, note) in table.notes.iter().enumerate() {
        out.push(String::new());
        out.push(format!("[{}] {note}", i + 1));
    }
    out.push(String::new());
    out.push(format!(
        "{} runs in {:.0}s.",
        suite.runs.len(),
        started.elapsed().as_secs_f64()
    ));
    let text = out.join("\n");
    println!("{text}");
    std::fs::write(opts.out.join("results.md"), text + "\n")?;
    if !table.failures.is_empty() {
        eprintln!("\nFAILED RUNS:");
        for failure in &table.failures {
            eprintln!("- {failure}");
        }
        bail!("{} runs failed", table.failures.len());
    }
    Ok(())
}

struct Suite {
    systems: Systems,
    results_path: PathBuf,
    work: PathBuf,
    rounds: usize,
    /// How long RabbitMQ gets after it has gone quiet, before the next run.
    rabbit_settle: Duration,
    runs: Vec<Run>,
    serial: usize,
}

impl Suite {
    /// Every round of `case`, its systems in turn (A B A B). Errors are the ones that end the
    /// suite (RabbitMQ would not start); a run that fails is recorded and the suite goes on.
    fn run_case(&mut self, case: &Case, mut rabbit: Option<&mut Rabbit>) -> anyhow::Result<()> {
        for round in 1..=self.rounds {
            for &system in &case.systems {
                let label = format!("{} {} round {round}", case.key, system.name());
                log(&label);
                if system == System::Rabbit && case.fresh_rabbit {
                    if let Some(rabbit) = rabbit.as_deref_mut() {
                        rabbit.fresh(&self.systems.pids)?;
                    }
                }
                let mut started = Vec::new();
                let outcome =
                    self.run_once(case, system, &label, rabbit.as_deref_mut(), &mut started);
                for process in started.into_iter().rev() {
                    process.stop(&self.systems.pids);
                }
                let (figures, argv, error) = match outcome {
                    Ok((figures, argv)) => (Some(figures), Some(argv), None),
                    Err(Failure(error)) => {
                        log(&format!("{label}: FAILED: {error}"));
                        (None, None, Some(error))
                    }
                };
                let record = serde_json::json!({
                    "scenario": case.scenario.name(),
                    "case": case.key,
                    "title": case.title,
                    "system": system.name(),
                    "round": round,
                    "argv": argv,
                    "result": figures,
                    "error": error,
                });
                let mut results = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&self.results_path)?;
                writeln!(results, "{record}")?;
                if let Some(figures) = &figures {
                    log(&format!("   {}", summary(figures)));
                }
                self.runs.push(Run {
                    case: case.key.clone(),
                    system,
                    round,
                    figures,
                    error,
                });
                if system == System::Rabbit {
                    if let Some(rabbit) = rabbit.as_deref() {
                        rabbit.quiesce(self.rabbit_settle);
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts what one run needs and runs the load tool against it.
    fn run_once(
        &mut self,
        case: &Case,
        system: System,
        label: &str,
        mut rabbit: Option<&mut Rabbit>,
        started: &mut Vec<Started>,
    ) -> Result<(serde_json::Value, Vec<String>), Failure> {
        let auth = matches!(case.load, Load::Auth { .. });
        let ep = self
            .systems
            .endpoint(system, auth, rabbit.as_deref_mut(), started)?;
        let mut tokens = None;
        if let Load::Auth { n } = case.load {
            match system.current() {
                System::Stompbox => tokens = Some(self.tokens(n)?),
                System::Rabbit => {
                    if let Some(rabbit) = rabbit {
                        rabbit.import_users(n)?;
                    }
                }
                _ => {}
            }
        }
        let mut args = cases::args(&case.load, system, &ep, tokens.as_deref());
        for pid in &ep.pids {
            args.extend(["--node-pid".to_string(), pid.to_string()]);
        }
        self.run_tool(label, cases::subcommand(&case.load), args, case.timeout)
    }

    /// One HS256 JWT per user u0..u{n-1}, a line each, valid for an hour (it outlasts any
    /// run): a signature cannot be templated, so the tool reads connection i's from line i.
    fn tokens(&self, n: usize) -> Result<PathBuf, Failure> {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            + 3600;
        let mut text = String::new();
        for i in 0..n {
            let claims = serde_json::json!({"sub": format!("u{i}"), "exp": exp});
            text.push_str(&jwt::hs256(cases::JWT_SECRET, &claims));
            text.push('\n');
        }
        let path = self.work.join("jwt-tokens.txt");
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// `stompbox-bench SUBCOMMAND ARGS --label LABEL --json`: its JSON line, and the command.
    fn run_tool(
        &mut self,
        label: &str,
        subcommand: &str,
        args: Vec<String>,
        timeout: Duration,
    ) -> Result<(serde_json::Value, Vec<String>), Failure> {
        self.serial += 1;
        let err_path = self
            .systems
            .logs
            .join(format!("run-{:03}.log", self.serial));
        let bin = &self.systems.bench_bin;
        let mut argv = vec![bin.to_string_lossy().into_owned(), subcommand.into()];
        argv.extend(args);
        argv.extend(["--label".into(), label.into(), "--json".into()]);
        std::fs::write(&err_path, format!("{}\n", argv.join(" ")))?;
        let mut command = Command::new(bin);
        command.args(&argv[1..]);
        let stdout = Log::memory();
        let mut tool = Process::spawn(
            "the load tool",
            command,
            stdout.clone(),
            Log::file(&err_path)?,
        )?;
        self.systems.pids.add(tool.pid(), None);
        let status = tool.wait_timeout(timeout);
        if status.is_none() {
            tool.kill();
        }
        self.systems.pids.remove(tool.pid());
        let Some(status) = status else {
            return Err(Failure(format!(
                "the load tool ran over {:.0}s (see {})",
                timeout.as_secs_f64(),
                err_path.display()
            )));
        };
        let line = stdout
            .text()
            .lines()
            .rfind(|l| l.starts_with('{'))
            .map(str::to_string);
        match line {
            Some(line) if status.success() => {
                let figures = serde_json::from_str(&line)
                    .map_err(|e| Failure(format!("the load tool's JSON: {e}")))?;
                Ok((figures, argv))
            }
            _ => {
                let log = std::fs::read_to_string(&err_path).unwrap_or_default();
                let lines: Vec<&str> = log.trim().lines().collect();
                let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
                Err(Failure(format!(
                    "the load tool failed ({status}): {tail} (see {})",
                    err_path.display()
                )))
            }
        }
    }
}

/// A run's main figures in one line, for the progress log.
fn summary(figures: &serde_json::Value) -> String {
    use table::*;
    [
        F_READY,
        F_FAILED,
        F_CONNECT_RATE,
        F_EXPECTED,
        F_RECEIVED,
        F_RATE,
        F_P50,
        F_P99,
        F_RSS_PER_CONN,
        F_FRAMES_SENT,
        F_RSS_ADDED,
        F_BYSTANDER_P99,
    ]
    .iter()
    .filter_map(|name| {
        let v = fig(figures, name)?;
        let text = grouped(v, 2);
        Some(format!(
            "{name}={}",
            text.strip_suffix(".00").unwrap_or(&text)
        ))
    })
    .collect::<Vec<_>>()
    .join(" ")
}

/// Cores, CPU, memory, the descriptor limit and the revisions measured.
fn machine_line(nofile_hard: u64, rabbit_version: Option<&str>, baseline: Option<&Path>) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(String::new(), |kib| {
            format!(", {:.0} GiB", kib / 1024.0 / 1024.0)
        });
    let revision = describe(Path::new(".")).unwrap_or_else(|| "unknown revision".into());
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    // The earlier build's revision, where its binary is still in its checkout.
    let before = baseline.map_or(String::new(), |bin| {
        let dir = bin.parent().unwrap_or(Path::new("."));
        let described = describe(dir).unwrap_or_else(|| bin.display().to_string());
        format!("; stompbox (before) {described}")
    });
    let rabbit = match rabbit_version {
        Some(version) => format!("; RabbitMQ {version} Web-STOMP"),
        None => "; no RabbitMQ".into(),
    };
    format!(
        "{cores} cores ({model}){memory}; descriptors per process {} (hard); stompbox \
         {revision}{before}{rabbit}",
        table::grouped(nofile_hard as f64, 0)
    )
}

/// `git describe` of the checkout `dir` is in (`.`: the current build's).
fn describe(dir: &Path) -> Option<String> {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["describe", "--always", "--dirty"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|r| !r.is_empty())
}

/// TOML lines as one line for the table's notes.
fn one_line(toml: &str) -> String {
    toml.trim()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ")
}
