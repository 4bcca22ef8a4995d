//! Listener threads: accept with backoff and the connection cap, hand each client to a
//! worker thread of its own. No TLS happens here, so a silent client can never stall
//! accepting.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::error::describe_io;
use crate::serve::admission::Admission;
use crate::serve::notify;
use crate::serve::per_ip::{PerIp, Slot};
use crate::serve::supervisor::Connections;
use crate::serve::tally::Refusal;
use crate::serve::thread_cache::Job;
use crate::serve::worker::{self, Client, Settings};
use crate::stop::Shutdown;
use crate::sys::{self, PollSet};

/// How long accepting pauses after EMFILE and its kin, so a full table cannot make us spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What every listener shares with the others and with the workers it spawns.
pub struct Shared {
    pub settings: Arc<Settings>,
    pub shutdown: Arc<Shutdown>,
    /// How many are open, how they ended, and the threads that serve them.
    pub connections: Arc<Connections>,
    pub next_id: AtomicU64,
    pub max_clients: usize,
    /// Connections per client address, when --max-clients-per-ip is set.
    pub per_ip: Option<Arc<PerIp>>,
}

/// Accepts on `listener` until the stop beacon is lit.
pub fn run(listener: TcpListener, shared: Arc<Shared>) {
    let mut logs = RefusalLogs::new();
    let stop_fd = shared.shutdown.accepting.fd();
    loop {
        let mut set = PollSet::new();
        let listen_slot = set.add(listener.as_raw_fd(), true, false);
        let stop_slot = set.add(stop_fd, true, false);
        // Wake up only to log refusals held back by the rate limit.
        if let Err(err) = set.wait(logs.next_flush()) {
            warn!("listener: poll failed: {err}");
            thread::sleep(ACCEPT_BACKOFF);
        }
        if set.ready(stop_slot) {
            return;
        }
        if set.ready(listen_slot) && accept_all(&listener, &shared, &mut logs) == Pace::BackOff {
            // Sleep on the stop beacon, so a stop still ends the pause at once.
            let _ = sys::wait_one(stop_fd, false, &[], Instant::now() + ACCEPT_BACKOFF);
        }
        logs.flush_due();
    }
}

/// Whether accepting may go on, or must pause because descriptors or memory ran out.
#[derive(PartialEq, Eq)]
enum Pace {
    GoOn,
    BackOff,
}

/// Accepts until the queue is empty or a resource runs out.
fn accept_all(listener: &TcpListener, shared: &Shared, logs: &mut RefusalLogs) -> Pace {
    loop {
        match sys::accept(listener) {
            Ok((tcp, peer)) => {
                if admit(tcp, peer, shared, logs) == Pace::BackOff {
                    return Pace::BackOff;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Pace::GoOn,
            Err(err) if is_transient(&err) => continue,
            Err(err) => {
                logs.accept_failed.note(describe_io(&err));
                return Pace::BackOff;
            }
        }
    }
}

/// Errors about one aborted connection, not about us.
fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ECONNABORTED) | Some(libc::EPROTO) | Some(libc::EPERM) | Some(libc::EINTR)
    )
}

/// Starts a worker for `tcp`, or closes it at once (before any handshake) when over a cap or
/// out of descriptors or threads.
fn admit(tcp: TcpStream, peer: SocketAddr, shared: &Shared, logs: &mut RefusalLogs) -> Pace {
    if shared.connections.open() >= shared.max_clients {
        shared.connections.tally.refused(Refusal::MaxClients);
        logs.over_cap.note("");
        return Pace::GoOn;
    }
    // A balancer's connection names its client only in the PROXY header the worker reads:
    // its address slot and its `accepted` line come from the worker then.
    let proxied = shared.settings.relay.accept_proxy.iter().any(|range| range.contains(peer.ip()));
    let mut slot = None;
    if let (Some(per_ip), false) = (&shared.per_ip, proxied) {
        slot = per_ip.take(peer.ip());
        if slot.is_none() {
            shared.connections.tally.refused(Refusal::MaxClientsPerIp);
            logs.over_ip_cap.note(peer.ip());
            return Pace::GoOn;
        }
    }
    let guard = ActiveGuard::take(shared, slot);
    // The connection's second descriptor, now: a full table refuses it before the handshake.
    let reserved = match worker::reserve_descriptor(&tcp, &shared.settings) {
        Ok(reserved) => reserved,
        Err(err) => {
            shared.connections.tally.refused(Refusal::Descriptors);
            logs.out_of_fds.note(describe_io(&err));
            return Pace::BackOff;
        }
    };
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let admission = match (proxied, shared.settings.relay.accept_proxy.is_empty()) {
        (true, _) => Admission::Proxied(shared.per_ip.clone()),
        // With --accept-proxy, the worker first checks that no header comes unasked.
        (false, false) => Admission::Direct { logged: false },
        (false, true) => {
            shared.connections.tally.accept();
            info!("conn {id} from {peer} accepted");
            Admission::Direct { logged: true }
        }
    };
    let (settings, shutdown, tally) =
        (shared.settings.clone(), shared.shutdown.clone(), shared.connections.tally.clone());
    let work = Box::new(move || {
        let _guard = guard;
        worker::run(id, Client { tcp, peer, admission }, reserved, &settings, &shutdown, &tally);
    });
    match shared.connections.threads.run(Job { name: format!("conn-{id}"), work }) {
        Ok(()) => Pace::GoOn,
        Err(err) => {
            // The job (and with it the socket and the guard) was dropped.
            shared.connections.tally.refused(Refusal::Threads);
            logs.no_thread.note(err);
            Pace::BackOff
        }
    }
}

