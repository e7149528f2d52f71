//! The two WebSocket transports: `/<server>/<session>/websocket` with SockJS framing (open,
//! heartbeat, array and close frames; the client sends JSON arrays of strings), and the raw
//! `/websocket`, one message per WebSocket message and nothing else. A WebSocket session lives
//! exactly as long as its socket, so it is never put in the session map.
//!
//! The handshake, reader and writer are the shared [`crate::web::websocket`], in message mode;
//! the subprotocol answered is the first of [`super::Options::subprotocols`] the client
//! offered. Each socket's task runs on the service's task tracker; at shutdown the application
//! gets [`SHUTDOWN_GRACE`] to close its session, then the service closes it.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::Response;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::frame;
use super::http::render;
use super::session::{Next, OpenInfo, Receiver, Transport, GO_AWAY};
use super::{method_not_allowed, SockJs};
use crate::web::websocket::{self, HandshakeError, Message, WsReader, WsWriter};
use crate::web::wsframe::Opcode;

/// How long the application has, once the service shuts down, to close a WebSocket session
/// itself (with its own last messages) before the service closes it with `3000 Go away!`.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// `/<server>/<session>/websocket`.
pub async fn framed(service: Arc<SockJs>, req: Request) -> Response {
    upgrade(service, req, Transport::WebSocket).await
}

/// `/websocket`.
pub async fn raw(service: Arc<SockJs>, req: Request) -> Response {
    upgrade(service, req, Transport::RawWebSocket).await
}

async fn upgrade(service: Arc<SockJs>, mut req: Request, transport: Transport) -> Response {
    let accept = match websocket::check(&req) {
        Ok(accept) => accept,
        Err(e) => return refused(e),
    };
    let protocol = websocket::choose_subprotocol(req.headers(), &service.options.subprotocols)
        .map(str::to_owned);
    let on_upgrade = match websocket::take_upgrade(&mut req) {
        Ok(on_upgrade) => on_upgrade,
        Err(e) => return refused(e),
    };
    let info = OpenInfo::of(transport, &req);
    let framed = transport == Transport::WebSocket;
    let session = match service.open(None, info, !framed) {
        Ok(session) => session,
        Err(refusal) => {
            let mut response = Response::new(Body::from(refusal.message + "\n"));
            *response.status_mut() = refusal.status;
            return response;
        }
    };
    let Some(receiver) = session.attach() else {
        // A fresh session has no receiver; this cannot happen, but must not panic.
        return bad_request("session busy");
    };
    let heartbeat = framed.then_some(service.options.heartbeat);
    let max_message = service.options.max_payload_bytes;
    let shutdown = service.options.shutdown.clone();
    service.options.tasks.spawn(async move {
        match websocket::open(on_upgrade, max_message).await {
            Ok((reader, writer)) => {
                run(reader, writer, receiver, framed, heartbeat, shutdown).await;
            }
            // The receiver, dropped unfinished, interrupts the session.
            Err(e) => debug!(error = %e, "upgrade failed"),
        }
    });
    websocket::switching_protocols(&accept, protocol.as_deref())
}

/// A refused handshake, answered as SockJS servers answer it (plain text).
fn refused(e: HandshakeError) -> Response {
    let (status, message) = match e {
        HandshakeError::NotGet => return method_not_allowed("GET"),
        HandshakeError::NoUpgradeHeader => (
            StatusCode::BAD_REQUEST,
            "Can \"Upgrade\" only to \"WebSocket\".",
        ),
        HandshakeError::NoConnectionUpgrade => (
            StatusCode::BAD_REQUEST,
            "\"Connection\" must be \"Upgrade\".",
        ),
        HandshakeError::Version => (
            StatusCode::BAD_REQUEST,
            "`Sec-WebSocket-Version` header did not include '13'",
        ),
        HandshakeError::KeyMissing => (
            StatusCode::BAD_REQUEST,
            "`Sec-WebSocket-Key` header missing",
        ),
        HandshakeError::KeyMalformed => (
            StatusCode::BAD_REQUEST,
            "`Sec-WebSocket-Key` header malformed",
        ),
        HandshakeError::NotUpgradable => (
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket request couldn't be upgraded since no upgrade state was present",
        ),
    };
    let mut response = bad_request(message);
    *response.status_mut() = status;
    response
}

fn bad_request(message: &'static str) -> Response {
    let mut response = Response::new(Body::from(message));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    response
}

/// Carries one session over one socket until either side closes.
async fn run(
    mut reader: WsReader,
    writer: WsWriter,
    receiver: Receiver,
    framed: bool,
    heartbeat: Option<Duration>,
    shutdown: CancellationToken,
) {
    let session = receiver.session().clone();
    // Set once the service shuts down: when the service closes the session itself.
    let mut closing_at: Option<tokio::time::Instant> = None;
    let mut closed_by_service = false;
    loop {
        let grace_over = async {
            match closing_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            incoming = reader.read_message() => {
                let text = match incoming {
                    Ok(Some(Message { text: true, data })) => String::from_utf8(data.to_vec())
                        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
                    Ok(Some(Message { text: false, data })) => {
                        String::from_utf8_lossy(&data).into_owned()
                    }
                    // The client left: the receiver, dropped unfinished, interrupts the session.
                    Ok(None) => {
                        writer.lock().await.close(Some((websocket::NORMAL, ""))).await;
                        return;
                    }
                    Err(e) => {
                        if websocket::violation(&e).is_some() {
                            let code = writer.close_code();
                            writer.lock().await.close(Some((code, ""))).await;
                        }
                        return;
                    }
                };
                if !framed {
                    session.deliver(vec![text]).await;
                } else if text.is_empty() {
                    continue;
                } else {
                    match frame::decode(text.as_bytes()) {
                        Ok(messages) => session.deliver(messages).await,
                        Err(_) => {
                            // Broken JSON: the protocol says to end the connection abruptly.
                            writer.lock().await.close(None).await;
                            return;
                        }
                    }
                }
            }
            next = receiver.next(heartbeat) => {
                let closing = match &next {
                    Next::Close(code, reason) => Some((*code, reason.clone())),
                    _ => None,
                };
                let mut sink = writer.lock().await;
                let sent = if framed {
                    sink.message(Opcode::Text, &[render(next).as_bytes()]).await
                } else if let Next::Messages(messages) = next {
                    let mut result = Ok(());
                    for message in messages {
                        result = sink.message(Opcode::Text, &[message.as_bytes()]).await;
                        if result.is_err() {
                            break;
                        }
                    }
                    result
                } else {
                    Ok(())
                };
                if sent.is_err() {
                    return;
                }
                if let Some((code, reason)) = closing {
                    sink.close(Some((code, &reason))).await;
                    drop(sink);
                    receiver.finish();
                    return;
                }
            }
            _ = shutdown.cancelled(), if closing_at.is_none() && !closed_by_service => {
                closing_at = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
            }
            () = grace_over => {
                session.close(GO_AWAY.0, GO_AWAY.1);
                closing_at = None;
                closed_by_service = true;
            }
        }
    }
}
