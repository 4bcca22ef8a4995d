//! A hub client's bounded outbox: the hub thread appends, the client's worker drains, and an
//! `eventfd` wakes the worker's poll. Nobody ever waits for a slow reader.

use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};

/// Bytes queued for one client at most; past that, lines for it are dropped.
pub const OUTBOX_LIMIT: usize = 256 * 1024;

/// A client whose outbox stays full this long is closed as too slow.
pub const TOO_SLOW_AFTER: Duration = Duration::from_secs(5);

/// Lines a worker may have sent to the hub and not yet seen processed; past that it stops
/// reading its client, so a flood waits in that client's own socket buffers.
pub const MAX_IN_FLIGHT: usize = 256;

pub struct Outbox {
    state: Mutex<State>,
    wake: EventFd,
    /// Lines this client sent to the hub and the hub has not handled yet.
    in_flight: AtomicUsize,
}

#[derive(Default)]
struct State {
    bytes: VecDeque<u8>,
    /// Set when a line did not fit; cleared once the client has drained half of it.
    full_since: Option<Instant>,
    /// Lines lost since the client was last told (`! N lines dropped`, DESIGN §5).
    dropped: u64,
    /// After the client's close_notify (TLS 1.3): the bytes it still gets, counted down.
    last_delivery: Option<usize>,
}

impl State {
    /// Queues `line` and its `\n` if it fits, behind the notice of any lines lost before it.
    fn push(&mut self, line: &str) -> bool {
        let notice = self.dropped_notice();
        let needed = line.len() + 1 + notice.as_ref().map_or(0, |n| n.len() + 1);
        if self.bytes.len() + needed > OUTBOX_LIMIT {
            self.dropped += 1;
            return false;
        }
        if let Some(notice) = notice {
            self.append(&notice);
            self.dropped = 0;
        }
        self.append(line);
        true
    }

    /// Queues the notice of lost lines alone, if there is one and it fits.
    fn push_dropped_notice(&mut self) {
        if let Some(notice) = self.dropped_notice() {
            if self.bytes.len() + notice.len() < OUTBOX_LIMIT {
                self.append(&notice);
                self.dropped = 0;
            }
        }
    }

    fn dropped_notice(&self) -> Option<String> {
        (self.dropped > 0).then(|| format!("! {} lines dropped", self.dropped))
    }

    fn append(&mut self, line: &str) {
        self.bytes.extend(line.as_bytes());
        self.bytes.push_back(b'\n');
    }
}

impl Outbox {
    pub fn new() -> std::io::Result<Self> {
        let wake = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(Outbox { state: Mutex::new(State::default()), wake, in_flight: AtomicUsize::new(0) })
    }

