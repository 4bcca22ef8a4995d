//! The TLS side of a connection: its non-blocking `SslStream`, what its blocked calls wait for,
//! the bytes it carried, and its closing sequence (how the peer's side ended, whether our
//! close_notify went out), so the relay, the hub and `connect` share the rules of DESIGN §3.

use std::mem::MaybeUninit;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use openssl::ssl::{self, SslStream, SslVersion};

use crate::buffer::Buffer;
use crate::sys::{PollSet, Slot};
use crate::tls::abort;
use crate::tls::close::{broken_by, classify, CloseKind, Interest, TlsEnd, TlsStatus, Want};

/// Plaintext bytes every `TlsSide` of the process has received, counted as they are read
/// (`tlsrelay_client_bytes_received_total`): one relaxed add per read, no lock, no system call.
pub static BYTES_RECEIVED: AtomicU64 = AtomicU64::new(0);
/// Plaintext bytes every `TlsSide` of the process has sent, counted as they are written.
pub static BYTES_SENT: AtomicU64 = AtomicU64::new(0);

pub struct TlsSide {
    stream: SslStream<TcpStream>,
    /// What a blocked `ssl_read` waits for. It is not called again until poll reports that
    /// readiness: retrying blindly costs a system call (EAGAIN) and the caller a buffer.
    read_waits: Option<Want>,
    /// What a blocked `ssl_write` or `shutdown` waits for, with the same rule.
    write_waits: Option<Want>,
    /// An `ssl_write` returned WANT_*: OpenSSL requires the same bytes to be offered again
    /// before anything else is written.
    write_in_progress: bool,
    bytes_in: u64,
    bytes_out: u64,
    /// TLS 1.3 lets us write after the peer's close_notify (RFC 8446 §6.1); TLS 1.2 does not.
    tls13: bool,
    /// How the peer's side ended: read from the stream, or learnt from a write that failed.
    end: Option<TlsEnd>,
    close_notify_sent: bool,
}

impl TlsSide {
    /// Takes a stream whose handshake is done and whose socket is non-blocking.
    pub fn new(stream: SslStream<TcpStream>) -> Self {
        let tls13 = stream.ssl().version2() == Some(SslVersion::TLS1_3);
        TlsSide {
            tls13,
            stream,
            read_waits: None,
            write_waits: None,
            write_in_progress: false,
            bytes_in: 0,
            bytes_out: 0,
            end: None,
            close_notify_sent: false,
        }
    }

    pub fn socket(&self) -> &TcpStream {
        self.stream.get_ref()
    }

    /// No earlier `read` is still waiting for the socket.
    pub fn may_read(&self) -> bool {
        self.read_waits.is_none()
    }

    /// No earlier `write` or `close_notify` is still waiting for the socket.
    pub fn may_write(&self) -> bool {
        self.write_waits.is_none()
    }

    /// The last `write` blocked: the next one must offer the same bytes.
    pub fn write_in_progress(&self) -> bool {
        self.write_in_progress
    }

