//! `stompbox-bench`: the load tool for STOMP-over-WebSocket brokers (`run`), one hostile
//! connection beside a bystander (`attack`), the null broker
//! that shows the machine's ceiling beside every broker figure (`null-broker`), a recovery
//! storm of users fetching what they missed (`storm`), CONNECTs per second through a tenant's
//! plugin (`connects`), and the
//! benchmark's scenarios that run them both against stompbox and RabbitMQ (`suite`). The
//! README beside `src/` explains the options and every figure.
//!
//! Its WebSocket and STOMP code is its own rather than the broker's (`stompbox`'s codecs): a
//! tool that measures several brokers must not share the framing of one of them, where a
//! common bug would go unseen, and it needs the client's side (masking, the handshake's
//! request) that the broker's codecs do not have.

mod attack;
mod connects;
mod http;
mod net;
mod null_broker;
mod procfs;
mod publisher;
mod run;
mod stats;
mod stomp;
mod storm;
mod subscriber;
mod suite;
mod template;
mod upstream;
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
    /// One hostile connection against a broker while a bystander measures its round trip.
    Attack(attack::AttackOpts),
    /// Serve STOMP over WebSocket as cheaply as possible, as the ceiling for comparison.
    NullBroker(null_broker::NullOpts),
    /// Stored messages for many offline users, then every user connecting at once: the time
    /// until each has all it missed.
    Storm(storm::StormOpts),
    /// Run the benchmark's scenarios (A B A B) and print one Markdown table.
    Suite(Box<suite::SuiteOpts>),
    /// Clients SENDing to an application destination with receipts: how many the backend
    /// side accepted per second, and the SEND→RECEIPT latency.
    Upstream(upstream::UpstreamOpts),
    /// A local webhook receiver that checks signatures and counts items.
    WebhookSink(upstream::SinkOpts),
    /// CONNECTs with a JWT, one after another on each of many clients: how many a tenant's
    /// plugin authenticates per second.
    Connects(connects::ConnectsOpts),
    /// Print free TCP ports on 127.0.0.1, one a line (for scripts that configure servers).
    FreePort {
        /// How many, all different.
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
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
        Command::Attack(opts) => attack::main(opts),
        Command::NullBroker(opts) => null_broker::main(opts),
        Command::Storm(opts) => storm::main(opts),
        Command::Suite(opts) => suite::main(*opts),
        Command::Upstream(opts) => upstream::main(opts),
        Command::WebhookSink(opts) => upstream::sink(opts),
        Command::Connects(opts) => connects::main(opts),
        Command::FreePort { count } => {
            // Held open together, so the kernel hands out different ones.
            let listeners = (0..count)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
                .collect::<std::io::Result<Vec<_>>>()?;
            for listener in listeners {
                println!("{}", listener.local_addr()?.port());
            }
            Ok(())
        }
    }
}
