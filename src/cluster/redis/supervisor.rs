//! Keeps the node in the cluster: connects to Redis, runs one connected period
//! ([`super::connected`]) and, when the connection is lost, marks the backplane down and
//! connects again with backoff (0.1 s doubling to 5 s), until the backplane is stopped.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::connected::{self, Control};
use super::{RedisBackplane, RedisError, REDIS_TIMEOUT};
use crate::cluster::LocalNode;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Connects, announces, listens; reconnects with backoff until `stop`.
pub async fn run(
    backplane: Arc<RedisBackplane>,
    local: Arc<dyn LocalNode>,
    mut control: mpsc::UnboundedReceiver<Control>,
    stop: CancellationToken,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut connected_before = false;
    let mut outage_logged = false;
    loop {
        // What changed while disconnected is in the broker's state, announced again on connect.
        while control.try_recv().is_ok() {}
        if stop.is_cancelled() {
            return;
        }
        let attempt = tokio::time::timeout(REDIS_TIMEOUT * 2, connect(&backplane.client)).await;
        let (conn, pubsub) = match attempt {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                mark_down(&backplane, &e.into(), &mut outage_logged);
                if sleep_or_stop(backoff, &stop).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(_) => {
                mark_down(&backplane, &RedisError::ConnectTimeout, &mut outage_logged);
                if sleep_or_stop(backoff, &stop).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = FIRST_BACKOFF;
        outage_logged = false;
        let period = connected::Period {
            backplane: &backplane,
            local: &local,
            stop: &stop,
            reconnected: connected_before,
        };
        match period.serve(conn, pubsub, &mut control).await {
            Ok(()) => return,
            Err(e) => {
                connected_before = true;
                mark_down(&backplane, &e, &mut outage_logged);
            }
        }
    }
}

fn mark_down(backplane: &RedisBackplane, reason: &RedisError, logged: &mut bool) {
    backplane.ready.store(false, Ordering::Release);
    *backplane.conn.write().unwrap_or_else(|e| e.into_inner()) = None;
    *backplane
        .last_error
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(reason.to_string());
    if !*logged {
        warn!(error = %reason, "Redis unreachable; serving local sessions and retrying");
        *logged = true;
    }
}

async fn connect(
    client: &redis::Client,
) -> redis::RedisResult<(MultiplexedConnection, redis::aio::PubSub)> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT));
    let conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let pubsub = client.get_async_pubsub().await?;
    Ok((conn, pubsub))
}

/// Sleeps `wait`; true when `stop` came first.
async fn sleep_or_stop(wait: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(wait) => false,
    }
}
