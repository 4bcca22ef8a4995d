//! One connection of `tlsrelay connect`: stdin → TLS and TLS → stdout in one poll(2) loop on
//! a non-blocking socket (DESIGN §3 facts), ending with the TLS closure: our close_notify
//! when the user is done, then the server's, for at most --close-timeout of silence.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use openssl::ssl::SslStream;

use super::closing::LastLine;
use super::console::Console;
use super::interrupt::Interrupt;
use crate::error::describe_io;
use crate::sys::PollSet;
use crate::tls::close::{TlsEnd, TlsStatus};
use crate::tls::side::TlsSide;

/// Plaintext read from the server at once: one full TLS record.
const READ_SIZE: usize = 16 * 1024;

/// An end the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    StdinEof,
    Interrupt,
    /// stdout failed (a closed pipe, a full disk): nothing more can be shown.
    StdoutFailed(String),
}

/// How the server's side ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Its close_notify arrived.
    Clean,
    /// TCP EOF without close_notify.
    Truncated,
    /// A reset or a fatal TLS error, with the reason.
    Lost(String),
    /// We sent close_notify (or could not) and the server stayed silent past the close timeout.
    NoAnswer,
    /// The user would not wait any longer (a second Ctrl-C, a dead stdout).
    Abandoned,
}

/// Everything the reconnection policy needs to know about a finished session.
#[derive(Debug)]
pub struct Outcome {
    pub end: End,
    pub requested: Option<Request>,
    /// REASON when the server's last line was `* closing: REASON`.
    pub closing: Option<String>,
    pub lived: Duration,
}

pub struct Session<'a> {
    tls: TlsSide,
    console: &'a mut Console,
    interrupt: &'a Interrupt,
    close_timeout: Duration,
    inbox: Box<[u8]>,
    server_end: Option<End>,
    requested: Option<Request>,
    /// Stop now: no more waiting for anything.
    abort: bool,
    /// When the closure gives up; pushed back by every byte that moves.
    deadline: Option<Instant>,
    last_line: LastLine,
    started: Instant,
}

impl<'a> Session<'a> {
    pub fn new(
        tls: SslStream<TcpStream>,
        console: &'a mut Console,
        interrupt: &'a Interrupt,
        close_timeout: Duration,
    ) -> Self {
        Session {
            tls: TlsSide::new(tls),
            console,
            interrupt,
            close_timeout,
            inbox: vec![0u8; READ_SIZE].into_boxed_slice(),
            server_end: None,
            requested: None,
            abort: false,
            deadline: None,
            last_line: LastLine::default(),
            started: Instant::now(),
        }
    }

    /// Relays until the session has ended; the socket is closed on return.
    pub fn run(mut self) -> Outcome {
        if self.console.stdin_fd().is_none() {
            self.request(Request::StdinEof); // fd 0 closed: an empty stdin
        }
        loop {
            self.pump();
            if let Some(end) = self.outcome() {
                return Outcome {
                    end,
                    requested: self.requested,
                    closing: self.last_line.closing_reason(),
                    lived: self.started.elapsed(),
                };
            }
            self.wait();
        }
    }

    /// Every non-blocking step that can make progress, until none does.
    fn pump(&mut self) {
        loop {
            // Unlike the relay, every call is tried each round: as a TLS 1.2 client we may be
            // asked to renegotiate, and then a read can consume the input a blocked write waits
            // for, which poll would never report. One interactive connection can afford it.
            self.tls.forget_waits();
            let mut progress = self.read_server();
            progress |= self.write_server();
            progress |= self.close_notify_if_due();
            if !progress {
                return;
            }
        }
    }

    // ---- server → stdout ----

    fn read_server(&mut self) -> bool {
        if self.server_end.is_some() || !self.tls.may_read() {
            return false;
        }
        match self.tls.read(&mut self.inbox) {
            Ok(n) => {
                self.show(n);
                true
            }
            Err(TlsStatus::Blocked(_)) => false,
            Err(TlsStatus::Ended(end)) => {
                self.server_ended(end);
                true
            }
        }
    }

    /// Writes the first `n` bytes of the inbox to stdout (blocking: that is the backpressure).
    fn show(&mut self, n: usize) {
        self.touch();
        let data = &self.inbox[..n];
        self.last_line.feed(data);
        if matches!(self.requested, Some(Request::StdoutFailed(_))) {
            return;
        }
        if let Err(err) = self.console.write_stdout(data) {
            self.requested = Some(Request::StdoutFailed(describe_io(&err)));
            self.abort = true;
        }
    }

