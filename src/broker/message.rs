//! A message on its way to subscribers: encoded once per STOMP version, shared by every delivery.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};

use std::sync::Arc;

use super::ticket::Ticket;
use crate::stomp::{escape_into, Version};

/// What a publisher sends: headers that travel to subscribers, and the body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Content {
    /// Headers passed through to MESSAGE frames (`content-type` and user headers).
    pub headers: Vec<(String, String)>,
    /// The body, shared and never copied per subscriber.
    pub body: Bytes,
}

/// A place in a user's stream: the stream's epoch (it changes when the store may have lost
/// what it held) and the message's number in it (from 1, without gaps within an epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Position {
    /// The stream's epoch.
    pub epoch: u64,
    /// The message's number in the stream.
    pub offset: u64,
}

/// A routed message. The part of its MESSAGE frame that is the same for every subscriber (the
/// "tail": destination, headers, body and NUL) is encoded lazily once per protocol version and
/// then shared by reference count.
#[derive(Debug)]
pub struct Message {
    destination: String,
    content: Content,
    /// This node's number for the message: the `message-id` of its auto-acknowledged
    /// deliveries, which all share one frame head.
    seq: u64,
    /// Its place in its user's stream, when it was stored: MESSAGE frames carry the offset as
    /// `x-stream-offset`, and subscriptions fed from the stream deliver each offset once.
    stream: Option<Position>,
    /// For a queue message kept in a shared store: its entry, removed once acknowledged.
    ticket: Option<Arc<Ticket>>,
    /// It may have been delivered before (given back by a consumer, or claimed from a node
    /// that died holding it): its frames say `redelivered:true`.
    redelivered: bool,
    /// Per version: the encoded tail, and whether it is valid UTF-8 (a WebSocket text message).
    tails: [OnceLock<(Bytes, bool)>; 3],
}

/// What a message costs beyond its bytes: the `Message` and its `Arc`, the body's shared
/// buffer header, a backlog slot (measured sizes, rounded up).
const MESSAGE_OVERHEAD: usize = 192;

/// Numbers messages on this node.
static NEXT_MESSAGE: AtomicU64 = AtomicU64::new(1);

/// Headers a publisher may not set, because the broker writes them itself per delivery.
pub const RESERVED_HEADERS: [&str; 8] = [
    "destination",
    "x-stream-offset",
    "redelivered",
    "subscription",
    "message-id",
    "ack",
    "content-length",
    "receipt",
];

impl Message {
    /// A message whose MESSAGE frames carry `destination` (the destination as subscribed).
    pub fn new(destination: String, content: Content) -> Message {
        Message::stored_at(destination, content, None)
    }

    /// A message stored at `position` of its user's stream.
    pub fn stored_at(destination: String, content: Content, stream: Option<Position>) -> Message {
        Message {
            destination,
            content,
            seq: NEXT_MESSAGE.fetch_add(1, Ordering::Relaxed),
            stream,
            ticket: None,
            redelivered: false,
            tails: Default::default(),
        }
    }

    /// This queue message as the store entry `ticket`, redelivered or not.
    pub fn with_ticket(mut self, ticket: Ticket, redelivered: bool) -> Message {
        self.ticket = Some(Arc::new(ticket));
        self.redelivered = redelivered;
        self
    }

    /// The store entry it is, for a queue message kept in a shared store.
    pub fn ticket(&self) -> Option<&Arc<Ticket>> {
        self.ticket.as_ref()
    }

    /// True when its frames say `redelivered:true`.
    pub fn is_redelivered(&self) -> bool {
        self.redelivered
    }

    /// The same message, numbered alike, marked as delivered before (a consumer gave it
    /// back).
    pub fn redelivery(&self) -> Message {
        Message {
            redelivered: true,
            ..self.compacted()
        }
    }

    /// Its offset in its user's stream, if it was stored.
    pub fn offset(&self) -> Option<u64> {
        self.stream.map(|p| p.offset)
    }

    /// Its place in its user's stream, if it was stored.
    pub fn position(&self) -> Option<Position> {
        self.stream
    }

    /// The same message, numbered alike, in buffers of its own: a body cut from a connection's
    /// read buffer keeps that whole buffer alive, so what waits for long (a queue backlog) is
    /// copied out, and the memory it holds is the weight it is charged. Encoded tails are not
    /// carried over; they are made again on delivery.
    pub fn compacted(&self) -> Message {
        Message {
            destination: self.destination.clone(),
            content: Content {
                headers: self.content.headers.clone(),
                body: Bytes::copy_from_slice(&self.content.body),
            },
            seq: self.seq,
            stream: self.stream,
            ticket: self.ticket.clone(),
            redelivered: self.redelivered,
            tails: Default::default(),
        }
    }

    /// The destination header of its MESSAGE frames.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// The publisher's headers and body.
    pub fn content(&self) -> &Content {
        &self.content
    }

    /// This node's number for the message.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The bytes this message holds while it waits in a backlog or unacknowledged: its
    /// destination, headers and body, plus what its structure costs. Once it has been
    /// delivered, its encoded tail costs about as much again (see [`Message::held_weight`]).
    pub fn weight(&self) -> usize {
        MESSAGE_OVERHEAD
            + self.destination.len()
            + super::budget::headers_weight(&self.content.headers)
            + self.content.body.len()
    }

