//! Browser checks: Debian's Chromium, driven by playwright-core (`tests/browser/run.mjs`), loads
//! pages the node serves and receives API publishes with sockjs-client 1.6.1 + stompjs 2.3.3
//! and @stomp/stompjs 7.5.0 over every SockJS transport and over `/ws`; across two nodes of a
//! Redis cluster; stored messages through reloads and a node's death
//! (`tests/browser/reload.mjs`); and sockjs-client in Node (`tests/browser/node_sockjs.mjs`). Chromium and the
//! repo-root `node_modules` come from `scripts/test.sh`; a missing one fails the test.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::cluster::{NodeProcess, Redis};

const API_KEY: &str = "browser-test-key";
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One browser test at a time: each drives Chromium and node processes, and the reload test
/// times its faults against the nodes' delivery confirmation (50 ms), which a machine busy
/// with a second Chromium can stretch.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Fails (never skips) when Chromium or the npm packages are not installed; holds the other
/// browser tests off until the caller is done.
fn require_tools() -> std::sync::MutexGuard<'static, ()> {
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for (path, what) in [
        (PathBuf::from("/usr/bin/chromium"), "Chromium"),
        (
            root().join("node_modules/playwright-core"),
            "playwright-core",
        ),
        (root().join("node_modules/sockjs-client"), "sockjs-client"),
        (root().join("node_modules/stompjs"), "stompjs"),
        (root().join("node_modules/@stomp/stompjs"), "@stomp/stompjs"),
        (root().join("node_modules/axe-core"), "axe-core"),
    ] {
        assert!(
            path.exists(),
            "{what} is missing ({} does not exist): run scripts/test.sh, which installs \
             Chromium and runs npm ci in the repo root",
            path.display()
        );
    }
    turn
}

fn config() -> String {
    format!("[[tenants]]\nid = \"default\"\napi_keys = [\"{API_KEY}\"]\n")
}

/// Runs `node tests/browser/SCRIPT ARGS` and asserts it exits 0 within the timeout.
fn run_script(script: &str, args: &[String]) {
    let started = Instant::now();
    let mut child = Command::new("node")
        .arg(Path::new("tests/browser").join(script))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start node: {e}; run scripts/test.sh"));
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let stdout = child.stdout.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    println!("--- {script}: {:.1}s ---", started.elapsed().as_secs_f64());
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("{script} failed ({s}):\n{out}\n--- stderr ---\n{err}"),
        None => panic!("{script} did not finish within {SCRIPT_TIMEOUT:?}:\n{out}\n{err}"),
    }
}

fn start_pair() -> (Redis, NodeProcess, NodeProcess) {
    let redis = Redis::start();
    let a = NodeProcess::start("browser-a", &redis, &config());
    let b = NodeProcess::start("browser-b", &redis, &config());
    (redis, a, b)
}

#[test]
fn chromium_clients_over_sockjs_and_websocket() {
    let _turn = require_tools();
    let (_redis, a, b) = start_pair();
    // Let each node see the other in the cluster before the cross-node cases.
    std::thread::sleep(Duration::from_millis(500));
    run_script(
        "run.mjs",
        &[
            "--http".into(),
            a.http.to_string(),
            "--api-key".into(),
            API_KEY.into(),
            "--http2".into(),
            b.http.to_string(),
        ],
    );
}

/// The seed's page code (and @stomp/stompjs over `/ws`) keeps every stored message through two
/// reloads and the death of its node, per client case: `tests/browser/reload.mjs`.
#[test]
fn a_page_loses_nothing_through_reloads_and_its_node_killed() {
    let _turn = require_tools();
    let redis = Redis::start();
    // One node per case (each is killed in its case), and one that publishes and takes the
    // last page over.
    let mut nodes: Vec<NodeProcess> = (0..8)
        .map(|i| NodeProcess::start(&format!("reload-{i}"), &redis, &config()))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let addrs: Vec<String> = nodes.iter().map(|n| n.http.to_string()).collect();
    let pids: Vec<String> = nodes[..7]
        .iter_mut()
        .map(|n| n.pid().expect("running").to_string())
        .collect();
    run_script(
        "reload.mjs",
        &[
            "--publish".into(),
            addrs[7].clone(),
            "--api-key".into(),
            API_KEY.into(),
            "--nodes".into(),
            addrs.join(","),
            "--pids".into(),
            pids.join(","),
        ],
    );
}

