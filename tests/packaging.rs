//! What the packaging ships, checked as an operator would run it: the binary runs from an empty
//! environment with nothing but its config file (its only libraries are the C library's,
//! which every Debian has); the example config is valid and the systemd unit matches it; and
//! a real nginx with the example `packaging/nginx.conf` in front of two nodes carries
//! WebSocket, SockJS over WebSocket and xhr polling (each session kept on one node), and a
//! drain of one node moves its clients to the other through it.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use stompbox::stomp::Command as Stomp;
use stompbox_testkit::{free_port, http, Log, Process};
use support::cluster::{await_ready, NodeProcess, Redis};
use support::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("stompbox-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The shared libraries `binary` needs, by name.
fn libraries(binary: &Path) -> Vec<String> {
    let out = Command::new("ldd").arg(binary).output().expect("ldd runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|name| name.rsplit('/').next().unwrap_or(name).to_string())
        .collect()
}

#[test]
fn the_binary_needs_only_the_c_library_and_its_config() {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_stompbox"));
    // Every one of these is in Debian's required packages (libc6, libgcc-s1).
    let base = [
        "linux-vdso.so.1",
        "libc.so.6",
        "libm.so.6",
        "libgcc_s.so.1",
        "ld-linux-x86-64.so.2",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
    ];
    for library in libraries(&binary) {
        assert!(
            base.contains(&library.as_str()),
            "the binary needs {library}, which a fresh Debian may not have"
        );
    }

    // An empty machine: the binary and its config, no environment, no home, no other file.
    let dir = scratch("alone");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::create_dir_all(dir.join("state")).unwrap();
    std::fs::copy(&binary, dir.join("bin/stompbox")).unwrap();
    let (http_port, stomp_port) = (free_port(), free_port());
    let example = std::fs::read_to_string(root().join("packaging/stompbox.toml")).unwrap();
    let config = example
        .replace("0.0.0.0:8080", &format!("127.0.0.1:{http_port}"))
        .replace("0.0.0.0:61613", &format!("127.0.0.1:{stomp_port}"))
        .replace(
            "/var/lib/stompbox/stompbox.state.json",
            &dir.join("state/stompbox.state.json").display().to_string(),
        )
        .replace("redis = \"redis://127.0.0.1:6379\"\n", "");
    std::fs::write(dir.join("etc/stompbox.toml"), config).unwrap();
    let mut command = Command::new(dir.join("bin/stompbox"));
    command
        .env_clear()
        .current_dir(&dir)
        .args(["serve", "--config"])
        .arg(dir.join("etc/stompbox.toml"));
    let mut node = Process::spawn("alone", command, Log::memory(), Log::memory()).unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], http_port).into();
    stompbox_testkit::wait_for_port(addr, &mut node, Duration::from_secs(20)).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let publish = json!({"destination": "/topic/x", "content": "hello"}).to_string();
        let (status, answer) = http_request(
            addr,
            "POST",
            "/api/v1/tenants/default/publish",
            Some("change-me-to-a-backend-key"),
            &publish,
        )
        .await;
        assert_eq!(status, 202, "{answer}");
        let (status, answer) = http_request(
            addr,
            "PUT",
            "/admin/v1/tenants/acme",
            Some("change-me-to-a-long-random-token"),
            &json!({"api_keys": ["acme-key-0001"]}).to_string(),
        )
        .await;
        assert_eq!(status, 201, "{answer}");
    });
    assert!(
        dir.join("state/stompbox.state.json").is_file(),
        "the state file is where the config says"
    );
    let stopped = node.terminate(Duration::from_secs(40));
    assert!(stopped.is_some_and(|s| s.success()), "{}", node.output());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_example_config_is_valid_and_the_unit_gives_its_drain_time() {
    let path = root().join("packaging/stompbox.toml");
    let config = stompbox::config::Config::from_file(&path)
        .and_then(|c| c.finish(Default::default()))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let unit = std::fs::read_to_string(root().join("packaging/stompbox.service")).unwrap();
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("the unit has no {key}"))
            .to_string()
    };
    assert_eq!(
        value("ExecStart"),
        "/usr/local/bin/stompbox serve --config /etc/stompbox/stompbox.toml"
    );
    assert_eq!(value("ExecReload"), "/bin/kill -HUP $MAINPID");
    let stop_ms: u64 = value("TimeoutStopSec").parse::<u64>().unwrap() * 1000;
    assert!(
        stop_ms > config.server.drain_ms + config.server.shutdown_grace_ms,
        "TimeoutStopSec must outlast drain_ms and shutdown_grace_ms"
    );
    // The flags the unit passes exist.
    let help = Command::new(env!("CARGO_BIN_EXE_stompbox"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--config"));
}

/// Debian's nginx (in /usr/sbin, which a user's PATH may lack).
fn nginx() -> Command {
    if Path::new("/usr/sbin/nginx").exists() {
        Command::new("/usr/sbin/nginx")
    } else {
        Command::new("nginx")
    }
}

/// nginx with `packaging/nginx.conf`, its upstreams pointed at `nodes`, on `port`.
fn start_nginx(dir: &Path, port: u16, nodes: [SocketAddr; 2]) -> Process {
    let example = std::fs::read_to_string(root().join("packaging/nginx.conf")).unwrap();
    let site = example
        .replace("10.0.0.11:8080", &nodes[0].to_string())
        .replace("10.0.0.12:8080", &nodes[1].to_string())
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
    assert!(site.contains(&nodes[0].to_string()) && site.contains(&format!(":{port};")));
    std::fs::write(dir.join("stompbox.conf"), site).unwrap();
    let d = dir.display();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             include {d}/stompbox.conf;\n}}\n"
        ),
    )
    .unwrap();
    let mut command = nginx();
    command
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .args(["-g", "daemon off; master_process off;"]);
    let mut nginx = Process::spawn("nginx", command, Log::memory(), Log::memory())
        .expect("nginx runs (scripts/test.sh installs it)");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    stompbox_testkit::wait_for_port(addr, &mut nginx, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("nginx: {e}"));
    nginx
}

