//! Many clients at once: graceful and fast stops, the connection cap, idle CPU.
//!
//! These tests measure time and CPU, so they run one at a time (LOCK), never beside each other.

mod common;

use common::upstream::echo;
use common::*;
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static LOCK: Mutex<()> = Mutex::new(());

/// Serializes the tests of this file (a failed test poisons the lock; the next still runs).
fn serial() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

const READY: Duration = Duration::from_secs(60);
const DONE: Duration = Duration::from_secs(30);

/// `n` Python clients connected through the relay, each having done one round trip.
fn connected(f: &Forward, n: usize, args: &[&str]) -> PyClients {
    let mut clients = PyClients::start(f.port(), &f.certs, n, args);
    assert_eq!(clients.ready(READY), n, "not every handshake succeeded");
    assert_eq!(clients.echo("ping", READY), n, "not every client got its echo");
    f.daemon.wait_for_log_count("established", n, READY);
    clients
}

/// Every upstream connection of `n` ended with the relay's FIN.
fn assert_upstreams_got_fin(f: &Forward, n: usize) {
    for i in 0..n {
        let seen = f.upstream.next_seen(DONE);
        assert_eq!(seen.end, End::Fin, "upstream connection {i} of {n}: {seen:?}");
    }
}

fn stop_with_50_clients(sig: i32) {
    const CLOSE_TIMEOUT: f64 = 3.0;
    let mut f = forward(echo(), &["--close-timeout", "3"]);
    let mut clients = connected(&f, 50, &["--timeout", "60"]);
    let (status, took) = f.daemon.stop(sig, secs(CLOSE_TIMEOUT + 1.0));
    assert!(status.success(), "exit {status}; log:\n{}", f.daemon.log_text());
    assert!(took < secs(CLOSE_TIMEOUT + 1.0), "stop took {took:?}");
    let counts = clients.finish(DONE);
    assert_eq!(counts["end_clean"], 50, "{counts:?}");
    let s = f.daemon.summary();
    assert_eq!((s.total, s.clean, s.other), (50, 50, 0), "{s:?}");
    assert_upstreams_got_fin(&f, 50);
}

#[test]
fn sigterm_with_50_clients_closes_every_one_cleanly_python() {
    let _serial = serial();
    stop_with_50_clients(libc::SIGTERM);
}

#[test]
fn sigint_with_50_clients_closes_every_one_cleanly_python() {
    let _serial = serial();
    stop_with_50_clients(libc::SIGINT);
}

/// Clients that never answer close_notify: some close TCP at once (gnutls-cli), some hold
/// their socket and say nothing (Python --answer-close-notify silent). The stop is still
/// bounded by --close-timeout, and they are counted as `peer did not answer`.
#[test]
fn sigterm_with_clients_that_never_answer_still_exits_within_close_timeout() {
    let _serial = serial();
    const CLOSE_TIMEOUT: f64 = 2.0;
    let mut f = forward(echo(), &["--close-timeout", "2"]);
    let mut answering = connected(&f, 30, &["--timeout", "60"]);
    let mut silent =
        PyClients::start(f.port(), &f.certs, 10, &["--timeout", "60", "--answer-close-notify", "silent"]);
    assert_eq!(silent.ready(READY), 10);
    let gnutls_peers: Vec<CliPeer> = (0..5).map(|_| gnutls(f.port(), &f.certs, false)).collect();
    for g in &gnutls_peers {
        g.wait_handshake();
    }
    f.daemon.wait_for_log_count("established", 45, READY);

    let (status, took) = f.daemon.stop(libc::SIGTERM, secs(CLOSE_TIMEOUT + 3.0));
    assert!(status.success(), "exit {status}");
    assert!(took < secs(CLOSE_TIMEOUT + 1.0), "close-timeout {CLOSE_TIMEOUT} s, stop took {took:?}");
    assert_eq!(answering.finish(DONE)["end_clean"], 30);
    assert_eq!(silent.finish(DONE)["end_clean"], 10, "the silent ones still got close_notify");
    for g in gnutls_peers {
        let out = g.finish(DONE);
        assert!(out.gnutls_clean(), "{out:?}");
    }
    let s = f.daemon.summary();
    assert_eq!((s.total, s.clean, s.peer_did_not_answer, s.other), (45, 30, 15, 0), "{s:?}");
}

