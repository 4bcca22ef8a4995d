//! Hub clients for the abuse test: tests/peers/hub_client.py (Python `ssl`) driven through
//! stdin, its `LINE HEX` output decoded. Killed on Drop (it is a `Proc`).

use crate::common::process::Proc;
use crate::common::{Certs, Daemon};
use std::process::Command;
use std::time::Duration;

const HUB_CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/hub_client.py");

pub struct Hub {
    proc: Proc,
    pub nick: String,
}

impl Hub {
    /// Connects (with extra hub_client.py arguments) and waits for the welcome line.
    pub fn connect(daemon: &Daemon, certs: &Certs, args: &[&str]) -> Hub {
        let mut cmd = Command::new("python3");
        cmd.arg(HUB_CLIENT).arg("127.0.0.1").arg(daemon.port().to_string()).arg("--ca").arg(certs.ca());
        cmd.args(["--timeout", "120"]).args(args);
        let mut hub = Hub { proc: Proc::spawn("hub_client.py", cmd), nick: String::new() };
        let welcome =
            hub.wait_line(Duration::from_secs(15), |l| l.starts_with("* welcome to tlsrelay; you are "));
        hub.nick = welcome["* welcome to tlsrelay; you are ".len()..].split('.').next().unwrap().to_string();
        hub
    }

    /// Every relayed line so far, as raw bytes.
    pub fn raw_lines(&self) -> Vec<Vec<u8>> {
        self.proc.with_output(|o| decode(&o.stdout_text()))
    }

    pub fn lines(&self) -> Vec<String> {
        self.raw_lines().into_iter().map(|l| String::from_utf8_lossy(&l).into_owned()).collect()
    }

    /// Waits for the first line matching `pred`; panics with the transcript otherwise.
    pub fn wait_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let find = |text: &str| {
            decode(text).into_iter().map(|l| String::from_utf8_lossy(&l).into_owned()).find(|l| pred(l))
        };
        let ok = self.proc.wait_until(timeout, |o| find(&o.stdout_text()).is_some());
        assert!(ok, "{}: no expected line within {timeout:?}; {}", self.nick, self.transcript());
        find(&self.proc.stdout()).unwrap()
    }

    /// Waits for a script line (not a relayed one) starting with `prefix`.
    pub fn wait_output(&self, prefix: &str, timeout: Duration) -> String {
        let find = |text: &str| text.lines().find(|l| l.starts_with(prefix)).map(str::to_string);
        let ok = self.proc.wait_until(timeout, |o| find(&o.stdout_text()).is_some());
        assert!(ok, "{}: no {prefix:?} within {timeout:?}; {}", self.nick, self.transcript());
        find(&self.proc.stdout()).unwrap()
    }

    pub fn has_output(&self, prefix: &str) -> bool {
        self.proc.stdout().lines().any(|l| l.starts_with(prefix))
    }

    pub fn send(&mut self, bytes: &[u8]) {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.command(&format!("send {hex}"));
    }

    pub fn say(&mut self, text: &str) {
        self.send(format!("{text}\n").as_bytes());
    }

    /// One raw hub_client.py command: `flood TAG N SIZE RATE`, `pause`, `close`, ...
    pub fn command(&mut self, cmd: &str) {
        self.proc.write_stdin(format!("{cmd}\n").as_bytes());
    }

    pub fn transcript(&self) -> String {
        let out = self.proc.stdout();
        let tail: Vec<&str> = out.lines().rev().take(40).collect();
        format!("stdout (last 40 lines, newest first):\n{}\nstderr:\n{}", tail.join("\n"), self.proc.stderr())
    }
}

fn decode(stdout: &str) -> Vec<Vec<u8>> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("LINE "))
        .map(|h| (0..h.len() / 2).map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap()).collect())
        .collect()
}
