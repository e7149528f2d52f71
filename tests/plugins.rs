//! Tenant plugins in a real node: the example plugins (jwt-auth, seed-compat), hostile
//! plugins (endless loop, memory bomb, trap, wrong world), hot reload under traffic, the admin
//! API and the plugin CLI.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use stompbox::stomp::{Command, Frame};
use support::*;

const SECRET: &str = "a-test-secret-of-some-length";
const ADMIN: &str = "admin-token-for-tests";

/// The same policy in each language a plugin can be written in: every test of it runs on all.
const JWT_AUTH: [&str; 3] = ["jwt_auth", "jwt_auth_ts", "jwt_auth_py"];

fn jwt_tenant(id: &str) -> String {
    jwt_tenant_with(id, "jwt_auth")
}

fn jwt_tenant_with(id: &str, plugin: &str) -> String {
    format!(
        "[[tenants]]\nid = \"{id}\"\napi_keys = [\"{API_KEY}\"]\nplugin = \"{}\"\n[tenants.settings]\njwt_secret = \"{SECRET}\"\nchannels = \"ORDER_STATUS=/queue/orders, NEWS=/topic/news\"\n",
        toml_path(&plugin_wasm(plugin))
    )
}

fn token_for(user: &str) -> String {
    jwt(SECRET, json!({"sub": user, "exp": unix_now() + 600}))
}

#[tokio::test]
async fn jwt_auth_rejects_forged_users_and_accepts_valid_tokens() {
    for plugin in JWT_AUTH {
        forged_users_are_rejected(plugin).await;
    }
}

async fn forged_users_are_rejected(plugin: &str) {
    let node = TestNode::start(&jwt_tenant_with("default", plugin)).await;
    // The seed system's way: a bare userid. Refused.
    let mut forged = Client::tcp(node.stomp).await;
    forged
        .send_raw(b"CONNECT\naccept-version:1.2\nuserid:alice\n\n\0")
        .await;
    let error = forged.expect_error("authentication failed").await;
    assert!(
        String::from_utf8_lossy(&error.body).contains("token"),
        "{error:?}"
    );

    // A token for bob with userid alice. Refused.
    let mut mismatch = Client::tcp(node.stomp).await;
    let bob = token_for("bob");
    mismatch
        .send_raw(
            format!("CONNECT\naccept-version:1.2\nuserid:alice\ntoken:{bob}\n\n\0").as_bytes(),
        )
        .await;
    mismatch.expect_error("authentication failed").await;

    // Signed with another secret, or expired. Refused.
    for token in [
        jwt(
            "not-the-secret",
            json!({"sub": "alice", "exp": unix_now() + 600}),
        ),
        jwt(SECRET, json!({"sub": "alice", "exp": unix_now() - 10})),
    ] {
        let mut c = Client::ws(&node.ws_url("/ws"), "v12.stomp").await;
        c.send_raw(format!("CONNECT\naccept-version:1.2\ntoken:{token}\n\n\0").as_bytes())
            .await;
        c.expect_error("authentication failed").await;
    }

    // A valid token: the session is the token's user (token in `passcode` works too).
    let mut alice = Client::ws(&node.ws_url("/ws"), "v12.stomp").await;
    let connected = alice
        .connect(&[("userid", "alice"), ("token", &token_for("alice"))])
        .await;
    assert_eq!(connected.get("user-name"), Some("alice"));
    let mut by_passcode = Client::tcp(node.stomp).await;
    let connected = by_passcode
        .connect(&[("login", "x"), ("passcode", &token_for("carol"))])
        .await;
    assert_eq!(connected.get("user-name"), Some("carol"));
}

#[tokio::test]
async fn jwt_auth_keeps_users_to_their_own_destinations() {
    for plugin in JWT_AUTH {
        users_keep_to_their_own_destinations(plugin).await;
    }
}

