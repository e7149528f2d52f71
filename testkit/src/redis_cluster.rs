//! A Redis Cluster of the caller's own: `redis-server --cluster-enabled yes` on free ports,
//! joined with `redis-cli --cluster create`, each node a [`Redis`] that can be killed, paused
//! and restarted; slots moved with `redis-cli --cluster reshard`. Administration goes through
//! `redis-cli`, the tool operators use.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::{Error, Redis};

/// How long a node waits before declaring a silent peer failed: short, so failovers in tests
/// take about a second.
const NODE_TIMEOUT_MS: u64 = 1000;

/// A running Redis Cluster. Dropping it kills every node.
#[derive(Debug)]
pub struct RedisCluster {
    dir: PathBuf,
    nodes: Vec<Redis>,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// Its node id.
    pub id: String,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// A primary (`master`).
    pub primary: bool,
    /// Marked failed (`fail`) by the cluster.
    pub failed: bool,
    /// For a replica, its primary's id.
    pub primary_id: Option<String>,
    /// The slot ranges it serves.
    pub slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// `primaries` primaries with `replicas` replicas each, all slots assigned, healthy.
    pub fn start(primaries: usize, replicas: usize) -> Result<RedisCluster, Error> {
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "stompbox-redis-cluster-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let nodes = (0..primaries * (1 + replicas))
            .map(|_| Redis::start_cluster_node(&dir, NODE_TIMEOUT_MS))
            .collect::<Result<Vec<_>, _>>()?;
        let cluster = RedisCluster { dir, nodes };
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port()));
        }
        create.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        run(create, "redis-cli --cluster create")?;
        cluster.await_healthy(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// `redis://127.0.0.1:PORT` of every node: the seed list a stompbox node is given.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port()))
            .collect()
    }

    /// Its nodes, in the order they were started.
    pub fn nodes(&self) -> &[Redis] {
        &self.nodes
    }

    /// The node at `port`, to kill, pause or restart.
    pub fn node_at(&mut self, port: u16) -> &mut Redis {
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    /// The cluster as a running node sees it (`CLUSTER NODES`).
    pub fn view(&self) -> Result<Vec<ClusterNode>, Error> {
        let mut last = String::from("no node is running");
        for node in self.nodes.iter().filter(|n| n.pid().is_some()) {
            match cli(node.port(), &["CLUSTER", "NODES"]) {
                Ok(text) => return Ok(parse_nodes(&text)),
                Err(e) => last = e.to_string(),
            }
        }
        Err(Error::Io(std::io::Error::other(last)))
    }

    /// The port of the primary serving `slot`, as the cluster sees it now.
    pub fn primary_of(&self, slot: u16) -> Option<u16> {
        self.view().ok()?.into_iter().find_map(|n| {
            (n.primary && !n.failed && n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
                .then_some(n.port)
        })
    }

    /// Ports of the primaries serving slots now.
    pub fn primaries(&self) -> Vec<u16> {
        serving(&self.view().unwrap_or_default())
    }

    /// Ports of the replicas of the primary at `port`.
    pub fn replicas_of(&self, port: u16) -> Vec<u16> {
        let view = self.view().unwrap_or_default();
        let Some(primary) = view.iter().find(|n| n.port == port) else {
            return Vec::new();
        };
        view.iter()
            .filter(|n| n.primary_id.as_deref() == Some(primary.id.as_str()))
            .map(|n| n.port)
            .collect()
    }

    /// Waits until every running node says the cluster is ok (every slot served by a primary
    /// that is not failed) and they agree on which nodes are primaries.
    pub fn await_healthy(&self, limit: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + limit;
        loop {
            let running: Vec<u16> = self
                .nodes
                .iter()
                .filter(|n| n.pid().is_some())
                .map(|n| n.port())
                .collect();
            let ok = running.iter().all(|&port| {
                cli(port, &["CLUSTER", "INFO"]).is_ok_and(|info| info.contains("cluster_state:ok"))
            });
            let views: Vec<Vec<u16>> = running
                .iter()
                .filter_map(|&port| cli(port, &["CLUSTER", "NODES"]).ok())
                .map(|text| serving(&parse_nodes(&text)))
                .collect();
            let agreed = views.len() == running.len() && views.windows(2).all(|w| w[0] == w[1]);
            if ok && agreed {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    what: "Redis Cluster".into(),
                    after: limit,
                    log: format!("primaries as each node sees them: {views:?}"),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Subscribers of `channel` on every running node together: classic (`PUBSUB NUMSUB`),
    /// or sharded (`PUBSUB SHARDNUMSUB`) when `sharded`.
    pub fn subscribers(&self, channel: &str, sharded: bool) -> usize {
        let verb = if sharded { "SHARDNUMSUB" } else { "NUMSUB" };
        self.nodes
            .iter()
            .filter(|n| n.pid().is_some())
            .filter_map(|n| cli(n.port(), &["PUBSUB", verb, channel]).ok())
            .filter_map(|text| text.lines().last()?.trim().parse::<usize>().ok())
            .sum()
    }

    /// Moves `slots` slots from the primary at `from` to the one at `to`, keys and all, with
    /// `redis-cli --cluster reshard` (which migrates key by key while clients keep writing).
    pub fn reshard(&self, from: u16, to: u16, slots: usize) -> Result<(), Error> {
        let view = self.view()?;
        let id = |port: u16| {
            view.iter()
                .find(|n| n.port == port)
                .map(|n| n.id.clone())
                .ok_or_else(|| Error::Io(std::io::Error::other(format!("no node on {port}"))))
        };
        let mut reshard = Command::new("redis-cli");
        reshard
            .args(["--cluster", "reshard"])
            .arg(format!("127.0.0.1:{from}"))
            .args(["--cluster-from", &id(from)?, "--cluster-to", &id(to)?])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"]);
        run(reshard, "redis-cli --cluster reshard")?;
        Ok(())
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `redis-cli -p PORT ARGS...`; its output.
pub fn cli(port: u16, args: &[&str]) -> Result<String, Error> {
    let mut command = Command::new("redis-cli");
    command.args(["-p", &port.to_string()]).args(args);
    run(command, "redis-cli")
}

fn run(mut command: Command, what: &str) -> Result<String, Error> {
    let output = command.output().map_err(|source| Error::Spawn {
        what: what.to_string(),
        source,
    })?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() || text.starts_with("ERR") || text.contains("[ERR]") {
        return Err(Error::Io(std::io::Error::other(format!(
            "{what} failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        ))));
    }
    Ok(text)
}

/// Ports of the primaries in `view` that serve slots and are not failed, in order.
fn serving(view: &[ClusterNode]) -> Vec<u16> {
    let mut ports: Vec<u16> = view
        .iter()
        .filter(|n| n.primary && !n.failed && !n.slots.is_empty())
        .map(|n| n.port)
        .collect();
    ports.sort_unstable();
    ports
}

/// The lines of `CLUSTER NODES`: `id ip:port@cport flags primary ping pong epoch link slots...`.
fn parse_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let port = fields[1]
                .split('@')
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()?;
            let flags: Vec<&str> = fields[2].split(',').collect();
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|n| (n, n)),
                })
                .collect();
            Some(ClusterNode {
                id: fields[0].to_string(),
                port,
                primary: flags.contains(&"master"),
                failed: flags.contains(&"fail"),
                primary_id: (fields[3] != "-").then(|| fields[3].to_string()),
                slots,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_are_read() {
        let text = "\
e1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460 [5461->-e2]
e2 127.0.0.1:7002@17002 master,fail - 0 0 2 connected 5461-10922
e4 127.0.0.1:7004@17004 slave e1 0 0 1 connected
";
        let nodes = parse_nodes(text);
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0].port, 7001);
        assert!(nodes[0].primary && !nodes[0].failed);
        assert_eq!(nodes[0].slots, [(0, 5460)]);
        assert!(nodes[1].failed);
        assert_eq!(nodes[2].primary_id.as_deref(), Some("e1"));
        assert!(!nodes[2].primary);
    }

    // Needs redis-server and redis-cli on the PATH (scripts/test.sh installs them).
    #[test]
    fn a_cluster_starts_healthy_and_moves_slots() {
        let cluster = RedisCluster::start(3, 1).unwrap();
        assert_eq!(cluster.nodes().len(), 6);
        let primaries = cluster.primaries();
        assert_eq!(primaries.len(), 3);
        for &p in &primaries {
            assert_eq!(cluster.replicas_of(p).len(), 1);
        }
        let owner = cluster.primary_of(0).unwrap();
        let other = *primaries.iter().find(|&&p| p != owner).unwrap();
        cluster.reshard(owner, other, 10).unwrap();
        cluster.await_healthy(Duration::from_secs(10)).unwrap();
        assert_eq!(cluster.primary_of(0), Some(other));
    }
}
