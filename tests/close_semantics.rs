//! DESIGN §3 in forward mode: every close row, each seen by independent TLS stacks
//! (Python `ssl`, gnutls-cli, openssl s_client) and by the upstream's TCP socket.

mod common;

use common::upstream::{echo, read_then_reset, record, reply_after_fin, report_then_hold};
use common::upstream::{send_then_fin, slow_record, stream_until_fin};
use common::*;
use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Deadline for one peer to finish a scenario.
const PEER: Duration = Duration::from_secs(20);
/// Deadline for the upstream's report of one connection.
const UPSTREAM: Duration = Duration::from_secs(20);

/// DESIGN: the client "must not see a clean close: its TCP connection is reset without
/// close_notify". Python reports a TCP reset as `reset` (a truncation would be `truncated`).
fn assert_reset(r: &PyResult) {
    assert_eq!(r.end, "reset", "the client must see its connection reset: {}", r.raw);
}

/// gnutls-cli's words for a TCP reset (ECONNRESET); a truncation reads "non-properly terminated".
const GNUTLS_RESET: &str = "*** Fatal error: Error in the pull function.";
/// s_client's words for a TCP reset while reading.
const S_CLIENT_RESET: &str = "read:errno=104";

/// s_client prints `read R BLOCK` between reads; strip it to compare the data it received.
fn s_client_data(stdout: &str) -> String {
    stdout.replace("read R BLOCK\n", "").replace("read W BLOCK\n", "")
}

/// A text payload with numbered lines, easy to find in a CLI client's output.
fn numbered_lines(n: usize) -> String {
    (0..n).map(|i| format!("line {i:05} of the upstream's answer\n")).collect()
}

// ---- client sends close_notify, TLS 1.3: half-close, the reply still reaches the client ----

#[test]
fn client_close_notify_tls13_half_closes_upstream_and_reply_still_reaches_client_python() {
    let f = forward(reply_after_fin(b"reply after half-close", secs(0.3)), &["--close-timeout", "5"]);
    let r =
        python(f.port(), &f.certs, &["--tls", "1.3", "--send", "request", "--then", "close-notify"], PEER);
    assert_eq!(r.version, "TLSv1.3", "{}", r.raw);
    assert_eq!(r.text, "reply after half-close", "the reply must follow our close_notify: {}", r.raw);
    assert_eq!(r.end, "clean", "{}", r.raw);
    let seen = f.upstream.next_seen(UPSTREAM);
    assert_eq!((seen.text().as_str(), &seen.end), ("request", &End::Fin));
    let closed = f.expect_closed("clean");
    assert_eq!((closed.bytes_in, closed.bytes_out), (7, 22));
}

#[test]
fn client_close_notify_tls13_half_closes_upstream_and_reply_still_reaches_client_gnutls() {
    let f = forward(reply_after_fin(b"reply after half-close", secs(0.3)), &["--close-timeout", "5"]);
    let mut g = gnutls(f.port(), &f.certs, false);
    g.wait_handshake();
    g.send(b"request");
    g.close_stdin(); // gnutls-cli sends close_notify on stdin EOF and keeps reading
    let out = g.finish(PEER);
    assert!(out.contains("TLS1.3"), "not TLS 1.3: {out:?}");
    assert!(out.stdout.contains("reply after half-close"), "reply lost: {out:?}");
    assert!(out.gnutls_clean(), "no clean close: {out:?}");
    assert_eq!(out.exit_code(), Some(0), "{out:?}");
    let seen = f.upstream.next_seen(UPSTREAM);
    assert_eq!((seen.text().as_str(), &seen.end), ("request", &End::Fin));
    f.expect_closed("clean");
}

#[test]
fn client_close_notify_gives_upstream_its_bytes_and_a_fin_openssl() {
    let f = forward(record(), &["--close-timeout", "2"]);
    let mut s = s_client(f.port(), &f.certs, &["-tls1_3"]);
    s.wait_handshake();
    s.send(b"request");
    s.close_stdin(); // s_client sends close_notify on stdin EOF, then exits
    let out = s.finish(PEER);
    assert_eq!(out.exit_code(), Some(0), "{out:?}");
    let seen = f.upstream.next_seen(UPSTREAM);
    assert_eq!((seen.text().as_str(), &seen.end), ("request", &End::Fin));
}

