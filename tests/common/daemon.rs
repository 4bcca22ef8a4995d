//! The daemon under test: `tlsrelay serve` on 127.0.0.1:0, its stderr log parsed by substring.

use super::process::Proc;
use super::Certs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

/// How long the daemon may take to print `listening on` (a debug build, a busy CI machine).
pub const START_DEADLINE: Duration = Duration::from_secs(10);

/// How long the log must stay unchanged before a read of it counts as complete: four times
/// the 5 ms the daemon's log writer lets lines gather (src/logging.rs, GATHER).
pub const LOG_SETTLE: Duration = Duration::from_millis(20);

/// A running `tlsrelay serve`; killed on Drop.
pub struct Daemon {
    proc: Proc,
    addr: SocketAddr,
}

impl Daemon {
    /// Starts `serve` with the test certificates plus `args` and waits for `listening on`.
    pub fn start(certs: &Certs, args: &[&str]) -> Daemon {
        Daemon::start_command(serve_command(certs, args))
    }

    /// Starts a prepared [`serve_command`] and waits for `listening on`.
    pub fn start_command(command: Command) -> Daemon {
        let proc = Proc::spawn("tlsrelay serve", command);
        // A whole line, up to its newline: the reader may have seen only part of it.
        let ok = proc.wait_until(START_DEADLINE, |o| {
            o.stderr_text().split("listening on ").nth(1).is_some_and(|rest| rest.contains('\n'))
        });
        let stderr = proc.stderr();
        assert!(ok, "tlsrelay did not print `listening on` within {START_DEADLINE:?}; stderr:\n{stderr}");
        let addr = parse_listening(&stderr);
        Daemon { proc, addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// Every stderr line so far (see [`Daemon::log_text`]).
    pub fn logs(&self) -> Vec<String> {
        self.log_text().lines().map(str::to_string).collect()
    }

    /// The whole log so far. The daemon writes its log from a queue, in batches up to 5 ms
    /// apart (src/logging.rs), so this first waits until the log has stopped growing for
    /// [`LOG_SETTLE`] (2 s at most): a line logged before the call is then in it.
    pub fn log_text(&self) -> String {
        let give_up = Instant::now() + Duration::from_secs(2);
        let mut seen = self.proc.stderr();
        loop {
            std::thread::sleep(LOG_SETTLE);
            let now = self.proc.stderr();
            if now.len() == seen.len() || Instant::now() >= give_up {
                return now;
            }
            seen = now;
        }
    }

    /// How many log lines contain `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.logs().iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits until a log line contains `needle` and returns it; panics with the log otherwise.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_log_count(needle, 1, timeout);
        // The line is there already: no need to wait for the log to settle.
        self.proc.stderr().lines().find(|l| l.contains(needle)).expect("line seen").to_string()
    }

    /// Waits until at least `n` log lines contain `needle`; panics with the log otherwise.
    pub fn wait_for_log_count(&self, needle: &str, n: usize, timeout: Duration) {
        let ok = self
            .proc
            .wait_until(timeout, |o| o.stderr_text().lines().filter(|l| l.contains(needle)).count() >= n);
        assert!(
            ok,
            "expected {n} log line(s) containing {needle:?} within {timeout:?}, saw {}; log:\n{}",
            self.count_log(needle),
            self.log_text()
        );
    }

    /// Every `conn ID closed: ...` line so far, parsed.
    pub fn closed(&self) -> Vec<Closed> {
        self.logs().iter().filter_map(|l| Closed::parse(l)).collect()
    }

    /// Waits for the first `closed:` line and returns it parsed.
    pub fn wait_closed(&self, timeout: Duration) -> Closed {
        let line = self.wait_for_log(" closed: ", timeout);
        Closed::parse(&line).expect("a closed: line")
    }

    /// Sends a signal (libc::SIGTERM, libc::SIGINT, ...).
    pub fn signal(&self, sig: i32) {
        self.proc.signal(sig);
    }

    /// Waits for the exit; panics with the log when it does not come within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.proc.wait_exit(timeout) {
            Some(status) => status,
            None => panic!("tlsrelay did not exit within {timeout:?}; log:\n{}", self.log_text()),
        }
    }

    /// Like [`Daemon::wait_exit`], but `None` when it is still running (for "must not exit yet").
    pub fn try_wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.wait_exit(timeout)
    }

    /// Sends `sig` and waits for the exit: the status and how long it took after the signal.
    pub fn stop(&mut self, sig: i32, timeout: Duration) -> (ExitStatus, Duration) {
        let t0 = Instant::now();
        self.signal(sig);
        let status = self.wait_exit(timeout);
        (status, t0.elapsed())
    }

    /// The `stopped: ...` summary line, parsed; panics when absent.
    pub fn summary(&self) -> Summary {
        let logs = self.logs();
        let line = logs
            .iter()
            .find(|l| l.contains("stopped: "))
            .unwrap_or_else(|| panic!("no `stopped:` summary line; log:\n{}", self.log_text()));
        Summary::parse(line).unwrap_or_else(|| panic!("cannot parse summary line {line:?}"))
    }

    /// CPU time the daemon has used so far (utime + stime), in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("read stat");
        // Fields after the command name, which is in parentheses and may contain spaces.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after "(comm) ".
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }
}

