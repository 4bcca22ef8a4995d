//! One-shot TLS probes with `openssl s_client` and `gnutls-cli`: which version and suite a
//! handshake negotiated, or which alert refused it. Each probe is a child process with a
//! deadline, killed on Drop.

use crate::common::process::Proc;
use std::process::Command;
use std::time::Duration;

/// What a probe saw.
#[derive(Debug, Clone)]
pub struct Probe {
    /// `(version, suite)` when the handshake completed, e.g. ("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256").
    pub negotiated: Option<(String, String)>,
    /// The alert the server sent, when it refused (70 = protocol_version, 40 = handshake_failure).
    pub alert: Option<u8>,
    pub output: String,
}

const DEADLINE: Duration = Duration::from_secs(20);

/// `openssl s_client -connect 127.0.0.1:PORT ARGS` with stdin at EOF (it ends after the
/// handshake). No verification: the probe is about what is negotiated.
pub fn s_client(port: u16, args: &[&str]) -> Probe {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")]).args(args);
    let output = run(cmd);
    let negotiated = output.lines().find_map(|l| {
        let rest = l.strip_prefix("New, ")?;
        let (version, cipher) = rest.split_once(", Cipher is ")?;
        (version != "(NONE)").then(|| (version.to_string(), cipher.trim().to_string()))
    });
    let alert = output
        .split("SSL alert number ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok());
    Probe { negotiated, alert, output }
}

/// `gnutls-cli --insecure -p PORT 127.0.0.1 --priority PRIORITY` with stdin at EOF.
pub fn gnutls(port: u16, priority: &str) -> Probe {
    let mut cmd = Command::new("gnutls-cli");
    cmd.args(["--insecure", "-p", &port.to_string(), "127.0.0.1", "--priority", priority]);
    let output = run(cmd);
    // "- Description: (TLS1.3-X.509)-(ECDHE-X25519)-(ECDSA-SECP256R1-SHA256)-(AES-256-GCM)"
    let negotiated = output.lines().find_map(|l| {
        let rest = l.strip_prefix("- Description: (")?;
        let version = rest.split(')').next()?.split('-').next()?.to_string();
        Some((version, rest.to_string()))
    });
    let alert = output.split("Received alert [").nth(1).and_then(|rest| rest.split(']').next()?.parse().ok());
    Probe { negotiated, alert, output }
}

fn run(cmd: Command) -> String {
    let mut proc = Proc::spawn("tls probe", cmd);
    proc.close_stdin();
    let status = proc.wait_exit(DEADLINE);
    let text = format!("{}{}", proc.stdout(), proc.stderr());
    assert!(status.is_some(), "probe did not end within {DEADLINE:?}:\n{text}");
    text
}

/// Every TLS 1.2-and-older suite this OpenSSL knows (`openssl ciphers`), TLS 1.3 ones apart.
pub fn openssl_suites() -> (Vec<String>, Vec<String>) {
    let out = Command::new("openssl")
        .args(["ciphers", "ALL:COMPLEMENTOFALL:@SECLEVEL=0"])
        .output()
        .expect("run openssl ciphers");
    let all: Vec<String> =
        String::from_utf8_lossy(&out.stdout).trim().split(':').map(str::to_string).collect();
    let (tls13, older): (Vec<String>, Vec<String>) = all.into_iter().partition(|s| s.starts_with("TLS_"));
    (older, tls13)
}

/// The `s_client` arguments that make it really offer `suite` over TLS 1.2: the suite at
/// security level 0, plus a key or password for the PSK and SRP families (without one the
/// client would leave them out of its ClientHello).
pub fn offer_tls12(suite: &str) -> Vec<String> {
    let mut args = vec!["-tls1_2".to_string(), "-cipher".to_string(), format!("{suite}:@SECLEVEL=0")];
    if suite.contains("PSK") {
        args.extend(["-psk".to_string(), "1a2b3c4d".to_string()]);
    }
    if suite.starts_with("SRP") {
        args.extend([
            "-srpuser".to_string(),
            "probe".to_string(),
            "-srppass".to_string(),
            "pass:probe".to_string(),
        ]);
    }
    args
}
