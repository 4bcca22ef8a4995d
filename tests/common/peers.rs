//! Real TLS clients as peers: tests/peers/tls_peer.py (Python `ssl`), gnutls-cli, openssl s_client.

use super::process::Proc;
use super::Certs;
use std::collections::HashMap;
use std::process::{Command, ExitStatus};
use std::time::Duration;

/// How long a peer may take to finish its handshake with the relay.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

const PY_PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/tls_peer.py");

// ---- Python ------------------------------------------------------------------------------

/// One tls_peer.py connection (single mode).
pub struct PyPeer {
    proc: Proc,
}

/// tls_peer.py's final JSON line for one connection.
#[derive(Debug, Clone)]
pub struct PyResult {
    pub handshake: String,
    pub version: String,
    pub sent: usize,
    pub received: usize,
    pub pattern_ok: bool,
    pub text: String,
    /// clean | truncated | reset | timeout | alert:REASON | error:...
    pub end: String,
    pub answered: String,
    pub after: String,
    pub raw: String,
}

impl PyPeer {
    /// Starts `tls_peer.py 127.0.0.1 PORT --ca CA ARGS`.
    pub fn start(port: u16, certs: &Certs, args: &[&str]) -> PyPeer {
        let mut cmd = Command::new("python3");
        cmd.arg(PY_PEER).arg("127.0.0.1").arg(port.to_string()).arg("--ca").arg(certs.ca());
        cmd.args(args);
        PyPeer { proc: Proc::spawn("tls_peer.py", cmd) }
    }

    /// Waits for `READY` (handshake done); panics with the peer's output otherwise.
    pub fn wait_ready(&self) {
        self.wait_line("READY", HANDSHAKE_DEADLINE);
    }

    /// Waits for a stdout line equal to `line` (READY, EXPECTED); panics otherwise.
    pub fn wait_line(&self, line: &str, timeout: Duration) {
        let ok = self.proc.wait_until(timeout, |o| o.stdout_text().lines().any(|l| l == line));
        assert!(
            ok,
            "tls_peer.py: no {line:?} line; stdout:\n{}\nstderr:\n{}",
            self.proc.stdout(),
            self.proc.stderr()
        );
    }

    /// Waits for the final JSON line and parses it.
    pub fn result(&mut self, timeout: Duration) -> PyResult {
        let ok = self.proc.wait_until(timeout, |o| o.stdout_text().lines().any(|l| l.starts_with('{')));
        let stdout = self.proc.stdout();
        assert!(
            ok,
            "tls_peer.py gave no result within {timeout:?}; stdout:\n{stdout}\nstderr:\n{}",
            self.proc.stderr()
        );
        let raw = stdout.lines().find(|l| l.starts_with('{')).unwrap().to_string();
        let f = parse_flat_json(&raw);
        let get = |k: &str| f.get(k).cloned().unwrap_or_default();
        PyResult {
            handshake: get("handshake"),
            version: get("version"),
            sent: get("sent").parse().unwrap_or(0),
            received: get("received").parse().unwrap_or(0),
            pattern_ok: get("pattern_ok") == "true",
            text: get("text"),
            end: get("end"),
            answered: get("answered"),
            after: get("after"),
            raw,
        }
    }
}

/// Runs one tls_peer.py connection to its end and returns its result.
pub fn python(port: u16, certs: &Certs, args: &[&str], timeout: Duration) -> PyResult {
    PyPeer::start(port, certs, args).result(timeout)
}

/// tls_peer.py --clients N: many connections in one process, driven through stdin.
pub struct PyClients {
    proc: Proc,
}

impl PyClients {
    pub fn start(port: u16, certs: &Certs, n: usize, args: &[&str]) -> PyClients {
        let mut cmd = Command::new("python3");
        cmd.arg(PY_PEER).arg("127.0.0.1").arg(port.to_string()).arg("--ca").arg(certs.ca());
        cmd.args(["--clients", &n.to_string()]).args(args);
        PyClients { proc: Proc::spawn("tls_peer.py --clients", cmd) }
    }

