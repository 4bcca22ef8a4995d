//! `tlsrelay connect` end to end: the real binary against independent servers (Python's `ssl`
//! in tests/peers/connect_server.py, `openssl s_server`) and against `tlsrelay serve` itself.
//! Every wait has a deadline; every child is killed when its guard drops; ports are 127.0.0.1:0.

mod common;

use common::daemon::PidFileGuard;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tlsrelay");
/// How long any single wait in these tests may take.
const DEADLINE: Duration = Duration::from_secs(20);
/// The end of the line a truncated stream prints (DESIGN §2).
const TRUNCATED: &str = "ended without TLS close_notify: data may be truncated";

// ---- processes ----

/// Lines of one output stream, each with the moment it arrived.
type Lines = Arc<Mutex<Vec<(Instant, Vec<u8>)>>>;

/// A child whose stdout and stderr are collected by threads; killed on drop.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines,
    stderr: Lines,
}

impl Proc {
    fn start(command: &mut Command) -> Proc {
        let name = format!("{command:?}");
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Proc { name, stdin: child.stdin.take(), child, stdout, stderr }
    }

    fn stdout(&self) -> Vec<u8> {
        self.stdout.lock().unwrap().iter().flat_map(|(_, line)| line.clone()).collect()
    }

    fn stderr(&self) -> String {
        let lines = self.stderr.lock().unwrap();
        String::from_utf8_lossy(&lines.iter().flat_map(|(_, line)| line.clone()).collect::<Vec<u8>>()).into()
    }

    /// The first (`nth` = 1) or a later complete line of `stream` containing `text`.
    fn wait_line(&self, stream: &Lines, text: &str, nth: usize) -> (Instant, String) {
        self.wait_line_within(stream, text, nth, DEADLINE)
    }

    /// [`Proc::wait_line`] for a line that may take longer than [`DEADLINE`].
    fn wait_line_within(
        &self,
        stream: &Lines,
        text: &str,
        nth: usize,
        within: Duration,
    ) -> (Instant, String) {
        let until = Instant::now() + within;
        loop {
            let found = stream
                .lock()
                .unwrap()
                .iter()
                .map(|(at, line)| (*at, String::from_utf8_lossy(line).into_owned()))
                .filter(|(_, line)| line.ends_with('\n') && line.contains(text))
                .nth(nth - 1);
            if let Some(hit) = found {
                return hit;
            }
            assert!(Instant::now() < until, "{}: no line {nth} with {text:?}; {}", self.name, self.dump());
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn wait_stderr(&self, text: &str) -> (Instant, String) {
        self.wait_line(&self.stderr, text, 1)
    }

    fn wait_stdout(&self, text: &str) -> (Instant, String) {
        self.wait_line(&self.stdout, text, 1)
    }

    fn wait_stdout_nth(&self, text: &str, nth: usize) -> (Instant, String) {
        self.wait_line(&self.stdout, text, nth)
    }

    fn write(&mut self, data: &[u8]) {
        self.stdin.as_mut().expect("stdin still open").write_all(data).unwrap();
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the exit code, within the deadline.
    fn exit(&mut self) -> i32 {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                thread::sleep(Duration::from_millis(50)); // let the readers take the last bytes
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < until, "{} did not exit; {}", self.name, self.dump());
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    fn dump(&self) -> String {
        let out = String::from_utf8_lossy(&self.stdout()).into_owned();
        let shown: String = out.chars().take(2000).collect();
        format!("stdout: {shown:?}\nstderr: {}", self.stderr())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(stream: impl Read + Send + 'static) -> Lines {
    let lines: Lines = Arc::default();
    let sink = lines.clone();
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => sink.lock().unwrap().push((Instant::now(), line)),
            }
        }
    });
    lines
}

// ---- certificates, servers and the client ----

/// `tlsrelay gen-cert` output: ca.crt, server.crt/.key (localhost, 127.0.0.1, ::1), alice.crt/.key.
fn certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(BIN)
        .args(["gen-cert", "--client", "alice", "--out"])
        .arg(dir.path())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "gen-cert failed");
    dir
}

