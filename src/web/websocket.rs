//! WebSocket connections (RFC 6455) for every endpoint that speaks it: `/ws` and the SockJS
//! `websocket` transports. This module owns what is not about the messages carried: the
//! handshake checks (a typed [`HandshakeError`], so each endpoint answers in its own format),
//! the subprotocol choice, the upgraded socket split into a [`WsReader`] and a [`WsWriter`],
//! the reader's socket side (reads, ping → pong, close, the close code a violation ends with).
//! Reassembling messages from frames is the pure state machine [`super::wsmessage`]; framing
//! itself is [`super::wsframe`]; why it is written here, with the figures, is said there.
//!
//! The reader offers two modes: [`WsReader::read_stream`] appends payload bytes to a buffer
//! as they arrive, ignoring message boundaries (STOMP splits frames at NUL itself), and
//! [`WsReader::read_message`] hands over one whole message at a time (SockJS). Both keep all
//! partial state in the reader, so they are safe inside `select!`, and an idle reader holds no
//! buffer. The writer sends each message as one gathered write of a header and the caller's
//! own byte slices.

use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::BytesMut;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, MutexGuard};

use super::has_token;
use super::socket::{read_ready, write_all_vectored};
use super::wsframe::{self, Opcode, Violation};
use super::wsmessage::{Parsed, Reassembler};

/// Close code: the normal end.
pub const NORMAL: u16 = 1000;
pub use super::wsmessage::{INVALID_TEXT, PROTOCOL_ERROR};

/// Why a request is not a WebSocket handshake this server accepts, in the order checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The method is not `GET`.
    #[error("a WebSocket upgrade is a GET")]
    NotGet,
    /// No `Upgrade: websocket`.
    #[error("the request has no `Upgrade: websocket` header")]
    NoUpgradeHeader,
    /// No `Connection: Upgrade`.
    #[error("the request has no `Connection: Upgrade` header")]
    NoConnectionUpgrade,
    /// `Sec-WebSocket-Version` is missing or not 13.
    #[error("unsupported WebSocket version")]
    Version,
    /// No `Sec-WebSocket-Key`.
    #[error("missing Sec-WebSocket-Key")]
    KeyMissing,
    /// A `Sec-WebSocket-Key` that is not 16 bytes in base64.
    #[error("malformed Sec-WebSocket-Key")]
    KeyMalformed,
    /// The connection has no upgrade to take (not HTTP/1.1, or already taken).
    #[error("this connection cannot be upgraded")]
    NotUpgradable,
}

/// A checked handshake: the `Sec-WebSocket-Accept` the answer carries.
#[derive(Debug, Clone)]
pub struct Accept(String);

/// Checks the method, the `Upgrade` and `Connection` tokens, the version and the key.
pub fn check(req: &Request) -> Result<Accept, HandshakeError> {
    let headers = req.headers();
    if req.method() != Method::GET {
        return Err(HandshakeError::NotGet);
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(HandshakeError::NoUpgradeHeader);
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(HandshakeError::Version);
    }
    match headers.get(header::SEC_WEBSOCKET_KEY) {
        None => Err(HandshakeError::KeyMissing),
        Some(key) if wsframe::valid_key(key.as_bytes()) => {
            Ok(Accept(wsframe::accept_key(key.as_bytes())))
        }
        Some(_) => Err(HandshakeError::KeyMalformed),
    }
}

/// Takes the connection's pending upgrade out of the request.
pub fn take_upgrade(req: &mut Request) -> Result<OnUpgrade, HandshakeError> {
    req.extensions_mut()
        .remove::<OnUpgrade>()
        .ok_or(HandshakeError::NotUpgradable)
}

/// The subprotocol to answer with: the first of `supported` (most preferred first) that the
/// client offered in `Sec-WebSocket-Protocol`.
pub fn choose_subprotocol<'a, S: AsRef<str>>(
    headers: &HeaderMap,
    supported: &'a [S],
) -> Option<&'a str> {
    supported
        .iter()
        .map(AsRef::as_ref)
        .find(|p| has_token(headers, header::SEC_WEBSOCKET_PROTOCOL, p))
}

/// The `101 Switching Protocols` answer.
pub fn switching_protocols(accept: &Accept, protocol: Option<&str>) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept.0) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = protocol.and_then(|p| HeaderValue::from_str(p).ok()) {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response
}

