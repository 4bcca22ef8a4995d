//! The `--status` endpoint (DESIGN §12): `/metrics` equals what the log says, `promtool`
//! accepts it, `/health` turns before a stop's first close_notify and before an upgrade's
//! old process stops accepting, hostile input on the status port leaves relaying alone, and
//! `tlsrelay status` prints its summary.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::status_client::{http_get, status_addr};
use common::tls_client;
use common::upstream::{closed_port, echo, set_linger_zero};
use common::{forward, run_to_exit, secs, Certs, Closed, Daemon, PyPeer};
use openssl::ssl::SslStream;

/// These tests time things: one at a time, so they do not share the two CPUs.
static LOCK: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics").expect("GET /metrics answered");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of one sample line (`name{labels}` exactly as written), 0 when absent.
fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |value| value.parse::<f64>().unwrap() as u64)
}

/// `promtool check metrics` (Debian `prometheus`) must accept the exposition without a word.
fn assert_promtool_accepts(metrics: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/install-test-deps.sh installs it)");
    child.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{metrics}");
}

fn tls_connect(port: u16, ca: &Path) -> SslStream<TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    tls_client::connect(addr, &tls_client::connector(ca, None, None), secs(10.0)).unwrap()
}

/// Waits until every connection has given back its slot (the `closed:` line comes first).
fn wait_idle(addr: SocketAddr) {
    let deadline = Instant::now() + secs(5.0);
    while sample(&scrape(addr), "tlsrelay_connections_active") != 0 {
        assert!(Instant::now() < deadline, "connections stayed active");
        thread::sleep(Duration::from_millis(20));
    }
}

/// An upstream on `addr` that echoes, except that a connection opening with `reset` gets
/// `partial` and then a TCP reset.
fn echo_or_reset_upstream(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).expect("rebind the upstream port");
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || serve_upstream(stream));
        }
    });
}

fn serve_upstream(mut stream: TcpStream) {
    let mut buf = [0u8; 65536];
    let mut first = true;
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        if first && buf[..n].starts_with(b"reset") {
            let _ = stream.write_all(b"partial");
            thread::sleep(Duration::from_millis(50));
            set_linger_zero(&stream);
            return;
        }
        first = false;
        if stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}

/// The `closed:` kinds as the metric labels them.
fn kind_label(closed: &Closed) -> String {
    closed.kind.split(':').next().unwrap().replace(' ', "_")
}

