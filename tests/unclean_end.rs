//! DESIGN §3, "upstream resets or fails mid-stream" and "cannot be reached", on the TLS stacks
//! whose APIs hide a bare reset or FIN (issue 15): the client gets a fatal `internal_error`
//! alert, then the reset (src/tls/abort.rs). Node's `tls` reads an RST right behind data as a
//! clean 'end'; Go's API reads a bare FIN as io.EOF. Python, gnutls-cli and s_client see the
//! same alert in tests/close_semantics.rs.

mod common;

use common::peers::parse_flat_json;
use common::process::Proc;
use common::upstream::read_then_reset;
use common::{closed_port, forward, secs, Certs, Daemon};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers");
/// Runs of each scenario: without the alert Node read the reset as a clean end in 3 of 3.
const RUNS: usize = 3;

/// Runs `cmd` to its exit and parses the one JSON line it prints.
fn run_json(name: &str, cmd: Command) -> HashMap<String, String> {
    let mut proc = Proc::spawn(name, cmd);
    let status = proc.wait_exit(secs(30.0));
    let (stdout, stderr) = (proc.stdout(), proc.stderr());
    assert!(status.is_some(), "{name} did not exit within 30 s; stdout:\n{stdout}\nstderr:\n{stderr}");
    let line = stdout.lines().find(|l| l.starts_with('{'));
    let line = line.unwrap_or_else(|| panic!("{name} printed no result ({status:?}); stderr:\n{stderr}"));
    parse_flat_json(line)
}

fn node(port: u16, certs: &Certs, request: &str) -> HashMap<String, String> {
    let mut cmd = Command::new("node");
    cmd.arg(format!("{PEERS}/node_client.js")).args(["127.0.0.1", &port.to_string()]);
    cmd.arg(certs.ca()).arg(request);
    run_json("node_client.js", cmd)
}

/// tests/peers/go_client.go, built once per test run into a temporary directory: the
/// standard library only, so no module is fetched (GOPROXY=off).
fn go_client() -> &'static Path {
    static BUILT: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_dir, exe) = BUILT.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(format!("{PEERS}/go_client.go"), dir.path().join("main.go"))
            .expect("copy go_client.go");
        std::fs::write(dir.path().join("go.mod"), "module goclient\n\ngo 1.19\n").expect("write go.mod");
        let exe = dir.path().join("go_client");
        let out = Command::new("go")
            .args(["build", "-o"])
            .arg(&exe)
            .arg(".")
            .current_dir(dir.path())
            .env("GOFLAGS", "-mod=mod")
            .env("GOCACHE", dir.path().join("cache"))
            .env("GOPATH", dir.path().join("gopath"))
            .env("GOPROXY", "off")
            .output()
            .expect("run go build (Debian package golang-go)");
        assert!(out.status.success(), "go build failed: {}", String::from_utf8_lossy(&out.stderr));
        (dir, exe)
    });
    exe
}

fn go(port: u16, certs: &Certs, request: &str) -> HashMap<String, String> {
    let mut cmd = Command::new(go_client());
    cmd.arg(format!("127.0.0.1:{port}")).arg(certs.ca()).arg(request);
    run_json("go_client", cmd)
}

/// Node: an 'error' event carrying the alert, never the clean 'end'.
fn assert_node_error(r: &HashMap<String, String>) {
    assert_eq!(r["event"], "error", "Node must see an error, not a clean end: {r:?}");
    assert_eq!(r["code"], "ERR_SSL_TLSV1_ALERT_INTERNAL_ERROR", "{r:?}");
}

/// Go: a read error that is not io.EOF, naming the alert.
fn assert_go_error(r: &HashMap<String, String>) {
    assert_eq!(r["eof"], "false", "Go must see an error, not io.EOF: {r:?}");
    assert!(r["error"].contains("internal error"), "{r:?}");
}

#[test]
fn upstream_reset_is_an_error_not_a_clean_end_node() {
    for run in 0..RUNS {
        let f = forward(read_then_reset(8, b"partial"), &["--close-timeout", "5"]);
        let r = node(f.port(), &f.certs, "request\n");
        assert_eq!(r["data"], "partial", "run {run}: the bytes before the reset: {r:?}");
        assert_node_error(&r);
        f.expect_closed("upstream reset");
    }
}

#[test]
fn upstream_reset_is_an_error_not_a_clean_end_go() {
    for run in 0..RUNS {
        let f = forward(read_then_reset(8, b"partial"), &["--close-timeout", "5"]);
        let r = go(f.port(), &f.certs, "request\n");
        assert_eq!(r["data"], "partial", "run {run}: the bytes before the reset: {r:?}");
        assert_go_error(&r);
        f.expect_closed("upstream reset");
    }
}

#[test]
fn upstream_unreachable_is_an_error_not_a_clean_end_node_and_go() {
    let certs = Certs::new();
    // Bound, never listening: refused for as long as `closed` lives.
    let closed = closed_port();
    let target = closed.addr().to_string();
    let daemon = Daemon::start(&certs, &["--upstream", &target, "--connect-timeout", "2"]);
    // Sending nothing, as a client that waits for the server to speak first.
    assert_node_error(&node(daemon.port(), &certs, ""));
    assert_go_error(&go(daemon.port(), &certs, ""));
    daemon.wait_for_log_count("closed: upstream unreachable", 2, secs(15.0));
}
