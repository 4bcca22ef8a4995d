//! Hostile load against the real binary: handshake flood, slowloris, the connection caps,
//! descriptor exhaustion, a flapping upstream, leaks over many connections, hub abuse.
//!
//! Load-shaped: the tests run one at a time (SERIAL) with wide bounds, each bounded in
//! count and time. The many-connection client is tests/hostile_support/flood.rs.

mod common;
mod hostile_support;

use common::hub_client::HubClient;
use common::status_client;
use common::tls_client::{self, End};
use common::upstream::echo;
use common::*;
use hostile_support::flood::{self, Expect, Outcome, Plan};
use hostile_support::raw::{self, RawEnd};
use hostile_support::upstream::Flapping;
use hostile_support::{
    assert_log_count, eventually, listening_addrs, logged_counts, open_fds, prlimit_nofile, threads, Prober,
};
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

/// One test at a time: they measure time and CPU (a failed test poisons the lock; the next
/// still runs).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const STEP: Duration = Duration::from_secs(10);

fn tls_for(certs: &Certs) -> openssl::ssl::SslConnector {
    tls_client::connector(&certs.ca(), None, None)
}

fn percentile(times: &mut [Duration], p: f64) -> Duration {
    times.sort_unstable();
    times[((times.len() - 1) as f64 * p) as usize]
}

