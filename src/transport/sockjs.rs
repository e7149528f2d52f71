//! STOMP over SockJS at `/sockjs` (tenant `default`) and `/sockjs/{tenant}`: one SockJS service
//! per tenant, each session a STOMP connection. Every STOMP frame the node sends is one SockJS
//! message (frames queued together leave in one `a[...]` frame); a client message may hold
//! several frames or part of one, exactly as on `/ws`.
//!
//! SockJS carries text: a frame whose body is not UTF-8 arrives with invalid bytes replaced.
//! Binary payloads belong on `/ws` or TCP.
//!
//! A path below `/sockjs` names a tenant when its first segment is one and the rest is a
//! SockJS path of one, two or four segments (`/sockjs/acme/info`,
//! `/sockjs/acme/000/xyz/xhr`); the default tenant's paths have zero, one or three
//! (`/sockjs/info`, `/sockjs/000/xyz/xhr`), so the two never collide.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::BytesMut;
use tracing::{info_span, Instrument};

use crate::broker::outbox::Item;
use crate::connection::{self, TransportIn, TransportOut};
use crate::node::Node;
use crate::policy::TransportKind;
use crate::session::{Peer, Session};
use crate::sockjs::{Connection, Options, Refusal, Sender, SockJs};
use crate::tenant::Tenant;
use crate::web::json_error;

/// A tenant and the SockJS service made for it.
type Served = (Arc<Tenant>, Arc<SockJs>);

/// The SockJS services of a node's tenants, made on a tenant's first request and again when
/// the tenant is replaced (its settings changed); a deleted tenant's service goes with it.
pub struct SockJsServices {
    node: Arc<Node>,
    options: Options,
    services: RwLock<HashMap<String, Served>>,
}

impl SockJsServices {
    /// The services of `node`'s tenants, with the node's `[sockjs]` settings.
    pub fn new(node: &Arc<Node>) -> Arc<SockJsServices> {
        let c = &node.sockjs;
        let options = Options {
            websocket: c.websocket,
            cookie_needed: c.cookie_needed,
            heartbeat: Duration::from_millis(c.heartbeat_ms),
            disconnect_delay: Duration::from_millis(c.disconnect_delay_ms),
            response_limit: c.response_limit_bytes,
            client_url: c.client_url.clone(),
            // A client message may carry a whole frame, JSON-escaped (up to 6 bytes a byte).
            max_payload_bytes: node.server.max_frame_bytes * 6 + 4096,
            max_queue_bytes: 256 * 1024,
            // The same subprotocols as `/ws`, so strict clients accept the raw websocket too.
            subprotocols: super::ws::SUBPROTOCOLS.map(String::from).to_vec(),
            tasks: node.tasks.clone(),
            shutdown: node.shutdown.clone(),
            // Set per tenant, from its allowed origins.
            null_origin_credentials: false,
            trusted_proxies: c.trusted_proxies.clone(),
        };
        Arc::new(SockJsServices {
            node: node.clone(),
            options,
            services: RwLock::new(HashMap::new()),
        })
    }

    /// Tenant `id` and its service, while the node serves it.
    fn service(&self, id: &str) -> Option<Served> {
        let Some(tenant) = self.node.tenant(id) else {
            self.services
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
            return None;
        };
        if let Some((served, service)) = self
            .services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            if Arc::ptr_eq(served, &tenant) {
                return Some((tenant, service.clone()));
            }
        }
        let handler = StompHandler {
            node: self.node.clone(),
            tenant: tenant.clone(),
        };
        // Whether a page with `Origin: null` gets credentials is settled when the service is
        // made: origins changed in place apply to every check but this one.
        let options = Options {
            null_origin_credentials: tenant.allowed_origins().allows_null_origin(),
            ..self.options.clone()
        };
        let service = SockJs::new(options, handler);
        self.services
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), (tenant.clone(), service.clone()));
        Some((tenant, service))
    }

    /// Answers any request under `/sockjs`.
    pub async fn serve(self: Arc<Self>, req: Request) -> Response {
        let path = req
            .uri()
            .path()
            .strip_prefix("/sockjs")
            .unwrap_or("")
            .to_string();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let named = segments.first().and_then(|first| {
            let own_path =
                matches!(segments.len(), 2 | 4) || (segments.len() == 1 && !is_top_level(first));
            own_path
                .then(|| self.service(first))
                .flatten()
                .map(|entry| (entry, path[1 + first.len()..].to_string()))
        });
        let ((tenant, service), rest) = match named {
            Some((entry, rest)) => (entry, rest),
            None => match self.service(crate::config::DEFAULT_TENANT) {
                Some(entry) => (entry, path.clone()),
                None => {
                    return json_error(
                        StatusCode::NOT_FOUND,
                        "this node has no 'default' tenant; connect to /sockjs/{tenant}",
                    )
                }
            },
        };
        if !tenant.allowed_origins().permits(req.headers()) {
            return json_error(
                StatusCode::FORBIDDEN,
                &format!("origin not allowed for tenant '{}'", tenant.id),
            );
        }
        service.clone().serve(req, &rest).await
    }
}