fn file(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_string()
}

/// The Python server of tests/peers/connect_server.py; its stdout is one JSON event a line.
struct Peer {
    proc: Proc,
    port: u16,
}

fn peer(certs: &Path, args: &[&str]) -> Peer {
    peer_on(0, certs, args)
}

fn peer_on(port: u16, certs: &Path, args: &[&str]) -> Peer {
    let script: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/connect_server.py");
    let proc = Proc::start(
        Command::new("python3")
            .arg(script)
            .args(["--cert", &file(certs, "server.crt"), "--key", &file(certs, "server.key")])
            .args(["--port", &port.to_string()])
            .args(args),
    );
    let (_, line) = proc.wait_stdout("\"listening\"");
    let port = field(&line, "port").parse().unwrap();
    Peer { proc, port }
}

impl Peer {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The JSON line of `event` ("accept", "end") for connection `conn`.
    fn event(&self, event: &str, conn: u32) -> String {
        let (_, line) = self.proc.wait_stdout(&format!("\"event\": \"{event}\", \"conn\": {conn},"));
        line
    }

    /// The server-side time of an event, in seconds.
    fn time(&self, event: &str, conn: u32) -> f64 {
        field(&self.event(event, conn), "t").parse().unwrap()
    }

    /// [`Peer::time`] for an event that may take up to `within`.
    fn time_within(&self, event: &str, conn: u32, within: Duration) -> f64 {
        let needle = format!("\"event\": \"{event}\", \"conn\": {conn},");
        let (_, line) = self.proc.wait_line_within(&self.proc.stdout, &needle, 1, within);
        field(&line, "t").parse().unwrap()
    }
}

/// The raw text of `key`'s value in one flat JSON line (quotes removed).
fn field(json: &str, key: &str) -> String {
    let start =
        json.find(&format!("\"{key}\": ")).unwrap_or_else(|| panic!("no {key} in {json}")) + key.len() + 4;
    let rest = &json[start..];
    match rest.strip_prefix('"') {
        Some(text) => text[..text.find('"').unwrap()].to_string(),
        None => rest[..rest.find([',', '}']).unwrap()].trim().to_string(),
    }
}

/// `tlsrelay connect ARGS`, stdin a pipe the test holds.
fn connect(args: &[&str]) -> Proc {
    Proc::start(Command::new(BIN).arg("connect").args(args))
}

