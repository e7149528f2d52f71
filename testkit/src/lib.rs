//! The one test kit: what stompbox's tests, its benches and the load tool (`bench/`) start and
//! speak, written once.
//!
//! - [`free_port`] and [`wait_for_port`]: loopback ports.
//! - [`Process`]: a child process whose output is kept ([`Log`]), that can be signalled
//!   (terminate, kill, pause, resume) and is ended when dropped.
//! - [`Node`]: a `stompbox serve` process; it waits for the `stompbox listening http=…
//!   stomp=…` line and knows both addresses; kill, terminate and restart on the same ports.
//! - [`Redis`]: a `redis-server` of its own on a free port, without persistence; kill, pause
//!   (SIGSTOP), resume and restart on the same port.
//! - [`RedisCluster`]: a Redis Cluster of such servers (primaries and replicas, made with
//!   `redis-cli --cluster create`), with its faults: a primary killed until its replica takes
//!   over, a whole shard stopped, slots moved with `redis-cli --cluster reshard`.
//! - [`http`]: a minimal HTTP/1.1 client over tokio, one request per connection.
//! - [`jwt`]: an HS256 JSON Web Token signer.
//! - [`webhook::WebhookReceiver`]: a tenant's webhook that checks signatures.
//! - [`session_backend::SessionBackend`]: a tenant's backend that checks session cookies, for
//!   plugins that ask it.
//!
//! It does not depend on the `stompbox` crate: the load tool uses it too, and measures the
//! broker from outside. Starting things is synchronous (a test or a benchmark waits for it
//! anyway); only the HTTP client is async.

mod node;
mod process;
mod redis;
mod redis_cluster;

pub mod http;
pub mod jwt;
pub mod session_backend;
pub mod webhook;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub use node::{parse_listening, Node, NodeBuilder};
pub use process::{signal, Log, Process, Signal};
pub use redis::Redis;
pub use redis_cluster::RedisCluster;
pub use webhook::WebhookReceiver;

/// Why something the kit started is not usable.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program could not be run at all (not installed, not executable).
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// The process's name.
        what: String,
        /// What `exec` said.
        source: std::io::Error,
    },
    /// The process ended while it was starting.
    #[error("{what} exited ({status}) while starting{}", tail(log))]
    Exited {
        /// The process's name.
        what: String,
        /// How it ended.
        status: std::process::ExitStatus,
        /// Its output, where it was kept.
        log: String,
    },
    /// The process is running but did not become ready in time.
    #[error("{what} was not ready within {after:?}{}", tail(log))]
    NotReady {
        /// The process's name.
        what: String,
        /// How long it was given.
        after: Duration,
        /// Its output, where it was kept.
        log: String,
    },
    /// A `stompbox listening` line that does not name both addresses.
    #[error("unexpected listening line {0:?}")]
    ListeningLine(String),
    /// Writing a file the process needs (a config file, a log).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The end of a log, for an error message.
fn tail(log: &str) -> String {
    const MAX: usize = 4000;
    if log.trim().is_empty() {
        return String::new();
    }
    let start = log.len().saturating_sub(MAX);
    let start = (start..log.len())
        .find(|&i| log.is_char_boundary(i))
        .unwrap_or(log.len());
    format!("; its output:\n{}", &log[start..])
}

/// A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick for port 0).
///
/// Another process may take it before the caller binds it; for servers that can bind port 0
/// themselves (a stompbox node can), that is the better way.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// Waits until `addr` accepts a TCP connection, giving up after `limit` or when `process`
/// (the one that should listen) exits.
pub fn wait_for_port(
    addr: SocketAddr,
    process: &mut Process,
    limit: Duration,
) -> Result<(), Error> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = process.try_wait() {
            return Err(Error::Exited {
                what: process.name().to_string(),
                status,
                log: process.output(),
            });
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::NotReady {
                what: process.name().to_string(),
                after: limit,
                log: process.output(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    }

    #[test]
    fn error_shows_the_end_of_the_log() {
        let long = format!("{}é-the end", "x".repeat(5000));
        let text = tail(&long);
        assert!(text.ends_with("é-the end"));
        assert!(text.len() < 4100);
        assert_eq!(tail("  \n"), "");
    }
}
