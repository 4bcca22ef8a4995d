//! What `GET /health` says: accepting, or a stop or an upgrade's hand-over under way.

use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// `200 ok`.
    Accepting,
    /// `503 stopping`: a SIGTERM/SIGINT came; closures begin after --stop-delay.
    Stopping,
    /// `503 draining`: an upgrade's hand-over began; the new process takes over.
    Draining,
}

impl Health {
    pub fn status(self) -> u16 {
        match self {
            Health::Accepting => 200,
            Health::Stopping | Health::Draining => 503,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Health::Accepting => "ok",
            Health::Stopping => "stopping",
            Health::Draining => "draining",
        }
    }
}

/// Set by the supervisor, read by the status thread.
#[derive(Default)]
pub struct HealthState {
    state: AtomicU8,
    /// With an endpoint (--status), each change is logged: an operator reading the log
    /// sees when a balancer was told.
    announce: bool,
}

impl HealthState {
    pub fn new(announce: bool) -> Self {
        HealthState { state: AtomicU8::new(0), announce }
    }

    pub fn set(&self, health: Health) {
        let value = match health {
            Health::Accepting => 0,
            Health::Stopping => 1,
            Health::Draining => 2,
        };
        let before = self.state.swap(value, Ordering::AcqRel);
        if self.announce && before != value {
            log::info!("/health: {} {}", health.status(), health.word());
        }
    }

    pub fn get(&self) -> Health {
        match self.state.load(Ordering::Acquire) {
            0 => Health::Accepting,
            1 => Health::Stopping,
            _ => Health::Draining,
        }
    }
}
