//! Scripted plain-TCP upstreams on 127.0.0.1:0 that report what they saw from the relay.
//!
//! Each accepted connection runs the script in its own thread. A script reports one
//! [`Seen`] per connection: the bytes the relay delivered and how the relay's side of the
//! TCP connection ended (FIN: read returns 0; RST: read fails with ConnectionReset).
//!
//! Nothing but the relay ever connects to an upstream: its accept loop is woken for the end
//! by shutting its listening socket down (not by a connection of its own, which could land on
//! another test's upstream if the port had been taken over), and [`closed_port`] keeps its
//! port bound so that no upstream can be handed a port another test expects to refuse.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// No upstream connection in these tests lives longer; a read past it is reported as Timeout.
pub const CONN_DEADLINE: Duration = Duration::from_secs(30);

/// How the relay's side of an upstream connection ended, as the upstream saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// read returned 0: the relay sent FIN (an orderly close).
    Fin,
    /// read failed with ConnectionReset: the relay sent RST.
    Reset,
    /// nothing happened until [`CONN_DEADLINE`].
    Timeout,
    /// the script itself reset the connection (SO_LINGER 0) before the relay ended it.
    WeReset,
    /// any other error, with its text.
    Error(String),
}

/// What one upstream connection received from the relay and how the relay ended it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub received: Vec<u8>,
    pub end: End,
}

impl Seen {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.received).into_owned()
    }
}

/// A script: what the upstream does with one connection; it sends one Seen to `report`.
pub type Script = Arc<dyn Fn(TcpStream, &Sender<Seen>) + Send + Sync + 'static>;

/// A listening upstream. Its accept thread ends when the Upstream is dropped.
pub struct Upstream {
    addr: SocketAddr,
    accepted: Receiver<()>,
    seen: Receiver<Seen>,
    /// The peer address of every connection accepted so far, in order.
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    /// The listening socket (a duplicate descriptor), shut down to end the accept loop.
    listening: TcpListener,
}

impl Upstream {
    /// Listens on 127.0.0.1:0 and runs `script` for every connection.
    pub fn start(script: impl Fn(TcpStream, &Sender<Seen>) + Send + Sync + 'static) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let (accepted_tx, accepted) = channel();
        let (seen_tx, seen) = channel();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let listening = listener.try_clone().expect("dup the upstream's listening socket");
        let script: Script = Arc::new(script);
        let (stopping, accepted_peers) = (Arc::clone(&stop), Arc::clone(&peers));
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                if let Ok(peer) = stream.peer_addr() {
                    accepted_peers.lock().unwrap().push(peer);
                }
                stream.set_read_timeout(Some(CONN_DEADLINE)).unwrap();
                stream.set_write_timeout(Some(CONN_DEADLINE)).unwrap();
                let _ = accepted_tx.send(());
                let (script, report) = (Arc::clone(&script), seen_tx.clone());
                thread::spawn(move || script(stream, &report));
            }
        });
        Upstream { addr, accepted, seen, peers, stop, listening }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address as the `--upstream` argument.
    pub fn arg(&self) -> String {
        self.addr.to_string()
    }

    /// Waits until the relay has connected once more; panics after `timeout`.
    pub fn wait_accepted(&self, timeout: Duration) {
        self.accepted.recv_timeout(timeout).expect("the relay did not connect to the upstream in time");
    }

    /// Whether the relay connected once more within `timeout` (for "it never connected").
    pub fn try_accepted(&self, timeout: Duration) -> bool {
        self.accepted.recv_timeout(timeout).is_ok()
    }

    /// The next connection's report; panics after `timeout`.
    pub fn next_seen(&self, timeout: Duration) -> Seen {
        self.seen.recv_timeout(timeout).expect("no upstream connection ended in time")
    }

    /// The peer address of every connection accepted so far (one per relayed client).
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }

    /// The next report, or None after `timeout` (for "nothing reached the upstream").
    pub fn try_next_seen(&self, timeout: Duration) -> Option<Seen> {
        self.seen.recv_timeout(timeout).ok()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Linux ends a blocked accept(2) on a listening socket that is shut down (EINVAL).
        // SAFETY: shutdown(2) on a descriptor this Upstream owns.
        unsafe { libc::shutdown(self.listening.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

/// A port on 127.0.0.1 where a connection is refused, reserved while this value lives: its
/// socket stays bound without listening, so no other test's bind(0) gets the port and
/// answers a connection meant to be refused.
pub struct ClosedPort {
    _bound: OwnedFd,
    addr: SocketAddr,
}

impl ClosedPort {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A fresh [`ClosedPort`].
pub fn closed_port() -> ClosedPort {
    use nix::sys::socket::{bind, getsockname, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("socket");
    bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).expect("bind 127.0.0.1:0");
    let bound: SockaddrIn = getsockname(fd.as_raw_fd()).expect("getsockname");
    ClosedPort { _bound: fd, addr: SocketAddr::from(([127, 0, 0, 1], bound.port())) }
}

/// An upstream connection as the scripts below use it: TCP here, a unix stream in
/// [`super::unix_upstream`]; the scripts are written once for both.
pub trait Conn: Read + Write + Send + Sized + 'static {
    fn shutdown_write(&self) -> io::Result<()>;
    fn try_clone_conn(&self) -> io::Result<Self>;
}

impl Conn for TcpStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
    fn try_clone_conn(&self) -> io::Result<Self> {
        self.try_clone()
    }
}

impl Conn for UnixStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
    fn try_clone_conn(&self) -> io::Result<Self> {
        self.try_clone()
    }
}

/// Reads until the relay ends the connection; returns everything and how it ended.
pub fn read_to_end(stream: &mut impl Read) -> Seen {
    let mut received = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Seen { received, end: End::Fin },
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Seen { received, end: end_of(&e) },
        }
    }
}

