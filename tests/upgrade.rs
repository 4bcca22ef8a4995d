//! Hitless upgrade (SIGUSR2 / `tlsrelay upgrade`) and certificate reload (SIGHUP / SIGUSR1),
//! driving the real binary with OpenSSL clients.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::daemon::PidFileGuard;
use common::process::Proc;
use common::tls_client::{self, read_text_line, read_to_end, End};
use common::{run_to_exit, secs, Certs, Daemon};
use openssl::ssl::SslStream;

/// Serialises these tests: each runs several daemons and a connection loop.
static LOCK: Mutex<()> = Mutex::new(());

/// Deadline for each step of a test client (connect, handshake, one read).
const STEP: std::time::Duration = std::time::Duration::from_secs(5);

fn serial_of(tls: &SslStream<TcpStream>) -> String {
    let cert = tls.ssl().peer_certificate().expect("server certificate");
    cert.serial_number().to_bn().unwrap().to_hex_str().unwrap().to_string()
}

fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

fn is_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only probes.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Opens connections in a loop until told to stop, counting each attempt in `attempts`:
/// (successes, failures). A success is a client served: its first line is the hub's welcome
/// (DESIGN §7: whichever process accepted it serves it; `* closing: upgrade` first is a
/// client kicked before service).
fn connection_loop(
    addr: SocketAddr,
    ca: PathBuf,
    stop: Arc<AtomicBool>,
    attempts: Arc<AtomicU64>,
) -> std::thread::JoinHandle<(u64, Vec<String>)> {
    std::thread::spawn(move || {
        let connector = tls_client::connector(&ca, None, None);
        let (mut ok, mut failures) = (0u64, Vec::new());
        let deadline = Instant::now() + secs(120.0);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            attempts.fetch_add(1, Ordering::Relaxed);
            match tls_client::connect(addr, &connector, STEP).and_then(|mut tls| {
                read_text_line(&mut tls).map(|line| (tls, line)).map_err(|end| format!("read: {end:?}"))
            }) {
                Ok((mut tls, line)) if line.starts_with("* welcome") => {
                    let _ = tls.shutdown();
                    ok += 1;
                }
                Ok((_, line)) => failures.push(format!("first line {line:?}")),
                Err(e) => failures.push(e),
            }
        }
        (ok, failures)
    })
}

/// Connection attempts across the three upgrades of the next test, and the loops making them.
const ATTEMPTS: u64 = 2_000;
const LOOPS: usize = 4;

#[test]
fn three_upgrades_under_a_connection_loop_refuse_nothing_and_close_old_sessions_cleanly() {
    let _serial = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let certs = Certs::new();
    let pid_file = certs.dir().join("tlsrelay.pid");
    let _guard = PidFileGuard(pid_file.clone());
    let daemon = Daemon::start(&certs, &["--pid-file", pid_file.to_str().unwrap(), "--close-timeout", "2"]);
    let first_pid = read_pid(&pid_file);
    let connector = tls_client::connector(&certs.ca(), None, None);
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicU64::new(0));
    let loopers: Vec<_> = (0..LOOPS)
        .map(|_| connection_loop(daemon.addr(), certs.ca(), stop.clone(), attempts.clone()))
        .collect();

    for round in 1..=3 {
        // Each upgrade runs while the loops are at it: at least ATTEMPTS / 3 around each.
        let wait_until = Instant::now() + secs(60.0);
        while attempts.load(Ordering::Relaxed) < (round - 1) * ATTEMPTS / 3 + ATTEMPTS / 6
            && Instant::now() < wait_until
        {
            std::thread::sleep(secs(0.01));
        }
        let mut old: Vec<_> =
            (0..2).map(|_| tls_client::connect(daemon.addr(), &connector, STEP).unwrap()).collect();
        for tls in &mut old {
            assert!(read_text_line(tls).unwrap().starts_with("* welcome"));
        }
        let before = read_pid(&pid_file);
        let (status, stderr) =
            run_to_exit(&["upgrade", "--pid-file", pid_file.to_str().unwrap()], secs(30.0));
        assert!(status.success(), "upgrade {round} failed: {stderr}\nlog:\n{}", daemon.log_text());
        let after = read_pid(&pid_file);
        assert_ne!(before, after, "the pid file names the new process");
        for tls in &mut old {
            let (rest, end) = read_to_end(tls);
            let rest = String::from_utf8_lossy(&rest);
            // Join lines of the loop's clients may come first; the announcement comes last.
            assert_eq!(rest.lines().last(), Some("* closing: upgrade"), "round {round}: {rest:?}");
            assert!(rest.ends_with('\n'));
            assert_eq!(end, End::Clean, "round {round}: old session ended without close_notify");
        }
    }
    let wait_until = Instant::now() + secs(60.0);
    while attempts.load(Ordering::Relaxed) < ATTEMPTS && Instant::now() < wait_until {
        std::thread::sleep(secs(0.01));
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failures) = (0, Vec::new());
    for looper in loopers {
        let (served, failed) = looper.join().unwrap();
        ok += served;
        failures.extend(failed);
    }
    assert!(
        failures.is_empty(),
        "{} of {} attempts refused or kicked before service: {:?}\nlog:\n{}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(5)],
        daemon.log_text()
    );
    assert!(ok >= ATTEMPTS, "the loops made only {ok} connections");

    let last = read_pid(&pid_file);
    assert_ne!(last, first_pid);
    assert!(is_alive(last));
    let mut tls = tls_client::connect(daemon.addr(), &connector, STEP).expect("the last process serves");
    assert!(read_text_line(&mut tls).unwrap().starts_with("* welcome"));
    drop(tls);
    // SAFETY: plain kill(2) on the daemon the pid file names.
    unsafe { libc::kill(last, libc::SIGTERM) };
    let deadline = Instant::now() + secs(10.0);
    while is_alive(last) && Instant::now() < deadline {
        std::thread::sleep(secs(0.05));
    }
    assert!(!pid_file.exists(), "the last process removes the pid file at its stop");
}

