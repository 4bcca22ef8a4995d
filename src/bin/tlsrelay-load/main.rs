//! tlsrelay-load: the benchmark's load generator. It plays the client (bulk, ping-pong,
//! handshakes, idle connections) and the plain TCP (or TLS, for the no-relay ceiling)
//! backend; `bench/bench.py` drives it. Every loop is bounded in count and time.

mod backend;
mod client;
mod cpu;
mod idle;
mod proto;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "tlsrelay-load", version, about = "Load generator for `make bench` (127.0.0.1 only)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Backend speaking the bench protocol: plain TCP, or TLS with --cert/--key.
    Backend(BackendArgs),
    /// Bulk transfer over N connections for a fixed time (M1, M2).
    Bulk(BulkArgs),
    /// Small-message ping-pong round trips (M3).
    Rtt(RttArgs),
    /// New connections per second, full or resumed TLS 1.3 handshakes (M4).
    Handshakes(HandshakeArgs),
    /// Hold N idle connections; on `watch` (stdin) classify how each ends (M5, M6).
    Idle(IdleArgs),
}

#[derive(clap::Args)]
pub struct BackendArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Serve TLS 1.3 with this certificate (the no-relay ceiling).
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// The process exits by itself after this long.
    #[arg(long, default_value = "3600")]
    pub max_secs: u64,
    /// Listen on this unix socket instead of --listen (a relay's `--upstream unix:PATH`).
    #[arg(long, conflicts_with = "cert")]
    pub unix: Option<PathBuf>,
    /// Each connection opens with a PROXY v1/v2 header (a relay's --proxy-protocol): skip it.
    #[arg(long)]
    pub proxy_header: bool,
}

/// Where and how every client subcommand connects.
#[derive(clap::Args, Clone)]
pub struct Target {
    /// The relay (or the TLS backend), 127.0.0.1:PORT.
    #[arg(long)]
    pub connect: String,
    /// CA that signed the server certificate (verified, name `localhost`).
    #[arg(long)]
    pub ca: PathBuf,
    /// Root pid of the relay: its CPU (with its descendants') is read around the measure.
    #[arg(long)]
    pub cpu_pid: Option<u32>,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
pub enum Dir {
    /// client → relay → backend
    Up,
    /// backend → relay → client
    Down,
}

#[derive(clap::Args)]
pub struct BulkArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long, value_enum)]
    pub dir: Dir,
    #[arg(long, default_value = "1")]
    pub conns: usize,
    #[arg(long, default_value = "1.0")]
    pub secs: f64,
}

#[derive(clap::Args)]
pub struct RttArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long, default_value = "1")]
    pub conns: usize,
    #[arg(long, default_value = "1.0")]
    pub secs: f64,
    #[arg(long, default_value = "64")]
    pub size: usize,
}

#[derive(clap::Args)]
pub struct HandshakeArgs {
    #[command(flatten)]
    pub target: Target,
    /// Client threads, each opening connections one after another.
    #[arg(long, default_value = "4")]
    pub threads: usize,
    #[arg(long, default_value = "1.0")]
    pub secs: f64,
    /// Resume with the session ticket of the thread's previous connection.
    #[arg(long)]
    pub resume: bool,
}

#[derive(clap::Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long, default_value = "1000")]
    pub conns: usize,
    /// Threads doing the handshakes while connecting.
    #[arg(long, default_value = "4")]
    pub threads: usize,
    /// The process gives up after this long.
    #[arg(long, default_value = "300")]
    pub max_secs: u64,
}

/// Upper bound on any single blocking socket call of a client, so nothing hangs forever.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Backend(args) => backend::run(&args),
        Command::Bulk(args) => client::bulk(&args),
        Command::Rtt(args) => client::rtt(&args),
        Command::Handshakes(args) => client::handshakes(&args),
        Command::Idle(args) => idle::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tlsrelay-load: {err}");
            ExitCode::FAILURE
        }
    }
}