/// `tlsrelay serve ARGS` on 127.0.0.1:0; returns it and its port (read from `listening on`).
fn serve(certs: &Path, args: &[&str]) -> (Proc, u16) {
    let proc = Proc::start(
        Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(["--cert", &file(certs, "server.crt"), "--key", &file(certs, "server.key")])
            .args(args),
    );
    let (_, line) = proc.wait_stderr("listening on 127.0.0.1:");
    let port = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    (proc, port)
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

// ---- how a connection ends ----

#[test]
fn server_close_notify_exits_0_with_nothing_on_stderr() {
    let dir = certs();
    let server = peer(dir.path(), &["--send", "hello\\n", "--end", "clean"]);
    let mut client = connect(&[&server.addr(), "--ca", &file(dir.path(), "ca.crt")]);
    assert_eq!(client.exit(), 0, "{}", client.dump());
    assert_eq!(client.stdout(), b"hello\n");
    assert_eq!(client.stderr(), "");
    assert_eq!(field(&server.event("end", 0), "answered"), "true", "our close_notify answers the server's");
}

#[test]
fn tcp_end_without_close_notify_exits_3_with_the_message() {
    let dir = certs();
    let server = peer(dir.path(), &["--send", "hello\\n", "--end", "truncate"]);
    let mut client = connect(&[&server.addr(), "--ca", &file(dir.path(), "ca.crt")]);
    assert_eq!(client.exit(), 3, "{}", client.dump());
    assert_eq!(client.stdout(), b"hello\n");
    assert_eq!(
        client.stderr(),
        format!("connection to {} ended without TLS close_notify: data may be truncated\n", server.addr())
    );
}

#[test]
fn reset_exits_3_and_says_why() {
    let dir = certs();
    let server = peer(dir.path(), &["--end", "reset"]);
    let mut client = connect(&[&server.addr(), "--ca", &file(dir.path(), "ca.crt")]);
    assert_eq!(client.exit(), 3, "{}", client.dump());
    let stderr = client.stderr();
    assert!(stderr.contains("lost: connection reset by peer"), "{stderr}");
    assert!(lines(&stderr).last().unwrap().ends_with(TRUNCATED), "{stderr}");
}

#[test]
fn stdin_eof_sends_close_notify_and_prints_until_the_servers() {
    let dir = certs();
    let server = peer(dir.path(), &["--read", "echo", "--end", "clean"]);
    let mut client = connect(&[&server.addr(), "--ca", &file(dir.path(), "ca.crt")]);
    client.write(b"hello\n");
    client.close_stdin();
    assert_eq!(client.exit(), 0, "{}", client.dump());
    assert_eq!(client.stdout(), b"hello\n");
    assert_eq!(client.stderr(), "");
    let end = server.event("end", 0);
    assert_eq!(field(&end, "client_end"), "clean");
    assert_eq!(field(&end, "received"), "hello\\n");
}

#[test]
fn a_server_that_never_answers_our_close_notify_is_given_up_on_with_exit_3() {
    let dir = certs();
    let server = peer(dir.path(), &["--read", "wait", "--end", "silent"]);
    let mut client =
        connect(&[&server.addr(), "--ca", &file(dir.path(), "ca.crt"), "--close-timeout", "0.5"]);
    client.close_stdin();
    let started = Instant::now();
    assert_eq!(client.exit(), 3, "{}", client.dump());
    assert!(started.elapsed() < Duration::from_secs(5), "bounded by --close-timeout");
    assert!(client.stderr().ends_with(&format!("{TRUNCATED}\n")), "{}", client.stderr());
    assert_eq!(field(&server.event("end", 0), "client_end"), "clean", "our close_notify went out");
}

#[test]
fn ctrl_c_sends_close_notify_and_exits_0_on_the_answer() {
    let dir = certs();
    let server = peer(dir.path(), &["--send", "hello\\n", "--read", "wait", "--end", "clean"]);
    let mut client = connect(&[&server.addr(), "--ca", &file(dir.path(), "ca.crt")]);
    client.wait_stdout("hello");
    client.signal(libc::SIGINT);
    assert_eq!(client.exit(), 0, "{}", client.dump());
    assert_eq!(field(&server.event("end", 0), "client_end"), "clean");
    assert_eq!(client.stderr(), "");
}

// ---- verification ----

#[test]
fn a_certificate_from_another_ca_exits_1_with_the_verify_reason() {
    let (dir, other) = (certs(), certs());
    let server = peer(dir.path(), &["--send", "secret\\n"]);
    let mut client = connect(&[&server.addr(), "--ca", &file(other.path(), "ca.crt")]);
    assert_eq!(client.exit(), 1, "{}", client.dump());
    assert_eq!(client.stdout(), b"", "nothing from an unverified server reaches stdout");
    let stderr = client.stderr();
    assert!(stderr.contains("certificate verify failed: unable to get local issuer certificate"), "{stderr}");
    assert_eq!(lines(&stderr).len(), 1, "{stderr}");
}

#[test]
fn a_name_is_sent_as_sni_and_checked_against_the_certificate() {
    let dir = certs();
    let server = peer(dir.path(), &["--send", "hi\\n"]);
    let target = format!("localhost:{}", server.port);
    let mut client = connect(&[&target, "--ca", &file(dir.path(), "ca.crt")]);
    assert_eq!(client.exit(), 0, "{}", client.dump());
    assert_eq!(field(&server.event("accept", 0), "sni"), "localhost");

    let server = peer(dir.path(), &["--send", "hi\\n"]);
    let mut client = connect(&[&server.addr(), "--ca", &file(dir.path(), "ca.crt")]);
    assert_eq!(client.exit(), 0, "{}", client.dump());
    assert_eq!(field(&server.event("accept", 0), "sni"), "null", "an address is not sent as SNI");
}

#[test]
fn a_name_the_certificate_does_not_carry_is_refused() {
    let dir = certs();
    let server = peer(dir.path(), &["--send", "hi\\n"]);
    let mut client =
        connect(&[&server.addr(), "--ca", &file(dir.path(), "ca.crt"), "--servername", "wrong.example"]);
    assert_eq!(client.exit(), 1, "{}", client.dump());
    assert!(client.stderr().contains("certificate verify failed: hostname mismatch"), "{}", client.stderr());
}

/// The SHA-256 of server.crt's DER, as --pin takes it.
fn pin_of(dir: &Path) -> String {
    let pem = std::fs::read(dir.join("server.crt")).unwrap();
    let cert = openssl::x509::X509::from_pem(&pem).unwrap();
    let digest = cert.digest(openssl::hash::MessageDigest::sha256()).unwrap();
    format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

#[test]
fn a_matching_pin_replaces_the_ca_check() {
    let dir = certs();
    let server = peer(dir.path(), &["--send", "pinned\\n"]);
    let mut client = connect(&[&server.addr(), "--pin", &pin_of(dir.path())]);
    assert_eq!(client.exit(), 0, "{}", client.dump());
    assert_eq!(client.stdout(), b"pinned\n");
}

#[test]
fn a_pin_mismatch_exits_1_naming_both_fingerprints() {
    let (dir, other) = (certs(), certs());
    let server = peer(dir.path(), &["--send", "secret\\n"]);
    let wrong = pin_of(other.path());
    let mut client = connect(&[&server.addr(), "--pin", &wrong]);
    assert_eq!(client.exit(), 1, "{}", client.dump());
    assert_eq!(client.stdout(), b"");
    let stderr = client.stderr();
    assert!(stderr.contains("certificate verify failed"), "{stderr}");
    assert!(stderr.contains(&pin_of(dir.path())) && stderr.contains(&wrong), "{stderr}");
}

#[test]
fn insecure_connects_with_one_warning_line() {
    let dir = certs();
    let server = peer(dir.path(), &["--send", "hi\\n"]);
    let mut client = connect(&[&server.addr(), "--insecure"]);
    assert_eq!(client.exit(), 0, "{}", client.dump());
    let stderr = client.stderr();
    assert_eq!(lines(&stderr).len(), 1, "{stderr}");
    assert!(stderr.starts_with("warning: --insecure"), "{stderr}");
}

#[test]
fn mutual_tls_presents_the_client_certificate() {
    let dir = certs();
    let ca = file(dir.path(), "ca.crt");
    let server = peer(dir.path(), &["--client-ca", &ca, "--send", "hello alice\\n"]);
    let mut client = connect(&[
        &server.addr(),
        "--ca",
        &ca,
        "--cert",
        &file(dir.path(), "alice.crt"),
        "--key",
        &file(dir.path(), "alice.key"),
    ]);
    assert_eq!(client.exit(), 0, "{}", client.dump());
    assert_eq!(client.stdout(), b"hello alice\n");
}

#[test]
fn unreachable_servers_and_unreadable_files_exit_1_with_one_line() {
    let dir = certs();
    let closed = common::closed_port();
    let target = closed.addr().to_string();
    let mut client = connect(&[&target, "--ca", &file(dir.path(), "ca.crt")]);
    assert_eq!(client.exit(), 1);
    assert_eq!(client.stderr(), format!("tlsrelay: cannot connect to {target}: connection refused\n"));

    let missing = file(dir.path(), "missing.crt");
    let mut client = connect(&[&target, "--ca", &missing]);
    assert_eq!(client.exit(), 1);
    let stderr = client.stderr();
    assert!(stderr.contains(&missing) && stderr.contains("no such file"), "{stderr}");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["127.0.0.1"][..],
        &["127.0.0.1:1", "--cert", "x.crt"],
        &["127.0.0.1:1", "--insecure", "--pin", "sha256:00"],
    ] {
        let mut client = connect(args);
        assert_eq!(client.exit(), 2, "{args:?}: {}", client.dump());
    }
}

// ---- an independent server: openssl s_server ----

fn s_server(dir: &Path) -> (Proc, u16) {
    let proc = Proc::start(Command::new("openssl").args([
        "s_server",
        "-accept",
        "127.0.0.1:0",
        "-naccept",
        "1",
        "-cert",
        &file(dir, "server.crt"),
        "-key",
        &file(dir, "server.key"),
    ]));
    let (_, line) = proc.wait_stdout("ACCEPT 127.0.0.1:");
    (proc, line.trim().rsplit(':').next().unwrap().parse().unwrap())
}

#[test]
fn s_server_answers_our_close_notify_so_a_piped_line_exits_0() {
    let dir = certs();
    let (server, port) = s_server(dir.path());
    let mut client = connect(&[&format!("127.0.0.1:{port}"), "--ca", &file(dir.path(), "ca.crt")]);
    client.write(b"hello\n");
    client.close_stdin();
    assert_eq!(client.exit(), 0, "{}", client.dump());
    server.wait_stdout("hello");
    assert_eq!(client.stderr(), "");
}

/// s_server closes its socket before its SSL_shutdown when its stdin ends, so the client
/// gets a bare FIN: a real server's truncation.
#[test]
fn s_server_ending_on_its_stdin_eof_is_reported_as_truncated() {
    let dir = certs();
    let (mut server, port) = s_server(dir.path());
    let mut client = connect(&[&format!("127.0.0.1:{port}"), "--ca", &file(dir.path(), "ca.crt"), "-v"]);
    client.wait_stderr("connected to");
    server.write(b"bye\n");
    client.wait_stdout("bye");
    server.close_stdin();
    assert_eq!(client.exit(), 3, "{}", client.dump());
    assert!(client.stderr().ends_with(&format!("{TRUNCATED}\n")), "{}", client.stderr());
}

// ---- pipes through the real relay ----

/// A plain TCP echo service: every byte back, then FIN after the client's FIN.
fn echo_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = conn.shutdown(Shutdown::Write);
    });
    port
}

