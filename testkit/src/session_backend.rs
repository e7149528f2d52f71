//! A tenant's backend that checks session cookies, for plugins that ask it (the
//! `session-cookie` example): a real HTTP/1.1 server on a free port whose `GET /verify`
//! answers 200 with `{"user": ...}` for a known `SESSION` cookie and 401 for any other. The test
//! adds sessions, makes it slow, or stops it, and counts the checks it was asked.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Default)]
struct State {
    /// Session id → user.
    sessions: Mutex<HashMap<String, String>>,
    /// Waited before each answer, in ms.
    delay_ms: AtomicUsize,
    /// Requests answered.
    checks: AtomicUsize,
    /// Down: connections still open are closed instead of answered.
    stopped: std::sync::atomic::AtomicBool,
}

/// The backend; it stops when dropped.
#[derive(Debug)]
pub struct SessionBackend {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SessionBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SessionBackend {
    /// Starts one on a free port.
    pub async fn start() -> SessionBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().expect("bound");
        let state = Arc::new(State::default());
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream, state.clone()));
                }
            }
        });
        SessionBackend { addr, state, task }
    }

    /// `host:port`, as an allow-list names it.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// The check URL (`http://127.0.0.1:PORT/verify`).
    pub fn verify_url(&self) -> String {
        format!("http://{}/verify", self.addr)
    }

    /// From now on, cookie `SESSION=session` is `user`'s.
    pub fn sign_in(&self, session: &str, user: &str) {
        self.state
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(session.to_string(), user.to_string());
    }

    /// Waits this long before each answer.
    pub fn delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as usize, Ordering::SeqCst);
    }

    /// Checks answered so far.
    pub fn checks(&self) -> usize {
        self.state.checks.load(Ordering::SeqCst)
    }

    /// Stops listening and closes its connections: the backend is down.
    pub fn stop(&self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, state: Arc<State>) {
    let mut buf = Vec::new();
    while let Some((headers, _body)) = crate::webhook::read_request(&mut stream, &mut buf).await {
        if state.stopped.load(Ordering::SeqCst) {
            return;
        }
        let delay = state.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay as u64)).await;
        }
        let session = headers
            .iter()
            .filter(|(k, _)| k == "cookie")
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == "SESSION")
            .map(|(_, v)| v.to_string());
        let user = session.and_then(|s| {
            state
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&s)
                .cloned()
        });
        state.checks.fetch_add(1, Ordering::SeqCst);
        let (status, body) = match user {
            Some(user) => (
                200,
                serde_json::json!({"user": user, "plan": "pro"}).to_string(),
            ),
            None => (401, r#"{"error":"no such session"}"#.to_string()),
        };
        let answer = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}
