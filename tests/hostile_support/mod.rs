//! Helpers for the hostile-input tests (tests/hostile.rs, protocols.rs, mtls.rs) on top of
//! `tests/common` (whose `tls_client` they use): a many-connection flood client on the
//! `openssl` crate, raw non-TLS peers, a crashing upstream, and the daemon's /proc numbers.
#![allow(dead_code)]

pub mod flood;
pub mod probe;
pub mod raw;
pub mod upstream;

use crate::common::tls_client;
use openssl::ssl::{SslConnector, SslStream};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Threads of process `pid` (/proc/PID/status `Threads:`).
pub fn threads(pid: i32) -> usize {
    status_field(pid, "Threads:")
}

/// Resident memory of `pid` in KiB (/proc/PID/status `VmRSS:`).
pub fn rss_kib(pid: i32) -> usize {
    status_field(pid, "VmRSS:")
}

fn status_field(pid: i32, name: &str) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in status"));
    line[name.len()..].split_whitespace().next().unwrap().parse().unwrap()
}

/// Open descriptors of `pid` (entries of /proc/PID/fd).
pub fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read /proc/PID/fd").count()
}

/// Clock ticks a second, for /proc/PID/stat CPU times.
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// Polls `f` every 50 ms until it is true or `timeout` passed; returns the last value.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Sets the running process's descriptor limit (soft and hard) with util-linux `prlimit`.
pub fn prlimit_nofile(pid: i32, limit: usize) {
    let out = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={limit}:{limit}")])
        .output()
        .expect("run prlimit (util-linux)");
    assert!(out.status.success(), "prlimit failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// An interactive client beside a load: one established session through an echo upstream
/// doing a small round trip every `every`, timing each, until stopped.
pub struct Prober {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<Vec<Duration>, String>>>,
}

impl Prober {
    /// Connects now (so the session exists before the load) and starts probing.
    pub fn start(addr: SocketAddr, tls: &SslConnector, every: Duration) -> Prober {
        let mut session = tls_client::connect(addr, tls, Duration::from_secs(10)).expect("prober connects");
        tls_client::round_trip(&mut session, b"first\n").expect("prober's first round trip");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let handle = thread::spawn(move || probe_loop(session, &stopping, every));
        Prober { stop, handle: Some(handle) }
    }

    /// Stops and returns every round-trip time, or the first failure.
    pub fn finish(mut self) -> Result<Vec<Duration>, String> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().expect("prober panicked")
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn probe_loop(
    mut session: SslStream<TcpStream>,
    stop: &AtomicBool,
    every: Duration,
) -> Result<Vec<Duration>, String> {
    let mut times = Vec::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        seq += 1;
        let msg = format!("probe {seq:08}\n");
        let rtt = tls_client::round_trip(&mut session, msg.as_bytes())
            .map_err(|e| format!("round trip {seq} failed after {} good ones: {e}", times.len()))?;
        times.push(rtt);
        thread::sleep(every);
    }
    let _ = session.shutdown();
    Ok(times)
}

/// The daemon's second `listening on` address (the first is `Daemon::addr`).
pub fn listening_addrs(logs: &[String]) -> Vec<SocketAddr> {
    logs.iter()
        .filter_map(|l| l.split("listening on ").nth(1))
        .map(|a| a.trim().parse().unwrap_or_else(|e| panic!("bad listening address {a:?}: {e}")))
        .collect()
}

/// The `(N in the last second)` counts of every log line containing `needle`.
pub fn logged_counts(logs: &[String], needle: &str) -> Vec<u64> {
    logs.iter()
        .filter(|l| l.contains(needle))
        .map(|l| {
            let open = l.rfind('(').unwrap_or_else(|| panic!("no count in {l:?}"));
            let count = l[open + 1..].split(' ').next().unwrap();
            assert!(l[open..].contains(" in the last second)"), "no count in {l:?}");
            count.parse().unwrap_or_else(|e| panic!("bad count in {l:?}: {e}"))
        })
        .collect()
}

/// Exactly `n` log lines contain `needle`: waits for them (stderr is read by another thread,
/// so a line can lag behind what a client already saw), then checks there are no more.
pub fn assert_log_count(daemon: &crate::common::Daemon, needle: &str, n: usize) {
    daemon.wait_for_log_count(needle, n, Duration::from_secs(10));
    let seen = daemon.count_log(needle);
    assert_eq!(seen, n, "{seen} log lines contain {needle:?}, want {n}; log:\n{}", daemon.log_text());
}
