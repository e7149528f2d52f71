//! STOMP over WebSocket at `/ws` and `/ws/{tenant}` (subprotocols `v10.stomp`, `v11.stomp`,
//! `v12.stomp`). Text and binary messages are both accepted; a message may hold several frames
//! or part of one. Outgoing frames queued together leave in one WebSocket message (text when it
//! is valid UTF-8, binary otherwise), which STOMP clients split at each frame's NUL.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tracing::{info_span, Instrument};

use crate::broker::outbox::Item;
use crate::connection::{self, Inbound, Outbound};
use crate::http::json_error;
use crate::node::{Node, Tenant};
use crate::policy::TransportKind;
use crate::session::{Origin, Session};

/// The subprotocols offered, most preferred first.
pub const SUBPROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];

/// Largest WebSocket message sent at once; a bigger batch is split at frame boundaries.
const MAX_BATCH: usize = 64 * 1024;

/// `GET /ws`: tenant `default`.
pub async fn upgrade_default(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    match node.default_tenant().cloned() {
        Some(tenant) => upgrade(node, tenant, peer, &headers, ws),
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
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    match node.tenant(&tenant).cloned() {
        Some(tenant) => upgrade(node, tenant, peer, &headers, ws),
        None => json_error(StatusCode::NOT_FOUND, &format!("unknown tenant '{tenant}'")),
    }
}

fn upgrade(
    node: Arc<Node>,
    tenant: Arc<Tenant>,
    peer: SocketAddr,
    headers: &HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !tenant.allowed_origins.permits(headers) {
        return json_error(
            StatusCode::FORBIDDEN,
            &format!("origin not allowed for tenant '{}'", tenant.id),
        );
    }
    let Some(permit) = node.admit() else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is at its connection limit; try again later",
        );
    };
    // A message may carry a whole frame plus heart-beats and a few small frames around it.
    let max_message = node.server.max_frame_bytes + 4096;
    let tracker = node.tasks.clone();
    ws.protocols(SUBPROTOCOLS)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        // Small buffers: most connections are idle most of the time.
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .on_upgrade(move |socket| {
            let origin = Origin {
                transport: TransportKind::WebSocket,
                remote_addr: Some(peer.to_string()),
                tenant: Some(tenant.clone()),
            };
            let session = Session::new(node.clone(), origin);
            let span = info_span!("conn", transport = "ws", tenant = %tenant.id, session = %session.id(), peer = %peer);
            // axum runs this detached; tracking it lets shutdown wait for it.
            tracker.track_future(
                async move {
                    let (sink, stream) = socket.split();
                    connection::run(node, session, WsIn(stream), WsOut(sink)).await;
                    drop(permit);
                }
                .instrument(span),
            )
        })
        .into_response()
}

struct WsIn(SplitStream<WebSocket>);

impl Inbound for WsIn {
    async fn fill(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            let data: Bytes = match self.0.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(0),
                Some(Ok(Message::Text(text))) => Bytes::from(text),
                Some(Ok(Message::Binary(data))) => data,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Err(e)) => return Err(io::Error::other(e)),
            };
            if data.is_empty() {
                continue;
            }
            buf.extend_from_slice(&data);
            return Ok(data.len());
        }
    }
}

struct WsOut(SplitSink<WebSocket, Message>);

impl WsOut {
    async fn send_batch(&mut self, batch: BytesMut) -> io::Result<()> {
        let bytes = batch.freeze();
        let message = match Utf8Bytes::try_from(bytes.clone()) {
            Ok(text) => Message::Text(text),
            Err(_) => Message::Binary(bytes),
        };
        self.0.send(message).await.map_err(io::Error::other)
    }
}

impl Outbound for WsOut {
    async fn write(&mut self, items: Vec<Item>) -> io::Result<()> {
        let mut batch = BytesMut::new();
        for item in &items {
            if !batch.is_empty() && batch.len() + item.len() > MAX_BATCH {
                self.send_batch(std::mem::take(&mut batch)).await?;
            }
            batch.reserve(item.len());
            batch.put_slice(&item.head);
            batch.put_slice(&item.tail);
        }
        if !batch.is_empty() {
            self.send_batch(batch).await?;
        }
        Ok(())
    }

    async fn close(&mut self) {
        let _ = self.0.send(Message::Close(None)).await;
        let _ = self.0.close().await;
    }
}
