//! The `stompbox` command line: `stompbox serve`, and `stompbox plugin check|call|test` for
//! plugin authors.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use stompbox::config::{Config, Overrides};
use stompbox::node::Node;
use stompbox::plugin::tool::{self, ToolCall};
use stompbox::plugin::{cases, Backend, BackendAccess, HttpBackend, NoBackend, PluginLimits};
use stompbox::policy::{ConnectInfo, Operation, TransportKind};
use tokio::net::{TcpListener, TcpSocket};
use tracing::{error, info};

#[derive(Parser)]
#[command(
    name = "stompbox",
    version,
    about = "Push messages from backends to browsers over STOMP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// HTTP address (WebSocket, publish API, admin, health) [default: 127.0.0.1:8080].
        #[arg(long)]
        http: Option<SocketAddr>,
        /// STOMP-over-TCP address [default: 127.0.0.1:61613].
        #[arg(long)]
        stomp: Option<SocketAddr>,
        /// Publish API key of tenant `default`.
        #[arg(long, env = "STOMPBOX_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Bearer token of the admin API (disabled without one).
        #[arg(long, env = "STOMPBOX_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Join a cluster through Redis: redis://HOST:PORT/DB.
        #[arg(long)]
        redis: Option<String>,
        /// Join a cluster through a Redis Cluster: seed nodes, comma-separated
        /// (redis://HOST:PORT,redis://HOST:PORT).
        #[arg(long, value_delimiter = ',')]
        redis_cluster: Option<Vec<String>>,
        /// This node's id in the cluster [default: generated].
        #[arg(long)]
        node_id: Option<String>,
    },
    /// Tools for plugin authors.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Checks a .wasm against the stompbox:plugin world and prints what it exports.
    Check {
        /// The plugin file.
        file: PathBuf,
    },
    /// Runs one call as a node would and prints the result as JSON.
    Call {
        /// The plugin file.
        file: PathBuf,
        #[command(subcommand)]
        function: Function,
        /// A tenant setting, `key=value` (repeatable).
        #[arg(long = "setting", global = true, value_parser = key_value)]
        settings: Vec<(String, String)>,
        /// The call's deadline in ms.
        #[arg(long, global = true, default_value_t = 50)]
        deadline_ms: u64,
        /// The instance's memory cap in bytes.
        #[arg(long, global = true, default_value_t = 32 << 20)]
        memory_bytes: usize,
        /// A backend the plugin may call, `host:port` (repeatable); none by default.
        #[arg(long = "allow-host", global = true)]
        allow_hosts: Vec<String>,
    },
    /// Runs the cases of a cases file (TOML) against a plugin; exits 1 when one does not
    /// match, 2 when the files cannot be used.
    Test {
        /// The plugin file.
        file: PathBuf,
        /// The cases file.
        cases: PathBuf,
    },
}

