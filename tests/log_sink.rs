//! A log sink that stops reading never freezes the relay or a stop (issue 15, src/logging.rs):
//! the daemon's stderr is a pipe that nobody reads once `listening on` has been seen.

mod common;

use common::peers::parse_flat_json;
use common::process::Proc;
use common::{secs, Certs};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const HUB_CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/hub_client.py");
const CLIENTS: usize = 1000;
/// Room for 1,000 Python clients to read the join lines the hub queued for them before their
/// `* closing: shutdown` (2-3 s on a loaded 2-core machine).
const CLOSE_TIMEOUT: u64 = 10;

/// `tlsrelay serve` whose stderr we stop reading after `listening on`; killed on Drop.
struct Unread {
    child: Child,
    /// The read end of its stderr, kept open and not read until [`Unread::read_again`].
    stderr: Option<BufReader<ChildStderr>>,
    port: u16,
}

impl Unread {
    fn start(certs: &Certs, args: &[&str]) -> Unread {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tlsrelay"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--cert"]).arg(certs.server_cert());
        cmd.arg("--key").arg(certs.server_key()).args(args).env("RUST_LOG", "info");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start tlsrelay serve");
        let stderr = BufReader::new(child.stderr.take().expect("stderr piped"));
        // Read on a thread so that the wait has a deadline; it hands the pipe back.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut stderr = stderr;
            let mut line = String::new();
            while stderr.read_line(&mut line).is_ok_and(|n| n > 0) {
                if let Some(addr) = line.trim().strip_prefix("listening on ") {
                    let port = addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                    let _ = tx.send(Ok((port.expect("port in listening line"), stderr)));
                    return;
                }
                line.clear();
            }
            let _ = tx.send(Err(line));
        });
        match rx.recv_timeout(secs(10.0)) {
            Ok(Ok((port, stderr))) => Unread { child, stderr: Some(stderr), port },
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no `listening on` line within 10 s: {other:?}");
            }
        }
    }

    /// Bytes written to the pipe and not read: the pipe is full at 64 KiB.
    fn unread_bytes(&self) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD stores an int at the pointer; the descriptor is our open pipe end.
        let fd = self.stderr.as_ref().expect("not read again yet").get_ref().as_raw_fd();
        let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
        assert_eq!(rc, 0, "FIONREAD on the daemon's stderr");
        n as usize
    }

    /// Starts reading the pipe again, to its end: what is read so far is in the Arc.
    fn read_again(&mut self) -> (Arc<Mutex<String>>, std::thread::JoinHandle<()>) {
        let mut stderr = self.stderr.take().expect("read again once");
        let text = Arc::new(Mutex::new(String::new()));
        let sink = text.clone();
        let reader = std::thread::spawn(move || {
            let mut line = String::new();
            while stderr.read_line(&mut line).is_ok_and(|n| n > 0) {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        (text, reader)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Unread {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Threads of `pid` asleep in a write to a pipe (what a stuck logger looked like).
fn threads_in_pipe_write(pid: u32) -> usize {
    let dir = format!("/proc/{pid}/task");
    let Ok(tasks) = std::fs::read_dir(&dir) else { return 0 };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("wchan")).ok())
        .filter(|w| w.contains("pipe_write"))
        .count()
}

#[test]
fn a_stuck_log_pipe_neither_blocks_1000_hub_clients_nor_their_clean_stop() {
    let certs = Certs::new();
    let close_timeout = CLOSE_TIMEOUT.to_string();
    let mut daemon = Unread::start(&certs, &["--close-timeout", &close_timeout]);

    let mut cmd = Command::new("python3");
    cmd.arg(HUB_CLIENT).arg("127.0.0.1").arg(daemon.port.to_string()).arg("--ca").arg(certs.ca());
    cmd.args(["--many", &CLIENTS.to_string(), "--timeout", "120"]);
    let clients = Proc::spawn("hub_client.py --many", cmd);
    let ready = clients.wait_until(secs(90.0), |o| o.stdout_text().contains("READY "));
    let stdout = clients.stdout();
    assert!(ready, "hub_client.py: no READY within 90 s; stdout:\n{stdout}\nstderr:\n{}", clients.stderr());
    let ok: usize = stdout.lines().find_map(|l| l.strip_prefix("READY ")).unwrap().trim().parse().unwrap();
    assert_eq!(ok, CLIENTS, "handshakes completed with the log pipe full; stderr:\n{}", clients.stderr());

    // Each connection logged `accepted` and `established`: far more than a pipe holds, so
    // the log writer must be asleep in a write to the full pipe. (How many bytes a full pipe
    // holds depends on the writes' sizes: batched writes leave parts of its pages empty.)
    let full = Instant::now() + secs(10.0);
    while threads_in_pipe_write(daemon.child.id()) == 0 && Instant::now() < full {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (unread, writing) = (daemon.unread_bytes(), threads_in_pipe_write(daemon.child.id()));
    assert!(
        writing >= 1 && unread >= 32 * 1024,
        "the log pipe holds {unread} B and {writing} threads wait to write: the test would prove nothing"
    );

    let t0 = Instant::now();
    daemon.signal(libc::SIGTERM);
    let budget = secs(CLOSE_TIMEOUT as f64 + 1.0);
    let status = daemon.wait_exit(secs(30.0));
    let took = t0.elapsed();
    let stuck = threads_in_pipe_write(daemon.child.id());
    assert!(status.is_some(), "still running 30 s after SIGTERM ({stuck} threads asleep in a pipe write)");
    assert!(took <= budget, "the stop took {took:?}, more than --close-timeout + 1 s");
    assert_eq!(status.unwrap().code(), Some(0));

    let done = clients.wait_until(secs(30.0), |o| o.stdout_text().contains("DONE "));
    let stdout = clients.stdout();
    assert!(done, "hub_client.py: no DONE; stdout tail:\n{}", tail(&stdout));
    let counts = parse_flat_json(stdout.lines().find_map(|l| l.strip_prefix("DONE ")).unwrap());
    let count = |key: &str| counts.get(key).and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
    assert_eq!(count("clean"), CLIENTS, "clients that got close_notify: {counts:?}");
    assert_eq!(
        count("last_closing_shutdown"),
        CLIENTS,
        "clients whose last line was `* closing: shutdown`: {counts:?}"
    );
    eprintln!("log_sink: {CLIENTS} clients, pipe held {unread} B unread, stop took {took:?}");
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A connection that fails its handshake at once (an HTTP request): the daemon logs three
/// lines for it (`accepted`, `handshake failed`, `closed:`) and no TLS costs the test time.
fn failed_handshake(port: u16) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(secs(10.0))).unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("send");
    let _ = stream.read_to_end(&mut Vec::new());
}

/// Sum of N over the `N log lines dropped` notices, and how many there were.
fn dropped_counts(log: &str) -> (usize, usize) {
    let counts: Vec<usize> = log
        .lines()
        .filter_map(|l| l.strip_suffix(" log lines dropped"))
        .map(|l| l.rsplit("] ").next().unwrap().parse().expect("count"))
        .collect();
    (counts.iter().sum(), counts.len())
}

#[test]
fn a_sink_that_stalls_then_reads_again_is_told_exactly_how_many_lines_it_lost() {
    const CONNECTIONS: usize = 2500;
    let certs = Certs::new();
    let mut daemon = Unread::start(&certs, &[]);
    // 3 lines a connection: more than the queue (4,096 lines) and the pipe (64 KiB) hold.
    for _ in 0..CONNECTIONS {
        failed_handshake(daemon.port);
    }
    let (log, reader) = daemon.read_again();
    // Until the queue has been written out: the log stops growing.
    let deadline = Instant::now() + secs(20.0);
    let mut seen = 0;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = log.lock().unwrap().len();
        if now == seen || Instant::now() > deadline {
            break;
        }
        seen = now;
    }
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit(secs(15.0)).is_some(), "no exit within 15 s of SIGTERM");
    reader.join().unwrap();

    let log = log.lock().unwrap().clone();
    let kept = log.lines().filter(|l| l.contains("] conn ")).count();
    let (dropped, notices) = dropped_counts(&log);
    eprintln!("log_sink: {kept} connection lines written, {dropped} dropped in {notices} notice(s)");
    assert!(dropped > 0, "nothing was dropped: the test would prove nothing");
    assert_eq!(
        kept + dropped,
        3 * CONNECTIONS,
        "every line is written or counted; log tail:\n{}",
        tail(&log)
    );
    assert!(log.contains("] stopped: "), "the `stopped:` line reached the sink; tail:\n{}", tail(&log));
}
