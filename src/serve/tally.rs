//! Everything the daemon counts: how connections ended (by every `closed:` kind), why
//! clients were refused or failed their handshake, how long handshakes and upstream connects
//! took, reloads and upgrades. Workers and listeners count with relaxed atomics — no
//! message, lock or system call per connection; the supervisor prints the `stopped:` line
//! from it and `/metrics` reads it (serve/metrics).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::serve::metrics::histogram::Histogram;
use crate::tls::close::CloseKind;

/// The `closed:` kinds as metric labels (the log's words with `_`), in the log's order.
pub const KINDS: [&str; 9] = [
    "clean",
    "peer_did_not_answer",
    "truncated_by_client",
    "reset_by_client",
    "upstream_reset",
    "upstream_unreachable",
    "handshake_failed",
    "handshake_timeout",
    "write_stalled",
];

/// Handshake failure reasons: a bounded set of labels over OpenSSL's reason texts.
pub const HANDSHAKE_REASONS: [&str; 10] = [
    "http_request",
    "not_tls",
    "unsupported_protocol",
    "no_shared_cipher",
    "certificate_required",
    "certificate_rejected",
    "peer_alert",
    "peer_closed",
    "server_stopping",
    "other",
];

/// Why a listener closed a connection before any handshake (the `refused:` lines).
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    MaxClients,
    MaxClientsPerIp,
    Descriptors,
    Threads,
    /// A PROXY header from a source outside --accept-proxy.
    ProxyUntrusted,
    /// A missing, malformed, oversized or late PROXY header from a listed source.
    ProxyHeader,
}

pub const REFUSALS: [&str; 6] =
    ["max_clients", "max_clients_per_ip", "descriptors", "threads", "proxy_untrusted", "proxy_header"];

/// The outcome of a reload or an upgrade.
pub const RESULTS: [&str; 2] = ["success", "failure"];

#[derive(Default)]
pub struct Tally {
    /// The `conn ID from ADDR accepted` lines, counted where each is logged.
    accepted: AtomicU64,
    closed: [AtomicU64; KINDS.len()],
    handshake_failures: [AtomicU64; HANDSHAKE_REASONS.len()],
    refused: [AtomicU64; REFUSALS.len()],
    reloads: [AtomicU64; RESULTS.len()],
    upgrades: [AtomicU64; RESULTS.len()],
    pub handshake_duration: Histogram,
    pub upstream_connect_duration: Histogram,
}