// ---- client sends close_notify, TLS 1.2: answered at once, upstream gets FIN ---------------

/// The upstream keeps its side open for 6 s after our FIN; a relay that waited for it
/// (the TLS 1.3 behaviour) would answer the client only then.
const HOLD: f64 = 6.0;
/// The TLS 1.2 answer must come well before HOLD.
const AT_ONCE: f64 = 3.0;

#[test]
fn client_close_notify_tls12_is_answered_at_once_and_upstream_gets_fin_python() {
    let f = forward(report_then_hold(secs(HOLD)), &["--close-timeout", "10"]);
    let t0 = Instant::now();
    let r =
        python(f.port(), &f.certs, &["--tls", "1.2", "--send", "request", "--then", "close-notify"], PEER);
    assert_eq!(r.version, "TLSv1.2", "{}", r.raw);
    assert_eq!(r.end, "clean", "{}", r.raw);
    assert!(t0.elapsed() < secs(AT_ONCE), "close_notify answered after {:?}, not at once", t0.elapsed());
    let seen = f.upstream.next_seen(UPSTREAM);
    assert_eq!((seen.text().as_str(), &seen.end), ("request", &End::Fin));
    f.expect_closed("clean");
}

#[test]
fn client_close_notify_tls12_is_answered_at_once_and_upstream_gets_fin_gnutls() {
    let f = forward(report_then_hold(secs(HOLD)), &["--close-timeout", "10"]);
    let mut g = gnutls(f.port(), &f.certs, true);
    g.wait_handshake();
    g.send(b"request");
    let t0 = Instant::now();
    g.close_stdin();
    let out = g.finish(PEER);
    assert!(out.contains("TLS1.2"), "not TLS 1.2: {out:?}");
    assert!(out.gnutls_clean(), "no clean close: {out:?}");
    assert_eq!(out.exit_code(), Some(0), "{out:?}");
    assert!(t0.elapsed() < secs(AT_ONCE), "close_notify answered after {:?}, not at once", t0.elapsed());
    let seen = f.upstream.next_seen(UPSTREAM);
    assert_eq!((seen.text().as_str(), &seen.end), ("request", &End::Fin));
    f.expect_closed("clean");
}

#[test]
fn client_close_notify_tls12_gives_upstream_its_bytes_and_a_fin_openssl() {
    let f = forward(report_then_hold(secs(HOLD)), &["--close-timeout", "10"]);
    let mut s = s_client(f.port(), &f.certs, &["-tls1_2"]);
    s.wait_handshake();
    s.send(b"request");
    s.close_stdin();
    let out = s.finish(PEER);
    assert_eq!(out.exit_code(), Some(0), "{out:?}");
    let seen = f.upstream.next_seen(UPSTREAM);
    assert_eq!((seen.text().as_str(), &seen.end), ("request", &End::Fin));
}

// ---- client's TCP stream ends without close_notify, or resets: truncation ------------------

#[test]
fn client_eof_without_close_notify_resets_upstream_after_delivering_every_byte_python() {
    let f = forward(record(), &["--close-timeout", "5"]);
    let r = python(f.port(), &f.certs, &["--send-bytes", "200000", "--then", "eof"], PEER);
    assert_eq!(r.handshake, "ok", "{}", r.raw);
    let seen = f.upstream.next_seen(UPSTREAM);
    assert_eq!(seen.received.len(), 200_000, "bytes lost before the reset");
    assert!(seen.received == pattern(200_000), "bytes corrupted");
    assert_eq!(seen.end, End::Reset, "a truncation must reach the upstream as RST");
    let closed = f.expect_closed("truncated by client");
    assert_eq!(closed.bytes_in, 200_000);
}

