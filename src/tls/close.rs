//! How a TLS stream ended, and how a connection's closure is reported (DESIGN §3).

use std::fmt;
use std::io;

use openssl::ssl::{self, ErrorCode};

use crate::error::{describe_io, describe_ssl};

/// What a non-blocking TLS call is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Read,
    Write,
}

/// What the last non-blocking TLS calls on one socket are waiting for, to poll it for.
#[derive(Debug, Default, Clone, Copy)]
pub struct Interest {
    pub read: bool,
    pub write: bool,
}

impl Interest {
    pub fn on(&mut self, want: Want) {
        match want {
            Want::Read => self.read = true,
            Want::Write => self.write = true,
        }
    }
}

/// How the peer's side of a TLS stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsEnd {
    /// close_notify received: a clean end of the peer's direction.
    CloseNotify,
    /// TCP EOF without close_notify.
    Truncated,
    /// TCP reset, or a fatal TLS error: the stream cannot be used any more.
    Reset(String),
}

/// The outcome of a failed `ssl_read`/`ssl_write`/`shutdown`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsStatus {
    Blocked(Want),
    Ended(TlsEnd),
}

/// Classifies an OpenSSL error (DESIGN §3 facts): ZERO_RETURN is the only clean end;
/// SYSCALL without an io error, or "unexpected eof", is a truncation.
pub fn classify(err: &ssl::Error) -> TlsStatus {
    match err.code() {
        ErrorCode::WANT_READ => TlsStatus::Blocked(Want::Read),
        ErrorCode::WANT_WRITE => TlsStatus::Blocked(Want::Write),
        ErrorCode::ZERO_RETURN => TlsStatus::Ended(TlsEnd::CloseNotify),
        ErrorCode::SYSCALL => match err.io_error() {
            None => TlsStatus::Ended(TlsEnd::Truncated),
            Some(io) if io.kind() == io::ErrorKind::WouldBlock => TlsStatus::Blocked(Want::Read),
            Some(io) => TlsStatus::Ended(TlsEnd::Reset(describe_io(io))),
        },
        _ => match err.ssl_error() {
            Some(stack) if is_unexpected_eof(stack) => TlsStatus::Ended(TlsEnd::Truncated),
            Some(stack) => TlsStatus::Ended(TlsEnd::Reset(describe_ssl(stack))),
            None => TlsStatus::Ended(TlsEnd::Reset(err.to_string())),
        },
    }
}

fn is_unexpected_eof(stack: &openssl::error::ErrorStack) -> bool {
    stack.errors().iter().any(|e| e.reason() == Some("unexpected eof while reading"))
}

/// A failed write or shutdown leaves the stream unusable, whatever the error says.
pub fn broken_by(end: TlsEnd) -> TlsEnd {
    match end {
        TlsEnd::Reset(reason) => TlsEnd::Reset(reason),
        _ => TlsEnd::Reset("connection closed".into()),
    }
}

/// A handshake error as one short reason for the log ("wrong version number").
pub fn handshake_reason(err: &ssl::Error) -> String {
    if let Some(stack) = err.ssl_error() {
        return describe_ssl(stack);
    }
    match err.io_error() {
        Some(io) => describe_io(io),
        None => "peer closed the connection".to_string(),
    }
}

/// How one connection closed: the KIND of the `closed:` log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseKind {
    /// Both close_notify sent and received.
    Clean,
    /// We sent close_notify; the peer's never came (EOF or the deadline).
    PeerDidNotAnswer,
    TruncatedByClient,
    ResetByClient,
    UpstreamReset,
    UpstreamUnreachable,
    HandshakeFailed(String),
    HandshakeTimeout,
    /// The peer stopped reading while a write was pending during the closure.
    WriteStalled,
    /// A stop came while the handshake was running.
    DroppedInHandshake,
}

