//! Where a user's sessions are: read from Redis (`SMEMBERS` of the user's presence set, dead
//! nodes filtered out and removed) and cached per node.
//!
//! The cache keeps the presence read off the message path. Every change of a user's presence
//! (first session on a node, last one gone) is announced on `sb:presence`, which drops that
//! entry from every node's cache at once. An entry older than `presence_cache_ms` (2 s by
//! default; the net under a lost notice) is still served while a background task reads it
//! again, so only a user a node has not routed to lately costs a message a round trip to
//! Redis. (Expiring entries outright made every user's next message wait for one: at 10,000
//! msgs/s to 1,000 users that was 500 inline reads a second, and the messages queued behind
//! them set the cross-node p99.) An entry whose re-reads keep failing is not served past
//! [`STALE_LIMIT`] lifetimes: the next message reads it inline.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::outbound::next_batch;
use super::shards::Routed;
use super::{keys, RedisBackplane, RedisError};

/// A (tenant, user) pair.
pub type UserKey = (String, String);

/// Most entries in the presence cache before it starts over.
const CACHE_MAX: usize = 100_000;
/// A cached presence older than this many cache lifetimes is not served while it is re-read.
pub const STALE_LIMIT: u32 = 4;
/// Presence re-reads sent to Redis in one pipeline.
pub const REFRESH_BATCH: usize = 256;
/// Presence re-reads waiting at most; beyond it an old entry is served and asked for again on
/// its next use.
pub const REFRESH_QUEUE: usize = 65_536;
/// How long the list of live nodes is reused.
const LIVE_NODES_CACHE: Duration = Duration::from_millis(500);

/// One user's other live nodes as last read from Redis.
#[derive(Debug)]
struct Entry {
    nodes: Vec<String>,
    read_at: Instant,
    /// A background re-read is queued or running; the entry is served meanwhile.
    refreshing: bool,
}

/// The presence cache's rules, without I/O: what may be served, when to ask for a re-read,
/// which results may be stored.
#[derive(Debug)]
pub struct PresenceCache {
    entries: HashMap<UserKey, Entry>,
    lifetime: Duration,
}

impl PresenceCache {
    /// A cache whose entries are fresh for `lifetime`.
    pub fn new(lifetime: Duration) -> PresenceCache {
        PresenceCache {
            entries: HashMap::new(),
            lifetime,
        }
    }

    /// The cached nodes of `key`, if they may be served at `now`. An old entry asks for a
    /// re-read through `request_refresh` (once until it is answered; `false` means the
    /// request was not queued and is asked again next time).
    pub fn get(
        &mut self,
        key: &UserKey,
        now: Instant,
        request_refresh: impl FnOnce() -> bool,
    ) -> Option<Vec<String>> {
        let entry = self.entries.get_mut(key)?;
        let age = now.saturating_duration_since(entry.read_at);
        if age < self.lifetime {
            return Some(entry.nodes.clone());
        }
        if age < self.lifetime * STALE_LIMIT {
            if !entry.refreshing && request_refresh() {
                entry.refreshing = true;
            }
            return Some(entry.nodes.clone());
        }
        None
    }

    /// Stores what an inline read found.
    pub fn store(&mut self, key: UserKey, nodes: Vec<String>, now: Instant) {
        if self.entries.len() >= CACHE_MAX {
            self.entries.clear();
        }
        self.entries.insert(
            key,
            Entry {
                nodes,
                read_at: now,
                refreshing: false,
            },
        );
    }

    /// Stores what a background re-read found, only if the entry is still cached: a notice
    /// that dropped it meanwhile may be newer than what was read.
    pub fn refreshed(&mut self, key: &UserKey, nodes: Vec<String>, now: Instant) {
        if let Some(entry) = self.entries.get_mut(key) {
            *entry = Entry {
                nodes,
                read_at: now,
                refreshing: false,
            };
        }
    }

    /// A re-read failed: the entry may be asked for again.
    pub fn refresh_failed(&mut self, key: &UserKey) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.refreshing = false;
        }
    }

    /// A presence notice for `key`: drop it.
    pub fn invalidate(&mut self, key: &UserKey) {
        self.entries.remove(key);
    }

    /// Forgets everything (after a reconnect or a resync).
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// The live nodes as last read, and when.
#[derive(Debug, Default)]
pub struct LiveNodes {
    nodes: HashSet<String>,
    read_at: Option<Instant>,
}