/// The upstream reads nothing for a second, so when the client's EOF arrives megabytes
/// still sit in the relay's buffers and send queue; the RST must wait until they are taken.
#[test]
fn client_eof_waits_for_a_slow_upstream_to_take_every_byte_before_the_reset_python() {
    const SIZE: usize = 4 << 20;
    let f = forward(slow_record(secs(1.0)), &["--close-timeout", "10"]);
    let r = python(f.port(), &f.certs, &["--send-bytes", &SIZE.to_string(), "--then", "eof"], PEER);
    assert_eq!((r.handshake.as_str(), r.sent), ("ok", SIZE), "{}", r.raw);
    let seen = f.upstream.next_seen(UPSTREAM);
    assert_eq!(seen.received.len(), SIZE, "bytes destroyed by the reset");
    assert!(seen.received == pattern(SIZE), "bytes corrupted");
    assert_eq!(seen.end, End::Reset);
    assert_eq!(f.expect_closed("truncated by client").bytes_in, SIZE as u64);
}

#[test]
fn client_eof_with_client_eof_fin_gives_upstream_a_fin_python() {
    let f = forward(record(), &["--close-timeout", "5", "--client-eof", "fin"]);
    let r = python(f.port(), &f.certs, &["--send-bytes", "200000", "--then", "eof"], PEER);
    assert_eq!(r.handshake, "ok", "{}", r.raw);
    let seen = f.upstream.next_seen(UPSTREAM);
    assert!(seen.received == pattern(200_000), "got {} bytes, not the 200000 sent", seen.received.len());
    assert_eq!(seen.end, End::Fin, "--client-eof fin must give the upstream a FIN");
    f.expect_closed("truncated by client");
}

#[test]
fn client_reset_resets_upstream_after_delivering_its_bytes_python() {
    let f = forward(record(), &["--close-timeout", "5"]);
    let r = python(f.port(), &f.certs, &["--send-bytes", "50000", "--then", "reset"], PEER);
    assert_eq!(r.handshake, "ok", "{}", r.raw);
    let seen = f.upstream.next_seen(UPSTREAM);
    assert!(seen.received == pattern(50_000), "got {} bytes, not the 50000 sent", seen.received.len());
    assert_eq!(seen.end, End::Reset, "a client reset must reach the upstream as RST");
    f.expect_closed("reset by client");
}

/// SIGKILL ends gnutls-cli's TCP connection with no close_notify (FIN, or RST if it had
/// unread data): either way a truncation, so the upstream must get RST after the bytes.
#[test]
fn client_vanishing_without_close_notify_resets_upstream_gnutls() {
    vanishing_client_reaches_upstream_as_reset(|port, certs| gnutls(port, certs, false), "gnutls");
}

#[test]
fn client_vanishing_without_close_notify_resets_upstream_openssl() {
    vanishing_client_reaches_upstream_as_reset(|port, certs| s_client(port, certs, &[]), "s_client");
}

/// Starts a CLI peer, echoes one line through the relay, kills the peer (no close_notify):
/// the upstream must get the line and then a RST, and the log a truncation or reset.
fn vanishing_client_reaches_upstream_as_reset(start: impl FnOnce(u16, &Certs) -> CliPeer, name: &str) {
    let f = forward(echo(), &["--close-timeout", "5"]);
    let mut peer = start(f.port(), &f.certs);
    peer.wait_handshake();
    let line = format!("hello from {name}\n");
    peer.send(line.as_bytes());
    assert!(peer.wait_output(line.trim_end(), PEER), "no echo");
    peer.kill();
    let seen = f.upstream.next_seen(UPSTREAM);
    assert_eq!(seen.text(), line);
    assert_eq!(seen.end, End::Reset, "a vanished client must reach the upstream as RST");
    let closed = f.daemon.wait_closed(PEER);
    assert!(
        closed.kind == "truncated by client" || closed.kind == "reset by client",
        "wrong kind {:?}; log:\n{}",
        closed.kind,
        f.daemon.log_text()
    );
}

// ---- client's TCP ends after we sent close_notify: "peer did not answer", upstream FIN -----

