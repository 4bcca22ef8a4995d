//! The PROXY protocol header a balancer in front sends (`--accept-proxy CIDR`): read on the
//! worker thread before the TLS handshake, within the handshake deadline and at most
//! [`MAX_HEADER`] bytes, without ever reading a byte past it (the TLS ClientHello follows).
//! Parsing is the `ppp` crate's; this file owns the reading, the bound and the meaning.

use std::fmt;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use ppp::v2;

use crate::sys::{self, Wake};

/// The longest header taken: a v1 line is at most 107 bytes; a v2 header is 16 bytes plus
/// addresses (at most 216) plus TLVs, which balancers keep small.
pub const MAX_HEADER: usize = 4096;

/// The v1 line's longest form, CRLF included (proxy-protocol.txt §2.1).
const MAX_V1: usize = 107;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8; 6] = b"PROXY ";

/// What a valid header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// PROXY: the client's address and the address it connected to.
    Relayed { source: SocketAddr, destination: SocketAddr },
    /// LOCAL (a balancer's health check), v1 UNKNOWN, or v2 with an unspecified or non-IP
    /// family: served as the direct peer, as the spec says.
    Direct(&'static str),
}

/// Why a connection from a listed source is closed before its handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Not a header, a malformed one, or one past [`MAX_HEADER`].
    Bad(String),
    /// The handshake deadline passed before the header was complete.
    Timeout(usize),
    /// The balancer closed the connection first.
    Closed(usize),
    /// A stop came first.
    Stop,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Bad(reason) => f.write_str(reason),
            Refused::Timeout(got) => {
                write!(f, "no complete PROXY header within the handshake timeout ({got} B)")
            }
            Refused::Closed(got) => write!(f, "closed before its PROXY header was complete ({got} B)"),
            Refused::Stop => f.write_str("stopping"),
        }
    }
}

/// Reads the header off `stream` (non-blocking) by `deadline`; `stops` end the wait.
pub fn read(stream: &TcpStream, deadline: Instant, stops: &[RawFd]) -> Result<Origin, Refused> {
    let mut header: Vec<u8> = Vec::with_capacity(256);
    let mut peeked = vec![0u8; MAX_HEADER];
    loop {
        wait_readable(stream, header.len(), deadline, stops)?;
        let n = match sys::peek(stream, &mut peeked[..MAX_HEADER - header.len()]) {
            Ok(0) => return Err(Refused::Closed(header.len())),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(Refused::Bad(format!("read failed: {err}"))),
        };
        let before = header.len();
        header.extend_from_slice(&peeked[..n]);
        let (take, complete) = match scan(&header) {
            Scan::Complete(total) => (total - before, true),
            Scan::NeedMore => (n, false),
            Scan::Bad(reason) => return Err(Refused::Bad(reason)),
        };
        header.truncate(before + take);
        consume(stream, take)?;
        if complete {
            return interpret(&header);
        }
    }
}

/// For a source that is not listed: whether its first bytes are a PROXY header (which it
/// must not send, and which would otherwise reach OpenSSL as a garbled handshake).
pub fn starts_with_header(stream: &TcpStream, deadline: Instant, stops: &[RawFd]) -> Result<bool, Refused> {
    wait_readable(stream, 0, deadline, stops)?;
    let mut first = [0u8; 12];
    let n = sys::peek(stream, &mut first).unwrap_or(0);
    let first = &first[..n];
    Ok(n > 0
        && (V1_PREFIX.starts_with(first) || first.starts_with(V1_PREFIX) || V2_SIGNATURE.starts_with(first)))
}

fn wait_readable(stream: &TcpStream, got: usize, deadline: Instant, stops: &[RawFd]) -> Result<(), Refused> {
    loop {
        match sys::wait_one(stream.as_raw_fd(), false, stops, deadline) {
            Ok(Wake::Ready) => return Ok(()),
            Ok(Wake::Stop) => return Err(Refused::Stop),
            Ok(Wake::Deadline) => return Err(Refused::Timeout(got)),
            Ok(Wake::Spurious) => {}
            Err(err) => return Err(Refused::Bad(format!("poll failed: {err}"))),
        }
    }
}