impl RedisBackplane {
    fn cache(&self) -> std::sync::MutexGuard<'_, PresenceCache> {
        self.presence_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Live nodes other than this one holding `user`'s sessions: from the cache when it may
    /// serve, else read inline.
    pub(super) async fn presence(
        &self,
        tenant: &str,
        user: &str,
    ) -> Result<Vec<String>, RedisError> {
        let key = (tenant.to_string(), user.to_string());
        let refresh = self.refresh.get();
        let cached = self.cache().get(&key, Instant::now(), || {
            refresh.is_some_and(|r| r.try_send(key.clone()).is_ok())
        });
        if let Some(nodes) = cached {
            return Ok(nodes);
        }
        let nodes = self
            .read_presence(std::slice::from_ref(&key))
            .await
            .pop()
            .unwrap_or_else(|| Ok(Vec::new()))?;
        self.cache().store(key, nodes.clone(), Instant::now());
        Ok(nodes)
    }

    /// Skips dead nodes without removing them for one `node_ttl_ms` from now (see
    /// `prune_after_ms`).
    pub(super) fn hold_off_pruning(&self) {
        let until = crate::util::unix_ms() + self.settings.node_ttl.as_millis() as u64;
        self.prune_after_ms.store(until, Ordering::Relaxed);
    }

    /// Drops a user's entry (a presence notice arrived).
    pub(super) fn presence_changed(&self, key: &UserKey) {
        self.cache().invalidate(key);
    }

    /// Forgets every cached presence.
    pub(super) fn forget_presence(&self) {
        self.cache().clear();
    }

    /// The live other nodes holding each (tenant, user) of `keys`: one `SMEMBERS` each, a
    /// pipeline per primary. Each user's answer stands alone: a primary that is down fails
    /// only its own users.
    async fn read_presence(&self, keys: &[UserKey]) -> Vec<Result<Vec<String>, RedisError>> {
        self.stats
            .presence_lookups
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        let set_keys: Vec<String> = keys.iter().map(|(t, u)| keys::presence(t, u)).collect();
        let commands = set_keys
            .iter()
            .map(|set_key| {
                let mut smembers = redis::cmd("SMEMBERS");
                smembers.arg(set_key);
                Routed::key(set_key, smembers)
            })
            .collect();
        let sets = self.shards.run(commands).await;
        let mut read = Vec::with_capacity(sets.len());
        for (set_key, members) in set_keys.iter().zip(sets) {
            let members = members.and_then(super::shards::decode::<Vec<String>>);
            read.push(match members {
                Ok(members) => self.only_live_others(set_key, members).await,
                Err(e) => Err(e),
            });
        }
        read
    }

    /// Keeps the live nodes other than this one; removes dead ones from `set_key`.
    pub(super) async fn only_live_others(
        &self,
        set_key: &str,
        members: Vec<String>,
    ) -> Result<Vec<String>, RedisError> {
        if members.is_empty() {
            return Ok(members);
        }
        let live = self.live_nodes().await?;
        let (alive, dead): (Vec<String>, Vec<String>) =
            members.into_iter().partition(|n| live.contains(n));
        if !dead.is_empty() && crate::util::unix_ms() > self.prune_after_ms.load(Ordering::Relaxed)
        {
            debug!(key = set_key, ?dead, "removing dead nodes");
            let mut srem = redis::cmd("SREM");
            srem.arg(set_key).arg(&dead);
            let _ = self.shards.run(vec![Routed::key(set_key, srem)]).await;
        }
        Ok(alive
            .into_iter()
            .filter(|n| *n != self.settings.node_id)
            .collect())
    }

    /// The nodes whose heartbeat is recent, read at most every [`LIVE_NODES_CACHE`]. While
    /// the primary holding them cannot be read, the last list read is used: routing goes on
    /// with what was known rather than treating every node as dead.
    pub(super) async fn live_nodes(&self) -> Result<HashSet<String>, RedisError> {
        {
            let cached = self.live_nodes.lock().unwrap_or_else(|e| e.into_inner());
            if cached
                .read_at
                .is_some_and(|at| at.elapsed() < LIVE_NODES_CACHE)
            {
                return Ok(cached.nodes.clone());
            }
        }
        let since =
            crate::util::unix_ms().saturating_sub(self.settings.node_ttl.as_millis() as u64);
        let mut range = redis::cmd("ZRANGEBYSCORE");
        range.arg(keys::NODES).arg(since).arg("+inf");
        let read: Result<Vec<String>, RedisError> =
            self.shards.one(Routed::key(keys::NODES, range)).await;
        let mut cached = self.live_nodes.lock().unwrap_or_else(|e| e.into_inner());
        match read {
            Ok(nodes) => {
                let nodes: HashSet<String> = nodes.into_iter().collect();
                *cached = LiveNodes {
                    nodes: nodes.clone(),
                    read_at: Some(Instant::now()),
                };
                Ok(nodes)
            }
            Err(e) if cached.read_at.is_some() => {
                debug!(error = %e, "the live nodes could not be read; using the last list");
                Ok(cached.nodes.clone())
            }
            Err(e) => Err(e),
        }
    }
}

