//! tlsrelay: a TLS relay that always completes the TLS closure. `main` parses the command
//! line, starts logging, runs the subcommand and is the only place that picks an exit code.

mod admin;
mod buffer;
mod cli;
mod client;
mod config;
mod error;
mod forward;
mod hub;
mod logging;
mod serve;
mod stop;
mod sys;
mod tls;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::error::Error;

fn main() {
    let cli = Cli::parse();
    // The daemon's log goes through a queue that a stuck sink cannot block (logging.rs).
    let sink = match cli.command {
        Command::Serve(_) => logging::Sink::Queued,
        _ => logging::Sink::Direct,
    };
    logging::init(sink);
    let result = match cli.command {
        Command::Serve(args) => serve::serve(args),
        Command::Upgrade(args) => serve::upgrade::request(&args.pid_file),
        Command::GenCert(args) => tls::certgen::run(&tls::certgen::Options {
            out: args.out,
            names: args.names,
            clients: args.clients,
        }),
        Command::Status(args) => admin::status::run(args.status, args.pid_file.as_deref()),
        Command::GenerateDocs(args) => admin::docs::generate(&args.out),
        Command::Connect(args) => match client::run(args) {
            Ok(ending) => std::process::exit(ending.exit_code()),
            Err(err) => Err(err),
        },
    };
    if let Err(err) = result {
        report(&err);
        logging::flush(logging::EXIT_WAIT);
        std::process::exit(err.exit_code());
    }
    logging::flush(logging::EXIT_WAIT);
}

/// One line for the operator, whatever the log level.
fn report(err: &Error) {
    logging::line(&format!("tlsrelay: {err}\n"));
}
