//! Hot reload from disk: every tenant whose plugin comes from a file is polled, and a changed
//! file is compiled, checked and swapped in off the request path.
//!
//! Polling the file's size and modification time (once a second by default) instead of kernel
//! file notifications keeps this portable and dependency-free, and it sees every way operators
//! replace files (in place, `cp`, `mv` over it, a deploy tool's rename). A reload a second late
//! costs nothing; a missed one would.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::warn;

use crate::node::Node;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    len: u64,
    modified: Option<SystemTime>,
}

fn look(path: &std::path::Path) -> Option<Seen> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Seen {
        len: meta.len(),
        modified: meta.modified().ok(),
    })
}

/// Watches every tenant's plugin file until shutdown.
pub async fn watch(node: Arc<Node>, every: Duration) {
    let slots: Vec<_> = node
        .tenants()
        .filter_map(|t| t.plugin().path().map(|p| (t.clone(), p.to_path_buf())))
        .collect();
    if slots.is_empty() {
        return;
    }
    let mut seen: Vec<Option<Seen>> = slots.iter().map(|(_, p)| look(p)).collect();
    let mut missing_reported = vec![false; slots.len()];
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        for (i, (tenant, path)) in slots.iter().enumerate() {
            let now = look(path);
            if now.is_none() {
                if !missing_reported[i] {
                    warn!(tenant = %tenant.id, path = %path.display(), "plugin file is gone; the loaded version keeps serving");
                    missing_reported[i] = true;
                }
                continue;
            }
            missing_reported[i] = false;
            if now == seen[i] {
                continue;
            }
            seen[i] = now;
            let bytes = match tokio::fs::read(path).await {
                Ok(b) => b,
                Err(e) => {
                    warn!(tenant = %tenant.id, path = %path.display(), error = %e, "cannot read the plugin file");
                    continue;
                }
            };
            // Errors are logged and recorded by the slot; the old version keeps serving.
            let _ = tenant.plugin().install(bytes, "file").await;
        }
    }
}