/// Reads exactly `n` bytes that a peek has shown to be there.
fn consume(mut stream: &TcpStream, n: usize) -> Result<(), Refused> {
    let mut sink = [0u8; MAX_HEADER];
    stream.read_exact(&mut sink[..n]).map_err(|err| Refused::Bad(format!("read failed: {err}")))
}

/// How much of `bytes` is the header.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// The header is the first N bytes.
    Complete(usize),
    /// Every byte so far belongs to a header that is not complete yet.
    NeedMore,
    Bad(String),
}

fn scan(bytes: &[u8]) -> Scan {
    let prefix_of = |signature: &[u8]| {
        let n = bytes.len().min(signature.len());
        bytes[..n] == signature[..n]
    };
    if prefix_of(V2_SIGNATURE) {
        return scan_v2(bytes);
    }
    if prefix_of(V1_PREFIX) {
        return scan_v1(bytes);
    }
    let shown: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Scan::Bad(format!("not a PROXY header (first bytes {shown})"))
}

fn scan_v2(bytes: &[u8]) -> Scan {
    if bytes.len() < 16 {
        return Scan::NeedMore;
    }
    let total = 16 + u16::from_be_bytes([bytes[14], bytes[15]]) as usize;
    if total > MAX_HEADER {
        return Scan::Bad(format!("PROXY v2 header of {total} B is over the {MAX_HEADER} B limit"));
    }
    if bytes.len() >= total {
        Scan::Complete(total)
    } else {
        Scan::NeedMore
    }
}

fn scan_v1(bytes: &[u8]) -> Scan {
    let window = &bytes[..bytes.len().min(MAX_V1)];
    match window.iter().position(|&b| b == b'\n') {
        Some(at) if at > 0 && window[at - 1] == b'\r' => Scan::Complete(at + 1),
        Some(_) => Scan::Bad("PROXY v1 line ends without CRLF".into()),
        None if bytes.len() >= MAX_V1 => {
            Scan::Bad(format!("PROXY v1 line has no CRLF in its first {MAX_V1} B"))
        }
        None => Scan::NeedMore,
    }
}

/// What the complete header means (proxy-protocol.txt §2.1, §2.2). The signature already
/// told which version it is, so each error is that version's own.
fn interpret(header: &[u8]) -> Result<Origin, Refused> {
    if header.starts_with(V2_SIGNATURE) {
        return match v2::Header::try_from(header) {
            Ok(v2) => Ok(interpret_v2(&v2)),
            Err(err) => Err(Refused::Bad(format!("malformed PROXY v2 header: {err}"))),
        };
    }
    let v1 = std::str::from_utf8(header)
        .map_err(|_| Refused::Bad("malformed PROXY v1 line: not ASCII".into()))
        .and_then(|text| {
            ppp::v1::Header::try_from(text).map_err(|e| Refused::Bad(format!("malformed PROXY v1 line: {e}")))
        })?;
    Ok(match v1.addresses {
        ppp::v1::Addresses::Tcp4(a) => {
            relayed(a.source_address.into(), a.source_port, a.destination_address.into(), a.destination_port)
        }
        ppp::v1::Addresses::Tcp6(a) => {
            relayed(a.source_address.into(), a.source_port, a.destination_address.into(), a.destination_port)
        }
        ppp::v1::Addresses::Unknown => Origin::Direct("PROXY UNKNOWN"),
    })
}

fn interpret_v2(header: &v2::Header) -> Origin {
    if header.command == v2::Command::Local {
        return Origin::Direct("LOCAL");
    }
    match header.protocol {
        v2::Protocol::Stream => {}
        v2::Protocol::Unspecified => return Origin::Direct("PROXY v2 UNSPEC"),
        v2::Protocol::Datagram => return Origin::Direct("PROXY v2 DGRAM"),
    }
    match header.addresses {
        v2::Addresses::IPv4(a) => {
            relayed(a.source_address.into(), a.source_port, a.destination_address.into(), a.destination_port)
        }
        v2::Addresses::IPv6(a) => {
            relayed(a.source_address.into(), a.source_port, a.destination_address.into(), a.destination_port)
        }
        v2::Addresses::Unspecified => Origin::Direct("PROXY v2 UNSPEC"),
        v2::Addresses::Unix(_) => Origin::Direct("PROXY v2 AF_UNIX"),
    }
}

