//! STOMP over WebSocket at `/ws` and `/ws/{tenant}` (subprotocols `v10.stomp`, `v11.stomp`,
//! `v12.stomp`). Text and binary messages are both accepted; a message may hold several frames
//! or part of one. Outgoing frames queued together leave in one WebSocket message (text when
//! every frame is valid UTF-8, binary otherwise), which STOMP clients split at each frame's NUL.
//!
//! The handshake is answered here and the upgraded socket framed by [`crate::web::wsframe`]: a batch
//! is written as one frame header plus the frames' own shared bytes in one gathered write, and
//! an idle connection keeps no read or write buffer.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::BytesMut;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tracing::{debug, info_span, Instrument};

use super::io::{read_ready, write_all_vectored};
use crate::broker::outbox::Item;
use crate::connection::{self, TransportIn, TransportOut};
use crate::node::Node;
use crate::policy::TransportKind;
use crate::session::{Peer, Session};
use crate::tenant::Tenant;
use crate::web::wsframe::{self, Opcode, Violation};
use crate::web::{has_token, json_error};

/// The subprotocols offered, most preferred first.
pub const SUBPROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];

/// Largest WebSocket message sent at once; a bigger batch is split at frame boundaries.
const MAX_BATCH: usize = 64 * 1024;

/// `GET /ws`: tenant `default`.
pub async fn upgrade_default(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    match node.default_tenant().cloned() {
        Some(tenant) => upgrade(node, tenant, peer, req),
        None => json_error(
            StatusCode::NOT_FOUND,
            "this node has no 'default' tenant; connect to /ws/{tenant}",
        ),
    }
}

/// `GET /ws/{tenant}`.
pub async fn upgrade_tenant(
    State(node): State<Arc<Node>>,
    Path(tenant): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    match node.tenant(&tenant).cloned() {
        Some(tenant) => upgrade(node, tenant, peer, req),
        None => json_error(StatusCode::NOT_FOUND, &format!("unknown tenant '{tenant}'")),
    }
}

/// The subprotocol to answer with: the most preferred one the client offered.
fn choose_subprotocol(headers: &HeaderMap) -> Option<&'static str> {
    SUBPROTOCOLS
        .into_iter()
        .find(|p| has_token(headers, header::SEC_WEBSOCKET_PROTOCOL, p))
}

fn upgrade(node: Arc<Node>, tenant: Arc<Tenant>, peer: SocketAddr, mut req: Request) -> Response {
    let headers = req.headers();
    if req.method() != Method::GET {
        return json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "a WebSocket upgrade is a GET",
        );
    }
    if !has_token(headers, header::UPGRADE, "websocket")
        || !has_token(headers, header::CONNECTION, "upgrade")
    {
        let mut response = json_error(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks STOMP over WebSocket: send a WebSocket upgrade (Upgrade: websocket, Connection: Upgrade)",
        );
        response
            .headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return response;
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        let mut response = json_error(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version: use Sec-WebSocket-Version: 13",
        );
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return response;
    }
    let accept = match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(key) if wsframe::valid_key(key.as_bytes()) => wsframe::accept_key(key.as_bytes()),
        _ => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "missing or malformed Sec-WebSocket-Key",
            )
        }
    };
    if !tenant.allowed_origins.permits(headers) {
        return json_error(
            StatusCode::FORBIDDEN,
            &format!("origin not allowed for tenant '{}'", tenant.id),
        );
    }
    let protocol = choose_subprotocol(headers);
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "this connection cannot be upgraded (WebSocket needs HTTP/1.1)",
        );
    };
    let Some(permit) = node.admit() else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is at its connection limit; try again later",
        );
    };
    let from = Peer {
        transport: TransportKind::WebSocket,
        remote_addr: Some(peer.to_string()),
        tenant: Some(tenant.clone()),
    };
    let session = Session::new(node.sessions.clone(), from);
    let span = info_span!("conn", transport = "ws", tenant = %tenant.id, session = %session.id(), peer = %peer);
    // A message may carry a whole frame plus heart-beats and a few small frames around it.
    let max_message = node.server.max_frame_bytes + 4096;
    let tasks = node.tasks.clone();
    tasks.spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => {
                    debug!(error = %e, "upgrade failed");
                    return;
                }
            };
            match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) => {
                    let stream = parts.io.into_inner();
                    let _ = stream.set_nodelay(true);
                    let (read, write) = stream.into_split();
                    let out = shared(Writer::Tcp(write));
                    let mut inbound = WsIn::new(Reader::Tcp(read), out.clone(), max_message);
                    // Copied out and dropped now: `read_buf` is a view of the HTTP parser's
                    // whole read buffer, which would otherwise live as long as the connection.
                    inbound.raw.extend_from_slice(&parts.read_buf);
                    drop(parts.read_buf);
                    connection::run(node, session, inbound, WsOut(out)).await;
                }
                Err(upgraded) => {
                    // Served by something other than axum's TCP listener: generic halves.
                    let (read, write) = tokio::io::split(TokioIo::new(upgraded));
                    let out = shared(Writer::Other(write));
                    let inbound = WsIn::new(Reader::Other(read), out.clone(), max_message);
                    connection::run(node, session, inbound, WsOut(out)).await;
                }
            }
            drop(permit);
        }
        .instrument(span),
    );
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = protocol {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol),
        );
    }
    response
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