/// Gives back the connection's slots (total and per address) when its worker ends,
/// however it ends.
struct ActiveGuard {
    active: Arc<AtomicUsize>,
    /// Dropped with the guard.
    _slot: Option<Slot>,
}

impl ActiveGuard {
    /// Counts the connection as active (its per-address slot, if any, is already taken).
    fn take(shared: &Shared, slot: Option<Slot>) -> Self {
        let active = shared.connections.active.clone();
        active.fetch_add(1, Ordering::AcqRel);
        notify::changed();
        ActiveGuard { active, _slot: slot }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
        notify::changed();
    }
}

/// One rate-limited log line per reason.
struct RefusalLogs {
    over_cap: RateLimited,
    over_ip_cap: RateLimited,
    out_of_fds: RateLimited,
    no_thread: RateLimited,
    accept_failed: RateLimited,
}

impl RefusalLogs {
    fn new() -> Self {
        RefusalLogs {
            over_cap: RateLimited::new("refused: max clients", ""),
            over_ip_cap: RateLimited::new("refused: max clients per ip, latest ", ""),
            out_of_fds: RateLimited::new("refused: out of descriptors: ", "; pausing accepts"),
            no_thread: RateLimited::new("refused: cannot start a thread: ", "; pausing accepts"),
            accept_failed: RateLimited::new("accept failed: ", "; pausing accepts"),
        }
    }

    fn all(&mut self) -> [&mut RateLimited; 5] {
        [
            &mut self.over_cap,
            &mut self.over_ip_cap,
            &mut self.out_of_fds,
            &mut self.no_thread,
            &mut self.accept_failed,
        ]
    }

    fn next_flush(&mut self) -> Option<Instant> {
        self.all().iter().filter_map(|limit| limit.flush_at()).min()
    }

    fn flush_due(&mut self) {
        for limit in self.all() {
            limit.flush_if_due();
        }
    }
}

/// Logs a repeated event at most once a second, with how many happened since the last line;
/// events held back are logged when their second is over.
struct RateLimited {
    what: &'static str,
    suffix: &'static str,
    detail: String,
    count: u64,
    last_log: Option<Instant>,
}

impl RateLimited {
    fn new(what: &'static str, suffix: &'static str) -> Self {
        RateLimited { what, suffix, detail: String::new(), count: 0, last_log: None }
    }

    /// Counts one event (`detail`: the latest one's particulars) and logs when a line is due.
    fn note(&mut self, detail: impl std::fmt::Display) {
        self.count += 1;
        self.detail = detail.to_string();
        self.flush_if_due();
    }

    fn flush_at(&self) -> Option<Instant> {
        let last = self.last_log?;
        (self.count > 0).then(|| last + Duration::from_secs(1))
    }

    fn flush_if_due(&mut self) {
        let due = self.last_log.is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        if self.count == 0 || !due {
            return;
        }
        let line = format!("{}{} ({} in the last second){}", self.what, self.detail, self.count, self.suffix);
        if self.suffix.is_empty() {
            info!("{line}");
        } else {
            warn!("{line}");
        }
        self.count = 0;
        self.last_log = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_logs_once_then_holds_back_and_flushes() {
        let mut limit = RateLimited::new("refused: max clients", "");
        limit.note("");
        assert_eq!(limit.count, 0, "the first event is logged at once");
        assert!(limit.flush_at().is_none());
        limit.note("");
        limit.note("");
        assert_eq!(limit.count, 2, "the next ones wait for their second to end");
        let flush_at = limit.flush_at().expect("a flush is due later");
        assert!(flush_at > Instant::now());
        limit.last_log = Some(Instant::now() - Duration::from_secs(2));
        limit.flush_if_due();
        assert_eq!(limit.count, 0);
    }
}
