//! `tlsrelay serve`, the daemon: checks the configuration, binds (or inherits) every listener,
//! then hands over to the listener threads and the supervisor until a stop has closed every
//! connection. Its parts: listeners accept and hand each client to a worker thread (from the
//! thread cache), which runs the handshake and then forward mode or the hub; the supervisor
//! owns signals, reloads, upgrades, the stop and the joining of every thread. With --status,
//! a thread of its own answers `/metrics` and `/health` from the tally's atomics (status/,
//! metrics/), and the served certificate's expiry is watched (certificate.rs).

mod activation;
mod admission;
mod certificate;
mod event;
mod listener;
mod malloc;
mod metrics;
mod notify;
mod per_ip;
mod proxy_accept;
mod signals;
mod status;
mod supervisor;
mod tally;
mod thread_cache;
pub mod upgrade;
mod worker;

use std::fs;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, RwLock};
use std::thread::{self, JoinHandle};

use log::{info, warn};

use crate::cli::ServeArgs;
use crate::config::TlsConfig;
use crate::error::{describe_io, Error};
use crate::stop::Shutdown;
use crate::tls::acceptor;
use crate::{hub, sys};
use certificate::Certificate;
use listener::Shared;
use per_ip::PerIp;
use status::HealthState;
use supervisor::{Connections, Control, Supervisor};
use tally::Tally;
use thread_cache::ThreadCache;
use worker::Settings;

/// Backlog of the --status socket: a scraper and a balancer or two.
const STATUS_BACKLOG: i32 = 64;

/// Descriptors kept back for listeners, pipes, logging and the upstream resolver.
const RESERVED_FDS: u64 = 64;

/// Runs the daemon; returns once a requested stop (or an upgrade) has completed.
pub fn serve(mut args: ServeArgs) -> Result<(), Error> {
    // Before validate() fills in the default: passed sockets must match an explicit --listen.
    let explicit_listen = (!args.listen.is_empty()).then(|| args.listen.clone());
    args.validate()?;
    let started = std::time::SystemTime::now();
    // Resolved first: a package upgrade may replace the binary at any moment after start.
    let exe = upgrade::resolve_exe()?;
    // Before `upgrade::inherited`, which takes the handed-over descriptors out of the
    // environment and closes them on exec: the re-executed process must find them too.
    malloc::limit_tcache(&exe);
    let activated = activation::take(explicit_listen.as_deref())?;
    let inherited = upgrade::inherited(explicit_listen.as_ref().map(Vec::len))?;
    let acceptor = acceptor::acceptor(&args.tls_config())?;
    let max_clients = capacity_checked(args.max_clients);
    let (listeners, mut ready) = match (inherited, activated) {
        (Some(mut inherited), _) => (std::mem::take(&mut inherited.listeners), Some(inherited)),
        (None, Some(passed)) => (passed, None),
        (None, None) => (bind_all(&args)?, None),
    };
    let status_socket = status_socket(&args, ready.as_mut().and_then(|r| r.status.take()))?;
    for socket in &listeners {
        sys::set_accepted_options(socket, args.keepalive)?;
    }
    // Signals are routed before anyone can learn our pid or address: an early SIGUSR2 or
    // SIGTERM must not meet the default action (terminate).
    let (events_tx, events_rx) = crossbeam_channel::unbounded();
    let shutdown = Arc::new(Shutdown::new()?);
    signals::install(&events_tx)?;
    // An upgrade child never touches the pid file: its parent rewrites it. Written before
    // the `listening on` lines, so whoever waits for them finds it.
    let mut pid_file = match (&args.pid_file, &ready) {
        (Some(path), None) => Some(PidFile::write(path)?),
        _ => None,
    };
    announce_listening(&listeners)?;

    let certificate = Certificate::new(args.cert.clone());
    certificate.serving(&acceptor);
    certificate.check_daily();
    let health = Arc::new(HealthState::new(status_socket.is_some()));
    let settings = Arc::new(settings(&args, acceptor)?);
    let connections = Arc::new(Connections {
        active: Arc::new(AtomicUsize::new(0)),
        tally: Arc::new(Tally::default()),
        threads: Arc::new(ThreadCache::new(events_tx.clone())),
    });
    let watch =
        Watch { tally: connections.tally.clone(), certificate: certificate.clone(), health: health.clone() };
    let control = control(&args, &settings, &listeners, status_socket.as_ref(), exe, watch);
    let shared = Arc::new(Shared {
        settings,
        shutdown: shutdown.clone(),
        connections: connections.clone(),
        next_id: AtomicU64::new(1),
        max_clients,
        per_ip: (args.max_clients_per_ip > 0).then(|| Arc::new(PerIp::new(args.max_clients_per_ip))),
    });
    let upgraded = ready.is_some();
    if let Some(inherited) = ready {
        inherited.signal_ready();
        info!("upgrade: serving in place of the previous process");
    }
    let handles = start_listeners(listeners, &shared)?;
    if let Some(socket) = status_socket {
        let source = metrics::source::Daemon { shared: shared.clone(), health, certificate, started };
        status::spawn(socket, Box::new(source), shutdown.accepting.fd())?;
    }
    drop(shared);
    announce_ready(upgraded, &connections)?;
    let supervisor = Supervisor::new((events_tx, events_rx), shutdown, handles, connections, control);
    let handed_over =
        thread::Builder::new().name("supervisor".into()).spawn(move || supervisor.run())?.join();

    let handed_over = matches!(handed_over, Ok(true));
    match (pid_file.as_mut(), &args.pid_file) {
        (Some(ours), _) if handed_over => ours.keep(), // it names our successor now
        // An upgrade's new process: its parent rewrote the file to name us once we served.
        (None, Some(path)) if !handed_over => drop(PidFile::adopt(path)),
        _ => {}
    }
    Ok(())
}

