//! The Redis deployment as the backplane's commands see it: one server, or the primaries of a
//! Redis Cluster, each behind one multiplexed command connection (a [`Link`]).
//!
//! Every command names the slot it is for ([`Routed`]). A batch is split per primary and each
//! part sent as one pipeline, the parts concurrently. A `MOVED` reply re-reads the map
//! (`CLUSTER SHARDS`) and sends the command again to the slot's new primary; an `ASK` sends it
//! once to the importing primary after `ASKING`; `TRYAGAIN` (a multi-key command during a
//! migration) waits a moment and retries; a script the primary does not know yet is loaded
//! and the call repeated. None of those ran the command, so retrying cannot apply it twice. A
//! command to a slot with no reachable primary fails at once, naming the slot, so the caller
//! answers 503 while the other shards serve on.
//!
//! The connections are our own, one per primary, rather than redis-rs's cluster client:
//! that client refuses a pipeline whose commands are for different slots, and stompbox's
//! throughput on Redis comes from sending what one round of the node queued for a primary as
//! one pipeline; the map of slots is needed here anyway, for readiness (a slot with no
//! primary) and per-shard metrics.
//!
//! A connection that fails (I/O error, no answer within 2 s) is dropped and the owner of the
//! deployment ([`super::membership`]) is woken to connect again; until then its slots fail
//! fast. A single Redis is the same with one primary that owns every slot and is never asked
//! for the map.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, RedisResult, Value};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::slots::{self, Redirect, Topology};
use super::{RedisError, REDIS_TIMEOUT};

/// How often a command is sent again after redirections before it fails.
const MAX_ATTEMPTS: usize = 5;
/// The wait before retrying after `TRYAGAIN` or a map with the slot still unowned.
const RETRY_WAIT: Duration = Duration::from_millis(50);

/// One command and the slot it is for.
#[derive(Debug, Clone)]
pub struct Routed {
    /// The slot of its key (any slot, for a command that names none).
    pub slot: u16,
    /// The command.
    pub cmd: Cmd,
    /// The script it calls, when it is an `EVALSHA` (loaded on `NOSCRIPT`).
    pub script: Option<&'static str>,
}

impl Routed {
    /// `cmd` for the slot of `key`.
    pub fn key(key: impl AsRef<[u8]>, cmd: Cmd) -> Routed {
        Routed {
            slot: slots::slot(key.as_ref()),
            cmd,
            script: None,
        }
    }
}

/// A script call being built: keys and arguments, then [`Call::routed`] by its first key.
#[derive(Debug)]
pub struct Call {
    script: &'static Lua,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Call {
    /// Adds a key (`KEYS[i]`).
    pub fn key(&mut self, key: impl redis::ToRedisArgs) -> &mut Call {
        self.keys.extend(key.to_redis_args());
        self
    }

    /// Adds an argument (`ARGV[i]`).
    pub fn arg(&mut self, arg: impl redis::ToRedisArgs) -> &mut Call {
        self.args.extend(arg.to_redis_args());
        self
    }

    /// Keys added so far.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// The `EVALSHA`, for the slot of its first key.
    pub fn routed(&self) -> Routed {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.script.hash).arg(self.keys.len());
        for key in &self.keys {
            cmd.arg(key.as_slice());
        }
        for arg in &self.args {
            cmd.arg(arg.as_slice());
        }
        Routed {
            slot: self.keys.first().map_or(0, |k| slots::slot(k)),
            cmd,
            script: Some(self.script.code),
        }
    }
}

/// A Lua script, called by its SHA-1 and loaded where it is missing.
#[derive(Debug)]
pub struct Lua {
    code: &'static str,
    hash: String,
}

impl Lua {
    /// The script `code`.
    pub fn new(code: &'static str) -> Lua {
        Lua {
            code,
            hash: redis::Script::new(code).get_hash().to_string(),
        }
    }