/// The sum of N over `refused: max clients (N in the last second)` lines.
fn refused_in_log(daemon: &Daemon) -> u64 {
    daemon
        .logs()
        .iter()
        .filter(|l| l.contains("refused: max clients ("))
        .map(|l| l.split('(').nth(1).unwrap().split(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn every_counter_equals_the_log_after_each_close_kind_and_promtool_accepts_it() {
    let _serial = serial();
    let certs = Certs::new();
    let reserved = closed_port();
    let upstream = reserved.addr();
    let target = upstream.to_string();
    let daemon = Daemon::start(
        &certs,
        &["--upstream", &target, "--status", "127.0.0.1:0", "--max-clients", "1", "--connect-timeout", "2"],
    );
    let status = status_addr(&daemon);
    let port = daemon.port();
    let py = |args: &[&str]| PyPeer::start(port, &certs, args).result(secs(15.0));

    // Nothing listens upstream yet.
    py(&["--send", "hello"]);
    daemon.wait_for_log_count(" closed: ", 1, secs(10.0));
    wait_idle(status);
    drop(reserved);
    echo_or_reset_upstream(upstream);
    // A clean close, a truncation (FIN without close_notify), an upstream reset.
    for args in [
        &["--send", "hello", "--expect", "5", "--then", "close-notify"][..],
        &["--send", "hello", "--expect", "5", "--then", "eof"][..],
        &["--send", "reset"][..],
    ] {
        let seen = daemon.count_log(" closed: ");
        py(args);
        daemon.wait_for_log_count(" closed: ", seen + 1, secs(10.0));
        wait_idle(status);
    }
    // Plain HTTP on the TLS port: a failed handshake.
    let mut http = TcpStream::connect(daemon.addr()).unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    daemon.wait_for_log("handshake failed: http request", secs(10.0));
    drop(http);
    wait_idle(status);
    // One client held open, so the next one is over --max-clients 1.
    let mut held = PyPeer::start(
        port,
        &certs,
        &["--send", "hi", "--expect", "2", "--pause", "1", "--then", "close-notify"],
    );
    held.wait_line("EXPECTED", secs(10.0));
    let mut refused = TcpStream::connect(daemon.addr()).unwrap();
    refused.set_read_timeout(Some(secs(5.0))).unwrap();
    assert!(matches!(refused.read(&mut [0u8; 16]), Ok(0) | Err(_)), "the refused client is closed");
    daemon.wait_for_log("refused: max clients", secs(5.0));
    assert_eq!(held.result(secs(10.0)).end, "clean");
    daemon.wait_for_log_count(" closed: ", 6, secs(10.0));
    wait_idle(status);

    let metrics = scrape(status);
    let closed = daemon.closed();
    let kinds: Vec<String> = closed.iter().map(kind_label).collect();
    for kind in ["clean", "truncated_by_client", "upstream_reset", "upstream_unreachable", "handshake_failed"]
    {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} close was provoked: {kinds:?}");
    }
    let mut by_kind: HashMap<String, u64> = HashMap::new();
    for kind in &kinds {
        *by_kind.entry(kind.clone()).or_default() += 1;
    }
    for kind in [
        "clean",
        "peer_did_not_answer",
        "truncated_by_client",
        "reset_by_client",
        "upstream_reset",
        "upstream_unreachable",
        "handshake_failed",
        "handshake_timeout",
        "write_stalled",
    ] {
        let series = format!("tlsrelay_connections_closed_total{{kind=\"{kind}\"}}");
        assert!(metrics.contains(&series), "{series} missing:\n{metrics}");
        assert_eq!(sample(&metrics, &series), by_kind.get(kind).copied().unwrap_or(0), "{series}\n{metrics}");
    }
    let refusals = refused_in_log(&daemon);
    assert!(refusals >= 1);
    assert_eq!(sample(&metrics, "tlsrelay_connections_refused_total{reason=\"max_clients\"}"), refusals);
    assert_eq!(sample(&metrics, "tlsrelay_handshake_failures_total{reason=\"http_request\"}"), 1);
    assert_eq!(sample(&metrics, "tlsrelay_connections_accepted_total"), daemon.count_log(" accepted") as u64);
    let bytes_in: u64 = closed.iter().map(|c| c.bytes_in).sum();
    let bytes_out: u64 = closed.iter().map(|c| c.bytes_out).sum();
    assert!(bytes_in > 0 && bytes_out > 0);
    assert_eq!(sample(&metrics, "tlsrelay_client_bytes_received_total"), bytes_in);
    assert_eq!(sample(&metrics, "tlsrelay_client_bytes_sent_total"), bytes_out);
    // Three handshakes reached an upstream connect, four completed.
    assert_eq!(sample(&metrics, "tlsrelay_upstream_connect_duration_seconds_count"), 4);
    assert_eq!(sample(&metrics, "tlsrelay_handshake_duration_seconds_count"), 5);
    assert_eq!(sample(&metrics, "tlsrelay_max_clients"), 1);
    assert!(sample(&metrics, "tlsrelay_open_fds") > 3);
    assert_promtool_accepts(&metrics);
}

#[test]
fn bytes_are_counted_while_they_are_relayed_not_when_the_connection_ends() {
    let _serial = serial();
    let f = forward(echo(), &["--status", "127.0.0.1:0"]);
    let status = status_addr(&f.daemon);
    let mut tls = tls_connect(f.port(), &f.certs.ca());
    tls.write_all(&[7u8; 1000]).unwrap();
    let mut back = [0u8; 1000];
    tls.read_exact(&mut back).unwrap();
    // The worker counts right after its write returns, which may be after we read the echo.
    let deadline = Instant::now() + secs(5.0);
    let metrics = loop {
        let metrics = scrape(status);
        if sample(&metrics, "tlsrelay_client_bytes_sent_total") == 1000 || Instant::now() > deadline {
            break metrics;
        }
        thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(sample(&metrics, "tlsrelay_client_bytes_received_total"), 1000, "{metrics}");
    assert_eq!(sample(&metrics, "tlsrelay_client_bytes_sent_total"), 1000, "{metrics}");
    assert_eq!(sample(&metrics, "tlsrelay_connections_active"), 1, "the connection is still open");
    assert_eq!(sample(&metrics, "tlsrelay_threads{state=\"busy\"}"), 1);
}

/// Polls `/health` every 5 ms until told to stop: (when, status or None if unanswered).
fn poll_health(addr: SocketAddr, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<(Instant, Option<u16>)>> {
    thread::spawn(move || {
        let mut seen = Vec::new();
        let deadline = Instant::now() + secs(60.0);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let asked = Instant::now();
            let status = http_get(addr, "/health").map(|(status, _)| status);
            seen.push((asked, status));
            thread::sleep(Duration::from_millis(5));
        }
        seen
    })
}

/// Reads a hub client's lines until the server's close_notify: when it came.
fn close_notify_time(mut tls: SslStream<TcpStream>) -> thread::JoinHandle<Option<Instant>> {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match tls_client::read_some(&mut tls, &mut buf) {
                Ok(_) => {}
                Err(tls_client::End::Clean) => return Some(Instant::now()),
                Err(_) => return None,
            }
        }
    })
}

