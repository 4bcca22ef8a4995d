//! Memory a worker thread gives back once its connection has settled: OpenSSL's per-thread
//! state and the stack pages below the current frame, which the handshake needed and an
//! idle connection does not (BENCH.md, M5: about 9 KiB a connection).
//!
//! Not at once: a short connection ends before [`SETTLE`], so it never pays the `madvise`,
//! the faults that bring the pages back and OpenSSL rebuilding its state for the next
//! handshake on the thread (about 100 µs a connection, BENCH.md M4).

use std::time::{Duration, Instant};

use crate::sys;

/// How long after its handshake (in forward mode: after its upstream connect) a connection
/// gives the memory back, and how long a parked thread waits before it does.
pub const SETTLE: Duration = Duration::from_millis(250);

/// Gives the memory back now.
pub fn release() {
    release_thread_state();
    sys::trim_stack();
}

extern "C" {
    /// OpenSSL 3 (crypto.h); openssl-sys does not bind it.
    fn OPENSSL_thread_stop();
}

/// Empties this thread's OpenSSL error queue. A worker thread serves one client after
/// another, and `SSL_get_error` reads any error still queued as the current call's: one left
/// by the previous connection would make this one's first WANT_READ look fatal.
pub fn forget_earlier_errors() {
    let _ = openssl::error::ErrorStack::get();
}

/// Frees OpenSSL's per-thread state (its per-thread random generators and error queue,
/// about 5 KiB): a worker that has finished its handshake may idle for hours, and OpenSSL
/// builds the state again if the thread ever needs it.
fn release_thread_state() {
    // SAFETY: takes no arguments and only frees the calling thread's own OpenSSL state.
    unsafe { OPENSSL_thread_stop() }
}

/// A release due [`SETTLE`] after the handshake, run once by the connection's poll loop.
pub struct Release {
    due: Option<Instant>,
}

impl Release {
    pub fn after_handshake() -> Self {
        Release { due: Some(Instant::now() + SETTLE) }
    }

    /// When the poll loop must wake up for it, if it has not happened yet.
    pub fn deadline(&self) -> Option<Instant> {
        self.due
    }

    /// Called after every wake-up; releases once the time has come.
    pub fn run_if_due(&mut self) {
        if self.due.is_some_and(|due| Instant::now() >= due) {
            self.due = None;
            release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_runs_once_when_due_and_never_before() {
        let mut release = Release::after_handshake();
        release.run_if_due();
        assert!(release.deadline().is_some(), "not due yet: still pending");
        std::thread::sleep(SETTLE);
        release.run_if_due();
        assert_eq!(release.deadline(), None, "released, so the poll loop stops waking for it");
    }

    #[test]
    fn a_trimmed_stack_still_serves_deep_calls() {
        fn deep(n: u32) -> u64 {
            let frame = [n as u8; 512];
            if n == 0 {
                return frame.iter().map(|&b| b as u64).sum();
            }
            std::hint::black_box(&frame);
            deep(n - 1) + 1
        }
        std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(|| {
                deep(100); // touch ~60 KiB
                release();
                assert_eq!(deep(100), 100, "pages given back come back zeroed, and work");
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
