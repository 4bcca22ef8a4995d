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
            if state.bytes.len() + line.len() + 1 > OUTBOX_LIMIT {
                let newly_full = state.full_since.is_none();
                state.full_since.get_or_insert_with(Instant::now);
                (false, newly_full)
            } else {
                let was_empty = state.bytes.is_empty();
                state.bytes.extend(line.as_bytes());
                state.bytes.push_back(b'\n');
                (true, was_empty)
            }
        };
        if wake {
            self.notify();
        }
        fits
    }

    /// Moves up to `buf.len()` queued bytes into `buf`; returns how many.
    pub fn take(&self, buf: &mut [MaybeUninit<u8>]) -> usize {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let n = buf.len().min(state.bytes.len());
        for (slot, byte) in buf.iter_mut().zip(state.bytes.drain(..n)) {
            slot.write(byte);
        }
        if state.bytes.len() <= OUTBOX_LIMIT / 2 {
            state.full_since = None;
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