impl Tally {
    pub fn count(&self, kind: &CloseKind) {
        self.closed[kind_index(kind)].fetch_add(1, Ordering::Relaxed);
        let reason = match kind {
            CloseKind::HandshakeFailed(reason) => reason_index(reason),
            CloseKind::DroppedInHandshake => SERVER_STOPPING,
            _ => return,
        };
        self.handshake_failures[reason].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one `accepted` line; called just before it is logged.
    pub fn accept(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn handshake_took(&self, took: Duration) {
        self.handshake_duration.observe(took);
    }

    pub fn reloaded(&self, ok: bool) {
        self.reloads[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn upgraded(&self, ok: bool) {
        self.upgrades[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn closed(&self) -> Vec<(&'static str, u64)> {
        labelled(&KINDS, &self.closed)
    }

    pub fn handshake_failures(&self) -> Vec<(&'static str, u64)> {
        labelled(&HANDSHAKE_REASONS, &self.handshake_failures)
    }

    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        labelled(&REFUSALS, &self.refused)
    }

    pub fn reloads(&self) -> Vec<(&'static str, u64)> {
        labelled(&RESULTS, &self.reloads)
    }

    pub fn upgrades(&self) -> Vec<(&'static str, u64)> {
        labelled(&RESULTS, &self.upgrades)
    }

    /// Connections closed cleanly and those whose peer did not answer, for systemd's status.
    pub fn clean_and_no_answer(&self) -> (u64, u64) {
        let counts = self.snapshot();
        (counts.clean, counts.no_answer)
    }

    pub fn snapshot(&self) -> Counts {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let total: u64 = self.closed.iter().map(read).sum();
        Counts {
            clean: read(&self.closed[0]),
            no_answer: read(&self.closed[1]),
            dropped_in_handshake: read(&self.handshake_failures[SERVER_STOPPING]),
            total,
        }
    }
}

fn labelled(labels: &[&'static str], counters: &[AtomicU64]) -> Vec<(&'static str, u64)> {
    labels.iter().zip(counters).map(|(label, counter)| (*label, counter.load(Ordering::Relaxed))).collect()
}

const SERVER_STOPPING: usize = 8;

fn kind_index(kind: &CloseKind) -> usize {
    match kind {
        CloseKind::Clean => 0,
        CloseKind::PeerDidNotAnswer => 1,
        CloseKind::TruncatedByClient => 2,
        CloseKind::ResetByClient => 3,
        CloseKind::UpstreamReset => 4,
        CloseKind::UpstreamUnreachable => 5,
        // A stop during the handshake logs `handshake failed: server stopping`.
        CloseKind::HandshakeFailed(_) | CloseKind::DroppedInHandshake => 6,
        CloseKind::HandshakeTimeout => 7,
        CloseKind::WriteStalled => 8,
    }
}

/// The label of a `handshake failed: REASON` text (OpenSSL's reasons, or an io error's).
fn reason_index(reason: &str) -> usize {
    const RULES: [(&str, usize); 17] = [
        ("http request", 0),
        ("https proxy request", 0),
        ("wrong version number", 1),
        ("packet length too long", 1),
        ("record layer failure", 1),
        ("alert protocol version", 2),
        ("unsupported protocol", 2),
        ("version too low", 2),
        ("no shared cipher", 3),
        ("no suitable signature algorithm", 3),
        ("no shared group", 3),
        ("peer did not return a certificate", 4),
        ("certificate verify failed", 5),
        (" alert ", 6),
        ("peer closed the connection", 7),
        ("unexpected eof", 7),
        ("connection reset", 7),
    ];
    RULES.iter().find(|(text, _)| reason.contains(text)).map_or(HANDSHAKE_REASONS.len() - 1, |(_, i)| *i)
}

/// The tally at one moment, for the `stopped:` line.
#[derive(Default, Clone, Copy)]
pub struct Counts {
    clean: u64,
    no_answer: u64,
    dropped_in_handshake: u64,
    total: u64,
}

/// The `stopped:` line: the connections that ended between two snapshots.
pub fn stop_summary(before: Counts, after: Counts) -> String {
    // The counters are read one by one, not at one instant: never let a race underflow.
    let clean = after.clean.saturating_sub(before.clean);
    let no_answer = after.no_answer.saturating_sub(before.no_answer);
    let dropped = after.dropped_in_handshake.saturating_sub(before.dropped_in_handshake);
    let total = after.total.saturating_sub(before.total);
    let other = total.saturating_sub(clean + no_answer + dropped);
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

    #[test]
    fn every_kind_has_the_label_of_its_log_words() {
        for kind in [
            CloseKind::Clean,
            CloseKind::PeerDidNotAnswer,
            CloseKind::TruncatedByClient,
            CloseKind::ResetByClient,
            CloseKind::UpstreamReset,
            CloseKind::UpstreamUnreachable,
            CloseKind::HandshakeFailed("x".into()),
            CloseKind::HandshakeTimeout,
            CloseKind::WriteStalled,
            CloseKind::DroppedInHandshake,
        ] {
            let words = kind.to_string();
            let words = words.split(':').next().unwrap().replace(' ', "_");
            assert_eq!(KINDS[kind_index(&kind)], words);
        }
    }

    #[test]
    fn handshake_reasons_fall_into_a_bounded_set() {
        let label = |reason: &str| HANDSHAKE_REASONS[reason_index(reason)];
        assert_eq!(label("http request"), "http_request");
        assert_eq!(label("wrong version number"), "not_tls");
        assert_eq!(label("unsupported protocol"), "unsupported_protocol");
        assert_eq!(label("no shared cipher"), "no_shared_cipher");
        assert_eq!(label("peer did not return a certificate"), "certificate_required");
        assert_eq!(
            label("certificate verify failed (client certificate matches no --allow-cn/--allow-san)"),
            "certificate_rejected"
        );
        assert_eq!(label("tlsv1 alert unknown ca"), "peer_alert");
        assert_eq!(label("peer closed the connection"), "peer_closed");
        assert_eq!(label("something new"), "other");
        let tally = Tally::default();
        tally.count(&CloseKind::DroppedInHandshake);
        assert!(tally.handshake_failures().contains(&("server_stopping", 1)));
        assert!(tally.closed().contains(&("handshake_failed", 1)));
    }
}