#[test]
fn ten_mib_of_stdin_come_back_byte_exact_through_tlsrelay_serve() {
    let dir = certs();
    let upstream = echo_upstream();
    let (_relay, port) = serve(dir.path(), &["--upstream", &format!("127.0.0.1:{upstream}")]);
    let mut client = connect(&[&format!("127.0.0.1:{port}"), "--ca", &file(dir.path(), "ca.crt")]);
    let data: Vec<u8> =
        (0..10 * 1024 * 1024).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let mut stdin = client.stdin.take().unwrap();
    let sent = data.clone();
    let writer = thread::spawn(move || stdin.write_all(&sent)); // EOF when it drops
    assert_eq!(client.exit(), 0, "stderr: {}", client.stderr());
    writer.join().unwrap().unwrap();
    let received = client.stdout();
    assert_eq!(received.len(), data.len());
    assert!(received == data, "the bytes differ");
    assert_eq!(client.stderr(), "");
}

#[test]
fn printf_into_the_hub_delivers_the_line_and_exits_0() {
    let dir = certs();
    let (_hub, port) = serve(dir.path(), &[]);
    let ca = file(dir.path(), "ca.crt");
    let target = format!("127.0.0.1:{port}");
    let listener = connect(&[&target, "--ca", &ca]);
    listener.wait_stdout("welcome");
    let mut sender = connect(&[&target, "--ca", &ca]);
    sender.write(b"hello\n");
    sender.close_stdin();
    assert_eq!(sender.exit(), 0, "{}", sender.dump());
    assert_eq!(sender.stderr(), "");
    listener.wait_stdout("> hello");
}

