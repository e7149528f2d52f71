//! Independent STOMP clients against a real `stompbox` process: stomp.py 9.0.0 over TCP and
//! WebSocket (`tests/clients/stomp_py_check.py`) and @stomp/stompjs 7.5.0 in Node over
//! WebSocket (`tests/clients/stompjs_check.mjs`). Neither library was written by this project,
//! so these catch misreadings of the protocol that our own test client would share.
//!
//! Each test starts its own node on port 0 with a random API key (processes come from the test
//! kit, `testkit/`), runs one script with a timeout and asserts that it exits 0; the script's
//! output is printed (see it with `--nocapture`), and on failure the node's log too. The clients' dependencies live in
//! `tests/clients/.venv` and `tests/clients/node_modules`; `scripts/test.sh` installs both.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stompbox_testkit::{Log, Process};

/// How long the node may take to print its listening line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one client script may run (each bounds its own waits much more tightly).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);
/// How long the node may take to exit on SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

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

/// A `stompbox serve` process on ports chosen by the OS, with a random API key; its log is
/// kept for failure messages.
struct Node {
    node: stompbox_testkit::Node,
    http: String,
    stomp: String,
    api_key: String,
}

impl Node {
    /// Starts a node; `config` is TOML for `--config`, if any.
    fn start(config: Option<&str>) -> Node {
        let api_key = random_key();
        let mut builder = stompbox_testkit::Node::builder(env!("CARGO_BIN_EXE_stompbox"))
            .args(["--api-key", &api_key])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .startup_timeout(STARTUP_TIMEOUT);
        if let Some(text) = config {
            builder = builder.config(text);
        }
        let node = builder
            .start()
            .unwrap_or_else(|e| panic!("start target/debug/stompbox: {e}"));
        Node {
            http: node.http().to_string(),
            stomp: node.stomp().to_string(),
            node,
            api_key,
        }
    }
}

/// Runs a client script against `node` and asserts it exits 0.
fn run_script(node: &mut Node, name: &'static str, mut command: Command, expect_banner: &str) {
    command
        .current_dir(clients_dir())
        .args(["--http", &node.http, "--stomp", &node.stomp])
        .args(["--api-key", &node.api_key])
        .env("PYTHONUNBUFFERED", "1");
    let started = Instant::now();
    let (stdout, stderr) = (Log::memory(), Log::memory());
    let description = format!("{command:?}");
    let mut script = Process::spawn(name, command, stdout.clone(), stderr.clone())
        .unwrap_or_else(|e| panic!("cannot start {name} ({description}): {e}; run scripts/test.sh"))
        .stop_on_drop(STOP_TIMEOUT);
    let status = script.wait_timeout(SCRIPT_TIMEOUT);
    if status.is_none() {
        script.kill();
    }
    let (out, err) = (stdout.text(), stderr.text());
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
    drop(script); // it has exited (or was killed)
    if let Some(failure) = failure {
        // The script's output was printed above.
        panic!("{failure}\n--- stompbox log ---\n{}", node.node.log());
    }
    // The node outlived every client, and shuts down cleanly on SIGTERM.
    assert!(
        node.node.exited().is_none(),
        "stompbox exited during {name}; its log:\n{}",
        node.node.log()
    );
    let status = node.node.terminate(STOP_TIMEOUT);
    let log = node.node.log();
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
        .args(["--expect-heartbeat", "1000,1000"]);
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
