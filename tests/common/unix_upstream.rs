//! Scripted unix-socket upstreams (`--upstream unix:/PATH` and `unix:@NAME`), the unix twin
//! of [`super::upstream`]: each reports one [`Seen`] per connection. A unix socket has no
//! reset, so a relay that would reset a TCP upstream shows here as every byte, then EOF.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tempfile::TempDir;

use super::daemon::Daemon;
use super::upstream::{End, Seen, CONN_DEADLINE};
use super::{secs, Certs, Closed};

/// A script: what the upstream does with one connection; it sends one Seen to `report`.
pub type UnixScript = Arc<dyn Fn(UnixStream, &Sender<Seen>) + Send + Sync + 'static>;

/// A listening unix upstream; its accept thread ends when it is dropped.
pub struct UnixUpstream {
    arg: String,
    addr: SocketAddr,
    accepted: Receiver<()>,
    seen: Receiver<Seen>,
    stop: Arc<AtomicBool>,
    _dir: Option<TempDir>,
}

impl UnixUpstream {
    /// Listens on `DIR/upstream.sock` in a fresh temporary directory.
    pub fn at_path(script: impl Fn(UnixStream, &Sender<Seen>) + Send + Sync + 'static) -> UnixUpstream {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("upstream.sock");
        let listener = UnixListener::bind(&path).expect("bind unix upstream");
        let arg = format!("unix:{}", path.display());
        UnixUpstream::serve(listener, arg, Arc::new(script), Some(dir))
    }

    /// Listens on a fresh abstract name (`unix:@NAME`).
    pub fn abstract_name(script: impl Fn(UnixStream, &Sender<Seen>) + Send + Sync + 'static) -> UnixUpstream {
        let name = unique_name();
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixListener::bind_addr(&addr).expect("bind abstract upstream");
        UnixUpstream::serve(listener, format!("unix:@{name}"), Arc::new(script), None)
    }

    fn serve(listener: UnixListener, arg: String, script: UnixScript, dir: Option<TempDir>) -> UnixUpstream {
        let addr = listener.local_addr().unwrap();
        let (accepted_tx, accepted) = channel();
        let (seen_tx, seen) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                stream.set_read_timeout(Some(CONN_DEADLINE)).unwrap();
                stream.set_write_timeout(Some(CONN_DEADLINE)).unwrap();
                let _ = accepted_tx.send(());
                let (script, report) = (Arc::clone(&script), seen_tx.clone());
                thread::spawn(move || script(stream, &report));
            }
        });
        UnixUpstream { arg, addr, accepted, seen, stop, _dir: dir }
    }

    /// The `--upstream` argument.
    pub fn arg(&self) -> String {
        self.arg.clone()
    }

    pub fn wait_accepted(&self, timeout: Duration) {
        self.accepted.recv_timeout(timeout).expect("the relay did not connect to the unix upstream in time");
    }

    pub fn next_seen(&self, timeout: Duration) -> Seen {
        self.seen.recv_timeout(timeout).expect("no unix upstream connection ended in time")
    }
}

impl Drop for UnixUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect_addr(&self.addr); // wakes accept
    }
}

/// An abstract socket name no other test uses.
pub fn unique_name() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!("tlsrelay-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst))
}

/// A socket path in a fresh directory where nothing listens.
pub fn missing_socket() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nobody.sock");
    (dir, path)
}

/// A relay in forward mode to a unix upstream. Drops the daemon first, then the upstream.
pub struct UnixForward {
    pub daemon: Daemon,
    pub upstream: UnixUpstream,
    pub certs: Certs,
}

/// Starts `tlsrelay serve --upstream unix:DIR/upstream.sock` with `extra`.
pub fn forward_unix(
    script: impl Fn(UnixStream, &Sender<Seen>) + Send + Sync + 'static,
    extra: &[&str],
) -> UnixForward {
    start_forward(UnixUpstream::at_path(script), extra)
}

/// Like [`forward_unix`], to an abstract socket.
pub fn forward_abstract(
    script: impl Fn(UnixStream, &Sender<Seen>) + Send + Sync + 'static,
    extra: &[&str],
) -> UnixForward {
    start_forward(UnixUpstream::abstract_name(script), extra)
}

fn start_forward(upstream: UnixUpstream, extra: &[&str]) -> UnixForward {
    let certs = Certs::new();
    let target = upstream.arg();
    let mut args = vec!["--upstream", target.as_str()];
    args.extend_from_slice(extra);
    let daemon = Daemon::start(&certs, &args);
    UnixForward { daemon, upstream, certs }
}

impl UnixForward {
    pub fn port(&self) -> u16 {
        self.daemon.port()
    }

