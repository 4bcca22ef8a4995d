//! systemd's protocols without systemd: the notify messages a daemon sends to a
//! NOTIFY_SOCKET we bind ourselves, and socket activation through systemd-socket-activate.
//! tests/systemd.rs proves the same under a real systemd.

mod common;

use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::process::Proc;
use common::{secs, Certs, Daemon};

const WAIT: Duration = Duration::from_secs(10);

/// A NOTIFY_SOCKET in a temporary directory (or the abstract namespace), read by the test.
struct NotifySocket {
    socket: UnixDatagram,
    address: String,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn path() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket { socket, address: path.to_str().unwrap().to_string(), _dir: dir }
    }

    fn abstract_name() -> NotifySocket {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("tlsrelay-test-notify-{}-{:?}", std::process::id(), Instant::now());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        NotifySocket { socket, address: format!("@{name}"), _dir: tempfile::tempdir().unwrap() }
    }

    /// The next message, or None after `timeout`.
    fn next(&self, timeout: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Skips messages until one satisfies `want` (STATUS= lines may come in between).
    fn expect(&self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        while let Some(message) =
            self.next(deadline.saturating_duration_since(Instant::now()).max(secs(0.01)))
        {
            if want(&message) {
                return message;
            }
            seen.push(message);
        }
        panic!("no {what} within {WAIT:?}; got {seen:?}");
    }

    fn expect_exactly(&self, message: &str) {
        self.expect(message, |m| m == message);
    }
}

fn start_notified(certs: &Certs, notify: &NotifySocket, args: &[&str]) -> Daemon {
    let mut command = common::daemon::serve_command(certs, args);
    command.env("NOTIFY_SOCKET", &notify.address);
    Daemon::start_command(command)
}

#[test]
fn ready_comes_once_listening_and_a_reload_is_bracketed() {
    let (certs, notify) = (Certs::new(), NotifySocket::abstract_name());
    let daemon = start_notified(&certs, &notify, &[]);
    notify.expect_exactly("READY=1");
    std::net::TcpStream::connect(daemon.addr()).expect("listening when READY=1 arrives");

    daemon.signal(libc::SIGHUP);
    let reloading = notify.expect("RELOADING=1", |m| m.starts_with("RELOADING=1"));
    let usec: u64 = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("want RELOADING=1 and MONOTONIC_USEC=N: {reloading:?}"));
    assert!(usec > 0);
    notify.expect_exactly("READY=1");
}

#[test]
fn status_counts_connections_and_a_stop_says_stopping() {
    let (certs, notify) = (Certs::new(), NotifySocket::path());
    let mut daemon = start_notified(&certs, &notify, &[]);
    notify.expect_exactly("READY=1");
    let client = std::net::TcpStream::connect(daemon.addr()).unwrap();
    let status = notify.expect("STATUS= with one connection", |m| m.starts_with("STATUS=1 connection;"));
    assert_eq!(status, "STATUS=1 connection; 0 closed cleanly, 0 peer did not answer");
    drop(client);
    notify.expect("STATUS= with none", |m| m.starts_with("STATUS=0 connections;"));
    // Changes every 50 ms for a second make at most one line a second.
    let t0 = Instant::now();
    for _ in 0..20 {
        let client = std::net::TcpStream::connect(daemon.addr()).unwrap();
        std::thread::sleep(secs(0.05));
        drop(client);
    }
    // One line a second while it lasted (slower on a loaded machine), and one after.
    let most = t0.elapsed().as_secs_f64().ceil() as usize + 1;
    let mut lines = 0;
    while let Some(message) = notify.next(secs(1.5)) {
        assert!(message.starts_with("STATUS="), "{message}");
        lines += 1;
    }
    assert!((1..=most).contains(&lines), "{lines} status lines for changes over {:?}", t0.elapsed());
    // Nothing changes now: no more status lines, however long we wait.
    assert_eq!(notify.next(secs(1.5)), None, "a status line without a change");
    daemon.signal(libc::SIGTERM);
    notify.expect_exactly("STOPPING=1");
    assert!(daemon.wait_exit(WAIT).success());
}