#[test]
fn with_stop_delay_health_turns_503_well_before_the_first_close_notify() {
    let _serial = serial();
    let certs = Certs::new();
    let mut daemon = Daemon::start(&certs, &["--status", "127.0.0.1:0", "--stop-delay", "0.5"]);
    let status = status_addr(&daemon);
    let client = close_notify_time(tls_connect(daemon.port(), &certs.ca()));
    assert_eq!(http_get(status, "/health"), Some((200, "ok\n".into())));
    let stop = Arc::new(AtomicBool::new(false));
    let poller = poll_health(status, stop.clone());
    thread::sleep(Duration::from_millis(100));
    daemon.signal(libc::SIGTERM);
    // The listeners keep serving during the delay: a newcomer still gets its welcome.
    thread::sleep(Duration::from_millis(100));
    let mut late = tls_connect(daemon.port(), &certs.ca());
    let mut welcome = [0u8; 10];
    late.read_exact(&mut welcome).unwrap();
    assert_eq!(&welcome, b"* welcome ");
    let close_notify = client.join().unwrap().expect("the client got close_notify");
    drop(late);
    stop.store(true, Ordering::Relaxed);
    let polls = poller.join().unwrap();
    let first_503 = polls.iter().find(|(_, s)| *s == Some(503)).map(|(at, _)| *at).expect("/health said 503");
    assert!(
        close_notify.duration_since(first_503) >= Duration::from_millis(400),
        "503 only {:?} before the close_notify",
        close_notify.saturating_duration_since(first_503)
    );
    assert!(polls.iter().take_while(|(at, _)| *at < first_503).all(|(_, s)| *s == Some(200)));
    // Until the client's close_notify: after it the process may already be gone.
    let during = |at: &Instant| *at >= first_503 && *at < close_notify;
    let after: Vec<_> = polls.iter().filter(|(at, _)| during(at)).map(|(_, s)| *s).collect();
    assert!(
        after.iter().all(|s| *s == Some(503)),
        "/health kept answering 503 during the closures: {after:?}"
    );
    assert!(daemon.wait_exit(secs(10.0)).success());
}

#[test]
fn a_second_signal_skips_the_stop_delay() {
    let _serial = serial();
    let certs = Certs::new();
    let args = ["--status", "127.0.0.1:0", "--stop-delay", "60", "--close-timeout", "3"];
    let mut daemon = Daemon::start(&certs, &args);
    let status = status_addr(&daemon);
    // A client that never answers close_notify keeps the closure going for --close-timeout.
    let silent = tls_connect(daemon.port(), &certs.ca());
    daemon.signal(libc::SIGTERM);
    daemon.wait_for_log("/health: 503 stopping", secs(5.0));
    assert_eq!(http_get(status, "/health"), Some((503, "stopping\n".into())));
    assert!(daemon.try_wait_exit(secs(0.5)).is_none(), "it waits for the delay");
    daemon.signal(libc::SIGTERM);
    daemon.wait_for_log("stopping; closing 1 connections", secs(5.0));
    thread::sleep(Duration::from_millis(200));
    assert_eq!(http_get(status, "/health"), Some((503, "stopping\n".into())), "still answered while closing");
    assert!(daemon.wait_exit(secs(10.0)).success());
    drop(silent);
}

