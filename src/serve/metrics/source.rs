//! What `/metrics` and `/health` read in a running daemon: the tally, the connection and
//! thread counts, the certificate, the hub's and the TLS side's counters — all atomics or
//! state no worker waits for, read on the status thread at scrape time.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{render, CertificateLabel, HubCounts, Report};
use crate::hub::stats as hub_stats;
use crate::serve::certificate::Certificate;
use crate::serve::listener::Shared;
use crate::serve::status::{Health, HealthState, Source};
use crate::tls::side;

pub struct Daemon {
    pub shared: Arc<Shared>,
    pub health: Arc<HealthState>,
    pub certificate: Arc<Certificate>,
    pub started: SystemTime,
}

impl Source for Daemon {
    fn metrics(&self) -> String {
        render(&self.report())
    }

    fn health(&self) -> Health {
        self.health.get()
    }
}

impl Daemon {
    fn report(&self) -> Report {
        let connections = &self.shared.connections;
        let tally = &connections.tally;
        let (busy, parked) = connections.threads.counts();
        let forward = self.shared.settings.hub.is_none();
        Report {
            version: env!("CARGO_PKG_VERSION"),
            openssl: openssl_version(),
            start_time: self.started.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
            accepted: self.shared.connections.tally.accepted(),
            active: connections.open() as u64,
            closed: tally.closed(),
            refused: tally.refusals(),
            handshake_failures: tally.handshake_failures(),
            bytes_received: side::BYTES_RECEIVED.load(Ordering::Relaxed),
            bytes_sent: side::BYTES_SENT.load(Ordering::Relaxed),
            handshake_duration: Some(tally.handshake_duration.snapshot()),
            upstream_connect_duration: forward.then(|| tally.upstream_connect_duration.snapshot()),
            certificates: self.certificate.current().into_iter().map(label).collect(),
            reloads: tally.reloads(),
            upgrades: tally.upgrades(),
            hub: (!forward).then(hub_counts),
            threads_busy: busy as u64,
            threads_parked: parked as u64,
            open_fds: open_fds(),
            max_clients: self.shared.max_clients as u64,
        }
    }
}

/// `OpenSSL 3.0.15`: the library's version text without its date.
fn openssl_version() -> &'static str {
    let full = openssl::version::version();
    match full.match_indices(' ').nth(1) {
        Some((at, _)) => &full[..at],
        None => full,
    }
}

fn label(expiry: crate::tls::expiry::Expiry) -> CertificateLabel {
    CertificateLabel { subject: expiry.subject, serial: expiry.serial, not_after: expiry.not_after }
}

fn hub_counts() -> HubCounts {
    HubCounts {
        clients: hub_stats::CLIENTS.load(Ordering::Relaxed),
        lines: hub_stats::LINES.load(Ordering::Relaxed),
        dropped: hub_stats::DROPPED.load(Ordering::Relaxed),
    }
}

/// Descriptors open now: the entries of /proc/self/fd, less the one reading it.
fn open_fds() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some((entries.count() as u64).saturating_sub(1))
}
