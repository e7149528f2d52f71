//! Runs a node on already-bound listeners until its shutdown token is cancelled, then gives
//! connections a grace period to close. Taking bound listeners lets tests bind port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::node::Node;
use crate::{http, transport};

/// Serves HTTP/WebSocket on `http` and STOMP over TCP on `stomp` until `node.shutdown`.
pub async fn run(node: Arc<Node>, http: TcpListener, stomp: TcpListener) -> std::io::Result<()> {
    crate::router::start_cluster(&node);
    let tcp = tokio::spawn(transport::tcp::serve(stomp, node.clone()));
    tokio::spawn(crate::plugin::watch::watch(
        node.clone(),
        Duration::from_millis(node.server.plugin_poll_ms),
    ));
    let app = http::router(node.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let shutdown = node.shutdown.clone();
    let grace = Duration::from_millis(node.server.shutdown_grace_ms);
    let http_server = tokio::spawn(async move {
        axum::serve(http, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    });
    node.shutdown.cancelled().await;
    info!("shutting down");
    let _ = tcp.await;
    node.tasks.close();
    let drained = tokio::time::timeout(grace, async {
        node.tasks.wait().await;
        let _ = http_server.await;
    })
    .await;
    if drained.is_err() {
        warn!(
            open = node.open_connections(),
            "grace period over; closing the remaining connections"
        );
    }
    Ok(())
}
