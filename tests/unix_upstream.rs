//! DESIGN §3 with a unix-socket upstream (DESIGN §11): each close row of
//! tests/close_semantics.rs, seen by a Python `ssl` client and by the upstream's unix socket.
//! Where a TCP upstream gets an RST (client truncation), a unix one gets every byte and then
//! EOF; the log says what happened to the client as it does with TCP.

mod common;

use common::unix_upstream::*;
use common::*;
use std::time::{Duration, Instant};

const PEER: Duration = Duration::from_secs(20);
const UPSTREAM: Duration = Duration::from_secs(20);

// ---- client sends close_notify ---------------------------------------------------------------

#[test]
fn unix_client_close_notify_tls13_half_closes_upstream_and_reply_still_reaches_client() {
    let f = forward_unix(reply_after_fin(b"reply after half-close", secs(0.3)), &["--close-timeout", "5"]);
    let r =
        python(f.port(), &f.certs, &["--tls", "1.3", "--send", "request", "--then", "close-notify"], PEER);
    assert_eq!(r.version, "TLSv1.3", "{}", r.raw);
    assert_eq!((r.text.as_str(), r.end.as_str()), ("reply after half-close", "clean"), "{}", r.raw);
    let seen = f.upstream.next_seen(UPSTREAM);
    assert_eq!((seen.text().as_str(), &seen.end), ("request", &End::Fin));
    let closed = f.expect_closed("clean");
    assert_eq!((closed.bytes_in, closed.bytes_out), (7, 22));
}

#[test]
fn unix_client_close_notify_tls12_is_answered_at_once_and_upstream_gets_eof() {
    let f = forward_unix(report_then_hold(secs(6.0)), &["--close-timeout", "10"]);
    let t0 = Instant::now();
    let r =
        python(f.port(), &f.certs, &["--tls", "1.2", "--send", "request", "--then", "close-notify"], PEER);
    assert_eq!((r.version.as_str(), r.end.as_str()), ("TLSv1.2", "clean"), "{}", r.raw);
    assert!(t0.elapsed() < secs(3.0), "close_notify answered after {:?}, not at once", t0.elapsed());
    let seen = f.upstream.next_seen(UPSTREAM);
    assert_eq!((seen.text().as_str(), &seen.end), ("request", &End::Fin));
    f.expect_closed("clean");
}

#[test]
fn unix_client_close_notify_gives_upstream_its_bytes_and_eof_openssl() {
    let f = forward_unix(record(), &["--close-timeout", "2"]);
    let mut s = s_client(f.port(), &f.certs, &["-tls1_3"]);
    s.wait_handshake();
    s.send(b"request");
    s.close_stdin();
    let out = s.finish(PEER);
    assert_eq!(out.exit_code(), Some(0), "{out:?}");
    let seen = f.upstream.next_seen(UPSTREAM);
    assert_eq!((seen.text().as_str(), &seen.end), ("request", &End::Fin));
}

// ---- truncation: no reset on a unix socket, every byte then EOF ------------------------------

#[test]
fn unix_client_eof_without_close_notify_delivers_every_byte_then_closes_upstream() {
    let f = forward_unix(record(), &["--close-timeout", "5"]);
    let r = python(f.port(), &f.certs, &["--send-bytes", "200000", "--then", "eof"], PEER);
    assert_eq!(r.handshake, "ok", "{}", r.raw);
    let seen = f.upstream.next_seen(UPSTREAM);
    assert!(seen.received == pattern(200_000), "got {} bytes, not the 200000 sent", seen.received.len());
    assert_eq!(seen.end, End::Fin, "a unix socket has no reset: bytes, then EOF");
    assert_eq!(f.expect_closed("truncated by client").bytes_in, 200_000);
}

/// The upstream reads nothing for a second: megabytes sit in the relay's buffers when the
/// client's EOF comes; the close must not lose them.
#[test]
fn unix_client_eof_waits_for_a_slow_upstream_to_take_every_byte() {
    const SIZE: usize = 4 << 20;
    let f = forward_unix(slow_record(secs(1.0)), &["--close-timeout", "10"]);
    let r = python(f.port(), &f.certs, &["--send-bytes", &SIZE.to_string(), "--then", "eof"], PEER);
    assert_eq!((r.handshake.as_str(), r.sent), ("ok", SIZE), "{}", r.raw);
    let seen = f.upstream.next_seen(UPSTREAM);
    assert_eq!(seen.received.len(), SIZE, "bytes lost at the close");
    assert!(seen.received == pattern(SIZE), "bytes corrupted");
    assert_eq!(seen.end, End::Fin);
    assert_eq!(f.expect_closed("truncated by client").bytes_in, SIZE as u64);
}