    /// Waits for `READY {...}`: returns how many handshakes succeeded.
    pub fn ready(&self, timeout: Duration) -> usize {
        let fields = self.wait_tagged("READY ", 1, timeout);
        fields["ok"].parse().unwrap()
    }

    /// Every live client sends `text` and reads it back; returns how many got it back.
    pub fn echo(&mut self, text: &str, timeout: Duration) -> usize {
        let before = self.count_tagged("ECHO ");
        self.proc.write_stdin(format!("echo {text}\n").as_bytes());
        let fields = self.wait_tagged("ECHO ", before + 1, timeout);
        fields["ok"].parse().unwrap()
    }

    /// Closes stdin so every client waits for the server's end; returns the counts of
    /// `DONE {...}`: end_clean, end_truncated, end_reset, end_timeout, end_error.
    pub fn finish(&mut self, timeout: Duration) -> HashMap<String, usize> {
        self.proc.close_stdin();
        self.wait_done(timeout)
    }

    /// Like [`PyClients::finish`] without closing stdin first.
    pub fn wait_done(&self, timeout: Duration) -> HashMap<String, usize> {
        let fields = self.wait_tagged("DONE ", 1, timeout);
        if !fields.get("first_error").is_none_or(|e| e.is_empty()) {
            eprintln!("tls_peer.py --clients: first error: {}", fields["first_error"]);
        }
        fields.into_iter().filter_map(|(k, v)| Some((k, v.parse().ok()?))).collect()
    }

    fn count_tagged(&self, tag: &str) -> usize {
        self.proc.stdout().lines().filter(|l| l.starts_with(tag)).count()
    }

    /// Waits for the `n`th line starting with `tag` and parses its JSON.
    fn wait_tagged(&self, tag: &str, n: usize, timeout: Duration) -> HashMap<String, String> {
        let ok = self
            .proc
            .wait_until(timeout, |o| o.stdout_text().lines().filter(|l| l.starts_with(tag)).count() >= n);
        let stdout = self.proc.stdout();
        assert!(
            ok,
            "tls_peer.py --clients: no {tag:?} line within {timeout:?}; stdout:\n{stdout}\nstderr:\n{}",
            self.proc.stderr()
        );
        let line = stdout.lines().filter(|l| l.starts_with(tag)).nth(n - 1).unwrap();
        parse_flat_json(&line[tag.len()..])
    }
}

// ---- gnutls-cli and openssl s_client -----------------------------------------------------

/// A command-line TLS client (gnutls-cli or openssl s_client) fed through stdin.
pub struct CliPeer {
    proc: Proc,
    handshake_marker: &'static str,
}

/// How a command-line client ended: its exit status and everything it printed.
#[derive(Debug)]
pub struct CliOutcome {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutcome {
    pub fn contains(&self, needle: &str) -> bool {
        self.stdout.contains(needle) || self.stderr.contains(needle)
    }

    /// gnutls-cli saw the server's close_notify.
    pub fn gnutls_clean(&self) -> bool {
        self.contains("- Peer has closed the GnuTLS connection")
    }

    /// openssl s_client saw the server's close_notify: it prints a line `closed`.
    pub fn s_client_clean(&self) -> bool {
        self.stdout.lines().any(|l| l.trim() == "closed")
    }

    pub fn exit_code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

/// `gnutls-cli --x509cafile CA -p PORT localhost`; TLS 1.2 only when `tls12`.
pub fn gnutls(port: u16, certs: &Certs, tls12: bool) -> CliPeer {
    let mut cmd = Command::new("gnutls-cli");
    cmd.arg("--x509cafile").arg(certs.ca()).args(["-p", &port.to_string(), "localhost"]);
    if tls12 {
        cmd.arg("--priority").arg("NORMAL:-VERS-TLS1.3");
    }
    CliPeer { proc: Proc::spawn("gnutls-cli", cmd), handshake_marker: "- Handshake was completed" }
}

/// `openssl s_client` to 127.0.0.1:PORT verifying the test CA; `extra` e.g. `-tls1_2`.
pub fn s_client(port: u16, certs: &Certs, extra: &[&str]) -> CliPeer {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", "localhost"]);
    cmd.arg("-CAfile").arg(certs.ca()).arg("-verify_return_error").args(extra);
    CliPeer { proc: Proc::spawn("openssl s_client", cmd), handshake_marker: "Verify return code: 0 (ok)" }
}

impl CliPeer {
    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// Waits until the client reports a completed handshake; panics otherwise.
    pub fn wait_handshake(&self) {
        let marker = self.handshake_marker;
        let ok = self.proc.wait_until(HANDSHAKE_DEADLINE, |o| o.contains(marker));
        assert!(
            ok,
            "{}: no handshake; stdout:\n{}\nstderr:\n{}",
            self.proc.name,
            self.proc.stdout(),
            self.proc.stderr()
        );
    }

