//! Listener threads: accept with backoff and the connection cap, spawn one worker per client.
//! No TLS happens here, so a silent client can never stall accepting.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::{info, warn};

use crate::stop::Shutdown;
use crate::supervisor::Event;
use crate::sys::{self, PollSet, Wake};
use crate::worker::{self, Settings};

/// Stack for each worker thread: OpenSSL's deepest paths (handshake, ECDSA signing) fit
/// comfortably, and only touched pages cost memory.
const WORKER_STACK: usize = 128 * 1024;

/// How long accepting pauses after EMFILE and its kin, so a full table cannot make us spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What every listener shares with the others and with the workers it spawns.
pub struct Shared {
    pub settings: Arc<Settings>,
    pub shutdown: Arc<Shutdown>,
    pub events: Sender<Event>,
    pub next_id: AtomicU64,
    pub active: Arc<AtomicUsize>,
    pub max_clients: usize,
    /// Connections per client address, when --max-clients-per-ip is set.
    pub per_ip: Option<Arc<PerIp>>,
}

/// Counts connections per client address for --max-clients-per-ip.
pub struct PerIp {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    pub fn new(limit: usize) -> Self {
        PerIp { limit, counts: Mutex::new(HashMap::new()) }
    }

    /// Takes a slot for `ip`; false when it already has `limit` connections.
    fn try_take(&self, ip: IpAddr) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.limit {
            return false;
        }
        *count += 1;
        true
    }

    fn release(&self, ip: IpAddr) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&ip);
            }
        }
    }
}

/// Accepts on `listener` until the stop beacon is lit.
pub fn run(listener: TcpListener, shared: Arc<Shared>) {
    let mut refusals = Refusals {
        over_cap: RateLimited::new(),
        over_ip_cap: RateLimited::new(),
        no_thread: RateLimited::new(),
    };
    let mut accept_errors = RateLimited::new();
    let stop_fd = shared.shutdown.accepting.fd();
    loop {
        let mut set = PollSet::new();
        let listen_slot = set.add(listener.as_raw_fd(), true, false);
        let stop_slot = set.add(stop_fd, true, false);
        if let Err(err) = set.wait(None) {
            warn!("listener: poll failed: {err}");
            thread::sleep(ACCEPT_BACKOFF);
        }
        if set.ready(stop_slot) {
            return;
        }
        if set.ready(listen_slot) {
            accept_all(&listener, &shared, &mut refusals, &mut accept_errors);
        }
    }
}

/// Accepts until the queue is empty; backs off on resource errors.
fn accept_all(listener: &TcpListener, shared: &Shared, refusals: &mut Refusals, errors: &mut RateLimited) {
    loop {
        match listener.accept() {
            Ok((tcp, peer)) => admit(tcp, peer, shared, refusals),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
            Err(err) if is_transient(&err) => continue,
            Err(err) => {
                if let Some(count) = errors.note() {
                    warn!(
                        "accept failed: {} ({count} in the last second); pausing accepts",
                        crate::error::describe_io(&err)
                    );
                }
                // Sleep on the stop beacon, so a stop still ends the pause at once.
                let deadline = Instant::now() + ACCEPT_BACKOFF;
                let _ = sys::wait_one(shared.shutdown.accepting.fd(), false, &[], deadline)
                    .map(|w| w == Wake::Ready);
                return;
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

/// Starts a worker for `tcp`, or closes it at once when over the cap or out of threads.
fn admit(tcp: TcpStream, peer: SocketAddr, shared: &Shared, refusals: &mut Refusals) {
    if shared.active.load(Ordering::Acquire) >= shared.max_clients {
        if let Some(count) = refusals.over_cap.note() {
            info!("refused: max clients ({count} in the last second)");
        }
        return;
    }
    if let Some(per_ip) = &shared.per_ip {
        if !per_ip.try_take(peer.ip()) {
            if let Some(count) = refusals.over_ip_cap.note() {
                info!("refused: max clients per ip, latest {} ({count} in the last second)", peer.ip());
            }
            return;
        }
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    info!("conn {id} from {peer} accepted");
    shared.active.fetch_add(1, Ordering::AcqRel);
    let guard = ActiveGuard { active: shared.active.clone(), per_ip: shared.per_ip.clone(), ip: peer.ip() };
    let (settings, shutdown, events) =
        (shared.settings.clone(), shared.shutdown.clone(), shared.events.clone());
    let spawned =
        thread::Builder::new().name(format!("conn-{id}")).stack_size(WORKER_STACK).spawn(move || {
            let _guard = guard;
            worker::run(id, tcp, peer, &settings, &shutdown, &events);
        });
    match spawned {
        Ok(handle) => {
            let _ = shared.events.send(Event::WorkerStarted { id, handle });
        }
        Err(err) => {
            // The closure (and with it the socket and the guard) was dropped by the failed spawn.
            if let Some(count) = refusals.no_thread.note() {
                warn!("refused: cannot start a thread: {err} ({count} in the last second)");
            }
        }
    }
}

/// Gives back the connection's slots (total and per address) when its worker ends,
/// however it ends.
struct ActiveGuard {
    active: Arc<AtomicUsize>,
    per_ip: Option<Arc<PerIp>>,
    ip: IpAddr,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
        if let Some(per_ip) = &self.per_ip {
            per_ip.release(self.ip);
        }
    }
}

/// One rate limit per refusal reason, so each reason gets its own line.
struct Refusals {
    over_cap: RateLimited,
    over_ip_cap: RateLimited,
    no_thread: RateLimited,
}

/// Lets a repeated event be logged at most once a second, with how many happened.
struct RateLimited {
    count: u64,
    last_log: Option<Instant>,
}

impl RateLimited {
    fn new() -> Self {
        RateLimited { count: 0, last_log: None }
    }

    /// Counts one event; returns the count to log when a line is due.
    fn note(&mut self) -> Option<u64> {
        self.count += 1;
        let due = self.last_log.is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        if !due {
            return None;
        }
        self.last_log = Some(Instant::now());
        Some(std::mem::take(&mut self.count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_cap_counts_each_address_apart() {
        let per_ip = PerIp::new(2);
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "::1".parse().unwrap());
        assert!(per_ip.try_take(a) && per_ip.try_take(a));
        assert!(!per_ip.try_take(a), "the third from one address is refused");
        assert!(per_ip.try_take(b), "another address is still served");
        per_ip.release(a);
        assert!(per_ip.try_take(a), "a slot comes back when a connection ends");
    }

    #[test]
    fn rate_limited_logs_once_then_counts() {
        let mut limit = RateLimited::new();
        assert_eq!(limit.note(), Some(1));
        assert_eq!(limit.note(), None);
        assert_eq!(limit.note(), None);
        limit.last_log = Some(Instant::now() - Duration::from_secs(2));
        assert_eq!(limit.note(), Some(3));
    }
}