#[test]
fn client_closing_tcp_after_our_close_notify_is_peer_did_not_answer_python() {
    let f = forward(send_then_fin(b"bye".to_vec()), &["--close-timeout", "5"]);
    let r = python(f.port(), &f.certs, &["--answer-close-notify", "no"], PEER);
    assert_eq!((r.text.as_str(), r.end.as_str()), ("bye", "clean"), "{}", r.raw);
    f.expect_closed("peer did not answer");
    let seen = f.upstream.next_seen(UPSTREAM);
    assert_eq!(seen.end, End::Fin, "no truncation: the upstream gets a FIN, not RST");
}

/// gnutls-cli never answers a close_notify: each of its closes is "peer did not answer".
#[test]
fn client_closing_tcp_after_our_close_notify_is_peer_did_not_answer_gnutls() {
    let f = forward(send_then_fin(b"bye".to_vec()), &["--close-timeout", "5"]);
    let g = gnutls(f.port(), &f.certs, false);
    let out = g.finish(PEER);
    assert!(out.stdout.contains("bye"), "{out:?}");
    assert!(out.gnutls_clean(), "{out:?}");
    f.expect_closed("peer did not answer");
    let seen = f.upstream.next_seen(UPSTREAM);
    assert_eq!(seen.end, End::Fin, "no truncation: the upstream gets a FIN, not RST");
}

// ---- upstream ends (FIN): every byte, then close_notify ----------------------------------

#[test]
fn upstream_fin_gives_client_every_byte_then_a_clean_close_python() {
    const MIB: usize = 1 << 20;
    let f = forward(send_then_fin(pattern(MIB)), &["--close-timeout", "5"]);
    let r = python(f.port(), &f.certs, &[], PEER);
    assert_eq!(r.received, MIB, "{}", r.raw);
    assert!(r.pattern_ok, "bytes corrupted: {}", r.raw);
    assert_eq!((r.end.as_str(), r.answered.as_str()), ("clean", "yes"), "{}", r.raw);
    let closed = f.expect_closed("clean");
    assert_eq!(closed.bytes_out, MIB as u64);
    assert_eq!(f.upstream.next_seen(UPSTREAM).end, End::Fin);
}

#[test]
fn upstream_fin_gives_client_every_byte_then_a_clean_close_gnutls() {
    let payload = numbered_lines(3000);
    let f = forward(send_then_fin(payload.clone().into_bytes()), &["--close-timeout", "5"]);
    let g = gnutls(f.port(), &f.certs, false);
    let out = g.finish(PEER);
    assert!(out.stdout.contains(&payload), "bytes lost: got {} stdout bytes", out.stdout.len());
    assert!(out.gnutls_clean(), "{}", out.stderr);
    assert_eq!(out.exit_code(), Some(0), "{}", out.stderr);
    // gnutls-cli never answers close_notify.
    let closed = f.expect_closed("peer did not answer");
    assert_eq!(closed.bytes_out, payload.len() as u64);
}

#[test]
fn upstream_fin_gives_client_every_byte_then_a_clean_close_openssl() {
    let payload = numbered_lines(600);
    let f = forward(send_then_fin(payload.clone().into_bytes()), &["--close-timeout", "5"]);
    let s = s_client(f.port(), &f.certs, &[]);
    let out = s.finish(PEER);
    assert!(s_client_data(&out.stdout).contains(&payload), "bytes lost:\n{}", out.stdout);
    assert!(out.s_client_clean(), "no `closed`: {out:?}");
    assert_eq!(out.exit_code(), Some(0), "{out:?}");
    let closed = f.expect_closed("clean");
    assert_eq!(closed.bytes_out, payload.len() as u64);
}

/// After the upstream's FIN the relay waits for the client's close_notify and still relays
/// what the client sends meanwhile.
#[test]
fn upstream_fin_still_relays_client_data_until_client_close_notify_python() {
    let f = forward(send_then_fin(b"bye".to_vec()), &["--close-timeout", "5"]);
    let r = python(f.port(), &f.certs, &["--expect", "3", "--send-late", "late data"], PEER);
    assert_eq!((r.text.as_str(), r.end.as_str()), ("bye", "clean"), "{}", r.raw);
    let seen = f.upstream.next_seen(UPSTREAM);
    assert_eq!((seen.text().as_str(), &seen.end), ("late data", &End::Fin));
    let closed = f.expect_closed("clean");
    assert_eq!(closed.bytes_in, 9);
}

