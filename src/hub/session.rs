//! A hub client's worker loop: lines from the client go to the hub, its outbox goes to the
//! client, and every close the server starts is announced by `* closing: REASON` (DESIGN §5).

use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;
use log::{debug, warn};
use openssl::ssl::SslStream;

use crate::buffer::Buffer;
use crate::config::RelayConfig;
use crate::hub::lines::{Framed, LineFramer};
use crate::hub::outbox::{Outbox, TOO_SLOW_AFTER};
use crate::hub::room::{HubMsg, LeaveReason};
use crate::stop::{CloseReason, Shutdown};
use crate::sys::{self, PollSet};
use crate::tls::close::{CloseKind, TlsEnd, TlsStatus};
use crate::tls::handshake_memory;
use crate::tls::side::TlsSide;

/// Plaintext read from the client per call: one TLS record.
const READ_CHUNK: usize = 16 * 1024;

/// Bytes taken from the outbox per `ssl_write`.
const WRITE_CHUNK: usize = 32 * 1024;

/// Rounds of the pump that moved bytes between two looks at poll(2): a blocked read is
/// retried only once poll reports the socket readable, and a busy outbox never lets the pump
/// sleep (the same rule as the forward pump's).
const ROUNDS_BETWEEN_POLLS: u32 = 16;

/// A close the server starts, with the reason the client reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerClose {
    Shutdown,
    Upgrade,
    Idle,
    Quit,
    TooSlow,
}

impl ServerClose {
    fn text(self) -> &'static str {
        match self {
            ServerClose::Shutdown => "shutdown",
            ServerClose::Upgrade => "upgrade",
            ServerClose::Idle => "idle",
            ServerClose::Quit => "quit",
            ServerClose::TooSlow => "too slow",
        }
    }

    fn leave_reason(self) -> LeaveReason {
        match self {
            ServerClose::Shutdown | ServerClose::Upgrade => LeaveReason::Silent,
            ServerClose::Idle => LeaveReason::Idle,
            ServerClose::Quit => LeaveReason::Quit,
            ServerClose::TooSlow => LeaveReason::TooSlow,
        }
    }
}