/// Reads until `n` bytes arrived or the connection ended.
pub fn read_at_least(stream: &mut impl Read, n: usize) -> Seen {
    let mut received = Vec::new();
    let mut buf = vec![0u8; 65536];
    while received.len() < n {
        match stream.read(&mut buf) {
            Ok(0) => return Seen { received, end: End::Fin },
            Ok(k) => received.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Seen { received, end: end_of(&e) },
        }
    }
    Seen { received, end: End::Timeout } // not ended yet; the caller decides what follows
}

fn end_of(e: &std::io::Error) -> End {
    match e.kind() {
        ErrorKind::ConnectionReset => End::Reset,
        ErrorKind::WouldBlock | ErrorKind::TimedOut => End::Timeout,
        _ => End::Error(e.to_string()),
    }
}

/// Makes the next close send RST instead of FIN (SO_LINGER {1, 0}).
pub fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket descriptor and a correctly sized linger struct.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt(SO_LINGER): {}", std::io::Error::last_os_error());
}

/// The deterministic payload shared with tls_peer.py's --send-bytes: byte i is i % 251.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

// ---- scripts ---------------------------------------------------------------------------

/// Echoes everything back; on the relay's FIN it sends FIN too. Reports what it received.
pub fn echo<S: Conn>() -> impl Fn(S, &Sender<Seen>) + Send + Sync + 'static {
    |mut stream, report| {
        let mut received = Vec::new();
        let mut buf = vec![0u8; 65536];
        let end = loop {
            match stream.read(&mut buf) {
                Ok(0) => break End::Fin,
                Ok(n) => {
                    received.extend_from_slice(&buf[..n]);
                    if stream.write_all(&buf[..n]).is_err() {
                        break read_to_end(&mut stream).end;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => break end_of(&e),
            }
        };
        let _ = stream.shutdown_write();
        let _ = report.send(Seen { received, end });
    }
}

/// Only records: reads until the relay ends the connection, then closes.
pub fn record<S: Conn>() -> impl Fn(S, &Sender<Seen>) + Send + Sync + 'static {
    |mut stream, report| {
        let seen = read_to_end(&mut stream);
        let _ = report.send(seen);
    }
}

/// Reads nothing for `delay` (a slow upstream: the relay's send queue fills), then records.
pub fn slow_record<S: Conn>(delay: Duration) -> impl Fn(S, &Sender<Seen>) + Send + Sync + 'static {
    move |mut stream, report| {
        thread::sleep(delay);
        let seen = read_to_end(&mut stream);
        let _ = report.send(seen);
    }
}

/// Sends `data`, then FIN, then records what the relay still delivers and how it ends.
pub fn send_then_fin<S: Conn>(data: Vec<u8>) -> impl Fn(S, &Sender<Seen>) + Send + Sync + 'static {
    move |mut stream, report| {
        let wrote = stream.write_all(&data).and_then(|_| stream.shutdown_write());
        let mut seen = read_to_end(&mut stream);
        if let Err(e) = wrote {
            seen.end = End::Error(format!("upstream write failed: {e}"));
        }
        let _ = report.send(seen);
    }
}

/// Reads until the relay's FIN, waits `delay`, sends `reply`, then FIN (a request/response
/// service that answers once its input is complete: the TLS 1.3 half-close case).
pub fn reply_after_fin<S: Conn>(
    reply: &'static [u8],
    delay: Duration,
) -> impl Fn(S, &Sender<Seen>) + Send + Sync + 'static {
    move |mut stream, report| {
        let seen = read_to_end(&mut stream);
        if seen.end == End::Fin {
            thread::sleep(delay);
            let _ = stream.write_all(reply);
            let _ = stream.shutdown_write();
        }
        let _ = report.send(seen);
    }
}

/// Reads until the relay ends the connection, reports at once, then keeps its side open for
/// `hold` (an upstream that never answers a half-close) before closing.
pub fn report_then_hold<S: Conn>(hold: Duration) -> impl Fn(S, &Sender<Seen>) + Send + Sync + 'static {
    move |mut stream, report| {
        let seen = read_to_end(&mut stream);
        let _ = report.send(seen);
        thread::sleep(hold);
    }
}

/// Reads `n` bytes, sends `data`, then resets the connection (SO_LINGER 0 and close).
pub fn read_then_reset(
    n: usize,
    data: &'static [u8],
) -> impl Fn(TcpStream, &Sender<Seen>) + Send + Sync + 'static {
    move |mut stream, report| {
        let mut seen = read_at_least(&mut stream, n);
        if seen.received.len() >= n {
            let _ = stream.write_all(data);
            thread::sleep(Duration::from_millis(50)); // let the data leave before the RST
            set_linger_zero(&stream);
            seen.end = End::WeReset;
        }
        drop(stream);
        let _ = report.send(seen);
    }
}

/// Streams `data` at once while reading; when the relay sends FIN, finishes writing what
/// it started and then sends FIN itself. Reports what it received and how the relay ended.
pub fn stream_until_fin<S: Conn>(data: Vec<u8>) -> impl Fn(S, &Sender<Seen>) + Send + Sync + 'static {
    let data = Arc::new(data);
    move |mut stream, report| {
        let mut writer = stream.try_clone_conn().unwrap();
        let data = Arc::clone(&data);
        let written = thread::spawn(move || writer.write_all(&data).map(|_| writer));
        let mut seen = read_to_end(&mut stream);
        match written.join().unwrap() {
            Ok(writer) => {
                let _ = writer.shutdown_write();
            }
            Err(e) => seen.end = End::Error(format!("upstream write failed: {e}")),
        }
        let _ = report.send(seen);
    }
}