// ---- upstream resets mid-stream: never a clean close for the client ------------------------

#[test]
fn upstream_reset_is_not_reported_as_clean_close_python() {
    let f = forward(read_then_reset(7, b"partial"), &["--close-timeout", "5"]);
    let r = python(f.port(), &f.certs, &["--send", "request"], PEER);
    assert_eq!(r.handshake, "ok", "{}", r.raw);
    assert_reset(&r);
    f.expect_closed("upstream reset");
    assert_eq!(f.upstream.next_seen(UPSTREAM).text(), "request");
}

#[test]
fn upstream_reset_is_not_reported_as_clean_close_gnutls() {
    let f = forward(read_then_reset(8, b"partial"), &["--close-timeout", "5"]);
    let mut g = gnutls(f.port(), &f.certs, false);
    g.wait_handshake();
    g.send(b"request\n");
    let out = g.finish(PEER);
    assert!(!out.gnutls_clean(), "a reset upstream must not look clean: {out:?}");
    assert!(out.contains(GNUTLS_RESET), "the client's connection must be reset: {out:?}");
    assert_ne!(out.exit_code(), Some(0), "{out:?}");
    f.expect_closed("upstream reset");
}

#[test]
fn upstream_reset_is_not_reported_as_clean_close_openssl() {
    let f = forward(read_then_reset(8, b"partial"), &["--close-timeout", "5"]);
    let mut s = s_client(f.port(), &f.certs, &[]);
    s.wait_handshake();
    s.send(b"request\n");
    let out = s.finish(PEER);
    assert!(!out.s_client_clean(), "a reset upstream must not look clean: {out:?}");
    assert!(out.contains(S_CLIENT_RESET), "the client's connection must be reset: {out:?}");
    assert_ne!(out.exit_code(), Some(0), "{out:?}");
    f.expect_closed("upstream reset");
}

// ---- upstream cannot be reached ------------------------------------------------------------

fn unreachable_relay() -> (Daemon, Certs, String, ClosedPort) {
    let certs = Certs::new();
    let closed = closed_port();
    let target = closed.addr().to_string();
    let daemon = Daemon::start(&certs, &["--upstream", &target, "--connect-timeout", "2"]);
    (daemon, certs, target, closed)
}

/// The log names the address and the OS error (connection refused).
fn assert_unreachable_logged(daemon: &Daemon, target: &str) {
    daemon.wait_for_log("upstream unreachable", PEER);
    let named = daemon.logs().iter().any(|l| l.contains(target) && l.to_lowercase().contains("refused"));
    assert!(named, "no log line names {target} and the OS error; log:\n{}", daemon.log_text());
}

#[test]
fn upstream_unreachable_is_not_a_clean_close_python() {
    let (daemon, certs, target, _closed) = unreachable_relay();
    // Sending nothing leaves no unread bytes at the relay, whose close would then be a
    // FIN unless it resets on purpose.
    let r = python(daemon.port(), &certs, &[], PEER);
    assert_reset(&r);
    assert_unreachable_logged(&daemon, &target);
}

#[test]
fn upstream_unreachable_is_not_a_clean_close_gnutls() {
    let (daemon, certs, target, _closed) = unreachable_relay();
    let g = gnutls(daemon.port(), &certs, false);
    let out = g.finish(PEER);
    assert!(!out.gnutls_clean(), "{out:?}");
    assert!(out.contains(GNUTLS_RESET), "the client's connection must be reset: {out:?}");
    assert_ne!(out.exit_code(), Some(0), "{out:?}");
    assert_unreachable_logged(&daemon, &target);
}

// ---- SIGTERM / SIGINT: the relay's own decision, so sessions end cleanly --------------------