fn start_listeners(listeners: Vec<TcpListener>, shared: &Arc<Shared>) -> Result<Vec<JoinHandle<()>>, Error> {
    let mut handles = Vec::new();
    for (index, socket) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let spawned = thread::Builder::new()
            .name(format!("listener-{index}"))
            .spawn(move || listener::run(socket, shared));
        handles.push(spawned?);
    }
    Ok(handles)
}

fn settings(args: &ServeArgs, acceptor: openssl::ssl::SslAcceptor) -> Result<Settings, Error> {
    let hub = match args.upstream {
        Some(_) => None,
        None => Some(hub::room::spawn()?),
    };
    Ok(Settings { acceptor: RwLock::new(Arc::new(acceptor)), relay: args.relay_config(), hub })
}

/// What a reload updates besides the acceptor, and what /health says.
struct Watch {
    tally: Arc<Tally>,
    certificate: Arc<Certificate>,
    health: Arc<HealthState>,
}

/// Reload and upgrade: the listeners (and the --status socket) are handed over by
/// descriptor number, which stays valid because their threads own them until we exit.
fn control(
    args: &ServeArgs,
    settings: &Arc<Settings>,
    listeners: &[TcpListener],
    status_socket: Option<&TcpListener>,
    exe: PathBuf,
    watch: Watch,
) -> Control {
    let fds = listeners.iter().map(|l| l.as_raw_fd()).collect();
    let (tls_config, reload_settings) = (args.tls_config(), settings.clone());
    let health = watch.health.clone();
    Control {
        reload: Box::new(move || reload(&tls_config, &reload_settings, &watch)),
        upgrade: upgrade::Plan::new(exe, fds, status_socket.map(|s| s.as_raw_fd())),
        pid_file: args.pid_file.clone(),
        drain: args.drain,
        health,
        stop_delay: args.stop_delay,
    }
}

/// New handshakes use the new files; a broken file keeps the old certificate.
fn reload(config: &TlsConfig, settings: &Settings, watch: &Watch) {
    match acceptor::acceptor(config) {
        Ok(acceptor) => {
            watch.certificate.serving(&acceptor);
            *settings.acceptor.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(acceptor);
            // Counted before the line, so whoever reads the line finds the count.
            watch.tally.reloaded(true);
            info!("reloaded {} and {}", config.cert.display(), config.key.display());
        }
        Err(err) => {
            watch.tally.reloaded(false);
            warn!("reload failed, keeping the old certificate: {err}");
        }
    }
}

/// The --status socket: handed over by the previous process in an upgrade, or bound now.
fn status_socket(args: &ServeArgs, inherited: Option<TcpListener>) -> Result<Option<TcpListener>, Error> {
    let Some(addr) = args.status else { return Ok(None) };
    let socket = match inherited {
        Some(socket) => socket,
        None => sys::bind_listener(addr, STATUS_BACKLOG, false).map_err(|source| Error::Bind {
            addr: addr.to_string(),
            flag: "--status",
            source,
        })?,
    };
    // Logged before the `listening on` lines, so a script that waits for those finds it.
    info!("status endpoint on http://{}/metrics and /health", socket.local_addr()?);
    Ok(Some(socket))
}

/// Tells systemd we serve (an upgrade child: that systemd must follow it from now on), and
/// keeps its status line current.
fn announce_ready(upgraded: bool, connections: &Arc<Connections>) -> Result<(), Error> {
    // The status thread first: a change it is not there to hear would never be reported.
    let counts = connections.clone();
    notify::start_status(move || {
        let (clean, no_answer) = counts.tally.clean_and_no_answer();
        notify::status_line(counts.open(), clean, no_answer)
    })?;
    if upgraded {
        notify::ready_as_main_process();
    } else {
        notify::ready();
    }
    Ok(())
}

/// Prints the `listening on ADDR` lines scripts wait for, whatever `RUST_LOG` says, each in
/// one write so that no reader ever sees half a line, in order with the log (logging.rs).
fn announce_listening(listeners: &[TcpListener]) -> Result<(), Error> {
    for listener in listeners {
        crate::logging::line(&format!("listening on {}\n", listener.local_addr()?));
    }
    Ok(())
}

/// Binds every --listen address.
fn bind_all(args: &ServeArgs) -> Result<Vec<TcpListener>, Error> {
    args.listen
        .iter()
        .map(|addr| {
            sys::bind_listener(*addr, args.backlog, args.reuse_port).map_err(|source| Error::Bind {
                addr: addr.to_string(),
                flag: "--listen",
                source,
            })
        })
        .collect()
}

/// Lowers --max-clients to what the descriptor and thread limits can carry (2 fds a client).
fn capacity_checked(requested: usize) -> usize {
    let fds = sys::raise_fd_limit();
    let by_fds = fds.saturating_sub(RESERVED_FDS) / 2;
    // Beside one thread a client: the daemon's own and the parked ones.
    let by_threads = sys::thread_budget().saturating_sub(16 + thread_cache::MAX_PARKED as u64);
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

/// The --pid-file we wrote: removed when the daemon ends (a stop, or a start that failed
/// after writing it), unless an upgrade made it name the new process.
struct PidFile {
    path: Option<PathBuf>,
}

impl PidFile {
    fn write(path: &Path) -> Result<Self, Error> {
        fs::write(path, format!("{}\n", std::process::id()))
            .map_err(|e| Error::file(path, "write pid file", describe_io(&e)))?;
        Ok(PidFile { path: Some(path.to_path_buf()) })
    }

    fn adopt(path: &Path) -> Self {
        PidFile { path: Some(path.to_path_buf()) }
    }

    fn keep(&mut self) {
        self.path = None;
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = fs::remove_file(path);
        }
    }
}
