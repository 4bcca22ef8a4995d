//! The forward-mode pump: one `poll(2)` loop relaying both directions of one connection and
//! carrying out every closure of DESIGN §3 (half-close, truncation, stop, deadlines).

use std::io::{self, Write};
use std::net::{Shutdown as Direction, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use log::{debug, warn};
use openssl::ssl::SslStream;

use crate::buffer::Buffer;
use crate::config::{ClientEof, RelayConfig};
use crate::error::describe_io;
use crate::stop::Shutdown;
use crate::sys::{self, PollSet};
use crate::tls::close::{CloseKind, TlsEnd, TlsStatus};
use crate::tls::handshake_memory;
use crate::tls::side::TlsSide;

use super::stream::UpstreamStream;

/// The most plaintext one TLS record carries.
const TLS_RECORD: usize = 16 * 1024;

/// Plaintext bytes in flight per direction: two full TLS records, so one `ssl_write` fills
/// the socket well while an idle connection holds nothing.
const BUFFER_SIZE: usize = 32 * 1024;

/// Rounds of the pump that moved bytes between two looks at poll(2). A call that blocked is
/// retried only once poll reports its readiness, and the pump polls only when nothing moves:
/// without a look now and then, a direction that never blocks (a long download) would keep
/// the other one, and a stop, waiting (issue 15: a request sent during a download reached the
/// upstream after 0.1–2.4 s). 16 rounds move at most 1 MiB.
const ROUNDS_BETWEEN_POLLS: u32 = 16;

/// While waiting for the upstream to acknowledge a truncated client's last bytes, how often
/// to look (no poll event exists for "send queue empty").
const SEND_QUEUE_TICK: Duration = Duration::from_millis(10);

/// How the upstream's direction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UpstreamEnd {
    Eof,
    Reset(String),
}

/// A closure in progress: it must end by `deadline`; the relay decided it when `by_us`.
#[derive(Debug, Clone, Copy)]
struct Closing {
    deadline: Instant,
    /// Until then, upstream→client data still flows; then close_notify goes out.
    relay_until: Instant,
    by_us: bool,
}

/// Which upstream operations wait for poll (the client's are in [`TlsSide`]). A blocked
/// operation is not tried again until poll reports that readiness: retrying blindly costs a
/// system call (EAGAIN) and a buffer.
#[derive(Default)]
struct Blocked {
    upstream_read: bool,
    upstream_write: bool,
    /// The truncated client's bytes are still in the upstream's send queue.
    upstream_send_queue: bool,
}