/// The upstream streams 16 MiB (more than the socket buffers hold); the client reads the
/// first 64 KiB (so relaying has begun), then sleeps; SIGTERM arrives mid-stream. Every byte
/// must still reach the client before close_notify.
#[test]
fn sigterm_delivers_every_upstream_byte_before_close_notify_python() {
    const SIZE: usize = 16 << 20;
    let mut f = forward(stream_until_fin(pattern(SIZE)), &["--close-timeout", "10"]);
    let args = ["--send", "go", "--expect", "65536", "--pause", "1.5", "--timeout", "40"];
    let mut py = PyPeer::start(f.port(), &f.certs, &args);
    py.wait_line("EXPECTED", PEER);
    let (status, _) = f.daemon.stop(libc::SIGTERM, secs(11.0));
    assert!(status.success(), "exit {status}; log:\n{}", f.daemon.log_text());
    let r = py.result(PEER);
    let log = f.daemon.log_text();
    assert_eq!(r.received, SIZE, "bytes lost at the stop: {}\nlog:\n{log}", r.raw);
    assert!(r.pattern_ok, "bytes corrupted: {}", r.raw);
    assert_eq!(r.end, "clean", "{}\nlog:\n{log}", r.raw);
    let closed = f.expect_closed("clean");
    assert_eq!(closed.bytes_out, SIZE as u64);
    let seen = f.upstream.next_seen(UPSTREAM);
    let peers = f.upstream.peers();
    assert_eq!(
        (seen.text().as_str(), &seen.end, peers.len()),
        ("go", &End::Fin, 1),
        "(what the upstream got, how it ended, its connections: from {peers:?}); log:\n{}",
        f.daemon.log_text()
    );
    let s = f.daemon.summary();
    assert_eq!((s.total, s.clean), (1, 1), "{s:?}");
}

/// Client bytes that become readable in the same poll(2) wake-up as a stop still reach the
/// upstream ahead of its FIN (issue 15: the intermittent failure of the test above, where the
/// worker streamed without polling while `go` arrived). `strace` delays the worker thread's
/// next poll by one second; meanwhile the client sends `go` and the daemon gets SIGTERM, so
/// that one poll reports both. Needs strace with ptrace rights. It failed (the upstream got
/// `xy`, the log counted `in 4 B`) until src/forward/pump.rs 0837143.
#[test]
#[ignore = "needs strace with ptrace rights over the daemon"]
fn client_bytes_readable_with_a_stop_reach_the_upstream_before_its_fin() {
    let (seen, log) = go_around_a_delayed_poll(true);
    assert_eq!(seen, ("xygo".to_string(), End::Fin), "log:\n{log}");
}

/// The control of the test above: the same delayed poll, the stop 1.5 s later.
#[test]
#[ignore = "needs strace with ptrace rights over the daemon"]
fn client_bytes_readable_before_a_stop_reach_the_upstream_before_its_fin() {
    let (seen, log) = go_around_a_delayed_poll(false);
    assert_eq!(seen, ("xygo".to_string(), End::Fin), "log:\n{log}");
}