impl Writer {
    async fn write(&mut self, slices: &mut [IoSlice<'_>]) -> io::Result<()> {
        match self {
            Writer::Tcp(w) => write_all_vectored(w, slices).await,
            Writer::Other(w) => write_all_vectored(w, slices).await,
        }
    }

    async fn shutdown(&mut self) {
        let _ = match self {
            Writer::Tcp(w) => w.shutdown().await,
            Writer::Other(w) => w.shutdown().await,
        };
    }
}

/// The write half, shared: the writer task sends batches, the reader answers pings and, when
/// the client broke the protocol, sets the close code the writer ends with.
struct Shared {
    writer: Mutex<Writer>,
    close_code: AtomicU16,
}

type SharedWriter = Arc<Shared>;

fn shared(writer: Writer) -> SharedWriter {
    Arc::new(Shared {
        writer: Mutex::new(writer),
        close_code: AtomicU16::new(1000),
    })
}

/// Reads client frames and hands their payload to the STOMP decoder.
struct WsIn {
    reader: Reader,
    out: SharedWriter,
    /// Socket bytes not yet parsed; freed whenever empty.
    raw: BytesMut,
    /// The data frame whose payload is being read: its header and how much of it was read.
    frame: Option<(wsframe::Header, usize)>,
    /// A fragmented message is in progress: whether it is text, and its size so far.
    message: Option<(bool, usize)>,
    /// The end of a text message split inside a UTF-8 sequence, kept for the next piece.
    utf8_carry: Vec<u8>,
    max_message: usize,
}

impl WsIn {
    fn new(reader: Reader, out: SharedWriter, max_message: usize) -> WsIn {
        WsIn {
            reader,
            out,
            raw: BytesMut::new(),
            frame: None,
            message: None,
            utf8_carry: Vec::new(),
            max_message,
        }
    }

    /// Moves whole or partial payloads from `raw` into `buf`. Returns how many payload bytes
    /// were added, or `None` when the client sent a close frame.
    async fn parse(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        let mut added = 0;
        loop {
            if let Some((header, read)) = self.frame {
                let take = (header.payload_len - read).min(self.raw.len());
                if take == 0 && header.payload_len > read {
                    return Ok(Some(added));
                }
                let mut piece = self.raw.split_to(take);
                wsframe::unmask(&mut piece, header.mask, read);
                let text = self.message.is_some_and(|(text, _)| text);
                if text {
                    self.check_utf8(&piece, false)?;
                }
                buf.extend_from_slice(&piece);
                added += take;
                if read + take < header.payload_len {
                    self.frame = Some((header, read + take));
                    return Ok(Some(added));
                }
                self.frame = None;
                if header.fin {
                    if text {
                        self.check_utf8(&[], true)?;
                    }
                    self.message = None;
                }
                continue;
            }
            let Some(header) =
                wsframe::parse_header(&self.raw, self.max_message).map_err(refuse)?
            else {
                return Ok(Some(added));
            };
            if header.opcode.is_control() {
                if self.raw.len() < header.header_len + header.payload_len {
                    return Ok(Some(added));
                }
                let _ = self.raw.split_to(header.header_len);
                let mut payload = self.raw.split_to(header.payload_len);
                wsframe::unmask(&mut payload, header.mask, 0);
                match header.opcode {
                    Opcode::Ping => {
                        let pong = wsframe::server_frame(Opcode::Pong, &payload);
                        self.out
                            .writer
                            .lock()
                            .await
                            .write(&mut [IoSlice::new(&pong)])
                            .await?;
                    }
                    Opcode::Close => return Ok(None),
                    _ => {}
                }
                continue;
            }
            let size = match (header.opcode, self.message) {
                (Opcode::Continuation, Some((text, size))) => {
                    self.message = Some((text, size));
                    size
                }
                (Opcode::Continuation, None) => {
                    return Err(refuse(protocol_error("continuation without a message")))
                }
                (_, Some(_)) => {
                    return Err(refuse(protocol_error(
                        "new message inside a fragmented one",
                    )))
                }
                (opcode, None) => {
                    self.message = Some((opcode == Opcode::Text, 0));
                    0
                }
            };
            let total = size + header.payload_len;
            if total > self.max_message {
                return Err(refuse(Violation {
                    code: wsframe::TOO_BIG,
                    reason: "message too big",
                }));
            }
            if let Some((text, _)) = self.message {
                self.message = Some((text, total));
            }
            let _ = self.raw.split_to(header.header_len);
            self.frame = Some((header, 0));
        }
    }

