//! The two WebSocket transports: `/<server>/<session>/websocket` with SockJS framing (open,
//! heartbeat, array and close frames; the client sends JSON arrays of strings), and the raw
//! `/websocket`, one message per WebSocket message and nothing else. A WebSocket session lives
//! exactly as long as its socket, so it is never put in the session map.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};

use super::frame;
use super::http::render;
use super::session::{Next, OpenInfo, Receiver, Transport};
use super::{method_not_allowed, SockJs};
use crate::web::has_token;

/// `/<server>/<session>/websocket`.
pub async fn framed(service: Arc<SockJs>, req: Request) -> Response {
    upgrade(service, req, Transport::WebSocket).await
}

/// `/websocket`.
pub async fn raw(service: Arc<SockJs>, req: Request) -> Response {
    upgrade(service, req, Transport::RawWebSocket).await
}

async fn upgrade(service: Arc<SockJs>, req: Request, transport: Transport) -> Response {
    if req.method() != Method::GET {
        return method_not_allowed("GET");
    }
    let headers = req.headers();
    if !has_token(headers, header::UPGRADE, "websocket") {
        return bad_request("Can \"Upgrade\" only to \"WebSocket\".");
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return bad_request("\"Connection\" must be \"Upgrade\".");
    }
    let info = OpenInfo::of(transport, &req);
    let (mut parts, _) = req.into_parts();
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
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
    ws.max_message_size(service.options.max_payload_bytes)
        .on_upgrade(move |socket| run(socket, receiver, framed, heartbeat))
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

async fn run(
    socket: WebSocket,
    receiver: Receiver,
    framed: bool,
    heartbeat: Option<std::time::Duration>,
) {
    let session = receiver.session().clone();
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            incoming = stream.next() => {
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => text.to_string(),
                    Some(Ok(Message::Binary(data))) => String::from_utf8_lossy(&data).into_owned(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    // The client left: the receiver, dropped unfinished, interrupts the session.
                    None | Some(Ok(Message::Close(_))) | Some(Err(_)) => return,
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
                            let _ = sink.close().await;
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
                let sent = if framed {
                    sink.send(Message::Text(render(next).into())).await
                } else if let Next::Messages(messages) = next {
                    let mut result = Ok(());
                    for message in messages {
                        result = sink.feed(Message::Text(message.into())).await;
                        if result.is_err() {
                            break;
                        }
                    }
                    match result {
                        Ok(()) => sink.flush().await,
                        Err(e) => Err(e),
                    }
                } else {
                    Ok(())
                };
                if sent.is_err() {
                    return;
                }
                if let Some((code, reason)) = closing {
                    let close = CloseFrame { code, reason: reason.into() };
                    let _ = sink.send(Message::Close(Some(close))).await;
                    receiver.finish();
                    return;
                }
            }
        }
    }
}