    pub fn expect_closed(&self, kind: &str) -> Closed {
        let closed = self.daemon.wait_closed(secs(15.0));
        assert_eq!(closed.kind, kind, "wrong close kind; log:\n{}", self.daemon.log_text());
        closed
    }
}

/// Reads until the relay ends the connection: everything, and how it ended.
pub fn read_to_end(stream: &mut UnixStream) -> Seen {
    let mut received = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Seen { received, end: End::Fin },
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Seen { received, end: End::Reset },
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Seen { received, end: End::Timeout }
            }
            Err(e) => return Seen { received, end: End::Error(e.to_string()) },
        }
    }
}

// ---- scripts ---------------------------------------------------------------------------

/// Echoes everything back; on the relay's EOF it shuts down its side too.
pub fn echo() -> impl Fn(UnixStream, &Sender<Seen>) + Send + Sync + 'static {
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
                Err(e) => break End::Error(e.to_string()),
            }
        };
        let _ = stream.shutdown(Shutdown::Write);
        let _ = report.send(Seen { received, end });
    }
}

/// Only records: reads until the relay ends the connection.
pub fn record() -> impl Fn(UnixStream, &Sender<Seen>) + Send + Sync + 'static {
    |mut stream, report| {
        let _ = report.send(read_to_end(&mut stream));
    }
}

/// Reads nothing for `delay` (the relay's writes back up), then records.
pub fn slow_record(delay: Duration) -> impl Fn(UnixStream, &Sender<Seen>) + Send + Sync + 'static {
    move |mut stream, report| {
        thread::sleep(delay);
        let _ = report.send(read_to_end(&mut stream));
    }
}

/// Sends `data`, then EOF, then records what the relay still delivers.
pub fn send_then_fin(data: Vec<u8>) -> impl Fn(UnixStream, &Sender<Seen>) + Send + Sync + 'static {
    move |mut stream, report| {
        let wrote = stream.write_all(&data).and_then(|_| stream.shutdown(Shutdown::Write));
        let mut seen = read_to_end(&mut stream);
        if let Err(e) = wrote {
            seen.end = End::Error(format!("upstream write failed: {e}"));
        }
        let _ = report.send(seen);
    }
}

/// Reads until the relay's EOF, waits `delay`, answers `reply`, then EOF.
pub fn reply_after_fin(
    reply: &'static [u8],
    delay: Duration,
) -> impl Fn(UnixStream, &Sender<Seen>) + Send + Sync + 'static {
    move |mut stream, report| {
        let seen = read_to_end(&mut stream);
        if seen.end == End::Fin {
            thread::sleep(delay);
            let _ = stream.write_all(reply);
            let _ = stream.shutdown(Shutdown::Write);
        }
        let _ = report.send(seen);
    }
}

/// Reads until the relay's EOF, reports, then keeps its side open for `hold`.
pub fn report_then_hold(hold: Duration) -> impl Fn(UnixStream, &Sender<Seen>) + Send + Sync + 'static {
    move |mut stream, report| {
        let seen = read_to_end(&mut stream);
        let _ = report.send(seen);
        thread::sleep(hold);
    }
}

/// Reads `n` bytes, sends `data`, then closes while the relay still sends: the unix way of
/// failing mid-stream (the relay's next read or write fails with ECONNRESET or EPIPE).
pub fn read_then_close(
    n: usize,
    data: &'static [u8],
) -> impl Fn(UnixStream, &Sender<Seen>) + Send + Sync + 'static {
    move |mut stream, report| {
        let mut received = vec![0u8; n];
        let got = stream.read_exact(&mut received).is_ok();
        if got {
            let _ = stream.write_all(data);
            thread::sleep(Duration::from_millis(50));
        }
        drop(stream);
        let _ = report.send(Seen { received, end: End::WeReset });
    }
}

/// Streams `data` while reading; on the relay's EOF finishes writing, then EOF.
pub fn stream_until_fin(data: Vec<u8>) -> impl Fn(UnixStream, &Sender<Seen>) + Send + Sync + 'static {
    let data = Arc::new(data);
    move |mut stream, report| {
        let mut writer = stream.try_clone().unwrap();
        let data = Arc::clone(&data);
        let written = thread::spawn(move || writer.write_all(&data).map(|_| writer));
        let mut seen = read_to_end(&mut stream);
        match written.join().unwrap() {
            Ok(writer) => {
                let _ = writer.shutdown(Shutdown::Write);
            }
            Err(e) => seen.end = End::Error(format!("upstream write failed: {e}")),
        }
        let _ = report.send(seen);
    }
}
