//! STOMP over WebSocket at `/ws` and `/ws/{tenant}` (subprotocols `v10.stomp`, `v11.stomp`,
//! `v12.stomp`). Text and binary messages are both accepted; a message may hold several frames
//! or part of one. Outgoing frames queued together leave in one WebSocket message (text when
//! every frame is valid UTF-8, binary otherwise), which STOMP clients split at each frame's NUL.
//!
//! The handshake checks, the reader and the writer are the shared [`crate::web::websocket`]
//! (also under SockJS's websocket transports); this module is the STOMP side: the tenant, the
//! origin check, admission, and batching at frame boundaries. A batch is written as one frame
//! header plus the frames' own shared bytes in one gathered write, and an idle connection
//! keeps no read or write buffer.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::BytesMut;
use tracing::{debug, info_span, Instrument};

use crate::broker::outbox::Item;
use crate::connection::{self, TransportIn, TransportOut};
use crate::node::Node;
use crate::policy::TransportKind;
use crate::session::{Peer, Session};
use crate::tenant::Tenant;
use crate::web::json_error;
use crate::web::websocket::{self, HandshakeError, WsReader, WsWriter};
use crate::web::wsframe::Opcode;

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
    match node.default_tenant() {
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
    match node.tenant(&tenant) {
        Some(tenant) => upgrade(node, tenant, peer, req),
        None => json_error(StatusCode::NOT_FOUND, &format!("unknown tenant '{tenant}'")),
    }
}

/// The subprotocol to answer with: the most preferred one the client offered.
fn choose_subprotocol(headers: &HeaderMap) -> Option<&'static str> {
    websocket::choose_subprotocol(headers, &SUBPROTOCOLS)
}

/// A refused handshake, answered in this endpoint's JSON.
fn refused(e: HandshakeError) -> Response {
    match e {
        HandshakeError::NotGet => json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "a WebSocket upgrade is a GET",
        ),
        HandshakeError::NoUpgradeHeader | HandshakeError::NoConnectionUpgrade => {
            let mut response = json_error(
                StatusCode::UPGRADE_REQUIRED,
                "this endpoint speaks STOMP over WebSocket: send a WebSocket upgrade (Upgrade: websocket, Connection: Upgrade)",
            );
            response
                .headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            response
        }
        HandshakeError::Version => {
            let mut response = json_error(
                StatusCode::UPGRADE_REQUIRED,
                "unsupported WebSocket version: use Sec-WebSocket-Version: 13",
            );
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            response
        }
        HandshakeError::KeyMissing | HandshakeError::KeyMalformed => json_error(
            StatusCode::BAD_REQUEST,
            "missing or malformed Sec-WebSocket-Key",
        ),
        HandshakeError::NotUpgradable => json_error(
            StatusCode::BAD_REQUEST,
            "this connection cannot be upgraded (WebSocket needs HTTP/1.1)",
        ),
    }
}

fn upgrade(node: Arc<Node>, tenant: Arc<Tenant>, peer: SocketAddr, mut req: Request) -> Response {
    let accept = match websocket::check(&req) {
        Ok(accept) => accept,
        Err(e) => return refused(e),
    };
    if !tenant.allowed_origins().permits(req.headers()) {
        return json_error(
            StatusCode::FORBIDDEN,
            &format!("origin not allowed for tenant '{}'", tenant.id),
        );
    }
    let protocol = choose_subprotocol(req.headers());
    let on_upgrade = match websocket::take_upgrade(&mut req) {
        Ok(on_upgrade) => on_upgrade,
        Err(e) => return refused(e),
    };
    let permit = match node.admit() {
        Ok(permit) => permit,
        Err(why) => return json_error(StatusCode::SERVICE_UNAVAILABLE, why.message()),
    };
    let from = Peer {
        transport: TransportKind::WebSocket,
        remote_addr: Some(peer.to_string()),
        tenant: Some(tenant.clone()),
        request_headers: super::request_headers(req.headers()),
    };
    let session = Session::new(node.session_context(), from);
    let span = info_span!("conn", transport = "ws", tenant = %tenant.id, session = %session.id(), peer = %peer);
    // A message may carry a whole frame plus heart-beats and a few small frames around it.
    let max_message = node.server.max_frame_bytes + 4096;
    let tasks = node.tasks.clone();
    tasks.spawn(
        async move {
            match websocket::open(on_upgrade, max_message).await {
                Ok((reader, writer)) => {
                    connection::run(node, session, WsIn(reader), WsOut(writer)).await;
                }
                Err(e) => debug!(error = %e, "upgrade failed"),
            }
            drop(permit);
        }
        .instrument(span),
    );
    websocket::switching_protocols(&accept, protocol)
}

/// Hands the payload of client messages to the STOMP decoder, as a byte stream.
struct WsIn(WsReader);

impl TransportIn for WsIn {
    async fn fill(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        // A violation ends the connection: the session sends its ERROR frame, then the writer
        // closes with the violation's code.
        self.0.read_stream(buf).await
    }
}

/// Writes batches as WebSocket messages.
struct WsOut(WsWriter);

impl TransportOut for WsOut {
    async fn write(&mut self, items: Vec<Item>) -> io::Result<()> {
        let mut out = self.0.lock().await;
        let mut rest = &items[..];
        let mut parts: Vec<&[u8]> = Vec::new();
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
            parts.clear();
            parts.extend(
                batch
                    .iter()
                    .flat_map(|item| [&item.head[..], &item.tail[..]]),
            );
            out.message(opcode, &parts).await?;
        }
        Ok(())
    }

    async fn close(&mut self) {
        let code = self.0.close_code();
        self.0.lock().await.close(Some((code, ""))).await;
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