/// Names a SockJS service answers at its top level.
fn is_top_level(name: &str) -> bool {
    name.is_empty() || name == "info" || name == "websocket" || name.starts_with("iframe")
}

struct StompHandler {
    node: Arc<Node>,
    tenant: Arc<Tenant>,
}

impl crate::sockjs::Handler for StompHandler {
    fn open(&self, mut connection: Connection) -> Result<(), Refusal> {
        // The origin was checked before the service was asked; the session keeps only what
        // its tenant's policy may read at CONNECT, and a session that kept every header would
        // hold them for as long as it lives.
        let request_headers = super::request_headers(&connection.info.headers);
        connection.info.headers = HeaderMap::new();
        let permit = self.node.admit().map_err(|why| Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: why.message().into(),
        })?;
        let peer = connection.info.peer.map(|p| p.to_string());
        let from = Peer {
            transport: TransportKind::SockJs,
            remote_addr: peer.clone(),
            tenant: Some(self.tenant.clone()),
            request_headers,
        };
        let node = self.node.clone();
        let session = Session::new(node.session_context(), from);
        let span = info_span!(
            "conn",
            transport = "sockjs",
            sockjs = connection.info.transport.as_str(),
            tenant = %self.tenant.id,
            session = %session.id(),
            peer = peer.as_deref().unwrap_or("-"),
        );
        let sender = connection.sender();
        // A stored message handed to a poll counts as delivered once the next poll comes (see
        // broker::cursor), so the SockJS session tells the connection about its receivers.
        let attachment = session.endpoint().attachment.clone();
        attachment.relayed();
        connection.watch_receivers(move |attached| {
            if attached {
                attachment.attached();
            } else {
                attachment.detached(crate::util::unix_ms());
            }
        });
        self.node.tasks.spawn(
            async move {
                connection::run(node, session, SockJsIn(connection), SockJsOut(sender)).await;
                drop(permit);
            }
            .instrument(span),
        );
        Ok(())
    }
}

struct SockJsIn(Connection);

impl TransportIn for SockJsIn {
    async fn fill(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            match self.0.recv().await {
                None => return Ok(0),
                Some(message) if message.is_empty() => continue,
                Some(message) => {
                    buf.extend_from_slice(message.as_bytes());
                    return Ok(message.len());
                }
            }
        }
    }
}

struct SockJsOut(Sender);

impl TransportOut for SockJsOut {
    async fn write(&mut self, items: Vec<Item>) -> io::Result<()> {
        let messages = items
            .iter()
            .map(|item| {
                let mut bytes = Vec::with_capacity(item.len());
                bytes.extend_from_slice(&item.head);
                bytes.extend_from_slice(&item.tail);
                String::from_utf8(bytes)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
            })
            .collect();
        // Written once a receiver took it, not when it was queued in the SockJS session: the
        // writer marks stored messages delivered after this returns, and a page that reloaded
        // never fetches what waits in its old session.
        self.0
            .send_and_hand_over(messages)
            .await
            .map_err(io::Error::other)
    }

    async fn close(&mut self) {
        self.0.close(3000, "Go away!");
    }
}
