//! The four services the SockJS protocol test suite expects, on stompbox's SockJS layer:
//! `/echo`, `/close`, `/disabled_websocket_echo` and `/cookie_needed_echo`, with streaming
//! responses closed after 4096 bytes as the suite asks of a test server.
//!
//! `cargo run --example sockjs_echo -- 127.0.0.1:8081`, then point the suite (or
//! sockjs-client) at `http://127.0.0.1:8081/echo`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use stompbox::sockjs::{Connection, Options, Refusal, SockJs};

/// The four test services.
pub fn app(heartbeat: Duration, disconnect_delay: Duration) -> Router {
    let base = Options {
        heartbeat,
        disconnect_delay,
        response_limit: 4096,
        ..Options::default()
    };
    let echo_service = SockJs::new(base.clone(), echo);
    let close = SockJs::new(
        base.clone(),
        |connection: Connection| -> Result<(), Refusal> {
            connection.sender().close(3000, "Go away!");
            Ok(())
        },
    );
    let no_websocket = SockJs::new(
        Options {
            websocket: false,
            ..base.clone()
        },
        echo,
    );
    let cookie = SockJs::new(
        Options {
            cookie_needed: true,
            ..base
        },
        echo,
    );
    let router = echo_service.mount(Router::new(), "/echo");
    let router = close.mount(router, "/close");
    let router = no_websocket.mount(router, "/disabled_websocket_echo");
    cookie.mount(router, "/cookie_needed_echo")
}

/// Sends every message back.
fn echo(mut connection: Connection) -> Result<(), Refusal> {
    tokio::spawn(async move {
        let sender = connection.sender();
        while let Some(message) = connection.recv().await {
            if sender.send(vec![message]).await.is_err() {
                break;
            }
        }
    });
    Ok(())
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "SockJS test services on http://{}/echo",
        listener.local_addr()?
    );
    let app = app(Duration::from_secs(25), Duration::from_secs(5));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}