async fn users_keep_to_their_own_destinations(plugin: &str) {
    let node = TestNode::start(&jwt_tenant_with("default", plugin)).await;
    let mut alice = Client::tcp(node.stomp).await;
    alice.connect(&[("token", &token_for("alice"))]).await;
    alice.subscribe("1", "/user/queue/notice", "auto").await;
    alice.subscribe("2", "/topic/news", "auto").await;
    alice
        .subscribe("3", "/user/alice/queue/other", "auto")
        .await;
    alice
        .send(
            Frame::new(Command::Subscribe)
                .header("id", "4")
                .header("destination", "/user/bob/queue/notice")
                .header("receipt", "spy"),
        )
        .await;
    let error = alice.expect_error("access denied").await;
    assert_eq!(error.get("receipt-id"), Some("spy"));

    let mut alice = Client::tcp(node.stomp).await;
    alice.connect(&[("token", &token_for("alice"))]).await;
    alice
        .send(
            Frame::new(Command::Subscribe)
                .header("id", "1")
                .header("destination", "/queue/shared"),
        )
        .await;
    alice.expect_error("access denied").await;
}

#[tokio::test]
async fn channel_codes_resolve_through_the_plugin() {
    for plugin in JWT_AUTH {
        channel_codes_resolve(plugin).await;
    }
}

async fn channel_codes_resolve(plugin: &str) {
    let node = TestNode::start(&jwt_tenant_with("default", plugin)).await;
    let mut alice = Client::tcp(node.stomp).await;
    alice.connect(&[("token", &token_for("alice"))]).await;
    alice.subscribe("1", "/user/queue/orders", "auto").await;
    let (status, answer) = node
        .publish(
            json!({"receiver": "alice", "channelCode": "ORDER_STATUS", "content": {"order": 7}}),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["delivered"], 1);
    let m = alice.expect_message(r#"{"order":7}"#).await;
    assert_eq!(m.get("destination"), Some("/user/queue/orders"));

    let (status, answer) = node
        .publish(json!({"receiver": "alice", "channelCode": "NO_SUCH_CODE", "content": "x"}))
        .await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("NO_SUCH_CODE"));
}

// The node's own runtime flavour: a plugin call runs on a worker and yields every tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_with_different_plugins_do_not_see_each_other() {
    let config = format!(
        "{}[[tenants]]\nid = \"legacy\"\napi_keys = [\"legacy-key-123\"]\nplugin = \"{}\"\n",
        jwt_tenant("secure"),
        toml_path(&plugin_wasm("seed_compat"))
    );
    let node = TestNode::start(&config).await;
    let mut legacy = Client::ws(&node.ws_url("/ws/legacy"), "v12.stomp").await;
    assert_eq!(
        legacy.connect_as("alice").await.get("user-name"),
        Some("alice")
    );
    let mut bare = Client::ws(&node.ws_url("/ws/secure"), "v12.stomp").await;
    bare.send_raw(b"CONNECT\naccept-version:1.2\nuserid:alice\n\n\0")
        .await;
    bare.expect_error("authentication failed").await;
    let mut secure = Client::ws(&node.ws_url("/ws/secure"), "v12.stomp").await;
    secure.connect(&[("token", &token_for("alice"))]).await;
    for c in [&mut legacy, &mut secure] {
        c.subscribe("1", "/topic/news", "auto").await;
        c.subscribe("2", "/user/queue/notice", "auto").await;
    }
    legacy.send_to("/topic/news", "legacy news").await;
    legacy.expect_message("legacy news").await;
    secure.expect_nothing(Duration::from_millis(200)).await;
    let (status, answer) = http_request(
        node.http,
        "POST",
        "/api/v1/tenants/secure/publish",
        Some(API_KEY),
        &json!({"receiver": "alice", "destination": "/queue/notice", "content": "secure alice"})
            .to_string(),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    secure.expect_message("secure alice").await;
    legacy.expect_nothing(Duration::from_millis(200)).await;
}

fn hostile_tenant(id: &str, mode: &str, deadline_ms: u64) -> String {
    format!(
        "[[tenants]]\nid = \"{id}\"\nplugin = \"{}\"\nplugin_deadline_ms = {deadline_ms}\nplugin_memory_bytes = 16777216\n[tenants.settings]\nmode = \"{mode}\"\n",
        toml_path(&plugin_wasm("hostile"))
    )
}

/// A well-behaved tenant `good` (seed-compat) beside hostile ones: a subscriber, and a
/// publisher that sends `0..40` on it all along while the hostile tenants misbehave.
struct Bystander {
    subscriber: Client,
    publisher: tokio::task::JoinHandle<()>,
}

fn good_tenant() -> String {
    format!(
        "[[tenants]]\nid = \"good\"\nplugin = \"{}\"\n",
        toml_path(&plugin_wasm("seed_compat"))
    )
}

