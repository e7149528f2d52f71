//! Accepting connections for the transports and the HTTP server. The socket reads and writes
//! they share with the WebSocket layer live in [`crate::web::socket`].

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The next connection, with `TCP_NODELAY` set (writes are batched already, so waiting to
/// coalesce them only adds latency); `None` once `shutdown` is cancelled. Accept errors (e.g.
/// out of file descriptors) are logged and retried after a pause: a listener never dies.
pub async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return Some((stream, peer));
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
