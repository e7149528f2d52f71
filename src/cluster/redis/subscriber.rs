//! One subscription connection to one Redis server: it subscribes to channels (classic, or
//! sharded with `SSUBSCRIBE`), waits for each confirmation, and hands every message on as it
//! arrives, in order, with its payload a slice of the read buffer. A `sunsubscribe` the server
//! sends by itself (the channel's slot moved to another primary) is handed on too, so the
//! channel can be subscribed again where it now lives. The connection ends (and says so) when
//! the server closes it or sends something that is not RESP; the owner makes a new one.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use redis::ConnectionInfo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::DropGuard;

use super::resp::{self, Reply};
use super::{RedisError, REDIS_TIMEOUT};

/// What a subscription connection reports, tagged with its [`Source`].
#[derive(Debug)]
pub enum Event {
    /// A message on a subscribed channel.
    Message {
        /// The channel.
        channel: Bytes,
        /// The payload.
        payload: Bytes,
    },
    /// The server ended a sharded subscription by itself: its slot moved.
    Unsubscribed(String),
    /// The connection ended; the reason.
    Lost(String),
}

/// Which subscription connection an event is from: its primary, and the connection (a new
/// one to the same primary has a new id, so a late event of the old one is told apart).
#[derive(Debug, Clone)]
pub struct Source {
    /// `host:port` of the primary.
    pub addr: Arc<str>,
    /// The connection.
    pub id: u64,
}

/// A subscribe or unsubscribe waiting for its confirmations.
struct Pending {
    /// The confirmation's kind (`subscribe`, `ssubscribe`, ...).
    kind: &'static str,
    /// Channels not confirmed yet.
    channels: HashSet<Bytes>,
    done: oneshot::Sender<Result<(), RedisError>>,
}

struct Request {
    bytes: Vec<u8>,
    pending: Pending,
}

/// A subscription connection; dropping it closes the connection.
#[derive(Debug)]
pub struct Subscriber {
    /// Tells its events from those of other connections to the same primary.
    pub id: u64,
    requests: mpsc::UnboundedSender<Request>,
    _close: DropGuard,
}