    /// What a delivered message costs while a subscription holds it unacknowledged: the
    /// message and one encoded tail.
    pub fn held_weight(&self) -> usize {
        2 * self.weight()
    }

    /// The shared tail of this message's MESSAGE frame for a subscriber speaking `version`.
    pub fn tail(&self, version: Version) -> &Bytes {
        &self.encoded(version).0
    }

    /// Whether that tail is valid UTF-8, checked once per message rather than per delivery.
    pub fn tail_is_text(&self, version: Version) -> bool {
        self.encoded(version).1
    }

    fn encoded(&self, version: Version) -> &(Bytes, bool) {
        let slot = match version {
            Version::V1_0 => &self.tails[0],
            Version::V1_1 => &self.tails[1],
            Version::V1_2 => &self.tails[2],
        };
        slot.get_or_init(|| {
            let tail = self.encode_tail(version);
            let text = std::str::from_utf8(&tail).is_ok();
            (tail, text)
        })
    }

    fn encode_tail(&self, version: Version) -> Bytes {
        let body = &self.content.body;
        let mut out = BytesMut::with_capacity(
            64 + self.destination.len()
                + self
                    .content
                    .headers
                    .iter()
                    .map(|(k, v)| k.len() + v.len() + 2)
                    .sum::<usize>()
                + body.len(),
        );
        out.put_slice(b"destination:");
        put_value(&self.destination, version, &mut out);
        out.put_u8(b'\n');
        if let Some(offset) = self.offset() {
            out.put_slice(b"x-stream-offset:");
            out.put_slice(itoa(offset).as_bytes());
            out.put_u8(b'\n');
        }
        if self.redelivered {
            out.put_slice(b"redelivered:true\n");
        }
        for (name, value) in &self.content.headers {
            put_value(name, version, &mut out);
            out.put_u8(b':');
            put_value(value, version, &mut out);
            out.put_u8(b'\n');
        }
        out.put_slice(b"content-length:");
        out.put_slice(itoa(body.len() as u64).as_bytes());
        out.put_slice(b"\n\n");
        out.put_slice(body);
        out.put_u8(0);
        out.freeze()
    }
}

/// Writes a header name or value. STOMP 1.0 has no escaping, so a line break (or a NUL, which
/// would end the frame) that a 1.1/1.2 publisher sent escaped becomes a space for 1.0
/// subscribers rather than breaking their framing.
fn put_value(text: &str, version: Version, out: &mut BytesMut) {
    if version == Version::V1_0 && text.contains(['\r', '\n', '\0']) {
        out.put_slice(text.replace(['\r', '\n', '\0'], " ").as_bytes());
    } else {
        escape_into(text, version, out);
    }
}

/// Formats an integer without allocating (the delivery path writes several per message).
pub(crate) fn itoa(mut n: u64) -> ItoaBuf {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    ItoaBuf { buf, at }
}

/// The digits of an integer, on the stack.
pub(crate) struct ItoaBuf {
    buf: [u8; 20],
    at: usize,
}

impl ItoaBuf {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[self.at..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn itoa_formats_edges() {
        assert_eq!(itoa(0).as_bytes(), b"0");
        assert_eq!(itoa(42).as_bytes(), b"42");
        assert_eq!(itoa(u64::MAX).as_bytes(), u64::MAX.to_string().as_bytes());
    }

    #[test]
    fn stomp_1_0_values_never_carry_a_line_break_or_a_nul() {
        let message = Message::new(
            "/topic/a\nb".into(),
            Content {
                headers: vec![("x".into(), "1\0 2".into())],
                body: Bytes::new(),
            },
        );
        assert_eq!(
            &message.tail(Version::V1_0)[..],
            b"destination:/topic/a b\nx:1  2\ncontent-length:0\n\n\0"
        );
    }

    #[test]
    fn weight_counts_every_byte_held() {
        let message = Message::new(
            "/queue/q".into(),
            Content {
                headers: vec![("k".into(), "vv".into())],
                body: Bytes::from(vec![0u8; 1000]),
            },
        );
        assert_eq!(
            message.weight(),
            MESSAGE_OVERHEAD
                + 8
                + super::super::budget::headers_weight(&[("k".into(), "vv".into())])
                + 1000
        );
    }

    #[test]
    fn tail_is_encoded_once_and_escaped_per_version() {
        let message = Message::new(
            "/topic/a".into(),
            Content {
                headers: vec![("x-note".into(), "a:b".into())],
                body: Bytes::from_static(b"hi\0there"),
            },
        );
        let v12 = message.tail(Version::V1_2).clone();
        assert_eq!(
            &v12[..],
            b"destination:/topic/a\nx-note:a\\cb\ncontent-length:8\n\nhi\0there\0"
        );
        assert_eq!(message.tail(Version::V1_2).as_ptr(), v12.as_ptr());
        assert_eq!(
            &message.tail(Version::V1_0)[..],
            b"destination:/topic/a\nx-note:a:b\ncontent-length:8\n\nhi\0there\0"
        );
    }
}