/// A /proc number once it has stopped changing (the hub thread frees a leaving client's
/// outbox a moment after the worker's `closed:` line).
fn settled(f: impl Fn() -> usize) -> usize {
    let mut last = f();
    for _ in 0..100 {
        thread::sleep(Duration::from_millis(100));
        let now = f();
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("still changing after 10 s: {last}");
}

// ---- handshake flood ----------------------------------------------------------------------

/// 3,000 clients connect at once and each does a handshake and one echo, with --max-clients
/// above that: every one is served, and an established interactive session's round trip
/// stays under 1 s all the while.
#[test]
fn handshake_flood_of_3000_is_served_and_an_interactive_client_stays_responsive() {
    let _serial = serial();
    const CLIENTS: usize = 3000;
    let f = forward(echo(), &["--max-clients", "4000", "--handshake-timeout", "60"]);
    let tls = tls_for(&f.certs);
    let prober = Prober::start(f.daemon.addr(), &tls, Duration::from_millis(20));

    let t0 = Instant::now();
    let plan = Plan::new(f.daemon.addr(), CLIENTS, Expect::Echo(b"flood hello\n".to_vec()), secs(180.0));
    let conns = flood::run(&tls, &plan);
    let took = t0.elapsed();
    let mut rtts = prober.finish().expect("the interactive session broke during the flood");

    assert_eq!(flood::served(&conns), CLIENTS, "{}", flood::summary(&conns));
    let mut handshakes: Vec<Duration> = conns.iter().filter_map(|c| c.handshake_after).collect();
    let worst = *rtts.iter().max().unwrap();
    eprintln!(
        "flood: {CLIENTS} served in {took:?} (handshake done after: median {:?}, max {:?}); \
         interactive: {} round trips, median {:?}, p99 {:?}, max {worst:?}",
        percentile(&mut handshakes, 0.5),
        percentile(&mut handshakes, 1.0),
        rtts.len(),
        percentile(&mut rtts, 0.5),
        percentile(&mut rtts, 0.99),
    );
    assert!(rtts.len() >= 10, "too few probes ({}) to say anything", rtts.len());
    assert!(worst < secs(1.0), "an interactive round trip took {worst:?} during the flood");
    // All 3,000 were open at the same time: the streams are still held here.
    f.daemon.wait_for_log_count(" established ", CLIENTS + 1, secs(30.0));
    assert_eq!(f.daemon.count_log("refused"), 0, "nobody may be refused under --max-clients");
}

// ---- slowloris ----------------------------------------------------------------------------

/// 1,000 connections each send half a real ClientHello and stall: every one is dropped at
/// --handshake-timeout (not before, not much after) with one log line naming it, and a
/// well-behaved client is served at once meanwhile.
#[test]
fn slowloris_half_hellos_are_dropped_at_handshake_timeout_and_others_are_served() {
    let _serial = serial();
    const STALLED: usize = 1000;
    const TIMEOUT: f64 = 3.0;
    let f = forward(echo(), &["--max-clients", "2000", "--handshake-timeout", "3"]);
    let tls = tls_for(&f.certs);
    let hello = tls_client::client_hello(&tls);
    let half = &hello[..hello.len() / 2];

    let t0 = Instant::now();
    let mut stalled = raw::open_stalled(f.daemon.addr(), STALLED, half);
    let opened = t0.elapsed();
    f.daemon.wait_for_log_count(" accepted", STALLED, STEP);

    // A good client while every stalled one still holds its handshake.
    let t = Instant::now();
    let mut good = tls_client::connect(f.daemon.addr(), &tls, STEP).expect("good client during slowloris");
    tls_client::round_trip(&mut good, b"served meanwhile\n").expect("round trip during slowloris");
    let (_, end) = tls_client::close_and_wait(&mut good);
    let good_took = t.elapsed();
    assert_eq!(end, End::Clean);
    assert!(good_took < secs(1.0), "the good client took {good_took:?}");
    assert!(t0.elapsed() < secs(TIMEOUT - 0.2), "setup too slow ({:?}) to prove 'meanwhile'", t0.elapsed());
    assert_eq!(f.daemon.count_log("handshake timeout"), 0, "dropped before --handshake-timeout");

    raw::watch_until_closed(&mut stalled, t0 + secs(TIMEOUT + 15.0));
    let mut lifetimes = Vec::new();
    for (i, s) in stalled.iter().enumerate() {
        let (at, end, bytes) =
            s.ended.clone().unwrap_or_else(|| panic!("stalled connection {i} never dropped"));
        let lived = at - s.opened;
        assert!(lived >= secs(TIMEOUT - 0.05), "connection {i} dropped after {lived:?}, before the timeout");
        assert!(matches!(end, RawEnd::Fin | RawEnd::Reset), "connection {i}: {end:?}");
        assert_eq!(bytes, 0, "connection {i}: the server answered half a ClientHello");
        lifetimes.push(lived);
    }
    let latest = percentile(&mut lifetimes, 1.0);
    eprintln!("slowloris: {STALLED} opened in {opened:?}, good client {good_took:?}, dropped after {:?}..{latest:?}", lifetimes[0]);
    assert!(latest < secs(TIMEOUT + 3.0), "the last stalled connection went after {latest:?}");

    f.daemon.wait_for_log_count("closed: handshake timeout", STALLED, STEP);
    let named: HashSet<String> = f
        .daemon
        .logs()
        .iter()
        .filter(|l| l.ends_with(" handshake timeout") && l.contains(" from "))
        .map(|l| l.split(" from ").nth(1).unwrap().split(' ').next().unwrap().to_string())
        .collect();
    for s in &stalled {
        let local = s.tcp.local_addr().unwrap().to_string();
        assert!(named.contains(&local), "no `from {local} handshake timeout` line");
    }
}

// ---- past the cap -------------------------------------------------------------------------

/// `--max-clients 100` and 500 attempts at once: exactly 100 are served and keep working; the
/// other 400 are closed before the server sends a byte; refusals are logged at most once a
/// second, and the counts in those lines add up to every refusal.
#[test]
fn past_max_clients_the_rest_are_closed_before_any_handshake_and_logged_with_counts() {
    let _serial = serial();
    const CAP: usize = 100;
    const ATTEMPTS: usize = 500;
    let f = forward(echo(), &["--max-clients", "100", "--handshake-timeout", "30"]);
    let tls = tls_for(&f.certs);

    let t0 = Instant::now();
    let plan = Plan::new(f.daemon.addr(), ATTEMPTS, Expect::Echo(b"admitted\n".to_vec()), secs(60.0));
    let mut conns = flood::run(&tls, &plan);
    assert_eq!(flood::served(&conns), CAP, "{}", flood::summary(&conns));
    for c in conns.iter().filter(|c| c.outcome != Outcome::Served) {
        assert!(
            matches!(&c.outcome, Outcome::HandshakeFailed { server_bytes: 0, .. }),
            "a refused attempt must see no byte from the server: {:?}",
            c.outcome
        );
    }
    // One more refusal once the rate limit's second has passed: its line carries the count
    // of everything refused since the previous line.
    thread::sleep(secs(1.1));
    let last = flood::run(&tls, &Plan::new(f.daemon.addr(), 1, Expect::Nothing, STEP));
    assert!(
        matches!(last[0].outcome, Outcome::HandshakeFailed { server_bytes: 0, .. }),
        "{:?}",
        last[0].outcome
    );
    let refused = (ATTEMPTS - CAP + 1) as u64;
    let elapsed = t0.elapsed();
    assert!(eventually(STEP, || logged_counts(&f.daemon.logs(), "refused: max clients (")
        .iter()
        .sum::<u64>()
        == refused));
    let counts = logged_counts(&f.daemon.logs(), "refused: max clients (");
    eprintln!("cap: {refused} refusals in {elapsed:?} logged as {counts:?}");
    assert!(counts.len() as u64 <= elapsed.as_secs() + 2, "{} refusal lines in {elapsed:?}", counts.len());
    assert_log_count(&f.daemon, " established ", CAP); // only the admitted ones handshake

    for (i, c) in conns.iter_mut().filter(|c| c.tls.is_some()).enumerate() {
        let tls = c.tls.as_mut().unwrap();
        tls_client::round_trip(tls, b"still working\n")
            .unwrap_or_else(|e| panic!("admitted client {i}: {e}"));
        let (_, end) = tls_client::close_and_wait(tls);
        assert_eq!(end, End::Clean, "admitted client {i}");
    }
}

// ---- descriptor exhaustion ----------------------------------------------------------------

/// The running daemon's descriptor limit is lowered with `prlimit` to what 40 hub clients
/// need; 10 more then wait in the backlog while `accept` fails with EMFILE. The daemon backs
/// off (little CPU, a rate-limited warning) and, once the 40 leave, serves the 10 waiting
/// ones and new clients by itself.
#[test]
fn descriptor_exhaustion_backs_off_quietly_and_recovers_by_itself() {
    let _serial = serial();
    const HELD: usize = 40;
    const WAITING: usize = 10;
    const WINDOW: f64 = 3.0;
    let certs = Certs::new();
    let daemon = Daemon::start(&certs, &["--handshake-timeout", "60"]);
    let (pid, addr) = (daemon.pid(), daemon.addr());
    let tls = tls_for(&certs);

    // Warm up (lazy initialisation), then take the baseline.
    let warm = flood::run(&tls, &Plan::new(addr, 2, Expect::Line, STEP));
    assert_eq!(flood::served(&warm), 2, "{}", flood::summary(&warm));
    drop(warm);
    daemon.wait_for_log_count(" closed: ", 2, STEP);
    let base = settled(|| open_fds(pid));
    // A hub connection costs 2 descriptors (socket + eventfd): a limit with room for exactly
    // 40 of them. RLIMIT_NOFILE bounds descriptor numbers, and the daemon may hold a high
    // inherited one, so the room is counted in free numbers below the limit.
    let limit = limit_with_room(pid, 2 * HELD);
    prlimit_nofile(pid, limit);

    let held = flood::run(&tls, &Plan::new(addr, HELD, Expect::Line, secs(30.0)));
    assert_eq!(flood::served(&held), HELD, "{}", flood::summary(&held));
    assert_eq!(open_fds(pid), base + 2 * HELD, "each hub client should hold exactly 2 descriptors");

    let waiting_tls = tls.clone();
    let waiting =
        thread::spawn(move || flood::run(&waiting_tls, &Plan::new(addr, WAITING, Expect::Line, secs(60.0))));
    let line = daemon.wait_for_log("accept failed", STEP);
    assert!(line.contains("too many open files") && line.contains("pausing accepts"), "{line}");

    thread::sleep(secs(0.5));
    assert_backs_off_quietly(&daemon, "accept failed", WINDOW);
    let counts = logged_counts(&daemon.logs(), "accept failed");
    assert!(counts.iter().skip(1).all(|&n| n > 1), "repeats must be summed: {counts:?}");
    assert_eq!(
        daemon.count_log(" established "),
        2 + HELD,
        "nobody got past the full table; log:\n{}",
        daemon.log_text()
    );

    drop(held); // the 40 leave (TCP FIN without close_notify)
    let waited = waiting.join().expect("waiting clients");
    assert_eq!(flood::served(&waited), WAITING, "{}", flood::summary(&waited));
    let fresh = flood::run(&tls, &Plan::new(addr, 5, Expect::Line, STEP));
    assert_eq!(flood::served(&fresh), 5, "{}", flood::summary(&fresh));
    assert!(open_fds(pid) <= base + 2 * HELD);
}

/// Over `window` seconds while `warning` keeps happening: the daemon uses under 5 % of a CPU
/// (no spin) and logs the warning at most about once a second.
fn assert_backs_off_quietly(daemon: &Daemon, warning: &str, window: f64) {
    let (lines_before, cpu_before, t) = (daemon.count_log(warning), daemon.cpu_ticks(), Instant::now());
    thread::sleep(secs(window));
    let cpu = (daemon.cpu_ticks() - cpu_before) as f64 / hostile_support::ticks_per_second();
    let window = t.elapsed().as_secs_f64();
    let lines = daemon.count_log(warning) - lines_before;
    eprintln!("{warning}: {cpu:.3} s CPU in {window:.1} s, {lines} warning lines");
    assert!(cpu < 0.05 * window, "the daemon used {cpu:.3} s CPU in {window:.1} s while accept failed");
    assert!(lines as f64 <= window + 1.0, "{lines} `{warning}` lines in {window:.1} s");
}

/// The status endpoint out of descriptors: connections waiting in its queue must not make its
/// thread spin (the failed accept is retried after a pause, the warning is rate-limited), and
/// it answers again once descriptors free up.
#[test]
fn status_endpoint_out_of_descriptors_backs_off_quietly_and_recovers() {
    let _serial = serial();
    const HELD: usize = 10;
    const WINDOW: f64 = 3.0;
    let certs = Certs::new();
    let daemon = Daemon::start(&certs, &["--status", "127.0.0.1:0", "--handshake-timeout", "60"]);
    let status = status_client::status_addr(&daemon);
    let (pid, addr) = (daemon.pid(), daemon.addr());
    let tls = tls_for(&certs);
    let warm = flood::run(&tls, &Plan::new(addr, 2, Expect::Line, STEP));
    assert_eq!(flood::served(&warm), 2, "{}", flood::summary(&warm));
    drop(warm);
    daemon.wait_for_log_count(" closed: ", 2, STEP);
    settled(|| open_fds(pid));
    prlimit_nofile(pid, limit_with_room(pid, 2 * HELD));
    let held = flood::run(&tls, &Plan::new(addr, HELD, Expect::Line, secs(30.0)));
    assert_eq!(flood::served(&held), HELD, "{}", flood::summary(&held));

    // Requests wait in the status socket's queue: each accept fails with EMFILE.
    let waiting: Vec<_> = (0..3).map(|_| std::net::TcpStream::connect(status).unwrap()).collect();
    let line = daemon.wait_for_log("status: accept failed", STEP);
    assert!(line.contains("pausing accepts"), "{line}");
    thread::sleep(secs(0.3));
    assert_backs_off_quietly(&daemon, "status: accept failed", WINDOW);

    drop(held);
    drop(waiting);
    let answered =
        eventually(STEP, || status_client::http_get(status, "/health").is_some_and(|(code, _)| code == 200));
    assert!(answered, "the status endpoint answers again; log:\n{}", daemon.log_text());
}

/// The descriptor limit under which `pid` has exactly `room` free descriptor numbers.
fn limit_with_room(pid: i32, room: usize) -> usize {
    let used: HashSet<usize> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    let mut free = 0;
    (0..)
        .find(|n| {
            free += usize::from(!used.contains(n));
            free == room
        })
        .unwrap()
        + 1
}

// ---- per-source cap ----------------------------------------------------------------------

/// `--max-clients-per-ip 10` with listeners on 127.0.0.1 and ::1: the 11th connection from
/// 127.0.0.1 is closed before its handshake, while ::1 and 127.0.0.2 are still served, and
/// a slot comes back when a connection ends.
#[test]
fn per_ip_cap_refuses_the_11th_from_one_address_while_others_are_served() {
    let _serial = serial();
    let certs = Certs::new();
    let args = ["--max-clients-per-ip", "10", "--listen", "127.0.0.1:0", "--listen", "[::1]:0"];
    let daemon = Daemon::start(&certs, &args);
    daemon.wait_for_log_count("listening on ", 2, STEP);
    let addrs = listening_addrs(&daemon.logs());
    let (v4, v6) = (addrs[0], addrs[1]);
    assert!(v6.is_ipv6(), "{addrs:?}");
    let tls = tls_for(&certs);
    let open = |addr, n, source: Option<IpAddr>| {
        let mut plan = Plan::new(addr, n, Expect::Line, STEP);
        plan.source = source;
        flood::run(&tls, &plan)
    };

    let mut ten = open(v4, 10, None);
    assert_eq!(flood::served(&ten), 10, "{}", flood::summary(&ten));
    let eleventh = open(v4, 1, None);
    assert!(
        matches!(eleventh[0].outcome, Outcome::HandshakeFailed { server_bytes: 0, .. }),
        "{:?}",
        eleventh[0].outcome
    );
    daemon.wait_for_log("refused: max clients per ip, latest 127.0.0.1 (1 in the last second)", STEP);

    let v6_ten = open(v6, 10, None);
    assert_eq!(flood::served(&v6_ten), 10, "::1 is another address: {}", flood::summary(&v6_ten));
    let other = open(v4, 10, Some("127.0.0.2".parse().unwrap()));
    assert_eq!(flood::served(&other), 10, "127.0.0.2 is another address: {}", flood::summary(&other));
    let v6_eleventh = open(v6, 1, None);
    assert!(matches!(v6_eleventh[0].outcome, Outcome::HandshakeFailed { server_bytes: 0, .. }));

    // One 127.0.0.1 client leaves cleanly: its slot comes back.
    let mut leaving = ten.remove(0).tls.unwrap();
    let (_, end) = tls_client::close_and_wait(&mut leaving);
    assert_eq!(end, End::Clean);
    daemon.wait_for_log(" closed: clean", STEP);
    // The slot is given back just after that line; a try in between is refused, not served.
    let mut again = Vec::new();
    assert!(eventually(STEP, || {
        again = open(v4, 1, None);
        flood::served(&again) == 1
    }));
    assert_log_count(&daemon, " established ", 10 + 10 + 10 + 1);
}

// ---- upstream flapping --------------------------------------------------------------------

/// How one client fared against a flapping upstream.
#[derive(Debug, Clone, PartialEq)]
enum Trial {
    /// Every byte echoed, then a clean close.
    Works,
    /// An unclean end (reset, or EOF without close_notify) after a correct prefix: allowed.
    Unclean(End, usize),
    /// A clean close with bytes missing, damaged bytes, a wedge, a failed handshake.
    Violation(String),
}

/// Handshake, 4 KiB in two pieces, the echo back, close_notify, the server's end.
fn flapping_trial(addr: std::net::SocketAddr, tls: &openssl::ssl::SslConnector, seed: u64) -> Trial {
    use std::io::Write;
    let payload = raw::Rng::new(seed).bytes(4096);
    let mut s = match tls_client::connect(addr, tls, STEP) {
        Ok(s) => s,
        Err(e) => return Trial::Violation(format!("handshake: {e}")),
    };
    let mut got = Vec::new();
    for half in payload.chunks(2048) {
        if let Err(e) = s.write_all(half) {
            let end = match e.kind() {
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => End::Reset,
                _ => End::Error(e.to_string()),
            };
            return judge(&payload, &got, end);
        }
        thread::sleep(Duration::from_millis(15));
    }
    match tls_client::read_exact_or_end(&mut s, payload.len()) {
        Ok(bytes) => got = bytes,
        Err((bytes, end)) => return judge(&payload, &bytes, end),
    }
    let (more, end) = tls_client::close_and_wait(&mut s);
    got.extend_from_slice(&more);
    judge(&payload, &got, end)
}

fn judge(sent: &[u8], got: &[u8], end: End) -> Trial {
    if !sent.starts_with(got) {
        return Trial::Violation(format!("damaged echo: {} B, not a prefix of what was sent", got.len()));
    }
    match end {
        End::Clean if got.len() == sent.len() => Trial::Works,
        End::Clean => Trial::Violation(format!("clean close after only {} of {} B", got.len(), sent.len())),
        End::Timeout => Trial::Violation(format!("wedged: nothing for {STEP:?} after {} B", got.len())),
        unclean => Trial::Unclean(unclean, got.len()),
    }
}

/// Forward mode while the upstream crashes (listener gone, connections reset) and comes back
/// ten times, with clients connecting all along: each client either works or gets an unclean
/// end (never a clean close with data missing); every connection is closed; a final client
/// works: the daemon never wedges.
#[test]
fn upstream_flapping_never_fakes_a_clean_close_and_never_wedges() {
    let _serial = serial();
    const CLIENT_THREADS: usize = 4;
    let certs = Certs::new();
    let mut upstream = Flapping::start();
    let target = upstream.addr().to_string();
    let daemon =
        Daemon::start(&certs, &["--upstream", &target, "--connect-timeout", "2", "--close-timeout", "3"]);
    let (addr, tls) = (daemon.addr(), tls_for(&certs));
    assert_eq!(flapping_trial(addr, &tls, 1), Trial::Works, "before any flapping");

    let stop = Arc::new(AtomicBool::new(false));
    let trials = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENT_THREADS)
        .map(|t| {
            let (stop, trials, tls) = (Arc::clone(&stop), Arc::clone(&trials), tls.clone());
            thread::spawn(move || {
                let mut seed = 1000 * (t as u64 + 1);
                while !stop.load(Ordering::SeqCst) {
                    seed += 1;
                    let trial = flapping_trial(addr, &tls, seed);
                    trials.lock().unwrap().push(trial);
                }
            })
        })
        .collect();
    for _ in 0..10 {
        thread::sleep(Duration::from_millis(300));
        upstream.down();
        thread::sleep(Duration::from_millis(200));
        upstream.up();
    }
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().expect("client thread");
    }

    let trials = trials.lock().unwrap().clone();
    let works = trials.iter().filter(|t| **t == Trial::Works).count();
    let unclean: Vec<&Trial> = trials.iter().filter(|t| matches!(t, Trial::Unclean(..))).collect();
    let violations: Vec<&Trial> = trials.iter().filter(|t| matches!(t, Trial::Violation(_))).collect();
    eprintln!(
        "flapping: {} clients: {works} worked, {} unclean ({:?}...), {} violations; upstream accepted {}",
        trials.len(),
        unclean.len(),
        unclean.iter().take(3).collect::<Vec<_>>(),
        violations.len(),
        upstream.accepted.load(Ordering::SeqCst)
    );
    assert!(violations.is_empty(), "{violations:?}; log:\n{}", daemon.log_text());
    assert!(works > 0 && !unclean.is_empty(), "the flapping did not show both outcomes");
    daemon.wait_for_log(" upstream ", STEP); // the failures were logged

    assert_eq!(flapping_trial(addr, &tls, 7), Trial::Works, "a client after the flapping");
    let counts = || {
        let logs = daemon.logs();
        let count = |needle: &str| logs.iter().filter(|l| l.contains(needle)).count();
        (count(" accepted"), count(" closed: "))
    };
    let all_closed = eventually(STEP, || {
        let (accepted, closed) = counts();
        accepted == closed
    });
    assert!(all_closed, "(accepted, closed) = {:?}: a worker is stuck", counts());
}

