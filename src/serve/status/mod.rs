//! The `--status` endpoint (DESIGN §12): plain HTTP on a thread of its own, answering
//! `GET /metrics` and `GET /health`, 404 to anything else.
//!
//! One thread polls the listening socket and at most [`MAX_AT_ONCE`] connections, each
//! bounded to [`MAX_REQUEST`] bytes and [`REQUEST_DEADLINE`]; when all slots are taken the
//! oldest connection is dropped for the newest, so a slowloris cannot starve a balancer's
//! health check. Nothing here is shared with the workers but atomics read at scrape time:
//! whatever arrives on this port, relaying goes on at its own pace.

pub mod health;
pub mod http;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::warn;

use crate::sys;
pub use health::{Health, HealthState};
use http::{Parse, Request, MAX_REQUEST};

/// Connections served at once; one more drops the oldest.
pub const MAX_AT_ONCE: usize = 32;

/// A request is read and answered within this, or dropped.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

/// How long accepting pauses after EMFILE and its kin, as on the TLS listeners.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What the endpoint answers from; called on the status thread only.
pub trait Source: Send + 'static {
    /// The whole `/metrics` body.
    fn metrics(&self) -> String;
    fn health(&self) -> Health;
}

/// Starts the status thread on `listener`; `stop_fd` is the listeners' stop beacon.
pub fn spawn(listener: TcpListener, source: Box<dyn Source>, stop_fd: RawFd) -> io::Result<JoinHandle<()>> {
    thread::Builder::new().name("status".into()).spawn(move || Endpoint::new(source).run(&listener, stop_fd))
}

/// One client of the endpoint: its request so far, then its response being written.
struct Conn {
    stream: TcpStream,
    received: Vec<u8>,
    reply: Vec<u8>,
    sent: usize,
    deadline: Instant,
}

/// What a connection needs next.
#[derive(PartialEq, Eq)]
enum Step {
    Wait,
    Done,
}

struct Endpoint {
    source: Box<dyn Source>,
    /// Oldest first.
    conns: Vec<Conn>,
    /// After an accept failed (EMFILE and kin): the listening socket is left out of poll
    /// until then, or the connection waiting in its queue would make poll return at once.
    accept_paused_until: Option<Instant>,
    /// Accept failures since the last warning, which comes at most once a second.
    accept_failures: u64,
    last_warning: Option<Instant>,
}

impl Endpoint {
    fn new(source: Box<dyn Source>) -> Self {
        Endpoint {
            source,
            conns: Vec::new(),
            accept_paused_until: None,
            accept_failures: 0,
            last_warning: None,
        }
    }

    /// `stop_fd` (the listeners' stop) ends the endpoint only when an upgrade handed over:
    /// the new process answers from the same socket, and the requests already read here are
    /// still answered (within their deadline). In a stop, the endpoint keeps answering
    /// `503 stopping` until the process exits, so a balancer never sees a refused check.
    fn run(mut self, listener: &TcpListener, stop_fd: RawFd) {
        let (mut handed_over, mut watch_stop) = (false, true);
        loop {
            if handed_over && self.conns.is_empty() {
                return;
            }
            // poll(2) skips negative descriptors.
            let paused = self.accept_paused_until.is_some_and(|until| Instant::now() < until);
            let listen_fd = if handed_over || paused { -1 } else { listener.as_raw_fd() };
            let stop_fd = if watch_stop { stop_fd } else { -1 };
            let mut fds = vec![poll_fd(listen_fd, true), poll_fd(stop_fd, true)];
            fds.extend(self.conns.iter().map(|c| poll_fd(c.stream.as_raw_fd(), c.reply.is_empty())));
            let pause_end = self.accept_paused_until.filter(|_| paused);
            let deadline = self.conns.iter().map(|c| c.deadline).chain(pause_end).min();
            if let Err(err) = sys::poll_fds(&mut fds, deadline) {
                warn!("status: poll failed: {err}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
            if fds[1].revents != 0 {
                // The beacon stays lit: look at it once.
                watch_stop = false;
                handed_over = self.source.health() == Health::Draining;
            }
            self.serve_ready(&fds[2..]);
            if fds[0].revents != 0 && !handed_over && !paused {
                self.accept_all(listener);
            }
        }
    }

    /// Advances every connection poll reported, and drops the finished and the late ones.
    fn serve_ready(&mut self, fds: &[libc::pollfd]) {
        let now = Instant::now();
        let mut index = 0;
        self.conns.retain_mut(|conn| {
            let ready = fds[index].revents != 0;
            index += 1;
            if ready && advance(conn, self.source.as_ref()) == Step::Done {
                let _ = conn.stream.shutdown(Shutdown::Write);
                return false;
            }
            now < conn.deadline
        });
    }

    fn accept_all(&mut self, listener: &TcpListener) {
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if self.conns.len() >= MAX_AT_ONCE {
                        self.conns.remove(0);
                    }
                    let deadline = Instant::now() + REQUEST_DEADLINE;
                    self.conns.push(Conn {
                        stream,
                        received: Vec::new(),
                        reply: Vec::new(),
                        sent: 0,
                        deadline,
                    });
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(err) => return self.pause_accepting(&err),
            }
        }
    }
}

impl Endpoint {
    /// EMFILE and its kin: accepting pauses for [`ACCEPT_BACKOFF`] (no spin), and the warning
    /// comes at most once a second, with the count.
    fn pause_accepting(&mut self, err: &io::Error) {
        let now = Instant::now();
        self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
        self.accept_failures += 1;
        if self.last_warning.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
            warn!(
                "status: accept failed: {err} ({} in the last second); pausing accepts",
                self.accept_failures
            );
            self.accept_failures = 0;
            self.last_warning = Some(now);
        }
    }
}

