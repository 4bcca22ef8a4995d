//! `tlsrelay status --status ADDR`: one screen about a running daemon, read from its
//! `--status` endpoint (`/metrics` and `/health`): version, uptime, connections, how they
//! closed, the certificate's expiry.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{describe_io, Error};
use crate::serve::upgrade;
use crate::tls::expiry::date_of;

/// How long the whole exchange with the endpoint may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// One sample of the exposition: its labels and value.
type Samples = BTreeMap<String, Vec<(BTreeMap<String, String>, f64)>>;

pub fn run(addr: Option<SocketAddr>, pid_file: Option<&Path>) -> Result<(), Error> {
    let addr = match (addr, pid_file) {
        (Some(addr), _) => addr,
        (None, Some(pid_file)) => address_of(pid_file)?,
        (None, None) => return Err(Error::Usage("give --status ADDR:PORT or --pid-file FILE".into())),
    };
    let metrics = get(addr, "/metrics")?;
    let health = get(addr, "/health")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    print!("{}", summary(addr, &parse(&metrics), health.trim(), now));
    Ok(())
}

/// The --status address on the command line of the process a pid file names.
fn address_of(pid_file: &Path) -> Result<SocketAddr, Error> {
    let pid = upgrade::read_pid(pid_file)?;
    let cmdline = format!("/proc/{pid}/cmdline");
    let raw = std::fs::read(&cmdline).map_err(|e| {
        Error::file(pid_file, "find the process named in", format!("pid {pid}: {}", describe_io(&e)))
    })?;
    let what = "find --status on the command line of the process named in";
    match status_flag(&raw) {
        Some(addr) if addr.port() != 0 => Ok(addr),
        Some(_) => Err(Error::file(
            pid_file,
            what,
            format!("pid {pid} asked for port 0: pass --status ADDR:PORT from its log"),
        )),
        None => Err(Error::file(pid_file, what, format!("pid {pid}"))),
    }
}

/// `--status ADDR` or `--status=ADDR` among NUL-separated arguments.
fn status_flag(cmdline: &[u8]) -> Option<SocketAddr> {
    let args: Vec<String> =
        cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    args.iter().enumerate().find_map(|(i, arg)| match arg.strip_prefix("--status") {
        Some("") => args.get(i + 1)?.parse().ok(),
        Some(rest) => rest.strip_prefix('=')?.parse().ok(),
        None => None,
    })
}

/// The body of `GET path`, whatever the status (a 503 /health is an answer too).
fn get(addr: SocketAddr, path: &str) -> Result<String, Error> {
    let failed = |reason: String| {
        Error::Status(format!(
            "cannot read http://{addr}{path}: {reason} (is tlsrelay serve running with --status {addr}?)"
        ))
    };
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| failed(describe_io(&e)))?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(|e| failed(describe_io(&e)))?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(|e| failed(describe_io(&e)))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| failed(describe_io(&e)))?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| failed(describe_io(&e)))?;
    match response.split_once("\r\n\r\n") {
        Some((_, body)) => Ok(body.to_string()),
        None => Err(failed("not an HTTP response".into())),
    }
}

/// Reads the samples of a text exposition (comments skipped).
fn parse(text: &str) -> Samples {
    let mut samples = Samples::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, labels_of(rest.trim_end_matches('}'))),
            None => (series, BTreeMap::new()),
        };
        samples.entry(name.to_string()).or_default().push((labels, value));
    }
    samples
}

/// `a="x",b="y\"z"` as a map, escapes undone.
fn labels_of(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let (mut value, mut chars, mut end) = (String::new(), after.char_indices(), after.len());
        while let Some((at, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = at + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_string(), value);
        rest = &after[end..];
    }
    labels
}

fn value(samples: &Samples, name: &str) -> f64 {
    samples.get(name).and_then(|s| s.first()).map_or(0.0, |(_, v)| *v)
}

