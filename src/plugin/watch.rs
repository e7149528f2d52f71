//! Hot reload from disk: every tenant whose plugin comes from a file is polled, and a changed
//! file is compiled, checked and swapped in off the request path.
//!
//! Polling the file's size and modification time (once a second by default) instead of kernel
//! file notifications keeps this portable and dependency-free, and it sees every way operators
//! replace files (in place, `cp`, `mv` over it, a deploy tool's rename). A reload a second late
//! costs nothing; a missed one would.

use std::collections::HashMap;
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

/// What the watcher knows of one slot's file.
struct Watched {
    slot: Arc<PluginSlot>,
    seen: Option<Seen>,
    missing_reported: bool,
}

/// Watches the files of the slots `slots()` gives (those loaded from one) until `shutdown`;
/// asked again every round, so tenants added or replaced while the node runs are watched too.
pub async fn watch(
    slots: impl Fn() -> Vec<Arc<PluginSlot>>,
    every: Duration,
    shutdown: CancellationToken,
) {
    // By slot address: a replaced tenant's new slot is a new entry.
    let mut watched: HashMap<usize, Watched> = HashMap::new();
    loop {
        let now_served = slots();
        watched.retain(|key, _| now_served.iter().any(|s| Arc::as_ptr(s) as usize == *key));
        for slot in now_served {
            let Some(path) = slot.path().map(std::path::Path::to_path_buf) else {
                continue;
            };
            // A slot first seen has just loaded its file.
            watched
                .entry(Arc::as_ptr(&slot) as usize)
                .or_insert_with(|| Watched {
                    slot: slot.clone(),
                    seen: look(&path),
                    missing_reported: false,
                });
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        for entry in watched.values_mut() {
            let slot = entry.slot.clone();
            let Some(path) = slot.path() else { continue };
            let now = look(path);
            if now.is_none() {
                if !entry.missing_reported {
                    warn!(tenant = %slot.tenant(), path = %path.display(), "plugin file is gone; the loaded version keeps serving");
                    entry.missing_reported = true;
                }
                continue;
            }
            entry.missing_reported = false;
            if now == entry.seen {
                continue;
            }
            entry.seen = now;
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
