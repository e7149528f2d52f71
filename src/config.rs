//! Node configuration: a TOML file, command-line flags and environment, validated as a whole
//! before any port is bound. Every limit has a default and says why it exists.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::stomp::Limits;

/// Why a configuration was refused; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid config: {key}: {message}")]
    Invalid {
        /// The offending key, e.g. `server.max_frame_bytes` or `tenants[1].id`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners and limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// Clustering through Redis.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// The SockJS endpoint.
    #[serde(default)]
    pub sockjs: SockJsConfig,
    /// What is kept of user messages for sessions that are not there yet.
    #[serde(default)]
    pub history: HistoryConfig,
    /// The tenants this node serves.
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
}

/// `[sockjs]`: the endpoint at `/sockjs` and `/sockjs/{tenant}`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SockJsConfig {
    /// Offer the WebSocket transport; off, clients fall back to streaming and polling.
    pub websocket: bool,
    /// Set a `JSESSIONID` cookie, for load balancers that keep sessions sticky by it.
    pub cookie_needed: bool,
    /// How often an idle SockJS receiver gets a heartbeat frame, in ms: proxies close
    /// connections that stay silent.
    pub heartbeat_ms: u64,
    /// How long a session lives without a receiving request (between polls), in ms.
    pub disconnect_delay_ms: u64,
    /// A streaming response ends after this many bytes so the browser can free them; the
    /// client opens the next one.
    pub response_limit_bytes: usize,
    /// The sockjs-client script the iframe transports load; it must be the version the
    /// page uses. The default is the copy the node serves from the repository's npm packages.
    pub client_url: String,
    /// Addresses of the proxies in front of the node (load balancers). A SockJS session is
    /// bound to the address of the client that opened it; behind one of these, that is the
    /// client address the proxy put in `X-Forwarded-For` rather than the proxy's own.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for SockJsConfig {
    fn default() -> SockJsConfig {
        SockJsConfig {
            websocket: true,
            cookie_needed: false,
            heartbeat_ms: 25_000,
            disconnect_delay_ms: 5_000,
            response_limit_bytes: 128 * 1024,
            client_url: "/vendor/sockjs-client/sockjs.min.js".into(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// `[history]`: user messages are stored before they are answered or delivered, and a
/// session that subscribes gets what it missed. Tenants may change the retention or opt out.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Store user messages (tenants may opt out with `history = false`).
    pub enabled: bool,
    /// Messages kept per user, oldest dropped first (a tenant's `history_max_messages`
    /// overrides it).
    pub max_messages: usize,
    /// How long a message is kept, in ms (a tenant's `history_max_age_ms` overrides it).
    pub max_age_ms: u64,
    /// Bytes the node's stores may hold, all tenants together; past it a user message is
    /// refused (503) rather than kept.
    pub max_bytes: usize,
}

impl Default for HistoryConfig {
    fn default() -> HistoryConfig {
        HistoryConfig {
            enabled: true,
            max_messages: 1_000,
            max_age_ms: 24 * 60 * 60 * 1000,
            max_bytes: 256 << 20,
        }
    }
}

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://host:port/db`; without it (and without `redis_cluster`) the node runs alone,
    /// in memory.
    pub redis: Option<String>,
    /// Seed nodes of a Redis Cluster (`redis://host:port`); the node finds the shards itself.
    /// Exclusive with `redis`.
    pub redis_cluster: Vec<String>,
    /// This node's id in the cluster (default: generated at start).
    pub node_id: Option<String>,
    /// A node is dead when its heartbeat is older than this, in ms.
    pub node_ttl_ms: u64,
    /// How long a node trusts a cached "user → nodes" lookup without an invalidation, in ms.
    pub presence_cache_ms: u64,
    /// Replicas that must confirm a stored message (`WAIT`) before it is answered as
    /// accepted; 0 (the default) answers once the primary stored it.
    pub replica_acks: usize,
    /// How long an append waits for those confirmations, in ms; past it the message is
    /// answered 503.
    pub replica_ack_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            redis: None,
            redis_cluster: Vec::new(),
            node_id: None,
            node_ttl_ms: 10_000,
            presence_cache_ms: 2_000,
            replica_acks: 0,
            replica_ack_timeout_ms: 100,
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// HTTP listener: WebSocket, publish API, health.
    pub http: SocketAddr,
    /// STOMP-over-TCP listener.
    pub stomp: SocketAddr,
    /// Largest STOMP frame accepted, in bytes, checked before it is buffered.
    pub max_frame_bytes: usize,
    /// Most headers in one frame: bounds the work and memory of parsing one frame.
    pub max_headers: usize,
    /// Longest header line, in bytes.
    pub max_header_line: usize,
    /// Most concurrent connections (all transports): admission before any work is done.
    pub max_connections: usize,
    /// How long a new connection may take to send CONNECT, in ms: idle sockets cost memory.
    pub connect_timeout_ms: u64,
    /// Time a frame may take to arrive once its first byte has, in ms: a frame that stalls
    /// halfway (a `content-length` promising more than comes) is not held for ever.
    pub frame_timeout_ms: u64,
    /// How long a connection must stay after a stored message was handed to it (in `auto`
    /// mode) for the message to count as delivered; what was written in the last moment
    /// before a connection ended abruptly goes to the user's next session instead.
    pub delivery_confirm_ms: u64,
    /// Most subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Bytes a connection may have queued for writing before it is a slow consumer and closed.
    pub outbound_queue_bytes: usize,
    /// The server's heart-beat offer `[can send every ms, wants to receive every ms]`; 0 = none.
    /// By the spec's rule each direction runs at the larger of this and the client's own
    /// offer, so this is a floor: the smallest interval the node keeps. A low floor lets a
    /// client behind a proxy with a short idle timeout get the 1 s heart-beats it asks for,
    /// while a client asking for 10 s still gets 10 s.
    pub heartbeat_ms: [u64; 2],
    /// A peer is dead when nothing arrived for its heart-beat interval times this factor: the
    /// spec leaves room for network delay.
    pub heartbeat_tolerance: f64,
    /// Messages queues may keep, in all, while no consumer has room for them (per tenant).
    pub max_queue_backlog: usize,
    /// Bytes those waiting messages may take, per tenant (content, headers and destination
    /// plus a fixed cost per message).
    pub max_queue_backlog_bytes: usize,
    /// Bytes waiting queue messages may take on this node, all tenants together.
    pub node_backlog_bytes: usize,
    /// What one connection may hold besides its outbound queue, in bytes: open transactions,
    /// subscriptions, cached authorization verdicts, a partial frame, and queue messages it
    /// holds unacknowledged. Past it the connection gets an ERROR naming this key (queue
    /// messages just wait for room instead).
    pub connection_memory_bytes: usize,
    /// Open transactions per connection, and frames buffered per transaction.
    pub max_transactions: usize,
    /// Frames one transaction may buffer before COMMIT.
    pub max_transaction_frames: usize,
    /// How long shutdown waits for connections to close, in ms.
    pub shutdown_grace_ms: u64,
    /// The drain period, in ms: on SIGTERM (and `POST /admin/v1/drain` without a period) the
    /// node stops taking connections, answers `/readyz` with 503, closes its sessions at
    /// random moments over this period (each told to reconnect elsewhere), then exits. `0`
    /// closes them all at once. At most an hour.
    pub drain_ms: u64,
    /// Bearer token of the admin API; without one the admin API is disabled.
    pub admin_token: Option<String>,
    /// How often plugin files are checked for changes, in ms.
    pub plugin_poll_ms: u64,
    /// Keep compiled plugins on disk, so that a restart (or another node on the machine) loads
    /// a plugin compiled before in milliseconds: a JavaScript or Python plugin takes seconds
    /// to compile. What is in the directory is run: only the node's user may write to it.
    pub plugin_compile_cache: bool,
    /// Where compiled plugins are kept (default `$XDG_CACHE_HOME/stompbox/plugins`, else
    /// `~/.cache/stompbox/plugins`); relative to the config file's folder.
    pub plugin_compile_cache_dir: Option<PathBuf>,
    /// Where a single node keeps the tenants created, changed or deleted through the admin API
    /// (default: beside the config file, `NAME.state.json` for `NAME.toml`); relative to the
    /// config file's folder. A clustered node keeps them in Redis instead. Without a config
    /// file and this, such changes last until the node stops.
    pub state_file: Option<PathBuf>,
    /// The config file's folder, where relative paths start (set when the file is read).
    #[serde(skip)]
    pub config_dir: Option<PathBuf>,
    /// Serve the demo page at `/` (and the browser-test page at `/test.html`).
    pub demo_page: bool,
    /// The largest batch publish body read, in bytes (`POST .../publish/batch`).
    pub max_batch_bytes: usize,
    /// Messages in one batch publish at most.
    pub max_batch_messages: usize,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        let limits = Limits::default();
        ServerConfig {
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            stomp: SocketAddr::from(([127, 0, 0, 1], 61613)),
            max_frame_bytes: limits.max_frame_bytes,
            max_headers: limits.max_headers,
            max_header_line: limits.max_header_line,
            max_connections: 100_000,
            connect_timeout_ms: 10_000,
            frame_timeout_ms: 30_000,
            delivery_confirm_ms: 50,
            max_subscriptions: 1_000,
            outbound_queue_bytes: 4 << 20,
            heartbeat_ms: [1_000, 1_000],
            heartbeat_tolerance: 2.0,
            max_queue_backlog: 10_000,
            max_queue_backlog_bytes: 64 << 20,
            node_backlog_bytes: 256 << 20,
            connection_memory_bytes: 16 << 20,
            max_transactions: 16,
            max_transaction_frames: 1_000,
            shutdown_grace_ms: 5_000,
            drain_ms: 0,
            admin_token: None,
            plugin_poll_ms: 1_000,
            plugin_compile_cache: true,
            plugin_compile_cache_dir: None,
            state_file: None,
            config_dir: None,
            demo_page: true,
            max_batch_bytes: 16 << 20,
            max_batch_messages: 10_000,
        }
    }
}