/// The new process takes over as systemd's main process; the old one goes quiet, since a
/// STOPPING=1 from it would stop the whole unit.
#[test]
fn after_an_upgrade_the_new_process_is_main_and_the_old_says_nothing() {
    let (certs, notify) = (Certs::new(), NotifySocket::path());
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("tlsrelay.pid");
    let args = ["--pid-file", pid_file.to_str().unwrap(), "--drain", "3"];
    let mut daemon = start_notified(&certs, &notify, &args);
    notify.expect_exactly("READY=1");
    // A client of the old process that leaves during the drain: a change the old process's
    // status line would report.
    let mut client = common::s_client(daemon.port(), &certs, &[]);
    client.wait_handshake();
    notify.expect("STATUS= with one connection", |m| m.starts_with("STATUS=1 connection;"));
    let old = daemon.pid();
    daemon.signal(libc::SIGUSR2);
    let message = notify.expect("MAINPID=", |m| m.starts_with("MAINPID="));
    let new: i32 = message
        .strip_prefix("MAINPID=")
        .and_then(|rest| rest.strip_suffix("\nREADY=1"))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("want MAINPID=N and READY=1: {message:?}"));
    let _new = KillOnDrop(new);
    assert_ne!(new, old);
    client.kill();
    assert_eq!(notify.next(secs(2.5)), None, "a message during the old process's drain");
    assert!(daemon.wait_exit(WAIT).success(), "the old process exits 0");
    assert_eq!(notify.next(secs(0.5)), None, "a message after the hand-over");
    let named: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert_eq!(named, new);
    // SAFETY: kill(2) on a pid we started (through the old process).
    unsafe { libc::kill(new, libc::SIGTERM) };
    notify.expect_exactly("STOPPING=1");
}

struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the upgrade child this test caused; harmless if it is gone.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// systemd-socket-activate binds the port and starts tlsrelay on the first connection.
fn socket_activated(certs: &Certs, extra: &[&str]) -> (Proc, u16) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    activator(certs, &["-l", &format!("127.0.0.1:{port}")], extra, port)
}

fn activator(certs: &Certs, socket: &[&str], extra: &[&str], port: u16) -> (Proc, u16) {
    let mut command = std::process::Command::new("systemd-socket-activate");
    command
        .args(socket)
        .args(["-E", "RUST_LOG=info"])
        .arg(env!("CARGO_BIN_EXE_tlsrelay"))
        .args(["serve", "--cert", certs.server_cert().to_str().unwrap()])
        .args(["--key", certs.server_key().to_str().unwrap()])
        .args(extra);
    let proc = Proc::spawn("systemd-socket-activate tlsrelay", command);
    assert!(proc.wait_until(WAIT, |o| o.stderr_text().contains("Listening on")), "{}", proc.stderr());
    (proc, port)
}

#[test]
fn socket_activation_serves_on_the_passed_socket_without_binding() {
    let certs = Certs::new();
    let (proc, port) = socket_activated(&certs, &[]);
    let peer = common::s_client(port, &certs, &[]);
    peer.wait_handshake();
    let listening = format!("listening on 127.0.0.1:{port}\n");
    assert!(proc.wait_until(WAIT, |o| o.stderr_text().contains(&listening)), "{}", proc.stderr());
    // Bound by tlsrelay itself, 127.0.0.1:PORT would have failed (the activator holds it),
    // and without --listen it would have bound 127.0.0.1:7443.
    assert_eq!(proc.stderr().matches("listening on").count(), 1, "{}", proc.stderr());
}

#[test]
fn socket_activation_with_a_different_listen_is_a_usage_error() {
    let certs = Certs::new();
    let (mut proc, port) = socket_activated(&certs, &["--listen", "127.0.0.1:1"]);
    let _ = std::net::TcpStream::connect(("127.0.0.1", port));
    let status = proc.wait_exit(WAIT).expect("exits");
    let stderr = proc.stderr();
    assert_eq!(status.code(), Some(2), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("does not match the sockets"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("127.0.0.1:1") && line.contains(&format!("127.0.0.1:{port}")), "{line}");
}

#[test]
fn a_passed_socket_that_is_not_tcp_is_refused_naming_it() {
    let certs = Certs::new();
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (mut proc, _) = activator(&certs, &["--datagram", "-l", &format!("127.0.0.1:{port}")], &[], port);
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().send_to(b"x", ("127.0.0.1", port)).unwrap();
    let status = proc.wait_exit(WAIT).expect("exits");
    let stderr = proc.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("descriptor 3 passed by systemd (LISTEN_FDS): not a listening TCP socket"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
}
