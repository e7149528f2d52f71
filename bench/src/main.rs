//! `stompbox-bench`: the load tool for STOMP-over-WebSocket brokers (`run`) and the null broker
//! that shows the machine's ceiling beside every broker figure (`null-broker`). The README
//! beside `src/` explains the options and every figure.
//!
//! Its WebSocket and STOMP code is its own rather than the broker's (`stompbox`'s codecs): a
//! tool that measures several brokers must not share the framing of one of them, where a
//! common bug would go unseen, and it needs the client's side (masking, the handshake's
//! request) that the broker's codecs do not have.

mod http;
mod net;
mod null_broker;
mod procfs;
mod publisher;
mod run;
mod stats;
mod stomp;
mod subscriber;
mod template;
mod ws;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "stompbox-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open subscriber connections, publish, and measure deliveries, latency and memory.
    Run(Box<run::RunOpts>),
    /// Serve STOMP over WebSocket as cheaply as possible, as the ceiling for comparison.
    NullBroker(null_broker::NullOpts),
}

/// A runtime of `threads` workers; one thread is a current-thread runtime, which spares the
/// cross-thread wake-ups a one-worker pool would still pay.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(opts) => run::main(*opts),
        Command::NullBroker(opts) => null_broker::main(opts),
    }
}