impl ServerConfig {
    /// The codec limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_frame_bytes: self.max_frame_bytes,
            max_headers: self.max_headers,
            max_header_line: self.max_header_line,
        }
    }

    /// The CONNECT timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

/// `[[tenants]]`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The tenant's id: its path segment in `/ws/{tenant}` and the API.
    pub id: String,
    /// Keys backends use on the publish API.
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// The tenant's policy plugin (a `.wasm` component); relative paths are relative to the
    /// config file's folder. Without one the built-in policy serves.
    pub plugin: Option<PathBuf>,
    /// Strings handed to the plugin through `host.setting` (secrets stay out of the `.wasm`).
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// Time one plugin call may run, in ms: the plugin's own computing, counted in the 2 ms
    /// slices it runs in, so calls that share the cores under load do not cut each other
    /// short. The whole call, waiting included, ends at 4 × this; a backend call ends at
    /// 0.9 × this.
    #[serde(default = "default_plugin_deadline_ms")]
    pub plugin_deadline_ms: u64,
    /// Linear memory one plugin instance may hold, in bytes.
    #[serde(default = "default_plugin_memory_bytes")]
    pub plugin_memory_bytes: usize,
    /// Plugin calls of this tenant in flight at once; each runs on an instance of its own (of
    /// up to `plugin_memory_bytes`), so this also bounds the tenant's plugin memory. More calls
    /// wait their turn.
    #[serde(default = "default_plugin_concurrency")]
    pub plugin_concurrency: usize,
    /// `[tenants.plugin_backend]`: the tenant's backend, which its plugin may call
    /// (`backend.fetch`). Without it, every such call is refused.
    pub plugin_backend: Option<PluginBackendConfig>,
    /// `[tenants.plugin_cache]`: the bounds of the plugin's cache (`cache.get`/`set`).
    #[serde(default)]
    pub plugin_cache: PluginCacheConfig,
    /// A Redis channel where backends of the replaced system PUBLISH seed-format JSON
    /// (`{"receiver", "channelCode", "content"}`); one node of the cluster handles each.
    pub redis_ingress_channel: Option<String>,
    /// Store this tenant's user messages (when `[history] enabled`); `false` keeps today's
    /// at-most-once delivery and its speed.
    #[serde(default = "default_true")]
    pub history: bool,
    /// Messages kept per user for this tenant (default: `[history] max_messages`).
    pub history_max_messages: Option<usize>,
    /// How long this tenant's messages are kept, in ms (default: `[history] max_age_ms`).
    pub history_max_age_ms: Option<u64>,
    /// User destinations (as a publisher names them, `/queue/typing`) whose messages are not
    /// stored: any that starts with one of these keeps at-most-once delivery.
    #[serde(default)]
    pub history_exclude: Vec<String>,
    /// Topics whose messages are stored (`[[tenants.topic_history]]`): each gets a stream, its
    /// MESSAGE frames carry `x-stream-offset`, and a SUBSCRIBE with `x-stream-offset` replays
    /// from it. Other topics stay live only.
    #[serde(default)]
    pub topic_history: Vec<TopicHistoryConfig>,
    /// In a cluster, keep this tenant's queues in Redis (a stream and a consumer group per
    /// queue), so that a message survives the node holding it; `false` keeps them in the
    /// nodes' memory (a node's death loses what it held).
    #[serde(default = "default_true")]
    pub durable_queues: bool,
    /// Origins (`https://app.example.com`) whose pages may open WebSocket and SockJS
    /// connections; `"*"` allows any. Same-origin pages and clients that send no `Origin`
    /// (backends, command-line tools) are always allowed.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Destination prefixes of the tenant's backend (Spring's application destination
    /// prefixes): a client SEND to `/app/...` is handed to the backend through
    /// `[tenants.upstream]` instead of being routed to subscribers. `[]` turns it off.
    #[serde(default = "default_app_prefixes")]
    pub app_prefixes: Vec<String>,
    /// Where messages to `app_prefixes`, and connection events, go (`[tenants.upstream]`).
    #[serde(default)]
    pub upstream: UpstreamConfig,
}

