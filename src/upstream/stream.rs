//! The stream: each batch is appended to the tenant's Redis stream (on the cluster's Redis),
//! where backends read it with consumer groups (`XREADGROUP`) in any language.

use std::sync::Arc;

use async_trait::async_trait;

use super::item::Item;
use super::outlet::{Refusal, Sink};
use crate::cluster::{Backplane, StreamEntry};

/// Tries of a failed append after the first (about 1.5 s with backoff: a Redis reconnect or
/// a failover's promotion).
pub const RETRIES: u32 = 4;

/// The stream of tenant `tenant` unless its config names one: `sb:{tenant}:upstream` (the
/// hash tag keeps a tenant's stream on one Redis Cluster slot).
pub fn default_key(tenant: &str) -> String {
    crate::cluster::redis::keys::upstream(tenant)
}

/// A tenant's stream.
#[derive(Debug)]
pub struct Stream {
    cluster: Arc<dyn Backplane>,
    key: String,
    max_len: usize,
}

impl Stream {
    /// The stream `key`, capped near `max_len` entries, on `cluster`'s Redis.
    pub fn new(cluster: Arc<dyn Backplane>, key: String, max_len: usize) -> Stream {
        Stream {
            cluster,
            key,
            max_len,
        }
    }
}

#[async_trait]
impl Sink for Stream {
    fn name(&self) -> &'static str {
        "stream"
    }

    async fn deliver(&self, items: &[Arc<Item>]) -> Result<(), Refusal> {
        let entries: Vec<&(dyn StreamEntry + Sync)> = items
            .iter()
            .map(|i| &**i as &(dyn StreamEntry + Sync))
            .collect();
        self.cluster
            .append_stream(&self.key, &entries, self.max_len)
            .await
            .map_err(|e| Refusal::Transient(format!("stream {}: {e}", self.key)))
    }
}
