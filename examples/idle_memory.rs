//! Idle memory per connection of a running node, over `/ws` or SockJS's framed websocket
//! transport (which the load tool does not speak): opens N STOMP connections, each CONNECTed
//! and SUBSCRIBEd to one topic, waits, and reads the node's resident memory from /proc.
//!
//! ```sh
//! target/release/stompbox serve --http 127.0.0.1:8080 &
//! cargo run --release --example idle_memory -- ws 127.0.0.1:8080 2000 $!
//! cargo run --release --example idle_memory -- sockjs 127.0.0.1:8080 2000 $!
//! ```
//!
//! Prints `KIND CONNECTIONS RSS_BEFORE_KIB RSS_AFTER_KIB KIB_PER_CONNECTION`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const CONNECT: &str = "CONNECT\naccept-version:1.2\nhost:default\n\n\0";
const SUBSCRIBE: &str = "SUBSCRIBE\nid:0\ndestination:/topic/idle\n\n\0";

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("node pid");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The next text message (pings and pongs skipped).
async fn next_text(ws: &mut Ws) -> String {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return t.as_str().to_string(),
            Some(Ok(Message::Binary(b))) => return String::from_utf8_lossy(&b).into_owned(),
            Some(Ok(_)) => continue,
            other => panic!("connection ended: {other:?}"),
        }
    }
}

async fn open_ws(addr: &str) -> Ws {
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "v12.stomp".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::text(CONNECT)).await.unwrap();
    assert!(next_text(&mut ws).await.starts_with("CONNECTED"));
    ws.send(Message::text(SUBSCRIBE)).await.unwrap();
    ws
}

async fn open_sockjs(addr: &str, i: usize) -> Ws {
    let url = format!("ws://{addr}/sockjs/000/idle{i}/websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "o");
    let frames = serde_json::to_string(&[CONNECT]).unwrap();
    ws.send(Message::text(frames)).await.unwrap();
    assert!(next_text(&mut ws).await.starts_with("a[\"CONNECTED"));
    let frames = serde_json::to_string(&[SUBSCRIBE]).unwrap();
    ws.send(Message::text(frames)).await.unwrap();
    ws
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, addr, count, pid] = args.as_slice() else {
        eprintln!("usage: idle_memory ws|sockjs HOST:PORT CONNECTIONS NODE_PID");
        std::process::exit(2);
    };
    let count: usize = count.parse().expect("CONNECTIONS");
    let pid: u32 = pid.parse().expect("NODE_PID");
    let before = rss_kib(pid);
    let mut open = Vec::with_capacity(count);
    for i in 0..count {
        let ws = match kind.as_str() {
            "ws" => open_ws(addr).await,
            "sockjs" => open_sockjs(addr, i).await,
            _ => panic!("kind is ws or sockjs"),
        };
        open.push(ws);
    }
    // Let the last SUBSCRIBEs land and the node settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    let per = (after.saturating_sub(before)) as f64 / count as f64;
    println!("{kind} {count} {before} {after} {per:.2}");
    drop(open);
}