/// `[tenants.plugin_backend]`: where a tenant's plugin may send HTTP requests, and their bounds.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginBackendConfig {
    /// `host:port` (or `host` for port 80) of every backend the plugin may call; a request to
    /// any other is refused before it is sent. Only `http://` URLs.
    pub allowed_hosts: Vec<String>,
    /// The longest one request may wait for its whole answer, in ms; never past the plugin
    /// call's own deadline (`plugin_deadline_ms`), which a backend call also counts against.
    #[serde(default = "default_backend_timeout_ms")]
    pub timeout_ms: u64,
    /// The largest answer body the plugin gets, in bytes; a larger answer is an error.
    #[serde(default = "default_backend_max_response_bytes")]
    pub max_response_bytes: usize,
}

fn default_backend_timeout_ms() -> u64 {
    1_000
}

fn default_backend_max_response_bytes() -> usize {
    64 << 10
}

/// `[tenants.plugin_cache]`: a tenant plugin's key-value cache. On a single node it lives in
/// the node's memory (`max_bytes` per tenant); clustered, in Redis, where entries expire
/// within `max_ttl_ms`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginCacheConfig {
    /// Bytes of keys and values kept in a node's memory for the tenant (single node); the
    /// entries closest to expiry make room.
    pub max_bytes: usize,
    /// Bytes of one key and its value at most; a larger entry is not stored.
    pub max_entry_bytes: usize,
    /// The longest an entry lives, in ms, whatever the plugin asks.
    pub max_ttl_ms: u64,
}

impl Default for PluginCacheConfig {
    fn default() -> PluginCacheConfig {
        PluginCacheConfig {
            max_bytes: 1 << 20,
            max_entry_bytes: 4096,
            max_ttl_ms: 3_600_000,
        }
    }
}

fn default_app_prefixes() -> Vec<String> {
    vec!["/app".to_string()]
}

/// `[tenants.upstream]`: the tenant's backend side. Client SENDs to an application prefix and
/// the connection events named in `events` are written to a Redis stream (`stream = true`),
/// POSTed to a signed webhook (`webhook_url`), or both.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Append each item to a Redis stream on the cluster's Redis (needs `[cluster] redis` or
    /// `redis_cluster`); backends read it with consumer groups.
    pub stream: bool,
    /// The stream's key (default `sb:{tenant}:upstream`).
    pub stream_key: Option<String>,
    /// Entries the stream keeps, about (`XADD MAXLEN ~`).
    pub stream_max_len: usize,
    /// POST each batch of items, as JSON, to this `http://` URL.
    pub webhook_url: Option<String>,
    /// The key of the webhook's HMAC-SHA256 signature (at least 16 characters).
    pub webhook_secret: Option<String>,
    /// How long one POST may take, in ms.
    pub webhook_timeout_ms: u64,
    /// How many times a failed POST (a connection error, a timeout, a 5xx, 408 or 429) is tried
    /// again, with backoff, before its items count as not accepted.
    pub webhook_retries: u32,
    /// Bytes of items waiting for each of the two (stream, webhook) at most; beyond it a SEND
    /// is refused with an ERROR, and an event is counted as dropped.
    pub queue_bytes: usize,
    /// Items in one stream write or one POST at most.
    pub batch_max: usize,
    /// Connection events to hand over besides messages: `connect`, `disconnect`,
    /// `subscribe`, `unsubscribe`.
    pub events: Vec<EventKind>,
}

impl Default for UpstreamConfig {
    fn default() -> UpstreamConfig {
        UpstreamConfig {
            stream: false,
            stream_key: None,
            stream_max_len: 100_000,
            webhook_url: None,
            webhook_secret: None,
            webhook_timeout_ms: 5_000,
            webhook_retries: 5,
            queue_bytes: 8 << 20,
            batch_max: 100,
            events: Vec::new(),
        }
    }
}

impl UpstreamConfig {
    /// True when anything receives what this tenant hands over.
    pub fn is_enabled(&self) -> bool {
        self.stream || self.webhook_url.is_some()
    }
}

