//! The systems under test, started for one run and stopped after it: stompbox nodes (one, or
//! two with Redis; of the current build or of an earlier one), the null broker, and the RabbitMQ node that scripts/bench.sh prepared,
//! which lives across runs and is restarted where a measurement needs a fresh one.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use base64::Engine as _;
use sha2::Digest as _;
use stompbox_testkit::{http, Log, Node, Process, Redis};

use super::cases::{Endpoint, System, API_KEY, JWT_SECRET};
use super::Pids;
use crate::procfs;

/// How long a process gets to stop on SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// A run that produced no figures (a node did not start, the tool failed...): recorded, shown
/// as `failed`, and the suite goes on.
#[derive(Debug)]
pub struct Failure(pub String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure(e.to_string())
    }
}

/// What the suite started for one run (with the pid it was recorded under), stopped in
/// reverse order after it.
pub enum Started {
    Node(Box<Node>, u32),
    Redis(Redis, u32),
    Process(Process),
}

impl Started {
    pub fn stop(self, pids: &Pids) {
        let pid = match self {
            Started::Node(mut node, pid) => {
                node.stop(GRACE);
                pid
            }
            Started::Redis(mut redis, pid) => {
                redis.kill();
                pid
            }
            Started::Process(mut process) => {
                process.stop(GRACE);
                process.pid()
            }
        };
        pids.remove(pid);
    }
}

/// Where the suite finds its programs and keeps its files.
pub struct Systems {
    pub stompbox_bin: PathBuf,
    /// The earlier build's binary, for the "before" systems.
    pub baseline_bin: Option<PathBuf>,
    /// Tenant settings for the "before" systems only.
    pub baseline_tenant: String,
    /// Tenant settings for the current build's systems only.
    pub tenant: String,
    pub bench_bin: PathBuf,
    pub redis_server: PathBuf,
    pub jwt_wasm: Option<PathBuf>,
    pub logs: PathBuf,
    pub pids: Pids,
}

impl Systems {
    /// Starts what `system` needs for one run (appending it to `started`); `auth` asks for the
    /// auth scenario's variant (the jwt-auth plugin, RabbitMQ's per-user logins).
    pub fn endpoint(
        &self,
        system: System,
        auth: bool,
        rabbit: Option<&mut Rabbit>,
        started: &mut Vec<Started>,
    ) -> Result<Endpoint, Failure> {
        let bin = self.bin(system)?;
        let prefix = if system.is_before() {
            "stompbox-before"
        } else {
            "stompbox"
        };
        match system {
            System::Stompbox | System::StompboxBefore => {
                let tenant = if auth {
                    let wasm = self.jwt_wasm.as_ref().ok_or_else(|| {
                        Failure("the auth scenario needs --jwt-wasm (the jwt-auth plugin)".into())
                    })?;
                    format!(
                        "plugin = \"{}\"\n[tenants.settings]\njwt_secret = \"{JWT_SECRET}\"\n",
                        wasm.display()
                    )
                } else {
                    String::new()
                };
                let tenant = self.tenant_of(system, tenant);
                let (pid, http) = self.stompbox(bin, prefix, &tenant, "", started)?;
                Ok(Endpoint {
                    url: format!("ws://{http}/ws"),
                    publish_url: format!("ws://{http}/ws"),
                    api_url: format!("http://{http}"),
                    headers: Vec::new(),
                    pids: vec![pid],
                })
            }
            System::Cluster | System::ClusterBefore => {
                let redis = Redis::start_with(&self.redis_server, self.log("redis")?)?;
                let url = redis.url();
                let pid = redis
                    .pid()
                    .ok_or_else(|| Failure("redis-server exited".into()))?;
                self.pids.add(pid, None);
                started.push(Started::Redis(redis, pid));
                let mut nodes = Vec::new();
                let tenant = self.tenant_of(system, String::new());
                for n in [1, 2] {
                    let cluster =
                        format!("\n[cluster]\nredis = \"{url}\"\nnode_id = \"bench-node-{n}\"\n");
                    nodes.push(self.stompbox(
                        bin,
                        &format!("{prefix}-node{n}"),
                        &tenant,
                        &cluster,
                        started,
                    )?);
                }
                // Subscribers on node 2, the publisher on node 1: every delivery crosses Redis.
                Ok(Endpoint {
                    url: format!("ws://{}/ws", nodes[1].1),
                    publish_url: format!("ws://{}/ws", nodes[0].1),
                    api_url: format!("http://{}", nodes[0].1),
                    headers: Vec::new(),
                    pids: nodes.iter().map(|(pid, _)| *pid).collect(),
                })
            }
            System::Rabbit => {
                let rabbit = rabbit.ok_or_else(|| Failure("no RabbitMQ node".into()))?;
                let headers = if auth {
                    ["login=u{i}", "passcode=pw{i}", "host=/"]
                } else {
                    ["login=guest", "passcode=guest", "host=/"]
                };
                rabbit.used = true;
                Ok(Endpoint {
                    url: rabbit.url.clone(),
                    publish_url: rabbit.url.clone(),
                    api_url: String::new(),
                    headers: headers.map(String::from).to_vec(),
                    pids: rabbit.beam.iter().copied().collect(),
                })
            }
            System::Null => {
                let port = stompbox_testkit::free_port();
                let mut command = Command::new(&self.bench_bin);
                command.args(["null-broker", "--listen", &format!("127.0.0.1:{port}")]);
                let process = Process::spawn(
                    "the null broker",
                    command,
                    Log::null(),
                    self.log("null-broker")?,
                )?;
                let pid = process.pid();
                self.pids.add(pid, None);
                started.push(Started::Process(process));
                let Some(Started::Process(process)) = started.last_mut() else {
                    unreachable!("just pushed")
                };
                let addr = ([127, 0, 0, 1], port).into();
                stompbox_testkit::wait_for_port(addr, process, Duration::from_secs(30))?;
                Ok(Endpoint {
                    url: format!("ws://127.0.0.1:{port}/ws"),
                    publish_url: format!("ws://127.0.0.1:{port}/ws"),
                    api_url: String::new(),
                    headers: Vec::new(),
                    pids: vec![pid],
                })
            }
        }
    }