impl Subscriber {
    /// Connects to `addr` (`host:port`) with `info`'s credentials; what arrives goes to
    /// `events`, tagged with `addr`.
    pub async fn connect(
        addr: &str,
        info: &ConnectionInfo,
        events: mpsc::UnboundedSender<(Source, Event)>,
    ) -> Result<Subscriber, RedisError> {
        let stream = tokio::time::timeout(REDIS_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| RedisError::ConnectTimeout)?
            .map_err(|e| RedisError::NotConnected(format!("{addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let mut stream = stream;
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let auth = match settings.username() {
                Some(user) => resp::command(&["AUTH", user, password]),
                None => resp::command(&["AUTH", password]),
            };
            let answer = tokio::time::timeout(REDIS_TIMEOUT, async {
                stream.write_all(&auth).await?;
                read_reply(&mut stream, &mut buf).await
            })
            .await
            .map_err(|_| RedisError::ConnectTimeout)?
            .map_err(|e| RedisError::NotConnected(format!("{addr}: {e}")))?;
            if let Reply::Error(e) = answer {
                return Err(RedisError::NotConnected(format!(
                    "{addr} refused the credentials: {e}"
                )));
            }
        }
        let (requests, queued) = mpsc::unbounded_channel();
        let close = tokio_util::sync::CancellationToken::new();
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let source = Source {
            addr: addr.into(),
            id,
        };
        tokio::spawn(run(stream, buf, queued, events, source, close.clone()));
        Ok(Subscriber {
            id,
            requests,
            _close: close.drop_guard(),
        })
    }

    /// Subscribes to `channels` (sharded: one `SSUBSCRIBE` each, since one may name only
    /// channels of a single slot); resolves once the server confirmed every one.
    pub async fn subscribe(&self, channels: &[String], sharded: bool) -> Result<(), RedisError> {
        let (verb, kind) = if sharded {
            ("SSUBSCRIBE", "ssubscribe")
        } else {
            ("SUBSCRIBE", "subscribe")
        };
        self.each(verb, kind, channels, sharded).await
    }

    /// Ends the subscriptions to `channels`.
    pub async fn unsubscribe(&self, channels: &[String], sharded: bool) -> Result<(), RedisError> {
        let (verb, kind) = if sharded {
            ("SUNSUBSCRIBE", "sunsubscribe")
        } else {
            ("UNSUBSCRIBE", "unsubscribe")
        };
        self.each(verb, kind, channels, sharded).await
    }

    async fn each(
        &self,
        verb: &str,
        kind: &'static str,
        channels: &[String],
        one_per_command: bool,
    ) -> Result<(), RedisError> {
        if channels.is_empty() {
            return Ok(());
        }
        let groups: Vec<&[String]> = if one_per_command {
            channels.chunks(1).collect()
        } else {
            channels.chunks(1000).collect()
        };
        let mut waits = Vec::with_capacity(groups.len());
        for group in groups {
            let mut args: Vec<&str> = vec![verb];
            args.extend(group.iter().map(String::as_str));
            let (done, confirmed) = oneshot::channel();
            self.requests
                .send(Request {
                    bytes: resp::command(&args),
                    pending: Pending {
                        kind,
                        channels: group
                            .iter()
                            .map(|c| Bytes::copy_from_slice(c.as_bytes()))
                            .collect(),
                        done,
                    },
                })
                .map_err(|_| RedisError::Closed)?;
            waits.push(confirmed);
        }
        for confirmed in waits {
            match tokio::time::timeout(REDIS_TIMEOUT, confirmed).await {
                Ok(Ok(result)) => result?,
                Ok(Err(_)) => return Err(RedisError::Closed),
                Err(_) => {
                    return Err(RedisError::NotConnected(
                        "a subscription was not confirmed within 2 s".into(),
                    ))
                }
            }
        }
        Ok(())
    }
}

async fn read_reply(stream: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<Reply> {
    loop {
        if let Some(reply) = resp::decode(buf).map_err(std::io::Error::other)? {
            return Ok(reply);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

async fn run(
    mut stream: TcpStream,
    mut buf: BytesMut,
    mut requests: mpsc::UnboundedReceiver<Request>,
    events: mpsc::UnboundedSender<(Source, Event)>,
    source: Source,
    close: tokio_util::sync::CancellationToken,
) {
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let reason = loop {
        // Whole replies already read are handled before reading more.
        match resp::decode(&mut buf) {
            Ok(Some(reply)) => {
                if let Some(event) = handle(reply, &mut pending) {
                    if events.send((source.clone(), event)).is_err() {
                        return;
                    }
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => break e.to_string(),
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        tokio::select! {
            _ = close.cancelled() => return,
            request = requests.recv() => {
                let Some(request) = request else { return };
                if let Err(e) = stream.write_all(&request.bytes).await {
                    let _ = request.pending.done.send(Err(RedisError::NotConnected(e.to_string())));
                    break e.to_string();
                }
                pending.push_back(request.pending);
            }
            read = stream.read_buf(&mut buf) => match read {
                Ok(0) => break "the server closed the connection".to_string(),
                Ok(_) => {}
                Err(e) => break e.to_string(),
            },
        }
    };
    for waiting in pending {
        let _ = waiting
            .done
            .send(Err(RedisError::NotConnected(reason.clone())));
    }
    let _ = events.send((source, Event::Lost(reason)));
}

/// Applies one reply to the waiting requests; what to report, if anything.
fn handle(reply: Reply, pending: &mut VecDeque<Pending>) -> Option<Event> {
    let parts = match reply {
        Reply::Array(Some(parts)) => parts,
        Reply::Error(e) => {
            if let Some(front) = pending.pop_front() {
                let _ = front.done.send(Err(RedisError::NotConnected(e)));
            }
            return None;
        }
        _ => return None,
    };
    let kind = parts.first().and_then(Reply::text).unwrap_or_default();
    match kind {
        "message" | "smessage" => {
            let mut parts = parts.into_iter().skip(1);
            let channel = parts.next()?.bytes()?.clone();
            let payload = parts.next()?.bytes()?.clone();
            Some(Event::Message { channel, payload })
        }
        "subscribe" | "ssubscribe" | "unsubscribe" | "sunsubscribe" => {
            let channel = parts.get(1).and_then(Reply::bytes)?.clone();
            let expected = pending
                .front_mut()
                .filter(|p| p.kind == kind && p.channels.contains(&channel));
            match expected {
                Some(front) => {
                    front.channels.remove(&channel);
                    if front.channels.is_empty() {
                        let front = pending.pop_front()?;
                        let _ = front.done.send(Ok(()));
                    }
                    None
                }
                None if kind == "sunsubscribe" => Some(Event::Unsubscribed(
                    String::from_utf8_lossy(&channel).into_owned(),
                )),
                None => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(Some(Bytes::copy_from_slice(s.as_bytes())))
    }

    fn waiting(
        kind: &'static str,
        channels: &[&str],
    ) -> (Pending, oneshot::Receiver<Result<(), RedisError>>) {
        let (done, rx) = oneshot::channel();
        let pending = Pending {
            kind,
            channels: channels
                .iter()
                .map(|c| Bytes::copy_from_slice(c.as_bytes()))
                .collect(),
            done,
        };
        (pending, rx)
    }

    #[test]
    fn confirmations_resolve_their_request_once_every_channel_is_in() {
        let mut pending = VecDeque::new();
        let (p, mut rx) = waiting("subscribe", &["a", "b"]);
        pending.push_back(p);
        let confirm = |c: &str| Reply::Array(Some(vec![bulk("subscribe"), bulk(c), Reply::Int(1)]));
        assert!(handle(confirm("a"), &mut pending).is_none());
        assert!(rx.try_recv().is_err(), "b is not confirmed yet");
        assert!(handle(confirm("b"), &mut pending).is_none());
        assert!(matches!(rx.try_recv(), Ok(Ok(()))));
        assert!(pending.is_empty());
    }

    #[test]
    fn an_error_fails_the_oldest_request() {
        let mut pending = VecDeque::new();
        let (p, mut rx) = waiting("ssubscribe", &["x"]);
        pending.push_back(p);
        handle(Reply::Error("MOVED 1 h:1".into()), &mut pending);
        assert!(matches!(rx.try_recv(), Ok(Err(_))));
    }

    #[test]
    fn messages_and_unasked_unsubscriptions_are_reported() {
        let mut pending = VecDeque::new();
        let message = Reply::Array(Some(vec![bulk("smessage"), bulk("c"), bulk("{}")]));
        match handle(message, &mut pending) {
            Some(Event::Message { channel, payload }) => {
                assert_eq!(&channel[..], b"c");
                assert_eq!(&payload[..], b"{}");
            }
            other => panic!("{other:?}"),
        }
        let moved = Reply::Array(Some(vec![bulk("sunsubscribe"), bulk("c"), Reply::Int(0)]));
        assert!(matches!(handle(moved, &mut pending), Some(Event::Unsubscribed(c)) if c == "c"));
        // An unsubscription that was asked for is a confirmation, not news.
        let (p, mut rx) = waiting("sunsubscribe", &["c"]);
        pending.push_back(p);
        let asked = Reply::Array(Some(vec![bulk("sunsubscribe"), bulk("c"), Reply::Int(0)]));
        assert!(handle(asked, &mut pending).is_none());
        assert!(matches!(rx.try_recv(), Ok(Ok(()))));
    }
}
