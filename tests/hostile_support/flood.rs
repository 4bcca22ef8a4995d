//! Many TLS clients at once from a few threads: non-blocking sockets, one `poll(2)` loop per
//! thread, each connection a small state machine (handshake → send → expect). What comes
//! back are the live streams plus, per connection, what happened and how many bytes the
//! server sent before a failure (0 = closed before any handshake).

use crate::common::tls_client::tcp_connect;
use openssl::ssl::{ErrorCode, HandshakeError, MidHandshakeSslStream, SslConnector, SslStream};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// What each connection does after its handshake.
#[derive(Clone, Debug)]
pub enum Expect {
    /// Nothing: the handshake is the whole job.
    Nothing,
    /// Send these bytes and read them back (an echo upstream).
    Echo(Vec<u8>),
    /// Read one line ending in `\n` (the hub's welcome).
    Line,
}

/// One flood: `count` connections to `addr`, all started at once.
#[derive(Clone, Debug)]
pub struct Plan {
    pub addr: SocketAddr,
    pub count: usize,
    pub expect: Expect,
    /// For every connection together, from the first connect.
    pub deadline: Duration,
    /// Client threads, each driving its share of the connections.
    pub threads: usize,
    /// Source address to bind (127.0.0.2 ...); None lets the kernel pick.
    pub source: Option<IpAddr>,
}

impl Plan {
    pub fn new(addr: SocketAddr, count: usize, expect: Expect, deadline: Duration) -> Plan {
        Plan { addr, count, expect, deadline, threads: 2, source: None }
    }
}

/// How one connection fared.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Handshake done and the expected exchange completed.
    Served,
    /// The TCP connect failed.
    ConnectFailed(String),
    /// The handshake failed; `server_bytes` is how much the server had sent by then.
    HandshakeFailed { server_bytes: u64, error: String },
    /// The handshake worked, the exchange after it did not.
    ExchangeFailed(String),
    /// Still unfinished at the deadline, in this stage.
    TimedOut(&'static str),
}

/// One connection of a flood; `tls` is the live stream when it was served (blocking again,
/// with a 10 s read timeout, ready for more round trips).
pub struct Conn {
    pub outcome: Outcome,
    pub tls: Option<SslStream<Counted>>,
    /// From the start of the flood to the end of the handshake.
    pub handshake_after: Option<Duration>,
    /// Bytes the server sent (raw TCP, TLS records included).
    pub server_bytes: u64,
}

/// A TCP stream that counts what it reads.
#[derive(Debug)]
pub struct Counted {
    pub tcp: TcpStream,
    pub read: u64,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.tcp.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// Runs the flood and returns every connection in order.
pub fn run(tls: &SslConnector, plan: &Plan) -> Vec<Conn> {
    let start = Instant::now();
    let threads = plan.threads.clamp(1, plan.count.max(1));
    let shares: Vec<usize> =
        (0..threads).map(|t| plan.count / threads + usize::from(t < plan.count % threads)).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> =
            shares.iter().map(|&n| scope.spawn(move || drive(tls, plan, n, start))).collect();
        handles.into_iter().flat_map(|h| h.join().expect("flood thread panicked")).collect()
    })
}

enum Stage {
    Handshake(MidHandshakeSslStream<Counted>),
    Exchange { tls: SslStream<Counted>, sent: usize, got: Vec<u8> },
    Done(Conn),
}

struct Slot {
    stage: Option<Stage>,
    want_write: bool,
    handshake_after: Option<Duration>,
}