/// Waits for the upgrade and splits the socket. Messages bigger than `max_message` bytes end
/// the connection with 1009.
pub async fn open(
    on_upgrade: OnUpgrade,
    max_message: usize,
) -> Result<(WsReader, WsWriter), hyper::Error> {
    let upgraded = on_upgrade.await?;
    let opened = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let stream = parts.io.into_inner();
            let _ = stream.set_nodelay(true);
            let (read, write) = stream.into_split();
            let out = WsWriter::new(Writer::Tcp(write));
            let mut inbound = WsReader::new(Reader::Tcp(read), out.clone(), max_message);
            // Copied out and dropped now: `read_buf` is a view of the HTTP parser's whole
            // read buffer, which would otherwise live as long as the connection.
            inbound.parser.input().extend_from_slice(&parts.read_buf);
            drop(parts.read_buf);
            (inbound, out)
        }
        Err(upgraded) => {
            // Served by something other than a TCP listener: generic halves.
            let (read, write) = tokio::io::split(TokioIo::new(upgraded));
            let out = WsWriter::new(Writer::Other(write));
            (
                WsReader::new(Reader::Other(read), out.clone(), max_message),
                out,
            )
        }
    };
    Ok(opened)
}

type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

enum Reader {
    Tcp(OwnedReadHalf),
    Other(ReadHalf<Upgraded>),
}

impl Reader {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Reader::Tcp(read) => read_ready(read, buf).await,
            Reader::Other(read) => {
                buf.reserve(4096);
                read.read_buf(buf).await
            }
        }
    }
}

enum Writer {
    Tcp(OwnedWriteHalf),
    Other(WriteHalf<Upgraded>),
}

/// The write half, locked for one or more messages ([`WsWriter::lock`]).
pub struct Sink(Writer);

impl Sink {
    async fn write(&mut self, slices: &mut [IoSlice<'_>]) -> io::Result<()> {
        match &mut self.0 {
            Writer::Tcp(w) => write_all_vectored(w, slices).await,
            Writer::Other(w) => write_all_vectored(w, slices).await,
        }
    }

    /// Sends one message whose payload is `parts` in order, in one gathered write.
    pub async fn message(&mut self, opcode: Opcode, parts: &[&[u8]]) -> io::Result<()> {
        let len = parts.iter().map(|p| p.len()).sum();
        let mut header = [0u8; 10];
        let header_len = wsframe::server_header(opcode, len, &mut header);
        let mut slices = Vec::with_capacity(1 + parts.len());
        slices.push(IoSlice::new(&header[..header_len]));
        slices.extend(
            parts
                .iter()
                .filter(|p| !p.is_empty())
                .map(|p| IoSlice::new(p)),
        );
        self.write(&mut slices).await
    }

    /// Sends a close frame (with a code and reason, or with neither) and shuts the write half.
    pub async fn close(&mut self, status: Option<(u16, &str)>) {
        let payload = status.map_or_else(Vec::new, |(code, reason)| {
            wsframe::close_payload(code, reason)
        });
        let close = wsframe::server_frame(Opcode::Close, &payload);
        let _ = self.write(&mut [IoSlice::new(&close)]).await;
        let _ = match &mut self.0 {
            Writer::Tcp(w) => w.shutdown().await,
            Writer::Other(w) => w.shutdown().await,
        };
    }
}

struct Shared {
    sink: Mutex<Sink>,
    close_code: AtomicU16,
}

/// The write half, shared: the application sends messages, the reader answers pings and, when
/// the client broke the protocol, records the close code the connection should end with.
#[derive(Clone)]
pub struct WsWriter(Arc<Shared>);

impl WsWriter {
    fn new(writer: Writer) -> WsWriter {
        WsWriter(Arc::new(Shared {
            sink: Mutex::new(Sink(writer)),
            close_code: AtomicU16::new(NORMAL),
        }))
    }

    /// The write half, for as many messages as the caller sends before dropping the guard.
    pub async fn lock(&self) -> MutexGuard<'_, Sink> {
        self.0.sink.lock().await
    }

    /// The close code to end with: 1000, or the code of the client's protocol violation.
    pub fn close_code(&self) -> u16 {
        self.0.close_code.load(Ordering::Relaxed)
    }

    /// Records the close code of a violation carried by `e`, and passes `e` on.
    fn violated(&self, e: io::Error) -> io::Error {
        if let Some(v) = violation(&e) {
            self.0.close_code.store(v.code, Ordering::Relaxed);
        }
        e
    }
}

/// The protocol violation behind a read error, if that is what it was.
pub fn violation(e: &io::Error) -> Option<&Violation> {
    e.get_ref().and_then(|e| e.downcast_ref::<Violation>())
}

/// A whole client message ([`WsReader::read_message`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// A text message (then `data` is valid UTF-8); binary otherwise.
    pub text: bool,
    /// The payload.
    pub data: BytesMut,
}

fn refuse(violation: Violation) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, violation)
}

/// The read half: client frames, unmasked and checked.
pub struct WsReader {
    reader: Reader,
    out: WsWriter,
    parser: Reassembler,
    /// The message being reassembled in message mode; empty (no buffer) between messages.
    pending: BytesMut,
}

