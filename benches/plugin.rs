//! What a tenant plugin costs: one `authenticate` call through the warm instance pool, for
//! `seed-compat` and for `jwt-auth` in each language (Rust, TypeScript, Python); the call
//! through the tenant's policy slot as sessions make it; and a whole STOMP CONNECT →
//! CONNECTED round trip on a node whose tenant runs `jwt-auth`.
//!
//! `cargo bench --bench plugin` (builds the example plugins first: cargo for wasm32-wasip2,
//! `npm run build` and `build.sh` for the TypeScript and Python ones, as
//! `scripts/plugin-bench.sh` does). `scripts/plugin-bench.sh` measures the rest of each
//! language's cost (size, compile time, instance memory, CONNECTs per second).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use stompbox::plugin::engine::wit_types;
use stompbox::plugin::tool;
use stompbox::plugin::{
    CacheLimits, Capabilities, NoBackend, PluginCache, PluginLimits, PluginSlot,
};
use stompbox::policy::{ConnectInfo, Policy, TransportKind};

const SECRET: &str = "bench-secret-bench-secret";

fn plugin_wasm(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
        .current_dir(root.join("plugins"))
        .status()
        .expect("running cargo to build the plugins");
    assert!(status.success(), "building the plugins failed");
    root.join("plugins/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"))
}

/// The TypeScript or Python port of jwt-auth, built as its author would.
fn guest_wasm(dir: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("plugins")
        .join(dir);
    let status = if dir.join("package.json").exists() {
        if !dir.join("node_modules").exists() {
            let ci = std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir)
                .status()
                .expect("running npm ci");
            assert!(ci.success(), "npm ci in {}", dir.display());
        }
        std::process::Command::new("npm")
            .args(["run", "--silent", "build"])
            .current_dir(&dir)
            .status()
    } else {
        std::process::Command::new("./build.sh")
            .current_dir(&dir)
            .stdout(std::process::Stdio::null())
            .status()
    };
    assert!(
        status.expect("running the build").success(),
        "building {}",
        dir.display()
    );
    dir.join("dist/plugin.wasm")
}

fn token(user: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = serde_json::json!({"sub": user, "exp": exp});
    stompbox_testkit::jwt::hs256(SECRET, &claims)
}

fn settings() -> BTreeMap<String, String> {
    BTreeMap::from([("jwt_secret".to_string(), SECRET.to_string())])
}

fn connect_headers(token: &str) -> Vec<(String, String)> {
    vec![
        ("accept-version".into(), "1.2".into()),
        ("host".into(), "default".into()),
        ("userid".into(), "alice".into()),
        ("token".into(), token.into()),
    ]
}

fn bench_pool(c: &mut Criterion) {
    // As a node does: a JavaScript or Python component compiles once, then loads from disk.
    stompbox::plugin::engine::configure_compile_cache(
        stompbox::plugin::engine::CompileCache::Default,
    );
    let mut group = c.benchmark_group("authenticate");
    let token = token("alice");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let plugins = [
        ("seed_compat", plugin_wasm("seed_compat")),
        ("jwt_auth", plugin_wasm("jwt_auth")),
        ("jwt_auth_ts", guest_wasm("jwt-auth-ts")),
        ("jwt_auth_py", guest_wasm("jwt-auth-py")),
    ];
    for (name, wasm) in plugins {
        let compiled = tool::load(&wasm).unwrap();
        let backend = Arc::new(NoBackend {
            tenant: "default".into(),
        });
        let pool = tool::pool(
            compiled,
            "default",
            settings(),
            backend,
            PluginLimits::default(),
        );
        let info = wit_types::ConnectInfo {
            tenant: "default".into(),
            transport: wit_types::Transport::Websocket,
            remote_addr: Some("127.0.0.1:40000".into()),
            headers: connect_headers(&token),
        };
        group.bench_function(format!("{name}/pool"), |b| {
            b.to_async(&runtime).iter(|| async {
                let principal = pool.authenticate(&info, Vec::new()).await.unwrap().unwrap();
                assert_eq!(principal.user, "alice");
            })
        });
    }

    // As a session makes the call: through the tenant's slot and its turns.
    let slot = PluginSlot::new(
        "default",
        Some(plugin_wasm("jwt_auth")),
        settings(),
        Capabilities::new(
            Arc::new(NoBackend {
                tenant: "default".into(),
            }),
            Arc::new(PluginCache::in_memory(CacheLimits::default())),
        ),
        PluginLimits::default(),
    );
    let info = ConnectInfo {
        tenant: "default".into(),
        transport: TransportKind::WebSocket,
        remote_addr: Some("127.0.0.1:40000".into()),
        headers: connect_headers(&token),
        request_headers: Vec::new(),
    };
    group.bench_function("jwt_auth/slot", |b| {
        b.to_async(&runtime).iter(|| async {
            let principal = slot.authenticate(&info).await.unwrap();
            assert_eq!(principal.user.as_deref(), Some("alice"));
        })
    });
    group.finish();
}

fn bench_connect(c: &mut Criterion) {
    use stompbox::config::{Config, Overrides};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let toml = format!(
        "[[tenants]]\nid = \"default\"\nplugin = \"{}\"\n[tenants.settings]\njwt_secret = \"{SECRET}\"\n",
        plugin_wasm("jwt_auth").display()
    );
    let config = Config::from_toml(&toml)
        .unwrap()
        .finish(Overrides::default())
        .unwrap();
    let (node, stomp) = runtime.block_on(async {
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stomp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = stomp.local_addr().unwrap();
        let node = stompbox::node::Node::new(&config);
        tokio::spawn(stompbox::server::run(node.clone(), http, stomp));
        (node, addr)
    });
    let frame = format!(
        "CONNECT\naccept-version:1.2\nhost:default\ntoken:{}\n\n\0DISCONNECT\n\n\0",
        token("alice")
    );
    let mut group = c.benchmark_group("connect");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("jwt_auth/tcp_connect_to_connected", |b| {
        b.to_async(&runtime).iter(|| async {
            let mut s = tokio::net::TcpStream::connect(stomp).await.unwrap();
            s.write_all(frame.as_bytes()).await.unwrap();
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                buf[..n].starts_with(b"CONNECTED"),
                "{}",
                String::from_utf8_lossy(&buf[..n])
            );
        })
    });
    group.finish();
    node.shutdown.cancel();
}

criterion_group!(benches, bench_pool, bench_connect);
criterion_main!(benches);