fn drive(tls: &SslConnector, plan: &Plan, n: usize, start: Instant) -> Vec<Conn> {
    let deadline = start + plan.deadline;
    // Every connect and ClientHello first: the flood arrives at once.
    let mut slots: Vec<Slot> = (0..n).map(|_| open(tls, plan, start)).collect();
    loop {
        let mut fds = Vec::new();
        let mut index = Vec::new();
        for (i, slot) in slots.iter().enumerate() {
            if let Some(fd) = slot.fd() {
                let events = if slot.want_write { libc::POLLOUT } else { libc::POLLIN };
                fds.push(libc::pollfd { fd, events, revents: 0 });
                index.push(i);
            }
        }
        if fds.is_empty() {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let ms = left.as_millis().clamp(1, 1000) as i32;
        // SAFETY: fds is a live, correctly sized vector of pollfd records.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            panic!("poll: {}", io::Error::last_os_error());
        }
        for (pfd, &i) in fds.iter().zip(&index) {
            if pfd.revents != 0 {
                step(&mut slots[i], &plan.expect, start);
            }
        }
    }
    slots.into_iter().map(finish).collect()
}

impl Slot {
    fn fd(&self) -> Option<i32> {
        match self.stage.as_ref()? {
            Stage::Handshake(mid) => Some(mid.get_ref().tcp.as_raw_fd()),
            Stage::Exchange { tls, .. } => Some(tls.get_ref().tcp.as_raw_fd()),
            Stage::Done(_) => None,
        }
    }
}

fn open(tls: &SslConnector, plan: &Plan, start: Instant) -> Slot {
    let done = |outcome| Slot {
        stage: Some(Stage::Done(failed(outcome, 0))),
        want_write: false,
        handshake_after: None,
    };
    let tcp = match tcp_connect(plan.addr, plan.source, Duration::from_secs(10)) {
        Ok(tcp) => tcp,
        Err(e) => return done(Outcome::ConnectFailed(e.to_string())),
    };
    tcp.set_nonblocking(true).unwrap();
    let _ = tcp.set_nodelay(true);
    let ssl = tls.configure().unwrap().into_ssl("localhost").unwrap();
    let mut slot = Slot { stage: None, want_write: false, handshake_after: None };
    slot.after_handshake_step(ssl.connect(Counted { tcp, read: 0 }), start);
    slot
}

impl Slot {
    fn after_handshake_step(
        &mut self,
        result: Result<SslStream<Counted>, HandshakeError<Counted>>,
        start: Instant,
    ) {
        self.stage = Some(match result {
            Ok(tls) => {
                self.handshake_after = Some(start.elapsed());
                self.want_write = false;
                Stage::Exchange { tls, sent: 0, got: Vec::new() }
            }
            Err(HandshakeError::WouldBlock(mid)) => {
                self.want_write = mid.error().code() == ErrorCode::WANT_WRITE;
                Stage::Handshake(mid)
            }
            Err(HandshakeError::Failure(mid)) => {
                let bytes = mid.get_ref().read;
                Stage::Done(failed(
                    Outcome::HandshakeFailed { server_bytes: bytes, error: mid.error().to_string() },
                    bytes,
                ))
            }
            Err(HandshakeError::SetupFailure(e)) => {
                Stage::Done(failed(Outcome::HandshakeFailed { server_bytes: 0, error: e.to_string() }, 0))
            }
        });
    }
}

fn failed(outcome: Outcome, server_bytes: u64) -> Conn {
    Conn { outcome, tls: None, handshake_after: None, server_bytes }
}

fn step(slot: &mut Slot, expect: &Expect, start: Instant) {
    match slot.stage.take() {
        Some(Stage::Handshake(mid)) => {
            slot.after_handshake_step(mid.handshake(), start);
            if matches!(slot.stage, Some(Stage::Exchange { .. })) {
                step(slot, expect, start); // the exchange may start at once
            }
        }
        Some(Stage::Exchange { tls, sent, got }) => exchange(slot, tls, sent, got, expect),
        other => slot.stage = other,
    }
}

