//! The null broker: the least a STOMP-over-WebSocket fan-out server can do, run beside every
//! broker figure as the machine's ceiling. It accepts any upgrade, answers CONNECT, files
//! SUBSCRIBE by destination, and on SEND encodes the MESSAGE and its WebSocket frame once and
//! hands the same bytes to every subscriber's writer, which writes whatever has queued in one
//! vectored write. No acks, no transactions, no heart-beats, no per-subscriber headers.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;

use crate::net;
use crate::stomp::{self, Frame};
use crate::template::subscription_key;
use crate::ws::{self, Event};

/// Options of `stompbox-bench null-broker`.
#[derive(Debug, Clone, clap::Args)]
pub struct NullOpts {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,
    /// Runtime threads (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// A subscriber whose queue holds more than this is a slow consumer and is dropped, so a client
/// that stops reading cannot grow the null broker's memory without bound.
const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

/// The longest frame a client may send.
const MAX_FRAME: usize = 1024 * 1024;

/// The most slices one vectored write takes (Linux allows 1024).
const MAX_SLICES: usize = 512;

pub fn main(opts: NullOpts) -> anyhow::Result<()> {
    // As many connections as the kernel allows one process (fs.nr_open's default).
    let limit = crate::procfs::raise_nofile(1 << 20);
    let runtime = crate::runtime(opts.threads)?;
    runtime.block_on(async {
        let listener = bind(opts.listen)?;
        eprintln!(
            "null broker listening on {} ({} thread{}, open-file limit {limit})",
            listener.local_addr()?,
            opts.threads,
            if opts.threads == 1 { "" } else { "s" }
        );
        serve(listener).await;
        Ok(())
    })
}

/// A listener with a backlog deep enough for a handshake storm of thousands of clients.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Accepts until the runtime ends. An accept error (out of descriptors, say) is logged and
/// retried after a pause: the loop never dies.
pub async fn serve(listener: TcpListener) {
    let broker = Arc::new(Broker::default());
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(stream, broker.clone()));
            }
            Err(e) => {
                eprintln!("null broker: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Destination → subscribers. A list is shared (`Arc`) so a SEND takes it and lets the lock go
/// before delivering; a SUBSCRIBE copies it only if a SEND holds it at that moment.
#[derive(Default)]
struct Broker {
    topics: RwLock<HashMap<String, Arc<Vec<Arc<Outbox>>>>>,
    next_id: AtomicU64,
}

impl Broker {
    fn subscribe(&self, key: &str, outbox: &Arc<Outbox>) {
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        let subs = topics.entry(key.to_string()).or_default();
        Arc::make_mut(subs).push(outbox.clone());
    }

    fn unsubscribe(&self, key: &str, outbox: &Arc<Outbox>) {
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(subs) = topics.get_mut(key) {
            let list = Arc::make_mut(subs);
            if let Some(at) = list.iter().position(|o| Arc::ptr_eq(o, outbox)) {
                list.swap_remove(at);
            }
            if list.is_empty() {
                topics.remove(key);
            }
        }
    }

    fn publish(&self, destination: &str, body: &[u8]) {
        let subs = self
            .topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(destination)
            .cloned();
        let Some(subs) = subs else {
            return;
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shown = shown_destination(destination);
        let mut head = format!(
            "MESSAGE\ndestination:{shown}\nsubscription:{shown}\nmessage-id:{id}\ncontent-length:{}\n\n",
            body.len()
        )
        .into_bytes();
        let stomp_len = head.len() + body.len() + 1;
        let mut frame = Vec::with_capacity(stomp_len + 10);
        ws::write_header(&mut frame, ws::OP_TEXT, stomp_len, None);
        frame.append(&mut head);
        frame.extend_from_slice(body);
        frame.push(0);
        let frame = Bytes::from(frame);
        if destination.starts_with("/queue/") {
            // Competing consumers: one subscriber per message, in turn.
            subs[id as usize % subs.len()].push(frame);
        } else {
            for outbox in subs.iter() {
                outbox.push(frame.clone());
            }
        }
    }
}

/// What a MESSAGE says it was sent to: `/user/{name}/rest` reaches subscribers of `/user/rest`,
/// and that is what they are told, as in Spring.
fn shown_destination(destination: &str) -> String {
    match destination
        .strip_prefix("/user/")
        .and_then(|rest| rest.find('/').map(|at| &rest[at..]))
    {
        Some(rest) => format!("/user{rest}"),
        None => destination.to_string(),
    }
}

/// A connection's outbound queue: shared frames waiting for its writer.
#[derive(Default)]
struct Outbox {
    queue: Mutex<Queue>,
    notify: Notify,
}

#[derive(Default)]
struct Queue {
    frames: Vec<Bytes>,
    bytes: usize,
    /// No more writes: the connection ended, or it fell too far behind (slow consumer).
    closed: bool,
}

impl Outbox {
    fn push(&self, frame: Bytes) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.closed {
            return;
        }
        if queue.bytes + frame.len() > MAX_QUEUED_BYTES {
            queue.frames.clear();
            queue.closed = true;
        } else {
            queue.bytes += frame.len();
            queue.frames.push(frame);
        }
        let wake = queue.frames.len() <= 1 || queue.closed;
        drop(queue);
        if wake {
            self.notify.notify_one();
        }
    }

    fn close(&self) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.notify.notify_one();
    }
}

/// Writes whatever has queued, one vectored write per wake-up, until the queue is closed.
async fn write_loop(mut writer: OwnedWriteHalf, outbox: Arc<Outbox>) {
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        outbox.notify.notified().await;
        let closed = {
            let mut queue = outbox.queue.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::swap(&mut queue.frames, &mut batch);
            queue.bytes = 0;
            queue.closed
        };
        if write_all(&mut writer, &mut batch).await.is_err() {
            outbox.close();
            return;
        }
        if closed {
            let _ = writer.shutdown().await;
            return;
        }
    }
}