// ---- no leaks -----------------------------------------------------------------------------

/// Many sequential short connections ending every way (clean close, EOF without
/// close_notify, reset, abandoned handshake) leave the daemon's thread count and open
/// descriptors where they started.
#[test]
fn many_short_connections_leak_no_threads_or_descriptors() {
    let _serial = serial();
    const WANTED: usize = 20_000;
    const BUDGET: f64 = 60.0;
    let f = forward(echo(), &[]);
    let (pid, addr, tls) = (f.daemon.pid(), f.daemon.addr(), tls_for(&f.certs));
    let half_hello = tls_client::client_hello(&tls)[..100].to_vec();
    for i in 0..20 {
        short_connection(addr, &tls, &half_hello, i);
    }
    let settle = |n: usize| {
        let ok = eventually(secs(15.0), || f.daemon.count_log(" closed: ") >= n);
        assert!(ok, "{n} connections, {} closed", f.daemon.count_log(" closed: "));
        // A worker whose client is gone waits parked for the next one, 5 s at most
        // (src/serve/thread_cache.rs); after that only the daemon's own threads remain.
        thread::sleep(secs(6.0));
        (settled(|| threads(pid)), settled(|| open_fds(pid)))
    };
    let (threads0, fds0) = settle(20);
    let rss0 = hostile_support::rss_kib(pid);

    let t0 = Instant::now();
    let mut done = 0;
    while done < WANTED && t0.elapsed() < secs(BUDGET) {
        short_connection(addr, &tls, &half_hello, done);
        done += 1;
    }
    let took = t0.elapsed();
    let (threads1, fds1) = settle(20 + done);
    let rss1 = hostile_support::rss_kib(pid);
    eprintln!(
        "leaks: {done} connections in {took:?} ({:.2} ms each); threads {threads0} -> {threads1}, \
         descriptors {fds0} -> {fds1}, RSS {rss0} -> {rss1} KiB",
        took.as_secs_f64() * 1000.0 / done as f64
    );
    assert!(done >= 5_000, "only {done} connections in {BUDGET} s");
    assert_eq!(threads1, threads0, "threads leaked");
    assert_eq!(fds1, fds0, "descriptors leaked");
    let kinds = [
        "closed: clean",
        "closed: truncated by client",
        "closed: reset by client",
        "closed: handshake failed",
    ];
    for kind in kinds {
        assert!(f.daemon.count_log(kind) >= done / 5, "too few `{kind}`: {}", f.daemon.count_log(kind));
    }
}

