//! tlsrelay: a TLS relay that always completes the TLS closure. `main` parses the command
//! line, starts logging, runs the subcommand and is the only place that picks an exit code.

mod buffer;
mod cidr;
mod cli;
mod client;
mod config;
mod error;
mod forward;
mod hub;
mod serve;
mod stop;
mod sys;
mod tls;
mod upstream_addr;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::error::Error;

fn main() {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match cli.command {
        Command::Serve(args) => serve::serve(args),
        Command::Upgrade(args) => serve::upgrade::request(&args.pid_file),
        Command::GenCert(args) => tls::certgen::run(&tls::certgen::Options {
            out: args.out,
            names: args.names,
            clients: args.clients,
        }),
        Command::Connect(args) => match client::run(args) {
            Ok(ending) => std::process::exit(ending.exit_code()),
            Err(err) => Err(err),
        },
    };
    if let Err(err) = result {
        report(&err);
        std::process::exit(err.exit_code());
    }
}

/// One line for the operator, whatever the log level.
fn report(err: &Error) {
    eprintln!("tlsrelay: {err}");
}
