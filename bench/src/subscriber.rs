//! One subscriber connection: TCP connect (from its source address), WebSocket handshake,
//! CONNECT, SUBSCRIBE with a receipt, then MESSAGE frames until the run ends, each one timed
//! from the stamp in its body and counted into its thread's stats.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::net::{self, Url};
use crate::stats::{self, Clock, ErrorLog, Progress, ThreadStats};
use crate::stomp::{self, Frame};
use crate::template::{render_headers, HeaderTemplate, Template};
use crate::ws::{self, Event};

/// What every subscriber connection shares.
pub struct Shared {
    pub url: Url,
    pub protocols: Vec<String>,
    pub connect_headers: Vec<HeaderTemplate>,
    pub subscribe: Template,
    /// Source addresses, used round-robin by connection index; empty: the kernel chooses.
    pub sources: Vec<IpAddr>,
    /// How many publishers stamp messages (sizes each connection's duplicate check).
    pub publishers: usize,
    /// Time allowed from TCP connect to the subscription's RECEIPT.
    pub ready_timeout: Duration,
    /// The longest STOMP frame accepted.
    pub max_frame: usize,
    pub clock: Clock,
    pub progress: Arc<Progress>,
    /// Connections lost after they were ready, and why.
    pub disconnected: AtomicU64,
    pub disconnects: ErrorLog,
}

/// How a connection's setup ended, sent once to the connect phase.
#[derive(Debug)]
pub enum Setup {
    Ready(usize),
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Subscribing,
    Ready,
}

/// A connection's protocol state. Everything here is small: the read buffer belongs to the
/// thread, and `out` is only non-empty between a read and the write it asked for.
struct Conn {
    ws: ws::Decoder,
    stomp: stomp::Scanner,
    handler: Handler,
}

struct Handler {
    phase: Phase,
    /// The SUBSCRIBE to send once CONNECTED arrives.
    subscribe: Vec<u8>,
    mask: [u8; 4],
    /// Frames to write after this read: SUBSCRIBE, pongs, the close reply.
    out: Vec<u8>,
    /// The highest sequence number seen from each publisher.
    last_seq: Vec<u64>,
    became_ready: bool,
    closed: bool,
    error: Option<String>,
}

impl Conn {
    /// Processes one read; returns the stamped messages it held.
    fn on_bytes(&mut self, bytes: &mut [u8], now_ns: u64, stats: &mut ThreadStats) -> u64 {
        stats.bytes += bytes.len() as u64;
        let before = stats.received;
        let Conn { ws, stomp, handler } = self;
        let mut stomp_error = None;
        let result = ws.feed(bytes, |event| match event {
            Event::Data(data) => {
                if stomp_error.is_none() {
                    if let Err(e) = stomp.feed(data, |frame| handler.frame(frame, now_ns, stats)) {
                        stomp_error = Some(e);
                    }
                }
            }
            Event::Ping(payload) => {
                ws::encode_client(&mut handler.out, ws::OP_PONG, payload, handler.mask)
            }
            Event::Pong => {}
            Event::Close => {
                if !handler.closed {
                    ws::encode_client(&mut handler.out, ws::OP_CLOSE, &[], handler.mask);
                }
                handler.closed = true;
            }
        });
        if let Err(e) = result {
            handler.error.get_or_insert(e.to_string());
        }
        if let Some(e) = stomp_error {
            handler.error.get_or_insert(e.to_string());
        }
        stats.received - before
    }
}