fn relayed(source: IpAddr, source_port: u16, destination: IpAddr, destination_port: u16) -> Origin {
    Origin::Relayed {
        source: SocketAddr::new(source, source_port),
        destination: SocketAddr::new(destination, destination_port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_header(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend([0x20 | command, family]);
        header.extend((addresses.len() as u16).to_be_bytes());
        header.extend_from_slice(addresses);
        header
    }

    #[test]
    fn scan_takes_exactly_the_header_and_nothing_after_it() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n";
        let mut with_tls = line.to_vec();
        with_tls.extend([0x16, 0x03, 0x01]);
        assert_eq!(scan(&with_tls), Scan::Complete(line.len()));
        let v2 = v2_header(1, 0x11, &[203, 0, 113, 7, 10, 0, 0, 1, 0xc7, 0x38, 1, 0xbb]);
        let mut with_tls = v2.clone();
        with_tls.push(0x16);
        assert_eq!(scan(&with_tls), Scan::Complete(v2.len()));
    }

    #[test]
    fn scan_waits_for_every_prefix_of_a_header() {
        let line = b"PROXY TCP6 2001:db8::7 ::1 51000 443\r\n";
        for end in 1..line.len() {
            assert_eq!(scan(&line[..end]), Scan::NeedMore, "{end}");
        }
        let v2 = v2_header(1, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        for end in 1..v2.len() {
            assert_eq!(scan(&v2[..end]), Scan::NeedMore, "{end}");
        }
    }

    #[test]
    fn scan_refuses_garbage_lone_lf_and_oversized_headers() {
        assert!(matches!(scan(&[0x16, 0x03, 0x01]), Scan::Bad(_)), "a TLS ClientHello");
        assert!(matches!(scan(b"GET / HTTP/1.1\r\n"), Scan::Bad(_)));
        assert!(matches!(scan(b"PROXY TCP4 1.2.3.4\n"), Scan::Bad(_)));
        assert!(matches!(scan(&[b'P'; 1]), Scan::NeedMore));
        let long = [b"PROXY ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(scan(&long), Scan::Bad(_)), "no CRLF within 107 bytes");
        let mut huge = v2_header(1, 0x11, &[]);
        huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(scan(&huge), Scan::Bad(_)), "a v2 length past the limit");
    }

    #[test]
    fn interpret_gives_the_client_address_or_the_direct_peer() {
        let relayed = interpret(b"PROXY TCP4 203.0.113.7 10.0.0.2 51000 443\r\n").unwrap();
        assert_eq!(
            relayed,
            Origin::Relayed {
                source: "203.0.113.7:51000".parse().unwrap(),
                destination: "10.0.0.2:443".parse().unwrap()
            }
        );
        assert_eq!(interpret(b"PROXY UNKNOWN\r\n").unwrap(), Origin::Direct("PROXY UNKNOWN"));
        let local = v2_header(0, 0x00, &[]);
        assert_eq!(interpret(&local).unwrap(), Origin::Direct("LOCAL"));
        let local_with_addresses = v2_header(0, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        assert_eq!(interpret(&local_with_addresses).unwrap(), Origin::Direct("LOCAL"));
        let unspec = v2_header(1, 0x00, &[9, 9, 9]);
        assert_eq!(interpret(&unspec).unwrap(), Origin::Direct("PROXY v2 UNSPEC"));
        let v6 = [[0x20, 1, 0xd, 0xb8].as_slice(), &[0; 11], &[7], &[0; 15], &[1], &[0xc7, 0x38, 1, 0xbb]]
            .concat();
        let Origin::Relayed { source, .. } = interpret(&v2_header(1, 0x21, &v6)).unwrap() else {
            panic!("not relayed")
        };
        assert_eq!(source, "[2001:db8::7]:51000".parse().unwrap());
    }

    #[test]
    fn interpret_refuses_malformed_headers() {
        assert!(interpret(b"PROXY TCP4 1.2.3 10.0.0.2 1 2\r\n").is_err());
        assert!(interpret(b"PROXY TCP4 1.2.3.4 10.0.0.2 99999 2\r\n").is_err());
        let mut bad_version = v2_header(1, 0x11, &[0; 12]);
        bad_version[12] = 0x31;
        assert!(interpret(&bad_version).is_err());
        assert!(interpret(&v2_header(1, 0x11, &[0; 4])).is_err(), "addresses shorter than the family");
    }
}
