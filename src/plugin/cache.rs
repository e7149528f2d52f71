//! A tenant plugin's small key-value cache with expiry (`cache.get`, `set`, `delete`): in the
//! node's memory when it runs alone ([`MemoryCache`]), in Redis when clustered (the tenant
//! plugs the backplane in through [`CacheStore`]), so every node sees what one node learned.
//! Limits apply the same way to both: an entry's size, its longest life, and for memory the
//! bytes a tenant may hold.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

/// Bounds of a tenant's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Bytes of keys and values a node keeps in memory for the tenant (memory store only);
    /// the entries closest to expiry make room for new ones.
    pub max_bytes: usize,
    /// Bytes of one key plus its value; larger entries are not stored.
    pub max_entry_bytes: usize,
    /// The longest an entry lives, whatever the plugin asks.
    pub max_ttl: Duration,
}

impl Default for CacheLimits {
    fn default() -> CacheLimits {
        CacheLimits {
            max_bytes: 1 << 20,
            max_entry_bytes: 4096,
            max_ttl: Duration::from_secs(3600),
        }
    }
}

/// Where a tenant's cache entries live.
#[async_trait]
pub trait CacheStore: Send + Sync + fmt::Debug {
    /// The value under `key`, if it is there and not expired.
    async fn get(&self, key: &str) -> Result<Option<String>, String>;
    /// Stores `value` under `key` for `ttl`.
    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), String>;
    /// Forgets `key`.
    async fn delete(&self, key: &str) -> Result<(), String>;
}

/// A tenant's cache as its plugin sees it: a store and the limits checked before it.
#[derive(Debug)]
pub struct PluginCache {
    store: Box<dyn CacheStore>,
    limits: CacheLimits,
}

impl PluginCache {
    /// The cache over `store`.
    pub fn new(store: Box<dyn CacheStore>, limits: CacheLimits) -> PluginCache {
        PluginCache { store, limits }
    }

    /// A node-local cache within `limits`.
    pub fn in_memory(limits: CacheLimits) -> PluginCache {
        PluginCache::new(Box::new(MemoryCache::new(limits.max_bytes)), limits)
    }

    /// `cache.get`: a failing store is a miss (a plugin must treat a miss as safe anyway).
    pub async fn get(&self, tenant: &str, key: &str) -> Option<String> {
        if key.len() > self.limits.max_entry_bytes {
            return None;
        }
        self.store.get(key).await.unwrap_or_else(|e| {
            tracing::warn!(tenant, error = %e, "plugin cache read failed; treated as a miss");
            None
        })
    }

    /// `cache.set`: false when the entry is too large, the ttl is zero, or the store failed.
    pub async fn set(&self, tenant: &str, key: &str, value: &str, ttl_ms: u64) -> bool {
        if key.is_empty() || key.len() + value.len() > self.limits.max_entry_bytes || ttl_ms == 0 {
            return false;
        }
        let ttl = Duration::from_millis(ttl_ms).min(self.limits.max_ttl);
        match self.store.set(key, value, ttl).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(tenant, error = %e, "plugin cache write failed");
                false
            }
        }
    }

    /// `cache.delete`.
    pub async fn delete(&self, tenant: &str, key: &str) {
        if let Err(e) = self.store.delete(key).await {
            tracing::warn!(tenant, error = %e, "plugin cache delete failed");
        }
    }
}

/// Entries in this node's memory, at most `max_bytes` of keys and values.
#[derive(Debug)]
pub struct MemoryCache {
    max_bytes: usize,
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_key: HashMap<String, (String, Instant)>,
    /// (expiry, key): the first is the next to go.
    by_expiry: BTreeSet<(Instant, String)>,
    bytes: usize,
}

impl Entries {
    fn remove(&mut self, key: &str) {
        if let Some((value, expires)) = self.by_key.remove(key) {
            self.by_expiry.remove(&(expires, key.to_string()));
            self.bytes -= key.len() + value.len();
        }
    }

    fn pop_first(&mut self) {
        if let Some((_, key)) = self.by_expiry.pop_first() {
            if let Some((value, _)) = self.by_key.remove(&key) {
                self.bytes -= key.len() + value.len();
            }
        }
    }
}

impl MemoryCache {
    /// An empty cache of at most `max_bytes`.
    pub fn new(max_bytes: usize) -> MemoryCache {
        MemoryCache {
            max_bytes,
            inner: Mutex::new(Entries::default()),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.entries().bytes
    }
}

#[async_trait]
impl CacheStore for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<String>, String> {
        let mut entries = self.entries();
        match entries.by_key.get(key) {
            Some((value, expires)) if *expires > Instant::now() => Ok(Some(value.clone())),
            Some(_) => {
                entries.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), String> {
        let size = key.len() + value.len();
        if size > self.max_bytes {
            return Err(format!(
                "an entry of {size} bytes exceeds the cache's {} bytes",
                self.max_bytes
            ));
        }
        let now = Instant::now();
        let mut entries = self.entries();
        entries.remove(key);
        // Expired entries first, then those closest to expiry.
        while entries
            .by_expiry
            .first()
            .is_some_and(|(expires, _)| *expires <= now)
            || entries.bytes + size > self.max_bytes
        {
            entries.pop_first();
        }
        let expires = now + ttl;
        entries.by_expiry.insert((expires, key.to_string()));
        entries
            .by_key
            .insert(key.to_string(), (value.to_string(), expires));
        entries.bytes += size;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), String> {
        self.entries().remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_expire() {
        let cache = PluginCache::in_memory(CacheLimits::default());
        assert!(cache.set("t", "k", "v", 20).await);
        assert_eq!(cache.get("t", "k").await.as_deref(), Some("v"));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(cache.get("t", "k").await, None);
    }

    #[tokio::test]
    async fn limits_are_checked_first() {
        let limits = CacheLimits {
            max_bytes: 1024,
            max_entry_bytes: 10,
            max_ttl: Duration::from_secs(1),
        };
        let cache = PluginCache::in_memory(limits);
        assert!(
            !cache.set("t", "key", "0123456789", 1_000).await,
            "entry too large"
        );
        assert!(!cache.set("t", "", "v", 1_000).await, "empty key");
        assert!(!cache.set("t", "k", "v", 0).await, "no life");
        assert!(
            cache.set("t", "k", "v", u64::MAX).await,
            "ttl capped, not refused"
        );
        cache.delete("t", "k").await;
        assert_eq!(cache.get("t", "k").await, None);
    }

    #[tokio::test]
    async fn memory_stays_within_its_bytes() {
        let store = MemoryCache::new(100);
        for i in 0..50 {
            store
                .set(
                    &format!("key{i:02}"),
                    "0123456789",
                    Duration::from_secs(100 + i),
                )
                .await
                .unwrap();
            assert!(store.bytes() <= 100);
        }
        // The latest entries stay; those closest to expiry made room.
        assert_eq!(
            store.get("key49").await.unwrap().as_deref(),
            Some("0123456789")
        );
        assert_eq!(store.get("key00").await.unwrap(), None);
        assert!(store
            .set("k", &"x".repeat(200), Duration::from_secs(1))
            .await
            .is_err());
    }
}