/// Writes what is due, then reads until the expectation is met or the socket would block.
fn exchange(
    slot: &mut Slot,
    mut tls: SslStream<Counted>,
    mut sent: usize,
    mut got: Vec<u8>,
    expect: &Expect,
) {
    let fail = |slot: &mut Slot, tls: SslStream<Counted>, why: String| {
        let bytes = tls.get_ref().read;
        slot.stage = Some(Stage::Done(Conn {
            outcome: Outcome::ExchangeFailed(why),
            tls: None,
            handshake_after: slot.handshake_after,
            server_bytes: bytes,
        }));
    };
    let payload: &[u8] = match expect {
        Expect::Echo(bytes) => bytes,
        _ => &[],
    };
    while sent < payload.len() {
        match tls.ssl_write(&payload[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.code() == ErrorCode::WANT_WRITE || e.code() == ErrorCode::WANT_READ => {
                slot.want_write = e.code() == ErrorCode::WANT_WRITE;
                slot.stage = Some(Stage::Exchange { tls, sent, got });
                return;
            }
            Err(e) => return fail(slot, tls, format!("write: {e}")),
        }
    }
    let mut buf = [0u8; 4096];
    loop {
        let complete = match expect {
            Expect::Nothing => true,
            Expect::Echo(bytes) => got.len() >= bytes.len(),
            Expect::Line => got.contains(&b'\n'),
        };
        if complete {
            if let Expect::Echo(bytes) = expect {
                if got[..] != bytes[..] {
                    return fail(slot, tls, format!("echo differs: {:?}", String::from_utf8_lossy(&got)));
                }
            }
            tls.get_ref().tcp.set_nonblocking(false).unwrap();
            tls.get_ref().tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            tls.get_ref().tcp.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
            let bytes = tls.get_ref().read;
            slot.stage = Some(Stage::Done(Conn {
                outcome: Outcome::Served,
                tls: Some(tls),
                handshake_after: slot.handshake_after,
                server_bytes: bytes,
            }));
            return;
        }
        match tls.ssl_read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.code() == ErrorCode::WANT_READ || e.code() == ErrorCode::WANT_WRITE => {
                slot.want_write = e.code() == ErrorCode::WANT_WRITE;
                slot.stage = Some(Stage::Exchange { tls, sent, got });
                return;
            }
            Err(e) => return fail(slot, tls, format!("read after {} B: {e}", got.len())),
        }
    }
}

fn finish(slot: Slot) -> Conn {
    let stage_name = match &slot.stage {
        Some(Stage::Handshake(_)) => "handshake",
        Some(Stage::Exchange { .. }) => "exchange",
        _ => "",
    };
    match slot.stage {
        Some(Stage::Done(conn)) => conn,
        Some(Stage::Handshake(mid)) => failed(Outcome::TimedOut(stage_name), mid.get_ref().read),
        Some(Stage::Exchange { tls, .. }) => Conn {
            outcome: Outcome::TimedOut(stage_name),
            tls: None,
            handshake_after: slot.handshake_after,
            server_bytes: tls.get_ref().read,
        },
        None => failed(Outcome::TimedOut("start"), 0),
    }
}

/// Counts of each kind of outcome, for assertion messages.
pub fn summary(conns: &[Conn]) -> String {
    let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for c in conns {
        let key = match &c.outcome {
            Outcome::Served => "served".to_string(),
            Outcome::ConnectFailed(e) => format!("connect failed: {e}"),
            Outcome::HandshakeFailed { server_bytes, error } => {
                format!("handshake failed after {server_bytes} server bytes: {}", first_line(error))
            }
            Outcome::ExchangeFailed(e) => format!("exchange failed: {}", first_line(e)),
            Outcome::TimedOut(stage) => format!("timed out in {stage}"),
        };
        *counts.entry(key).or_default() += 1;
    }
    counts.iter().map(|(k, v)| format!("{v} × {k}")).collect::<Vec<_>>().join("; ")
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// How many connections were served.
pub fn served(conns: &[Conn]) -> usize {
    conns.iter().filter(|c| c.outcome == Outcome::Served).count()
}