/// The `serve` command line: `--listen`, `--cert` and `--key` default to the test ones.
pub fn serve_command(certs: &Certs, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tlsrelay"));
    cmd.arg("serve");
    if !args.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    if !args.contains(&"--cert") {
        cmd.arg("--cert").arg(certs.server_cert());
    }
    if !args.contains(&"--key") {
        cmd.arg("--key").arg(certs.server_key());
    }
    cmd.args(args);
    cmd.env("RUST_LOG", std::env::var("TLSRELAY_TEST_LOG").unwrap_or_else(|_| "info".into()));
    cmd
}

/// Runs `tlsrelay ARGS` to its exit: the status and stderr; panics after `timeout`.
pub fn run_to_exit(args: &[&str], timeout: Duration) -> (ExitStatus, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tlsrelay"));
    cmd.args(args).env("RUST_LOG", "info");
    let mut proc = Proc::spawn("tlsrelay", cmd);
    let status = proc.wait_exit(timeout).unwrap_or_else(|| {
        panic!("tlsrelay {args:?} did not exit within {timeout:?}; stderr:\n{}", proc.stderr())
    });
    (status, proc.stderr())
}

/// Runs `serve` with the test defaults plus `args` to its exit (start-failure tests).
pub fn serve_to_exit(certs: &Certs, args: &[&str], timeout: Duration) -> (ExitStatus, String) {
    let mut proc = Proc::spawn("tlsrelay serve", serve_command(certs, args));
    let status = proc.wait_exit(timeout).unwrap_or_else(|| {
        panic!("tlsrelay serve {args:?} did not exit within {timeout:?}; stderr:\n{}", proc.stderr())
    });
    (status, proc.stderr())
}

fn parse_listening(stderr: &str) -> SocketAddr {
    let line = stderr.lines().find(|l| l.contains("listening on ")).expect("listening line");
    let addr = line.split("listening on ").nth(1).unwrap().trim();
    addr.parse().unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"))
}

/// One `conn ID closed: KIND, in N B, out M B, T s` line.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    pub id: u64,
    pub kind: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub secs: f64,
}

impl Closed {
    /// Parses from the right, since a `handshake failed: REASON` may itself contain commas.
    pub fn parse(line: &str) -> Option<Closed> {
        let at = line.find(" closed: ")?;
        let id = line[..at].rsplit("conn ").next()?.trim().parse().ok()?;
        let rest = &line[at + " closed: ".len()..];
        let split = rest.rfind(", in ")?;
        let kind = rest[..split].to_string();
        let nums: Vec<&str> = rest[split + ", in ".len()..].split(' ').collect();
        // ["N", "B,", "out", "M", "B,", "T", "s"]
        Some(Closed {
            id,
            kind,
            bytes_in: nums.first()?.parse().ok()?,
            bytes_out: nums.get(3)?.parse().ok()?,
            secs: nums.get(5)?.parse().ok()?,
        })
    }
}

/// The `stopped: N connections: C clean, P peer did not answer, H dropped in handshake, O other` line.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub total: u64,
    pub clean: u64,
    pub peer_did_not_answer: u64,
    pub dropped_in_handshake: u64,
    pub other: u64,
}

impl Summary {
    pub fn parse(line: &str) -> Option<Summary> {
        let rest = &line[line.find("stopped: ")? + "stopped: ".len()..];
        let number_before = |label: &str| -> Option<u64> {
            let end = rest.find(label)?;
            rest[..end].trim_end().rsplit([' ', ':', ',']).next()?.parse().ok()
        };
        Some(Summary {
            total: number_before(" connections")?,
            clean: number_before(" clean")?,
            peer_did_not_answer: number_before(" peer did not answer")?,
            dropped_in_handshake: number_before(" dropped in handshake")?,
            other: number_before(" other")?,
        })
    }
}

/// Kills whatever process a pid file names when dropped, even on panic: a daemon that went
/// through an upgrade is no longer our child, so its `Proc` cannot reach it.
pub struct PidFileGuard(pub PathBuf);

impl Drop for PidFileGuard {
    fn drop(&mut self) {
        if let Ok(text) = std::fs::read_to_string(&self.0) {
            if let Ok(pid) = text.trim().parse::<i32>() {
                // SAFETY: plain kill(2) on the pid a daemon of this test wrote.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_closed_and_summary_lines() {
        let c = Closed::parse(
            "[2026-11-25T23:10:00Z INFO  tlsrelay::worker] conn 3 closed: clean, in 5 B, out 7 B, 0.0 s",
        )
        .unwrap();
        assert_eq!((c.id, c.kind.as_str(), c.bytes_in, c.bytes_out), (3, "clean", 5, 7));
        let c = Closed::parse("conn 12 closed: handshake failed: wrong version, bad, in 0 B, out 0 B, 1.5 s")
            .unwrap();
        assert_eq!(c.kind, "handshake failed: wrong version, bad");
        assert_eq!(c.secs, 1.5);
        let s = Summary::parse("[x INFO  tlsrelay] stopped: 50 connections: 48 clean, 2 peer did not answer, 0 dropped in handshake, 0 other").unwrap();
        assert_eq!(
            s,
            Summary { total: 50, clean: 48, peer_did_not_answer: 2, dropped_in_handshake: 0, other: 0 }
        );
    }
}