/// Upgraded daemons are not our children: stop whatever the pid file names, even on panic.
struct PidFileGuard(PathBuf);

impl Drop for PidFileGuard {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0).unwrap_or_default().trim().parse::<i32>() {
            // SAFETY: plain kill(2) on a pid our test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn health_turns_draining_before_an_upgrades_old_process_stops_accepting() {
    let _serial = serial();
    let certs = Certs::new();
    let pid_file = certs.dir().join("tlsrelay.pid");
    let _guard = PidFileGuard(pid_file.clone());
    let daemon =
        Daemon::start(&certs, &["--status", "127.0.0.1:0", "--pid-file", pid_file.to_str().unwrap()]);
    let status = status_addr(&daemon);
    let old = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let poller = poll_health(status, stop.clone());
    thread::sleep(Duration::from_millis(50));
    let (code, out) = run_to_exit(&["upgrade", "--pid-file", pid_file.to_str().unwrap()], secs(20.0));
    assert!(code.success(), "upgrade failed: {out}");
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let polls = poller.join().unwrap();

    let logs = daemon.logs();
    let turned = logs.iter().position(|l| l.contains("/health: 503 draining")).expect("health turned");
    let handed = logs.iter().position(|l| l.contains("upgrade: pid ") && l.contains(" is serving")).unwrap();
    assert!(turned < handed, "the old process stopped accepting before /health turned:\n{}", logs.join("\n"));
    assert!(polls.iter().any(|(_, s)| *s == Some(503)), "no poll saw the 503: {polls:?}");
    assert!(polls.iter().all(|(_, s)| s.is_some()), "the status port went unanswered during the upgrade");
    assert_eq!(http_get(status, "/health"), Some((200, "ok\n".into())), "the new process answers");
    assert_ne!(std::fs::read_to_string(&pid_file).unwrap().trim(), old);
    assert!(sample(&scrape(status), "tlsrelay_start_time_seconds") > 0);
}

#[test]
fn hostile_status_clients_neither_stop_relaying_nor_the_endpoint() {
    let _serial = serial();
    let f = forward(echo(), &["--status", "127.0.0.1:0"]);
    let status = status_addr(&f.daemon);
    let stop = Arc::new(AtomicBool::new(false));
    // Slowloris: more connections than the endpoint serves at once, a byte every 300 ms.
    let slow = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut conns: Vec<TcpStream> = (0..50).filter_map(|_| TcpStream::connect(status).ok()).collect();
            while !stop.load(Ordering::Relaxed) {
                conns.retain_mut(|c| c.write_all(b"G").is_ok());
                conns.extend((0..50 - conns.len()).filter_map(|_| TcpStream::connect(status).ok()));
                thread::sleep(Duration::from_millis(300));
            }
        })
    };
    // Garbage, oversized heads and a flood of 1,000 requests a second.
    let flood = {
        let stop = stop.clone();
        thread::spawn(move || {
            let (mut answered, mut sent) = (0u64, 0u64);
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let junk: &[u8] = match sent % 4 {
                    0 => b"\x16\x03\x01\x00\xff\x01garbage\r\n\r\n",
                    1 => &[b'A'; 10_000],
                    _ => b"GET /metrics HTTP/1.1\r\n\r\n",
                };
                if let Ok(mut c) = TcpStream::connect(status) {
                    let _ = c.set_read_timeout(Some(secs(3.0)));
                    let _ = c.write_all(junk);
                    let mut reply = Vec::new();
                    let _ = c.read_to_end(&mut reply);
                    answered += u64::from(reply.starts_with(b"HTTP/1.1 "));
                }
                sent += 1;
                let due = started + Duration::from_millis(sent);
                thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            (answered, sent)
        })
    };
    // Meanwhile: 3 s of 16 KiB echoes through the relay, every byte checked.
    let mut tls = tls_connect(f.port(), &f.certs.ca());
    let (mut relayed, mut slowest) = (0usize, Duration::ZERO);
    let started = Instant::now();
    let mut round = 0u8;
    while started.elapsed() < secs(3.0) {
        let chunk = vec![round; 16 * 1024];
        let asked = Instant::now();
        tls.write_all(&chunk).unwrap();
        let mut back = vec![0u8; chunk.len()];
        tls.read_exact(&mut back).unwrap();
        assert_eq!(back, chunk, "round {round}: the relay changed the bytes");
        slowest = slowest.max(asked.elapsed());
        relayed += chunk.len();
        round = round.wrapping_add(1);
    }
    let health = http_get(status, "/health");
    stop.store(true, Ordering::Relaxed);
    slow.join().unwrap();
    let (answered, sent) = flood.join().unwrap();
    assert_eq!(health, Some((200, "ok\n".into())), "the endpoint answers under attack");
    // Paced at 1,000 a second (3,000 in 3 s on a quiet machine); a loaded one falls behind,
    // so only a real flood is required, and that most of it was answered.
    eprintln!("the flood: {answered} of {sent} answered in 3 s");
    assert!(sent >= 300 && answered * 2 >= sent, "the flood: {answered} of {sent} answered");
    // Loose on purpose: a correctness check, not a benchmark (BENCH.md measures latency).
    assert!(slowest < secs(2.0), "a 16 KiB round trip took {slowest:?}");
    let metrics = scrape(status);
    assert!(sample(&metrics, "tlsrelay_client_bytes_received_total") >= relayed as u64);
    tls.shutdown().unwrap();
}