/// One connection's relay state; consumed by [`Relay::run`].
pub struct Relay<'a> {
    id: u64,
    tls: TlsSide,
    upstream: Option<UpstreamStream>,
    config: &'a RelayConfig,
    shutdown: &'a Shutdown,
    to_upstream: Buffer,
    to_client: Buffer,
    upstream_end: Option<UpstreamEnd>,
    upstream_fin_sent: bool,
    blocked: Blocked,
    closing: Option<Closing>,
    last_activity: Instant,
    handshake_memory: handshake_memory::Release,
    /// The client's plaintext totals, for the `closed:` line once [`Relay::run`] returns.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl<'a> Relay<'a> {
    /// `upstream: None` means there is none to talk to (a stop came during the connect):
    /// the client then gets the closure of an ended upstream.
    pub fn new(
        id: u64,
        tls: SslStream<TcpStream>,
        upstream: Option<UpstreamStream>,
        config: &'a RelayConfig,
        shutdown: &'a Shutdown,
    ) -> Self {
        let upstream_end = if upstream.is_none() { Some(UpstreamEnd::Eof) } else { None };
        Relay {
            id,
            tls: TlsSide::new(tls),
            upstream,
            config,
            shutdown,
            to_upstream: Buffer::new(BUFFER_SIZE),
            to_client: Buffer::new(BUFFER_SIZE),
            upstream_end,
            upstream_fin_sent: false,
            blocked: Blocked::default(),
            closing: None,
            last_activity: Instant::now(),
            handshake_memory: handshake_memory::Release::after_handshake(),
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// Relays until the connection is closed; returns how it closed.
    pub fn run(&mut self) -> CloseKind {
        let kind = self.relay_until_closed();
        self.finish(&kind);
        self.bytes_in = self.tls.bytes_in();
        self.bytes_out = self.tls.bytes_out();
        kind
    }

    fn relay_until_closed(&mut self) -> CloseKind {
        loop {
            self.pump();
            if let Some(kind) = self.outcome() {
                return kind;
            }
            if let Err(err) = self.wait() {
                warn!("conn {} poll failed: {err}", self.id);
                return CloseKind::WriteStalled;
            }
        }
    }

    /// Makes every non-blocking step possible, until none makes progress.
    fn pump(&mut self) {
        self.blocked.upstream_send_queue = false;
        for round in 1.. {
            let mut progress = self.read_client();
            progress |= self.write_upstream();
            progress |= self.read_upstream();
            progress |= self.write_client();
            self.start_closing_on_ends();
            if !progress {
                self.to_upstream.release();
                self.to_client.release();
                return;
            }
            if round % ROUNDS_BETWEEN_POLLS == 0 {
                // A look without sleeping: what waits for readiness may go again.
                if let Err(err) = self.poll(Some(Instant::now())) {
                    debug!("conn {} poll failed: {err}", self.id);
                }
            }
        }
    }

    // ---- client → upstream ----

    fn read_client(&mut self) -> bool {
        // Reading goes on while a whole TLS record still fits, so one upstream write carries
        // several records.
        if self.tls.end().is_some() || !self.tls.may_read() || self.to_upstream.room() < TLS_RECORD {
            return false;
        }
        match self.tls.read_uninit(self.to_upstream.space()) {
            Ok(n) => {
                self.last_activity = Instant::now();
                // Bytes read once the upstream takes no more are dropped; those read before
                // still go out ahead of its FIN.
                if !self.upstream_takes_no_more() {
                    // SAFETY: ssl_read reported writing `n` bytes into the space.
                    unsafe { self.to_upstream.filled(n) };
                }
                true
            }
            Err(TlsStatus::Blocked(_)) => false,
            Err(TlsStatus::Ended(end)) => {
                debug!("conn {} client ended: {end:?}", self.id);
                true
            }
        }
    }

    fn write_upstream(&mut self) -> bool {
        if self.upstream.is_none() || matches!(self.upstream_end, Some(UpstreamEnd::Reset(_))) {
            return false;
        }
        let wants_fin = self.wants_upstream_fin();
        let upstream = self.upstream.as_mut().expect("checked above");
        if self.to_upstream.is_empty() {
            if wants_fin && !self.upstream_fin_sent {
                let _ = upstream.shutdown(Direction::Write);
                self.upstream_fin_sent = true;
                return true;
            }
            return false;
        }
        if self.blocked.upstream_write {
            return false;
        }
        match upstream.write(self.to_upstream.pending()) {
            Ok(n) => {
                self.to_upstream.consume(n);
                self.last_activity = Instant::now();
                true
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                self.blocked.upstream_write = true;
                false
            }
            Err(err) => {
                self.upstream_failed(err);
                true
            }
        }
    }

    /// Whether the upstream should get its FIN once `to_upstream` is flushed.
    fn wants_upstream_fin(&self) -> bool {
        match self.tls.end() {
            Some(TlsEnd::CloseNotify) => true,
            Some(_) => self.tls.close_notify_sent() || self.config.client_eof == ClientEof::Fin,
            // After an upstream EOF we keep relaying client→upstream until the client's
            // close_notify; only a closure we decided ends that direction early.
            None => self.closing.is_some_and(|c| c.by_us),
        }
    }

    /// Client bytes read from now on have nowhere to go (the upstream has its FIN, or is gone).
    /// A closure we decided (a stop) does not count until the FIN is out: bytes the client sent
    /// before it still reach the upstream ahead of its FIN.
    fn upstream_takes_no_more(&self) -> bool {
        self.upstream.is_none()
            || self.upstream_fin_sent
            || matches!(self.upstream_end, Some(UpstreamEnd::Reset(_)))
    }

    // ---- upstream → client ----

    fn read_upstream(&mut self) -> bool {
        if self.upstream_end.is_some()
            || self.blocked.upstream_read
            || !self.to_client.is_empty()
            || !self.client_takes_data()
        {
            return false;
        }
        let Some(upstream) = self.upstream.as_mut() else { return false };
        match sys::read_uninit(upstream, self.to_client.space()) {
            Ok(0) => {
                debug!("conn {} upstream sent FIN", self.id);
                self.upstream_end = Some(UpstreamEnd::Eof);
                true
            }
            Ok(n) => {
                // SAFETY: read(2) reported writing `n` bytes into the space.
                unsafe { self.to_client.filled(n) };
                self.last_activity = Instant::now();
                true
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                self.blocked.upstream_read = true;
                false
            }
            Err(err) => {
                self.upstream_failed(err);
                true
            }
        }
    }

    /// Whether bytes from the upstream may still be sent to the client.
    fn client_takes_data(&self) -> bool {
        let open = match self.tls.end() {
            None => true,
            // TLS 1.3 lets us keep writing after the client's close_notify; TLS 1.2 does not.
            Some(TlsEnd::CloseNotify) => self.tls.is_tls13(),
            Some(_) => false,
        };
        open && !self.tls.close_notify_sent() && !self.relay_window_over()
    }

    fn relay_window_over(&self) -> bool {
        self.closing.is_some_and(|c| Instant::now() >= c.relay_until)
    }

    fn write_client(&mut self) -> bool {
        if self.tls.broken() || !self.tls.may_write() {
            return false;
        }
        if !self.to_client.is_empty()
            && !self.tls.write_in_progress()
            && !self.client_takes_data_already_read()
        {
            // TLS 1.2 after the client's close_notify: the bytes cannot be sent any more.
            self.to_client.discard();
        }
        if !self.to_client.is_empty() {
            let progress = self.tls.write_from(&mut self.to_client);
            if progress {
                self.last_activity = Instant::now();
            }
            return progress;
        }
        if self.wants_close_notify() && !self.tls.close_notify_sent() {
            return self.tls.send_close_notify();
        }
        false
    }

    /// Bytes already read from the upstream may still go out (also after the relay window:
    /// what was read before close_notify is delivered before it).
    fn client_takes_data_already_read(&self) -> bool {
        match self.tls.end() {
            None => true,
            Some(TlsEnd::CloseNotify) => self.tls.is_tls13(),
            Some(_) => false,
        }
    }

    /// Whether close_notify is due now (every byte for the client already written).
    fn wants_close_notify(&self) -> bool {
        let upstream_done = matches!(self.upstream_end, Some(UpstreamEnd::Eof));
        match self.tls.end() {
            Some(TlsEnd::CloseNotify) => !self.tls.is_tls13() || upstream_done || self.relay_window_over(),
            Some(_) => false,
            None => upstream_done || (self.closing.is_some_and(|c| c.by_us) && self.relay_window_over()),
        }
    }

    // ---- ends, closure and waiting ----

    fn upstream_failed(&mut self, err: io::Error) {
        debug!("conn {} upstream failed: {err}", self.id);
        self.upstream_end = Some(UpstreamEnd::Reset(describe_io(&err)));
        self.to_upstream.discard();
        self.to_client.discard();
    }

    /// Any end of either side starts the closure and its deadline.
    fn start_closing_on_ends(&mut self) {
        if self.closing.is_none() && (self.tls.end().is_some() || self.upstream_end.is_some()) {
            self.start_closing(false);
        }
    }

    fn start_closing(&mut self, by_us: bool) {
        let now = Instant::now();
        let total = self.config.close_timeout;
        self.closing = Some(Closing { deadline: now + total, relay_until: now + total / 2, by_us });
    }

    /// The connection's end, once one is reached.
    fn outcome(&mut self) -> Option<CloseKind> {
        if let Some(UpstreamEnd::Reset(reason)) = &self.upstream_end {
            if !self.tls.close_notify_sent() {
                warn!("conn {} upstream failed: {reason}; resetting the client", self.id);
                return Some(CloseKind::UpstreamReset);
            }
        }
        let past_deadline = self.closing.is_some_and(|c| Instant::now() >= c.deadline);
        if let Some(kind) = self.tls.ending() {
            // The client's side is done; the upstream's must be too, or out of time.
            let upstream_done = match kind {
                CloseKind::TruncatedByClient | CloseKind::ResetByClient => self.truncation_delivered(),
                _ => self.upstream_settled(),
            };
            if upstream_done || past_deadline {
                return Some(kind);
            }
        }
        past_deadline.then(|| self.tls.ending_at_deadline())
    }

    /// Every client byte given to the upstream and, with `reset`, acknowledged by it
    /// (so the RST that follows cannot destroy data still in our send queue).
    fn truncation_delivered(&mut self) -> bool {
        let Some(upstream) = &self.upstream else { return true };
        if matches!(self.upstream_end, Some(UpstreamEnd::Reset(_))) {
            return true;
        }
        if !self.to_upstream.is_empty() {
            return false;
        }
        if self.config.client_eof == ClientEof::Fin {
            return self.upstream_fin_sent;
        }
        let queued = upstream.unsent_bytes().unwrap_or(0);
        self.blocked.upstream_send_queue = queued > 0;
        queued == 0
    }

    /// The upstream got every client byte and its FIN, or cannot take any more.
    fn upstream_settled(&self) -> bool {
        self.upstream.is_none()
            || matches!(self.upstream_end, Some(UpstreamEnd::Reset(_)))
            || (self.to_upstream.is_empty() && self.upstream_fin_sent)
    }

    /// Closes the sockets the way `kind` demands: RST where the end was unclean.
    fn finish(&mut self, kind: &CloseKind) {
        match kind {
            CloseKind::UpstreamReset | CloseKind::WriteStalled => self.tls.abort(),
            CloseKind::TruncatedByClient | CloseKind::ResetByClient => {
                if let (Some(upstream), ClientEof::Reset) = (&self.upstream, self.config.client_eof) {
                    upstream.reset_on_close();
                }
            }
            _ => {}
        }
        if *kind == CloseKind::WriteStalled {
            warn!("conn {} client stopped reading during the closure; connection reset", self.id);
        }
    }

    /// Sleeps in poll(2) until a socket, a stop beacon or a deadline needs us.
    fn wait(&mut self) -> io::Result<()> {
        self.poll(self.next_deadline())
    }

    /// Polls until `deadline` at the latest; then marks the operations whose awaited readiness
    /// came as worth trying again, and acts on a stop or an idle timeout.
    fn poll(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        let mut set = PollSet::new();
        let client_slot = self.tls.poll_on(&mut set);
        let b = &self.blocked;
        let upstream_slot = match &self.upstream {
            Some(upstream) => set.add(upstream.as_raw_fd(), b.upstream_read, b.upstream_write),
            None => None,
        };
        // A closing worker drops the stop beacon: it stays readable and would make poll spin.
        let stop_slot =
            if self.closing.is_none() { set.add(self.shutdown.close.fd(), true, false) } else { None };
        let fast_slot = set.add(self.shutdown.fast.fd(), true, false);
        set.wait(deadline)?;
        self.handshake_memory.run_if_due();

        self.tls.woken(&set, client_slot);
        if set.readable(upstream_slot) {
            self.blocked.upstream_read = false;
        }
        if set.writable(upstream_slot) {
            self.blocked.upstream_write = false;
        }
        if set.ready(fast_slot) {
            self.fast_stop();
        } else if set.ready(stop_slot) {
            self.start_closing(true);
        } else if self.idle_expired() {
            debug!("conn {} idle for {:?}", self.id, self.config.idle_timeout);
            self.start_closing(true);
        }
        Ok(())
    }

    /// A fast stop: no more waiting; what can be written without blocking still is.
    fn fast_stop(&mut self) {
        let now = Instant::now();
        self.closing = Some(Closing { deadline: now, relay_until: now, by_us: true });
    }

    fn idle_expired(&self) -> bool {
        self.closing.is_none()
            && !self.config.idle_timeout.is_zero()
            && self.last_activity.elapsed() >= self.config.idle_timeout
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        match self.closing {
            Some(closing) => {
                consider(closing.deadline);
                if Instant::now() < closing.relay_until {
                    consider(closing.relay_until);
                }
            }
            None if !self.config.idle_timeout.is_zero() => {
                consider(self.last_activity + self.config.idle_timeout)
            }
            None => {}
        }
        if self.blocked.upstream_send_queue {
            consider(Instant::now() + SEND_QUEUE_TICK);
        }
        if let Some(at) = self.handshake_memory.deadline() {
            consider(at);
        }
        next
    }
}