impl Handler {
    fn frame(&mut self, frame: &[u8], now_ns: u64, stats: &mut ThreadStats) {
        if frame.starts_with(b"MESSAGE") {
            match stomp::message_body(frame).and_then(stomp::parse_stamp) {
                Some(stamp) => {
                    stats.received += 1;
                    stats.last_ns = now_ns;
                    stats
                        .latency
                        .saturating_record(now_ns.saturating_sub(stamp.sent_ns));
                    if let Some(last) = self.last_seq.get_mut(stamp.publisher as usize) {
                        if stamp.seq > *last {
                            *last = stamp.seq;
                        } else if stamp.seq == *last {
                            stats.duplicates += 1;
                        } else {
                            stats.out_of_order += 1;
                        }
                    }
                }
                None => stats.unstamped += 1,
            }
            return;
        }
        let Some(parsed) = Frame::parse(frame) else {
            return;
        };
        match parsed.command {
            b"CONNECTED" if self.phase == Phase::Connecting => {
                self.phase = Phase::Subscribing;
                let subscribe = std::mem::take(&mut self.subscribe);
                ws::encode_client(&mut self.out, ws::OP_TEXT, &subscribe, self.mask);
            }
            b"RECEIPT" if self.phase == Phase::Subscribing => {
                self.phase = Phase::Ready;
                self.became_ready = true;
            }
            b"ERROR" => {
                let message = parsed.header_str("message").unwrap_or("");
                let body = String::from_utf8_lossy(&parsed.body[..parsed.body.len().min(200)]);
                self.error
                    .get_or_insert(format!("ERROR {message}: {}", body.trim()));
            }
            _ => {}
        }
    }
}

/// Runs subscriber `i` until the runtime ends. `permit` (the handshake concurrency) is
/// released once the connection is ready or has failed; `setup` hears which.
pub async fn run(
    i: usize,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
    setup: mpsc::UnboundedSender<Setup>,
) {
    let deadline = tokio::time::Instant::now() + shared.ready_timeout;
    let mut permit = Some(permit);
    let (mut stream, mut conn) = match tokio::time::timeout_at(deadline, open(i, &shared)).await {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => {
            let _ = setup.send(Setup::Failed(format!("{e:#}")));
            return;
        }
        Err(_) => {
            let _ = setup.send(Setup::Failed("timed out before CONNECTED".into()));
            return;
        }
    };
    loop {
        let ready = conn.handler.phase == Phase::Ready;
        let read = net::read_with(&mut stream, |bytes| {
            let now = shared.clock.now_ns();
            stats::with_local(|stats| conn.on_bytes(bytes, now, stats))
        });
        let result = if ready {
            read.await
        } else {
            match tokio::time::timeout_at(deadline, read).await {
                Ok(result) => result,
                Err(_) => {
                    let _ = setup.send(Setup::Failed("timed out before RECEIPT".into()));
                    return;
                }
            }
        };
        let lost = match result {
            Ok((0, _)) => Some("closed by the broker".to_string()),
            Ok((_, received)) => {
                shared.progress.add(received.unwrap_or(0));
                None
            }
            Err(e) => Some(format!("read: {e}")),
        };
        if !conn.handler.out.is_empty() {
            if let Err(e) = stream.write_all(&conn.handler.out).await {
                conn.handler.error.get_or_insert(format!("write: {e}"));
            }
            conn.handler.out.clear();
        }
        if conn.handler.became_ready {
            conn.handler.became_ready = false;
            permit.take();
            let _ = setup.send(Setup::Ready(i));
        }
        let lost = conn.handler.error.take().or(lost).or_else(|| {
            conn.handler
                .closed
                .then(|| "closed by the broker (WebSocket close)".to_string())
        });
        if let Some(reason) = lost {
            if conn.handler.phase == Phase::Ready {
                shared.disconnected.fetch_add(1, Ordering::Relaxed);
                shared.disconnects.record(reason);
            } else {
                let _ = setup.send(Setup::Failed(reason));
            }
            return;
        }
    }
}

