//! Independent STOMP clients against a real `stompbox` process: stomp.py 9.0.0 over TCP and
//! WebSocket (`tests/clients/stomp_py_check.py`) and @stomp/stompjs 7.5.0 in Node over
//! WebSocket (`tests/clients/stompjs_check.mjs`). Neither library was written by this project,
//! so these catch misreadings of the protocol that our own test client would share.
//!
//! Each test starts its own node on port 0 with a random API key, runs one script with a
//! timeout and asserts that it exits 0; the script's output is printed (see it with
//! `--nocapture`), and on failure the node's log too. The clients' dependencies live in
//! `tests/clients/.venv` and `tests/clients/node_modules`; `scripts/test.sh` installs both.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the node may take to print its listening line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one client script may run (each bounds its own waits much more tightly).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Fails (never skips) when a client's dependencies are not installed.
fn require(path: &Path, what: &str) {
    assert!(
        path.exists(),
        "{what} is missing ({} does not exist): run scripts/test.sh, which installs the \
         external STOMP clients (tests/clients/.venv and tests/clients/node_modules) and then runs the tests",
        path.display()
    );
}

fn random_key() -> String {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.write_u32(std::process::id());
    let a = hasher.finish();
    hasher.write_u64(a);
    format!("ext-{a:016x}{:016x}", hasher.finish())
}

/// A child's output stream, collected on a thread.
struct Output {
    text: Arc<Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Output {
    fn collect(stream: impl Read + Send + 'static) -> Output {
        let text = Arc::new(Mutex::new(String::new()));
        let sink = text.clone();
        let reader = thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        Output {
            text,
            reader: Some(reader),
        }
    }

    /// What has arrived so far.
    fn now(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// Everything, once the child has exited (its end of the pipe closed).
    fn all(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.now()
    }
}

/// Ends `child` when dropped (a failing assertion included): SIGTERM first, then SIGKILL.
struct Guard {
    child: Child,
    name: &'static str,
}

impl Guard {
    fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => return None,
            }
        }
    }

    /// Sends SIGTERM (std has none; `kill` does it) and waits up to 10 s for the exit.
    fn terminate(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
        self.wait_timeout(Duration::from_secs(10))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.terminate().is_none() {
            eprintln!("{} did not stop on SIGTERM; killing it", self.name);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `stompbox serve` process on ports chosen by the OS.
struct Node {
    guard: Guard,
    http: String,
    stomp: String,
    api_key: String,
    log: Output,
    config: Option<PathBuf>,
}

impl Node {
    /// Starts a node; `config` is TOML for `--config`, if any.
    fn start(config: Option<&str>) -> Node {
        let api_key = random_key();
        let config = config.map(|text| {
            let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
                "external-clients-{}-{}.toml",
                std::process::id(),
                &api_key[4..12]
            ));
            std::fs::write(&path, text).expect("write the node's config file");
            path
        });
        let mut command = Command::new(env!("CARGO_BIN_EXE_stompbox"));
        command
            .args(["serve", "--http", "127.0.0.1:0", "--stomp", "127.0.0.1:0"])
            .args(["--api-key", &api_key])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(path) = &config {
            command.arg("--config").arg(path);
        }
        let mut child = command.spawn().expect("start target/debug/stompbox");
        let stdout = child.stdout.take().unwrap();
        let log = Output::collect(child.stderr.take().unwrap());
        let guard = Guard {
            child,
            name: "stompbox",
        };
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            // Keep draining, so the node never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(line) => line,
            Err(_) => panic!(
                "stompbox printed no listening line within {STARTUP_TIMEOUT:?}; its log:\n{}",
                log.now()
            ),
        };
        let field = |name: &str| {
            line.strip_prefix("stompbox listening ")
                .and_then(|rest| {
                    rest.split_whitespace()
                        .find_map(|kv| kv.strip_prefix(&format!("{name}=")[..]))
                })
                .unwrap_or_else(|| panic!("unexpected listening line {line:?}"))
                .to_string()
        };
        Node {
            http: field("http"),
            stomp: field("stomp"),
            guard,
            api_key,
            log,
            config,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(path) = &self.config {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Runs a client script against `node` and asserts it exits 0.
fn run_script(node: &mut Node, name: &'static str, mut command: Command, expect_banner: &str) {
    command
        .current_dir(clients_dir())
        .args(["--http", &node.http, "--stomp", &node.stomp])
        .args(["--api-key", &node.api_key])
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}; run scripts/test.sh"));
    let mut stdout = Output::collect(child.stdout.take().unwrap());
    let mut stderr = Output::collect(child.stderr.take().unwrap());
    let mut guard = Guard { child, name };
    let status = guard.wait_timeout(SCRIPT_TIMEOUT);
    if status.is_none() {
        let _ = guard.child.kill();
        let _ = guard.child.wait();
    }
    let (out, err) = (stdout.all(), stderr.all());
    println!(
        "--- {name} ({:.1}s) ---\n{out}{}",
        started.elapsed().as_secs_f64(),
        if err.is_empty() {
            String::new()
        } else {
            format!("--- {name} stderr ---\n{err}")
        }
    );
    let failure = match status {
        None => Some(format!("{name} did not finish within {SCRIPT_TIMEOUT:?}")),
        Some(s) if !s.success() => Some(format!("{name} failed ({s})")),
        Some(_) if !out.contains(expect_banner) => Some(format!(
            "{name} did not report {expect_banner:?}: the pinned client version is not the one installed (run scripts/test.sh)"
        )),
        Some(_) => None,
    };
    drop(guard); // the script has exited (or was killed)
    if let Some(failure) = failure {
        // The script's output was printed above.
        panic!("{failure}\n--- stompbox log ---\n{}", node.log.now());
    }
    // The node outlived every client, and shuts down cleanly on SIGTERM.
    assert!(
        matches!(node.guard.child.try_wait(), Ok(None)),
        "stompbox exited during {name}; its log:\n{}",
        node.log.now()
    );
    let status = node.guard.terminate();
    let log = if status.is_some() {
        node.log.all()
    } else {
        node.log.now()
    };
    assert!(
        !log.contains("panicked"),
        "stompbox panicked during {name}:\n{log}"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "stompbox did not exit 0 within 10 s of SIGTERM ({status:?}); its log:\n{log}"
    );
}

#[test]
fn stomp_py_over_tcp_and_websocket() {
    let python = clients_dir().join(".venv/bin/python");
    require(&python, "the stomp.py virtualenv");
    let mut node = Node::start(None);
    let mut command = Command::new(python);
    command
        .arg("stomp_py_check.py")
        .args(["--expect-heartbeat", "10000,10000"]);
    run_script(&mut node, "stomp_py_check.py", command, "stomp.py 9.0.0");
}

#[test]
fn stompjs_over_websocket() {
    require(
        &clients_dir().join("node_modules/@stomp/stompjs/package.json"),
        "@stomp/stompjs",
    );
    require(&clients_dir().join("node_modules/ws/package.json"), "ws");
    // A 1 s heart-beat offer, so 3 idle seconds only survive if heart-beats really flow.
    let mut node = Node::start(Some("[server]\nheartbeat_ms = [1000, 1000]\n"));
    let mut command = Command::new("node");
    command
        .arg("stompjs_check.mjs")
        .args(["--expect-heartbeat", "1000,1000"]);
    run_script(
        &mut node,
        "stompjs_check.mjs",
        command,
        "@stomp/stompjs 7.5.0",
    );
}