    /// A call of it.
    pub fn call(&'static self) -> Call {
        Call {
            script: self,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// The command connection to one primary.
#[derive(Debug)]
pub struct Link {
    /// `host:port`.
    pub addr: String,
    conn: RwLock<Option<MultiplexedConnection>>,
    /// Bumped at every connect: a change tells the owner this primary must be synced again.
    pub connects: AtomicU64,
    /// Commands sent to it.
    pub commands: AtomicU64,
    /// Commands that failed on it (connection lost, no answer, refused).
    pub failures: AtomicU64,
}

impl Link {
    fn new(addr: &str) -> Link {
        Link {
            addr: addr.to_string(),
            conn: RwLock::new(None),
            connects: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// The connection, while it is up.
    pub fn conn(&self) -> Option<MultiplexedConnection> {
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether it is up.
    pub fn is_up(&self) -> bool {
        self.conn
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn set(&self, conn: Option<MultiplexedConnection>) {
        let connected = conn.is_some();
        *self.conn.write().unwrap_or_else(|e| e.into_inner()) = conn;
        if connected {
            self.connects.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The map of slots and a link per primary, replaced whole when the map changes.
#[derive(Debug)]
pub struct Layout {
    /// Which primary owns each slot.
    pub topology: Topology,
    /// Per primary of `topology`, in its order.
    pub links: Vec<Arc<Link>>,
    /// Counts the maps read.
    pub generation: u64,
}

impl Layout {
    /// The link owning `slot`, if a primary does.
    pub fn link_for(&self, slot: u16) -> Option<&Arc<Link>> {
        self.topology.owner(slot).and_then(|i| self.links.get(i))
    }

    /// The link to the primary at `addr`.
    pub fn link_at(&self, addr: &str) -> Option<&Arc<Link>> {
        self.topology.index_of(addr).and_then(|i| self.links.get(i))
    }

    /// True when every slot has a primary whose connection is up.
    pub fn serves_every_slot(&self) -> bool {
        self.topology.unowned() == 0 && self.links.iter().all(|l| l.is_up())
    }
}

/// The deployment.
#[derive(Debug)]
pub struct Shards {
    /// Where to begin: the one server, or the cluster's seed nodes.
    seeds: Vec<ConnectionInfo>,
    cluster: bool,
    layout: RwLock<Arc<Layout>>,
    refreshing: tokio::sync::Mutex<()>,
    /// Set when a connection failed or the map was found out of date; [`Shards::changed`]
    /// wakes whoever keeps the deployment connected.
    dirty: AtomicBool,
    changed: Notify,
}

impl Shards {
    /// One Redis at `info`.
    pub fn single(info: ConnectionInfo) -> Shards {
        let addr = addr_of(&info);
        Shards::with(vec![info], false, Topology::single(&addr))
    }

    /// A Redis Cluster reached first through `seeds`; nothing is served until its map is read.
    pub fn cluster(seeds: Vec<ConnectionInfo>) -> Shards {
        Shards::with(seeds, true, Topology::unserved())
    }

    fn with(seeds: Vec<ConnectionInfo>, cluster: bool, topology: Topology) -> Shards {
        let links = topology
            .primaries
            .iter()
            .map(|p| Arc::new(Link::new(&p.addr)))
            .collect();
        Shards {
            seeds,
            cluster,
            layout: RwLock::new(Arc::new(Layout {
                topology,
                links,
                generation: 0,
            })),
            refreshing: tokio::sync::Mutex::new(()),
            dirty: AtomicBool::new(true),
            changed: Notify::new(),
        }
    }

    /// True for a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The layout now.
    pub fn layout(&self) -> Arc<Layout> {
        self.layout
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resolves when a connection failed or the map went out of date since the last
    /// [`Shards::repair`].
    pub async fn changed(&self) {
        loop {
            let notified = self.changed.notified();
            if self.dirty.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// A connection failed or the map may be out of date (a slot moved): the owner repairs at
    /// the next chance.
    pub fn mark_stale(&self) {
        self.dirty.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Drops the connection of `link` (it failed) and wakes the owner to connect again.
    pub fn drop_link(&self, link: &Link) {
        if link.is_up() {
            warn!(shard = %link.addr, "Redis connection lost");
        }
        link.set(None);
        self.mark_stale();
    }

    /// Reads the map again (for a cluster) and connects every primary without a connection.
    /// Ok when every slot has a connected primary; else what is missing.
    pub async fn repair(&self) -> Result<(), RedisError> {
        self.dirty.store(false, Ordering::Release);
        if self.cluster {
            // Reading the map connects what is in it.
            let seen = self.layout().generation;
            self.refresh(seen).await?;
        } else {
            self.connect_missing(&self.layout()).await;
        }
        let layout = self.layout();
        if layout.serves_every_slot() {
            Ok(())
        } else {
            let down: Vec<&str> = layout
                .links
                .iter()
                .filter(|l| !l.is_up())
                .map(|l| l.addr.as_str())
                .collect();
            let unowned = layout.topology.unowned();
            Err(RedisError::NotConnected(match (down.is_empty(), unowned) {
                (false, _) => format!("no connection to {}", down.join(", ")),
                (true, n) => format!("{n} slots have no primary"),
            }))
        }
    }

    /// Connects, at once, every link of `layout` that has no connection.
    async fn connect_missing(&self, layout: &Layout) {
        let missing = layout.links.iter().filter(|l| !l.is_up());
        join_all(missing.map(|l| self.connect_link(l))).await;
    }

    async fn connect_link(&self, link: &Link) {
        let Some(info) = self.info_for(&link.addr) else {
            return;
        };
        match connect(info).await {
            Ok(conn) => {
                debug!(shard = %link.addr, "connected");
                link.set(Some(conn));
            }
            Err(e) => {
                debug!(shard = %link.addr, error = %e, "connecting failed");
            }
        }
    }

    /// Connection details for the primary at `addr`: the first seed's, but for the address.
    pub fn info_for(&self, addr: &str) -> Option<ConnectionInfo> {
        let seed = self.seeds.first()?;
        if !self.cluster {
            return Some(seed.clone());
        }
        let (host, port) = addr.rsplit_once(':')?;
        Some(
            seed.clone()
                .set_addr(ConnectionAddr::Tcp(host.to_string(), port.parse().ok()?)),
        )
    }

    /// Reads the map (unless another caller did since `seen`) from a connected primary or,
    /// failing that, a seed; keeps the connections of primaries still in it.
    async fn refresh(&self, seen: u64) -> Result<(), RedisError> {
        let _turn = self.refreshing.lock().await;
        let old = self.layout();
        if old.generation != seen {
            return Ok(());
        }
        let topology = self.read_map(&old).await?;
        let links: Vec<Arc<Link>> = topology
            .primaries
            .iter()
            .map(|p| {
                old.link_at(&p.addr)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Link::new(&p.addr)))
            })
            .collect();
        if topology.primaries != old.topology.primaries || topology.unowned() > 0 {
            info!(
                primaries = %topology.primaries.iter().map(|p| format!("{} ({} slots)", p.addr, p.slots)).collect::<Vec<_>>().join(", "),
                unowned = topology.unowned(),
                "Redis Cluster map read"
            );
        }
        let fresh = Arc::new(Layout {
            topology,
            links,
            generation: old.generation + 1,
        });
        self.connect_missing(&fresh).await;
        *self.layout.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    async fn read_map(&self, old: &Layout) -> Result<Topology, RedisError> {
        let mut last = String::from("no seed answered");
        let mut shards = redis::cmd("CLUSTER");
        shards.arg("SHARDS");
        for link in &old.links {
            let Some(mut conn) = link.conn() else {
                continue;
            };
            match shards.query_async::<Value>(&mut conn).await {
                Ok(reply) => match Topology::from_shards(&reply) {
                    Ok(t) if !t.primaries.is_empty() => return Ok(t),
                    Ok(_) => last = format!("{} knows no primary", link.addr),
                    Err(e) => last = e,
                },
                Err(e) => last = format!("{}: {e}", link.addr),
            }
        }
        for seed in &self.seeds {
            let addr = addr_of(seed);
            let attempt = async {
                let mut conn = connect(seed.clone()).await?;
                shards.query_async::<Value>(&mut conn).await
            };
            match attempt.await {
                Ok(reply) => match Topology::from_shards(&reply) {
                    Ok(t) if !t.primaries.is_empty() => return Ok(t),
                    Ok(_) => last = format!("{addr} knows no primary"),
                    Err(e) => last = e,
                },
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(RedisError::NotConnected(format!(
            "the Redis Cluster map could not be read ({last})"
        )))
    }

    /// The positions of `slots` grouped so that one script call may take each group: by slot
    /// on a Redis Cluster (a script's keys must share one), all together on a single Redis.
    /// Groups are in the order of their first item; each keeps its items' order.
    pub fn script_groups(&self, slots: &[u16]) -> Vec<Vec<usize>> {
        if !self.cluster {
            return if slots.is_empty() {
                Vec::new()
            } else {
                vec![(0..slots.len()).collect()]
            };
        }
        let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
        let mut at: HashMap<u16, usize> = HashMap::new();
        for (i, &slot) in slots.iter().enumerate() {
            match at.get(&slot) {
                Some(&g) => groups[g].1.push(i),
                None => {
                    at.insert(slot, groups.len());
                    groups.push((slot, vec![i]));
                }
            }
        }
        groups.into_iter().map(|(_, items)| items).collect()
    }

    /// Runs `calls` like [`Shards::run`] and, when `acks > 0`, a `WAIT acks timeout` after
    /// the last of them on each primary, in the same pipeline: a call whose primary's
    /// replicas did not all confirm in time fails with [`RedisError::Unconfirmed`]. One
    /// `WAIT` per primary per batch, however many messages the batch carries.
    pub async fn run_confirmed(
        &self,
        mut calls: Vec<Routed>,
        acks: usize,
        timeout: Duration,
    ) -> Vec<Result<Value, RedisError>> {
        if acks == 0 || calls.is_empty() {
            return self.run(calls).await;
        }
        let layout = self.layout();
        let primary_of = |r: &Routed| layout.topology.owner(r.slot);
        let mut last: HashMap<usize, u16> = HashMap::new();
        for call in &calls {
            if let Some(p) = primary_of(call) {
                last.insert(p, call.slot);
            }
        }
        let primaries: Vec<Option<usize>> = calls.iter().map(primary_of).collect();
        let count = calls.len();
        let waits: Vec<usize> = last.keys().copied().collect();
        let ms = timeout.as_millis() as u64;
        for p in &waits {
            let mut wait = redis::cmd("WAIT");
            wait.arg(acks).arg(ms);
            calls.push(Routed {
                slot: last[p],
                cmd: wait,
                script: None,
            });
        }
        let mut replies = self.run(calls).await;
        let confirmed: HashMap<usize, usize> = waits
            .iter()
            .zip(replies.drain(count..))
            .map(|(p, reply)| {
                (
                    *p,
                    reply
                        .ok()
                        .and_then(|v| decode::<usize>(v).ok())
                        .unwrap_or(0),
                )
            })
            .collect();
        replies
            .into_iter()
            .zip(primaries)
            .map(|(reply, primary)| {
                let got = primary
                    .and_then(|p| confirmed.get(&p).copied())
                    .unwrap_or(0);
                match reply {
                    Ok(_) if got < acks => Err(RedisError::Unconfirmed {
                        got,
                        wanted: acks,
                        ms,
                    }),
                    other => other,
                }
            })
            .collect()
    }

    /// Runs one command.
    pub async fn one<T: redis::FromRedisValue>(&self, routed: Routed) -> Result<T, RedisError> {
        let mut results = self.run(vec![routed]).await;
        let value = results.pop().unwrap_or_else(|| Err(RedisError::Closed))?;
        decode(value)
    }

    /// Runs every command, each on its slot's primary; per command, its reply or why it
    /// failed, in order. Commands for one primary go as one pipeline, in order. A command for
    /// a slot whose primary is unknown or not connected fails at once (its shard is down; the
    /// owner reconnects it in the background).
    pub async fn run(&self, batch: Vec<Routed>) -> Vec<Result<Value, RedisError>> {
        let mut results: Vec<Option<Result<Value, RedisError>>> =
            (0..batch.len()).map(|_| None).collect();
        let mut pending: Vec<(usize, Routed, Target)> = batch
            .into_iter()
            .enumerate()
            .map(|(i, r)| (i, r, Target::Owner))
            .collect();
        for attempt in 1..=MAX_ATTEMPTS {
            let layout = self.layout();
            let mut groups: HashMap<usize, Vec<(usize, Routed, Target)>> = HashMap::new();
            for (i, routed, target) in pending.drain(..) {
                let index = match &target {
                    Target::Owner => layout.topology.owner(routed.slot),
                    Target::Ask(addr) => layout.topology.index_of(addr),
                };
                match index {
                    Some(index) if layout.links[index].is_up() => {
                        groups.entry(index).or_default().push((i, routed, target))
                    }
                    _ => results[i] = Some(Err(no_primary(&layout, routed.slot))),
                }
            }
            let sent = join_all(groups.into_iter().map(|(index, items)| {
                let link = layout.links[index].clone();
                async move {
                    let outcome = self.send(&link, &items).await;
                    (link, items, outcome)
                }
            }))
            .await;
            let (mut moved, mut wait) = (false, false);
            for (link, items, outcome) in sent {
                let replies = match outcome {
                    Ok(replies) => replies,
                    Err(e) => {
                        link.failures
                            .fetch_add(items.len() as u64, Ordering::Relaxed);
                        if is_connection_fault(&e) {
                            self.drop_link(&link);
                        }
                        for (i, _, _) in items {
                            results[i] = Some(Err(RedisError::Command(e.clone())));
                        }
                        continue;
                    }
                };
                for ((i, routed, _), reply) in items.into_iter().zip(replies) {
                    let e = match reply {
                        Ok(value) => {
                            results[i] = Some(Ok(value));
                            continue;
                        }
                        Err(e) => e,
                    };
                    match retry_of(&e) {
                        Some(retry) if attempt < MAX_ATTEMPTS => {
                            let target = match retry {
                                Retry::Moved => {
                                    moved = true;
                                    Target::Owner
                                }
                                Retry::Ask(addr) => Target::Ask(addr),
                                Retry::Later => {
                                    wait = true;
                                    Target::Owner
                                }
                            };
                            pending.push((i, routed, target));
                        }
                        _ => results[i] = Some(Err(RedisError::Command(e))),
                    }
                }
            }
            if pending.is_empty() {
                break;
            }
            if wait {
                tokio::time::sleep(RETRY_WAIT).await;
            }
            if moved {
                if let Err(e) = self.refresh(layout.generation).await {
                    debug!(error = %e, "re-reading the Redis Cluster map failed");
                }
                self.mark_stale();
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(RedisError::Closed)))
            .collect()
    }

    /// One pipeline of `items` to `link`; per item its reply. A script the primary does not
    /// have is loaded, and the items that needed it sent again.
    async fn send(
        &self,
        link: &Link,
        items: &[(usize, Routed, Target)],
    ) -> RedisResult<Vec<RedisResult<Value>>> {
        let Some(mut conn) = link.conn() else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "not connected",
            )));
        };
        let mut replies = pipeline(&mut conn, link, items).await?;
        let missing: Vec<&'static str> = items
            .iter()
            .zip(&replies)
            .filter(|(_, r)| is_noscript(r))
            .filter_map(|((_, routed, _), _)| routed.script)
            .collect();
        if missing.is_empty() {
            return Ok(replies);
        }
        for code in dedup(missing) {
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(code)
                .query_async::<String>(&mut conn)
                .await?;
        }
        let again: Vec<usize> = (0..items.len())
            .filter(|&k| is_noscript(&replies[k]))
            .collect();
        let retry: Vec<(usize, Routed, Target)> = again.iter().map(|&k| items[k].clone()).collect();
        let second = pipeline(&mut conn, link, &retry).await?;
        for (k, reply) in again.into_iter().zip(second) {
            replies[k] = reply;
        }
        Ok(replies)
    }
}

/// Where a command goes on this attempt.
#[derive(Debug, Clone)]
enum Target {
    /// The primary owning its slot.
    Owner,
    /// The primary importing its slot, after `ASKING`.
    Ask(String),
}

async fn pipeline(
    conn: &mut MultiplexedConnection,
    link: &Link,
    items: &[(usize, Routed, Target)],
) -> RedisResult<Vec<RedisResult<Value>>> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let mut asking = Vec::with_capacity(items.len());
    for (_, routed, target) in items {
        let ask = matches!(target, Target::Ask(_));
        if ask {
            pipe.cmd("ASKING");
        }
        asking.push(ask);
        pipe.add_command(routed.cmd.clone());
    }
    link.commands
        .fetch_add(pipe.len() as u64, Ordering::Relaxed);
    let mut all: Vec<RedisResult<Value>> = pipe.query_async(conn).await?;
    // Drop the answers to ASKING, keeping one reply per item.
    let mut replies = Vec::with_capacity(items.len());
    let mut all = all.drain(..);
    for ask in asking {
        if ask {
            all.next();
        }
        replies.push(all.next().unwrap_or_else(|| {
            Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "a reply is missing",
            )))
        }));
    }
    Ok(replies)
}

fn dedup(mut codes: Vec<&'static str>) -> Vec<&'static str> {
    codes.sort_unstable();
    codes.dedup();
    codes
}

fn is_noscript(reply: &RedisResult<Value>) -> bool {
    matches!(reply, Err(e) if e.code() == Some("NOSCRIPT"))
}

/// A reply as the type a command gives.
pub fn decode<T: redis::FromRedisValue>(value: Value) -> Result<T, RedisError> {
    redis::from_redis_value(value).map_err(|e| RedisError::Reply(e.to_string()))
}

/// How a refused command is retried.
enum Retry {
    Moved,
    Ask(String),
    Later,
}

fn retry_of(e: &redis::RedisError) -> Option<Retry> {
    match Redirect::of(e) {
        Some(Redirect::Moved { .. }) => Some(Retry::Moved),
        Some(Redirect::Ask { addr, .. }) => Some(Retry::Ask(addr)),
        None => match e.code() {
            Some("TRYAGAIN") | Some("CLUSTERDOWN") | Some("LOADING") => Some(Retry::Later),
            _ => None,
        },
    }
}

/// True when the connection itself failed (lost, or no answer in time), not the command.
fn is_connection_fault(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

fn no_primary(layout: &Layout, slot: u16) -> RedisError {
    match layout.link_for(slot) {
        Some(link) => RedisError::NotConnected(format!(
            "no connection to the Redis primary {} (slot {slot})",
            link.addr
        )),
        None => RedisError::NotConnected(format!("no reachable Redis primary serves slot {slot}")),
    }
}

/// `host:port` of a connection.
pub fn addr_of(info: &ConnectionInfo) -> String {
    match info.addr() {
        ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
        other => other.to_string(),
    }
}

/// A command connection: `TCP_NODELAY`, and 2 s to connect and for each answer.
pub async fn connect(info: ConnectionInfo) -> RedisResult<MultiplexedConnection> {
    // Without TCP_NODELAY a command written while the previous one is unacknowledged waits
    // for the peer's delayed ACK (up to 40 ms on Linux): the cross-node tail.
    let info = info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT));
    let client = redis::Client::open(info)?;
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    static ECHO: std::sync::LazyLock<Lua> = std::sync::LazyLock::new(|| Lua::new("return KEYS[1]"));

    #[test]
    fn a_script_call_is_routed_by_its_first_key() {
        let mut call = ECHO.call();
        call.key("sb:{t:alice}:meta")
            .key("sb:{t:alice}:stream")
            .arg(7);
        let routed = call.routed();
        assert_eq!(routed.slot, slots::slot(b"t:alice"));
        assert_eq!(routed.script, Some("return KEYS[1]"));
        let packed = String::from_utf8_lossy(&routed.cmd.get_packed_command()).into_owned();
        assert!(
            packed.contains("EVALSHA") && packed.contains(&ECHO.hash),
            "{packed}"
        );
    }

    #[test]
    fn redirections_and_waits_are_retried_and_nothing_else() {
        let error = |kind, detail: &str| {
            redis::RedisError::from((redis::ErrorKind::Server(kind), "x", detail.to_string()))
        };
        assert!(matches!(
            retry_of(&error(redis::ServerErrorKind::Moved, "1 h:1")),
            Some(Retry::Moved)
        ));
        assert!(matches!(
            retry_of(&error(redis::ServerErrorKind::Ask, "1 h:2")),
            Some(Retry::Ask(a)) if a == "h:2"
        ));
        assert!(matches!(
            retry_of(&error(redis::ServerErrorKind::TryAgain, "")),
            Some(Retry::Later)
        ));
        assert!(retry_of(&error(redis::ServerErrorKind::ResponseError, "")).is_none());
    }
}