#[test]
fn unix_client_eof_with_client_eof_fin_gives_upstream_eof() {
    let f = forward_unix(record(), &["--close-timeout", "5", "--client-eof", "fin"]);
    let r = python(f.port(), &f.certs, &["--send-bytes", "200000", "--then", "eof"], PEER);
    assert_eq!(r.handshake, "ok", "{}", r.raw);
    let seen = f.upstream.next_seen(UPSTREAM);
    assert!(seen.received == pattern(200_000), "got {} bytes", seen.received.len());
    assert_eq!(seen.end, End::Fin);
    f.expect_closed("truncated by client");
}

#[test]
fn unix_client_reset_delivers_its_bytes_then_closes_upstream() {
    let f = forward_unix(record(), &["--close-timeout", "5"]);
    let r = python(f.port(), &f.certs, &["--send-bytes", "50000", "--then", "reset"], PEER);
    assert_eq!(r.handshake, "ok", "{}", r.raw);
    let seen = f.upstream.next_seen(UPSTREAM);
    assert!(seen.received == pattern(50_000), "got {} bytes", seen.received.len());
    assert_eq!(seen.end, End::Fin);
    f.expect_closed("reset by client");
}

// ---- the client's TCP ends after our close_notify ----------------------------------------------

#[test]
fn unix_client_closing_tcp_after_our_close_notify_is_peer_did_not_answer() {
    let f = forward_unix(send_then_fin(b"bye".to_vec()), &["--close-timeout", "5"]);
    let r = python(f.port(), &f.certs, &["--answer-close-notify", "no"], PEER);
    assert_eq!((r.text.as_str(), r.end.as_str()), ("bye", "clean"), "{}", r.raw);
    f.expect_closed("peer did not answer");
    assert_eq!(f.upstream.next_seen(UPSTREAM).end, End::Fin);
}

// ---- upstream ends: every byte, then close_notify ------------------------------------------------

#[test]
fn unix_upstream_eof_gives_client_every_byte_then_a_clean_close() {
    const MIB: usize = 1 << 20;
    let f = forward_unix(send_then_fin(pattern(MIB)), &["--close-timeout", "5"]);
    let r = python(f.port(), &f.certs, &[], PEER);
    assert_eq!(r.received, MIB, "{}", r.raw);
    assert!(r.pattern_ok, "bytes corrupted: {}", r.raw);
    assert_eq!((r.end.as_str(), r.answered.as_str()), ("clean", "yes"), "{}", r.raw);
    assert_eq!(f.expect_closed("clean").bytes_out, MIB as u64);
    assert_eq!(f.upstream.next_seen(UPSTREAM).end, End::Fin);
}

#[test]
fn unix_upstream_eof_still_relays_client_data_until_client_close_notify() {
    let f = forward_unix(send_then_fin(b"bye".to_vec()), &["--close-timeout", "5"]);
    let r = python(f.port(), &f.certs, &["--expect", "3", "--send-late", "late data"], PEER);
    assert_eq!((r.text.as_str(), r.end.as_str()), ("bye", "clean"), "{}", r.raw);
    let seen = f.upstream.next_seen(UPSTREAM);
    assert_eq!((seen.text().as_str(), &seen.end), ("late data", &End::Fin));
    assert_eq!(f.expect_closed("clean").bytes_in, 9);
}

// ---- upstream fails mid-stream: never a clean close for the client ----------------------------

/// A unix upstream cannot send RST; closing with the relay's bytes unread is its failure
/// mid-stream (ECONNRESET / EPIPE on the relay's side).
#[test]
fn unix_upstream_closing_with_unread_data_is_not_reported_as_clean_close() {
    let f = forward_unix(read_then_close(10, b"partial"), &["--close-timeout", "5"]);
    let r = python(f.port(), &f.certs, &["--send-bytes", "4000000"], PEER);
    assert_eq!(r.handshake, "ok", "{}", r.raw);
    // The alert goes out when the socket takes it; a client still sending may meet the reset first.
    assert!(
        r.end == "alert:TLSV1_ALERT_INTERNAL_ERROR" || r.end == "reset",
        "the client must see alert 80 or its connection reset: {}",
        r.raw
    );
    f.expect_closed("upstream reset");
}