/// An upstream that answers each request, after a pause, with `reply_len` bytes and a FIN.
fn slow_upstream(reply_len: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let mut stream = stream.unwrap();
            std::thread::spawn(move || {
                let mut request = [0u8; 64];
                let _ = stream.read(&mut request);
                std::thread::sleep(secs(0.5));
                let _ = stream.write_all(&vec![b'r'; reply_len]);
            });
        }
    });
    port
}

#[test]
fn forward_request_accepted_just_before_an_upgrade_gets_its_full_reply() {
    let _serial = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let certs = Certs::new();
    let pid_file = certs.dir().join("tlsrelay.pid");
    let _guard = PidFileGuard(pid_file.clone());
    let upstream = format!("127.0.0.1:{}", slow_upstream(200_000));
    let daemon = Daemon::start(
        &certs,
        &["--pid-file", pid_file.to_str().unwrap(), "--upstream", &upstream, "--close-timeout", "4"],
    );
    let mut tls =
        tls_client::connect(daemon.addr(), &tls_client::connector(&certs.ca(), None, None), STEP).unwrap();
    tls.write_all(b"GET\n").unwrap();
    let (status, stderr) = run_to_exit(&["upgrade", "--pid-file", pid_file.to_str().unwrap()], secs(30.0));
    assert!(status.success(), "upgrade failed: {stderr}");
    let (reply, end) = read_to_end(&mut tls);
    assert_eq!(reply.len(), 200_000, "the whole reply arrives");
    assert_eq!(end, End::Clean, "then a close_notify");
}

#[test]
fn upgrade_to_a_binary_that_fails_keeps_the_old_process_serving() {
    let _serial = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let certs = Certs::new();
    let binary = certs.dir().join("tlsrelay-copy");
    std::fs::copy(env!("CARGO_BIN_EXE_tlsrelay"), &binary).unwrap();
    let pid_file = certs.dir().join("tlsrelay.pid");
    let mut command = std::process::Command::new(&binary);
    command.args(["serve", "--listen", "127.0.0.1:0", "--pid-file", pid_file.to_str().unwrap()]);
    command.arg("--cert").arg(certs.server_cert()).arg("--key").arg(certs.server_key());
    command.env("RUST_LOG", "info");
    let daemon = Proc::spawn("tlsrelay serve (copy)", command);
    let listening = |o: &common::process::Output| {
        o.stderr_text().split("listening on ").nth(1).is_some_and(|rest| rest.contains('\n'))
    };
    assert!(daemon.wait_until(secs(10.0), listening));
    let port: u16 = daemon
        .stderr()
        .split("listening on 127.0.0.1:")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    // A package upgrade that left a broken binary at the same path.
    std::fs::remove_file(&binary).unwrap();
    std::fs::write(&binary, "#!/bin/sh\necho broken >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let (status, stderr) = run_to_exit(&["upgrade", "--pid-file", pid_file.to_str().unwrap()], secs(30.0));
    assert_eq!(status.code(), Some(1), "upgrade must report the failure: {stderr}");
    assert!(stderr.contains("exited"), "the reason reaches the operator: {stderr}");
    assert!(
        daemon.wait_until(secs(5.0), |o| o.stderr_text().contains("upgrade failed:")),
        "{}",
        daemon.stderr()
    );
    assert_eq!(read_pid(&pid_file), daemon.pid(), "the pid file still names the old process");
    let mut tls = tls_client::connect(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &tls_client::connector(&certs.ca(), None, None),
        STEP,
    )
    .expect("still serving");
    assert!(read_text_line(&mut tls).unwrap().starts_with("* welcome"));
}

#[test]
fn sighup_and_sigusr1_reload_the_certificate_for_new_connections_only() {
    let _serial = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let certs = Certs::new();
    let daemon = Daemon::start(&certs, &[]);
    let connector = tls_client::connector(&certs.ca(), None, None);
    let mut old = tls_client::connect(daemon.addr(), &connector, STEP).unwrap();
    read_text_line(&mut old).unwrap();
    let first = serial_of(&old);

    let (status, stderr) = run_to_exit(&["gen-cert", "--out", certs.dir().to_str().unwrap()], secs(10.0));
    assert!(status.success(), "{stderr}");
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_log("reloaded", secs(5.0));
    let new = tls_client::connect(daemon.addr(), &connector, STEP).unwrap();
    let second = serial_of(&new);
    assert_ne!(first, second, "a new connection sees the new certificate");

    old.write_all(b"/who\n").unwrap();
    // The new connection's join notice may come first.
    let replies: Vec<String> = (0..2)
        .map_while(|_| read_text_line(&mut old).ok())
        .take_while(|l| !l.starts_with("* online:"))
        .collect();
    assert!(replies.len() < 2, "the old connection is untouched: {replies:?}");

    std::fs::write(certs.server_key(), "garbage").unwrap();
    daemon.signal(libc::SIGUSR1);
    let line = daemon.wait_for_log("reload failed", secs(5.0));
    assert!(line.contains(certs.server_key().to_str().unwrap()), "the log names the file: {line}");
    let after = tls_client::connect(daemon.addr(), &connector, STEP).unwrap();
    assert_eq!(serial_of(&after), second, "a broken key keeps the last good certificate");
}