/// One short connection, ending in the way `i` picks.
fn short_connection(
    addr: std::net::SocketAddr,
    tls: &openssl::ssl::SslConnector,
    half_hello: &[u8],
    i: usize,
) {
    use std::io::Write;
    if i % 4 == 3 {
        // Half a ClientHello, then FIN: a failed handshake.
        let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
        tcp.write_all(half_hello).unwrap();
        return;
    }
    let mut s = tls_client::connect(addr, tls, STEP).unwrap_or_else(|e| panic!("connection {i}: {e}"));
    tls_client::round_trip(&mut s, b"x").unwrap_or_else(|e| panic!("connection {i}: {e}"));
    match i % 4 {
        0 => assert_eq!(tls_client::close_and_wait(&mut s).1, End::Clean, "connection {i}"),
        1 => {}                                              // dropped: FIN without close_notify
        _ => common::upstream::set_linger_zero(s.get_ref()), // dropped: RST
    }
}

// ---- hub abuse ----------------------------------------------------------------------------

/// What the hub relays for `raw` (DESIGN §5): each complete line without `\r`, invalid UTF-8
/// and control characters but tab replaced by U+FFFD; lines starting with `/` are commands.
fn hub_lines(raw: &[u8]) -> Vec<String> {
    let mut lines: Vec<&[u8]> = raw.split(|&b| b == b'\n').collect();
    lines.pop(); // the part after the last newline is not a line yet
    lines
        .into_iter()
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.starts_with(b"/"))
        .map(|l| {
            String::from_utf8_lossy(l)
                .chars()
                .map(|c| if c.is_control() && c != '\t' { '\u{FFFD}' } else { c })
                .collect()
        })
        .collect()
}