    fn server_ended(&mut self, end: TlsEnd) {
        self.server_end = Some(match end {
            TlsEnd::CloseNotify => End::Clean,
            TlsEnd::Truncated => End::Truncated,
            TlsEnd::Reset(reason) => End::Lost(reason),
        });
        // Answering its close_notify is bounded like any closure.
        self.deadline.get_or_insert(Instant::now() + self.close_timeout);
    }

    // ---- stdin → server ----

    fn write_server(&mut self) -> bool {
        let may_write = match self.server_end {
            None => true,
            // A started write is finished before our close_notify queues behind it.
            Some(End::Clean) => self.tls.write_in_progress(),
            Some(_) => false,
        };
        if !may_write
            || !self.tls.may_write()
            || self.tls.close_notify_sent()
            || self.console.outgoing.is_empty()
        {
            return false;
        }
        let progress = self.tls.write_from(&mut self.console.outgoing);
        self.console.outgoing.release();
        self.note_broken_write();
        if progress {
            self.touch();
        }
        progress
    }

    /// Reads stdin once, because poll said it is readable (so the read cannot block).
    fn read_stdin(&mut self) {
        match self.console.read_stdin() {
            Ok(false) => {}
            Ok(true) => self.request(Request::StdinEof),
            Err(err) => {
                eprintln!("cannot read stdin: {}; closing the connection", describe_io(&err));
                self.request(Request::StdinEof);
            }
        }
    }

    fn takes_stdin(&self) -> bool {
        self.requested.is_none() && self.server_end.is_none() && self.console.outgoing.is_empty()
    }

    // ---- the closure ----

    /// The user is done: close_notify goes out once stdin's last bytes are sent.
    fn request(&mut self, why: Request) {
        if self.requested.is_none() {
            self.requested = Some(why);
            self.deadline = Some(Instant::now() + self.close_timeout);
        }
    }

    fn close_notify_if_due(&mut self) -> bool {
        if self.tls.close_notify_sent() || self.tls.write_in_progress() || !self.tls.may_write() {
            return false;
        }
        let due = match self.server_end {
            Some(End::Clean) => true, // answer at once; unsent stdin bytes wait for a reconnect
            Some(_) => false,         // never shutdown() after an error (DESIGN §3 facts)
            None => self.requested.is_some() && self.console.outgoing.is_empty(),
        };
        if !due {
            return false;
        }
        let progress = self.tls.send_close_notify();
        self.note_broken_write();
        progress
    }

    /// A write or close_notify found the stream broken: that is how the server's side ended.
    fn note_broken_write(&mut self) {
        if self.server_end.is_none() && self.tls.broken() {
            if let Some(end) = self.tls.end().cloned() {
                self.server_ended(end);
            }
        }
    }

    /// Data moved: the closure's silence bound starts again.
    fn touch(&mut self) {
        if let Some(deadline) = self.deadline.as_mut() {
            *deadline = Instant::now() + self.close_timeout;
        }
    }

    /// The session's end, once reached.
    fn outcome(&mut self) -> Option<End> {
        let end = match &self.server_end {
            Some(End::Clean) if self.tls.close_notify_sent() => return Some(End::Clean),
            Some(End::Clean) => End::Clean, // still answering it
            Some(end) => return Some(end.clone()),
            None if self.abort => End::Abandoned,
            None => End::NoAnswer,
        };
        let out_of_time = self.abort || self.deadline.is_some_and(|at| Instant::now() >= at);
        if !out_of_time {
            return None;
        }
        if !self.tls.close_notify_sent() && !self.tls.write_in_progress() {
            let _ = self.tls.close_notify(); // one try without waiting: time is up
        }
        Some(end)
    }

    /// Sleeps in poll(2) until the socket, stdin, Ctrl-C or the closure's deadline needs us.
    fn wait(&mut self) {
        let mut set = PollSet::new();
        let tls_slot = self.tls.poll_on(&mut set);
        let stdin = match self.console.stdin_fd() {
            Some(fd) if self.takes_stdin() => set.add(fd, true, false),
            _ => None,
        };
        // The stop beacon stays lit once pressed: stop watching it after acting on it.
        let stop = match self.requested {
            Some(Request::Interrupt) => None,
            _ => set.add(self.interrupt.stop.fd(), true, false),
        };
        let fast = set.add(self.interrupt.fast.fd(), true, false);
        if let Err(err) = set.wait(self.deadline) {
            self.server_ended(TlsEnd::Reset(format!("poll failed: {}", describe_io(&err))));
            return;
        }
        self.tls.woken(&set, tls_slot);
        if set.ready(fast) {
            self.abort = true;
        } else if set.ready(stop) {
            match self.requested {
                None => self.request(Request::Interrupt),
                Some(_) => self.abort = true, // already closing: Ctrl-C means stop waiting
            }
        }
        if set.ready(stdin) && self.takes_stdin() {
            self.read_stdin();
        }
    }
}