    /// Validates text incrementally; a sequence cut at a piece boundary waits for the next.
    fn check_utf8(&mut self, piece: &[u8], end: bool) -> io::Result<()> {
        let mut data = std::mem::take(&mut self.utf8_carry);
        data.extend_from_slice(piece);
        match std::str::from_utf8(&data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() && !end => {
                self.utf8_carry = data[e.valid_up_to()..].to_vec();
                Ok(())
            }
            Err(_) => Err(refuse(Violation {
                code: 1007,
                reason: "text message is not valid UTF-8",
            })),
        }
    }
}

fn protocol_error(reason: &'static str) -> Violation {
    Violation { code: 1002, reason }
}

fn refuse(violation: Violation) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, violation)
}

impl WsIn {
    /// A violation ends the connection: the session sends its ERROR frame, then the writer
    /// closes with the violation's code.
    fn violated(&self, e: io::Error) -> io::Error {
        if let Some(v) = e.get_ref().and_then(|e| e.downcast_ref::<Violation>()) {
            self.out.close_code.store(v.code, Ordering::Relaxed);
        }
        e
    }
}

impl TransportIn for WsIn {
    async fn fill(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            let parsed = self.parse(buf).await.map_err(|e| self.violated(e))?;
            if self.raw.is_empty() {
                self.raw = BytesMut::new();
            }
            match parsed {
                None => return Ok(0),
                Some(0) => {}
                Some(n) => return Ok(n),
            }
            if self.reader.read(&mut self.raw).await? == 0 {
                return Ok(0);
            }
        }
    }
}

/// Writes batches as WebSocket messages.
struct WsOut(SharedWriter);

impl TransportOut for WsOut {
    async fn write(&mut self, items: Vec<Item>) -> io::Result<()> {
        let mut out = self.0.writer.lock().await;
        let mut rest = &items[..];
        while !rest.is_empty() {
            // As many frames as fit in one message (at least one).
            let mut len = 0;
            let count = rest
                .iter()
                .take_while(|item| {
                    let fits = len == 0 || len + item.len() <= MAX_BATCH;
                    if fits {
                        len += item.len();
                    }
                    fits
                })
                .count();
            let (batch, later) = rest.split_at(count);
            rest = later;
            let opcode = if batch.iter().all(|item| item.text) {
                Opcode::Text
            } else {
                Opcode::Binary
            };
            let mut header = [0u8; 10];
            let header_len = wsframe::server_header(opcode, len, &mut header);
            let mut slices = Vec::with_capacity(1 + 2 * batch.len());
            slices.push(IoSlice::new(&header[..header_len]));
            for item in batch {
                for part in [&item.head[..], &item.tail[..]] {
                    if !part.is_empty() {
                        slices.push(IoSlice::new(part));
                    }
                }
            }
            out.write(&mut slices).await?;
        }
        Ok(())
    }

    async fn close(&mut self) {
        let code = self.0.close_code.load(Ordering::Relaxed);
        let mut out = self.0.writer.lock().await;
        let close = wsframe::server_frame(Opcode::Close, &wsframe::close_payload(code, ""));
        let _ = out.write(&mut [IoSlice::new(&close)]).await;
        out.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subprotocol_preference() {
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("v10.stomp, v12.stomp"),
        );
        assert_eq!(choose_subprotocol(&h), Some("v12.stomp"));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("mqtt"),
        );
        assert_eq!(choose_subprotocol(&h), None);
    }
}
