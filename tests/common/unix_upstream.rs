//! Scripted unix-socket upstreams (`--upstream unix:/PATH` and `unix:@NAME`), the unix twin
//! of [`super::upstream`]: each reports one [`Seen`] per connection. A unix socket has no
//! reset, so a relay that would reset a TCP upstream shows here as every byte, then EOF.

use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tempfile::TempDir;

use super::upstream::{End, Seen, CONN_DEADLINE};
use super::{forward_to, Forward};

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

/// A relay in forward mode to a unix upstream.
pub type UnixForward = Forward<UnixUpstream>;

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
    let target = upstream.arg();
    forward_to(upstream, &target, extra)
}

// ---- scripts ---------------------------------------------------------------------------

// The scripts that do the same on TCP and unix sockets are written once, in `upstream`.
#[allow(unused_imports)] // each test binary uses its own few
pub use super::upstream::{
    echo, read_to_end, record, reply_after_fin, report_then_hold, send_then_fin, slow_record,
    stream_until_fin,
};

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
