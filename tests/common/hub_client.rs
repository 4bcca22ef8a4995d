//! The hub client of the tests: `tests/peers/hub_client.py` (Python `ssl`) driven through
//! stdin, its received lines decoded; one connection ([`HubClient`]) or many at once
//! ([`ManyClients`]). Each is killed on Drop (it is a `Proc`).

use super::process::Proc;
use super::{Certs, Daemon};
use std::process::Command;
use std::time::Duration;

/// How long a client may take to connect and finish its handshake.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(15);

/// A generous deadline for one expected line or end.
pub const LINE_DEADLINE: Duration = Duration::from_secs(10);

const HUB_CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/hub_client.py");

/// One hub_client.py connection (single mode); killed on Drop.
pub struct HubClient {
    proc: Proc,
    /// The guest nick from the welcome line.
    pub nick: String,
}

impl HubClient {
    /// Connects to the daemon's hub and waits for the welcome line.
    pub fn connect(daemon: &Daemon, certs: &Certs) -> HubClient {
        HubClient::connect_with(daemon, certs, &[])
    }

    /// Like [`HubClient::connect`] with extra hub_client.py arguments (`--rcvbuf 4096`, ...).
    pub fn connect_with(daemon: &Daemon, certs: &Certs, args: &[&str]) -> HubClient {
        let mut client = HubClient::spawn(daemon, certs, args);
        client.wait_welcome();
        client
    }

    /// Starts hub_client.py without waiting for anything; see [`HubClient::wait_welcome`].
    pub fn spawn(daemon: &Daemon, certs: &Certs, args: &[&str]) -> HubClient {
        let mut cmd = Command::new("python3");
        cmd.arg(HUB_CLIENT).arg("127.0.0.1").arg(daemon.port().to_string()).arg("--ca").arg(certs.ca());
        cmd.args(args);
        HubClient { proc: Proc::spawn("hub_client.py", cmd), nick: String::new() }
    }

    /// Waits for the welcome line and learns the nick from it.
    pub fn wait_welcome(&mut self) {
        let welcome = self.wait_line_starting("* welcome to tlsrelay; you are ", CONNECT_DEADLINE);
        self.nick = welcome
            .strip_prefix("* welcome to tlsrelay; you are ")
            .and_then(|rest| rest.split('.').next())
            .unwrap_or_else(|| panic!("cannot read the nick from {welcome:?}"))
            .to_string();
    }

    /// Whether the welcome line has arrived yet.
    pub fn welcomed(&self) -> bool {
        self.lines().iter().any(|l| l.starts_with("* welcome to tlsrelay; you are "))
    }

    /// Every line received so far (lossy UTF-8; see [`HubClient::raw_lines`]).
    pub fn lines(&self) -> Vec<String> {
        self.raw_lines().iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect()
    }

    /// Every line received so far, as the exact bytes without `\n`.
    pub fn raw_lines(&self) -> Vec<Vec<u8>> {
        self.proc.with_output(|o| decode_lines(&o.stdout_text()))
    }

    /// The end of what the script printed, for assertion messages (a flood prints
    /// thousands of lines; the last ones tell what went wrong).
    pub fn transcript(&self) -> String {
        const TAIL: usize = 40;
        let out = self.proc.stdout();
        let lines: Vec<&str> = out.lines().collect();
        let tail = &lines[lines.len().saturating_sub(TAIL)..];
        format!(
            "stdout (last {} of {} lines):\n{}\nstderr:\n{}",
            tail.len(),
            lines.len(),
            tail.join("\n"),
            self.proc.stderr()
        )
    }

    /// Waits for a line equal to `line`; panics with the transcript otherwise.
    pub fn wait_line(&self, line: &str, timeout: Duration) {
        self.wait_line_where(&format!("a line == {line:?}"), timeout, |l| l == line);
    }

    /// Waits for a line starting with `prefix` and returns it.
    pub fn wait_line_starting(&self, prefix: &str, timeout: Duration) -> String {
        self.wait_line_where(&format!("a line starting {prefix:?}"), timeout, |l| l.starts_with(prefix))
    }