/// A SockJS session over xhr polling through nginx: open, CONNECT as `user`, SUBSCRIBE; the
/// node's answers must all come from the one node holding the session.
async fn xhr_session(proxy: SocketAddr, session: &str, user: &str) {
    let base = format!("/sockjs/000/{session}");
    let post = |path: String, body: String| async move {
        let request = http::Request::new("POST", &path)
            .header("Host", "push.example.com")
            .header("Content-Type", "text/plain")
            .body(body.into_bytes());
        http::send(proxy, &request).await.unwrap()
    };
    let opened = post(format!("{base}/xhr"), String::new()).await;
    assert_eq!((opened.status, opened.text()), (200, "o\n".to_string()));
    let connect = format!("CONNECT\naccept-version:1.2\nhost:default\nuserid:{user}\n\n\0");
    let subscribe = "SUBSCRIBE\nid:1\ndestination:/user/queue/notice\nreceipt:r1\n\n\0";
    let sent = post(
        format!("{base}/xhr_send"),
        json!([connect, subscribe]).to_string(),
    )
    .await;
    assert_eq!(sent.status, 204, "{}", sent.text());
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(seen.contains("CONNECTED") && seen.contains("receipt-id:r1")) {
        assert!(Instant::now() < deadline, "session {session}: {seen}");
        let polled = post(format!("{base}/xhr"), String::new()).await;
        assert_eq!(
            polled.status,
            200,
            "session {session} lost its node: {}",
            polled.text()
        );
        seen.push_str(&polled.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_with_the_example_config_carries_every_transport_and_a_drain() {
    assert!(
        nginx().arg("-v").output().is_ok(),
        "nginx is missing: run scripts/test.sh, which installs it"
    );
    let admin = "packaging-test-admin";
    let toml = format!(
        "[server]\nadmin_token = \"{admin}-token\"\n[cluster]\nnode_ttl_ms = 2000\n\
         [[tenants]]\nid = \"default\"\napi_keys = [\"{API_KEY}\"]\n"
    );
    let redis = Redis::start();
    let mut a = NodeProcess::start("nginx-a", &redis, &toml);
    let b = NodeProcess::start("nginx-b", &redis, &toml);
    await_ready(&a).await;
    await_ready(&b).await;
    let dir = scratch("nginx");
    let port = free_port();
    let _nginx = start_nginx(&dir, port, [a.http, b.http]);
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();

    // WebSocket and SockJS-over-WebSocket clients through nginx, spread over both nodes.
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut client = if i % 2 == 0 {
            Client::ws(&format!("ws://{proxy}/ws"), "v12.stomp").await
        } else {
            Client::sockjs(&format!("ws://{proxy}/sockjs/000/ws{i}/websocket")).await
        };
        client.connect_as(&format!("u{i}")).await;
        client.subscribe("1", "/user/queue/notice", "auto").await;
        clients.push(client);
    }
    assert_eq!(
        a.metric("stompbox_connections").await + b.metric("stompbox_connections").await,
        20
    );
    assert!(
        a.metric("stompbox_connections").await > 0,
        "nginx sent nobody to node A"
    );
    // xhr polling: every request of a session reaches the node that holds it.
    for i in 0..10 {
        xhr_session(proxy, &format!("poll{i}"), &format!("p{i}")).await;
    }

    // Node A drains: its clients are told, reconnect through nginx, and land on node B.
    let (status, answer) = http_request(
        a.http,
        "POST",
        "/admin/v1/drain",
        Some(&format!("{admin}-token")),
        r#"{"period_ms": 1000}"#,
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.running() {
        assert!(
            Instant::now() < deadline,
            "node A did not exit after its drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.exit_success());
    // Node A told each of its clients and closed them; they reconnect through nginx, which
    // sends them to node B.
    let mut moved = 0;
    for (i, client) in clients.iter_mut().enumerate() {
        match client.recv_within(Duration::from_millis(50)).await {
            Some(f) if f.command == Stomp::Error => {
                assert_eq!(f.get("message"), Some("server draining"), "{f:?}");
            }
            Some(f) => panic!("u{i}: {f:?}"),
            None if client.is_closed() => {}
            None => continue,
        }
        let mut again = Client::ws(&format!("ws://{proxy}/ws"), "v12.stomp").await;
        again.connect_as(&format!("u{i}")).await;
        again.subscribe("1", "/user/queue/notice", "auto").await;
        *client = again;
        moved += 1;
    }
    assert!(moved > 0, "node A had no client to move");
    assert_eq!(b.metric("stompbox_connections").await, 20);
    for i in 0..20 {
        let body = json!({"receiver": format!("u{i}"), "destination": "/queue/notice", "content": format!("after {i}")});
        let (status, answer) = http_request(
            proxy,
            "POST",
            "/api/v1/tenants/default/publish",
            Some(API_KEY),
            &body.to_string(),
        )
        .await;
        assert_eq!(status, 202, "{answer}");
    }
    for (i, client) in clients.iter_mut().enumerate() {
        client.expect_message(&format!("after {i}")).await;
    }
    let _ = std::fs::remove_dir_all(dir);
}
