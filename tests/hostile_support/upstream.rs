//! An echo upstream that can crash and come back on the same port: `down()` closes the
//! listener (new connects are refused) and resets every live connection (RST, as a crashed
//! process would); `up()` listens again.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often idle threads look at the generation counter.
const TICK: Duration = Duration::from_millis(10);

pub struct Flapping {
    addr: SocketAddr,
    /// Bumped by every `down()`; threads of an older generation end (connections with RST).
    generation: Arc<AtomicU64>,
    live: Arc<AtomicUsize>,
    pub accepted: Arc<AtomicUsize>,
    acceptor: Option<JoinHandle<()>>,
}

impl Flapping {
    /// Listens on 127.0.0.1:0 and echoes.
    pub fn start() -> Flapping {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let mut up = Flapping {
            addr,
            generation: Arc::new(AtomicU64::new(0)),
            live: Arc::new(AtomicUsize::new(0)),
            accepted: Arc::new(AtomicUsize::new(0)),
            acceptor: None,
        };
        up.serve(listener);
        up
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn is_up(&self) -> bool {
        self.acceptor.is_some()
    }

    /// Crashes: stops listening and resets every connection; returns once all are gone.
    pub fn down(&mut self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.join().expect("acceptor panicked");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.live.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(TICK);
        }
    }

    /// Listens again on the same port.
    pub fn up(&mut self) {
        assert!(self.acceptor.is_none(), "already up");
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding {}: {e}; retrying", self.addr);
                    thread::sleep(TICK);
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let generation = Arc::clone(&self.generation);
        let live = Arc::clone(&self.live);
        let accepted = Arc::clone(&self.accepted);
        let mine = generation.load(Ordering::SeqCst);
        self.acceptor = Some(thread::spawn(move || {
            while generation.load(Ordering::SeqCst) == mine {
                match listener.accept() {
                    Ok((stream, _)) => {
                        accepted.fetch_add(1, Ordering::SeqCst);
                        live.fetch_add(1, Ordering::SeqCst);
                        let (generation, live) = (Arc::clone(&generation), Arc::clone(&live));
                        thread::spawn(move || {
                            echo(stream, &generation, mine);
                            live.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(TICK),
                    Err(_) => thread::sleep(TICK),
                }
            }
        }));
    }
}

impl Drop for Flapping {
    fn drop(&mut self) {
        self.down();
    }
}

/// Echoes until the relay's FIN (then FIN back) or until the generation moves on (then RST).
fn echo(mut stream: TcpStream, generation: &AtomicU64, mine: u64) {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(TICK)).unwrap();
    let mut buf = [0u8; 16384];
    loop {
        if generation.load(Ordering::SeqCst) != mine {
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            // SAFETY: a valid socket and a correctly sized linger struct.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&stream),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    &linger as *const libc::linger as *const libc::c_void,
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            return; // dropped with linger 0: RST
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                let _ = stream.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}