/// A kind of connection event a tenant's backend may hear of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A session connected (after its CONNECT was authenticated).
    Connect,
    /// A session ended, with the reason.
    Disconnect,
    /// A session subscribed to a destination.
    Subscribe,
    /// A session unsubscribed (or its subscription ended with it).
    Unsubscribe,
}

impl EventKind {
    /// Its name in items and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Connect => "connect",
            EventKind::Disconnect => "disconnect",
            EventKind::Subscribe => "subscribe",
            EventKind::Unsubscribe => "unsubscribe",
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_plugin_deadline_ms() -> u64 {
    50
}

fn default_plugin_memory_bytes() -> usize {
    32 << 20
}

fn default_plugin_concurrency() -> usize {
    16
}

impl TenantConfig {
    /// A tenant with the built-in policy and no keys.
    pub fn new(id: &str) -> TenantConfig {
        TenantConfig {
            id: id.to_string(),
            api_keys: Vec::new(),
            plugin: None,
            settings: BTreeMap::new(),
            plugin_deadline_ms: default_plugin_deadline_ms(),
            plugin_memory_bytes: default_plugin_memory_bytes(),
            plugin_concurrency: default_plugin_concurrency(),
            plugin_backend: None,
            plugin_cache: PluginCacheConfig::default(),
            redis_ingress_channel: None,
            history: true,
            history_max_messages: None,
            history_max_age_ms: None,
            history_exclude: Vec::new(),
            topic_history: Vec::new(),
            durable_queues: true,
            allowed_origins: Vec::new(),
            app_prefixes: default_app_prefixes(),
            upstream: UpstreamConfig::default(),
        }
    }

    /// This tenant's retention under `defaults`.
    pub fn retention(&self, defaults: &HistoryConfig) -> crate::history::Retention {
        crate::history::Retention {
            max_messages: self.history_max_messages.unwrap_or(defaults.max_messages),
            max_age_ms: self.history_max_age_ms.unwrap_or(defaults.max_age_ms),
        }
    }
}

/// `[[tenants.topic_history]]`: the topics starting with `prefix` keep their messages, each
/// topic a stream of its own, within this retention (default: `[history]`'s).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicHistoryConfig {
    /// Topics starting with this (`/topic/prices/`); the longest matching prefix applies.
    pub prefix: String,
    /// Messages kept per topic (default: `[history] max_messages`).
    pub max_messages: Option<usize>,
    /// How long a message is kept, in ms (default: `[history] max_age_ms`).
    pub max_age_ms: Option<u64>,
}

impl TopicHistoryConfig {
    /// This prefix's retention under `defaults`.
    pub fn retention(&self, defaults: &HistoryConfig) -> crate::history::Retention {
        crate::history::Retention {
            max_messages: self.max_messages.unwrap_or(defaults.max_messages),
            max_age_ms: self.max_age_ms.unwrap_or(defaults.max_age_ms),
        }
    }
}

/// Command-line and environment overrides.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--http`.
    pub http: Option<SocketAddr>,
    /// `--stomp`.
    pub stomp: Option<SocketAddr>,
    /// `--api-key` / `STOMPBOX_API_KEY`: a key for tenant `default`.
    pub api_key: Option<String>,
    /// `--admin-token` / `STOMPBOX_ADMIN_TOKEN`.
    pub admin_token: Option<String>,
    /// `--redis`.
    pub redis: Option<String>,
    /// `--redis-cluster`.
    pub redis_cluster: Option<Vec<String>>,
    /// `--node-id`.
    pub node_id: Option<String>,
}

/// The tenant used when a path or CONNECT names none.
pub const DEFAULT_TENANT: &str = "default";

