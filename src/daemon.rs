//! `tlsrelay serve`: checks the configuration, binds every listener, then hands over to the
//! listener threads and the supervisor until a stop has closed every connection.

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::thread;

use log::warn;

use crate::cli::ServeArgs;
use crate::error::{describe_io, Error};
use crate::listener::{self, Shared};
use crate::supervisor::{self, Shutdown, Supervisor};
use crate::worker::Settings;
use crate::{hub, sys, tls};

/// Descriptors kept back for listeners, pipes, logging and the upstream resolver.
const RESERVED_FDS: u64 = 64;

/// Runs the daemon; returns once a requested stop has completed.
pub fn serve(mut args: ServeArgs) -> Result<(), Error> {
    args.validate()?;
    let acceptor = tls::acceptor(&args)?;
    let max_clients = capacity_checked(args.max_clients);
    let listeners = bind_all(&args)?;
    if let Some(path) = &args.pid_file {
        write_pid_file(path)?;
    }

    let (events_tx, events_rx) = crossbeam_channel::unbounded();
    let shutdown = Arc::new(Shutdown::new()?);
    supervisor::install_signal_handlers(&events_tx)?;
    let shared = Arc::new(Shared {
        settings: Arc::new(settings(&args, acceptor)?),
        shutdown: shutdown.clone(),
        events: events_tx,
        next_id: AtomicU64::new(1),
        active: Arc::new(AtomicUsize::new(0)),
        max_clients,
    });
    let mut handles = Vec::new();
    for (index, socket) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        handles.push(
            thread::Builder::new()
                .name(format!("listener-{index}"))
                .spawn(move || listener::run(socket, shared))?,
        );
    }
    drop(shared);
    let supervisor = Supervisor::new(events_rx, shutdown, handles);
    thread::Builder::new().name("supervisor".into()).spawn(move || supervisor.run())?.join().ok();

    if let Some(path) = &args.pid_file {
        let _ = fs::remove_file(path);
    }
    Ok(())
}

fn settings(args: &ServeArgs, acceptor: openssl::ssl::SslAcceptor) -> Result<Settings, Error> {
    let hub = match args.upstream {
        Some(_) => None,
        None => Some(hub::spawn()?),
    };
    Ok(Settings {
        acceptor,
        upstream: args.upstream.clone(),
        connect_timeout: args.connect_timeout,
        close_timeout: args.close_timeout,
        handshake_timeout: args.handshake_timeout,
        idle_timeout: args.idle_timeout,
        keepalive: args.keepalive,
        client_eof: args.client_eof,
        hub,
    })
}

/// Binds every --listen address and prints the `listening on` lines scripts wait for.
fn bind_all(args: &ServeArgs) -> Result<Vec<TcpListener>, Error> {
    let mut bound = Vec::new();
    for addr in &args.listen {
        let listener = sys::bind_listener(*addr, args.backlog)
            .map_err(|source| Error::Bind { addr: addr.to_string(), source })?;
        bound.push(listener);
    }
    for listener in &bound {
        eprintln!("listening on {}", listener.local_addr()?);
    }
    Ok(bound)
}

/// Lowers --max-clients to what the descriptor and thread limits can carry (2 fds a client).
fn capacity_checked(requested: usize) -> usize {
    let fds = sys::raise_fd_limit();
    let by_fds = fds.saturating_sub(RESERVED_FDS) / 2;
    let by_threads = sys::thread_budget().saturating_sub(16);
    let capacity = by_fds.min(by_threads).max(1) as usize;
    if requested > capacity {
        warn!(
            "--max-clients {requested} lowered to {capacity}: the limits allow {fds} descriptors \
             (2 a client) and {by_threads} threads; raise `ulimit -n` / pids.max for more"
        );
        return capacity;
    }
    requested
}

fn write_pid_file(path: &Path) -> Result<(), Error> {
    fs::write(path, format!("{}\n", std::process::id()))
        .map_err(|e| Error::file(path, "write pid file", describe_io(&e)))
}