#[derive(Subcommand)]
enum Function {
    /// `authenticate(connect-info)`.
    Authenticate {
        /// A CONNECT header, `name=value` (repeatable).
        #[arg(long = "header", value_parser = key_value)]
        headers: Vec<(String, String)>,
        /// The tenant id.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// The transport.
        #[arg(long, value_enum, default_value_t = Transport::Websocket)]
        transport: Transport,
        /// The remote address.
        #[arg(long)]
        remote_addr: Option<String>,
        /// A header of the request that opened the connection, `name=value` (repeatable),
        /// e.g. `cookie=SESSION=abc`.
        #[arg(long = "request-header", value_parser = key_value)]
        request_headers: Vec<(String, String)>,
    },
    /// `authorize(principal, operation, destination)`.
    Authorize {
        /// The principal's user.
        #[arg(long, default_value = "")]
        user: String,
        /// A principal attribute, `name=value` (repeatable).
        #[arg(long = "attribute", value_parser = key_value)]
        attributes: Vec<(String, String)>,
        /// The operation.
        #[arg(long, value_enum)]
        op: Op,
        /// The destination.
        #[arg(long)]
        destination: String,
    },
    /// `resolve-channel(code)`.
    ResolveChannel {
        /// The channel code.
        #[arg(long)]
        code: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Transport {
    Websocket,
    Sockjs,
    Tcp,
}

#[derive(Clone, Copy, ValueEnum)]
enum Op {
    Subscribe,
    Send,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected name=value, got '{s}'"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            http,
            stomp,
            api_key,
            admin_token,
            redis,
            redis_cluster,
            node_id,
        } => {
            let overrides = Overrides {
                http,
                stomp,
                api_key,
                admin_token,
                redis,
                redis_cluster,
                node_id,
            };
            match serve(config, overrides) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!("{e:#}");
                    eprintln!("stompbox: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Plugin { command } => plugin(command),
    }
}

fn plugin(command: PluginCommand) -> ExitCode {
    // As a node does by default: what was compiled once loads at once.
    stompbox::plugin::engine::configure_compile_cache(
        stompbox::plugin::engine::CompileCache::Default,
    );
    // The plugin tools run guests exactly as a node does: async, on a runtime of their own.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("stompbox: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        PluginCommand::Check { file } => tool::check(&file),
        PluginCommand::Test { file, cases } => return runtime.block_on(plugin_test(file, cases)),
        PluginCommand::Call {
            file,
            function,
            settings,
            deadline_ms,
            memory_bytes,
            allow_hosts,
        } => {
            let request = match function {
                Function::Authenticate {
                    headers,
                    tenant,
                    transport,
                    remote_addr,
                    request_headers,
                } => ToolCall::Authenticate(ConnectInfo {
                    tenant,
                    transport: match transport {
                        Transport::Websocket => TransportKind::WebSocket,
                        Transport::Sockjs => TransportKind::SockJs,
                        Transport::Tcp => TransportKind::Tcp,
                    },
                    remote_addr,
                    headers,
                    request_headers: request_headers
                        .into_iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v))
                        .collect(),
                }),
                Function::Authorize {
                    user,
                    attributes,
                    op,
                    destination,
                } => ToolCall::Authorize {
                    user,
                    attributes,
                    op: match op {
                        Op::Subscribe => Operation::Subscribe,
                        Op::Send => Operation::Send,
                    },
                    destination,
                },
                Function::ResolveChannel { code } => ToolCall::ResolveChannel { code },
            };
            let limits = PluginLimits {
                deadline: Duration::from_millis(deadline_ms),
                memory_bytes,
                concurrency: 1,
            };
            let backend: std::sync::Arc<dyn Backend> = if allow_hosts.is_empty() {
                std::sync::Arc::new(NoBackend {
                    tenant: "default".into(),
                })
            } else {
                let mut allowed = Vec::new();
                for entry in &allow_hosts {
                    match stompbox::web::client::parse_authority(entry) {
                        Ok(host) => allowed.push(host),
                        Err(e) => {
                            eprintln!("stompbox: --allow-host: {e}");
                            return ExitCode::from(2);
                        }
                    }
                }
                std::sync::Arc::new(HttpBackend::new(BackendAccess {
                    allowed_hosts: allowed,
                    timeout: Duration::from_millis(deadline_ms),
                    max_response_bytes: 64 << 10,
                }))
            };
            runtime.block_on(tool::call(
                &file,
                settings.into_iter().collect::<BTreeMap<_, _>>(),
                backend,
                limits,
                request,
            ))
        }
    };
    match result {
        Ok(answer) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&answer).unwrap_or_default()
            );
            // A policy's `err` answer is a result, not a failure of the tool.
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stompbox: {e}");
            ExitCode::from(2)
        }
    }
}

/// `stompbox plugin test`: the report on stdout; 0 when every case matched.
async fn plugin_test(file: PathBuf, cases_path: PathBuf) -> ExitCode {
    let cases = match cases::read(&cases_path) {
        Ok(cases) => cases,
        Err(e) => {
            eprintln!("stompbox: {e}");
            return ExitCode::from(2);
        }
    };
    match cases::run(&file, cases).await {
        Ok(report) => {
            print!("{}", report.text);
            if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("stompbox: {e}");
            ExitCode::from(2)
        }
    }
}