impl Config {
    /// Reads and parses a TOML file (not yet validated).
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for tenant in &mut config.tenants {
            if let Some(plugin) = &tenant.plugin {
                if plugin.is_relative() {
                    tenant.plugin = Some(base.join(plugin));
                }
            }
        }
        if let Some(dir) = &config.server.plugin_compile_cache_dir {
            if dir.is_relative() {
                config.server.plugin_compile_cache_dir = Some(base.join(dir));
            }
        }
        config.server.state_file = Some(match config.server.state_file.take() {
            Some(file) if file.is_relative() => base.join(file),
            Some(file) => file,
            None => path.with_extension("state.json"),
        });
        config.server.config_dir = Some(base.to_path_buf());
        Ok(config)
    }

    /// Parses TOML text (not yet validated).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<text>".into(),
            message: e.to_string(),
        })
    }

    /// Applies flags, adds tenant `default` when there is none or an API key is given for it,
    /// then validates.
    pub fn finish(mut self, overrides: Overrides) -> Result<Config, ConfigError> {
        if let Some(http) = overrides.http {
            self.server.http = http;
        }
        if let Some(stomp) = overrides.stomp {
            self.server.stomp = stomp;
        }
        let has_default = self.tenants.iter().any(|t| t.id == DEFAULT_TENANT);
        if !has_default && (self.tenants.is_empty() || overrides.api_key.is_some()) {
            self.tenants.push(TenantConfig::new(DEFAULT_TENANT));
        }
        if let Some(token) = overrides.admin_token.filter(|t| !t.is_empty()) {
            self.server.admin_token = Some(token);
        }
        if let Some(redis) = overrides.redis {
            self.cluster.redis = Some(redis);
        }
        if let Some(seeds) = overrides.redis_cluster {
            self.cluster.redis_cluster = seeds;
        }
        if let Some(id) = overrides.node_id {
            self.cluster.node_id = Some(id);
        }
        if let Some(key) = overrides.api_key.filter(|k| !k.is_empty()) {
            if let Some(t) = self.tenants.iter_mut().find(|t| t.id == DEFAULT_TENANT) {
                t.api_keys.push(key);
            }
        }
        self.validate()?;
        Ok(self)
    }

    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        let at_least = |key: &str, value: usize, min: usize| {
            if value < min {
                Err(invalid(
                    format!("server.{key}"),
                    format!("must be at least {min}, got {value}"),
                ))
            } else {
                Ok(())
            }
        };
        at_least("max_frame_bytes", s.max_frame_bytes, 256)?;
        at_least("max_headers", s.max_headers, 8)?;
        at_least("max_header_line", s.max_header_line, 64)?;
        at_least("max_connections", s.max_connections, 1)?;
        at_least("max_subscriptions", s.max_subscriptions, 1)?;
        at_least("outbound_queue_bytes", s.outbound_queue_bytes, s.max_frame_bytes)
            .map_err(|_| {
                invalid(
                    "server.outbound_queue_bytes",
                    "must be at least server.max_frame_bytes, or one large message would close any consumer",
                )
            })?;
        at_least("max_transaction_frames", s.max_transaction_frames, 1)?;
        // Each must hold at least one frame of the largest size, or a single message could
        // never be queued, buffered in a transaction or held for its ACK.
        for (key, value) in [
            ("max_queue_backlog_bytes", s.max_queue_backlog_bytes),
            ("node_backlog_bytes", s.node_backlog_bytes),
            ("connection_memory_bytes", s.connection_memory_bytes),
        ] {
            if value < 4 * s.max_frame_bytes {
                return Err(invalid(
                    format!("server.{key}"),
                    format!(
                        "must be at least 4 × server.max_frame_bytes ({}), got {value}",
                        4 * s.max_frame_bytes
                    ),
                ));
            }
        }
        at_least(
            "max_batch_bytes",
            s.max_batch_bytes,
            2 * s.max_frame_bytes + 4096,
        )?;
        at_least("max_batch_messages", s.max_batch_messages, 1)?;
        if s.connect_timeout_ms == 0 {
            return Err(invalid("server.connect_timeout_ms", "must be more than 0"));
        }
        if s.delivery_confirm_ms > 10_000 {
            return Err(invalid(
                "server.delivery_confirm_ms",
                "must be at most 10000 (10 s)",
            ));
        }
        if s.frame_timeout_ms == 0 {
            return Err(invalid("server.frame_timeout_ms", "must be more than 0"));
        }
        if !(s.heartbeat_tolerance >= 1.0 && s.heartbeat_tolerance <= 100.0) {
            return Err(invalid(
                "server.heartbeat_tolerance",
                "must be between 1.0 and 100.0",
            ));
        }
        if s.drain_ms > 3_600_000 {
            return Err(invalid(
                "server.drain_ms",
                "must be at most 3600000 (an hour)",
            ));
        }
        if s.admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(invalid(
                "server.admin_token",
                "an admin token must have at least 16 characters",
            ));
        }
        let h = &self.history;
        if h.max_messages == 0 {
            return Err(invalid("history.max_messages", "must be at least 1"));
        }
        if h.max_age_ms < 1_000 {
            return Err(invalid("history.max_age_ms", "must be at least 1000"));
        }
        if h.max_bytes < 4 * s.max_frame_bytes {
            return Err(invalid(
                "history.max_bytes",
                format!(
                    "must be at least 4 × server.max_frame_bytes ({})",
                    4 * s.max_frame_bytes
                ),
            ));
        }
        for (i, t) in self.tenants.iter().enumerate() {
            if t.history_max_messages == Some(0) {
                return Err(invalid(
                    format!("tenants[{i}].history_max_messages"),
                    "must be at least 1",
                ));
            }
            if t.history_max_age_ms.is_some_and(|ms| ms < 1_000) {
                return Err(invalid(
                    format!("tenants[{i}].history_max_age_ms"),
                    "must be at least 1000",
                ));
            }
            for (j, prefix) in t.history_exclude.iter().enumerate() {
                if !prefix.starts_with('/') || prefix.starts_with("/user/") {
                    return Err(invalid(
                        format!("tenants[{i}].history_exclude[{j}]"),
                        "must be a destination as a publisher names it, such as /queue/typing",
                    ));
                }
            }
            for (j, topics) in t.topic_history.iter().enumerate() {
                let key = |name: &str| format!("tenants[{i}].topic_history[{j}].{name}");
                if !topics.prefix.starts_with("/topic/") {
                    return Err(invalid(
                        key("prefix"),
                        "must start with /topic/, such as /topic/prices/",
                    ));
                }
                if topics.max_messages == Some(0) {
                    return Err(invalid(key("max_messages"), "must be at least 1"));
                }
                if topics.max_age_ms.is_some_and(|ms| ms < 1_000) {
                    return Err(invalid(key("max_age_ms"), "must be at least 1000"));
                }
                if t.topic_history[..j]
                    .iter()
                    .any(|o| o.prefix == topics.prefix)
                {
                    return Err(invalid(key("prefix"), "is given twice"));
                }
            }
        }
        let j = &self.sockjs;
        if j.heartbeat_ms < 100 {
            return Err(invalid("sockjs.heartbeat_ms", "must be at least 100"));
        }
        if j.disconnect_delay_ms < 100 {
            return Err(invalid(
                "sockjs.disconnect_delay_ms",
                "must be at least 100",
            ));
        }
        if j.response_limit_bytes < 1024 {
            return Err(invalid(
                "sockjs.response_limit_bytes",
                "must be at least 1024",
            ));
        }
        if j.client_url.is_empty() || j.client_url.contains('"') {
            return Err(invalid(
                "sockjs.client_url",
                "must be a URL (a path such as /vendor/sockjs-client/sockjs.min.js, or http...)",
            ));
        }
        if s.plugin_poll_ms < 10 {
            return Err(invalid("server.plugin_poll_ms", "must be at least 10"));
        }
        if let Some(url) = &self.cluster.redis {
            redis::Client::open(url.as_str()).map_err(|e| {
                invalid("cluster.redis", format!("'{url}' is not a Redis URL: {e}"))
            })?;
            if !self.cluster.redis_cluster.is_empty() {
                return Err(invalid(
                    "cluster.redis_cluster",
                    "names a Redis Cluster while cluster.redis names a single Redis: set one of them",
                ));
            }
        }
        for url in &self.cluster.redis_cluster {
            use redis::IntoConnectionInfo;
            let info = url.as_str().into_connection_info().map_err(|e| {
                invalid(
                    "cluster.redis_cluster",
                    format!("'{url}' is not a Redis URL: {e}"),
                )
            })?;
            if !matches!(info.addr(), redis::ConnectionAddr::Tcp(..)) {
                return Err(invalid(
                    "cluster.redis_cluster",
                    format!("'{url}' is not a redis://host:port URL"),
                ));
            }
            if info.redis_settings().db() != 0 {
                return Err(invalid(
                    "cluster.redis_cluster",
                    format!(
                        "'{url}' names database {}; a Redis Cluster has only database 0",
                        info.redis_settings().db()
                    ),
                ));
            }
        }
        if let Some(id) = &self.cluster.node_id {
            if id.is_empty()
                || id.len() > 64
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(invalid(
                    "cluster.node_id",
                    format!("'{id}' is not a node id: use 1 to 64 of A-Z a-z 0-9 - _"),
                ));
            }
        }
        if self.cluster.replica_acks > 16 {
            return Err(invalid("cluster.replica_acks", "must be at most 16"));
        }
        if !(1..=1_500).contains(&self.cluster.replica_ack_timeout_ms) {
            return Err(invalid(
                "cluster.replica_ack_timeout_ms",
                "must be between 1 and 1500 (a Redis command gets 2 s in all)",
            ));
        }
        if self.cluster.node_ttl_ms < 1_000 {
            return Err(invalid("cluster.node_ttl_ms", "must be at least 1000"));
        }
        if self.cluster.presence_cache_ms > self.cluster.node_ttl_ms {
            return Err(invalid(
                "cluster.presence_cache_ms",
                "must not exceed cluster.node_ttl_ms",
            ));
        }
        if self.tenants.is_empty() {
            return Err(invalid("tenants", "at least one tenant is needed"));
        }
        for (i, tenant) in self.tenants.iter().enumerate() {
            let key = format!("tenants[{i}].id");
            let valid = !tenant.id.is_empty()
                && tenant.id.len() <= 64
                && tenant
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                return Err(invalid(
                    key,
                    format!(
                        "'{}' is not a tenant id: use 1 to 64 of A-Z a-z 0-9 - _",
                        tenant.id
                    ),
                ));
            }
            if self.tenants[..i].iter().any(|t| t.id == tenant.id) {
                return Err(invalid(
                    key,
                    format!("tenant '{}' is defined twice", tenant.id),
                ));
            }
            if let Some(plugin) = &tenant.plugin {
                if !plugin.is_file() {
                    return Err(invalid(
                        format!("tenants[{i}].plugin"),
                        format!("no plugin file at {}", plugin.display()),
                    ));
                }
            }
            if !(1..=10_000).contains(&tenant.plugin_deadline_ms) {
                return Err(invalid(
                    format!("tenants[{i}].plugin_deadline_ms"),
                    "must be between 1 and 10000",
                ));
            }
            if tenant.plugin_memory_bytes < 1 << 20 {
                return Err(invalid(
                    format!("tenants[{i}].plugin_memory_bytes"),
                    "must be at least 1048576 (1 MiB)",
                ));
            }
            if !(1..=1_000).contains(&tenant.plugin_concurrency) {
                return Err(invalid(
                    format!("tenants[{i}].plugin_concurrency"),
                    "must be between 1 and 1000",
                ));
            }
            Self::validate_plugin_reach(i, tenant)?;
            for (k, origin) in tenant.allowed_origins.iter().enumerate() {
                if let Err(message) = crate::web::origin::check_pattern(origin) {
                    return Err(invalid(
                        format!("tenants[{i}].allowed_origins[{k}]"),
                        message,
                    ));
                }
            }
            self.validate_upstream(i, tenant)?;
            if let Some(k) = tenant.api_keys.iter().position(|k| k.len() < 8) {
                return Err(invalid(
                    format!("tenants[{i}].api_keys[{k}]"),
                    "an API key must have at least 8 characters",
                ));
            }
        }
        Ok(())
    }

    /// Checks a tenant's `[tenants.plugin_backend]` and `[tenants.plugin_cache]`.
    fn validate_plugin_reach(i: usize, tenant: &TenantConfig) -> Result<(), ConfigError> {
        if let Some(backend) = &tenant.plugin_backend {
            let key = |name: &str| format!("tenants[{i}].plugin_backend.{name}");
            if backend.allowed_hosts.is_empty() {
                return Err(invalid(
                    key("allowed_hosts"),
                    "name at least one host:port, or leave [tenants.plugin_backend] out",
                ));
            }
            for (j, entry) in backend.allowed_hosts.iter().enumerate() {
                crate::web::client::parse_authority(entry).map_err(|e| {
                    invalid(format!("tenants[{i}].plugin_backend.allowed_hosts[{j}]"), e)
                })?;
            }
            if !(1..=60_000).contains(&backend.timeout_ms) {
                return Err(invalid(key("timeout_ms"), "must be between 1 and 60000"));
            }
            if !(1..=16 << 20).contains(&backend.max_response_bytes) {
                return Err(invalid(
                    key("max_response_bytes"),
                    "must be between 1 and 16777216 (16 MiB)",
                ));
            }
        }
        let cache = &tenant.plugin_cache;
        let key = |name: &str| format!("tenants[{i}].plugin_cache.{name}");
        if !(16..=1 << 20).contains(&cache.max_entry_bytes) {
            return Err(invalid(
                key("max_entry_bytes"),
                "must be between 16 and 1048576 (1 MiB)",
            ));
        }
        if cache.max_bytes < cache.max_entry_bytes {
            return Err(invalid(
                key("max_bytes"),
                "must be at least max_entry_bytes",
            ));
        }
        if !(1_000..=7 * 86_400_000).contains(&cache.max_ttl_ms) {
            return Err(invalid(
                key("max_ttl_ms"),
                "must be between 1000 and 604800000 (7 days)",
            ));
        }
        Ok(())
    }

    /// Checks a tenant's application prefixes and `[tenants.upstream]`.
    fn validate_upstream(&self, i: usize, tenant: &TenantConfig) -> Result<(), ConfigError> {
        for (j, prefix) in tenant.app_prefixes.iter().enumerate() {
            let bare = prefix.trim_end_matches('/');
            let routed = ["/topic", "/queue", "/user"].iter().any(|p| {
                bare == *p
                    || bare.starts_with(&format!("{p}/"))
                    || p.starts_with(&format!("{bare}/"))
            });
            if !bare.starts_with('/') || bare.len() < 2 || routed {
                return Err(invalid(
                    format!("tenants[{i}].app_prefixes[{j}]"),
                    "must be a destination prefix such as /app, apart from /topic, /queue and /user",
                ));
            }
        }
        let u = &tenant.upstream;
        let key = |name: &str| format!("tenants[{i}].upstream.{name}");
        if u.stream && self.cluster.redis.is_none() && self.cluster.redis_cluster.is_empty() {
            return Err(invalid(
                key("stream"),
                "needs a Redis: set cluster.redis or cluster.redis_cluster, or use upstream.webhook_url",
            ));
        }
        if u.stream_key.as_ref().is_some_and(|k| k.is_empty()) {
            return Err(invalid(key("stream_key"), "must not be empty"));
        }
        if u.stream_max_len < 1_000 {
            return Err(invalid(key("stream_max_len"), "must be at least 1000"));
        }
        if let Some(url) = &u.webhook_url {
            crate::web::client::parse_url(url)
                .map_err(|e| invalid(key("webhook_url"), format!("'{url}': {e}")))?;
            if u.webhook_secret.as_ref().is_none_or(|s| s.len() < 16) {
                return Err(invalid(
                    key("webhook_secret"),
                    "a webhook needs a secret of at least 16 characters to sign its requests",
                ));
            }
        } else if u.webhook_secret.is_some() {
            return Err(invalid(
                key("webhook_url"),
                "a webhook_secret is set but no webhook_url",
            ));
        }
        if !(100..=60_000).contains(&u.webhook_timeout_ms) {
            return Err(invalid(
                key("webhook_timeout_ms"),
                "must be between 100 and 60000",
            ));
        }
        if u.webhook_retries > 20 {
            return Err(invalid(key("webhook_retries"), "must be at most 20"));
        }
        if u.queue_bytes < 4 * self.server.max_frame_bytes {
            return Err(invalid(
                key("queue_bytes"),
                format!(
                    "must be at least 4 × server.max_frame_bytes ({})",
                    4 * self.server.max_frame_bytes
                ),
            ));
        }
        if !(1..=10_000).contains(&u.batch_max) {
            return Err(invalid(key("batch_max"), "must be between 1 and 10000"));
        }
        if !u.events.is_empty() && !u.is_enabled() {
            return Err(invalid(
                key("events"),
                "events are named but nothing receives them: set upstream.stream or upstream.webhook_url",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_gives_a_default_tenant() {
        let config = Config::default()
            .finish(Overrides {
                api_key: Some("secret-key".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(config.tenants.len(), 1);
        assert_eq!(config.tenants[0].id, "default");
        assert_eq!(config.tenants[0].api_keys, vec!["secret-key".to_string()]);
    }

    #[test]
    fn a_redis_cluster_is_named_by_its_seeds_and_checked() {
        let seeds =
            "[cluster]\nredis_cluster = [\"redis://127.0.0.1:7000\", \"redis://127.0.0.1:7001\"]\n";
        let config = Config::from_toml(seeds)
            .unwrap()
            .finish(Overrides::default())
            .unwrap();
        assert_eq!(config.cluster.redis_cluster.len(), 2);
        for (toml, says) in [
            (
                "[cluster]\nredis = \"redis://127.0.0.1:6379/0\"\nredis_cluster = [\"redis://127.0.0.1:7000\"]\n",
                "set one of them",
            ),
            (
                "[cluster]\nredis_cluster = [\"redis://127.0.0.1:7000/2\"]\n",
                "only database 0",
            ),
            ("[cluster]\nredis_cluster = [\"nonsense\"]\n", "not a Redis URL"),
            ("[cluster]\nreplica_acks = 17\n", "at most 16"),
            ("[cluster]\nreplica_ack_timeout_ms = 0\n", "between 1 and 1500"),
        ] {
            let err = Config::from_toml(toml)
                .unwrap()
                .finish(Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("cluster."), "{err}");
            assert!(err.contains(says), "{toml}: {err}");
        }
        // The flag names the seeds too.
        let config = Config::default()
            .finish(Overrides {
                redis_cluster: Some(vec!["redis://127.0.0.1:7000".into()]),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(config.cluster.redis_cluster, ["redis://127.0.0.1:7000"]);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_toml("[server]\nmax_frame_byte = 10\n").unwrap_err();
        assert!(err.to_string().contains("max_frame_byte"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = Config::from_toml("[server]\nmax_frame_bytes = 10\n")
            .unwrap()
            .finish(Overrides::default())
            .unwrap_err();
        assert!(err.to_string().contains("server.max_frame_bytes"), "{err}");
        let err = Config::from_toml("[[tenants]]\nid = \"a b\"\n")
            .unwrap()
            .finish(Overrides::default())
            .unwrap_err();
        assert!(err.to_string().contains("tenants[0].id"), "{err}");
        let err = Config::from_toml("[[tenants]]\nid = \"a\"\n[[tenants]]\nid = \"a\"\n")
            .unwrap()
            .finish(Overrides::default())
            .unwrap_err();
        assert!(err.to_string().contains("tenants[1].id"), "{err}");
        for (toml, key) in [
            ("[history]\nmax_messages = 0\n", "history.max_messages"),
            ("[history]\nmax_age_ms = 5\n", "history.max_age_ms"),
            ("[history]\nmax_bytes = 1000\n", "history.max_bytes"),
            (
                "[[tenants]]\nid = \"a\"\nhistory_max_messages = 0\n",
                "tenants[0].history_max_messages",
            ),
            (
                "[[tenants]]\nid = \"a\"\nhistory_max_age_ms = 10\n",
                "tenants[0].history_max_age_ms",
            ),
            (
                "[[tenants]]\nid = \"a\"\nhistory_exclude = [\"queue/x\"]\n",
                "tenants[0].history_exclude[0]",
            ),
            (
                "[[tenants]]\nid = \"a\"\n[[tenants.topic_history]]\nprefix = \"/queue/x\"\n",
                "tenants[0].topic_history[0].prefix",
            ),
            (
                "[[tenants]]\nid = \"a\"\n[[tenants.topic_history]]\nprefix = \"/topic/x\"\nmax_messages = 0\n",
                "tenants[0].topic_history[0].max_messages",
            ),
            (
                "[[tenants]]\nid = \"a\"\n[[tenants.topic_history]]\nprefix = \"/topic/x\"\nmax_age_ms = 9\n",
                "tenants[0].topic_history[0].max_age_ms",
            ),
            (
                "[[tenants]]\nid = \"a\"\napp_prefixes = [\"/topic\"]\n",
                "tenants[0].app_prefixes[0]",
            ),
            (
                "[[tenants]]\nid = \"a\"\napp_prefixes = [\"app\"]\n",
                "tenants[0].app_prefixes[0]",
            ),
            (
                "[[tenants]]\nid = \"a\"\n[tenants.upstream]\nstream = true\n",
                "tenants[0].upstream.stream",
            ),
            (
                "[[tenants]]\nid = \"a\"\n[tenants.upstream]\nwebhook_url = \"https://x/\"\nwebhook_secret = \"0123456789abcdef\"\n",
                "tenants[0].upstream.webhook_url",
            ),
            (
                "[[tenants]]\nid = \"a\"\n[tenants.upstream]\nwebhook_url = \"http://x/\"\n",
                "tenants[0].upstream.webhook_secret",
            ),
            (
                "[[tenants]]\nid = \"a\"\n[tenants.upstream]\nwebhook_url = \"http://x/\"\nwebhook_secret = \"short\"\n",
                "tenants[0].upstream.webhook_secret",
            ),
            (
                "[[tenants]]\nid = \"a\"\n[tenants.upstream]\nevents = [\"connect\"]\n",
                "tenants[0].upstream.events",
            ),
            (
                "[cluster]\nredis = \"redis://127.0.0.1/\"\n[[tenants]]\nid = \"a\"\n[tenants.upstream]\nstream = true\nqueue_bytes = 10\n",
                "tenants[0].upstream.queue_bytes",
            ),
            (
                "[[tenants]]\nid = \"a\"\n[tenants.upstream]\nwebhook_url = \"http://x/\"\nwebhook_secret = \"0123456789abcdef\"\nwebhook_timeout_ms = 5\n",
                "tenants[0].upstream.webhook_timeout_ms",
            ),
        ] {
            let err = Config::from_toml(toml)
                .unwrap()
                .finish(Overrides::default())
                .unwrap_err();
            assert!(err.to_string().contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn an_upstream_takes_a_stream_a_webhook_and_events() {
        let config = Config::from_toml(
            "[cluster]\nredis = \"redis://127.0.0.1/\"\n[[tenants]]\nid = \"a\"\napp_prefixes = [\"/app\", \"/backend/\"]\n[tenants.upstream]\nstream = true\nwebhook_url = \"http://127.0.0.1:9/hook\"\nwebhook_secret = \"0123456789abcdef\"\nevents = [\"connect\", \"disconnect\"]\n",
        )
        .unwrap()
        .finish(Overrides::default())
        .unwrap();
        let u = &config.tenants[0].upstream;
        assert!(u.stream && u.is_enabled());
        assert_eq!(u.events, vec![EventKind::Connect, EventKind::Disconnect]);
        assert_eq!(
            TenantConfig::new("b").app_prefixes,
            vec!["/app".to_string()]
        );
        let err = Config::from_toml(
            "[[tenants]]\nid = \"a\"\n[tenants.upstream]\nevents = [\"typing\"]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("typing"), "{err}");
    }

    #[test]
    fn a_plugin_reaches_only_what_its_tenant_names() {
        let tenant = |extra: &str| {
            Config::from_toml(&format!("[[tenants]]\nid = \"a\"\n{extra}"))
                .and_then(|c| c.finish(Overrides::default()))
        };
        let config = tenant(
            "plugin_concurrency = 4\n[tenants.plugin_backend]\nallowed_hosts = [\"127.0.0.1:8081\", \"auth.internal\"]\n[tenants.plugin_cache]\nmax_bytes = 65536\n",
        )
        .unwrap();
        let t = &config.tenants[0];
        assert_eq!(t.plugin_concurrency, 4);
        let backend = t.plugin_backend.as_ref().unwrap();
        assert_eq!(
            (backend.timeout_ms, backend.max_response_bytes),
            (1_000, 64 << 10)
        );
        assert_eq!(t.plugin_cache.max_bytes, 65536);
        assert_eq!(t.plugin_cache.max_entry_bytes, 4096);
        assert!(TenantConfig::new("b").plugin_backend.is_none(), "opt-in");
        for (extra, key) in [
            (
                "[tenants.plugin_backend]\nallowed_hosts = [\"http://x\"]\n",
                "tenants[0].plugin_backend.allowed_hosts[0]",
            ),
            (
                "[tenants.plugin_backend]\nallowed_hosts = []\n",
                "tenants[0].plugin_backend.allowed_hosts",
            ),
            (
                "[tenants.plugin_backend]\nallowed_hosts = [\"a:1\"]\ntimeout_ms = 0\n",
                "tenants[0].plugin_backend.timeout_ms",
            ),
            (
                "[tenants.plugin_cache]\nmax_bytes = 100\n",
                "tenants[0].plugin_cache.max_bytes",
            ),
            ("plugin_concurrency = 0\n", "tenants[0].plugin_concurrency"),
        ] {
            let err = tenant(extra).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn tenants_from_file_without_default_stay_as_they_are() {
        let config = Config::from_toml("[[tenants]]\nid = \"acme\"\napi_keys = [\"0123456789\"]\n")
            .unwrap()
            .finish(Overrides::default())
            .unwrap();
        assert_eq!(config.tenants.len(), 1);
    }
}
