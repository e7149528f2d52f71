//! A `stompbox serve` process: started from a built binary with flags, a config file and
//! environment, ready once it printed `stompbox listening http=ADDR stomp=ADDR`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use crate::{Error, Log, Process};

/// What a node is started with; [`NodeBuilder::start`] starts it.
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    name: String,
    bin: PathBuf,
    http: SocketAddr,
    stomp: SocketAddr,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    config: Option<String>,
    log: Log,
    startup: Duration,
}

impl NodeBuilder {
    /// A node named `stompbox` in messages.
    pub fn name(mut self, name: &str) -> NodeBuilder {
        self.name = name.to_string();
        self
    }

    /// Flags after `serve --http ADDR --stomp ADDR` (e.g. `--redis URL`, `--node-id ID`).
    pub fn args<I, S>(mut self, args: I) -> NodeBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable (`RUST_LOG`, ...).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> NodeBuilder {
        self.env.push((key.into(), value.into()));
        self
    }

    /// TOML written to a file of the node's own, passed as `--config` (removed with the node).
    pub fn config(mut self, toml: &str) -> NodeBuilder {
        self.config = Some(toml.to_string());
        self
    }

    /// Where its stdout (the listening line included) and stderr go; [`Log::memory`] unless
    /// given.
    pub fn log(mut self, log: Log) -> NodeBuilder {
        self.log = log;
        self
    }

    /// How long it may take to print the listening line (30 s unless given).
    pub fn startup_timeout(mut self, limit: Duration) -> NodeBuilder {
        self.startup = limit;
        self
    }

    /// Starts the node and waits for its listening line.
    pub fn start(self) -> Result<Node, Error> {
        let config = match &self.config {
            Some(toml) => {
                static SERIAL: AtomicUsize = AtomicUsize::new(0);
                let path = std::env::temp_dir().join(format!(
                    "stompbox-testkit-{}-{}.toml",
                    std::process::id(),
                    SERIAL.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&path, toml)?;
                Some(path)
            }
            None => None,
        };
        let mut node = Node {
            http: self.http,
            stomp: self.stomp,
            process: None,
            config,
            spec: self,
        };
        node.launch()?;
        Ok(node)
    }
}

/// A running `stompbox serve` process. Dropping it kills it (SIGKILL).
#[derive(Debug)]
pub struct Node {
    spec: NodeBuilder,
    http: SocketAddr,
    stomp: SocketAddr,
    process: Option<Process>,
    config: Option<PathBuf>,
}

impl Node {
    /// A node from the binary at `bin` (tests: `env!("CARGO_BIN_EXE_stompbox")`), on ports the
    /// OS chooses.
    pub fn builder(bin: impl Into<PathBuf>) -> NodeBuilder {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        NodeBuilder {
            name: "stompbox".into(),
            bin: bin.into(),
            http: any,
            stomp: any,
            args: Vec::new(),
            env: Vec::new(),
            config: None,
            log: Log::memory(),
            startup: Duration::from_secs(30),
        }
    }

    fn launch(&mut self) -> Result<(), Error> {
        let spec = &self.spec;
        let mut command = Command::new(&spec.bin);
        command
            .arg("serve")
            .arg("--http")
            .arg(self.http.to_string())
            .arg("--stomp")
            .arg(self.stomp.to_string())
            .args(&spec.args);
        if let Some(path) = &self.config {
            command.arg("--config").arg(path);
        }
        for (key, value) in &spec.env {
            command.env(key, value);
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let mut process = Process::spawn_watching(
            &spec.name,
            command,
            spec.log.clone(),
            spec.log.clone(),
            Some(("stompbox listening ", tx)),
        )?;
        let line = match rx.recv_timeout(spec.startup) {
            Ok(line) => line,
            Err(RecvTimeoutError::Disconnected) => {
                let status = process
                    .wait_timeout(Duration::from_secs(5))
                    .unwrap_or_else(|| process.kill().expect("killed"));
                return Err(Error::Exited {
                    what: spec.name.clone(),
                    status,
                    log: process.output(),
                });
            }
            Err(RecvTimeoutError::Timeout) => {
                return Err(Error::NotReady {
                    what: spec.name.clone(),
                    after: spec.startup,
                    log: process.output(),
                })
            }
        };
        let (http, stomp) = parse_listening(&line).ok_or(Error::ListeningLine(line))?;
        self.http = http;
        self.stomp = stomp;
        self.process = Some(process);
        Ok(())
    }

    /// The config file it was started with, when it was given one.
    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.config.as_deref()
    }

    /// The HTTP (and WebSocket) address.
    pub fn http(&self) -> SocketAddr {
        self.http
    }

    /// The STOMP-over-TCP address.
    pub fn stomp(&self) -> SocketAddr {
        self.stomp
    }

    /// Its process id, while it runs.
    pub fn pid(&mut self) -> Option<u32> {
        self.running()
            .then(|| self.process.as_ref().map(Process::pid))?
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|p| p.try_wait().is_none())
    }

    /// How it ended, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.process.as_mut().and_then(Process::try_wait)
    }

    /// Everything it printed, across restarts (the listening lines included), where the log
    /// keeps it.
    pub fn log(&self) -> String {
        self.spec.log.text()
    }

    /// SIGKILL: no goodbye to clients or the cluster.
    pub fn kill(&mut self) {
        if let Some(process) = &mut self.process {
            process.kill();
        }
    }

    /// SIGTERM and up to `grace` for a clean exit; `None` if it is still running then.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.process.as_mut().and_then(|p| p.terminate(grace))
    }

    /// [`Node::terminate`], then SIGKILL if it did not exit within `grace`.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.process.as_mut().and_then(|p| p.stop(grace))
    }

    /// Starts it again (killing it first if it still runs) on the addresses it had, with the
    /// same flags, config and environment.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.kill();
        self.process = None;
        self.launch()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if let Some(path) = &self.config {
            let _ = std::fs::remove_file(path);
            // What the node kept beside its config (tenants changed through the admin API).
            let _ = std::fs::remove_file(path.with_extension("state.json"));
        }
    }
}

/// The addresses in a node's `stompbox listening http=ADDR stomp=ADDR` line.
pub fn parse_listening(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.trim().strip_prefix("stompbox listening ")?;
    let field = |name: &str| {
        rest.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    Some((field("http")?, field("stomp")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_listening_line() {
        let (http, stomp) =
            parse_listening("stompbox listening http=127.0.0.1:8080 stomp=[::1]:61613\n").unwrap();
        assert_eq!(http, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(stomp, "[::1]:61613".parse().unwrap());
        assert_eq!(parse_listening("stompbox listening http=127.0.0.1:1"), None);
        assert_eq!(
            parse_listening("listening http=1.2.3.4:1 stomp=1.2.3.4:2"),
            None
        );
        assert_eq!(
            parse_listening("stompbox listening http=nonsense stomp=127.0.0.1:2"),
            None
        );
    }

    #[test]
    fn a_node_that_exits_at_once_is_an_error() {
        let err = Node::builder("false").start().unwrap_err();
        assert!(matches!(err, Error::Exited { .. }), "{err}");
    }
}
