//! The broadcast descriptors that tell listeners and workers to stop (DESIGN §4), and why.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::sys::Beacon;

/// Why established connections are being closed; the hub announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Shutdown,
    Upgrade,
}

/// Beacons are written once and never drained, so one pipe serves every poller.
pub struct Shutdown {
    /// Listeners stop accepting (a stop, or a successful upgrade).
    pub accepting: Beacon,
    /// Connections still in their handshake are dropped (a stop only: an upgrade lets them finish).
    pub handshakes: Beacon,
    /// Established connections begin their closure, with [`Shutdown::reason`].
    pub close: Beacon,
    /// Second signal: close now, close_notify only where nothing is pending.
    pub fast: Beacon,
    reason: AtomicU8,
}

impl Shutdown {
    pub fn new() -> io::Result<Self> {
        Ok(Shutdown {
            accepting: Beacon::new()?,
            handshakes: Beacon::new()?,
            close: Beacon::new()?,
            fast: Beacon::new()?,
            reason: AtomicU8::new(0),
        })
    }

    /// A graceful stop: everything ends, handshakes are dropped.
    pub fn stop(&self) {
        self.accepting.light();
        self.handshakes.light();
        self.close.light();
    }

    /// After a successful upgrade (and its drain): established connections close, announced
    /// as an upgrade.
    pub fn close_for_upgrade(&self) {
        if !self.close.is_lit() {
            self.reason.store(1, Ordering::Release);
        }
        self.accepting.light();
        self.close.light();
    }

    pub fn reason(&self) -> CloseReason {
        match self.reason.load(Ordering::Acquire) {
            1 => CloseReason::Upgrade,
            _ => CloseReason::Shutdown,
        }
    }
}