/// Sends `x`, `y` (the worker then enters a poll that strace delays by 1 s), `go`, and
/// SIGTERM (within that second when `stop_within_delay`); returns what the upstream got and
/// the daemon's log with strace's.
fn go_around_a_delayed_poll(stop_within_delay: bool) -> ((String, End), String) {
    use common::tls_client::{self, End as TlsEnd};
    use std::io::Write;
    let mut f = forward(record(), &["--close-timeout", "3"]);
    let tls = tls_client::connector(&f.certs.ca(), None, None);
    let mut s = tls_client::connect(f.daemon.addr(), &tls, PEER).expect("connect");
    s.write_all(b"x").unwrap();
    f.upstream.wait_accepted(PEER);
    f.daemon.wait_for_log("established", PEER);
    let worker = thread_named(f.daemon.pid(), "conn-1");
    let mut strace = std::process::Command::new("strace");
    strace.args(["-p", &worker.to_string(), "-e", "trace=poll,ppoll"]);
    strace.args(["-e", "inject=poll,ppoll:delay_enter=1000000"]);
    let strace = common::process::Proc::spawn("strace", strace);
    assert!(strace.wait_until(PEER, |o| o.stderr_text().contains("attached")), "{}", strace.stderr());
    s.write_all(b"y").unwrap();
    std::thread::sleep(secs(0.3)); // the worker has read `y` and waits in the delayed poll
    s.write_all(b"go").unwrap();
    std::thread::sleep(secs(if stop_within_delay { 0.1 } else { 1.5 }));
    f.daemon.signal(libc::SIGTERM);
    std::thread::sleep(secs(1.5));
    strace.signal(libc::SIGINT); // detaches
    let (rest, end) = tls_client::read_to_end(&mut s);
    assert_eq!((rest.len(), end), (0, TlsEnd::Clean));
    f.daemon.wait_exit(PEER);
    let seen = f.upstream.next_seen(UPSTREAM);
    ((seen.text(), seen.end), format!("{}\nstrace:\n{}", f.daemon.log_text(), strace.stderr()))
}

/// The id of the thread of `pid` named `name` (a worker is named `conn-ID`).
fn thread_named(pid: i32, name: &str) -> u32 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("read /proc/PID/task");
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            return task.file_name().to_str().and_then(|t| t.parse().ok()).expect("a thread id");
        }
    }
    panic!("no thread named {name} in process {pid}");
}

#[test]
fn sigterm_closes_an_established_session_cleanly_python() {
    let mut f = forward(echo(), &["--close-timeout", "3"]);
    let mut py = PyPeer::start(f.port(), &f.certs, &["--send", "hello", "--expect", "5"]);
    py.wait_line("EXPECTED", PEER);
    let (status, took) = f.daemon.stop(libc::SIGTERM, secs(4.0));
    assert!(status.success(), "exit {status}");
    assert!(took < secs(4.0), "stop took {took:?}");
    let r = py.result(PEER);
    assert_eq!(
        (r.text.as_str(), r.end.as_str(), r.answered.as_str()),
        ("hello", "clean", "yes"),
        "{}",
        r.raw
    );
    f.expect_closed("clean");
    let seen = f.upstream.next_seen(UPSTREAM);
    assert_eq!((seen.text().as_str(), &seen.end), ("hello", &End::Fin));
    let s = f.daemon.summary();
    assert_eq!((s.total, s.clean, s.other), (1, 1, 0), "{s:?}");
}

#[test]
fn sigint_closes_an_established_session_cleanly_python() {
    let mut f = forward(echo(), &["--close-timeout", "3"]);
    let mut py = PyPeer::start(f.port(), &f.certs, &["--send", "hello", "--expect", "5"]);
    py.wait_line("EXPECTED", PEER);
    let (status, _) = f.daemon.stop(libc::SIGINT, secs(4.0));
    assert!(status.success(), "exit {status}");
    let r = py.result(PEER);
    assert_eq!((r.text.as_str(), r.end.as_str()), ("hello", "clean"), "{}", r.raw);
    f.expect_closed("clean");
    assert_eq!(f.daemon.summary().clean, 1);
}

#[test]
fn sigterm_closes_an_established_session_cleanly_gnutls() {
    let mut f = forward(echo(), &["--close-timeout", "3"]);
    let mut g = gnutls(f.port(), &f.certs, false);
    g.wait_handshake();
    g.send(b"hello\n");
    assert!(g.wait_output("hello", PEER), "no echo");
    let (status, took) = f.daemon.stop(libc::SIGTERM, secs(4.0));
    assert!(status.success(), "exit {status}");
    assert!(took < secs(4.0), "stop took {took:?}");
    let out = g.finish(PEER);
    assert!(out.gnutls_clean(), "{out:?}");
    assert_eq!(out.exit_code(), Some(0), "{out:?}");
    f.expect_closed("peer did not answer");
    assert_eq!(f.upstream.next_seen(UPSTREAM).end, End::Fin);
    assert_eq!(f.daemon.summary().peer_did_not_answer, 1);
}