impl WsReader {
    fn new(reader: Reader, out: WsWriter, max_message: usize) -> WsReader {
        WsReader {
            reader,
            out,
            parser: Reassembler::new(max_message),
            pending: BytesMut::new(),
        }
    }

    /// Byte-stream mode: appends payload bytes to `buf` as they arrive, whatever the message
    /// boundaries; returns how many, or `Ok(0)` when the client closed. A protocol violation
    /// is an `InvalidData` error carrying a [`Violation`] ([`violation`]), whose code the
    /// writer's [`WsWriter::close_code`] then reports. Cancel-safe.
    pub async fn read_stream(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        // Bytes added before a ping count with those after it, as if the ping were not there.
        let mut added = 0;
        loop {
            match parse(&mut self.parser, &self.out, buf, false).await? {
                Parsed::Ping { added: n, .. } => {
                    added += n;
                    continue;
                }
                Parsed::Closed => return Ok(0),
                Parsed::More(n) if added + n > 0 => return Ok(added + n),
                Parsed::More(_) | Parsed::End(_) => {}
            }
            if self.reader.read(self.parser.input()).await? == 0 {
                return Ok(0);
            }
        }
    }

    /// Message mode: the next whole message, or `None` when the client closed. Errors as for
    /// [`WsReader::read_stream`]. Cancel-safe: a message read in part is kept for the next call.
    pub async fn read_message(&mut self) -> io::Result<Option<Message>> {
        loop {
            match parse(&mut self.parser, &self.out, &mut self.pending, true).await? {
                Parsed::Closed => return Ok(None),
                Parsed::End(text) => {
                    let data = std::mem::take(&mut self.pending);
                    return Ok(Some(Message { text, data }));
                }
                Parsed::Ping { .. } => continue,
                Parsed::More(_) => {}
            }
            if self.reader.read(self.parser.input()).await? == 0 {
                return Ok(None);
            }
        }
    }
}

