//! How every connection has ended, counted by the workers themselves (atomics, no message
//! per connection), and the `stopped:` line the supervisor prints from it.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::tls::close::CloseKind;

/// How every connection has ended so far, by the kinds the `stopped:` line names; counted
/// by the workers themselves, so a connection costs the supervisor no wake-up.
#[derive(Default)]
pub struct Tally {
    clean: AtomicU64,
    no_answer: AtomicU64,
    dropped_in_handshake: AtomicU64,
    other: AtomicU64,
}

impl Tally {
    pub fn count(&self, kind: &CloseKind) {
        let counter = match kind {
            CloseKind::Clean => &self.clean,
            CloseKind::PeerDidNotAnswer => &self.no_answer,
            CloseKind::DroppedInHandshake => &self.dropped_in_handshake,
            _ => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Counts {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Counts {
            clean: read(&self.clean),
            no_answer: read(&self.no_answer),
            dropped_in_handshake: read(&self.dropped_in_handshake),
            other: read(&self.other),
        }
    }
}

/// The tally at one moment.
#[derive(Default, Clone, Copy)]
pub struct Counts {
    clean: u64,
    no_answer: u64,
    dropped_in_handshake: u64,
    other: u64,
}

/// The `stopped:` line: the connections that ended between two snapshots.
pub fn stop_summary(before: Counts, after: Counts) -> String {
    let clean = after.clean - before.clean;
    let no_answer = after.no_answer - before.no_answer;
    let dropped = after.dropped_in_handshake - before.dropped_in_handshake;
    let other = after.other - before.other;
    let total = clean + no_answer + dropped + other;
    format!(
        "stopped: {total} connections: {clean} clean, {no_answer} peer did not answer, \
         {dropped} dropped in handshake, {other} other"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_each_kind_since_the_stop_began() {
        let tally = Tally::default();
        tally.count(&CloseKind::Clean);
        let before = tally.snapshot();
        for kind in [
            CloseKind::Clean,
            CloseKind::Clean,
            CloseKind::PeerDidNotAnswer,
            CloseKind::DroppedInHandshake,
            CloseKind::WriteStalled,
        ] {
            tally.count(&kind);
        }
        assert_eq!(
            stop_summary(before, tally.snapshot()),
            "stopped: 5 connections: 2 clean, 1 peer did not answer, 1 dropped in handshake, 1 other"
        );
    }
}
