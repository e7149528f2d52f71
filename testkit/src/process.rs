//! A child process with its output kept line by line (in memory, in a file, or passed
//! through), signals by name, and an end when it is dropped, a failing assertion included.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Error;

/// Where a process's output goes. Clones share the destination, so stdout and stderr can be
/// kept together.
#[derive(Clone, Debug)]
pub struct Log(Sink);

#[derive(Clone, Debug)]
enum Sink {
    Memory(Arc<Mutex<String>>),
    File(Arc<Mutex<File>>, PathBuf),
    Inherit,
    Null,
}

impl Log {
    /// Kept in memory, for [`Log::text`] (and error messages).
    pub fn memory() -> Log {
        Log(Sink::Memory(Arc::default()))
    }

    /// Appended to the file at `path` (created if missing).
    pub fn file(path: impl AsRef<Path>) -> std::io::Result<Log> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Log(Sink::File(Arc::new(Mutex::new(file)), path)))
    }

    /// Passed through to this process's stdout or stderr.
    pub fn inherit() -> Log {
        Log(Sink::Inherit)
    }

    /// Dropped.
    pub fn null() -> Log {
        Log(Sink::Null)
    }

    /// What has arrived so far (a file's whole content); empty for passed-through or dropped
    /// output.
    pub fn text(&self) -> String {
        match &self.0 {
            Sink::Memory(text) => text.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            Sink::File(_, path) => std::fs::read_to_string(path).unwrap_or_default(),
            Sink::Inherit | Sink::Null => String::new(),
        }
    }

    /// The file it writes to, if it is one.
    pub fn path(&self) -> Option<&Path> {
        match &self.0 {
            Sink::File(_, path) => Some(path),
            _ => None,
        }
    }

    fn write_line(&self, line: &str, stderr: bool) {
        match &self.0 {
            Sink::Memory(text) => text
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_str(line),
            Sink::File(file, _) => {
                let _ = file
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write_all(line.as_bytes());
            }
            Sink::Inherit if stderr => eprint!("{line}"),
            Sink::Inherit => print!("{line}"),
            Sink::Null => {}
        }
    }

    /// How the child's stream is set up: piped and copied by a thread, except where the
    /// child can be given the destination itself.
    fn stdio(&self, watched: bool) -> Stdio {
        match &self.0 {
            Sink::Null if !watched => Stdio::null(),
            Sink::Inherit if !watched => Stdio::inherit(),
            _ => Stdio::piped(),
        }
    }
}

/// A signal to send to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: please stop (a stompbox node shuts down gracefully).
    Term,
    /// SIGKILL: stop now, no goodbye.
    Kill,
    /// SIGSTOP: freeze (its sockets stay open and unanswered).
    Stop,
    /// SIGCONT: carry on after [`Signal::Stop`].
    Cont,
    /// SIGHUP: read the configuration again.
    Hup,
}

impl Signal {
    fn raw(self) -> rustix::process::Signal {
        use rustix::process::Signal as S;
        match self {
            Signal::Term => S::TERM,
            Signal::Kill => S::KILL,
            Signal::Stop => S::STOP,
            Signal::Cont => S::CONT,
            Signal::Hup => S::HUP,
        }
    }
}

/// Sends `signal` to the process `pid` (which need not be a child of this one).
pub fn signal(pid: u32, signal: Signal) -> std::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::other(format!("no such pid {pid}")))?;
    rustix::process::kill_process(pid, signal.raw()).map_err(std::io::Error::from)
}

/// The first stdout line starting with a prefix is sent here (the readiness line of a server).
pub(crate) type Watch = (&'static str, SyncSender<String>);

/// A running (or ended) child process. Dropping it kills it, or, after
/// [`Process::stop_on_drop`], asks it to stop first.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    stdout: Log,
    stderr: Log,
    readers: Vec<JoinHandle<()>>,
    drop_grace: Option<Duration>,
}

impl Process {
    /// Runs `command` (stdin closed), its stdout and stderr to the given logs.
    pub fn spawn(name: &str, command: Command, stdout: Log, stderr: Log) -> Result<Process, Error> {
        Process::spawn_watching(name, command, stdout, stderr, None)
    }

