//! The `stompbox` command line: `stompbox serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use stompbox::config::{Config, Overrides};
use stompbox::node::Node;
use tokio::net::TcpListener;
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
        /// HTTP address (WebSocket, publish API, health) [default: 127.0.0.1:8080].
        #[arg(long)]
        http: Option<SocketAddr>,
        /// STOMP-over-TCP address [default: 127.0.0.1:61613].
        #[arg(long)]
        stomp: Option<SocketAddr>,
        /// Publish API key of tenant `default`.
        #[arg(long, env = "STOMPBOX_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
    },
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
        } => {
            let overrides = Overrides {
                http,
                stomp,
                api_key,
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
    }
}

fn serve(config_path: Option<PathBuf>, overrides: Overrides) -> anyhow::Result<()> {
    let config = match &config_path {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    }
    .finish(overrides)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let http = TcpListener::bind(config.server.http)
            .await
            .with_context(|| format!("binding the HTTP address {}", config.server.http))?;
        let stomp = TcpListener::bind(config.server.stomp)
            .await
            .with_context(|| format!("binding the STOMP address {}", config.server.stomp))?;
        let node = Node::new(&config);
        let (http_addr, stomp_addr) = (http.local_addr()?, stomp.local_addr()?);
        info!(node = %node.node_id, http = %http_addr, stomp = %stomp_addr, "listening");
        // One machine-readable line on stdout, so scripts and tests that bind port 0 learn the ports.
        println!("stompbox listening http={http_addr} stomp={stomp_addr}");
        tokio::spawn(shutdown_on_signal(node.clone()));
        stompbox::server::run(node, http, stomp).await?;
        Ok(())
    })
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
        _ = interrupt => {},
        _ = terminate => {},
    }
    node.shutdown.cancel();
}
