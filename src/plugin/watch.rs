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

use tokio_util::sync::CancellationToken;

use super::PluginSlot;

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

/// Watches the files of `slots` (those loaded from one) until `shutdown`.
pub async fn watch(slots: Vec<Arc<PluginSlot>>, every: Duration, shutdown: CancellationToken) {
    let slots: Vec<_> = slots
        .into_iter()
        .filter_map(|slot| slot.path().map(|p| p.to_path_buf()).map(|p| (slot, p)))
        .collect();
    if slots.is_empty() {
        return;
    }
    let mut seen: Vec<Option<Seen>> = slots.iter().map(|(_, p)| look(p)).collect();
    let mut missing_reported = vec![false; slots.len()];
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        for (i, (slot, path)) in slots.iter().enumerate() {
            let now = look(path);
            if now.is_none() {
                if !missing_reported[i] {
                    warn!(tenant = %slot.tenant(), path = %path.display(), "plugin file is gone; the loaded version keeps serving");
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
                    warn!(tenant = %slot.tenant(), path = %path.display(), error = %e, "cannot read the plugin file");
                    continue;
                }
            };
            // Errors are logged and recorded by the slot; the old version keeps serving.
            let _ = slot.install(bytes, "file").await;
        }
    }
}