#[test]
fn status_subcommand_prints_version_uptime_connections_and_certificate_expiry() {
    let _serial = serial();
    let f = forward(echo(), &["--status", "127.0.0.1:0"]);
    let status = status_addr(&f.daemon).to_string();
    let mut tls = tls_connect(f.port(), &f.certs.ca());
    tls.write_all(b"ping").unwrap();
    tls.read_exact(&mut [0u8; 4]).unwrap();
    tls.shutdown().unwrap();
    f.daemon.wait_for_log(" closed: ", secs(10.0));
    let out =
        Command::new(env!("CARGO_BIN_EXE_tlsrelay")).args(["status", "--status", &status]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with(&format!("tlsrelay {} (OpenSSL ", env!("CARGO_PKG_VERSION"))), "{text}");
    assert!(text.contains(": health ok, up "), "{text}");
    assert!(text.contains("1 accepted"), "{text}");
    assert!(text.contains("closed: 1 clean") || text.contains("closed: 1 peer did not answer"), "{text}");
    assert!(text.contains("certificate: CN=localhost (serial "), "{text}");
    assert!(text.lines().count() <= 24, "one screen: {text}");

    let nobody = closed_port();
    let nobody = nobody.addr().to_string();
    let (code, err) = run_to_exit(&["status", "--status", &nobody], secs(10.0));
    assert_eq!(code.code(), Some(1));
    assert!(err.contains(&nobody) && err.contains("--status"), "{err}");
}