/// Three abusers at once in the hub, beside two well-behaved clients and one that stops
/// reading: 1 MiB without a newline gets one `! line too long`, 10,000 lines a second are
/// relayed in order, binary garbage arrives sanitised; the reader that stopped is closed as
/// too slow; nobody else is affected and the well-behaved clients' lines arrive in order.
#[test]
fn hub_abuse_affects_only_the_abuser() {
    let _serial = serial();
    // The flood must pass what the kernel holds for the stalled reader (the daemon's send
    // buffer grows to tcp_wmem[2]) plus its 256 KiB outbox, with a margin.
    const SIZE: usize = 100;
    const LINES_PER_SEC: usize = 10_000;
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|t| t.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20);
    let flood_lines = (wmem_max + (256 << 10) + (1536 << 10)) / (SIZE + 1);
    let flood_secs = flood_lines as f64 / LINES_PER_SEC as f64;
    let certs = Certs::new();
    let daemon = Daemon::start(&certs, &["--close-timeout", "2"]);
    let connect =
        |args: &[&str]| HubClient::connect_with(&daemon, &certs, &[&["--timeout", "120"], args].concat());
    let (mut w1, mut w2) = (connect(&[]), connect(&[]));
    let (mut long, mut flooder, mut garbage) = (connect(&[]), connect(&[]), connect(&[]));
    let mut stalled = connect(&["--rcvbuf", "4096"]);
    for c in [&w1, &w2, &long, &flooder, &garbage] {
        let joined = format!("* {} joined", stalled.nick);
        c.wait_line(&joined, STEP);
    }
    stalled.command("pause");
    let t0 = Instant::now();

    // The well-behaved pair chats throughout (50 lines a second each, about 6 s).
    w1.command("flood w1 300 80 4050");
    w2.command("flood w2 300 80 4050");
    flooder.command(&format!("flood B {flood_lines} {SIZE} {}", LINES_PER_SEC * (SIZE + 1)));
    long.send(&vec![b'x'; 1 << 20]);
    long.say("\nafter the long line"); // the first newline ends the long line
    let junk = raw::Rng::new(42).bytes(64 << 10);
    let junk = [&junk[..], b"\ngarbage done\n"].concat();
    garbage.send(&junk);

    let flood_deadline = secs(60.0 + 3.0 * flood_secs);
    for (reader, tag, n) in
        [(&w1, "w2", 300), (&w2, "w1", 300), (&w1, "B", flood_lines), (&w2, "B", flood_lines)]
    {
        let line = reader.wait_output(&format!("FLOOD {tag} "), flood_deadline);
        assert_eq!(
            line,
            format!("FLOOD {tag} {n} 0 -"),
            "{} reading {tag}: {}",
            reader.nick,
            reader.transcript()
        );
    }
    eprintln!("hub abuse: floods done after {:?} ({flood_lines} lines from the flooder)", t0.elapsed());

    // The long line: one error to its sender, nothing of it to anyone else, and the sender
    // is still heard.
    let too_long = "! line too long (max 4096 bytes)";
    long.wait_line(too_long, STEP);
    let after = format!("<{}> after the long line", long.nick);
    w1.wait_line(&after, STEP);
    assert_eq!(long.lines().iter().filter(|l| *l == too_long).count(), 1, "one error per long line");
    let from_long = format!("<{}> ", long.nick);
    let relayed: Vec<String> = w1.lines().into_iter().filter(|l| l.starts_with(&from_long)).collect();
    assert_eq!(relayed, vec![after.clone()], "only the line after it");

    // The garbage: exactly its lines, in order, sanitised.
    let done = format!("<{}> garbage done", garbage.nick);
    w1.wait_line(&done, STEP);
    let prefix = format!("<{}> ", garbage.nick);
    let got: Vec<String> =
        w1.lines().into_iter().filter_map(|l| l.strip_prefix(&prefix).map(str::to_string)).collect();
    let want = hub_lines(&junk);
    assert_eq!(got.len(), want.len(), "garbage lines relayed");
    assert!(got == want, "garbage lines differ from their sanitised form");
    for raw_line in w1.raw_lines() {
        assert!(
            !raw_line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f),
            "a control byte reached w1: {raw_line:?}"
        );
    }

    // The reader that stopped: closed as too slow, and only it.
    let left = format!("* {} left (too slow)", stalled.nick);
    for c in [&w1, &w2, &long, &flooder, &garbage] {
        c.wait_line(&left, secs(30.0));
    }
    eprintln!("hub abuse: the stalled reader left after {:?}", t0.elapsed());
    daemon.wait_for_log(" closed: ", STEP);
    let closed = daemon.closed();
    assert_eq!(closed.len(), 1, "only the stalled reader was closed; log:\n{}", daemon.log_text());
    assert!(matches!(closed[0].kind.as_str(), "write stalled" | "peer did not answer"), "{:?}", closed[0]);

    // Everyone else is still here and hears everyone else.
    w2.say("final");
    let fin = format!("<{}> final", w2.nick);
    for c in [&w1, &long, &flooder, &garbage] {
        c.wait_line(&fin, STEP);
        assert!(!c.ended(), "{} was closed: {}", c.nick, c.transcript());
    }
    for c in [&w1, &w2, &long, &flooder, &garbage] {
        let others_left: Vec<String> = c.lines().into_iter().filter(|l| l.contains(" left (")).collect();
        assert_eq!(others_left, vec![left.clone()], "{}", c.nick);
    }
}