impl fmt::Display for CloseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseKind::Clean => f.write_str("clean"),
            CloseKind::PeerDidNotAnswer => f.write_str("peer did not answer"),
            CloseKind::TruncatedByClient => f.write_str("truncated by client"),
            CloseKind::ResetByClient => f.write_str("reset by client"),
            CloseKind::UpstreamReset => f.write_str("upstream reset"),
            CloseKind::UpstreamUnreachable => f.write_str("upstream unreachable"),
            CloseKind::HandshakeFailed(reason) => write!(f, "handshake failed: {reason}"),
            CloseKind::HandshakeTimeout => f.write_str("handshake timeout"),
            CloseKind::WriteStalled => f.write_str("write stalled"),
            CloseKind::DroppedInHandshake => f.write_str("handshake failed: server stopping"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use openssl::asn1::Asn1Time;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::ssl::{SslAcceptor, SslConnector, SslMethod, SslStream, SslVerifyMode};
    use openssl::x509::{X509NameBuilder, X509};

    /// A connected TLS pair over a socketpair: (server, client).
    fn tls_pair() -> (SslStream<UnixStream>, SslStream<UnixStream>) {
        let key = PKey::from_ec_key(
            EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
        )
        .unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "test").unwrap();
        let name = name.build();
        let mut cert = X509::builder().unwrap();
        cert.set_subject_name(&name).unwrap();
        cert.set_issuer_name(&name).unwrap();
        cert.set_pubkey(&key).unwrap();
        cert.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
        cert.set_not_after(&Asn1Time::days_from_now(1).unwrap()).unwrap();
        cert.sign(&key, MessageDigest::sha256()).unwrap();
        let cert = cert.build();

        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        acceptor.set_certificate(&cert).unwrap();
        acceptor.set_private_key(&key).unwrap();
        let acceptor = acceptor.build();
        let mut connector = SslConnector::builder(SslMethod::tls()).unwrap();
        connector.set_verify(SslVerifyMode::NONE);
        let connector = connector.build();

        let (a, b) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || acceptor.accept(a).unwrap());
        let mut client = connector.configure().unwrap().verify_hostname(false).connect("test", b).unwrap();
        let mut server = server.join().unwrap();
        // TLS 1.3 sends tickets after the handshake; read them so they are not "data".
        client.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        server.ssl_read(&mut one).unwrap();
        (server, client)
    }

    fn read_status(stream: &mut SslStream<UnixStream>) -> TlsStatus {
        let mut buf = [0u8; 64];
        classify(&stream.ssl_read(&mut buf).unwrap_err())
    }

    #[test]
    fn close_notify_is_a_clean_end() {
        let (mut server, mut client) = tls_pair();
        client.shutdown().unwrap();
        assert_eq!(read_status(&mut server), TlsStatus::Ended(TlsEnd::CloseNotify));
    }

    #[test]
    fn tcp_eof_without_close_notify_is_a_truncation() {
        let (mut server, client) = tls_pair();
        // A FIN without close_notify (dropping would reset: the client has unread tickets).
        client.get_ref().shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(read_status(&mut server), TlsStatus::Ended(TlsEnd::Truncated));
    }

    #[test]
    fn nothing_to_read_on_a_nonblocking_socket_is_want_read() {
        let (mut server, _client) = tls_pair();
        server.get_ref().set_nonblocking(true).unwrap();
        assert_eq!(read_status(&mut server), TlsStatus::Blocked(Want::Read));
    }

    #[test]
    fn garbage_after_the_handshake_is_not_clean() {
        let (mut server, mut client) = tls_pair();
        client.get_mut().write_all(&[0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5]).unwrap();
        assert!(matches!(read_status(&mut server), TlsStatus::Ended(TlsEnd::Reset(_))));
    }

    #[test]
    fn kinds_print_the_log_vocabulary() {
        assert_eq!(CloseKind::PeerDidNotAnswer.to_string(), "peer did not answer");
        assert_eq!(
            CloseKind::HandshakeFailed("wrong version number".into()).to_string(),
            "handshake failed: wrong version number"
        );
    }
}
