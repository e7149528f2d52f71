//! Runs a node on already-bound listeners until its shutdown token is cancelled. Taking bound
//! listeners lets tests bind port 0.
//!
//! Every task the node starts is on its tracker (accept loops, HTTP connections, sessions and
//! their writers, the plugin watcher, ingress work); the cluster backplane tracks its own.
//! Shutdown runs in this order: the accept loops stop, every session is sent an ERROR and
//! closes (each last session of a user withdraws its presence), the server waits for that up to
//! `shutdown_grace_ms`, and only then does the node leave the cluster, so other nodes learn at
//! once that its users are gone rather than after `node_ttl_ms`.
//!
//! HTTP connections are served by hyper's HTTP/1 server directly rather than through
//! `axum::serve`: its protocol-sniffing wrapper would stay around every upgraded WebSocket,
//! while plain HTTP/1 hands back the bare `TcpStream`, which the WebSocket transport splits
//! and reads without holding a buffer while idle.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower_service::Service;
use tracing::{info, warn};

use crate::node::Node;
use crate::{http, transport};

/// Serves HTTP/WebSocket on `http` and STOMP over TCP on `stomp` until `node.shutdown`.
pub async fn run(node: Arc<Node>, http: TcpListener, stomp: TcpListener) -> std::io::Result<()> {
    node.start_cluster();
    node.tasks.spawn(transport::tcp::serve(stomp, node.clone()));
    let watched = Arc::downgrade(&node);
    node.tasks.spawn(crate::plugin::watch::watch(
        move || {
            watched.upgrade().map_or_else(Vec::new, |node| {
                node.tenants().iter().map(|t| t.plugin().clone()).collect()
            })
        },
        Duration::from_millis(node.server.plugin_poll_ms),
        node.shutdown.clone(),
    ));
    let grace = Duration::from_millis(node.server.shutdown_grace_ms);
    node.tasks
        .spawn(serve_http(http, http::router(node.clone()), node.clone()));
    node.shutdown.cancelled().await;
    info!("shutting down");
    node.tasks.close();
    if tokio::time::timeout(grace, node.tasks.wait())
        .await
        .is_err()
    {
        warn!(
            open = node.open_connections(),
            "grace period over; closing the remaining connections"
        );
    }
    node.stop_upstream().await;
    node.cluster.stop().await;
    Ok(())
}

/// Accepts HTTP connections until shutdown; each is served on its own task, and asked to finish
/// its current request and close at shutdown.
async fn serve_http(listener: TcpListener, router: axum::Router, node: Arc<Node>) {
    while let Some((stream, peer)) = transport::io::accept(&listener, &node.shutdown).await {
        let router = router.clone();
        let shutdown = node.shutdown.clone();
        node.tasks.spawn(async move {
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                let mut router = router.clone();
                async move { router.call(req.map(axum::body::Body::new)).await }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
