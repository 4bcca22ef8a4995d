//! The bench backend: serves the bench protocol over plain TCP (behind a relay) or TLS 1.3
//! (the no-relay ceiling). One thread per active connection; idle plain connections are
//! parked in a single poll thread, so the backend adds no thread per idle connection and
//! the system-wide KernelStack growth in M5 belongs to the relay.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod};

use crate::proto::{self, ACK, DOWNLOAD, ECHO, IDLE, UPLOAD};
use crate::BackendArgs;

/// Read and write chunk of the backend.
const BUF: usize = 256 * 1024;
static ZEROS: [u8; BUF] = [0u8; BUF];

pub fn run(args: &BackendArgs) -> io::Result<()> {
    exit_after(Duration::from_secs(args.max_secs));
    if let Some(path) = &args.unix {
        return run_unix(path, args.proxy_header);
    }
    let listener = TcpListener::bind(&args.listen)?;
    // std listens with a backlog of 128; a burst of relay connects deserves more.
    // SAFETY: listen(2) on our own listening socket only changes its backlog.
    unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    eprintln!("listening on {}", listener.local_addr()?);
    let tls = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => Some(Arc::new(acceptor(cert, key)?)),
        _ => None,
    };
    let parker = Arc::new(Parker::start()?);
    for conn in listener.incoming() {
        let tcp = match conn {
            Ok(tcp) => tcp,
            Err(err) => {
                eprintln!("tlsrelay-load backend: accept: {err}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (tls, parker, proxy_header) = (tls.clone(), parker.clone(), args.proxy_header);
        let spawned = thread::Builder::new().stack_size(256 * 1024).spawn(move || {
            let _ = match tls {
                Some(acceptor) => serve_tls(&acceptor, tcp),
                None => serve_plain(tcp, &parker, proxy_header),
            };
        });
        if let Err(err) = spawned {
            eprintln!("tlsrelay-load backend: cannot spawn a thread: {err}");
        }
    }
    Ok(())
}

fn acceptor(cert: &Path, key: &Path) -> io::Result<SslAcceptor> {
    let build = || -> Result<SslAcceptor, openssl::error::ErrorStack> {
        let mut b = SslAcceptor::mozilla_modern_v5(SslMethod::tls_server())?;
        b.set_certificate_chain_file(cert)?;
        b.set_private_key_file(key, SslFiletype::PEM)?;
        b.check_private_key()?;
        Ok(b.build())
    };
    build().map_err(|e| io::Error::other(format!("TLS backend: {e}")))
}

fn exit_after(max: Duration) {
    thread::spawn(move || {
        thread::sleep(max);
        eprintln!("tlsrelay-load backend: --max-secs reached, exiting");
        std::process::exit(0);
    });
}

/// The bench protocol on a unix socket (thread per connection; idle ones too).
fn run_unix(path: &Path, proxy_header: bool) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    eprintln!("listening on unix:{}", path.display());
    for conn in listener.incoming() {
        let Ok(mut stream) = conn else { continue };
        let spawned = thread::Builder::new().stack_size(256 * 1024).spawn(move || -> io::Result<()> {
            if proxy_header {
                proto::skip_proxy_header(&mut stream)?;
            }
            let mut buf = vec![0u8; BUF];
            while let Some((op, count)) = proto::read_header(&mut stream)? {
                serve_op(&mut stream, op, count, &mut buf)?;
            }
            Ok(())
        });
        if let Err(err) = spawned {
            eprintln!("tlsrelay-load backend: cannot spawn a thread: {err}");
        }
    }
    Ok(())
}

fn serve_plain(mut tcp: TcpStream, parker: &Parker, proxy_header: bool) -> io::Result<()> {
    if proxy_header {
        proto::skip_proxy_header(&mut tcp)?;
    }
    let mut buf = vec![0u8; BUF];
    while let Some((op, count)) = proto::read_header(&mut tcp)? {
        if op == IDLE {
            parker.park(tcp);
            return Ok(());
        }
        serve_op(&mut tcp, op, count, &mut buf)?;
    }
    Ok(())
}

fn serve_tls(acceptor: &SslAcceptor, tcp: TcpStream) -> io::Result<()> {
    let mut tls = acceptor.accept(tcp).map_err(|e| io::Error::other(e.to_string()))?;
    let mut buf = vec![0u8; BUF];
    while let Some((op, count)) = proto::read_header(&mut tls)? {
        serve_op(&mut tls, op, count, &mut buf)?;
    }
    // The client's close_notify (or EOF) arrived: answer with ours.
    let _ = tls.shutdown();
    Ok(())
}

fn serve_op<S: Read + Write>(s: &mut S, op: u8, count: u64, buf: &mut [u8]) -> io::Result<()> {
    match op {
        UPLOAD => {
            proto::sink(s, count, buf)?;
            s.write_all(&[ACK])?;
            s.flush()
        }
        DOWNLOAD => proto::source(s, count, &ZEROS),
        ECHO => {
            let mut left = count;
            while left > 0 {
                let want = buf.len().min(left.min(usize::MAX as u64) as usize);
                let n = s.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                s.write_all(&buf[..n])?;
                left -= n as u64;
            }
            s.flush()
        }
        // Idle over TLS (ceiling only): wait for the end.
        IDLE => loop {
            if s.read(buf)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        },
        other => Err(io::Error::other(format!("unknown op {other}"))),
    }
}

/// One thread holding every idle plain connection in a poll set; it closes each one when
/// its peer ends it (the relay's FIN or RST).
struct Parker {
    tx: Sender<TcpStream>,
    wake: OwnedFd,
}

impl Parker {
    fn start() -> io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors we then own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by nothing else.
        let (read, wake) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let (tx, rx) = crossbeam_channel::unbounded();
        thread::Builder::new().name("parker".into()).spawn(move || hold(read, rx))?;
        Ok(Parker { tx, wake })
    }

    fn park(&self, tcp: TcpStream) {
        let _ = tcp.set_nonblocking(true);
        if self.tx.send(tcp).is_ok() {
            // SAFETY: writing one byte from a valid buffer to our pipe; a full pipe is fine.
            unsafe { libc::write(self.wake.as_raw_fd(), b"w".as_ptr().cast(), 1) };
        }
    }
}

fn hold(wake: OwnedFd, rx: Receiver<TcpStream>) {
    let mut conns: Vec<TcpStream> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut scratch = [0u8; 4096];
    loop {
        fds.clear();
        fds.push(libc::pollfd { fd: wake.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        fds.extend(conns.iter().map(|c| libc::pollfd {
            fd: c.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        // SAFETY: `fds` is a valid array of initialised pollfd records.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            thread::sleep(Duration::from_millis(1));
            continue;
        }
        if fds[0].revents != 0 {
            // SAFETY: reading into a valid buffer from our non-blocking pipe.
            while unsafe { libc::read(wake.as_raw_fd(), scratch.as_mut_ptr().cast(), scratch.len()) } > 0 {}
        }
        let mut gone = Vec::new();
        for (i, pfd) in fds[1..].iter().enumerate() {
            if pfd.revents == 0 {
                continue;
            }
            match conns[i].read(&mut scratch) {
                Ok(0) => gone.push(i),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => gone.push(i),
            }
        }
        for i in gone.into_iter().rev() {
            conns.swap_remove(i);
        }
        conns.extend(rx.try_iter());
    }
}
