//! A webhook receiver for tests and benchmarks: a real HTTP/1.1 server on a free port that
//! checks each POST's signature the way a tenant's backend would (its own HMAC-SHA256 over
//! `{timestamp}.{body}`, compared in constant time, the timestamp within five minutes),
//! records what it was sent, and answers what the test tells it to (a status for the next
//! requests, a delay).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{KeyInit, Mac};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// Its headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Vec<u8>,
    /// The signature matched and the timestamp was recent.
    pub signed: bool,
    /// The status it was answered with.
    pub status: u16,
}

impl Received {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Debug, Default)]
struct Script {
    /// Answer this status to the next `count` requests, then 200.
    failing: Option<(u16, usize)>,
    /// Answer this status to every request.
    always: Option<u16>,
    delay: Duration,
    received: Vec<Received>,
}

/// The receiver; it stops when dropped.
#[derive(Debug)]
pub struct WebhookReceiver {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The signature the receiver expects: `v1=` and the HMAC-SHA256 of `{timestamp}.{body}`.
pub fn expected_signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("v1={hex}")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn verify(secret: &[u8], headers: &[(String, String)], body: &[u8]) -> bool {
    let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let (Some(signature), Some(timestamp)) =
        (get("x-stompbox-signature"), get("x-stompbox-timestamp"))
    else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let recent = timestamp
        .parse::<u64>()
        .is_ok_and(|t| t.abs_diff(now) <= 300);
    recent
        && constant_time_eq(
            expected_signature(secret, timestamp, body).as_bytes(),
            signature.as_bytes(),
        )
}

impl WebhookReceiver {
    /// Starts a receiver that checks signatures made with `secret`.
    pub async fn start(secret: &str) -> WebhookReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().expect("bound");
        let script = Arc::new(Mutex::new(Script::default()));
        let secret = secret.as_bytes().to_vec();
        let task = tokio::spawn({
            let script = script.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream, script.clone(), secret.clone()));
                }
            }
        });
        WebhookReceiver { addr, script, task }
    }

    /// Its URL (`http://127.0.0.1:PORT/hook`).
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers `status` to the next `count` requests, then 200 again.
    pub fn fail_next(&self, count: usize, status: u16) {
        self.script().failing = Some((status, count));
    }

    /// Answers `status` to every request from now on (`None`: 200 again).
    pub fn answer_always(&self, status: Option<u16>) {
        self.script().always = status;
    }

    /// Waits this long before each answer.
    pub fn delay(&self, delay: Duration) {
        self.script().delay = delay;
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.script().received.clone()
    }

    /// The items of every request answered 2xx, in order.
    pub fn items(&self) -> Vec<serde_json::Value> {
        self.received()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .flat_map(|r| r.json()["items"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Waits until at least `count` items were taken (answered 2xx); all of them, or what
    /// came within `within`.
    pub async fn wait_items(&self, count: usize, within: Duration) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let items = self.items();
            if items.len() >= count || tokio::time::Instant::now() >= deadline {
                return items;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Serves one connection's requests (keep-alive) until the peer closes.
async fn serve(mut stream: TcpStream, script: Arc<Mutex<Script>>, secret: Vec<u8>) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let Some((headers, body)) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        let signed = verify(&secret, &headers, &body);
        let (status, delay) = {
            let mut s = script.lock().unwrap_or_else(|e| e.into_inner());
            let status = match (s.always, &mut s.failing) {
                (Some(status), _) => status,
                (None, Some((status, left))) if *left > 0 => {
                    *left -= 1;
                    *status
                }
                _ if !signed => 401,
                _ => 200,
            };
            s.received.push(Received {
                headers,
                body,
                signed,
                status,
            });
            (status, s.delay)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let text = if status == 200 {
            "ok"
        } else {
            "refused by the test"
        };
        let answer = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads one request: its headers (lower-case names) and its body (by `content-length`).
pub(crate) async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(Vec<(String, String)>, Vec<u8>)> {
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let body_start = head_end + 4;
    while buf.len() < body_start + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[body_start..body_start + length].to_vec();
    buf.drain(..body_start + length);
    Some((headers, body))
}