// ---- upstream cannot be reached ---------------------------------------------------------------

#[test]
fn unix_upstream_missing_socket_file_is_unreachable_with_path_and_os_error() {
    let certs = Certs::new();
    let (_dir, path) = missing_socket();
    let target = format!("unix:{}", path.display());
    let daemon = Daemon::start(&certs, &["--upstream", &target]);
    let r = python(daemon.port(), &certs, &[], PEER);
    assert_eq!(
        r.end, "alert:TLSV1_ALERT_INTERNAL_ERROR",
        "no clean close: alert 80, then a reset: {}",
        r.raw
    );
    let line = daemon.wait_for_log("unreachable", PEER);
    assert!(line.contains(&target) && line.to_lowercase().contains("no such file"), "{line}");
    assert_eq!(daemon.wait_closed(PEER).kind, "upstream unreachable");
}

#[test]
fn unix_upstream_abstract_name_with_no_listener_is_unreachable_refused() {
    let certs = Certs::new();
    let target = format!("unix:@{}", unique_name());
    let daemon = Daemon::start(&certs, &["--upstream", &target]);
    let r = python(daemon.port(), &certs, &[], PEER);
    assert_eq!(
        r.end, "alert:TLSV1_ALERT_INTERNAL_ERROR",
        "no clean close: alert 80, then a reset: {}",
        r.raw
    );
    let line = daemon.wait_for_log("unreachable", PEER);
    assert!(line.contains(&target) && line.to_lowercase().contains("refused"), "{line}");
}

#[test]
fn abstract_unix_upstream_relays_both_ways() {
    let f = forward_abstract(echo(), &["--close-timeout", "3"]);
    let r = python(f.port(), &f.certs, &["--send", "hello", "--expect", "5", "--then", "close-notify"], PEER);
    assert_eq!((r.text.as_str(), r.end.as_str()), ("hello", "clean"), "{}", r.raw);
    let seen = f.upstream.next_seen(UPSTREAM);
    assert_eq!((seen.text().as_str(), &seen.end), ("hello", &End::Fin));
}

// ---- SIGTERM and idle: the relay's own decision, clean ------------------------------------------

#[test]
fn unix_sigterm_delivers_every_upstream_byte_before_close_notify() {
    const SIZE: usize = 16 << 20;
    let mut f = forward_unix(stream_until_fin(pattern(SIZE)), &["--close-timeout", "10"]);
    let args = ["--send", "go", "--expect", "65536", "--pause", "1.5", "--timeout", "40"];
    let mut py = PyPeer::start(f.port(), &f.certs, &args);
    py.wait_line("EXPECTED", PEER);
    let (status, _) = f.daemon.stop(libc::SIGTERM, secs(11.0));
    assert!(status.success(), "exit {status}; log:\n{}", f.daemon.log_text());
    let r = py.result(PEER);
    assert_eq!(r.received, SIZE, "bytes lost at the stop: {}", r.raw);
    assert!(r.pattern_ok, "bytes corrupted: {}", r.raw);
    assert_eq!(r.end, "clean", "{}", r.raw);
    assert_eq!(f.expect_closed("clean").bytes_out, SIZE as u64);
    let seen = f.upstream.next_seen(UPSTREAM);
    assert_eq!((seen.text().as_str(), &seen.end), ("go", &End::Fin));
}

#[test]
fn unix_sigterm_closes_an_established_session_cleanly() {
    let mut f = forward_unix(echo(), &["--close-timeout", "3"]);
    let mut py = PyPeer::start(f.port(), &f.certs, &["--send", "hello", "--expect", "5"]);
    py.wait_line("EXPECTED", PEER);
    let (status, took) = f.daemon.stop(libc::SIGTERM, secs(4.0));
    assert!(status.success() && took < secs(4.0), "exit {status} after {took:?}");
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
}

#[test]
fn unix_idle_timeout_closes_like_a_stop() {
    let f = forward_unix(echo(), &["--idle-timeout", "0.5", "--close-timeout", "3"]);
    let r = python(f.port(), &f.certs, &["--send", "hi", "--expect", "2"], PEER);
    assert_eq!((r.text.as_str(), r.end.as_str()), ("hi", "clean"), "{}", r.raw);
    assert!(f.expect_closed("clean").secs >= 0.4);
    let seen = f.upstream.next_seen(UPSTREAM);
    assert_eq!((seen.text().as_str(), &seen.end), ("hi", &End::Fin));
}