impl Bystander {
    async fn start(node: &TestNode) -> Bystander {
        let mut subscriber = Client::ws(&node.ws_url("/ws/good"), "v12.stomp").await;
        subscriber.connect_as("gina").await;
        subscriber.subscribe("1", "/topic/heartbeat", "auto").await;
        let url = node.ws_url("/ws/good");
        let publisher = tokio::spawn(async move {
            let mut p = Client::ws(&url, "v12.stomp").await;
            p.connect_as("pete").await;
            for i in 0..40 {
                p.send_to("/topic/heartbeat", &i.to_string()).await;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
        Bystander {
            subscriber,
            publisher,
        }
    }

    /// Every message arrived, in order: the hostile tenants cost the good one nothing.
    async fn got_everything(mut self) {
        self.publisher.await.unwrap();
        for i in 0..40 {
            self.subscriber.expect_message(&i.to_string()).await;
        }
    }
}

/// CONNECTs to each tenant and expects an ERROR whose body names what stopped its plugin,
/// within `within`.
async fn connects_refused(node: &TestNode, cases: &[(&str, &str)], within: Duration) {
    for (tenant, expected) in cases {
        let started = Instant::now();
        let mut c = Client::ws(&node.ws_url(&format!("/ws/{tenant}")), "v12.stomp").await;
        c.send_raw(b"CONNECT\naccept-version:1.2\nuserid:eve\n\n\0")
            .await;
        let error = c.expect_error("authentication failed").await;
        let body = String::from_utf8_lossy(&error.body).to_string();
        assert!(body.contains(expected), "{tenant}: {body}");
        assert!(
            started.elapsed() < within,
            "{tenant} took {:?}",
            started.elapsed()
        );
    }
}

// The node's own runtime flavour: a plugin call runs on a worker and yields every tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_cost_only_their_own_call() {
    let config = [
        hostile_tenant("looper", "loop", 50),
        // A generous deadline, so on a loaded machine the memory cap, not the clock, stops it.
        hostile_tenant("bomber", "alloc", 2000),
        hostile_tenant("trapper", "trap", 50),
        hostile_tenant("guard", "authorize-loop", 50),
        good_tenant(),
    ]
    .concat();
    let node = TestNode::start(&config).await;
    let bystander = Bystander::start(&node).await;
    connects_refused(
        &node,
        &[
            ("looper", "deadline"),
            ("bomber", "memory"),
            ("trapper", "failed"),
            ("looper", "deadline"),
        ],
        Duration::from_secs(4),
    )
    .await;
    // authorize that loops: the SUBSCRIBE gets the ERROR, with its receipt-id.
    let mut c = Client::ws(&node.ws_url("/ws/guard"), "v12.stomp").await;
    c.connect_as("eve").await;
    c.send(
        Frame::new(Command::Subscribe)
            .header("id", "1")
            .header("destination", "/topic/x")
            .header("receipt", "r"),
    )
    .await;
    let error = c.expect_error("access denied").await;
    assert_eq!(error.get("receipt-id"), Some("r"));
    assert!(String::from_utf8_lossy(&error.body).contains("deadline"));

    bystander.got_everything().await;
    let (_, status) = http_raw(
        node.http,
        "GET",
        "/admin/v1/tenants/looper/plugin",
        Some("x"),
        b"",
    )
    .await;
    assert!(status["error"].as_str().unwrap().contains("disabled"));
}

fn guest_hostile_tenant(id: &str, plugin: &str, mode: &str) -> String {
    // An interpreter's instance is larger than a Rust one: 64 MiB, and a deadline generous
    // enough that on a loaded machine the memory cap, not the clock, stops the bomb.
    format!(
        "[[tenants]]\nid = \"{id}\"\nplugin = \"{}\"\nplugin_deadline_ms = {}\nplugin_memory_bytes = 67108864\n[tenants.settings]\nmode = \"{mode}\"\n",
        toml_path(&plugin_wasm(plugin)),
        if mode == "alloc" { 3000 } else { 100 }
    )
}

// The node's own runtime flavour: a plugin call runs on a worker and yields every tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_typescript_and_python_plugins_cost_only_their_own_call() {
    let config = [
        guest_hostile_tenant("ts-loop", "hostile_ts", "loop"),
        guest_hostile_tenant("ts-alloc", "hostile_ts", "alloc"),
        guest_hostile_tenant("ts-throw", "hostile_ts", "throw"),
        guest_hostile_tenant("ts-ok", "hostile_ts", "none"),
        guest_hostile_tenant("py-loop", "hostile_py", "loop"),
        guest_hostile_tenant("py-alloc", "hostile_py", "alloc"),
        guest_hostile_tenant("py-raise", "hostile_py", "raise"),
        guest_hostile_tenant("py-ok", "hostile_py", "none"),
        good_tenant(),
    ]
    .concat();
    let node = TestNode::start(&config).await;
    let bystander = Bystander::start(&node).await;
    connects_refused(
        &node,
        &[
            ("ts-loop", "deadline"),
            ("ts-alloc", "memory"),
            ("ts-throw", "failed"),
            ("py-loop", "deadline"),
            ("py-alloc", "memory"),
            ("py-raise", "failed"),
            ("ts-loop", "deadline"),
        ],
        Duration::from_secs(6),
    )
    .await;
    // After their failures, both languages' instances are replaced and serve again.
    for tenant in ["ts-ok", "py-ok"] {
        let mut c = Client::ws(&node.ws_url(&format!("/ws/{tenant}")), "v12.stomp").await;
        assert_eq!(
            c.connect_as("ok").await.get("user-name"),
            Some("ok"),
            "{tenant}"
        );
    }
    bystander.got_everything().await;
}

// The node's own runtime flavour: a plugin call runs on a worker and yields every tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_moves_between_plugin_languages_without_dropping_anyone() {
    // An upload is written over the tenant's plugin file: a copy of its own, not the build's.
    let dir = std::env::temp_dir().join(format!("plugin-languages-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let live = dir.join("policy.wasm");
    std::fs::copy(plugin_wasm("jwt_auth"), &live).unwrap();
    let config = format!(
        "[server]\nadmin_token = \"{ADMIN}\"\n[[tenants]]\nid = \"default\"\napi_keys = [\"{API_KEY}\"]\nplugin = \"{}\"\n[tenants.settings]\njwt_secret = \"{SECRET}\"\nchannels = \"NEWS=/topic/news\"\n",
        toml_path(&live)
    );
    let node = TestNode::start(&config).await;
    let mut alice = Client::tcp(node.stomp).await;
    alice.connect(&[("token", &token_for("alice"))]).await;
    alice.subscribe("1", "/topic/news", "auto").await;
    for (round, plugin) in ["jwt_auth_ts", "jwt_auth_py", "jwt_auth"]
        .into_iter()
        .enumerate()
    {
        let bytes = std::fs::read(plugin_wasm(plugin)).unwrap();
        let (code, body) = http_raw(
            node.http,
            "PUT",
            "/admin/v1/tenants/default/plugin",
            Some(ADMIN),
            &bytes,
        )
        .await;
        assert_eq!(code, 200, "{plugin}: {body}");
        // The new language decides new connections: a forged user is refused, a token works.
        let mut forged = Client::tcp(node.stomp).await;
        forged
            .send_raw(b"CONNECT\naccept-version:1.2\nuserid:alice\n\n\0")
            .await;
        forged.expect_error("authentication failed").await;
        let user = format!("u{round}");
        let mut fresh = Client::tcp(node.stomp).await;
        let connected = fresh.connect(&[("token", &token_for(&user))]).await;
        assert_eq!(connected.get("user-name"), Some(user.as_str()), "{plugin}");
        // The session connected before every swap stays, and still receives.
        let (status, _) = node
            .publish(json!({"channelCode": "NEWS", "content": format!("after {plugin}")}))
            .await;
        assert_eq!(status, 202);
        alice.expect_message(&format!("after {plugin}")).await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A JavaScript guest's heap grows call after call until its collector runs; an instance
/// near its memory cap is retired after a call instead of failing the next one at the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_collected_plugin_serves_call_after_call() {
    use std::sync::Arc;
    use stompbox::plugin::{engine::wit_types, tool, NoBackend, PluginLimits};
    let compiled = tool::load(&plugin_wasm("jwt_auth_ts")).unwrap();
    let limits = PluginLimits {
        memory_bytes: 16 << 20,
        concurrency: 1,
        ..PluginLimits::default()
    };
    let settings = [("jwt_secret".to_string(), SECRET.to_string())].into();
    let backend = Arc::new(NoBackend {
        tenant: "default".into(),
    });
    let pool = tool::pool(compiled, "default", settings, backend, limits);
    let info = wit_types::ConnectInfo {
        tenant: "default".into(),
        transport: wit_types::Transport::Tcp,
        remote_addr: None,
        headers: vec![("token".into(), token_for("alice"))],
    };
    for call in 0..3_000 {
        let principal = pool
            .authenticate(&info, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("call {call}: {e}"))
            .unwrap();
        assert_eq!(principal.user, "alice");
        assert!(pool.instance_memory_bytes() <= 16 << 20);
    }
}

#[tokio::test]
async fn a_plugin_that_does_not_match_the_world_is_refused_not_ignored() {
    let config = format!(
        "[[tenants]]\nid = \"odd\"\nplugin = \"{}\"\n",
        toml_path(&plugin_wasm("wrong_world"))
    );
    let node = TestNode::start(&config).await;
    let mut c = Client::ws(&node.ws_url("/ws/odd"), "v12.stomp").await;
    c.send_raw(b"CONNECT\naccept-version:1.2\nuserid:a\n\n\0")
        .await;
    let error = c.expect_error("authentication failed").await;
    let body = String::from_utf8_lossy(&error.body);
    assert!(
        body.contains("failed to load") && body.contains("world"),
        "{body}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stompbox"))
        .args(["plugin", "check"])
        .arg(plugin_wasm("wrong_world"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match"));
}

#[tokio::test]
async fn a_plugin_built_for_the_first_world_still_loads() {
    let old = plugin_wasm("world_0_1_0");
    let config = format!(
        "[[tenants]]\nid = \"default\"\napi_keys = [\"{API_KEY}\"]\nplugin = \"{}\"\n[tenants.settings]\nchannels = \"NEWS=/topic/news\"\n",
        toml_path(&old)
    );
    let node = TestNode::start(&config).await;
    let mut alice = Client::tcp(node.stomp).await;
    let connected = alice.connect(&[("userid", "alice")]).await;
    assert_eq!(connected.get("user-name"), Some("alice"));
    alice.subscribe("1", "/topic/news", "auto").await;
    let (status, answer) = node
        .publish(json!({"channelCode": "NEWS", "content": "via 0.1.0"}))
        .await;
    assert_eq!(status, 202, "{answer}");
    alice.expect_message("via 0.1.0").await;
    alice
        .send(
            Frame::new(Command::Subscribe)
                .header("id", "2")
                .header("destination", "/topic/forbidden"),
        )
        .await;
    let error = alice.expect_error("access denied").await;
    assert!(String::from_utf8_lossy(&error.body).contains("world-0.1.0: forbidden"));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stompbox"))
        .args(["plugin", "check"])
        .arg(&old)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["exports"], json!(["stompbox:plugin/policy@0.1.0"]));
}

/// `stompbox plugin test FILE CASES`: its exit code and report.
fn plugin_test(wasm: &std::path::Path, cases: &std::path::Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stompbox"))
        .args(["plugin", "test"])
        .arg(wasm)
        .arg(cases)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn every_example_plugin_passes_its_own_cases() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins");
    for (wasm, dir) in [
        ("jwt_auth", "jwt-auth"),
        ("jwt_auth_ts", "jwt-auth"),
        ("jwt_auth_py", "jwt-auth"),
        ("seed_compat", "seed-compat"),
        ("session_cookie", "session-cookie"),
    ] {
        let (code, report) = plugin_test(&plugin_wasm(wasm), &root.join(dir).join("cases.toml"));
        assert_eq!(code, Some(0), "{report}");
        assert!(report.contains(" 0 failed"), "{report}");
    }
}

/// The TypeScript and Python plugins' own unit tests, as their authors run them.
#[test]
fn typescript_and_python_plugins_pass_their_unit_tests() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins");
    plugin_wasm("jwt_auth_ts"); // installs its packages
    let npm = std::process::Command::new("npm")
        .args(["test", "--silent"])
        .current_dir(root.join("jwt-auth-ts"))
        .output()
        .unwrap();
    assert!(
        npm.status.success(),
        "{}",
        String::from_utf8_lossy(&npm.stdout)
    );
    let python = std::process::Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "tests"])
        .current_dir(root.join("jwt-auth-py"))
        .output()
        .unwrap();
    assert!(
        python.status.success(),
        "{}",
        String::from_utf8_lossy(&python.stderr)
    );
}