    /// Waits for the first line matching `pred` and returns it.
    pub fn wait_line_where(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let found = |text: &str| decode_lines(text).into_iter().map(lossy).find(|l| pred(l));
        let ok = self.proc.wait_until(timeout, |o| found(&o.stdout_text()).is_some());
        assert!(ok, "client {}: expected {what} within {timeout:?}; {}", self.nick, self.transcript());
        found(&self.proc.stdout()).unwrap()
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.command(&format!("send {}", hex(bytes)));
    }

    /// Sends `text` followed by `\n`.
    pub fn say(&mut self, text: &str) {
        self.send(format!("{text}\n").as_bytes());
    }

    /// Sends one raw hub_client.py command (`close`, `drop`, `pause`, `flood A 100 200`, ...).
    pub fn command(&mut self, cmd: &str) {
        self.proc.write_stdin(format!("{cmd}\n").as_bytes());
    }

    /// Waits for a script output line (not a relayed line) starting with `prefix`.
    pub fn wait_output(&self, prefix: &str, timeout: Duration) -> String {
        let find = |text: &str| text.lines().find(|l| l.starts_with(prefix)).map(str::to_string);
        let ok = self.proc.wait_until(timeout, |o| find(&o.stdout_text()).is_some());
        assert!(ok, "client {}: no {prefix:?} within {timeout:?}; {}", self.nick, self.transcript());
        find(&self.proc.stdout()).unwrap()
    }

    /// Waits for `END KIND` and returns KIND (clean, truncated, reset, timeout, ...).
    pub fn wait_end(&self, timeout: Duration) -> String {
        self.wait_output("END ", timeout)["END ".len()..].to_string()
    }

    /// Whether the script has printed `END` yet.
    pub fn ended(&self) -> bool {
        self.proc.stdout().lines().any(|l| l.starts_with("END "))
    }
}

fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The `LINE HEX` lines of hub_client.py's stdout, decoded.
pub fn decode_lines(stdout: &str) -> Vec<Vec<u8>> {
    stdout.lines().filter_map(|l| l.strip_prefix("LINE ")).map(unhex).collect()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex")).collect()
}

/// hub_client.py --many N: N connections in one process that wait for the server's end.
pub struct ManyClients {
    proc: Proc,
}

impl ManyClients {
    pub fn start(daemon: &Daemon, certs: &Certs, n: usize, timeout_secs: u32) -> ManyClients {
        let mut cmd = Command::new("python3");
        cmd.arg(HUB_CLIENT).arg("127.0.0.1").arg(daemon.port().to_string()).arg("--ca").arg(certs.ca());
        cmd.args(["--many", &n.to_string(), "--timeout", &timeout_secs.to_string()]);
        ManyClients { proc: Proc::spawn("hub_client.py --many", cmd) }
    }

    /// Waits for `READY OK` and returns OK, the number of finished handshakes.
    pub fn ready(&self, timeout: Duration) -> usize {
        let line = self.wait_prefix("READY ", timeout);
        line["READY ".len()..].trim().parse().expect("READY count")
    }

    /// Waits for `DONE {json}` and returns (the JSON text, every `CLIENT I END LAST` line).
    pub fn done(&self, timeout: Duration) -> (String, Vec<(String, String)>) {
        let line = self.wait_prefix("DONE ", timeout);
        let clients = self
            .proc
            .stdout()
            .lines()
            .filter_map(|l| l.strip_prefix("CLIENT "))
            .map(|rest| {
                let mut f = rest.split(' ');
                let _index = f.next();
                let end = f.next().unwrap_or("").to_string();
                let last = f.next().unwrap_or("-");
                let last = if last == "-" { String::new() } else { lossy(unhex(last)) };
                (end, last)
            })
            .collect();
        (line["DONE ".len()..].to_string(), clients)
    }

    fn wait_prefix(&self, prefix: &str, timeout: Duration) -> String {
        let find = |text: &str| text.lines().find(|l| l.starts_with(prefix)).map(str::to_string);
        let ok = self.proc.wait_until(timeout, |o| find(&o.stdout_text()).is_some());
        assert!(
            ok,
            "hub_client.py --many: no {prefix:?} within {timeout:?}; stdout:\n{}\nstderr:\n{}",
            self.proc.stdout(),
            self.proc.stderr()
        );
        find(&self.proc.stdout()).unwrap()
    }
}