/// `12 clean, 1 upstream reset` for the nonzero samples of a labelled family.
fn by_label(samples: &Samples, name: &str, label: &str) -> String {
    let parts: Vec<String> = samples
        .get(name)
        .into_iter()
        .flatten()
        .filter(|(_, v)| *v > 0.0)
        .map(|(labels, v)| format!("{v} {}", labels.get(label).map_or("?", |s| s.as_str()).replace('_', " ")))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

fn summary(addr: SocketAddr, samples: &Samples, health: &str, now: f64) -> String {
    let (version, openssl) = samples
        .get("tlsrelay_build_info")
        .and_then(|s| s.first())
        .map(|(labels, _)| (labels.get("version").cloned(), labels.get("openssl").cloned()))
        .unwrap_or_default();
    let up = (now - value(samples, "tlsrelay_start_time_seconds")).max(0.0) as u64;
    let mut out = format!(
        "tlsrelay {} ({}) at {addr}: health {health}, up {}\n",
        version.unwrap_or_else(|| "?".into()),
        openssl.unwrap_or_else(|| "?".into()),
        duration(up)
    );
    out += &format!(
        "connections: {} active (max {}), {} accepted; refused: {}\n",
        value(samples, "tlsrelay_connections_active"),
        value(samples, "tlsrelay_max_clients"),
        value(samples, "tlsrelay_connections_accepted_total"),
        by_label(samples, "tlsrelay_connections_refused_total", "reason"),
    );
    out += &format!("closed: {}\n", by_label(samples, "tlsrelay_connections_closed_total", "kind"));
    out += &format!(
        "handshake failures: {}\n",
        by_label(samples, "tlsrelay_handshake_failures_total", "reason")
    );
    out += &format!(
        "client bytes: {} received, {} sent\n",
        bytes(value(samples, "tlsrelay_client_bytes_received_total")),
        bytes(value(samples, "tlsrelay_client_bytes_sent_total")),
    );
    for (labels, expires) in
        samples.get("tlsrelay_certificate_expiry_timestamp_seconds").into_iter().flatten()
    {
        let days = ((expires - now) / 86_400.0).floor();
        let when = if days < 0.0 { "EXPIRED".to_string() } else { format!("in {days} days") };
        out += &format!(
            "certificate: {} (serial {}) expires {}, {when}\n",
            labels.get("subject").map_or("?", |s| s.as_str()),
            labels.get("serial").map_or("?", |s| s.as_str()),
            date_of(*expires as i64),
        );
    }
    if samples.contains_key("tlsrelay_hub_clients") {
        out += &format!(
            "hub: {} clients, {} lines, {} dropped\n",
            value(samples, "tlsrelay_hub_clients"),
            value(samples, "tlsrelay_hub_lines_total"),
            value(samples, "tlsrelay_hub_lines_dropped_total"),
        );
    }
    out
}

fn duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

fn bytes(n: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let (mut n, mut unit) = (n, 0);
    while n >= 1024.0 && unit < UNITS.len() - 1 {
        n /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{n:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = "\
# HELP tlsrelay_build_info Always 1.
# TYPE tlsrelay_build_info gauge
tlsrelay_build_info{version=\"0.1.0\",openssl=\"OpenSSL 3.0.15\"} 1
tlsrelay_start_time_seconds 1000
tlsrelay_connections_active 2
tlsrelay_connections_accepted_total 10
tlsrelay_connections_closed_total{kind=\"clean\"} 7
tlsrelay_connections_closed_total{kind=\"upstream_reset\"} 1
tlsrelay_connections_closed_total{kind=\"write_stalled\"} 0
tlsrelay_client_bytes_received_total 2048
tlsrelay_certificate_expiry_timestamp_seconds{subject=\"CN=a \\\"b\\\"\",serial=\"0A\"} 864000
";

    #[test]
    fn the_status_address_is_found_on_a_command_line() {
        let addr = Some("127.0.0.1:9443".parse().unwrap());
        assert_eq!(status_flag(b"tlsrelay\0serve\0--status\x00127.0.0.1:9443\0"), addr);
        assert_eq!(status_flag(b"tlsrelay\0serve\0--status=127.0.0.1:9443\0"), addr);
        assert_eq!(status_flag(b"tlsrelay\0serve\0--stop-delay\x005\0"), None);
    }

    #[test]
    fn the_summary_names_version_uptime_closes_and_expiry() {
        let text = summary("127.0.0.1:9100".parse().unwrap(), &parse(EXPOSITION), "ok", 1000.0 + 3725.0);
        assert!(
            text.starts_with("tlsrelay 0.1.0 (OpenSSL 3.0.15) at 127.0.0.1:9100: health ok, up 1h 2m\n"),
            "{text}"
        );
        assert!(text.contains("connections: 2 active (max 0), 10 accepted; refused: none\n"), "{text}");
        assert!(text.contains("closed: 7 clean, 1 upstream reset\n"), "{text}");
        assert!(text.contains("client bytes: 2.0 KiB received, 0 B sent\n"), "{text}");
        assert!(
            text.contains("certificate: CN=a \"b\" (serial 0A) expires 1970-01-11 00:00:00 UTC, in 9 days\n"),
            "{text}"
        );
    }
}