fn serve(config_path: Option<PathBuf>, overrides: Overrides) -> anyhow::Result<()> {
    let config = match &config_path {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    }
    .finish(overrides.clone())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        if !config.cluster.redis_cluster.is_empty() {
            // A cluster no seed leads to is a configuration mistake, not an outage to ride out.
            let seeds = &config.cluster.redis_cluster;
            match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                stompbox::cluster::redis::RedisBackplane::probe_cluster(seeds),
            )
            .await
            {
                Ok(Ok(primaries)) => info!(primaries = %primaries.join(", "), "Redis Cluster found"),
                Ok(Err(e)) => anyhow::bail!(
                    "invalid configuration: cluster.redis_cluster: no Redis Cluster answers at {}: {e}",
                    seeds.join(", ")
                ),
                Err(_) => anyhow::bail!(
                    "invalid configuration: cluster.redis_cluster: no Redis Cluster answered within 10 s at {}",
                    seeds.join(", ")
                ),
            }
        }
        let http = listen(config.server.http)
            .with_context(|| format!("binding the HTTP address {}", config.server.http))?;
        let stomp = listen(config.server.stomp)
            .with_context(|| format!("binding the STOMP address {}", config.server.stomp))?;
        let node = Node::new(&config);
        let (http_addr, stomp_addr) = (http.local_addr()?, stomp.local_addr()?);
        info!(node = %node.node_id, http = %http_addr, stomp = %stomp_addr, "listening");
        // One machine-readable line on stdout, so scripts and tests that bind port 0 learn the ports.
        println!("stompbox listening http={http_addr} stomp={stomp_addr}");
        tokio::spawn(shutdown_on_signal(node.clone()));
        #[cfg(unix)]
        tokio::spawn(reload_on_hangup(node.clone(), config_path, overrides));
        stompbox::server::run(node, http, stomp).await?;
        Ok(())
    })
}

/// Reads the config file again on each SIGHUP (see `stompbox::node::reload`): a file that is
/// not valid is logged with the key at fault and changes nothing.
#[cfg(unix)]
async fn reload_on_hangup(
    node: std::sync::Arc<Node>,
    config_path: Option<PathBuf>,
    overrides: Overrides,
) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        return;
    };
    while hangups.recv().await.is_some() {
        let Some(path) = &config_path else {
            tracing::warn!(
                "SIGHUP: this node runs without a config file (--config); nothing to read again"
            );
            continue;
        };
        let config = match Config::from_file(path).and_then(|c| c.finish(overrides.clone())) {
            Ok(config) => config,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "SIGHUP: the config file is not valid; the running config stays");
                continue;
            }
        };
        let report = node.reload(config).await;
        for key in &report.needs_restart {
            tracing::warn!(key = %key, "SIGHUP: changed in the config file; takes effect after a restart");
        }
        for (tenant, why) in &report.refused {
            tracing::error!(tenant = %tenant, error = %why, "SIGHUP: a tenant's settings are not taken; its running version stays");
        }
        for tenant in &report.kept_from_admin {
            tracing::info!(tenant = %tenant, "SIGHUP: tenant left as the admin API set it");
        }
        info!(
            tenants = ?report.tenants,
            limits = ?report.applied_limits,
            "SIGHUP: config file read again"
        );
    }
}

async fn shutdown_on_signal(node: std::sync::Arc<Node>) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => node.shutdown.cancel(),
        // SIGTERM drains over server.drain_ms (0: shuts down at once); a second SIGTERM, or
        // Ctrl-C, during the drain stops at once.
        _ = terminate => if node.server.drain_ms == 0 {
            node.shutdown.cancel();
        } else {
            node.drain(std::time::Duration::from_millis(node.server.drain_ms));
        },
    }
    #[cfg(unix)]
    if !node.shutdown.is_cancelled() {
        if let Ok(mut again) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = again.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
                () = node.shutdown.cancelled() => {}
            }
        }
    }
    node.shutdown.cancel();
}

/// A listener with a deep accept queue: thousands of clients reconnecting at once (after a node
/// restart) must not see their SYNs dropped and retried a second later. The kernel caps the
/// depth at `net.core.somaxconn`.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
