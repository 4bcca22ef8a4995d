//! The one blocking TLS client of the tests, on the `openssl` crate: connect (optionally from
//! a chosen source address, with a client certificate or one TLS version), round trips, hub
//! lines, and an exact classification of how the server ended the stream (DESIGN §3 facts).
//! The helpers are generic over the stream, so a test may put its own socket under the TLS.

use openssl::ssl::{ErrorCode, SslConnector, SslFiletype, SslMethod, SslStream, SslVersion};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// A client context that verifies the test CA (name `localhost`), optionally with a client
/// certificate, optionally pinned to one TLS version.
pub fn connector(ca: &Path, client: Option<(&Path, &Path)>, version: Option<SslVersion>) -> SslConnector {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).expect("SslConnector");
    builder.set_ca_file(ca).expect("load CA");
    if let Some((cert, key)) = client {
        builder.set_certificate_chain_file(cert).expect("client cert");
        builder.set_private_key_file(key, SslFiletype::PEM).expect("client key");
    }
    if let Some(v) = version {
        builder.set_min_proto_version(Some(v)).unwrap();
        builder.set_max_proto_version(Some(v)).unwrap();
    }
    builder.build()
}

/// A TCP connection to `addr`, from `source` when given (e.g. 127.0.0.2), bounded by `timeout`.
pub fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>, timeout: Duration) -> io::Result<TcpStream> {
    use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, SockaddrStorage};
    use std::os::fd::AsRawFd;
    let Some(source) = source else {
        return TcpStream::connect_timeout(&addr, timeout);
    };
    let family = if addr.is_ipv6() { AddressFamily::Inet6 } else { AddressFamily::Inet };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(SocketAddr::new(source, 0)))?;
    let stream = TcpStream::from(fd);
    stream.set_write_timeout(Some(timeout))?;
    nix::sys::socket::connect(stream.as_raw_fd(), &SockaddrStorage::from(addr))?;
    Ok(stream)
}

/// Connects and handshakes with `timeout` for each step; the stream keeps that read timeout.
pub fn connect(
    addr: SocketAddr,
    tls: &SslConnector,
    timeout: Duration,
) -> Result<SslStream<TcpStream>, String> {
    let tcp = tcp_connect(addr, None, timeout).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(timeout)).unwrap();
    tcp.set_write_timeout(Some(timeout)).unwrap();
    tcp.set_nodelay(true).unwrap();
    tls.connect("localhost", tcp).map_err(|e| format!("handshake: {e}"))
}

/// How the server's side of a TLS stream ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// close_notify arrived.
    Clean,
    /// TCP EOF without close_notify.
    Truncated,
    /// TCP reset.
    Reset,
    /// Nothing within the deadline.
    Timeout,
    /// A TLS alert or other error, with its text.
    Error(String),
}

impl End {
    /// Clean is the only end that promises every byte arrived.
    pub fn is_unclean(&self) -> bool {
        matches!(self, End::Truncated | End::Reset | End::Error(_))
    }
}

/// One `ssl_read`: Ok(bytes) or how the stream ended.
pub fn read_some<S: Read + Write>(tls: &mut SslStream<S>, buf: &mut [u8]) -> Result<usize, End> {
    match tls.ssl_read(buf) {
        Ok(n) => Ok(n),
        Err(err) => Err(classify(&err)),
    }
}

/// Maps an OpenSSL error to an [`End`]; `WANT_READ` with a timed-out socket is a timeout.
pub fn classify(err: &openssl::ssl::Error) -> End {
    match err.code() {
        ErrorCode::ZERO_RETURN => End::Clean,
        ErrorCode::WANT_READ | ErrorCode::WANT_WRITE => End::Timeout,
        ErrorCode::SYSCALL => match err.io_error() {
            None => End::Truncated,
            Some(io) => io_end(io),
        },
        _ => {
            if let Some(io) = err.io_error() {
                return io_end(io);
            }
            let text = err.to_string();
            if text.contains("unexpected eof") {
                End::Truncated
            } else {
                End::Error(text)
            }
        }
    }
}

fn io_end(io: &io::Error) -> End {
    match io.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => End::Reset,
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => End::Timeout,
        _ => End::Error(io.to_string()),
    }
}

/// Reads until `n` bytes arrived; Err with what arrived and how the stream ended otherwise.
pub fn read_exact_or_end<S: Read + Write>(
    tls: &mut SslStream<S>,
    n: usize,
) -> Result<Vec<u8>, (Vec<u8>, End)> {
    let mut got = Vec::with_capacity(n);
    let mut buf = vec![0u8; 16384];
    while got.len() < n {
        match read_some(tls, &mut buf) {
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(end) => return Err((got, end)),
        }
    }
    Ok(got)
}

/// Sends `msg` and waits for its echo; returns the round-trip time.
pub fn round_trip<S: Read + Write>(tls: &mut SslStream<S>, msg: &[u8]) -> Result<Duration, String> {
    let t0 = Instant::now();
    tls.write_all(msg).map_err(|e| format!("write: {e}"))?;
    match read_exact_or_end(tls, msg.len()) {
        Ok(got) if got == msg => Ok(t0.elapsed()),
        Ok(got) => Err(format!("echo differs: {:?}", String::from_utf8_lossy(&got))),
        Err((got, end)) => Err(format!("echo incomplete ({} of {} B): {end:?}", got.len(), msg.len())),
    }
}

/// Reads one `\n`-terminated line (without it); a byte at a time, fine for short hub lines.
pub fn read_line<S: Read + Write>(tls: &mut SslStream<S>) -> Result<Vec<u8>, End> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        read_some(tls, &mut byte)?;
        if byte[0] == b'\n' {
            return Ok(line);
        }
        line.push(byte[0]);
    }
}

/// [`read_line`] as text (lossy UTF-8), for hub lines in assertions.
pub fn read_text_line<S: Read + Write>(tls: &mut SslStream<S>) -> Result<String, End> {
    read_line(tls).map(|line| String::from_utf8_lossy(&line).into_owned())
}

/// Sends close_notify, then reads until the server's end: the bytes that still came and how
/// it ended (Clean means the server answered with its close_notify).
pub fn close_and_wait<S: Read + Write>(tls: &mut SslStream<S>) -> (Vec<u8>, End) {
    if let Err(err) = tls.shutdown() {
        let end = classify(&err);
        if end != End::Timeout {
            return (Vec::new(), end);
        }
    }
    read_to_end(tls)
}

/// Reads until the stream ends; what arrived and how it ended.
pub fn read_to_end<S: Read + Write>(tls: &mut SslStream<S>) -> (Vec<u8>, End) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16384];
    loop {
        match read_some(tls, &mut buf) {
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(end) => return (got, end),
        }
    }
}

/// The bytes of a real ClientHello from this connector (captured, never sent anywhere).
pub fn client_hello(tls: &SslConnector) -> Vec<u8> {
    let capture = Capture::default();
    match tls.connect("localhost", capture) {
        Err(openssl::ssl::HandshakeError::WouldBlock(mid)) => mid.get_ref().written.clone(),
        Err(e) => panic!("capturing a ClientHello: {e}"),
        Ok(_) => panic!("a handshake cannot finish without a server"),
    }
}

/// A stream that keeps what is written and has nothing to read yet.
#[derive(Default, Debug)]
struct Capture {
    written: Vec<u8>,
}

impl Read for Capture {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