/// Connects, upgrades and sends CONNECT.
async fn open(i: usize, shared: &Shared) -> anyhow::Result<(TcpStream, Conn)> {
    let source = (!shared.sources.is_empty()).then(|| shared.sources[i % shared.sources.len()]);
    let mut stream = net::connect(shared.url.addr, source)
        .await
        .with_context(|| match source {
            Some(ip) => format!("connect from {ip}"),
            None => "connect".to_string(),
        })?;
    let mut rng = ws::Rng::new(shared.clock.now_ns() ^ ((i as u64) << 32));
    let mut leftover =
        net::client_handshake(&mut stream, &shared.url, &shared.protocols, &mut rng).await?;
    let headers = render_headers(&shared.connect_headers, i);
    let mask = rng.mask();
    let mut conn = Conn {
        ws: ws::Decoder::new(false),
        stomp: stomp::Scanner::new(shared.max_frame),
        handler: Handler {
            phase: Phase::Connecting,
            subscribe: stomp::subscribe_frame(&shared.subscribe.render(i, i)),
            mask,
            out: Vec::new(),
            last_seq: vec![0; shared.publishers],
            became_ready: false,
            closed: false,
            error: None,
        },
    };
    let mut connect = Vec::new();
    ws::encode_client(
        &mut connect,
        ws::OP_TEXT,
        &stomp::connect_frame(&headers),
        mask,
    );
    stream
        .write_all(&connect)
        .await
        .context("sending CONNECT")?;
    if !leftover.is_empty() {
        let now = shared.clock.now_ns();
        let received = stats::with_local(|stats| conn.on_bytes(&mut leftover, now, stats));
        shared.progress.add(received);
    }
    Ok((stream, conn))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(publishers: usize) -> Conn {
        Conn {
            ws: ws::Decoder::new(false),
            stomp: stomp::Scanner::new(1 << 20),
            handler: Handler {
                phase: Phase::Connecting,
                subscribe: stomp::subscribe_frame("/topic/t"),
                mask: [1, 2, 3, 4],
                out: Vec::new(),
                last_seq: vec![0; publishers],
                became_ready: false,
                closed: false,
                error: None,
            },
        }
    }

    fn message(publisher: u32, seq: u64, sent_ns: u64) -> Vec<u8> {
        let mut frame = b"MESSAGE\ndestination:/topic/t\nsubscription:0\nmessage-id:1\n\n".to_vec();
        stomp::write_body(
            &mut frame,
            stomp::Stamp {
                sent_ns,
                publisher,
                seq,
            },
            32,
        );
        frame.push(0);
        frame
    }

    #[test]
    fn setup_then_messages_across_ws_frames() {
        let mut c = conn(2);
        let mut stats = ThreadStats::new();

        let mut wire = Vec::new();
        ws::encode_server(&mut wire, ws::OP_TEXT, b"CONNECTED\nversion:1.2\n\n\0");
        c.on_bytes(&mut wire, 0, &mut stats);
        assert_eq!(c.handler.phase, Phase::Subscribing);
        assert!(!c.handler.out.is_empty(), "SUBSCRIBE queued");

        let mut wire = Vec::new();
        ws::encode_server(&mut wire, ws::OP_TEXT, b"RECEIPT\nreceipt-id:sub-0\n\n\0");
        c.on_bytes(&mut wire, 0, &mut stats);
        assert!(c.handler.became_ready);

        // Two messages in one WebSocket message, a third split over two, then a duplicate
        // and a reordered one.
        let stream = [
            message(0, 1, 100),
            message(1, 1, 100),
            message(0, 2, 200),
            message(0, 2, 200),
            message(1, 0, 200),
        ]
        .concat();
        let cut = stream.len() / 2;
        let mut wire = Vec::new();
        ws::encode_server(&mut wire, ws::OP_TEXT, &stream[..cut]);
        ws::encode_server(&mut wire, ws::OP_TEXT, &stream[cut..]);
        let mut n = 0;
        for piece in wire.chunks_mut(7) {
            n += c.on_bytes(piece, 1_000_000, &mut stats);
        }
        assert_eq!(n, 5);
        assert_eq!(stats.received, 5);
        assert_eq!(stats.duplicates, 1);
        assert_eq!(stats.out_of_order, 1);
        assert_eq!(stats.latency.len(), 5);
        assert!(c.handler.error.is_none());
    }

    #[test]
    fn ping_gets_pong_and_error_is_kept() {
        let mut c = conn(1);
        let mut stats = ThreadStats::new();
        let mut wire = vec![0x89, 0x01, b'p'];
        ws::encode_server(&mut wire, ws::OP_TEXT, b"ERROR\nmessage:nope\n\nbad\0");
        c.on_bytes(&mut wire, 0, &mut stats);
        let mut events = Vec::new();
        ws::Decoder::new(true)
            .feed(&mut c.handler.out, |e| events.push(format!("{e:?}")))
            .unwrap();
        assert_eq!(events, vec!["Pong"]);
        assert_eq!(c.handler.error.as_deref(), Some("ERROR nope: bad"));
    }
}