#[test]
fn sockjs_client_in_node() {
    let _turn = require_tools();
    let redis = Redis::start();
    let node = NodeProcess::start("browser-node", &redis, &config());
    run_script(
        "node_sockjs.mjs",
        &[
            "--http".into(),
            node.http.to_string(),
            "--api-key".into(),
            API_KEY.into(),
        ],
    );
}

/// The example backends (`examples/backend-node`, `examples/backend-python`) each answer a
/// browser's SEND to `/app/echo` (sockjs-client + stompjs, the seed's client code): the node
/// writes it to the tenant's stream, the backend reads it with a consumer group and replies
/// through the publish API to the sender's `reply-to`: `tests/browser/app_echo.mjs`.
#[test]
fn the_example_backends_answer_a_browsers_send_to_app() {
    let _turn = require_tools();
    let redis = Redis::start();
    let node = NodeProcess::start(
        "echo-node",
        &redis,
        &format!(
            "[[tenants]]\nid = \"default\"\napi_keys = [\"{API_KEY}\"]\n[tenants.upstream]\nstream = true\n"
        ),
    );
    let python = root().join("tests/clients/.venv/bin/python");
    assert!(
        python.exists()
            && root()
                .join("examples/backend-node/node_modules/redis")
                .exists(),
        "the example backends' packages are missing: run scripts/test.sh"
    );
    let backends: [(&str, std::process::Command); 2] = [
        ("backend-node", {
            let mut c = Command::new("node");
            c.arg(root().join("examples/backend-node/backend.mjs"));
            c
        }),
        ("backend-python", {
            let mut c = Command::new(&python);
            c.arg(root().join("examples/backend-python/backend.py"));
            c
        }),
    ];
    for (name, mut command) in backends {
        command
            .env("REDIS_URL", redis.url())
            .env("STOMPBOX_URL", format!("http://{}", node.http))
            .env("API_KEY", API_KEY)
            .env("TENANT", "default");
        let mut backend = stompbox_testkit::Process::spawn(
            name,
            command,
            stompbox_testkit::Log::memory(),
            stompbox_testkit::Log::memory(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        run_script(
            "app_echo.mjs",
            &[
                "--http".into(),
                node.http.to_string(),
                "--expect".into(),
                "echo: hello from the browser".into(),
            ],
        );
        assert!(
            backend.try_wait().is_none(),
            "{name} exited: {}",
            backend.output()
        );
        backend.kill();
    }
}

/// The operator's console on a two-node cluster, driven in Chromium: sign in, both nodes and a
/// live rate, a user found on node B and disconnected, a bad plugin refused and a good one
/// checked and installed, an API key rotated. Screenshots of each page go to
/// `target/browser/console/`: `tests/browser/console.mjs`.
#[test]
fn the_console_runs_a_two_node_cluster() {
    let _turn = require_tools();
    let good = support::plugin_wasm("seed_compat");
    let bad = std::env::temp_dir().join(format!("not-a-plugin-{}.wasm", std::process::id()));
    std::fs::write(&bad, b"\0asm this is not a component").unwrap();
    let admin = "console-test-admin-token";
    let toml = format!("[server]\nadmin_token = \"{admin}\"\n{}", config());
    let redis = Redis::start();
    let a = NodeProcess::start("browser-a", &redis, &toml);
    let b = NodeProcess::start("browser-b", &redis, &toml);
    std::thread::sleep(Duration::from_millis(500));
    run_script(
        "console.mjs",
        &[
            "--http".into(),
            a.http.to_string(),
            "--http2".into(),
            b.http.to_string(),
            "--admin".into(),
            admin.into(),
            "--api-key".into(),
            API_KEY.into(),
            "--good".into(),
            good.display().to_string(),
            "--bad".into(),
            bad.display().to_string(),
            "--out".into(),
            root().join("target/browser/console").display().to_string(),
        ],
    );
    let _ = std::fs::remove_file(bad);
}