    pub(crate) fn spawn_watching(
        name: &str,
        mut command: Command,
        stdout: Log,
        stderr: Log,
        mut watch: Option<Watch>,
    ) -> Result<Process, Error> {
        command
            .stdin(Stdio::null())
            .stdout(stdout.stdio(watch.is_some()))
            .stderr(stderr.stdio(false));
        let mut child = command.spawn().map_err(|source| Error::Spawn {
            what: name.to_string(),
            source,
        })?;
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            let log = stdout.clone();
            readers.push(copy_lines(out, log, false, watch.take()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(copy_lines(err, stderr.clone(), true, None));
        }
        Ok(Process {
            name: name.to_string(),
            child,
            status: None,
            stdout,
            stderr,
            readers,
            drop_grace: None,
        })
    }

    /// When dropped, SIGTERM and up to `grace` to exit before SIGKILL (instead of SIGKILL).
    pub fn stop_on_drop(mut self, grace: Duration) -> Process {
        self.drop_grace = Some(grace);
        self
    }

    /// The name it was started under, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its output so far: stdout, then stderr if that went elsewhere.
    pub fn output(&self) -> String {
        let out = self.stdout.text();
        match (&self.stdout.0, &self.stderr.0) {
            (Sink::Memory(a), Sink::Memory(b)) if Arc::ptr_eq(a, b) => out,
            (Sink::File(_, a), Sink::File(_, b)) if a == b => out,
            _ => out + &self.stderr.text(),
        }
    }

    /// Sends `signal`, unless it has already exited.
    pub fn signal(&mut self, signal: Signal) -> std::io::Result<()> {
        if self.try_wait().is_some() {
            return Ok(());
        }
        self::signal(self.pid(), signal)
    }

    /// How it ended, if it has.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `limit` for it to exit.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                self.finish_output(Duration::from_secs(1));
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then up to `grace` for it to exit; `None` if it is still running.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        let _ = self.signal(Signal::Term);
        self.wait_timeout(grace)
    }

    /// SIGKILL, and waits for it.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
        self.finish_output(Duration::from_secs(1));
        self.status
    }

    /// [`Process::terminate`], then [`Process::kill`] if it did not exit within `grace`.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        match self.terminate(grace) {
            Some(status) => Some(status),
            None => {
                eprintln!(
                    "{} (pid {}) ignored SIGTERM for {grace:?}; killing it",
                    self.name,
                    self.pid()
                );
                self.kill()
            }
        }
    }

    /// Waits up to `limit` for the threads copying its output: they end when the pipes close,
    /// which a child's own children may delay.
    fn finish_output(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (done, running): (Vec<_>, Vec<_>) =
            self.readers.drain(..).partition(|r| r.is_finished());
        for reader in done {
            let _ = reader.join();
        }
        self.readers = running;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        match self.drop_grace {
            Some(grace) => {
                self.stop(grace);
            }
            None => {
                self.kill();
            }
        }
    }
}

/// Copies `stream` line by line to `log` on a thread of its own (so the child never blocks on
/// a full pipe); the first line that starts with the watched prefix also goes to its channel.
fn copy_lines(
    stream: impl Read + Send + 'static,
    log: Log,
    stderr: bool,
    mut watch: Option<Watch>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&line);
            if let Some((prefix, tx)) = &watch {
                if text.starts_with(prefix) {
                    let _ = tx.send(text.trim_end().to_string());
                    watch = None;
                }
            }
            log.write_line(&text, stderr);
            line.clear();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    #[test]
    fn keeps_output_and_exit_status() {
        let log = Log::memory();
        let mut p =
            Process::spawn("sh", sh("echo out; echo err >&2; exit 3"), log.clone(), log).unwrap();
        let status = p.wait_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(status.code(), Some(3));
        let output = p.output();
        assert!(
            output.contains("out\n") && output.contains("err\n"),
            "{output}"
        );
    }

    #[test]
    fn terminates_pauses_and_kills() {
        let mut p = Process::spawn("sleep", sh("exec sleep 30"), Log::null(), Log::null()).unwrap();
        p.signal(Signal::Stop).unwrap();
        p.signal(Signal::Cont).unwrap();
        assert!(p.try_wait().is_none());
        let status = p
            .terminate(Duration::from_secs(10))
            .expect("sleep ends on SIGTERM");
        assert!(!status.success());

        let out = Log::memory();
        let mut p = Process::spawn(
            "stubborn",
            sh("trap '' TERM; echo ready; while :; do sleep 0.05; done"),
            out.clone(),
            Log::null(),
        )
        .unwrap();
        while !out.text().contains("ready") {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(p.terminate(Duration::from_millis(300)).is_none());
        assert!(p.kill().is_some());
    }

    #[test]
    fn reports_a_missing_program() {
        let err = Process::spawn(
            "nothing",
            Command::new("/nonexistent/program"),
            Log::null(),
            Log::null(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Spawn { .. }), "{err}");
    }
}