fn poll_fd(fd: RawFd, read: bool) -> libc::pollfd {
    let events = if read { libc::POLLIN } else { libc::POLLOUT };
    libc::pollfd { fd, events, revents: 0 }
}

/// Reads what has come (until the head is complete), then writes what the socket takes.
fn advance(conn: &mut Conn, source: &dyn Source) -> Step {
    if conn.reply.is_empty() {
        match read_request(conn) {
            Ok(Some(parsed)) => conn.reply = answer(parsed, source),
            Ok(None) => return Step::Wait,
            Err(_) => return Step::Done,
        }
    }
    while conn.sent < conn.reply.len() {
        match conn.stream.write(&conn.reply[conn.sent..]) {
            Ok(0) => return Step::Done,
            Ok(n) => conn.sent += n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
            Err(_) => return Step::Done,
        }
    }
    Step::Done
}

/// `Ok(None)`: the head is not complete yet. An error or end of stream ends the connection.
fn read_request(conn: &mut Conn) -> io::Result<Option<Parse>> {
    let mut chunk = [0u8; 4096];
    loop {
        match conn.stream.read(&mut chunk) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => conn.received.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(err) => return Err(err),
        }
        match http::parse(&conn.received) {
            Parse::Incomplete => {}
            parsed => return Ok(Some(parsed)),
        }
        // parse() answers 431 before this could grow past the bound by more than a chunk.
        debug_assert!(conn.received.len() < MAX_REQUEST + chunk.len());
    }
}

/// The response to a parsed request head.
fn answer(parsed: Parse, source: &dyn Source) -> Vec<u8> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let (path, head) = match parsed {
        Parse::Done(Request::Get { path, head }) => (path, head),
        Parse::Done(Request::OtherMethod) => return http::response(404, TEXT, "not found\n", false),
        Parse::Bad(status) => return http::response(status, TEXT, "bad request\n", false),
        Parse::Incomplete => return http::response(400, TEXT, "bad request\n", false),
    };
    match path.as_str() {
        "/metrics" => http::response(200, http::METRICS_CONTENT_TYPE, &source.metrics(), head),
        "/health" => {
            let health = source.health();
            http::response(health.status(), TEXT, &format!("{}\n", health.word()), head)
        }
        _ => http::response(404, TEXT, "not found\n", head),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Fixed(Arc<HealthState>);

    impl Source for Fixed {
        fn metrics(&self) -> String {
            "# HELP x X.\n# TYPE x gauge\nx 1\n".into()
        }
        fn health(&self) -> Health {
            self.0.get()
        }
    }

    /// An endpoint on 127.0.0.1:0 and its stop beacon.
    fn endpoint() -> (std::net::SocketAddr, Arc<HealthState>, sys::Beacon, JoinHandle<()>) {
        let listener = sys::bind_listener("127.0.0.1:0".parse().unwrap(), 64, false).unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Arc::new(HealthState::default());
        let stop = sys::Beacon::new().unwrap();
        let handle = spawn(listener, Box::new(Fixed(health.clone())), stop.fd()).unwrap();
        (addr, health, stop, handle)
    }

    fn get(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(request).unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    }

    #[test]
    fn answers_metrics_health_and_404() {
        let (addr, health, stop, handle) = endpoint();
        let metrics = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(metrics.contains("Content-Type: text/plain; version=0.0.4"));
        assert!(metrics.ends_with("\r\n\r\n# HELP x X.\n# TYPE x gauge\nx 1\n"));
        assert!(get(addr, b"GET /health HTTP/1.1\r\n\r\n").ends_with("\r\n\r\nok\n"));
        health.set(Health::Stopping);
        let stopping = get(addr, b"GET /health HTTP/1.0\r\n\r\n");
        assert!(
            stopping.starts_with("HTTP/1.1 503 ") && stopping.ends_with("\r\n\r\nstopping\n"),
            "{stopping}"
        );
        assert!(get(addr, b"GET /other HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(get(addr, b"DELETE /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(get(addr, b"\x16\x03\x01\x00\x05hello\r\n\r\n").starts_with("HTTP/1.1 400 "));
        // A stop lights the listeners' beacon: /health goes on answering until the exit.
        stop.light();
        thread::sleep(Duration::from_millis(50));
        assert!(get(addr, b"GET /health HTTP/1.1\r\n\r\n").ends_with("\r\n\r\nstopping\n"));
        assert!(!handle.is_finished());
    }

    #[test]
    fn after_an_upgrades_hand_over_the_endpoint_ends() {
        let (_addr, health, stop, handle) = endpoint();
        health.set(Health::Draining);
        stop.light();
        handle.join().unwrap();
    }

    #[test]
    fn silent_clients_are_dropped_for_new_ones_and_by_the_deadline() {
        let (addr, health, stop, handle) = endpoint();
        let silent: Vec<TcpStream> =
            (0..MAX_AT_ONCE + 5).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let started = Instant::now();
        assert!(get(addr, b"GET /health HTTP/1.1\r\n\r\n").ends_with("ok\n"), "a full table still answers");
        assert!(started.elapsed() < REQUEST_DEADLINE, "it did not wait for a silent one's deadline");
        let mut last = silent.into_iter().last().unwrap();
        last.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1];
        let waited = Instant::now();
        assert!(matches!(last.read(&mut buf), Ok(0) | Err(_)), "a silent client is dropped");
        assert!(waited.elapsed() < REQUEST_DEADLINE + Duration::from_secs(1));
        health.set(Health::Draining);
        stop.light();
        handle.join().unwrap();
    }
}