#[test]
fn sigterm_closes_an_established_session_cleanly_openssl() {
    let mut f = forward(echo(), &["--close-timeout", "3"]);
    let mut s = s_client(f.port(), &f.certs, &[]);
    s.wait_handshake();
    s.send(b"hello\n");
    assert!(s.wait_output("hello", PEER), "no echo");
    let (status, _) = f.daemon.stop(libc::SIGTERM, secs(4.0));
    assert!(status.success(), "exit {status}");
    let out = s.finish(PEER);
    assert!(out.s_client_clean(), "{out:?}");
    assert_eq!(out.exit_code(), Some(0), "{out:?}");
    f.expect_closed("clean");
    assert_eq!(f.daemon.summary().clean, 1);
}

#[test]
fn sigterm_drops_connections_still_in_handshake() {
    let mut f = forward(echo(), &["--handshake-timeout", "30", "--close-timeout", "3"]);
    let mut silent = TcpStream::connect(f.daemon.addr()).unwrap();
    silent.set_read_timeout(Some(secs(5.0))).unwrap();
    f.daemon.wait_for_log("accepted", PEER);
    let (status, took) = f.daemon.stop(libc::SIGTERM, secs(4.0));
    assert!(status.success(), "exit {status}");
    assert!(took < secs(4.0), "a connection in its handshake delayed the stop: {took:?}");
    let mut buf = [0u8; 64];
    let read = silent.read(&mut buf);
    assert!(
        matches!(read, Ok(0))
            || read.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{read:?}"
    );
    let s = f.daemon.summary();
    assert_eq!((s.total, s.dropped_in_handshake), (1, 1), "{s:?}");
}

/// A client that never reads cannot take the pending bytes; the closure is bounded anyway.
#[test]
fn sigterm_resets_a_client_that_does_not_read_within_close_timeout_python() {
    let mut f = forward(stream_until_fin(pattern(64 << 20)), &["--close-timeout", "1"]);
    let args = ["--send", "go", "--expect", "65536", "--pause", "30", "--timeout", "40"];
    let py = PyPeer::start(f.port(), &f.certs, &args);
    py.wait_line("EXPECTED", PEER); // relaying has begun; from now on the client reads nothing
    std::thread::sleep(secs(0.5)); // let the socket buffers fill up
    let (status, took) = f.daemon.stop(libc::SIGTERM, secs(3.0));
    assert!(status.success(), "exit {status}");
    assert!(took < secs(2.5), "close-timeout 1 s, but the stop took {took:?}");
    f.expect_closed("write stalled");
    drop(py);
}

// ---- idle timeout: the same closure as a stop ------------------------------------------------

#[test]
fn idle_timeout_closes_like_a_stop_python() {
    let f = forward(echo(), &["--idle-timeout", "0.5", "--close-timeout", "3"]);
    let r = python(f.port(), &f.certs, &["--send", "hi", "--expect", "2"], PEER);
    assert_eq!((r.text.as_str(), r.end.as_str()), ("hi", "clean"), "{}", r.raw);
    let closed = f.expect_closed("clean");
    assert!(closed.secs >= 0.4, "closed after {} s, before the idle timeout", closed.secs);
    let seen = f.upstream.next_seen(UPSTREAM);
    assert_eq!((seen.text().as_str(), &seen.end), ("hi", &End::Fin));
}

#[test]
fn idle_timeout_closes_like_a_stop_gnutls() {
    let f = forward(echo(), &["--idle-timeout", "0.5", "--close-timeout", "3"]);
    let mut g = gnutls(f.port(), &f.certs, false);
    g.wait_handshake();
    g.send(b"hi\n");
    let out = g.finish(PEER);
    assert!(out.stdout.contains("hi\n"), "{out:?}");
    assert!(out.gnutls_clean(), "{out:?}");
    assert_eq!(out.exit_code(), Some(0), "{out:?}");
    f.expect_closed("peer did not answer");
    assert_eq!(f.upstream.next_seen(UPSTREAM).end, End::Fin);
}