// ---- reconnection ----

#[test]
fn reconnect_backs_off_exponentially_across_a_server_restart() {
    let dir = certs();
    let ca = file(dir.path(), "ca.crt");
    let first = peer(dir.path(), &["--send", "one\\n", "--end", "truncate"]);
    let port = first.port;
    let target = first.addr();
    let mut client = connect(&[
        &target,
        "--ca",
        &ca,
        "--reconnect",
        "--reconnect-min",
        "0.2",
        "--reconnect-max",
        "0.8",
        "--verbose",
    ]);

    // Nothing listens now: attempts after 0.2, 0.4, 0.8 and 0.8 s (jitter takes off up to 20 %).
    let (mut previous, _) = client.wait_stderr(TRUNCATED);
    for (n, nominal) in [0.2, 0.4, 0.8, 0.8].into_iter().enumerate() {
        let (at, _) = client.wait_line(&client.stderr, "connection refused; retrying in", n + 1);
        let gap = at.duration_since(previous).as_secs_f64();
        assert!(
            (nominal * 0.8 - 0.02..nominal + 0.25).contains(&gap),
            "attempt {} came {gap:.3} s after the previous, expected about {nominal} s\n{}",
            n + 1,
            client.stderr()
        );
        previous = at;
    }

    let second = peer_on(port, dir.path(), &["--send", "two\\n", "--read", "wait", "--end", "clean"]);
    client.wait_stderr(&format!("reconnected to 127.0.0.1:{port} after"));
    client.wait_stdout("two");
    client.close_stdin();
    assert_eq!(client.exit(), 0, "{}", client.dump());
    assert_eq!(client.stdout(), b"one\ntwo\n");
    assert_eq!(field(&second.event("end", 0), "client_end"), "clean");
}