    /// Waits until the client has printed `needle` (e.g. an echo); false after `timeout`.
    pub fn wait_output(&self, needle: &str, timeout: Duration) -> bool {
        self.proc.wait_until(timeout, |o| o.contains(needle))
    }

    /// Types `data` into the client's stdin (it sends it over TLS).
    pub fn send(&mut self, data: &[u8]) {
        self.proc.write_stdin(data);
    }

    /// stdin EOF: both gnutls-cli and s_client then send close_notify.
    pub fn close_stdin(&mut self) {
        self.proc.close_stdin();
    }

    /// Kills the client with SIGKILL: its TCP connection ends without close_notify.
    pub fn kill(&mut self) {
        self.proc.signal(libc::SIGKILL);
    }

    /// Waits for the client to exit (None if it did not within `timeout`) and collects output.
    pub fn finish(mut self, timeout: Duration) -> CliOutcome {
        let status = self.proc.wait_exit(timeout);
        CliOutcome { status, stdout: self.proc.stdout(), stderr: self.proc.stderr() }
    }
}

// ---- a flat JSON object reader (tls_peer.py prints only strings, numbers, booleans, null) --

/// Parses `{"k": v, ...}` with scalar values into strings (null becomes "").
pub fn parse_flat_json(line: &str) -> HashMap<String, String> {
    let mut chars = line.trim().chars().peekable();
    let mut map = HashMap::new();
    assert_eq!(chars.next(), Some('{'), "not a JSON object: {line}");
    loop {
        skip_ws(&mut chars);
        match chars.peek() {
            Some('}') | None => return map,
            Some(',') => {
                chars.next();
                continue;
            }
            _ => {}
        }
        let key = read_string(&mut chars);
        skip_ws(&mut chars);
        assert_eq!(chars.next(), Some(':'), "bad JSON: {line}");
        skip_ws(&mut chars);
        let value = if chars.peek() == Some(&'"') {
            read_string(&mut chars)
        } else {
            let mut v = String::new();
            while let Some(&c) = chars.peek() {
                if c == ',' || c == '}' {
                    break;
                }
                v.push(c);
                chars.next();
            }
            let v = v.trim().to_string();
            if v == "null" {
                String::new()
            } else {
                v
            }
        };
        map.insert(key, value);
    }
}

fn skip_ws(chars: &mut std::iter::Peekable<std::str::Chars>) {
    while chars.peek().is_some_and(|c| c.is_whitespace()) {
        chars.next();
    }
}

fn read_string(chars: &mut std::iter::Peekable<std::str::Chars>) -> String {
    assert_eq!(chars.next(), Some('"'), "expected a JSON string");
    let mut s = String::new();
    while let Some(c) = chars.next() {
        match c {
            '"' => return s,
            '\\' => match chars.next() {
                Some('n') => s.push('\n'),
                Some('r') => s.push('\r'),
                Some('t') => s.push('\t'),
                Some('b') => s.push('\u{8}'),
                Some('f') => s.push('\u{c}'),
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).collect();
                    let code = u32::from_str_radix(&hex, 16).expect("\\u escape");
                    s.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                }
                Some(other) => s.push(other),
                None => break,
            },
            c => s.push(c),
        }
    }
    panic!("unterminated JSON string")
}