async fn write_all(writer: &mut OwnedWriteHalf, frames: &mut Vec<Bytes>) -> io::Result<()> {
    let mut first = 0;
    while first < frames.len() {
        let mut written = {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            for (slot, frame) in slices.iter_mut().zip(&frames[first..]) {
                *slot = IoSlice::new(frame);
                count += 1;
            }
            writer.write_vectored(&slices[..count]).await?
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let len = frames[first].len();
            if written >= len {
                written -= len;
                first += 1;
            } else {
                frames[first].advance(written);
                written = 0;
            }
        }
    }
    frames.clear();
    Ok(())
}

/// One client: handshake, then frames until it leaves.
async fn connection(mut stream: TcpStream, broker: Arc<Broker>) {
    let mut buf = Vec::with_capacity(512);
    let head = match tokio::time::timeout(
        Duration::from_secs(10),
        net::read_head(&mut stream, &mut buf),
    )
    .await
    {
        Ok(Ok(head)) => head,
        _ => return,
    };
    let upgrade = match ws::parse_upgrade(&buf[..head]) {
        Ok(upgrade) => upgrade,
        Err(e) => {
            let body = format!("{e}\n");
            let _ = stream
                .write_all(
                    format!(
                        "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
            return;
        }
    };
    if stream
        .write_all(ws::server_response(&upgrade).as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let mut leftover = buf.split_off(head);
    drop(buf);
    let (mut reader, writer) = stream.into_split();
    let outbox = Arc::new(Outbox::default());
    tokio::spawn(write_loop(writer, outbox.clone()));
    let mut session = Session {
        broker,
        outbox,
        user: None,
        subscriptions: Vec::new(),
        decoder: ws::Decoder::new(true),
        scanner: stomp::Scanner::new(MAX_FRAME),
        ending: false,
    };
    session.on_bytes(&mut leftover);
    while !session.ending {
        match net::read_with(&mut reader, |bytes| session.on_bytes(bytes)).await {
            Ok((0, _)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    session.leave();
}

struct Session {
    broker: Arc<Broker>,
    outbox: Arc<Outbox>,
    user: Option<String>,
    /// (subscription id, destination key) of each SUBSCRIBE, so UNSUBSCRIBE and the end of the
    /// connection can take them back.
    subscriptions: Vec<(String, String)>,
    decoder: ws::Decoder,
    scanner: stomp::Scanner,
    ending: bool,
}

impl Session {
    fn on_bytes(&mut self, bytes: &mut [u8]) {
        let Session {
            broker,
            outbox,
            user,
            subscriptions,
            decoder,
            scanner,
            ending: session_ending,
        } = self;
        let mut ctx = SessionCtx {
            broker,
            outbox,
            user,
            subscriptions,
        };
        let mut ending = false;
        let result = decoder.feed(bytes, |event| match event {
            Event::Data(data) => {
                if ending {
                    return;
                }
                if scanner
                    .feed(data, |raw| {
                        if !ending {
                            ctx.frame(raw, &mut ending);
                        }
                    })
                    .is_err()
                {
                    ending = true;
                }
            }
            Event::Ping(payload) => {
                let mut pong = Vec::new();
                ws::encode_server(&mut pong, ws::OP_PONG, payload);
                ctx.outbox.push(Bytes::from(pong));
            }
            Event::Pong => {}
            Event::Close => {
                let mut close = Vec::new();
                ws::encode_server(&mut close, ws::OP_CLOSE, &[]);
                ctx.outbox.push(Bytes::from(close));
                ending = true;
            }
        });
        if result.is_err() || ending {
            *session_ending = true;
        }
    }

    fn leave(&mut self) {
        for (_, key) in self.subscriptions.drain(..) {
            self.broker.unsubscribe(&key, &self.outbox);
        }
        self.outbox.close();
    }
}

/// The parts of a session a frame may touch while the decoder is borrowed.
struct SessionCtx<'a> {
    broker: &'a Broker,
    outbox: &'a Arc<Outbox>,
    user: &'a mut Option<String>,
    subscriptions: &'a mut Vec<(String, String)>,
}

impl SessionCtx<'_> {
    fn reply(&self, text: String) {
        let mut frame = Vec::with_capacity(text.len() + 4);
        ws::encode_server(&mut frame, ws::OP_TEXT, text.as_bytes());
        self.outbox.push(Bytes::from(frame));
    }

    fn frame(&mut self, raw: &[u8], ending: &mut bool) {
        let Some(frame) = Frame::parse(raw) else {
            self.reply("ERROR\nmessage:malformed frame\n\n\0".into());
            *ending = true;
            return;
        };
        let destination = frame.header_str("destination");
        match frame.command {
            b"CONNECT" | b"STOMP" => {
                *self.user = frame
                    .header_str("userid")
                    .or_else(|| frame.header_str("login"))
                    .map(str::to_string);
                let user = match self.user.as_deref() {
                    Some(user) => format!("user-name:{user}\n"),
                    None => String::new(),
                };
                self.reply(format!(
                    "CONNECTED\nversion:1.2\nheart-beat:0,0\nserver:stompbox-bench-null\n{user}\n\0"
                ));
            }
            b"SUBSCRIBE" => {
                let Some(destination) = destination else {
                    self.reply("ERROR\nmessage:SUBSCRIBE without destination\n\n\0".into());
                    *ending = true;
                    return;
                };
                let key = subscription_key(destination, self.user.as_deref());
                self.broker.subscribe(&key, self.outbox);
                let id = frame.header_str("id").unwrap_or_default().to_string();
                self.subscriptions.push((id, key));
            }
            b"UNSUBSCRIBE" => {
                let id = frame.header_str("id").unwrap_or_default();
                if let Some(at) = self.subscriptions.iter().position(|(i, _)| i == id) {
                    let (_, key) = self.subscriptions.swap_remove(at);
                    self.broker.unsubscribe(&key, self.outbox);
                }
            }
            b"SEND" => {
                if let Some(destination) = destination {
                    self.broker.publish(destination, frame.body);
                }
            }
            b"DISCONNECT" => *ending = true,
            _ => {}
        }
        if let Some(receipt) = frame.header_str("receipt") {
            self.reply(format!("RECEIPT\nreceipt-id:{receipt}\n\n\0"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_destinations_show_as_subscribed() {
        assert_eq!(
            shown_destination("/user/u5/queue/bench"),
            "/user/queue/bench"
        );
        assert_eq!(shown_destination("/topic/bench"), "/topic/bench");
        assert_eq!(shown_destination("/user/u5"), "/user/u5");
    }

    #[test]
    fn fan_out_shares_one_frame() {
        let broker = Broker::default();
        let a = Arc::new(Outbox::default());
        let b = Arc::new(Outbox::default());
        broker.subscribe("/topic/t", &a);
        broker.subscribe("/topic/t", &b);
        broker.publish("/topic/t", b"hi");
        broker.publish("/topic/none", b"lost");
        let qa = a.queue.lock().unwrap();
        let qb = b.queue.lock().unwrap();
        assert_eq!(qa.frames.len(), 1);
        assert_eq!(qa.frames[0].as_ptr(), qb.frames[0].as_ptr(), "same bytes");
        let mut wire = qa.frames[0].to_vec();
        let mut data = Vec::new();
        ws::Decoder::new(false)
            .feed(&mut wire, |e| {
                if let Event::Data(d) = e {
                    data.extend_from_slice(d)
                }
            })
            .unwrap();
        let frame = Frame::parse(&data[..data.len() - 1]).unwrap();
        assert_eq!(frame.command, b"MESSAGE");
        assert_eq!(frame.body, b"hi");
        drop((qa, qb));
        broker.unsubscribe("/topic/t", &a);
        broker.publish("/topic/t", b"again");
        assert_eq!(a.queue.lock().unwrap().frames.len(), 1);
        assert_eq!(b.queue.lock().unwrap().frames.len(), 2);
    }

    #[test]
    fn slow_consumer_is_closed() {
        let outbox = Outbox::default();
        let big = Bytes::from(vec![0u8; MAX_QUEUED_BYTES / 2 + 1]);
        outbox.push(big.clone());
        outbox.push(big);
        let queue = outbox.queue.lock().unwrap();
        assert!(queue.closed);
        assert!(queue.frames.is_empty());
    }
}