/// Re-reads the presence entries found old, a pipeline of `SMEMBERS` per batch, until `stop`.
pub async fn refresh_loop(
    backplane: Arc<RedisBackplane>,
    mut requests: mpsc::Receiver<UserKey>,
    stop: CancellationToken,
) {
    let mut keys = Vec::with_capacity(REFRESH_BATCH);
    while next_batch(&mut requests, &mut keys, REFRESH_BATCH, &stop).await {
        let read = backplane.read_presence(&keys).await;
        let mut cache = backplane.cache();
        let now = Instant::now();
        for (key, nodes) in keys.drain(..).zip(read) {
            match nodes {
                Ok(nodes) => cache.refreshed(&key, nodes, now),
                Err(e) => {
                    debug!(error = %e, "presence re-read failed; the entry is read again on use");
                    cache.refresh_failed(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(user: &str) -> UserKey {
        ("t".into(), user.into())
    }

    #[test]
    fn a_fresh_entry_is_served_without_a_refresh() {
        let mut cache = PresenceCache::new(Duration::from_secs(2));
        let t0 = Instant::now();
        cache.store(key("a"), vec!["n2".into()], t0);
        let got = cache.get(&key("a"), t0 + Duration::from_secs(1), || {
            panic!("no refresh")
        });
        assert_eq!(got, Some(vec!["n2".to_string()]));
        assert_eq!(cache.get(&key("b"), t0, || panic!("no refresh")), None);
    }

    #[test]
    fn an_old_entry_is_served_and_refreshed_once() {
        let mut cache = PresenceCache::new(Duration::from_secs(2));
        let t0 = Instant::now();
        cache.store(key("a"), vec!["n2".into()], t0);
        let later = t0 + Duration::from_secs(3);
        let mut asked = 0;
        for _ in 0..3 {
            let got = cache.get(&key("a"), later, || {
                asked += 1;
                true
            });
            assert_eq!(got, Some(vec!["n2".to_string()]));
        }
        assert_eq!(asked, 1, "one re-read until it is answered");
        cache.refreshed(&key("a"), vec!["n3".into()], later);
        assert_eq!(
            cache.get(&key("a"), later, || panic!("fresh again")),
            Some(vec!["n3".to_string()])
        );
    }

    #[test]
    fn a_refused_refresh_request_is_asked_again() {
        let mut cache = PresenceCache::new(Duration::from_secs(2));
        let t0 = Instant::now();
        cache.store(key("a"), vec![], t0);
        let later = t0 + Duration::from_secs(3);
        let mut asked = 0;
        cache.get(&key("a"), later, || {
            asked += 1;
            false
        });
        cache.get(&key("a"), later, || {
            asked += 1;
            true
        });
        cache.get(&key("a"), later, || {
            asked += 1;
            true
        });
        assert_eq!(asked, 2);
        cache.refresh_failed(&key("a"));
        cache.get(&key("a"), later, || {
            asked += 1;
            true
        });
        assert_eq!(asked, 3, "a failed re-read may be asked for again");
    }

    #[test]
    fn a_stale_entry_is_read_inline() {
        let mut cache = PresenceCache::new(Duration::from_secs(2));
        let t0 = Instant::now();
        cache.store(key("a"), vec!["n2".into()], t0);
        let stale = t0 + Duration::from_secs(2) * STALE_LIMIT;
        assert_eq!(cache.get(&key("a"), stale, || true), None);
    }

    #[test]
    fn a_notice_wins_over_a_refresh_in_flight() {
        let mut cache = PresenceCache::new(Duration::from_secs(2));
        let t0 = Instant::now();
        cache.store(key("a"), vec!["n2".into()], t0);
        cache.invalidate(&key("a"));
        cache.refreshed(&key("a"), vec!["n2".into()], t0);
        assert_eq!(cache.get(&key("a"), t0, || true), None, "not stored again");
    }
}