    /// The stompbox binary `system` starts its nodes from.
    fn bin(&self, system: System) -> Result<&Path, Failure> {
        if system.is_before() {
            self.baseline_bin
                .as_deref()
                .ok_or_else(|| Failure(format!("{} needs --baseline-bin", system.name())))
        } else {
            Ok(&self.stompbox_bin)
        }
    }

    /// The tenant settings of `system`: `tenant`, then what --baseline-tenant adds for a
    /// "before" system and --tenant for the current build's (last, so that a table it opens
    /// takes nothing of the scenario's).
    fn tenant_of(&self, system: System, tenant: String) -> String {
        let extra = if system.is_before() {
            &self.baseline_tenant
        } else {
            &self.tenant
        };
        if extra.trim().is_empty() {
            tenant
        } else {
            format!("{tenant}{}\n", extra.trim())
        }
    }

    /// A log file of `name` in the logs directory, appended to across runs.
    pub fn log(&self, name: &str) -> std::io::Result<Log> {
        Log::file(self.logs.join(format!("{name}.log")))
    }

    /// A fresh node per run (no state and no memory left over from the previous run), up and
    /// answering `/healthz`; its pid and HTTP address.
    fn stompbox(
        &self,
        bin: &Path,
        name: &str,
        tenant_toml: &str,
        cluster_toml: &str,
        started: &mut Vec<Started>,
    ) -> Result<(u32, std::net::SocketAddr), Failure> {
        // The defaults, but stated: the scenarios count on them.
        let config = format!(
            "[server]\nmax_connections = 100000\nmax_subscriptions = 1000\n\n[[tenants]]\n\
             id = \"default\"\napi_keys = [\"{API_KEY}\"]\n{tenant_toml}{cluster_toml}"
        );
        let mut node = Node::builder(bin)
            .name(name)
            .config(&config)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .log(self.log(name)?)
            .start()
            .map_err(|e| Failure(format!("stompbox {name}: {e}")))?;
        let pid = node
            .pid()
            .ok_or_else(|| Failure(format!("stompbox {name} exited")))?;
        self.pids.add(pid, None);
        let http = node.http();
        started.push(Started::Node(Box::new(node), pid));
        let deadline = Instant::now() + Duration::from_secs(30);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        loop {
            let answer = runtime.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(2),
                    http::send(http, &http::Request::get("/healthz")),
                )
                .await
            });
            if let Ok(Ok(response)) = answer {
                if response.status == 200 {
                    return Ok((pid, http));
                }
            }
            if Instant::now() > deadline {
                return Err(Failure(format!(
                    "stompbox {name}: /healthz did not answer within 30s"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The RabbitMQ node scripts/bench.sh prepared: its configuration and the two commands (the
/// server, raised to the hard descriptor limit and run as the rabbitmq user, and rabbitmqctl
/// bound to the node). This starts it, restarts it for a fresh memory baseline, and stops it.
pub struct Rabbit {
    pub url: String,
    port: u16,
    server: PathBuf,
    ctl: PathBuf,
    /// RabbitMQ's own start script, which the server command execs.
    start_script: PathBuf,
    logs: PathBuf,
    work: PathBuf,
    script: Option<Process>,
    /// The Erlang VM under the start script: the process to measure.
    pub beam: Option<u32>,
    /// Its socket limit, as `rabbitmqctl status` reports it.
    pub sockets: Option<u64>,
    users: usize,
    /// It served a run since it started: a restart for a fresh baseline is due.
    pub used: bool,
}

impl Rabbit {
    pub fn new(
        url: &str,
        server: PathBuf,
        ctl: PathBuf,
        start_script: PathBuf,
        logs: &Path,
        work: &Path,
    ) -> anyhow::Result<Rabbit> {
        let port = url
            .split_once("://")
            .and_then(|(_, rest)| rest.split('/').next())
            .and_then(|authority| authority.rsplit_once(':'))
            .and_then(|(_, port)| port.parse().ok())
            .with_context(|| format!("no port in the RabbitMQ URL {url:?}"))?;
        Ok(Rabbit {
            url: url.to_string(),
            port,
            server,
            ctl,
            start_script,
            logs: logs.to_path_buf(),
            work: work.to_path_buf(),
            script: None,
            beam: None,
            sockets: None,
            users: 0,
            used: false,
        })
    }

    /// Starts the node and waits for Web-STOMP's port; any failure here ends the suite.
    pub fn start(&mut self, pids: &Pids) -> anyhow::Result<()> {
        super::log("starting RabbitMQ");
        let log = Log::file(self.logs.join("rabbitmq.log"))?;
        let process = Process::spawn("rabbitmq", Command::new(&self.server), log.clone(), log)?
            .stop_on_drop(Duration::from_secs(90));
        // The server command execs RabbitMQ's start script: its interpreter is what runs.
        let first = std::fs::read_to_string(&self.start_script)
            .with_context(|| format!("reading {}", self.start_script.display()))?;
        let interpreter = first
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("#!"))
            .and_then(|l| l.split_whitespace().next())
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.into()));
        pids.add(process.pid(), interpreter.as_deref());
        let script = self.script.insert(process);
        let deadline = Instant::now() + Duration::from_secs(120);
        while !procfs::listening(self.port) {
            if let Some(status) = script.try_wait() {
                bail!(
                    "RabbitMQ exited ({status}) while starting (see {}/rabbitmq.log)",
                    self.logs.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "RabbitMQ did not open Web-STOMP on port {} within 120s (see {}/)",
                    self.port,
                    self.logs.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let beam = *procfs::children_named(script.pid(), "beam.smp")
            .first()
            .context("cannot find RabbitMQ's beam.smp")?;
        pids.add(beam, None);
        self.beam = Some(beam);
        if self.sockets.is_none() {
            // RabbitMQ keeps 10% of its descriptors back from sockets: the idle scenario's
            // largest count has to fit under what it reports.
            let status = self.ctl(&["status"], Duration::from_secs(120))?;
            self.sockets = status
                .split("Sockets: ")
                .nth(1)
                .and_then(|rest| rest.split_once(", limit: "))
                .and_then(|(_, rest)| {
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    digits.parse().ok()
                });
            let limits =
                std::fs::read_to_string(format!("/proc/{beam}/limits")).unwrap_or_default();
            let nofile = limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .unwrap_or("?");
            super::log(&format!(
                "RabbitMQ up: beam.smp pid {beam}, {nofile} descriptors, socket limit {}",
                self.sockets.map_or("unknown".into(), |s| s.to_string())
            ));
        }
        Ok(())
    }

    /// Stops it: its start script stops the node (rabbitmqctl stop) on SIGTERM.
    pub fn stop(&mut self, pids: &Pids) {
        if let Some(mut script) = self.script.take() {
            script.stop(Duration::from_secs(90));
            pids.remove(script.pid());
        }
        if let Some(beam) = self.beam.take() {
            stop_pid(beam, GRACE);
            pids.remove(beam);
        }
    }

    /// Restarts it if a run used it since it started.
    pub fn fresh(&mut self, pids: &Pids) -> anyhow::Result<()> {
        if self.used {
            self.stop(pids);
            self.start(pids)?;
            self.used = false;
        }
        Ok(())
    }

    /// Waits for the node to close the last run's connections and finish cleaning up after
    /// them (it tears thousands down one by one, then deletes their queues), so that the next
    /// run, of whichever system, starts on an idle machine.
    pub fn quiesce(&self, settle: Duration) {
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut idle = false;
        while Instant::now() < deadline {
            if procfs::established(self.port) > 0 {
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            let Some(beam) = self.beam else { break };
            let before = procfs::cpu_secs(beam);
            std::thread::sleep(Duration::from_secs(1));
            match (before, procfs::cpu_secs(beam)) {
                (Some(b), Some(a)) if a - b >= 0.1 => continue,
                _ => {
                    idle = true;
                    break;
                }
            }
        }
        if !idle {
            super::log("RabbitMQ is still busy with the last run after 180s; going on");
        }
        std::thread::sleep(settle);
    }

    /// Users u0..u{n-1} with passwords pw{i}, in one definitions import.
    pub fn import_users(&mut self, n: usize) -> Result<(), Failure> {
        if self.users >= n {
            return Ok(());
        }
        let mut salts = vec![0u8; 4 * n];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut salts))
            .map_err(|e| Failure(format!("reading /dev/urandom: {e}")))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let (mut users, mut permissions) = (Vec::new(), Vec::new());
        for (i, salt) in salts.chunks(4).enumerate() {
            let mut hasher = sha2::Sha256::new();
            hasher.update(salt);
            hasher.update(format!("pw{i}").as_bytes());
            let hash = [salt, hasher.finalize().as_slice()].concat();
            users.push(serde_json::json!({
                "name": format!("u{i}"),
                "password_hash": b64.encode(hash),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": [],
            }));
            permissions.push(serde_json::json!({
                "user": format!("u{i}"), "vhost": "/",
                "configure": ".*", "write": ".*", "read": ".*",
            }));
        }
        let path = self.work.join("rabbit-users.json");
        let definitions = serde_json::json!({"users": users, "permissions": permissions});
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(definitions.to_string().as_bytes()))?;
        // The rabbitmq user reads it.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        super::log(&format!("importing {n} RabbitMQ users"));
        let path = path.to_string_lossy().into_owned();
        self.ctl(&["import_definitions", &path], Duration::from_secs(900))
            .map_err(|e| Failure(format!("rabbitmqctl import_definitions failed: {e:#}")))?;
        self.users = n;
        Ok(())
    }

    /// Runs rabbitmqctl with `args`; its output, or an error with it.
    fn ctl(&self, args: &[&str], limit: Duration) -> anyhow::Result<String> {
        let mut command = Command::new(&self.ctl);
        command.args(args);
        let out = Log::memory();
        let mut process = Process::spawn("rabbitmqctl", command, out.clone(), out)?;
        let Some(status) = process.wait_timeout(limit) else {
            process.kill();
            bail!("rabbitmqctl {} ran over {limit:?}", args.join(" "));
        };
        let output = process.output();
        if !status.success() {
            bail!("{} ({status})", output.trim());
        }
        Ok(output)
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        if let Some(beam) = self.beam {
            // The script goes on its own drop; the VM, if it outlives the script, here.
            self.script.take();
            stop_pid(beam, GRACE);
        }
    }
}

/// SIGTERM to a process that is not this one's child, then SIGKILL after `grace`.
fn stop_pid(pid: u32, grace: Duration) {
    let deadline = Instant::now() + grace;
    let _ = stompbox_testkit::signal(pid, stompbox_testkit::Signal::Term);
    while procfs::alive(pid) {
        if Instant::now() > deadline {
            super::log(&format!(
                "pid {pid} ignored SIGTERM for {grace:?}; killing it"
            ));
            let _ = stompbox_testkit::signal(pid, stompbox_testkit::Signal::Kill);
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
