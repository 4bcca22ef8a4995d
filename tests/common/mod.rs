//! Integration-test harness: fresh certificates, the daemon, scripted upstreams, real TLS peers.
//!
//! Every wait has a deadline, every child process is killed on Drop, every server binds
//! 127.0.0.1 port 0. Each test binary uses only part of it, hence `dead_code` is allowed.
#![allow(dead_code)]

pub mod daemon;
pub mod hub_client;
pub mod peers;
pub mod process;
pub mod proxy_peers;
pub mod status_client;
pub mod tls_client;
pub mod unix_upstream;
pub mod upstream;

// Each test binary uses a different part of these.
#[allow(unused_imports)]
pub use daemon::{run_to_exit, serve_to_exit, Closed, Daemon, Summary};
#[allow(unused_imports)]
pub use peers::{gnutls, python, s_client, CliOutcome, CliPeer, PyClients, PyPeer, PyResult};
#[allow(unused_imports)]
pub use upstream::{closed_port, pattern, ClosedPort, End, Seen, Upstream};

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

/// Seconds as a Duration, to keep deadlines short to write.
pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// A CA and a server certificate made by `tlsrelay gen-cert` in a fresh temporary directory.
pub struct Certs {
    dir: TempDir,
}

impl Certs {
    /// Runs `tlsrelay gen-cert --out TMPDIR`; panics with its stderr if that fails.
    pub fn new() -> Certs {
        Certs::with_args(&[])
    }

    /// Like [`Certs::new`] with extra gen-cert arguments (e.g. `--client alice`).
    pub fn with_args(args: &[&str]) -> Certs {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(env!("CARGO_BIN_EXE_tlsrelay"))
            .arg("gen-cert")
            .arg("--out")
            .arg(dir.path())
            .args(args)
            .output()
            .expect("run tlsrelay gen-cert");
        assert!(
            out.status.success(),
            "tlsrelay gen-cert failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let certs = Certs { dir };
        for file in [certs.ca(), certs.server_cert(), certs.server_key()] {
            assert!(file.is_file(), "gen-cert did not write {}", file.display());
        }
        certs
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

/// A relay in forward mode with its own certificates and scripted upstream (TCP by default,
/// [`unix_upstream::UnixUpstream`] too). Fields drop in order: the daemon first, then the
/// upstream, then the certificate files.
pub struct Forward<U = Upstream> {
    pub daemon: Daemon,
    pub upstream: U,
    pub certs: Certs,
}

/// Starts an upstream running `script` and `tlsrelay serve --upstream` to it with `extra`.
pub fn forward(
    script: impl Fn(std::net::TcpStream, &std::sync::mpsc::Sender<Seen>) + Send + Sync + 'static,
    extra: &[&str],
) -> Forward {
    let upstream = Upstream::start(script);
    let target = upstream.arg();
    forward_to(upstream, &target, extra)
}

/// Starts `tlsrelay serve --upstream TARGET` with `extra`, in front of `upstream`.
pub fn forward_to<U>(upstream: U, target: &str, extra: &[&str]) -> Forward<U> {
    let certs = Certs::new();
    let mut args = vec!["--upstream", target];
    args.extend_from_slice(extra);
    let daemon = Daemon::start(&certs, &args);
    Forward { daemon, upstream, certs }
}

impl<U> Forward<U> {
    pub fn port(&self) -> u16 {
        self.daemon.port()
    }

    /// Waits for the first `closed:` line and checks its kind; returns it for more checks.
    pub fn expect_closed(&self, kind: &str) -> Closed {
        let closed = self.daemon.wait_closed(secs(15.0));
        assert_eq!(closed.kind, kind, "wrong close kind; log:\n{}", self.daemon.log_text());
        closed
    }
}
