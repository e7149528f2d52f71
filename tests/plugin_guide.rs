//! The plugin guide (`plugins/README.md`, "Ten minutes, in your language") run as its reader
//! would: every block marked `file=PATH` is written, every `sh run` block is run with bash, in
//! order, in a scratch copy of `plugins/`, with `stompbox` on the `PATH` and a node of the
//! test's own (`STOMPBOX`, `ADMIN_TOKEN`). At the end the tenant `acme` runs the last plugin
//! uploaded, and a STOMP client checks that it decides what the guide says.

mod support;

use std::path::{Path, PathBuf};

use support::*;

const ADMIN: &str = "admin-token-for-the-guide";

/// A block of the guide: a file to write, or commands to run.
enum Step {
    Write { path: String, text: String },
    Run { script: String },
}

fn steps(guide: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut lines = guide.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        let text = body.join("\n") + "\n";
        let mut words = info.split_whitespace();
        let _language = words.next();
        for word in words {
            if word == "run" {
                steps.push(Step::Run {
                    script: text.clone(),
                });
            } else if let Some(path) = word.strip_prefix("file=") {
                steps.push(Step::Write {
                    path: path.to_string(),
                    text: text.clone(),
                });
            }
        }
    }
    steps
}

/// Copies `from` to `to`, leaving out what builds make (and what a reader would not have).
fn copy_sources(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if [
            "target",
            "node_modules",
            ".venv",
            "dist",
            "types",
            "__pycache__",
        ]
        .contains(&&*name)
        {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            copy_sources(&path, &to.join(&*name));
        } else {
            std::fs::copy(&path, to.join(&*name)).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_guide_works_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("plugins/README.md")).unwrap();
    let steps = steps(&guide);
    let runs = steps
        .iter()
        .filter(|s| matches!(s, Step::Run { .. }))
        .count();
    assert!(runs >= 5, "the guide has its runnable blocks ({runs})");

    let scratch = std::env::temp_dir().join(format!("plugin-guide-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    // The guide's crate and packages name `../../wit`: the copy keeps that layout.
    std::fs::create_dir_all(&scratch).unwrap();
    copy_sources(&root.join("wit"), &scratch.join("wit"));
    let plugins = scratch.join("plugins");
    copy_sources(&root.join("plugins"), &plugins);

    let node = TestNode::start(&format!(
        "[server]\nadmin_token = \"{ADMIN}\"\n[[tenants]]\nid = \"acme\"\napi_keys = [\"{API_KEY}\"]\n\
         [tenants.settings]\npasscode = \"let-me-in\"\nchannels = \"NEWS=/topic/news\"\n"
    ))
    .await;
    let bin_dir: PathBuf = Path::new(env!("CARGO_BIN_EXE_stompbox"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut uploads = 0;
    for step in &steps {
        match step {
            Step::Write { path, text } => {
                let file = plugins.join(path);
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(file, text).unwrap();
            }
            Step::Run { script } => {
                let script = script.clone();
                let (plugins, path) = (plugins.clone(), path.clone());
                let stompbox = format!("http://{}", node.http);
                let out = tokio::task::spawn_blocking(move || {
                    std::process::Command::new("bash")
                        .args(["-euo", "pipefail", "-c", &script])
                        .current_dir(&plugins)
                        .env("PATH", path)
                        .env("STOMPBOX", stompbox)
                        .env("ADMIN_TOKEN", ADMIN)
                        .env_remove("CARGO_TARGET_DIR")
                        .env_remove("RUSTFLAGS")
                        .output()
                        .unwrap()
                })
                .await
                .unwrap();
                let shown = format!(
                    "{}\n--- stdout\n{}\n--- stderr\n{}",
                    step_text(step),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(out.status.success(), "a guide block failed: {shown}");
                if step_text(step).contains("/admin/v1/tenants/acme/plugin") {
                    uploads += 1;
                    // The upload's answer is the block's last line of output.
                    let stdout = String::from_utf8_lossy(&out.stdout);
                    let status: serde_json::Value =
                        serde_json::from_str(stdout.lines().last().unwrap_or_default())
                            .unwrap_or_default();
                    assert_eq!(status["policy"], "wasm", "{shown}");
                    // The plugin the reader just uploaded decides acme's connections.
                    check_my_policy(&node).await;
                }
            }
        }
    }
    assert_eq!(uploads, 3, "one upload per language");
    let _ = std::fs::remove_dir_all(&scratch);
}

fn step_text(step: &Step) -> &str {
    match step {
        Step::Run { script } => script,
        Step::Write { text, .. } => text,
    }
}

/// `my-policy`, as the guide describes it, deciding acme's connections.
async fn check_my_policy(node: &TestNode) {
    let url = node.ws_url("/ws/acme");
    let mut wrong = Client::ws(&url, "v12.stomp").await;
    wrong
        .send_raw(b"CONNECT\naccept-version:1.2\nlogin:alice\npasscode:guess\n\n\0")
        .await;
    wrong.expect_error("authentication failed").await;

    let mut alice = Client::ws(&url, "v12.stomp").await;
    let connected = alice
        .connect(&[
            ("host", "acme"),
            ("login", "alice"),
            ("passcode", "let-me-in"),
        ])
        .await;
    assert_eq!(connected.get("user-name"), Some("alice"));
    alice.subscribe("1", "/topic/news", "auto").await;
    let (status, answer) = http_request(
        node.http,
        "POST",
        "/api/v1/tenants/acme/publish",
        Some(API_KEY),
        &serde_json::json!({"channelCode": "NEWS", "content": "from the guide"}).to_string(),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    alice.expect_message("from the guide").await;
    alice
        .send(
            stompbox::stomp::Frame::new(stompbox::stomp::Command::Subscribe)
                .header("id", "2")
                .header("destination", "/user/bob/queue/notice"),
        )
        .await;
    alice.expect_error("access denied").await;
}