/// A connection that lived 30 s or more starts the reconnection schedule over (DESIGN §2);
/// a shorter one does not. Two clients side by side (--reconnect-min 0.25), each with its own
/// server whose connections 0-2 end at once without an announcement, so the waits double
/// (0.25, 0.5, 1 s), and whose connection 3 then lives 31 s, or 27 s for the control. After
/// it, the first client waits the first step again (0.2-0.25 s); the control waits 1.6-2 s.
#[test]
fn a_connection_that_lived_30_s_starts_the_backoff_over() {
    let dir = certs();
    let ca = file(dir.path(), "ca.crt");
    let run = |lived: &str| {
        let server = peer(
            dir.path(),
            &["--connections", "5", "--send", "up\\n", "--timeout", "90", "--end", "clean"]
                .into_iter()
                .chain(["--pause", "0", "--pause", "0", "--pause", "0", "--pause", lived, "--pause", "0"])
                .chain([
                    "--read", "none", "--read", "none", "--read", "none", "--read", "none", "--read", "wait",
                ])
                .collect::<Vec<_>>(),
        );
        let args = ["--reconnect", "--reconnect-min", "0.25", "--reconnect-max", "4", "--verbose"];
        let client = connect(&[&[server.addr().as_str(), "--ca", &ca], &args[..]].concat());
        (server, client)
    };
    let (stable, mut stable_client) = run("31");
    let (short, mut short_client) = run("27");

    // The two run at once: the whole test takes about 33 s.
    let within = Duration::from_secs(60);
    for (server, lived, want) in [(&stable, 31.0, 0.19..0.75), (&short, 27.0, 1.59..3.0)] {
        let gap = server.time_within("accept", 4, within) - server.time_within("end", 3, within);
        let lasted = server.time("end", 3) - server.time("accept", 3);
        assert!((lived..lived + 1.5).contains(&lasted), "connection 3 lived {lasted:.2} s, not {lived} s");
        assert!(
            want.contains(&gap),
            "after a connection of {lived} s the client came back after {gap:.3} s, want {want:?} s\n\
             client after 31 s: {}\nclient after 27 s: {}",
            stable_client.dump(),
            short_client.dump()
        );
    }
    for client in [&mut stable_client, &mut short_client] {
        client.wait_stdout_nth("up", 5);
        client.close_stdin();
        assert_eq!(client.exit(), 0, "{}", client.dump());
    }
}

