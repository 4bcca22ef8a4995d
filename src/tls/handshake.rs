//! The server handshake on a worker thread: non-blocking, bounded by its deadline, cut short
//! by a stop; and the `established` line that follows it.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use log::info;
use openssl::ssl::{self, Ssl, SslAcceptor, SslStream};

use crate::error::describe_io;
use crate::sys::{self, Wake};
use crate::tls::close::{classify, handshake_reason, CloseKind, TlsStatus, Want};

/// Runs the server handshake on the non-blocking socket until `deadline`; a readable
/// descriptor among `stops` drops it (`DroppedInHandshake`).
pub fn accept(
    acceptor: &SslAcceptor,
    tcp: TcpStream,
    deadline: Instant,
    stops: &[RawFd],
) -> Result<SslStream<TcpStream>, CloseKind> {
    let ssl = Ssl::new(acceptor.context()).map_err(|e| CloseKind::HandshakeFailed(e.to_string()))?;
    let mut tls = SslStream::new(ssl, tcp).map_err(|e| CloseKind::HandshakeFailed(e.to_string()))?;
    match drive(&mut tls, SslStream::accept, deadline, stops) {
        Ok(()) => Ok(tls),
        Err(Unfinished::Failed(err)) => Err(CloseKind::HandshakeFailed(failure_reason(&tls, &err))),
        Err(Unfinished::Stopped) => Err(CloseKind::DroppedInHandshake),
        Err(Unfinished::TimedOut) => Err(CloseKind::HandshakeTimeout),
        Err(Unfinished::Poll(err)) => Err(CloseKind::HandshakeFailed(describe_io(&err))),
    }
}

/// Why a handshake driven by [`drive`] did not complete.
pub enum Unfinished {
    /// OpenSSL ended it: an alert, a refused certificate, a broken connection.
    Failed(ssl::Error),
    /// One of the stop descriptors became readable.
    Stopped,
    /// The deadline passed first.
    TimedOut,
    /// poll(2) itself failed.
    Poll(io::Error),
}

/// Runs `step` (`SslStream::accept` or `SslStream::connect`) on a non-blocking socket until the
/// handshake completes, sleeping in poll(2) for whatever OpenSSL waits for.
pub fn drive(
    tls: &mut SslStream<TcpStream>,
    step: fn(&mut SslStream<TcpStream>) -> Result<(), ssl::Error>,
    deadline: Instant,
    stops: &[RawFd],
) -> Result<(), Unfinished> {
    loop {
        let err = match step(tls) {
            Ok(()) => return Ok(()),
            Err(err) => err,
        };
        let want = match classify(&err) {
            TlsStatus::Blocked(want) => want,
            TlsStatus::Ended(_) => return Err(Unfinished::Failed(err)),
        };
        match sys::wait_one(tls.get_ref().as_raw_fd(), want == Want::Write, stops, deadline) {
            Ok(Wake::Ready | Wake::Spurious) => {}
            Ok(Wake::Stop) => return Err(Unfinished::Stopped),
            Ok(Wake::Deadline) => return Err(Unfinished::TimedOut),
            Err(err) => return Err(Unfinished::Poll(err)),
        }
    }
}

/// OpenSSL's reason, plus the certificate check's own when that is what failed.
fn failure_reason(tls: &SslStream<TcpStream>, err: &openssl::ssl::Error) -> String {
    let reason = handshake_reason(err);
    let verify = tls.ssl().verify_result();
    if verify == openssl::x509::X509VerifyResult::OK {
        return reason;
    }
    if verify == openssl::x509::X509VerifyResult::APPLICATION_VERIFICATION {
        // Our own verify callback refused it (acceptor.rs).
        return format!("{reason} (client certificate matches no --allow-cn/--allow-san)");
    }
    format!("{reason} ({})", verify.error_string())
}

/// `conn ID established TLSv1.3 CIPHER [client CN=…]`
pub fn log_established(id: u64, tls: &SslStream<TcpStream>) {
    let ssl = tls.ssl();
    let cipher = ssl.current_cipher().map(|c| c.name()).unwrap_or("unknown");
    let client = ssl
        .peer_certificate()
        .and_then(|cert| {
            let cn = cert.subject_name().entries_by_nid(openssl::nid::Nid::COMMONNAME).next()?;
            Some(format!(" client CN={}", cn.data().to_string().ok()?))
        })
        .unwrap_or_default();
    info!("conn {id} established {} {cipher}{client}", ssl.version_str());
}