pub struct Session<'a> {
    id: u64,
    tls: TlsSide,
    config: &'a RelayConfig,
    shutdown: &'a Shutdown,
    hub: Sender<HubMsg>,
    outbox: Arc<Outbox>,
    framer: LineFramer,
    /// Bytes just read from the client, framed at once; capacity only while a pump pass runs.
    from_client: Vec<u8>,
    to_client: Buffer,
    /// Set when the server decided to close; the announcement is queued once.
    server_close: Option<ServerClose>,
    announced: bool,
    /// A closure began (the client's TLS 1.3 close_notify, or ours but for too slow and fast
    /// stops): the client still gets what the hub had queued for it then, up to the hub's mark
    /// in its outbox (DESIGN §3, §7), before the closing line and our close_notify.
    last_delivery: bool,
    deadline: Option<Instant>,
    last_activity: Instant,
    handshake_memory: handshake_memory::Release,
    /// The client's plaintext totals, for the `closed:` line once [`Session::run`] returns.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl<'a> Session<'a> {
    pub fn new(
        id: u64,
        tls: SslStream<TcpStream>,
        outbox: Arc<Outbox>,
        config: &'a RelayConfig,
        shutdown: &'a Shutdown,
        hub: Sender<HubMsg>,
    ) -> Self {
        Session {
            id,
            tls: TlsSide::new(tls),
            config,
            shutdown,
            hub,
            outbox,
            framer: LineFramer::default(),
            from_client: Vec::new(),
            to_client: Buffer::new(WRITE_CHUNK),
            server_close: None,
            announced: false,
            last_delivery: false,
            deadline: None,
            last_activity: Instant::now(),
            handshake_memory: handshake_memory::Release::after_handshake(),
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// Joins the hub, serves the client until it is closed, leaves the hub.
    pub fn run(&mut self) -> CloseKind {
        let _ = self.hub.send(HubMsg::Join { id: self.id, outbox: self.outbox.clone() });
        let kind = self.serve();
        let _ = self.hub.send(HubMsg::Leave { id: self.id, reason: self.leave_reason(&kind) });
        self.bytes_in = self.tls.bytes_in();
        self.bytes_out = self.tls.bytes_out();
        kind
    }

    fn serve(&mut self) -> CloseKind {
        loop {
            self.pump();
            if let Some(kind) = self.outcome() {
                if matches!(kind, CloseKind::WriteStalled) {
                    warn!("conn {} client stopped reading during the closure; connection reset", self.id);
                    sys::set_linger_zero(self.tls.socket());
                }
                return kind;
            }
            if let Err(err) = self.wait() {
                warn!("conn {} poll failed: {err}", self.id);
                sys::set_linger_zero(self.tls.socket());
                return CloseKind::WriteStalled;
            }
        }
    }

    fn leave_reason(&self, kind: &CloseKind) -> LeaveReason {
        if let Some(close) = self.server_close {
            return close.leave_reason();
        }
        match kind {
            CloseKind::Clean | CloseKind::PeerDidNotAnswer => LeaveReason::Quit,
            _ => LeaveReason::ConnectionLost,
        }
    }

    fn pump(&mut self) {
        for round in 1.. {
            let mut progress = self.read_client();
            progress |= self.write_client();
            if self.closing() && self.deadline.is_none() {
                self.deadline = Some(Instant::now() + self.config.close_timeout);
            }
            if !progress {
                self.to_client.release();
                self.from_client = Vec::new(); // an idle connection holds no read buffer
                return;
            }
            if round % ROUNDS_BETWEEN_POLLS == 0 {
                // A look without sleeping: what the client says while its outbox streams.
                if let Err(err) = self.poll(Some(Instant::now())) {
                    debug!("conn {} poll failed: {err}", self.id);
                }
            }
        }
    }

    fn closing(&self) -> bool {
        self.tls.end().is_some() || self.server_close.is_some()
    }

    // ---- client → hub ----

    fn read_client(&mut self) -> bool {
        if self.tls.end().is_some()
            || !self.tls.may_read()
            || (self.server_close.is_none() && !self.outbox.may_send())
        {
            return false;
        }
        self.from_client.reserve(READ_CHUNK);
        match self.tls.read_appending(&mut self.from_client) {
            Ok(_) => {
                self.last_activity = Instant::now();
                // What the client said before a close we decided still reaches the room (it
                // may have arrived in the same wake-up as the stop); after its /quit, nothing.
                if self.server_close != Some(ServerClose::Quit) {
                    self.take_lines();
                }
                self.from_client.clear();
                true
            }
            Err(TlsStatus::Blocked(_)) => false,
            Err(TlsStatus::Ended(end)) => {
                debug!("conn {} client ended: {end:?}", self.id);
                if self.tls.half_closed() && self.server_close.is_none() {
                    self.deliver_what_is_queued();
                }
                true
            }
        }
    }

    /// Frames the bytes just read and hands each line to the hub.
    fn take_lines(&mut self) {
        let mut framed = Vec::new();
        self.framer.push(&self.from_client, &mut framed);
        for item in framed {
            match item {
                Framed::Line(text) if text.split(' ').next() == Some("/quit") => {
                    self.close_by_server(ServerClose::Quit);
                    return;
                }
                Framed::Line(text) => {
                    self.outbox.line_sent();
                    let _ = self.hub.send(HubMsg::Line { id: self.id, text });
                }
                Framed::TooLong => {
                    self.outbox.line_sent();
                    let _ = self.hub.send(HubMsg::LineTooLong { id: self.id });
                }
            }
        }
    }

    fn close_by_server(&mut self, reason: ServerClose) {
        if self.server_close.is_none() && self.tls.end().is_none() {
            debug!("conn {} closing: {}", self.id, reason.text());
            self.server_close = Some(reason);
            // A client too slow to read gets nothing more; any other still gets what was
            // queued for it (a client accepted just before an upgrade: its welcome).
            if reason != ServerClose::TooSlow {
                self.deliver_what_is_queued();
            }
        }
    }

    /// Asks the hub to mark what the outbox holds now as the last the client gets.
    fn deliver_what_is_queued(&mut self) {
        self.last_delivery = true;
        let _ = self.hub.send(HubMsg::LastDelivery { id: self.id });
    }

    // ---- hub → client ----

    fn write_client(&mut self) -> bool {
        if self.tls.broken() || self.tls.close_notify_sent() || !self.tls.may_write() {
            return false;
        }
        if self.tls.end().is_some() && !self.last_delivery && !self.tls.write_in_progress() {
            // The client closed: it gets our close_notify at once (TLS 1.2 forbids more data).
            self.to_client.discard();
        }
        if self.to_client.is_empty() && !self.fill_to_client() {
            if self.wants_close_notify() {
                return self.tls.send_close_notify();
            }
            return false;
        }
        let progress = self.tls.write_from(&mut self.to_client);
        if progress {
            self.last_activity = Instant::now();
        }
        progress
    }

    /// Refills `to_client`: from the outbox while open, and once a closure began only up to
    /// the hub's mark; then the closing announcement.
    fn fill_to_client(&mut self) -> bool {
        if self.tls.end().is_some() && !self.last_delivery {
            return false; // the client closed (TLS 1.2): reply with close_notify at once
        }
        if self.server_close.is_none() || self.last_delivery {
            let n = self.outbox.take(self.to_client.space());
            // SAFETY: `take` wrote `n` bytes into the space.
            unsafe { self.to_client.filled(n) };
            if n > 0 {
                return true;
            }
        }
        if self.last_delivery && !self.outbox.last_delivery_done() {
            return false; // the hub's mark has not come yet
        }
        match self.server_close {
            Some(reason) if !self.announced => {
                self.announced = true;
                let line = format!("* closing: {}\n", reason.text());
                self.to_client.push(line.as_bytes());
                true
            }
            _ => false,
        }
    }

    fn wants_close_notify(&self) -> bool {
        match self.tls.end() {
            Some(TlsEnd::CloseNotify) => !self.last_delivery || self.outbox.last_delivery_done(),
            Some(_) => false,
            None => self.announced,
        }
    }

    // ---- ends and waiting ----

    fn outcome(&self) -> Option<CloseKind> {
        let past_deadline = self.deadline.is_some_and(|at| Instant::now() >= at);
        self.tls.ending().or_else(|| past_deadline.then(|| self.tls.ending_at_deadline()))
    }

    /// Sleeps in poll(2) until the client, its outbox, a stop or a deadline needs us.
    fn wait(&mut self) -> std::io::Result<()> {
        self.poll(self.next_deadline())
    }

    /// Polls until `deadline` at the latest, then acts on what it reported.
    fn poll(&mut self, deadline: Option<Instant>) -> std::io::Result<()> {
        let mut set = PollSet::new();
        let tls_slot = self.tls.poll_on(&mut set);
        let open = !self.closing();
        // Polled while open, and cleared on every wake-up: it tells of new lines, of room to
        // send more, and of a full outbox (the too-slow clock).
        let outbox_slot =
            if open || self.last_delivery { set.add(self.outbox.fd(), true, false) } else { None };
        let stop_slot = if open { set.add(self.shutdown.close.fd(), true, false) } else { None };
        let fast_slot = set.add(self.shutdown.fast.fd(), true, false);
        set.wait(deadline)?;
        self.handshake_memory.run_if_due();

        self.tls.woken(&set, tls_slot);
        if set.ready(outbox_slot) {
            self.outbox.clear_wake();
        }
        if set.ready(fast_slot) {
            self.close_by_server(ServerClose::Shutdown);
            self.last_delivery = false; // a fast stop waits for nothing
            self.deadline = Some(Instant::now());
        } else if set.ready(stop_slot) {
            self.close_by_server(match self.shutdown.reason() {
                CloseReason::Shutdown => ServerClose::Shutdown,
                CloseReason::Upgrade => ServerClose::Upgrade,
            });
        } else if open && self.too_slow() {
            self.outbox.clear();
            self.close_by_server(ServerClose::TooSlow);
        } else if open && self.idle_expired() {
            self.close_by_server(ServerClose::Idle);
        }
        Ok(())
    }

    fn too_slow(&self) -> bool {
        self.outbox.full_since().is_some_and(|since| since.elapsed() >= TOO_SLOW_AFTER)
    }

    fn idle_expired(&self) -> bool {
        !self.config.idle_timeout.is_zero() && self.last_activity.elapsed() >= self.config.idle_timeout
    }

    fn next_deadline(&self) -> Option<Instant> {
        if self.closing() {
            return self.deadline;
        }
        let idle =
            (!self.config.idle_timeout.is_zero()).then(|| self.last_activity + self.config.idle_timeout);
        let slow = self.outbox.full_since().map(|since| since + TOO_SLOW_AFTER);
        [idle, slow, self.handshake_memory.deadline()].into_iter().flatten().min()
    }
}