/// Like the test above, but the limit leaves one descriptor more: `accept` then succeeds and
/// the connection's second descriptor (the hub's eventfd) is what cannot be had. Each waiting
/// client must then wait, or be refused before any handshake (no server byte), with the
/// refusals logged at most once a second and never one warning per connection.
#[test]
fn descriptor_exhaustion_with_one_descriptor_free_refuses_before_the_handshake_quietly() {
    let _serial = serial();
    const HELD: usize = 20;
    const WAITING: usize = 10;
    let certs = Certs::new();
    let daemon = Daemon::start(&certs, &["--handshake-timeout", "60"]);
    let (pid, addr) = (daemon.pid(), daemon.addr());
    let tls = tls_for(&certs);
    let warm = flood::run(&tls, &Plan::new(addr, 2, Expect::Line, STEP));
    drop(warm);
    daemon.wait_for_log_count(" closed: ", 2, STEP);
    settled(|| open_fds(pid));
    prlimit_nofile(pid, limit_with_room(pid, 2 * HELD + 1));
    let held = flood::run(&tls, &Plan::new(addr, HELD, Expect::Line, secs(30.0)));
    assert_eq!(flood::served(&held), HELD, "{}", flood::summary(&held));

    let waiting = flood::run(&tls, &Plan::new(addr, WAITING, Expect::Line, secs(3.0)));
    let handshaken =
        waiting.iter().filter(|c| !matches!(c.outcome, Outcome::TimedOut(_)) && c.server_bytes > 0).count();
    eprintln!("one descriptor free: {}; log:\n{}", flood::summary(&waiting), daemon.log_text());
    assert_eq!(handshaken, 0, "clients were handshaken and then dropped: {}", flood::summary(&waiting));
    assert!(daemon.count_log("refused: out of descriptors") <= 5, "refusals are rate-limited");
    assert_eq!(daemon.count_log(" established "), 2 + HELD, "no waiting client was handshaken");
}