    /// Plaintext bytes received.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    /// Plaintext bytes sent.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    /// One `ssl_read` into `buf`; on `Blocked`, [`TlsSide::may_read`] stays false until poll
    /// reports what it waits for.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, TlsStatus> {
        let result = self.stream.ssl_read(buf);
        self.count_read(result)
    }

    /// [`TlsSide::read`] into memory that need not be initialised (a relay buffer's space).
    pub fn read_uninit(&mut self, buf: &mut [MaybeUninit<u8>]) -> Result<usize, TlsStatus> {
        let result = self.stream.ssl_read_uninit(buf);
        self.count_read(result)
    }

    /// [`TlsSide::read`] into the spare capacity of `buf`, appending: no buffer is zeroed
    /// for a read.
    pub fn read_appending(&mut self, buf: &mut Vec<u8>) -> Result<usize, TlsStatus> {
        let len = buf.len();
        let result = self.stream.ssl_read_uninit(buf.spare_capacity_mut());
        let n = self.count_read(result)?;
        // SAFETY: `ssl_read_uninit` initialised the first `n` bytes of the spare capacity.
        unsafe { buf.set_len(len + n) };
        Ok(n)
    }

    fn count_read(&mut self, result: Result<usize, ssl::Error>) -> Result<usize, TlsStatus> {
        match result {
            Ok(n) => {
                self.bytes_in += n as u64;
                BYTES_RECEIVED.fetch_add(n as u64, Ordering::Relaxed);
                Ok(n)
            }
            Err(err) => {
                let status = remember_wait(&mut self.read_waits, &err);
                if let TlsStatus::Ended(end) = &status {
                    self.end = Some(end.clone());
                }
                Err(status)
            }
        }
    }

    /// One `ssl_write` of `bytes` (partial writes are enabled: it may take fewer).
    pub fn write(&mut self, bytes: &[u8]) -> Result<usize, TlsStatus> {
        match self.stream.ssl_write(bytes) {
            Ok(n) => {
                self.write_in_progress = false;
                self.bytes_out += n as u64;
                BYTES_SENT.fetch_add(n as u64, Ordering::Relaxed);
                Ok(n)
            }
            Err(err) => {
                let status = remember_wait(&mut self.write_waits, &err);
                self.write_in_progress |= matches!(status, TlsStatus::Blocked(_));
                Err(status)
            }
        }
    }

    /// Sends close_notify (`shutdown`, DESIGN §3); `Ok` once it is on its way.
    pub fn close_notify(&mut self) -> Result<(), TlsStatus> {
        match self.stream.shutdown() {
            Ok(_) => Ok(()),
            Err(err) => Err(remember_wait(&mut self.write_waits, &err)),
        }
    }

    // ---- the closing sequence, shared by the forward pump and the hub session ----

    /// How the peer's side ended, once it has: its close_notify, a truncation or a reset read
    /// from the stream, or a write that failed (then always unclean, see [`broken_by`]).
    pub fn end(&self) -> Option<&TlsEnd> {
        self.end.as_ref()
    }

    /// The peer closed its direction cleanly and we may still write to it (TLS 1.3 only).
    pub fn half_closed(&self) -> bool {
        self.tls13 && self.end == Some(TlsEnd::CloseNotify)
    }

    /// Whether we may write after the peer's close_notify: TLS 1.3 yes, TLS 1.2 no.
    pub fn is_tls13(&self) -> bool {
        self.tls13
    }

    /// The stream is cut (no close_notify, reset, error): nothing can be written to it any more.
    pub fn broken(&self) -> bool {
        matches!(self.end, Some(TlsEnd::Truncated | TlsEnd::Reset(_)))
    }

    pub fn close_notify_sent(&self) -> bool {
        self.close_notify_sent
    }

    /// Writes what `buf` holds (as much as the socket takes). Returns whether anything
    /// changed: bytes went out, or the stream broke, in which case `buf` is discarded.
    pub fn write_from(&mut self, buf: &mut Buffer) -> bool {
        match self.write(buf.pending()) {
            Ok(n) => {
                buf.consume(n);
                true
            }
            Err(status) => {
                let broke = self.call_failed(status);
                if broke {
                    buf.discard();
                }
                broke
            }
        }
    }

    /// Sends close_notify (`shutdown`); returns whether anything changed: it went out, or
    /// the stream broke.
    pub fn send_close_notify(&mut self) -> bool {
        match self.close_notify() {
            Ok(()) => {
                self.close_notify_sent = true;
                true
            }
            Err(status) => self.call_failed(status),
        }
    }

    /// A write or close_notify that failed: blocked (nothing changed), or the stream broke.
    fn call_failed(&mut self, status: TlsStatus) -> bool {
        match status {
            TlsStatus::Blocked(_) => false,
            TlsStatus::Ended(end) => {
                self.end = Some(broken_by(end));
                true
            }
        }
    }

    /// How the connection ended as this side sees it, once this side is done: both
    /// close_notifys (`clean`), ours unanswered, or the peer's stream cut before ours went out.
    pub fn ending(&self) -> Option<CloseKind> {
        match (&self.end, self.close_notify_sent) {
            (Some(TlsEnd::CloseNotify), true) => Some(CloseKind::Clean),
            (Some(_), true) => Some(CloseKind::PeerDidNotAnswer),
            (Some(TlsEnd::Truncated), false) => Some(CloseKind::TruncatedByClient),
            (Some(TlsEnd::Reset(_)), false) => Some(CloseKind::ResetByClient),
            (Some(TlsEnd::CloseNotify) | None, false) | (None, true) => None,
        }
    }

    /// Ends the connection uncleanly (DESIGN §3): the fatal `internal_error` alert when it can
    /// go out without blocking, then a reset when the stream is dropped ([`abort::abort`]).
    pub fn abort(&mut self) {
        abort::abort(&mut self.stream);
    }

    /// How the connection ended when the closure's deadline passed first.
    pub fn ending_at_deadline(&self) -> CloseKind {
        if self.close_notify_sent {
            CloseKind::PeerDidNotAnswer
        } else {
            CloseKind::WriteStalled
        }
    }

    /// Adds the socket to `set` for what the blocked calls wait for (nothing when none is).
    pub fn poll_on(&self, set: &mut PollSet) -> Slot {
        let mut interest = Interest::default();
        for want in [self.read_waits, self.write_waits].into_iter().flatten() {
            interest.on(want);
        }
        set.add(self.socket().as_raw_fd(), interest.read, interest.write)
    }

    /// Lets every blocked call be tried again, whatever poll reported.
    pub fn forget_waits(&mut self) {
        self.read_waits = None;
        self.write_waits = None;
    }

    /// After poll: the calls whose awaited readiness came may be tried again.
    pub fn woken(&mut self, set: &PollSet, slot: Slot) {
        let (readable, writable) = (set.readable(slot), set.writable(slot));
        for waits in [&mut self.read_waits, &mut self.write_waits] {
            match waits {
                Some(Want::Read) if readable => *waits = None,
                Some(Want::Write) if writable => *waits = None,
                _ => {}
            }
        }
    }
}