/// One pass of `parser` over what was read. A ping is answered here, before it is handed back;
/// a violation is recorded for the close and returned as an `InvalidData` error.
async fn parse(
    parser: &mut Reassembler,
    out: &WsWriter,
    buf: &mut BytesMut,
    whole: bool,
) -> io::Result<Parsed> {
    let parsed = parser
        .parse(buf, whole)
        .map_err(|v| out.violated(refuse(v)))?;
    parser.release();
    if let Parsed::Ping { payload, .. } = &parsed {
        out.lock().await.message(Opcode::Pong, &[payload]).await?;
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [7, 1, 200, 3];
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    /// A reader and writer over a real socket pair, and the client's end of it.
    async fn pair(max_message: usize) -> (WsReader, WsWriter, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (read, write) = server.into_split();
        let out = WsWriter::new(Writer::Tcp(write));
        let reader = WsReader::new(Reader::Tcp(read), out.clone(), max_message);
        (reader, out, client)
    }

    async fn send(client: &mut TcpStream, frames: &[Vec<u8>]) {
        client.write_all(&frames.concat()).await.unwrap();
    }

    #[tokio::test]
    async fn fragments_with_a_ping_between_make_one_message() {
        let (mut reader, _out, mut client) = pair(1024).await;
        send(
            &mut client,
            &[
                client_frame(false, 0x1, b"hel"),
                client_frame(true, 0x9, b"hi"),
                client_frame(false, 0x0, b"lo "),
                client_frame(true, 0x0, b"world"),
                client_frame(true, 0x2, &[0, 255]),
            ],
        )
        .await;
        let first = reader.read_message().await.unwrap().unwrap();
        assert!(first.text);
        assert_eq!(&first.data[..], b"hello world");
        let second = reader.read_message().await.unwrap().unwrap();
        assert!(!second.text);
        assert_eq!(&second.data[..], &[0, 255]);
        // The ping was answered with a pong carrying its payload.
        let mut pong = [0u8; 4];
        client.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong, [0x8A, 2, b'h', b'i']);
        // A close frame ends the reading.
        send(&mut client, &[client_frame(true, 0x8, &[3, 232])]).await;
        assert_eq!(reader.read_message().await.unwrap(), None);
    }

    #[tokio::test]
    async fn utf8_split_across_fragments_is_valid() {
        let (mut reader, _out, mut client) = pair(1024).await;
        let text = "aé€😀".as_bytes();
        // Cut inside the two-byte, three-byte and four-byte characters.
        send(
            &mut client,
            &[
                client_frame(false, 0x1, &text[..2]),
                client_frame(false, 0x0, &text[2..5]),
                client_frame(false, 0x0, &text[5..8]),
                client_frame(true, 0x0, &text[8..]),
            ],
        )
        .await;
        let message = reader.read_message().await.unwrap().unwrap();
        assert_eq!(&message.data[..], text);
    }

    #[tokio::test]
    async fn invalid_utf8_closes_with_1007() {
        let (mut reader, out, mut client) = pair(1024).await;
        let cut = &"é".as_bytes()[..1];
        send(
            &mut client,
            &[client_frame(false, 0x1, cut), client_frame(true, 0x0, b"x")],
        )
        .await;
        let e = reader.read_message().await.unwrap_err();
        assert_eq!(violation(&e).map(|v| v.code), Some(INVALID_TEXT));
        assert_eq!(out.close_code(), INVALID_TEXT);
    }

    #[tokio::test]
    async fn a_message_over_the_limit_closes_with_1009() {
        let (mut reader, out, mut client) = pair(10).await;
        // Each fragment fits; together they do not.
        send(
            &mut client,
            &[
                client_frame(false, 0x2, &[1; 6]),
                client_frame(true, 0x0, &[2; 6]),
            ],
        )
        .await;
        let e = reader.read_message().await.unwrap_err();
        assert_eq!(violation(&e).map(|v| v.code), Some(wsframe::TOO_BIG));
        assert_eq!(out.close_code(), wsframe::TOO_BIG);
    }

    #[tokio::test]
    async fn a_message_inside_a_fragmented_one_is_a_protocol_error() {
        let (mut reader, out, mut client) = pair(1024).await;
        send(
            &mut client,
            &[
                client_frame(false, 0x1, b"a"),
                client_frame(true, 0x1, b"b"),
            ],
        )
        .await;
        let e = reader.read_message().await.unwrap_err();
        assert_eq!(violation(&e).map(|v| v.code), Some(PROTOCOL_ERROR));
        assert_eq!(out.close_code(), PROTOCOL_ERROR);
    }

    #[tokio::test]
    async fn stream_mode_hands_over_bytes_across_messages() {
        let (mut reader, _out, mut client) = pair(1024).await;
        send(
            &mut client,
            &[
                client_frame(true, 0x1, b"ab"),
                client_frame(true, 0x2, b"cd"),
            ],
        )
        .await;
        let mut buf = BytesMut::new();
        while buf.len() < 4 {
            assert!(reader.read_stream(&mut buf).await.unwrap() > 0);
        }
        assert_eq!(&buf[..], b"abcd");
    }

    #[tokio::test]
    async fn writer_sends_gathered_messages_and_a_close() {
        let (_reader, out, mut client) = pair(1024).await;
        {
            let mut sink = out.lock().await;
            sink.message(Opcode::Text, &[b"ab", b"", b"c"])
                .await
                .unwrap();
            sink.close(Some((3000, "Go away!"))).await;
        }
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let mut expected = vec![0x81, 3, b'a', b'b', b'c', 0x88, 10, 0x0B, 0xB8];
        expected.extend_from_slice(b"Go away!");
        assert_eq!(got, expected);
    }

    #[test]
    fn subprotocol_choice_follows_the_server_preference() {
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("v10.stomp, v12.stomp"),
        );
        let supported = ["v12.stomp", "v11.stomp", "v10.stomp"];
        assert_eq!(choose_subprotocol(&h, &supported), Some("v12.stomp"));
        let none: [String; 0] = [];
        assert_eq!(choose_subprotocol(&h, &none), None);
    }

    #[test]
    fn handshake_checks_in_order() {
        let req = |method: &str, headers: &[(&str, &str)]| {
            let mut b = Request::builder().method(method).uri("/");
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(Body::empty()).unwrap()
        };
        let mut ok = vec![
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        let accept = check(&req("GET", &ok)).unwrap();
        assert_eq!(accept.0, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(
            check(&req("POST", &ok)).unwrap_err(),
            HandshakeError::NotGet
        );
        ok[3].1 = "short";
        assert_eq!(
            check(&req("GET", &ok)).unwrap_err(),
            HandshakeError::KeyMalformed
        );
        assert_eq!(
            check(&req("GET", &ok[..3])).unwrap_err(),
            HandshakeError::KeyMissing
        );
        ok[2].1 = "8";
        assert_eq!(
            check(&req("GET", &ok)).unwrap_err(),
            HandshakeError::Version
        );
        assert_eq!(
            check(&req("GET", &ok[..1])).unwrap_err(),
            HandshakeError::NoConnectionUpgrade
        );
        assert_eq!(
            check(&req("GET", &ok[1..])).unwrap_err(),
            HandshakeError::NoUpgradeHeader
        );
        let mut r = req("GET", &ok);
        assert_eq!(
            take_upgrade(&mut r).unwrap_err(),
            HandshakeError::NotUpgradable
        );
    }
}
