//! Bad input: broken or silent clients affect nobody else; bad start-up input is one clear line.

mod common;

use common::upstream::echo;
use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const PEER: Duration = Duration::from_secs(20);
/// A daemon that cannot start must say so at once.
const EXIT: Duration = Duration::from_secs(10);

/// Another client can still do a full round trip and a clean close.
fn assert_serves_another_client(f: &Forward) {
    let r = python(
        f.port(),
        &f.certs,
        &["--send", "still here", "--expect", "10", "--then", "close-notify"],
        PEER,
    );
    assert_eq!((r.text.as_str(), r.end.as_str()), ("still here", "clean"), "{}", r.raw);
}

/// Reads until the server closes; Ok(bytes received) on FIN or RST, Err on the deadline.
fn read_until_closed(stream: &mut TcpStream, timeout: Duration) -> Result<Vec<u8>, String> {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(got),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                return Err(format!("still open after {timeout:?}"))
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[test]
fn plain_http_to_the_tls_port_is_a_failed_handshake_and_others_are_served() {
    let f = forward(echo(), &[]);
    let mut http = TcpStream::connect(f.daemon.addr()).unwrap();
    let local = http.local_addr().unwrap().to_string();
    http.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let got = read_until_closed(&mut http, secs(5.0)).expect("the relay must drop a plain-HTTP client");
    assert!(!got.starts_with(b"HTTP/"), "answered in plain text: {:?}", String::from_utf8_lossy(&got));
    let line = f.daemon.wait_for_log("handshake failed:", PEER);
    assert!(line.contains(&local), "the line must name the peer address {local}: {line}");
    assert!(!f.upstream.try_accepted(secs(0.3)), "a failed handshake reached the upstream");
    assert_serves_another_client(&f);
}

#[test]
fn silent_client_is_dropped_at_handshake_timeout_while_others_are_served() {
    let f = forward(echo(), &["--handshake-timeout", "1.5"]);
    let t0 = Instant::now();
    let mut silent = TcpStream::connect(f.daemon.addr()).unwrap();
    let local = silent.local_addr().unwrap().to_string();
    f.daemon.wait_for_log("accepted", PEER);
    assert_serves_another_client(&f); // while the silent one still holds its handshake
                                      // On a machine loaded enough that serving the other client took the whole timeout, the
                                      // silent one may rightly be gone already; otherwise it must still be there.
    if t0.elapsed() < secs(1.3) {
        assert_eq!(f.daemon.count_log("handshake timeout"), 0, "dropped too early");
    }
    read_until_closed(&mut silent, secs(5.0)).expect("the silent client must be dropped");
    let waited = t0.elapsed();
    assert!(waited >= secs(1.4), "dropped after {waited:?}, before --handshake-timeout 1.5");
    let line = f.daemon.wait_for_log("handshake timeout", PEER);
    assert!(line.contains(&local), "the line must name the peer address {local}: {line}");
}

#[test]
fn tls12_client_is_refused_with_tls_min_13() {
    let f = forward(echo(), &["--tls-min", "1.3"]);
    let r = python(f.port(), &f.certs, &["--tls", "1.2", "--send", "hello"], PEER);
    assert_ne!(r.handshake, "ok", "a TLS 1.2 handshake succeeded with --tls-min 1.3: {}", r.raw);
    f.daemon.wait_for_log("handshake failed:", PEER);
    assert!(!f.upstream.try_accepted(secs(0.3)), "a failed handshake reached the upstream");
    let args = ["--tls", "1.3", "--send", "hello", "--expect", "5", "--then", "close-notify"];
    let r = python(f.port(), &f.certs, &args, PEER);
    assert_eq!((r.version.as_str(), r.text.as_str()), ("TLSv1.3", "hello"), "{}", r.raw);
}

/// Start failures: exit 1 and exactly one stderr line naming `what`; nothing listens.
fn assert_start_failure(status: std::process::ExitStatus, stderr: &str, what: &str) {
    assert_eq!(status.code(), Some(1), "exit {status}; stderr:\n{stderr}");
    let naming: Vec<&str> = stderr.lines().filter(|l| l.contains(what)).collect();
    assert_eq!(naming.len(), 1, "want one line naming {what}; stderr:\n{stderr}");
    assert!(!stderr.contains("listening on"), "it must not listen; stderr:\n{stderr}");
}

#[test]
fn missing_cert_exits_1_naming_the_file() {
    let certs = Certs::new();
    let missing = certs.dir().join("nope").join("server.crt");
    let missing = missing.to_str().unwrap();
    let (status, stderr) = serve_to_exit(&certs, &["--upstream", "127.0.0.1:9", "--cert", missing], EXIT);
    assert_start_failure(status, &stderr, missing);
}

#[test]
fn missing_key_exits_1_naming_the_file() {
    let certs = Certs::new();
    let missing = certs.dir().join("absent.key");
    let missing = missing.to_str().unwrap();
    let (status, stderr) = serve_to_exit(&certs, &["--upstream", "127.0.0.1:9", "--key", missing], EXIT);
    assert_start_failure(status, &stderr, missing);
}

/// Tests run as root, so chmod 000 would not stop a read; a directory cannot be read either.
#[test]
fn unreadable_key_exits_1_naming_the_file() {
    let certs = Certs::new();
    let dir = certs.dir().join("key-is-a-directory");
    std::fs::create_dir(&dir).unwrap();
    let dir = dir.to_str().unwrap();
    let (status, stderr) = serve_to_exit(&certs, &["--upstream", "127.0.0.1:9", "--key", dir], EXIT);
    assert_start_failure(status, &stderr, dir);
}

#[test]
fn garbage_key_exits_1_naming_the_file() {
    let certs = Certs::new();
    let garbage = certs.dir().join("garbage.key");
    std::fs::write(&garbage, "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n").unwrap();
    let garbage = garbage.to_str().unwrap();
    let (status, stderr) = serve_to_exit(&certs, &["--upstream", "127.0.0.1:9", "--key", garbage], EXIT);
    assert_start_failure(status, &stderr, garbage);
}

#[test]
fn busy_port_exits_1_naming_the_address() {
    let certs = Certs::new();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let (status, stderr) = serve_to_exit(&certs, &["--upstream", "127.0.0.1:9", "--listen", &addr], EXIT);
    assert_start_failure(status, &stderr, &addr);
}

#[test]
fn unknown_flag_is_a_usage_error_exit_2() {
    let (status, stderr) = run_to_exit(&["serve", "--no-such-flag"], EXIT);
    assert_eq!(status.code(), Some(2), "exit {status}; stderr:\n{stderr}");
    assert!(stderr.contains("--no-such-flag"), "the message must name the flag:\n{stderr}");
}

#[test]
fn malformed_flag_values_are_usage_errors_exit_2() {
    for bad in [
        &["serve", "--close-timeout", "soon"][..],
        &["serve", "--tls-min", "1.1"],
        &["serve", "--client-eof", "maybe"],
        &["serve", "--max-clients", "-3"],
    ] {
        let (status, stderr) = run_to_exit(bad, EXIT);
        assert_eq!(status.code(), Some(2), "{bad:?}: exit {status}; stderr:\n{stderr}");
    }
}

#[test]
fn no_subcommand_is_a_usage_error_exit_2() {
    let (status, stderr) = run_to_exit(&[], EXIT);
    assert_eq!(status.code(), Some(2), "exit {status}; stderr:\n{stderr}");
}

/// The one stderr line naming `what`, after checking the start failed (exit 1).
fn start_failure_line(certs: &Certs, args: &[&str], what: &str) -> String {
    let (status, stderr) = serve_to_exit(certs, args, EXIT);
    assert_start_failure(status, &stderr, what);
    stderr.lines().find(|l| l.contains(what)).unwrap().to_string()
}

#[test]
fn key_of_another_certificate_exits_1_naming_both_files_and_the_fix() {
    let (certs, other) = (Certs::new(), Certs::new());
    let cert = certs.server_cert();
    let key = other.server_key();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let args = ["--upstream", "127.0.0.1:9", "--cert", cert, "--key", key];
    let line = start_failure_line(&certs, &args, key);
    assert!(line.contains(cert), "the line must name the certificate too: {line}");
    assert!(line.contains("does not belong to") && line.contains("--key"), "no fix in: {line}");
}

#[test]
fn chain_out_of_order_exits_1_naming_both_files_and_the_fix() {
    let certs = Certs::new();
    let reversed = certs.dir().join("reversed-chain.crt");
    let mut pem = std::fs::read(certs.ca()).unwrap();
    pem.extend(std::fs::read(certs.server_cert()).unwrap());
    std::fs::write(&reversed, pem).unwrap();
    let (cert, key) = (reversed.to_str().unwrap(), certs.server_key());
    let key = key.to_str().unwrap();
    let line = start_failure_line(&certs, &["--upstream", "127.0.0.1:9", "--cert", cert, "--key", key], cert);
    assert!(line.contains("out of order") && line.contains(key), "{line}");
    assert!(line.contains("put it first"), "no fix in: {line}");
}

#[test]
fn chain_in_order_is_accepted() {
    let certs = Certs::new();
    let chain = certs.dir().join("chain.crt");
    let mut pem = std::fs::read(certs.server_cert()).unwrap();
    pem.extend(std::fs::read(certs.ca()).unwrap());
    std::fs::write(&chain, pem).unwrap();
    let daemon = Daemon::start(&certs, &["--upstream", "127.0.0.1:9", "--cert", chain.to_str().unwrap()]);
    assert!(daemon.port() > 0);
}

#[test]
fn client_ca_without_a_certificate_exits_1_naming_the_file() {
    let certs = Certs::new();
    let ca = certs.server_key(); // a PEM file, but a key
    let ca = ca.to_str().unwrap();
    let line = start_failure_line(&certs, &["--upstream", "127.0.0.1:9", "--client-ca", ca], ca);
    assert!(line.contains("no certificate") && line.contains("--client-ca"), "{line}");
}

/// As a service user would: the key is root's (0600), the daemon runs as nobody.
#[test]
fn key_unreadable_by_the_user_names_the_user_and_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let certs = Certs::new();
    std::fs::set_permissions(certs.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(certs.server_cert(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let key = certs.server_key();
    let key = key.to_str().unwrap();
    let mut command = common::daemon::serve_command(&certs, &["--upstream", "127.0.0.1:9"]);
    command.uid(65534).gid(65534);
    let mut proc = common::process::Proc::spawn("tlsrelay serve as nobody", command);
    let status = proc.wait_exit(EXIT).expect("a start failure exits at once");
    let stderr = proc.stderr();
    assert_start_failure(status, &stderr, key);
    let line = stderr.lines().find(|l| l.contains(key)).unwrap();
    assert!(line.contains("permission denied for user nobody"), "{line}");
    assert!(line.contains(&format!("chgrp nogroup {key} && chmod g+r {key}")), "no fix in: {line}");
}
