//! Real processes for cluster tests: `redis-server` on a free port (or a Redis Cluster of three
//! primaries with a replica each), and `stompbox` nodes started from the built binary, each
//! killed when the test ends (even on failure). They come from the test kit (`testkit/`);
//! these wrappers add what the cluster tests ask of them. [`on_both`] runs one test body on a
//! single Redis and on a Redis Cluster.

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

/// What a test's nodes run on.
pub trait Backing {
    /// The `stompbox serve` flags that join it.
    fn node_args(&self) -> Vec<String>;
}

impl<T: Backing + ?Sized> Backing for &T {
    fn node_args(&self) -> Vec<String> {
        (**self).node_args()
    }
}

impl Backing for Redis {
    fn node_args(&self) -> Vec<String> {
        vec!["--redis".into(), self.url()]
    }
}

/// No Redis: a single node.
pub struct Alone;

impl Backing for Alone {
    fn node_args(&self) -> Vec<String> {
        Vec::new()
    }
}

/// One Redis or a Redis Cluster, for a test that runs on both.
pub enum Backend {
    Single(Box<Redis>),
    Cluster(stompbox_testkit::RedisCluster),
}

impl Backing for stompbox_testkit::RedisCluster {
    fn node_args(&self) -> Vec<String> {
        vec!["--redis-cluster".into(), self.seeds().join(",")]
    }
}

impl Backing for Backend {
    fn node_args(&self) -> Vec<String> {
        match self {
            Backend::Single(redis) => redis.node_args(),
            Backend::Cluster(cluster) => cluster.node_args(),
        }
    }
}

impl Backend {
    /// A fresh redis-server.
    pub fn single() -> Backend {
        Backend::Single(Box::new(Redis::start()))
    }

    /// A fresh Redis Cluster: 3 primaries, one replica each.
    pub fn cluster() -> Backend {
        Backend::Cluster(
            stompbox_testkit::RedisCluster::start(3, 1)
                .unwrap_or_else(|e| panic!("{e} (scripts/test.sh installs redis-server)")),
        )
    }

    /// Runs `cmd` where its key lives; panics when Redis refuses it.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        match self {
            Backend::Single(redis) => {
                let mut conn = redis.client().await;
                cmd.query_async(&mut conn).await.unwrap()
            }
            Backend::Cluster(cluster) => {
                let client = redis::cluster::ClusterClient::new(cluster.seeds()).unwrap();
                let mut conn = client.get_async_connection().await.unwrap();
                cmd.query_async(&mut conn).await.unwrap()
            }
        }
    }

    /// How many nodes subscribe to `channel` (a node's inbox, a topic: sharded channels on a
    /// Redis Cluster).
    pub async fn subscribers(&self, channel: &str) -> usize {
        self.numsub(channel, true).await
    }

    /// How many nodes subscribe to the classic channel `channel` (presence notices, the
    /// seed-format ingress channel): on a Redis Cluster, summed over every node.
    pub async fn classic_subscribers(&self, channel: &str) -> usize {
        self.numsub(channel, false).await
    }

    async fn numsub(&self, channel: &str, sharded: bool) -> usize {
        match self {
            Backend::Single(_) => {
                let reply: Vec<redis::Value> = self
                    .query(redis::cmd("PUBSUB").arg("NUMSUB").arg(channel))
                    .await;
                match reply.get(1) {
                    Some(redis::Value::Int(n)) => *n as usize,
                    _ => 0,
                }
            }
            Backend::Cluster(cluster) => cluster.subscribers(channel, sharded),
        }
    }

    /// The single Redis, for faults only it has (killed, restarted empty).
    pub fn single_redis(&mut self) -> &mut Redis {
        match self {
            Backend::Single(redis) => redis,
            Backend::Cluster(_) => panic!("this test needs a single Redis"),
        }
    }
}

/// Runs `$body(backend)` as two tests, `$name::single_redis` and `$name::redis_cluster`.
#[macro_export]
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn single_redis() {
                super::$name($crate::support::cluster::Backend::single()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis_cluster() {
                super::$name($crate::support::cluster::Backend::cluster()).await
            }
        }
    };
}

/// A `stompbox serve` process.
pub struct NodeProcess {
    pub id: String,
    pub http: SocketAddr,
    pub stomp: SocketAddr,
    inner: stompbox_testkit::Node,
}

impl NodeProcess {
    /// Starts node `id` in the cluster on `backing` with `toml` as its config file.
    pub fn start(id: &str, backing: &impl Backing, toml: &str) -> NodeProcess {
        let inner = stompbox_testkit::Node::builder(env!("CARGO_BIN_EXE_stompbox"))
            .name(id)
            .args(["--node-id", id])
            .args(backing.node_args())
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

    /// Replaces the node's config file with `toml` (read again on SIGHUP or a restart).
    pub fn rewrite_config(&self, toml: &str) {
        let path = self
            .inner
            .config_path()
            .expect("the node has a config file");
        std::fs::write(path, toml).expect("config file written");
    }

    /// Kills the process and starts it again on the same ports, config and flags.
    pub fn restart(&mut self) {
        self.inner.restart().expect("the node starts again");
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.inner.running()
    }

    /// True once the process exited with success.
    pub fn exit_success(&mut self) -> bool {
        self.inner.exited().is_some_and(|status| status.success())
    }

    /// Sends `signal` without waiting.
    pub fn signal(&mut self, signal: stompbox_testkit::Signal) {
        let pid = self.pid().expect("the node runs");
        stompbox_testkit::signal(pid, signal).expect("signal sent");
    }

    /// SIGTERM without waiting for the exit.
    pub fn signal_terminate(&mut self) {
        self.signal(stompbox_testkit::Signal::Term);
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
