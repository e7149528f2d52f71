//! Real processes for cluster tests: `redis-server` on a free port, and `stompbox` nodes
//! started from the built binary, each killed when the test ends (even on failure). Both come
//! from the test kit (`testkit/`); these wrappers add what the cluster tests ask of them.

use std::net::SocketAddr;

#[allow(unused_imports)] // kept for the test files that may want it
pub use stompbox_testkit::free_port;

/// A redis-server of this test's own.
pub struct Redis {
    pub port: u16,
    inner: stompbox_testkit::Redis,
}

impl Redis {
    pub fn start() -> Redis {
        let inner = stompbox_testkit::Redis::start()
            .unwrap_or_else(|e| panic!("{e} (scripts/test.sh installs redis-server)"));
        Redis {
            port: inner.port(),
            inner,
        }
    }

    /// One that keeps an append-only file, so a restart finds what it acknowledged.
    pub fn start_persistent() -> Redis {
        let inner = stompbox_testkit::Redis::start_persistent()
            .unwrap_or_else(|e| panic!("{e} (scripts/test.sh installs redis-server)"));
        Redis {
            port: inner.port(),
            inner,
        }
    }

    pub fn url(&self) -> String {
        self.inner.url()
    }

    /// Starts it again on the same port (empty, unless it keeps an append-only file).
    pub fn restart(&mut self) {
        self.inner.restart().expect("redis-server restarts");
    }

    /// Kills it (data and all).
    pub fn kill(&mut self) {
        self.inner.kill();
    }

    /// Freezes it (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&mut self) {
        self.inner.pause().expect("redis-server pauses");
    }

    /// Lets it carry on after [`Redis::pause`].
    pub fn resume(&mut self) {
        self.inner.resume().expect("redis-server resumes");
    }

    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

/// A `stompbox serve` process.
pub struct NodeProcess {
    pub id: String,
    pub http: SocketAddr,
    pub stomp: SocketAddr,
    inner: stompbox_testkit::Node,
}

impl NodeProcess {
    /// Starts node `id` in the cluster of `redis_url` with `toml` as its config file.
    pub fn start(id: &str, redis_url: &str, toml: &str) -> NodeProcess {
        let inner = stompbox_testkit::Node::builder(env!("CARGO_BIN_EXE_stompbox"))
            .name(id)
            .args(["--node-id", id, "--redis", redis_url])
            .config(toml)
            .env("RUST_LOG", "warn")
            .start()
            .unwrap_or_else(|e| panic!("node {id}: {e}"));
        NodeProcess {
            id: id.to_string(),
            http: inner.http(),
            stomp: inner.stomp(),
            inner,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    /// Its process id, while it runs.
    pub fn pid(&mut self) -> Option<u32> {
        self.inner.pid()
    }

    /// SIGKILL: no goodbye to the cluster.
    pub fn kill9(&mut self) {
        self.inner.kill();
    }

    /// SIGTERM, then waits for the process to exit; true when it exited with success.
    pub fn terminate(&mut self) -> bool {
        let exited = self.inner.terminate(std::time::Duration::from_secs(30));
        exited.is_some_and(|status| status.success())
    }

    /// What the node logged so far.
    pub fn log(&self) -> String {
        self.inner.log()
    }

    /// A counter or gauge from `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = super::http_text(self.http, "/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name}"))
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // A failing test shows what the node said.
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.id, self.inner.log());
        }
    }
}

/// Waits until `node` answers `/readyz` with 200 (it reached Redis); panics after 20 s.
pub async fn await_ready(node: &NodeProcess) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (status, body) = super::http_request(node.http, "GET", "/readyz", None, "").await;
        if status == 200 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} not ready: {body}",
            node.id
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
