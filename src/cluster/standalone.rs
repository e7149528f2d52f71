//! The single-node backplane: there are no other nodes, so nothing is forwarded and the
//! cluster is always ready.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Backplane, ClusterError, Forwarded, Holders, LocalNode, Query, Replies, StreamEntry};
use crate::broker::{Content, Interest, Position};
use crate::metrics::Sample;

/// One node, no Redis.
#[derive(Debug, Default)]
pub struct Standalone;

#[async_trait]
impl Backplane for Standalone {
    fn start(self: Arc<Self>, _: Arc<dyn LocalNode>) {}

    async fn stop(&self) {}

    fn metrics(&self) -> Vec<Sample> {
        Vec::new()
    }

    fn interest(&self, _: &str, _: &Interest) {}

    async fn to_user(
        &self,
        _: &str,
        _: &str,
        _: &str,
        _: &Content,
        _: Option<Position>,
        _: Holders<'_>,
    ) -> Result<Forwarded, ClusterError> {
        Ok(Forwarded::default())
    }

    async fn settled(&self) -> Result<(), ClusterError> {
        Ok(())
    }

    async fn to_topic(
        &self,
        _: &str,
        _: &str,
        _: &Content,
        _: Option<Position>,
    ) -> Result<Forwarded, ClusterError> {
        Ok(Forwarded::default())
    }

    async fn to_queue(&self, _: &str, _: &str, _: &Content) -> Result<Forwarded, ClusterError> {
        Ok(Forwarded::default())
    }

    async fn append_stream(
        &self,
        _: &str,
        _: &[&(dyn StreamEntry + Sync)],
        _: usize,
    ) -> Result<(), ClusterError> {
        Err(ClusterError::Unavailable(
            "this node runs without Redis, so it has no stream for the backend".into(),
        ))
    }

    async fn ask_others(&self, _: &Query) -> Result<Replies, ClusterError> {
        Ok(Replies::default())
    }

    async fn ban(&self, _: &str, _: &str, _: u64) -> Result<(), ClusterError> {
        Ok(())
    }

    async fn cache_get(&self, _: &str, _: &str) -> Result<Option<String>, ClusterError> {
        Err(no_redis())
    }

    async fn cache_set(&self, _: &str, _: &str, _: &str, _: u64) -> Result<(), ClusterError> {
        Err(no_redis())
    }

    async fn cache_delete(&self, _: &str, _: &str) -> Result<(), ClusterError> {
        Err(no_redis())
    }

    async fn tenant_documents(&self) -> Result<Vec<(String, String)>, ClusterError> {
        Err(no_redis())
    }

    async fn tenant_document(&self, _: &str) -> Result<Option<String>, ClusterError> {
        Err(no_redis())
    }

    async fn put_tenant_document(&self, _: &str, _: &str) -> Result<(), ClusterError> {
        Err(no_redis())
    }

    async fn put_plugin(&self, _: &str, _: Option<&[u8]>) -> Result<(), ClusterError> {
        Err(no_redis())
    }

    async fn plugin(&self, _: &str) -> Result<Option<Vec<u8>>, ClusterError> {
        Err(no_redis())
    }

    fn is_shared(&self) -> bool {
        false
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({"mode": "standalone"})
    }
}

fn no_redis() -> ClusterError {
    ClusterError::Unavailable("this node runs without Redis".into())
}
