//! Opening one connection: resolve HOST:PORT, try each address until one answers, then the
//! TLS handshake, all on a non-blocking socket that Ctrl-C can cut short. Each failure is
//! one line saying why, and whether trying again could help.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use openssl::ssl::{ErrorCode, SslStream};

use super::connector::{Connector, Seen};
use crate::cli::Target;
use crate::error::describe_io;
use crate::sys;
use crate::tls::close::handshake_reason;
use crate::tls::handshake::{self, Unfinished};

/// How long the TCP connect may take, over all addresses of the name.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the TLS handshake may take once connected.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection could not be opened.
#[derive(Debug)]
pub enum DialError {
    /// No address answered (refused, timed out, unreachable, unknown name).
    Unreachable { target: String, reason: String },
    /// The handshake broke off: an EOF or reset (worth retrying) or an alert (not).
    Handshake { target: String, reason: String, retryable: bool },
    /// We refused the server's certificate; retrying cannot help.
    Refused { target: String, reason: String },
    /// Ctrl-C while connecting.
    Interrupted { target: String },
}

impl DialError {
    /// Whether --reconnect should try again.
    pub fn retryable(&self) -> bool {
        match self {
            DialError::Unreachable { .. } => true,
            DialError::Handshake { retryable, .. } => *retryable,
            DialError::Refused { .. } | DialError::Interrupted { .. } => false,
        }
    }
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DialError::Unreachable { target, reason } => write!(f, "cannot connect to {target}: {reason}"),
            DialError::Handshake { target, reason, .. } | DialError::Refused { target, reason } => {
                write!(f, "handshake with {target} failed: {reason}")
            }
            DialError::Interrupted { target } => write!(f, "connecting to {target}: interrupted"),
        }
    }
}

/// Connects and runs the handshake; `stops` are descriptors that cut it short when readable.
pub fn dial(
    target: &Target,
    connector: &Connector,
    stops: &[RawFd],
) -> Result<SslStream<TcpStream>, DialError> {
    let tcp = connect(target, stops)?;
    let _ = tcp.set_nodelay(true); // interactive lines should not wait for Nagle
    handshake(target, tcp, connector, stops)
}

fn connect(target: &Target, stops: &[RawFd]) -> Result<TcpStream, DialError> {
    let unreachable = |reason: String| DialError::Unreachable { target: target.to_string(), reason };
    let addrs: Vec<SocketAddr> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| unreachable(format!("cannot resolve {}: {}", target.host, describe_io(&e))))?
        .collect();
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut failures = Vec::new();
    for addr in &addrs {
        match sys::connect(*addr, deadline, stops) {
            Ok(stream) => return Ok(stream),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {
                return Err(DialError::Interrupted { target: target.to_string() })
            }
            Err(err) if err.kind() == io::ErrorKind::TimedOut => {
                failures.push((*addr, format!("timed out after {} s", CONNECT_TIMEOUT.as_secs())))
            }
            Err(err) => failures.push((*addr, describe_io(&err))),
        }
    }
    Err(unreachable(summarize(failures)))
}

/// One reason when every address failed alike ("connection refused"), else each with its address.
fn summarize(failures: Vec<(SocketAddr, String)>) -> String {
    match failures.first() {
        None => "the name resolved to no address".into(),
        Some((_, first)) if failures.iter().all(|(_, reason)| reason == first) => first.clone(),
        Some(_) => {
            failures.iter().map(|(addr, reason)| format!("{addr}: {reason}")).collect::<Vec<_>>().join("; ")
        }
    }
}

fn handshake(
    target: &Target,
    tcp: TcpStream,
    connector: &Connector,
    stops: &[RawFd],
) -> Result<SslStream<TcpStream>, DialError> {
    let failed =
        |reason: String, retryable| DialError::Handshake { target: target.to_string(), reason, retryable };
    let (ssl, seen) = connector.ssl().map_err(|e| failed(e.to_string(), false))?;
    let mut tls = SslStream::new(ssl, tcp).map_err(|e| failed(e.to_string(), false))?;
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    match handshake::drive(&mut tls, SslStream::connect, deadline, stops) {
        Ok(()) => Ok(tls),
        Err(Unfinished::Failed(err)) => Err(handshake_failure(target, &tls, &err, connector, &seen)),
        Err(Unfinished::Stopped) => Err(DialError::Interrupted { target: target.to_string() }),
        Err(Unfinished::TimedOut) => {
            Err(failed(format!("timed out after {} s", HANDSHAKE_TIMEOUT.as_secs()), true))
        }
        Err(Unfinished::Poll(err)) => Err(failed(describe_io(&err), false)),
    }
}

/// Our refusal of the certificate if that was it; else the server's alert (final) or a
/// broken-off connection (worth retrying).
fn handshake_failure(
    target: &Target,
    tls: &SslStream<TcpStream>,
    err: &openssl::ssl::Error,
    connector: &Connector,
    seen: &std::sync::Mutex<Seen>,
) -> DialError {
    let seen = seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(reason) = connector.refusal(tls.ssl().verify_result(), &seen) {
        return DialError::Refused { target: target.to_string(), reason };
    }
    let reason = handshake_reason(err);
    let retryable = err.code() == ErrorCode::SYSCALL || reason.contains("unexpected eof");
    DialError::Handshake { target: target.to_string(), reason, retryable }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(addr: &str, reason: &str) -> (SocketAddr, String) {
        (addr.parse().unwrap(), reason.to_string())
    }

    #[test]
    fn alike_failures_read_as_one_reason() {
        let both = vec![
            failure("[::1]:7443", "connection refused"),
            failure("127.0.0.1:7443", "connection refused"),
        ];
        assert_eq!(summarize(both), "connection refused");
        let mixed =
            vec![failure("[::1]:7443", "network unreachable"), failure("127.0.0.1:7443", "timed out")];
        assert_eq!(summarize(mixed), "[::1]:7443: network unreachable; 127.0.0.1:7443: timed out");
        assert_eq!(summarize(Vec::new()), "the name resolved to no address");
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let target = "example.com:443".to_string();
        let refused =
            DialError::Refused { target: target.clone(), reason: "certificate verify failed".into() };
        assert!(!refused.retryable(), "a refused certificate does not fix itself");
        let unreachable =
            DialError::Unreachable { target: target.clone(), reason: "connection refused".into() };
        assert!(unreachable.retryable());
        assert_eq!(unreachable.to_string(), "cannot connect to example.com:443: connection refused");
        assert!(!DialError::Interrupted { target }.retryable());
    }
}
