//! Raw TCP peers that are not TLS clients: they send fixed bytes (half a ClientHello, HTTP,
//! garbage) and watch how and when the server ends the connection.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// How the server ended a raw connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEnd {
    Fin,
    Reset,
    /// Still open at the deadline.
    Open,
    Error(String),
}

/// Sends `bytes` on a fresh connection and reads until the server ends it or `timeout`.
pub fn probe(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> (Vec<u8>, RawEnd) {
    let mut tcp = TcpStream::connect_timeout(&addr, timeout).expect("connect");
    // The server may close before reading everything; a failed write is then not our error.
    let _ = tcp.write_all(bytes);
    read_until_closed(&mut tcp, timeout)
}

/// Reads until FIN, RST or `timeout`; returns everything received and the end.
pub fn read_until_closed(tcp: &mut TcpStream, timeout: Duration) -> (Vec<u8>, RawEnd) {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (got, RawEnd::Open);
        }
        tcp.set_read_timeout(Some(left)).unwrap();
        match tcp.read(&mut buf) {
            Ok(0) => return (got, RawEnd::Fin),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (got, RawEnd::Reset),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (got, RawEnd::Open)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (got, RawEnd::Error(e.to_string())),
        }
    }
}

/// True when `bytes` is nothing but whole TLS alert records (content type 21, 2-byte body):
/// the only answer a TLS server may give a peer that is not a TLS client.
pub fn only_alerts(bytes: &[u8]) -> bool {
    bytes
        .chunks(7)
        .all(|rec| rec.len() == 7 && rec[0] == 0x15 && rec[1] == 0x03 && rec[3] == 0 && rec[4] == 2)
}

/// The alert descriptions in `bytes` (70 = protocol_version, 40 = handshake_failure, ...).
pub fn alert_codes(bytes: &[u8]) -> Vec<u8> {
    bytes.chunks(7).filter(|rec| rec.len() == 7 && rec[0] == 0x15).map(|rec| rec[6]).collect()
}

/// One stalled connection of a slowloris: when it was opened and when the server ended it.
pub struct Stalled {
    pub tcp: TcpStream,
    pub opened: Instant,
    pub ended: Option<(Instant, RawEnd, usize)>,
}

/// Opens `n` connections, each sending `bytes` and then nothing more.
pub fn open_stalled(addr: SocketAddr, n: usize, bytes: &[u8]) -> Vec<Stalled> {
    (0..n)
        .map(|i| {
            let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("stalled connection {i}: connect: {e}"));
            let opened = Instant::now();
            tcp.write_all(bytes).unwrap_or_else(|e| panic!("stalled connection {i}: write: {e}"));
            tcp.set_nonblocking(true).unwrap();
            Stalled { tcp, opened, ended: None }
        })
        .collect()
}

/// Waits (one poll loop) until the server has ended every connection or `deadline` passed;
/// records each end's time, kind and the number of bytes that came first.
pub fn watch_until_closed(conns: &mut [Stalled], deadline: Instant) {
    let mut counts = vec![0usize; conns.len()];
    loop {
        let open: Vec<usize> = (0..conns.len()).filter(|&i| conns[i].ended.is_none()).collect();
        let left = deadline.saturating_duration_since(Instant::now());
        if open.is_empty() || left.is_zero() {
            return;
        }
        let mut fds: Vec<libc::pollfd> = open
            .iter()
            .map(|&i| libc::pollfd { fd: conns[i].tcp.as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        let ms = left.as_millis().clamp(1, 1000) as i32;
        // SAFETY: fds is a live, correctly sized vector of pollfd records.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        let now = Instant::now();
        for (pfd, &i) in fds.iter().zip(&open) {
            if pfd.revents == 0 {
                continue;
            }
            let mut buf = [0u8; 1024];
            let end = match conns[i].tcp.read(&mut buf) {
                Ok(0) => Some(RawEnd::Fin),
                Ok(n) => {
                    counts[i] += n;
                    None
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => Some(RawEnd::Reset),
                Err(e) if e.kind() == ErrorKind::WouldBlock => None,
                Err(e) => Some(RawEnd::Error(e.to_string())),
            };
            if let Some(end) = end {
                conns[i].ended = Some((now, end, counts[i]));
            }
        }
    }
}

/// A small deterministic generator (xorshift64*), so "random bytes" are the same every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() >> 56) as u8).collect()
    }
}