#[test]
fn plugin_test_reports_a_mismatch_and_refuses_a_broken_file() {
    let dir = std::env::temp_dir().join(format!("plugin-cases-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wrong = dir.join("wrong.toml");
    std::fs::write(
        &wrong,
        "[settings]\nchannels = \"NEWS=/topic/news\"\n\
         [[case]]\nname = \"believes userid\"\nauthenticate = { headers = { userid = \"alice\" } }\nexpect = { user = \"alice\" }\n\
         [[case]]\nname = \"wrong on purpose\"\nresolve_channel = \"NEWS\"\nexpect = { destination = \"/topic/other\" }\n",
    )
    .unwrap();
    let (code, report) = plugin_test(&plugin_wasm("seed_compat"), &wrong);
    assert_eq!(code, Some(1), "{report}");
    assert!(report.contains("ok    believes userid"), "{report}");
    assert!(
        report.contains(
            "FAIL  wrong on purpose: expected destination \"/topic/other\", got \"/topic/news\""
        ),
        "{report}"
    );
    assert!(report.contains("1 passed, 1 failed"), "{report}");

    // A hostile plugin's deadline is an expectation like any other.
    let hostile = dir.join("hostile.toml");
    std::fs::write(
        &hostile,
        "[settings]\nmode = \"loop\"\n[[case]]\nname = \"spins\"\nauthenticate = {}\nexpect = { fails = \"deadline\" }\n",
    )
    .unwrap();
    let (code, report) = plugin_test(&plugin_wasm("hostile"), &hostile);
    assert_eq!(code, Some(0), "{report}");

    let broken = dir.join("broken.toml");
    std::fs::write(
        &broken,
        "[[case]]\nname = \"no call\"\nexpect = { user = \"a\" }\n",
    )
    .unwrap();
    let (code, report) = plugin_test(&plugin_wasm("seed_compat"), &broken);
    assert_eq!(code, Some(2), "{report}");
    assert!(report.contains("give exactly one of"), "{report}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn plugin_cli_checks_and_calls() {
    let jwt_auth = plugin_wasm("jwt_auth");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stompbox"))
        .args(["plugin", "check"])
        .arg(&jwt_auth)
        .output()
        .unwrap();
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["exports"], json!(["stompbox:plugin/policy@0.1.1"]));

    let token = token_for("alice");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stompbox"))
        .args(["plugin", "call"])
        .arg(&jwt_auth)
        .args(["authenticate", "--header", "userid=alice", "--header"])
        .arg(format!("token={token}"))
        .arg("--setting")
        .arg(format!("jwt_secret={SECRET}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["ok"]["user"], "alice", "{answer}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stompbox"))
        .args(["plugin", "call"])
        .arg(&jwt_auth)
        .args([
            "authorize",
            "--user",
            "alice",
            "--op",
            "subscribe",
            "--destination",
            "/user/bob/queue/x",
        ])
        .output()
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(answer["err"].is_string(), "{answer}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stompbox"))
        .args(["plugin", "call"])
        .arg(&jwt_auth)
        .args([
            "resolve-channel",
            "--code",
            "NEWS",
            "--setting",
            "channels=NEWS=/topic/news",
        ])
        .output()
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["ok"], "/topic/news");
}

async fn plugin_status(node: &TestNode, tenant: &str) -> serde_json::Value {
    let (status, body) = http_raw(
        node.http,
        "GET",
        &format!("/admin/v1/tenants/{tenant}/plugin"),
        Some(ADMIN),
        b"",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn wait_for(
    node: &TestNode,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = plugin_status(node, "default").await;
        if check(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "waiting for {what}: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// The node's own runtime flavour: a plugin call runs on a worker and yields every tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_traffic_drops_nothing() {
    let dir = std::env::temp_dir().join(format!("stompbox-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let live = dir.join("policy.wasm");
    let seed = std::fs::read(plugin_wasm("seed_compat")).unwrap();
    let jwt_auth = std::fs::read(plugin_wasm("jwt_auth")).unwrap();
    std::fs::write(&live, &seed).unwrap();
    let config = format!(
        "[server]\nadmin_token = \"{ADMIN}\"\nplugin_poll_ms = 50\n[[tenants]]\nid = \"default\"\napi_keys = [\"{API_KEY}\"]\nplugin = \"{}\"\n[tenants.settings]\njwt_secret = \"{SECRET}\"\n",
        toml_path(&live)
    );
    let node = TestNode::start(&config).await;
    let first = plugin_status(&node, "default").await;
    assert_eq!(first["policy"], "wasm");
    let seed_sha = first["sha256"].as_str().unwrap().to_string();

    // Clients connected under the old policy, receiving a steady stream.
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut c = ws_user(&node, &format!("user{i}")).await;
        c.subscribe("1", "/topic/stream", "auto").await;
        clients.push(c);
    }
    let http = node.http;
    let publisher = tokio::spawn(async move {
        for i in 0..120 {
            let (status, _) = http_request(
                http,
                "POST",
                "/api/v1/tenants/default/publish",
                Some(API_KEY),
                &json!({"destination": "/topic/stream", "content": i.to_string()}).to_string(),
            )
            .await;
            assert_eq!(status, 202);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });

    // Replace the file with jwt-auth: new CONNECTs need a token.
    let tmp = dir.join("policy.wasm.new");
    std::fs::write(&tmp, &jwt_auth).unwrap();
    std::fs::rename(&tmp, &live).unwrap();
    let status = wait_for(&node, "the jwt-auth reload", |s| {
        s["sha256"] != seed_sha.as_str()
    })
    .await;
    let jwt_sha = status["sha256"].as_str().unwrap().to_string();
    let mut bare = Client::tcp(node.stomp).await;
    bare.send_raw(b"CONNECT\naccept-version:1.2\nuserid:mallory\n\n\0")
        .await;
    bare.expect_error("authentication failed").await;
    let mut with_token = Client::tcp(node.stomp).await;
    with_token.connect(&[("token", &token_for("tess"))]).await;

    // A broken file is refused: jwt-auth keeps serving and the error is visible.
    std::fs::write(&live, b"\0asm garbage").unwrap();
    let status = wait_for(&node, "the broken file to be refused", |s| {
        s["rejected"].as_u64() >= Some(1)
    })
    .await;
    assert_eq!(status["sha256"], jwt_sha.as_str());
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("not a valid WebAssembly component"),
        "{status}"
    );
    let mut still_jwt = Client::tcp(node.stomp).await;
    still_jwt
        .send_raw(b"CONNECT\naccept-version:1.2\nuserid:mallory\n\n\0")
        .await;
    still_jwt.expect_error("authentication failed").await;

    // The admin API: a bad upload is refused, a good one swaps and is written to the file.
    let (code, body) = http_raw(
        node.http,
        "PUT",
        "/admin/v1/tenants/default/plugin",
        Some(ADMIN),
        b"not wasm",
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("previous version keeps serving"));
    let (code, body) = http_raw(
        node.http,
        "PUT",
        "/admin/v1/tenants/default/plugin",
        Some(ADMIN),
        &seed,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["sha256"], seed_sha.as_str());
    assert_eq!(body["changed"], true);
    assert_eq!(
        std::fs::read(&live).unwrap(),
        seed,
        "the upload replaced the file"
    );
    let mut back = Client::tcp(node.stomp).await;
    back.connect_as("mallory").await;

    // Every client stayed connected and got every message, in order.
    publisher.await.unwrap();
    for c in &mut clients {
        for i in 0..120 {
            c.expect_message(&i.to_string()).await;
        }
    }
    let status = plugin_status(&node, "default").await;
    assert!(status["calls"].as_u64().unwrap() >= 4);
    assert!(status["reloads"].as_u64().unwrap() >= 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn admin_api_needs_the_token() {
    let node = TestNode::start(&format!("[server]\nadmin_token = \"{ADMIN}\"\n")).await;
    let (code, body) = http_raw(
        node.http,
        "GET",
        "/admin/v1/tenants/default/plugin",
        None,
        b"",
    )
    .await;
    assert_eq!(code, 401, "{body}");
    let (code, _) = http_raw(
        node.http,
        "GET",
        "/admin/v1/tenants/default/plugin",
        Some("wrong-token-wrong-token"),
        b"",
    )
    .await;
    assert_eq!(code, 401);
    let (code, _) = http_raw(
        node.http,
        "GET",
        "/admin/v1/tenants/ghost/plugin",
        Some(ADMIN),
        b"",
    )
    .await;
    assert_eq!(code, 404);
    let status = plugin_status(&node, "default").await;
    assert_eq!(status["policy"], "builtin");
}