/// After `* closing: shutdown` the first retry comes after 0.5–0.6 s (--reconnect-min 1), and
/// the only line on stderr is the reconnection's.
#[test]
fn an_announced_shutdown_brings_a_quick_and_quiet_reconnect() {
    let dir = certs();
    let server = peer(
        dir.path(),
        &["--connections", "2", "--send", "* closing: shutdown\\n", "--send", "back\\n"]
            .into_iter()
            .chain(["--read", "none", "--read", "wait", "--end", "clean"])
            .collect::<Vec<_>>(),
    );
    let mut client = connect(&[&server.addr(), "--ca", &file(dir.path(), "ca.crt"), "--reconnect"]);
    client.wait_stdout("back");
    let gap = server.time("accept", 1) - server.time("end", 0);
    assert!((0.45..0.75).contains(&gap), "quick retry after {gap:.3} s");
    client.close_stdin();
    assert_eq!(client.exit(), 0, "{}", client.dump());
    assert_eq!(client.stdout(), b"* closing: shutdown\nback\n", "the closing line is data");
    let stderr = client.stderr();
    assert_eq!(lines(&stderr).len(), 1, "{stderr}");
    assert!(stderr.starts_with(&format!("reconnected to {} after 0.", server.addr())), "{stderr}");
}

#[test]
fn an_unannounced_close_warns_and_waits_the_full_first_step() {
    let dir = certs();
    let server = peer(
        dir.path(),
        &["--connections", "2", "--send", "* closing: idle\\n", "--send", "back\\n"]
            .into_iter()
            .chain(["--read", "none", "--read", "wait", "--end", "clean"])
            .collect::<Vec<_>>(),
    );
    let mut client = connect(&[&server.addr(), "--ca", &file(dir.path(), "ca.crt"), "--reconnect"]);
    client.wait_stdout("back");
    let gap = server.time("accept", 1) - server.time("end", 0);
    assert!(gap >= 0.78, "normal first step (0.8–1 s), came after {gap:.3} s");
    client.close_stdin();
    assert_eq!(client.exit(), 0, "{}", client.dump());
    let stderr = client.stderr();
    assert!(
        stderr.starts_with(&format!(
            "connection to {} closed by the server (server closing: idle)\n",
            server.addr()
        )),
        "{stderr}"
    );
}

#[test]
fn quit_in_the_hub_ends_without_reconnecting() {
    let dir = certs();
    let (_hub, port) = serve(dir.path(), &[]);
    let mut client =
        connect(&[&format!("127.0.0.1:{port}"), "--ca", &file(dir.path(), "ca.crt"), "--reconnect"]);
    client.wait_stdout("welcome");
    client.write(b"/quit\n");
    assert_eq!(client.exit(), 0, "{}", client.dump());
    assert!(client.stdout().ends_with(b"* closing: quit\n"), "{}", client.dump());
    assert_eq!(client.stderr(), "");
}

#[test]
fn reconnects_quietly_across_a_hub_upgrade() {
    let dir = certs();
    let pid_file = dir.path().join("hub.pid");
    let (_hub, port) = serve(dir.path(), &["--pid-file", pid_file.to_str().unwrap()]);
    let _upgraded = PidFileGuard(pid_file.clone());
    let mut client =
        connect(&[&format!("127.0.0.1:{port}"), "--ca", &file(dir.path(), "ca.crt"), "--reconnect"]);
    client.wait_stdout("welcome");
    let status = Command::new(BIN)
        .args(["upgrade", "--pid-file", pid_file.to_str().unwrap()])
        .stderr(Stdio::null())
        .status();
    assert!(status.unwrap().success(), "tlsrelay upgrade failed");
    client.wait_stdout("* closing: upgrade");
    client.wait_line(&client.stdout, "welcome", 2);
    // Written before the welcome, but through another pipe with its own reader thread.
    client.wait_stderr(&format!("reconnected to 127.0.0.1:{port} after"));
    let stderr = client.stderr();
    assert_eq!(lines(&stderr).len(), 1, "{stderr}");
    assert!(stderr.starts_with(&format!("reconnected to 127.0.0.1:{port} after 0.")), "{stderr}");
    client.close_stdin();
    assert_eq!(client.exit(), 0, "{}", client.dump());
}
