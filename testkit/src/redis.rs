//! A `redis-server` of the caller's own: a free port on 127.0.0.1, no snapshots and no
//! append-only file, so it starts empty every time (or, from [`Redis::start_persistent`], an
//! append-only file in a directory of its own, so a restart finds what it held), and faults to
//! inject (kill, pause, restart).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{free_port, wait_for_port, Error, Log, Process, Signal};

/// A running `redis-server`. Dropping it kills it.
#[derive(Debug)]
pub struct Redis {
    bin: PathBuf,
    port: u16,
    log: Log,
    process: Option<Process>,
    /// Where its append-only file lives, when it keeps one.
    aof_dir: Option<PathBuf>,
    /// For a Redis Cluster node: the directory of its cluster state file (kept across a
    /// restart, so it rejoins its cluster), the cluster's node timeout in ms, and the port of
    /// its cluster bus.
    cluster: Option<(PathBuf, u64, u16)>,
}

/// Held while a server picks its port and starts: two servers started at once by one test
/// binary could otherwise be handed the same free port, and the second would find the
/// first listening on it.
static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Redis {
    /// `redis-server` from the PATH, its output kept in memory.
    pub fn start() -> Result<Redis, Error> {
        Redis::start_with("redis-server", Log::memory())
    }

    /// The server at `bin`, its output to `log`.
    pub fn start_with(bin: impl Into<PathBuf>, log: Log) -> Result<Redis, Error> {
        let _turn = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        let mut redis = Redis {
            bin: bin.into(),
            port: free_port(),
            log,
            process: None,
            aof_dir: None,
            cluster: None,
        };
        redis.launch()?;
        Ok(redis)
    }

    /// A Redis Cluster node (`--cluster-enabled yes`) on a free port, its cluster state file in
    /// `dir`, declaring a peer failed after `node_timeout_ms`; not yet part of a cluster (see
    /// [`crate::RedisCluster`]). Without persistence: restarted, it rejoins empty.
    pub fn start_cluster_node(dir: &std::path::Path, node_timeout_ms: u64) -> Result<Redis, Error> {
        let _turn = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        let port = free_port();
        // The bus port is chosen too (not left at port + 10000, which may be taken).
        let bus = loop {
            let bus = free_port();
            if bus != port {
                break bus;
            }
        };
        let mut redis = Redis {
            bin: "redis-server".into(),
            port,
            log: Log::memory(),
            process: None,
            aof_dir: None,
            cluster: Some((dir.to_path_buf(), node_timeout_ms, bus)),
        };
        redis.launch()?;
        Ok(redis)
    }

    /// `redis-server` from the PATH with an append-only file (`appendfsync everysec`, Redis's
    /// default), so that what it acknowledged survives it being killed and restarted.
    pub fn start_persistent() -> Result<Redis, Error> {
        let _turn = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("stompbox-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|source| Error::Spawn {
            what: format!("redis-server (its AOF directory {})", dir.display()),
            source,
        })?;
        let mut redis = Redis {
            bin: "redis-server".into(),
            port,
            log: Log::memory(),
            process: None,
            aof_dir: Some(dir),
            cluster: None,
        };
        redis.launch()?;
        Ok(redis)
    }

    /// Where it writes files: its own directory, so that nothing it writes (a replica keeps
    /// the snapshot it synced from its primary in `dump.rdb`) is read by another server.
    fn work_dir(&self) -> PathBuf {
        match (&self.aof_dir, &self.cluster) {
            (Some(dir), _) => dir.clone(),
            (None, Some((dir, _, _))) => dir.join(format!("node-{}", self.port)),
            (None, None) => std::env::temp_dir().join(format!(
                "stompbox-redis-{}-{}",
                std::process::id(),
                self.port
            )),
        }
    }

    fn launch(&mut self) -> Result<(), Error> {
        let dir = self.work_dir();
        if self.aof_dir.is_none() {
            // Started empty, every time: a snapshot left by an earlier run is not loaded.
            let _ = std::fs::remove_file(dir.join("dump.rdb"));
        }
        std::fs::create_dir_all(&dir).map_err(|source| Error::Spawn {
            what: format!("redis-server (its directory {})", dir.display()),
            source,
        })?;
        let mut command = Command::new(&self.bin);
        command.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"]);
        command.arg("--dir").arg(&dir);
        if self.aof_dir.is_some() {
            command.args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ]);
        } else {
            command.args(["--save", "", "--appendonly", "no"]);
        }
        if let Some((dir, timeout_ms, bus)) = &self.cluster {
            command
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout"])
                .arg(timeout_ms.to_string())
                .arg("--cluster-port")
                .arg(bus.to_string())
                // The shards that answer keep serving while another is down (Redis's default
                // stops the whole cluster), as stompbox's guide tells operators to set.
                .args(["--cluster-require-full-coverage", "no"])
                .arg("--cluster-config-file")
                .arg(dir.join(format!("nodes-{}.conf", self.port)));
        }
        let mut process =
            Process::spawn("redis-server", command, self.log.clone(), self.log.clone())?;
        wait_for_port(self.addr(), &mut process, Duration::from_secs(10))?;
        self.process = Some(process);
        Ok(())
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// SIGKILL: gone, data and all.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// SIGSTOP: connections stay open but nothing is answered (a stall, not a crash).
    pub fn pause(&mut self) -> std::io::Result<()> {
        self.signal(Signal::Stop)
    }

    /// SIGCONT after [`Redis::pause`].
    pub fn resume(&mut self) -> std::io::Result<()> {
        self.signal(Signal::Cont)
    }

    fn signal(&mut self, signal: Signal) -> std::io::Result<()> {
        match &mut self.process {
            Some(process) => process.signal(signal),
            None => Err(std::io::Error::other("redis-server is not running")),
        }
    }

    /// Starts it again on the same port (killing it first if it still runs): empty, unless it
    /// keeps an append-only file.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.kill();
        self.launch()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(self.work_dir());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    /// PING on a new connection; whether PONG came back within `wait`.
    fn pong(redis: &Redis, wait: Duration) -> bool {
        let Ok(mut socket) = TcpStream::connect(redis.addr()) else {
            return false;
        };
        socket.set_read_timeout(Some(wait)).unwrap();
        socket.write_all(b"PING\r\n").unwrap();
        let mut answer = [0u8; 7];
        socket.read_exact(&mut answer).is_ok() && &answer == b"+PONG\r\n"
    }

    // Needs redis-server on the PATH (scripts/test.sh installs it).
    #[test]
    fn pauses_resumes_and_restarts_on_the_same_port() {
        let mut redis = Redis::start().unwrap();
        assert!(pong(&redis, Duration::from_secs(5)));
        redis.pause().unwrap();
        assert!(!pong(&redis, Duration::from_millis(300)));
        redis.resume().unwrap();
        assert!(pong(&redis, Duration::from_secs(5)));
        let port = redis.port();
        redis.kill();
        assert!(!pong(&redis, Duration::from_millis(300)));
        redis.restart().unwrap();
        assert_eq!(redis.port(), port);
        assert!(pong(&redis, Duration::from_secs(5)));
    }
}