#[test]
fn second_signal_is_a_fast_stop() {
    let _serial = serial();
    let mut f = forward(echo(), &["--close-timeout", "30"]);
    let mut silent = connected(&f, 5, &["--timeout", "60", "--answer-close-notify", "silent"]);
    f.daemon.signal(libc::SIGTERM);
    // Waiting for peers that never answer: a graceful stop would take up to 30 s.
    assert!(f.daemon.try_wait_exit(secs(1.5)).is_none(), "exited before the silent peers' deadline");
    let (status, took) = f.daemon.stop(libc::SIGTERM, secs(10.0));
    assert!(status.success(), "exit {status}");
    assert!(took < secs(3.0), "the second signal must stop at once, took {took:?}");
    assert_eq!(silent.finish(DONE)["end_clean"], 5, "close_notify went out at the first signal");
}

/// With --max-clients 50 held by 50 live sessions, 200 more connections are closed before
/// any handshake (a silent TCP client would otherwise wait for its handshake timeout) and
/// the 50 keep working.
#[test]
fn connections_past_max_clients_are_closed_before_any_handshake() {
    let _serial = serial();
    let mut f =
        forward(echo(), &["--max-clients", "50", "--handshake-timeout", "30", "--close-timeout", "3"]);
    let mut clients = connected(&f, 50, &["--timeout", "120"]);
    let t0 = Instant::now();
    for i in 0..200 {
        let mut extra = TcpStream::connect(f.daemon.addr()).expect("connect");
        extra.set_read_timeout(Some(secs(5.0))).unwrap();
        let mut buf = [0u8; 256];
        match extra.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("attempt {i} past the cap was not closed at once: {other:?}"),
        }
    }
    assert!(t0.elapsed() < secs(30.0), "200 refusals took {:?}", t0.elapsed());
    for _ in 0..3 {
        let r = python(f.port(), &f.certs, &["--send", "x"], DONE);
        assert_ne!(r.handshake, "ok", "a client past the cap completed a handshake: {}", r.raw);
    }
    f.daemon.wait_for_log("refused: max clients", DONE);
    // "logged at most once a second with a count": not one line per refusal.
    let lines = f.daemon.count_log("refused: max clients");
    let allowed = t0.elapsed().as_secs() as usize + 2;
    assert!(lines <= allowed, "{lines} refusal lines in {:?}; log:\n{}", t0.elapsed(), f.daemon.log_text());
    assert_eq!(clients.echo("still working", READY), 50, "the 50 admitted sessions broke");
    let (status, _) = f.daemon.stop(libc::SIGTERM, secs(4.0));
    assert!(status.success(), "exit {status}");
    assert_eq!(clients.finish(DONE)["end_clean"], 50);
}

/// 500 established, idle sessions: the daemon must sleep in poll, not wake up periodically.
#[test]
fn idle_established_clients_cost_no_cpu() {
    let _serial = serial();
    const CLIENTS: usize = 500;
    const WINDOW: f64 = 10.0;
    const MAX_CPU: f64 = 0.05;
    let mut f = forward(echo(), &["--close-timeout", "5"]);
    let mut clients = connected(&f, CLIENTS, &["--timeout", "180"]);
    std::thread::sleep(secs(1.0)); // let the last handshakes' work settle
                                   // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let before = f.daemon.cpu_ticks();
    std::thread::sleep(secs(WINDOW));
    let used = (f.daemon.cpu_ticks() - before) as f64 / hz;
    eprintln!("{CLIENTS} idle sessions: {used:.3} s CPU in {WINDOW} s");
    assert!(used < MAX_CPU, "{CLIENTS} idle sessions used {used:.3} s CPU in {WINDOW} s (limit {MAX_CPU})");
    let (status, _) = f.daemon.stop(libc::SIGTERM, secs(8.0));
    assert!(status.success(), "exit {status}");
    assert_eq!(clients.finish(DONE)["end_clean"], CLIENTS);
    assert_eq!(f.daemon.summary().clean, CLIENTS as u64);
}