/// Classifies a failed call and, when it blocked, records what it waits for in `waits`.
fn remember_wait(waits: &mut Option<Want>, err: &ssl::Error) -> TlsStatus {
    let status = classify(err);
    if let TlsStatus::Blocked(want) = status {
        *waits = Some(want);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::{Duration, Instant};

    use crate::tls::close::TlsEnd;

    /// A TLS connection over loopback TCP: (our non-blocking server side, a blocking client).
    fn tls_pair() -> (TlsSide, SslStream<TcpStream>) {
        let (ours, client) = crate::tls::test_pair::loopback_pair(None);
        ours.get_ref().set_nonblocking(true).unwrap();
        (TlsSide::new(ours), client)
    }

    /// Polls for what `side` waits for (at most 5 s), then tells it what came.
    fn poll(side: &mut TlsSide) {
        let mut set = PollSet::new();
        let slot = side.poll_on(&mut set);
        set.wait(Some(Instant::now() + Duration::from_secs(5))).unwrap();
        side.woken(&set, slot);
    }

    /// Repeats `call` each time poll reports what it waits for, until it succeeds.
    fn retry<T>(side: &mut TlsSide, mut call: impl FnMut(&mut TlsSide) -> Result<T, TlsStatus>) -> T {
        loop {
            match call(side) {
                Ok(value) => return value,
                Err(TlsStatus::Blocked(_)) => poll(side),
                Err(end) => panic!("the stream ended: {end:?}"),
            }
        }
    }

    #[test]
    fn a_blocked_read_waits_until_poll_reports_data() {
        let (mut side, mut peer) = tls_pair();
        let mut buf = [0u8; 64];
        assert_eq!(side.read(&mut buf), Err(TlsStatus::Blocked(Want::Read)));
        assert!(!side.may_read());
        peer.write_all(b"hello").unwrap();
        poll(&mut side);
        assert!(side.may_read());
        assert_eq!(side.read(&mut buf), Ok(5));
        assert_eq!(side.bytes_in(), 5);
    }

    /// A worker calls OPENSSL_thread_stop() (handshake_memory::release) on a thread that goes on
    /// using OpenSSL: the open connection, and the next handshake, must still work.
    #[test]
    fn tls_keeps_working_on_a_thread_whose_openssl_state_was_released() {
        std::thread::spawn(|| {
            let (mut side, mut peer) = tls_pair();
            crate::tls::handshake_memory::release();
            peer.write_all(b"after").unwrap();
            let mut got = Vec::with_capacity(64);
            retry(&mut side, |side| side.read_appending(&mut got));
            assert_eq!(got, b"after");
            retry(&mut side, |side| side.write(b"reply"));
            let mut buf = [0u8; 5];
            std::io::Read::read_exact(&mut peer, &mut buf).unwrap();
            assert_eq!(&buf, b"reply");

            crate::tls::handshake_memory::release();
            let (mut next, mut peer) = tls_pair();
            peer.write_all(b"next").unwrap();
            let mut got = Vec::with_capacity(64);
            retry(&mut next, |side| side.read_appending(&mut got));
            assert_eq!(got, b"next");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn reads_append_to_what_the_vec_holds() {
        let (mut side, mut peer) = tls_pair();
        let mut got = Vec::with_capacity(64);
        got.extend_from_slice(b"say ");
        peer.write_all(b"hello").unwrap();
        retry(&mut side, |side| side.read_appending(&mut got));
        assert_eq!(got, b"say hello");
        assert_eq!(side.bytes_in(), 5);
    }

    #[test]
    fn a_blocked_write_stays_in_progress_until_its_bytes_go_out() {
        let (mut side, mut peer) = tls_pair();
        let chunk = vec![7u8; 16 * 1024];
        let blocked = loop {
            if let Err(status) = side.write(&chunk) {
                break status;
            }
        };
        assert_eq!(blocked, TlsStatus::Blocked(Want::Write));
        assert!(side.write_in_progress() && !side.may_write());

        let reader = std::thread::spawn(move || {
            let (mut total, mut buf) = (0, vec![0u8; 64 * 1024]);
            loop {
                match peer.ssl_read(&mut buf) {
                    Ok(n) => total += n as u64,
                    Err(err) => return (total, classify(&err)),
                }
            }
        });
        retry(&mut side, |side| side.write(&chunk));
        assert!(!side.write_in_progress());
        retry(&mut side, TlsSide::close_notify);
        let (received, end) = reader.join().unwrap();
        assert_eq!(received, side.bytes_out());
        assert_eq!(end, TlsStatus::Ended(TlsEnd::CloseNotify));
    }
}