    /// Appends one line (a `\n` is added); returns false when it did not fit.
    ///
    /// The worker is woken only when its outbox stops being empty or first becomes full:
    /// one system call per line per member would dominate a busy hub, and a worker takes
    /// everything queued whenever it can write.
    pub fn push_line(&self, line: &str) -> bool {
        let (fits, wake) = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let was_empty = state.bytes.is_empty();
            if state.push(line) {
                (true, was_empty)
            } else {
                let newly_full = state.full_since.is_none();
                state.full_since.get_or_insert_with(Instant::now);
                (false, newly_full)
            }
        };
        if wake {
            self.notify();
        }
        fits
    }

    /// Moves up to `buf.len()` queued bytes into `buf` (after [`Outbox::mark_last_delivery`],
    /// no more than were queued then); returns how many.
    pub fn take(&self, buf: &mut [MaybeUninit<u8>]) -> usize {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let allowed = state.last_delivery.unwrap_or(usize::MAX);
        let n = buf.len().min(state.bytes.len()).min(allowed);
        for (slot, byte) in buf.iter_mut().zip(state.bytes.drain(..n)) {
            slot.write(byte);
        }
        if let Some(left) = state.last_delivery.as_mut() {
            *left -= n;
        }
        if state.bytes.len() <= OUTBOX_LIMIT / 2 {
            state.full_since = None;
        }
        if state.last_delivery.is_none() {
            // Nothing was queued since lines were lost (or the notice would precede it): with
            // room again, the client is told now, not only when the next line comes.
            state.push_dropped_notice();
        }
        if state.bytes.is_empty() {
            // An idle client holds no outbox memory.
            state.bytes = VecDeque::new();
        }
        n
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).bytes.is_empty()
    }

    /// The client closed its direction (TLS 1.3 close_notify): what is queued now is the last
    /// it gets. Called by the hub thread, in order with everything it queued before.
    pub fn mark_last_delivery(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.last_delivery = Some(state.bytes.len());
        drop(state);
        self.notify();
    }

    /// Everything up to the mark of [`Outbox::mark_last_delivery`] has been taken.
    pub fn last_delivery_done(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).last_delivery == Some(0)
    }

    /// When the outbox became (and stayed) full, if it is.
    pub fn full_since(&self) -> Option<Instant> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).full_since
    }

    /// Forgets everything queued (the client is closing).
    pub fn clear(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *state = State::default();
    }

    /// The descriptor the worker polls.
    pub fn fd(&self) -> RawFd {
        self.wake.as_fd().as_raw_fd()
    }

    /// Called by the worker after its poll woke on [`Outbox::fd`].
    pub fn clear_wake(&self) {
        let _ = self.wake.read();
    }

    fn notify(&self) {
        let _ = self.wake.write(1);
    }

    /// The worker sent a line to the hub; false when it should stop reading its client.
    pub fn line_sent(&self) -> bool {
        self.in_flight.fetch_add(1, Ordering::AcqRel) + 1 < MAX_IN_FLIGHT
    }

    pub fn may_send(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) < MAX_IN_FLIGHT
    }

    /// The hub handled one of this client's lines; wakes the worker if it was held back.
    pub fn line_handled(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == MAX_IN_FLIGHT {
            self.notify();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::Buffer;

    #[test]
    fn lines_come_out_in_order_with_newlines() {
        let outbox = Outbox::new().unwrap();
        assert!(outbox.push_line("one"));
        assert!(outbox.push_line("two"));
        let mut buf = Buffer::new(64);
        let n = outbox.take(buf.space());
        // SAFETY: `take` wrote `n` bytes into the space.
        unsafe { buf.filled(n) };
        assert_eq!(buf.pending(), b"one\ntwo\n");
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_full_outbox_drops_lines_and_remembers_since_when() {
        let outbox = Outbox::new().unwrap();
        let line = "x".repeat(1023);
        for _ in 0..OUTBOX_LIMIT / 1024 {
            assert!(outbox.push_line(&line));
        }
        assert!(outbox.full_since().is_none());
        assert!(!outbox.push_line("one too many"));
        assert!(outbox.full_since().is_some());
        let mut buf = Buffer::new(OUTBOX_LIMIT / 2 + 1);
        outbox.take(buf.space());
        assert!(outbox.full_since().is_none(), "draining half clears the mark");
    }

    /// Takes everything queued, as the worker does.
    fn drain(outbox: &Outbox) -> String {
        let mut buf = Buffer::new(OUTBOX_LIMIT);
        let n = outbox.take(buf.space());
        // SAFETY: `take` wrote `n` bytes into the space.
        unsafe { buf.filled(n) };
        String::from_utf8(buf.pending().to_vec()).unwrap()
    }

    #[test]
    fn a_reader_that_lost_lines_is_told_how_many_once_it_has_room() {
        let outbox = Outbox::new().unwrap();
        let line = "x".repeat(1023);
        while outbox.push_line(&line) {}
        assert!(!outbox.push_line("lost too"));
        assert!(drain(&outbox).ends_with(&format!("{line}\n")));
        assert_eq!(drain(&outbox), "! 2 lines dropped\n", "told as soon as there is room");
        assert!(outbox.push_line("next"));
        assert_eq!(drain(&outbox), "next\n", "told once");
    }

    #[test]
    fn the_notice_comes_before_the_next_line_that_fits() {
        let outbox = Outbox::new().unwrap();
        while outbox.push_line(&"x".repeat(999)) {} // 262 lines: 144 bytes left
        assert!(!outbox.push_line(&"y".repeat(2000)), "a long line does not fit");
        assert!(outbox.push_line("short"), "a short one still does");
        assert!(drain(&outbox).ends_with("! 2 lines dropped\nshort\n"));
    }

    #[test]
    fn after_the_clients_close_notify_only_what_was_queued_then_is_delivered() {
        let outbox = Outbox::new().unwrap();
        outbox.push_line("welcome");
        outbox.mark_last_delivery();
        outbox.push_line("said later");
        assert!(!outbox.last_delivery_done());
        assert_eq!(drain(&outbox), "welcome\n");
        assert!(outbox.last_delivery_done());
        assert_eq!(drain(&outbox), "", "nothing past the mark");
    }

    #[test]
    fn in_flight_lines_hold_back_the_reader() {
        let outbox = Outbox::new().unwrap();
        for _ in 0..MAX_IN_FLIGHT - 1 {
            assert!(outbox.line_sent());
        }
        assert!(!outbox.line_sent());
        assert!(!outbox.may_send());
        outbox.line_handled();
        assert!(outbox.may_send());
    }
}
