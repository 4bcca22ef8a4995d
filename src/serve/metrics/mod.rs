//! `GET /metrics`: what the daemon's counters say, as the Prometheus text format 0.0.4.
//! [`Report`] is the numbers read at one moment; [`render`] names them (DESIGN §12).

pub mod exposition;
pub mod histogram;
pub mod source;

use exposition::{Exposition, Kind};
use histogram::HistogramSnapshot;

/// The served certificate, as the expiry gauge labels it.
#[derive(Debug, Clone, PartialEq)]
pub struct CertificateLabel {
    pub subject: String,
    pub serial: String,
    /// notAfter, in seconds since the Unix epoch.
    pub not_after: i64,
}

/// The hub's numbers (hub mode only).
#[derive(Debug, Clone, Copy, Default)]
pub struct HubCounts {
    pub clients: u64,
    pub lines: u64,
    pub dropped: u64,
}

/// Every number a scrape reports, read from the atomics at one moment.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub version: &'static str,
    pub openssl: &'static str,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time: f64,
    pub accepted: u64,
    pub active: u64,
    /// By `closed:` kind label, every kind listed (zeros included) so a rate starts at 0.
    pub closed: Vec<(&'static str, u64)>,
    pub refused: Vec<(&'static str, u64)>,
    pub handshake_failures: Vec<(&'static str, u64)>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub handshake_duration: Option<HistogramSnapshot>,
    /// Forward mode only.
    pub upstream_connect_duration: Option<HistogramSnapshot>,
    pub certificates: Vec<CertificateLabel>,
    pub reloads: Vec<(&'static str, u64)>,
    pub upgrades: Vec<(&'static str, u64)>,
    pub hub: Option<HubCounts>,
    pub threads_busy: u64,
    pub threads_parked: u64,
    /// None when /proc/self/fd cannot be read.
    pub open_fds: Option<u64>,
    pub max_clients: u64,
}

/// The exposition of `report`.
pub fn render(report: &Report) -> String {
    let mut out = Exposition::default();
    out.family("tlsrelay_build_info", Kind::Gauge, "Always 1; the labels name the build.");
    out.sample("tlsrelay_build_info", &[("version", report.version), ("openssl", report.openssl)], 1.0);
    out.single(
        "tlsrelay_start_time_seconds",
        Kind::Gauge,
        "When the process started, in seconds since the Unix epoch.",
        report.start_time,
    );
    connections(&mut out, report);
    bytes_and_durations(&mut out, report);
    certificates(&mut out, &report.certificates);
    labelled(
        &mut out,
        "tlsrelay_reloads_total",
        "Certificate reloads, by result.",
        "result",
        &report.reloads,
    );
    labelled(&mut out, "tlsrelay_upgrades_total", "Hitless upgrades, by result.", "result", &report.upgrades);
    if let Some(hub) = report.hub {
        hub_counts(&mut out, hub);
    }
    process(&mut out, report);
    out.finish()
}

fn connections(out: &mut Exposition, report: &Report) {
    out.single(
        "tlsrelay_connections_accepted_total",
        Kind::Counter,
        "Connections accepted and handed to a worker (each logs `conn ID from ADDR accepted`).",
        report.accepted as f64,
    );
    out.single("tlsrelay_connections_active", Kind::Gauge, "Connections open now.", report.active as f64);
    labelled(
        out,
        "tlsrelay_connections_closed_total",
        "Connections closed, by how they ended (the KIND of the `closed:` log line).",
        "kind",
        &report.closed,
    );
    labelled(
        out,
        "tlsrelay_connections_refused_total",
        "Connections closed before any handshake, by reason (the `refused:` log lines).",
        "reason",
        &report.refused,
    );
    labelled(
        out,
        "tlsrelay_handshake_failures_total",
        "Failed TLS handshakes, by reason.",
        "reason",
        &report.handshake_failures,
    );
}

fn bytes_and_durations(out: &mut Exposition, report: &Report) {
    out.single(
        "tlsrelay_client_bytes_received_total",
        Kind::Counter,
        "Plaintext bytes received from clients, counted as they are read.",
        report.bytes_received as f64,
    );
    out.single(
        "tlsrelay_client_bytes_sent_total",
        Kind::Counter,
        "Plaintext bytes sent to clients, counted as they are written.",
        report.bytes_sent as f64,
    );
    if let Some(handshakes) = &report.handshake_duration {
        out.histogram(
            "tlsrelay_handshake_duration_seconds",
            "Completed TLS handshakes, by duration.",
            handshakes,
        );
    }
    if let Some(connects) = &report.upstream_connect_duration {
        out.histogram(
            "tlsrelay_upstream_connect_duration_seconds",
            "Successful upstream connects (resolution included), by duration.",
            connects,
        );
    }
}

fn certificates(out: &mut Exposition, certificates: &[CertificateLabel]) {
    let name = "tlsrelay_certificate_expiry_timestamp_seconds";
    out.family(
        name,
        Kind::Gauge,
        "When the served certificate expires (notAfter), in seconds since the Unix epoch.",
    );
    for cert in certificates {
        out.sample(name, &[("subject", &cert.subject), ("serial", &cert.serial)], cert.not_after as f64);
    }
}

fn hub_counts(out: &mut Exposition, hub: HubCounts) {
    out.single("tlsrelay_hub_clients", Kind::Gauge, "Clients in the hub now.", hub.clients as f64);
    out.single("tlsrelay_hub_lines_total", Kind::Counter, "Lines clients sent to the hub.", hub.lines as f64);
    out.single(
        "tlsrelay_hub_lines_dropped_total",
        Kind::Counter,
        "Lines not delivered to a client because its outbox was full.",
        hub.dropped as f64,
    );
}

fn process(out: &mut Exposition, report: &Report) {
    out.family(
        "tlsrelay_threads",
        Kind::Gauge,
        "Worker threads, serving a client (busy) or waiting for one (parked).",
    );
    out.sample("tlsrelay_threads", &[("state", "busy")], report.threads_busy as f64);
    out.sample("tlsrelay_threads", &[("state", "parked")], report.threads_parked as f64);
    if let Some(fds) = report.open_fds {
        out.single("tlsrelay_open_fds", Kind::Gauge, "Descriptors the process has open.", fds as f64);
    }
    out.single(
        "tlsrelay_max_clients",
        Kind::Gauge,
        "The connection cap in force (--max-clients, lowered to what the limits allow).",
        report.max_clients as f64,
    );
}

/// A counter family with one sample per label value.
fn labelled(out: &mut Exposition, name: &str, help: &str, label: &str, values: &[(&'static str, u64)]) {
    out.family(name, Kind::Counter, help);
    for (value, count) in values {
        out.sample(name, &[(label, value)], *count as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_designed_name_is_rendered() {
        let report = Report {
            version: "0.1.0",
            openssl: "OpenSSL 3.0.15",
            closed: vec![("clean", 2), ("upstream_reset", 1)],
            refused: vec![("max_clients", 3)],
            handshake_failures: vec![("http_request", 1)],
            handshake_duration: Some(histogram::Histogram::default().snapshot()),
            upstream_connect_duration: Some(histogram::Histogram::default().snapshot()),
            certificates: vec![CertificateLabel {
                subject: "CN=localhost".into(),
                serial: "0A".into(),
                not_after: 1,
            }],
            reloads: vec![("success", 1), ("failure", 0)],
            upgrades: vec![("success", 0), ("failure", 0)],
            hub: Some(HubCounts::default()),
            open_fds: Some(9),
            ..Report::default()
        };
        let text = render(&report);
        for line in [
            "tlsrelay_build_info{version=\"0.1.0\",openssl=\"OpenSSL 3.0.15\"} 1",
            "tlsrelay_connections_closed_total{kind=\"upstream_reset\"} 1",
            "tlsrelay_connections_refused_total{reason=\"max_clients\"} 3",
            "tlsrelay_handshake_failures_total{reason=\"http_request\"} 1",
            "tlsrelay_certificate_expiry_timestamp_seconds{subject=\"CN=localhost\",serial=\"0A\"} 1",
            "tlsrelay_reloads_total{result=\"success\"} 1",
            "tlsrelay_threads{state=\"parked\"} 0",
            "tlsrelay_open_fds 9",
            "tlsrelay_hub_lines_dropped_total 0",
            "tlsrelay_upstream_connect_duration_seconds_count 0",
            "tlsrelay_handshake_duration_seconds_bucket{le=\"+Inf\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