#[test]
fn an_expiring_certificate_is_warned_about_and_its_expiry_exported() {
    let _serial = serial();
    let certs = Certs::new();
    let dir = certs.dir();
    // A certificate valid for 10 more days, signed by the test CA, for the same key.
    let soon = dir.join("soon.crt");
    let ok = Command::new("openssl")
        .args(["req", "-new", "-key"])
        .arg(certs.server_key())
        .args(["-subj", "/CN=soon.example", "-out"])
        .arg(dir.join("soon.csr"))
        .output()
        .unwrap()
        .status
        .success()
        && Command::new("openssl")
            .args(["x509", "-req", "-days", "10", "-in"])
            .arg(dir.join("soon.csr"))
            .arg("-CA")
            .arg(certs.ca())
            .arg("-CAkey")
            .arg(dir.join("ca.key"))
            .args(["-set_serial", "0x1234", "-out"])
            .arg(&soon)
            .output()
            .unwrap()
            .status
            .success();
    assert!(ok, "openssl could not make the test certificate");
    let daemon = Daemon::start(&certs, &["--cert", soon.to_str().unwrap(), "--status", "127.0.0.1:0"]);
    let status = status_addr(&daemon);
    let line = daemon.wait_for_log("expires on", secs(5.0));
    assert!(
        line.contains("WARN") && line.contains(soon.to_str().unwrap()) && line.contains("CN=soon.example"),
        "{line}"
    );
    assert!(line.contains("in 9 days") || line.contains("in 10 days"), "{line}");
    let metrics = scrape(status);
    let series = "tlsrelay_certificate_expiry_timestamp_seconds{subject=\"CN=soon.example\",serial=\"1234\"}";
    let expires = sample(&metrics, series);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(
        (now + 9 * 86_400..=now + 10 * 86_400 + 60).contains(&expires),
        "{series} = {expires}\n{metrics}"
    );
    // A reload to the long-lived certificate changes the gauge's labels and counts a success.
    std::fs::copy(certs.server_cert(), &soon).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_log("reloaded ", secs(5.0));
    let metrics = scrape(status);
    assert_eq!(sample(&metrics, series), 0, "the old labels are gone:\n{metrics}");
    assert!(metrics.contains("{subject=\"CN=localhost\",serial=\""), "{metrics}");
    assert_eq!(sample(&metrics, "tlsrelay_reloads_total{result=\"success\"}"), 1);
    assert_eq!(daemon.count_log("expires on"), 1, "one warning, at start");
}

#[test]
fn hub_metrics_count_clients_lines_and_per_ip_refusals() {
    let _serial = serial();
    let certs = Certs::new();
    let daemon = Daemon::start(&certs, &["--status", "127.0.0.1:0", "--max-clients-per-ip", "2"]);
    let status = status_addr(&daemon);
    let read_line = |tls: &mut SslStream<TcpStream>| tls_client::read_text_line(tls).unwrap();
    let mut alice = tls_connect(daemon.port(), &certs.ca());
    assert!(read_line(&mut alice).starts_with("* welcome"));
    let mut bob = tls_connect(daemon.port(), &certs.ca());
    assert!(read_line(&mut bob).starts_with("* welcome"));
    assert!(read_line(&mut alice).ends_with(" joined"));
    alice.write_all(b"hello\n/who\n").unwrap();
    assert!(read_line(&mut bob).ends_with("> hello"));
    assert!(read_line(&mut alice).starts_with("* online: "));
    // A third from the same address is over --max-clients-per-ip 2.
    let mut third = TcpStream::connect(daemon.addr()).unwrap();
    third.set_read_timeout(Some(secs(5.0))).unwrap();
    assert!(matches!(third.read(&mut [0u8; 16]), Ok(0) | Err(_)));
    daemon.wait_for_log("refused: max clients per ip", secs(5.0));

    let metrics = scrape(status);
    assert_eq!(sample(&metrics, "tlsrelay_hub_clients"), 2, "{metrics}");
    assert_eq!(sample(&metrics, "tlsrelay_hub_lines_total"), 2, "{metrics}");
    assert_eq!(sample(&metrics, "tlsrelay_hub_lines_dropped_total"), 0);
    assert_eq!(sample(&metrics, "tlsrelay_connections_refused_total{reason=\"max_clients_per_ip\"}"), 1);
    assert!(!metrics.contains("tlsrelay_upstream_connect_duration_seconds"), "no upstream in hub mode");
    assert_promtool_accepts(&metrics);
}

#[test]
fn status_subcommand_finds_the_endpoint_through_the_pid_file() {
    let _serial = serial();
    let certs = Certs::new();
    let pid_file = certs.dir().join("tlsrelay.pid");
    // A fixed port: the address is read back from the daemon's command line.
    let port = closed_port().addr().to_string();
    let daemon = Daemon::start(&certs, &["--status", &port, "--pid-file", pid_file.to_str().unwrap()]);
    assert_eq!(status_addr(&daemon).to_string(), port);
    let summary = Command::new(env!("CARGO_BIN_EXE_tlsrelay"))
        .args(["status", "--pid-file", pid_file.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&summary.stdout);
    assert!(summary.status.success(), "{text}{}", String::from_utf8_lossy(&summary.stderr));
    assert!(text.contains(&format!("at {port}: health ok")), "{text}");
    assert!(text.contains("hub: 0 clients, 0 lines, 0 dropped"), "{text}");
}
