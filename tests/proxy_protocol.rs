//! DESIGN §11: the PROXY protocol both ways, `--alpn`, `--reuse-port`.
//! Out: Debian's nginx and haproxy, as real consumers, log the client's address and port;
//! a test backend decodes the v2 TLVs by hand. In (`--accept-proxy`): the header's address
//! becomes the client's everywhere; hostile or unexpected headers close only their own
//! connection, before any TLS byte, with one log line naming the source.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::proxy_peers::*;
use common::unix_upstream::UnixUpstream;
use common::upstream::{echo, read_to_end};
use common::*;

const PEER: Duration = Duration::from_secs(20);

fn http_get() -> ClientOptions {
    ClientOptions { request: b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n".to_vec(), ..Default::default() }
}

// ---- out: real consumers --------------------------------------------------------------------

fn nginx_logs_client(version: &str) {
    let nginx = Nginx::start();
    let certs = Certs::new();
    let daemon = Daemon::start(&certs, &["--upstream", &nginx.arg(), "--proxy-protocol", version]);
    let client = proxied_tls(daemon.port(), &certs, b"", &http_get());
    assert!(client.handshake.is_ok(), "{client:?}");
    let answer = String::from_utf8_lossy(&client.received).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"), "nginx answered {answer:?}");
    nginx.wait_logged(&format!("PP 127.0.0.1:{}\n", client.local.port()), PEER);
}

#[test]
fn proxy_v1_to_nginx_logs_the_clients_address_and_port() {
    nginx_logs_client("v1");
}

#[test]
fn proxy_v2_to_nginx_logs_the_clients_address_and_port() {
    nginx_logs_client("v2");
}

/// haproxy in front of a plain echo service: `bind ... accept-proxy`, logging `%ci:%cp`.
fn haproxy_consumer() -> (Haproxy, Upstream, u16) {
    let backend = Upstream::start(echo());
    let port = free_port();
    let config = format!(
        "frontend fe\n  bind 127.0.0.1:{port} accept-proxy\n  log-format \"CLIENT %ci:%cp\"\n  \
         default_backend be\n\nbackend be\n  server echo {}\n",
        backend.addr()
    );
    (Haproxy::start(&config, port), backend, port)
}

fn haproxy_logs_client(version: &str) {
    let (haproxy, _backend, port) = haproxy_consumer();
    let certs = Certs::new();
    let upstream = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(&certs, &["--upstream", &upstream, "--proxy-protocol", version]);
    let options = ClientOptions { request: b"hello".to_vec(), ..Default::default() };
    let client = proxied_tls_until(daemon.port(), &certs, &options, b"hello");
    haproxy.wait_logged(&format!("CLIENT 127.0.0.1:{}", client.port()), 1, PEER);
}

#[test]
fn proxy_v1_to_haproxy_logs_the_clients_address_and_port() {
    haproxy_logs_client("v1");
}

#[test]
fn proxy_v2_to_haproxy_logs_the_clients_address_and_port() {
    haproxy_logs_client("v2");
}

/// The address a balancer in front named (`--accept-proxy`) is the one sent on.
#[test]
fn address_from_a_balancers_header_is_what_haproxy_behind_logs() {
    let (haproxy, _backend, port) = haproxy_consumer();
    let certs = Certs::new();
    let upstream = format!("127.0.0.1:{port}");
    let args = ["--upstream", &upstream, "--proxy-protocol", "v2", "--accept-proxy", "127.0.0.1/32"];
    let daemon = Daemon::start(&certs, &args);
    let header = v1_header("203.0.113.7:51000", "198.51.100.1:443");
    let options = ClientOptions { request: b"hello".to_vec(), ..Default::default() };
    let mut tls = open_proxied(daemon.port(), &certs, &header, &options).expect("handshake");
    expect_echo(&mut tls, b"hello");
    drop(tls);
    haproxy.wait_logged("CLIENT 203.0.113.7:51000", 1, PEER);
}

// ---- out: the v2 TLVs, decoded by a test backend ---------------------------------------------

/// A backend that decodes the v2 header by hand and sends it to the test, then records.
fn tlv_backend() -> (Upstream, std::sync::mpsc::Receiver<DecodedV2>) {
    let (tx, rx) = channel::<DecodedV2>();
    let tx = Mutex::new(tx);
    let upstream = Upstream::start(move |mut stream: TcpStream, report: &Sender<Seen>| {
        let decoded = read_v2(&mut stream);
        let _ = tx.lock().unwrap().send(decoded);
        let _ = report.send(read_to_end(&mut stream));
    });
    (upstream, rx)
}

#[test]
fn proxy_v2_carries_alpn_sni_tls_version_cipher_and_verified_client_cn() {
    let (backend, headers) = tlv_backend();
    let certs = Certs::with_args(&["--client", "alice"]);
    let ca = certs.ca().display().to_string();
    let target = backend.arg();
    let args = ["--upstream", &target, "--proxy-protocol", "v2", "--alpn", "h2,http/1.1", "--client-ca", &ca];
    let daemon = Daemon::start(&certs, &args);
    let options = ClientOptions {
        alpn: Some(b"\x08http/1.1\x02h2".to_vec()),
        client_cert: Some("alice".into()),
        request: b"request".to_vec(),
        ..Default::default()
    };
    let mut tls = open_proxied(daemon.port(), &certs, b"", &options).expect("handshake");
    assert_eq!(tls.ssl().selected_alpn_protocol(), Some(&b"h2"[..]), "our preference, not the client's");
    let local = tls.get_ref().local_addr().unwrap();
    let header = headers.recv_timeout(PEER).expect("the backend got a header");
    drop(tls.shutdown());
    let _ = tls.read(&mut [0u8; 16]);
    assert_eq!(header.command, 1, "PROXY");
    assert_eq!(header.source, Some(local), "the client's address and port");
    assert_eq!(header.destination, Some(daemon.addr()), "the address the client reached");
    assert_eq!(header.tlv(0x01), Some(&b"h2"[..]), "PP2_TYPE_ALPN");
    assert_eq!(header.tlv(0x02), Some(&b"localhost"[..]), "PP2_TYPE_AUTHORITY = SNI");
    let ssl = header.tlv(0x20).expect("PP2_TYPE_SSL");
    assert_eq!(ssl[0], 0x01 | 0x02, "PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN");
    assert_eq!(&ssl[1..5], &[0, 0, 0, 0], "verify: the certificate was verified");
    let subs = split_tlvs(&ssl[5..]);
    let sub = |kind: u8| {
        subs.iter().find(|(k, _)| *k == kind).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(sub(0x21).as_deref(), Some("TLSv1.3"), "PP2_SUBTYPE_SSL_VERSION");
    assert_eq!(sub(0x22).as_deref(), Some("alice"), "PP2_SUBTYPE_SSL_CN");
    let cipher = sub(0x23).expect("PP2_SUBTYPE_SSL_CIPHER");
    daemon.wait_for_log(&format!("established TLSv1.3 {cipher} client CN=alice"), PEER);
}

#[test]
fn without_alpn_flag_nothing_is_negotiated_and_no_alpn_tlv_is_sent() {
    let (backend, headers) = tlv_backend();
    let certs = Certs::new();
    let target = backend.arg();
    let daemon = Daemon::start(&certs, &["--upstream", &target, "--proxy-protocol", "v2"]);
    let options =
        ClientOptions { alpn: Some(b"\x02h2".to_vec()), request: b"x".to_vec(), ..Default::default() };
    let tls = open_proxied(daemon.port(), &certs, b"", &options).expect("handshake");
    assert_eq!(tls.ssl().selected_alpn_protocol(), None);
    let header = headers.recv_timeout(PEER).expect("a header");
    assert_eq!(header.tlv(0x01), None, "no ALPN TLV: {header:?}");
    let ssl = header.tlv(0x20).expect("PP2_TYPE_SSL");
    assert_eq!(ssl[0], 0x01, "TLS, no client certificate");
    assert!(split_tlvs(&ssl[5..]).iter().all(|(k, _)| *k != 0x22), "no CN without a certificate");
}

#[test]
fn proxy_v1_goes_to_a_unix_upstream_before_any_client_byte() {
    let (tx, rx) = channel::<String>();
    let tx = Mutex::new(tx);
    let upstream = UnixUpstream::at_path(move |mut stream, report| {
        let line = read_v1(&mut stream);
        let _ = tx.lock().unwrap().send(line);
        let _ = report.send(common::unix_upstream::read_to_end(&mut stream));
    });
    let certs = Certs::new();
    let target = upstream.arg();
    let daemon = Daemon::start(&certs, &["--upstream", &target, "--proxy-protocol", "v1"]);
    let r = python(daemon.port(), &certs, &["--send", "request", "--then", "close-notify"], PEER);
    assert_eq!(r.end, "clean", "{}", r.raw);
    let line = rx.recv_timeout(PEER).expect("a v1 line");
    let accepted = daemon.wait_for_log(" accepted", PEER);
    let client = accepted.split(" from ").nth(1).unwrap().split(' ').next().unwrap();
    let client: SocketAddr = client.parse().unwrap();
    let expected = format!("PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n", client.port(), daemon.port());
    assert_eq!(line, expected);
    let seen = upstream.next_seen(PEER);
    assert_eq!((seen.text().as_str(), &seen.end), ("request", &End::Fin), "client bytes follow the header");
}

// ---- in: --accept-proxy ----------------------------------------------------------------------

/// A relay accepting PROXY headers from 127.0.0.1, sending v1 on to a TCP upstream that
/// reports the line it got; `extra` flags added.
struct Balanced {
    daemon: Daemon,
    certs: Certs,
    lines: std::sync::mpsc::Receiver<String>,
    _upstream: Upstream,
}

fn balanced(extra: &[&str]) -> Balanced {
    let (tx, lines) = channel::<String>();
    let tx = Mutex::new(tx);
    let upstream = Upstream::start(move |mut stream: TcpStream, report: &Sender<Seen>| {
        let line = read_v1(&mut stream);
        let _ = tx.lock().unwrap().send(line);
        echo()(stream, report);
    });
    let certs = Certs::new();
    let target = upstream.arg();
    let mut args =
        vec!["--upstream", target.as_str(), "--proxy-protocol", "v1", "--accept-proxy", "127.0.0.1"];
    args.extend_from_slice(extra);
    let daemon = Daemon::start(&certs, &args);
    Balanced { daemon, certs, lines, _upstream: upstream }
}

impl Balanced {
    /// One client through a header: handshake, echo, close; returns our local address.
    fn serve(&self, header: &[u8], options: &ClientOptions) -> SocketAddr {
        let mut tls = open_proxied(self.daemon.port(), &self.certs, header, options)
            .unwrap_or_else(|e| panic!("handshake failed: {e}; log:\n{}", self.daemon.log_text()));
        expect_echo(&mut tls, b"ping");
        let local = tls.get_ref().local_addr().unwrap();
        let _ = tls.shutdown();
        local
    }

    fn next_line(&self) -> String {
        self.lines.recv_timeout(PEER).expect("the upstream got a PROXY line")
    }
}

fn ping() -> ClientOptions {
    ClientOptions { request: b"ping".to_vec(), ..Default::default() }
}

#[test]
fn accept_proxy_v1_header_names_the_client_in_the_log_and_the_header_sent_on() {
    let b = balanced(&[]);
    let local = b.serve(&v1_header("203.0.113.7:51000", "198.51.100.1:443"), &ping());
    b.daemon.wait_for_log(&format!("conn 1 from 203.0.113.7:51000 via {local} accepted"), PEER);
    assert_eq!(b.next_line(), "PROXY TCP4 203.0.113.7 198.51.100.1 51000 443\r\n");
}

#[test]
fn accept_proxy_v2_header_names_the_client_in_the_log_and_the_header_sent_on() {
    let b = balanced(&[]);
    let local = b.serve(&v2_tcp4("203.0.113.9:40001", "198.51.100.1:8443"), &ping());
    b.daemon.wait_for_log(&format!("conn 1 from 203.0.113.9:40001 via {local} accepted"), PEER);
    assert_eq!(b.next_line(), "PROXY TCP4 203.0.113.9 198.51.100.1 40001 8443\r\n");
}

#[test]
fn accept_proxy_tcp6_header_names_an_ipv6_client() {
    let b = balanced(&[]);
    let local = b.serve(b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n", &ping());
    b.daemon.wait_for_log(&format!("conn 1 from [2001:db8::7]:51000 via {local} accepted"), PEER);
    assert_eq!(b.next_line(), "PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n");
}

#[test]
fn accept_proxy_header_in_many_small_segments_is_accepted_within_the_deadline() {
    let b = balanced(&["--handshake-timeout", "6"]);
    let gap = Duration::from_millis(25);
    let v1 = ClientOptions { segment: 1, gap, ..ping() };
    let t0 = Instant::now();
    b.serve(&v1_header("203.0.113.7:51000", "198.51.100.1:443"), &v1);
    assert!(t0.elapsed() > Duration::from_millis(800), "the header really came in pieces");
    assert_eq!(b.next_line(), "PROXY TCP4 203.0.113.7 198.51.100.1 51000 443\r\n");
    let v2 = ClientOptions { segment: 3, gap, ..ping() };
    b.serve(&v2_tcp4("203.0.113.9:40001", "198.51.100.1:8443"), &v2);
    assert_eq!(b.next_line(), "PROXY TCP4 203.0.113.9 198.51.100.1 40001 8443\r\n");
}

/// LOCAL (a balancer's health check), v2 UNSPEC and v1 UNKNOWN: served as the direct peer.
#[test]
fn accept_proxy_local_unspec_and_unknown_are_served_as_the_direct_peer() {
    let b = balanced(&[]);
    let local_with_addresses = v2_header(0, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
    for (id, header) in [
        (1, v2_header(0, 0x00, &[])),
        (2, local_with_addresses),
        (3, v2_header(1, 0x00, &[9; 7])),
        (4, b"PROXY UNKNOWN\r\n".to_vec()),
    ] {
        let local = b.serve(&header, &ping());
        b.daemon.wait_for_log(&format!("conn {id} from {local} accepted"), PEER);
        let expected = format!("PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n", local.port(), b.daemon.port());
        assert_eq!(b.next_line(), expected, "conn {id}");
    }
    assert_eq!(b.daemon.count_log(" via "), 0, "{}", b.daemon.log_text());
}

/// Sends `bytes` from a listed source and expects the relay to close before any TLS byte,
/// with one log line naming the source and containing `reason`.
fn refused_before_tls(b: &Balanced, id: u64, bytes: &[u8], reason: &str) {
    let mut tcp = TcpStream::connect(b.daemon.addr()).unwrap();
    tcp.set_read_timeout(Some(PEER)).unwrap();
    let local = tcp.local_addr().unwrap();
    let _ = std::io::Write::write_all(&mut tcp, bytes);
    let mut got = Vec::new();
    let _ = tcp.read_to_end(&mut got); // EOF or a reset, both fine
    assert!(got.is_empty(), "the relay sent {} bytes before refusing", got.len());
    let line = b.daemon.wait_for_log(&format!("conn {id} from {local} refused: "), PEER);
    assert!(line.contains(reason), "{line}");
    let about_it = b.daemon.logs().iter().filter(|l| l.contains(&format!("conn {id} "))).count();
    assert_eq!(about_it, 1, "one line per refused connection; log:\n{}", b.daemon.log_text());
}

#[test]
fn accept_proxy_garbage_huge_and_truncated_headers_close_only_their_connection() {
    let b = balanced(&["--handshake-timeout", "3"]);
    refused_before_tls(&b, 1, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not a PROXY header");
    let huge_v1 = [b"PROXY TCP4 ".as_slice(), &vec![b'1'; 100_000]].concat();
    refused_before_tls(&b, 2, &huge_v1, "no CRLF");
    let mut huge_v2 = v2_header(1, 0x11, &vec![0; 100_000][..65_535]);
    huge_v2.extend(vec![0u8; 100_000 - 65_535]);
    refused_before_tls(&b, 3, &huge_v2, "over the 4096 B limit");
    refused_before_tls(&b, 4, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "without CRLF");
    refused_before_tls(&b, 5, b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "malformed PROXY v1");
    let mut bad_command = v2_tcp4("1.2.3.4:1", "5.6.7.8:2");
    bad_command[12] = 0x2f;
    refused_before_tls(&b, 6, &bad_command, "malformed PROXY v2");
    // Closed half-way: the header never completes.
    let mut tcp = TcpStream::connect(b.daemon.addr()).unwrap();
    std::io::Write::write_all(&mut tcp, b"PROXY TCP4 203.0.113.7").unwrap();
    tcp.shutdown(std::net::Shutdown::Write).unwrap();
    b.daemon.wait_for_log("conn 7 from 127.0.0.1", PEER);
    assert!(b.daemon.wait_for_log("conn 7 ", PEER).contains("closed before its PROXY header was complete"));
    // Nobody else was affected.
    b.serve(&v1_header("203.0.113.7:51000", "198.51.100.1:443"), &ping());
    assert_eq!(b.next_line(), "PROXY TCP4 203.0.113.7 198.51.100.1 51000 443\r\n");
}

/// Silent connections from the balancer's address wait on their own workers; accepting and
/// everyone else go on, and each silent one is closed at the handshake deadline.
#[test]
fn accept_proxy_silent_balancer_connections_time_out_without_stalling_others() {
    let b = balanced(&["--handshake-timeout", "1.5"]);
    let silent: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(b.daemon.addr()).unwrap()).collect();
    let t0 = Instant::now();
    b.serve(&v1_header("203.0.113.7:51000", "198.51.100.1:443"), &ping());
    assert!(t0.elapsed() < Duration::from_millis(1200), "a good client waited {:?}", t0.elapsed());
    b.daemon.wait_for_log_count("no complete PROXY header within the handshake timeout (0 B)", 20, PEER);
    for mut tcp in silent {
        tcp.set_read_timeout(Some(PEER)).unwrap();
        assert!(matches!(tcp.read(&mut [0u8; 8]), Ok(0) | Err(_)), "closed by the relay");
    }
}

/// A header trickling in slower than the deadline allows is refused at the deadline, with
/// what had arrived; the trickle does not extend it.
#[test]
fn accept_proxy_header_trickling_past_the_deadline_is_refused_at_the_deadline() {
    let b = balanced(&["--handshake-timeout", "1"]);
    let mut tcp = TcpStream::connect(b.daemon.addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(150))).unwrap();
    let t0 = Instant::now();
    let header = v1_header("203.0.113.7:51000", "198.51.100.1:443");
    // One byte every 150 ms (the whole line would take 6 s); when does the relay close?
    let mut closed_after = None;
    for byte in &header {
        let _ = std::io::Write::write_all(&mut tcp, &[*byte]);
        match tcp.read(&mut [0u8; 8]) {
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            _ => {
                closed_after = Some(t0.elapsed());
                break;
            }
        }
    }
    let closed_after = closed_after.expect("the relay never closed the trickling connection");
    assert!(closed_after < Duration::from_millis(2000), "closed only after {closed_after:?}");
    let line = b.daemon.wait_for_log("conn 1 from 127.0.0.1:", PEER);
    assert!(line.contains("refused: no complete PROXY header within the handshake timeout"), "{line}");
}

/// The spec: a receiver must not guess. A header from a source not listed is refused with
/// one line; a plain TLS client from that source is served as always.
#[test]
fn proxy_header_from_an_unlisted_source_is_refused_and_plain_clients_are_served() {
    let echo_upstream = Upstream::start(echo());
    let certs = Certs::new();
    let target = echo_upstream.arg();
    let daemon = Daemon::start(&certs, &["--upstream", &target, "--accept-proxy", "10.0.0.0/8"]);
    let b = Balanced { daemon, certs, lines: channel().1, _upstream: echo_upstream };
    refused_before_tls(&b, 1, &v1_header("203.0.113.7:51000", "198.51.100.1:443"), "outside --accept-proxy");
    refused_before_tls(&b, 2, &v2_tcp4("203.0.113.7:51000", "198.51.100.1:443"), "outside --accept-proxy");
    let r = python(
        b.daemon.port(),
        &b.certs,
        &["--send", "hello", "--expect", "5", "--then", "close-notify"],
        PEER,
    );
    assert_eq!((r.text.as_str(), r.end.as_str()), ("hello", "clean"), "{}", r.raw);
    b.daemon.wait_for_log("conn 3 from 127.0.0.1:", PEER);
    assert!(b.daemon.wait_for_log("conn 3 from", PEER).ends_with("accepted"));
}

/// --max-clients-per-ip counts the address the header names, not the balancer's.
#[test]
fn per_ip_limit_applies_to_the_address_in_the_header() {
    let b = balanced(&["--max-clients-per-ip", "1"]);
    let first =
        open_proxied(b.daemon.port(), &b.certs, &v1_header("203.0.113.7:1000", "198.51.100.1:443"), &ping())
            .expect("the first from 203.0.113.7");
    b.daemon.wait_for_log("conn 1 from 203.0.113.7:1000", PEER);
    let second =
        open_proxied(b.daemon.port(), &b.certs, &v1_header("203.0.113.7:1001", "198.51.100.1:443"), &ping());
    assert!(second.is_err(), "a second from the same client address must be refused");
    b.daemon.wait_for_log("conn 2 from 203.0.113.7:1001 via 127.0.0.1:", PEER);
    assert!(b.daemon.wait_for_log("conn 2 ", PEER).ends_with("refused: max clients per ip"));
    b.serve(&v1_header("203.0.113.8:1000", "198.51.100.1:443"), &ping());
    drop(first);
}

// ---- --reuse-port ---------------------------------------------------------------------------

#[test]
fn reuse_port_lets_two_instances_share_a_port_and_both_serve() {
    let certs = Certs::new();
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let first = Daemon::start(&certs, &["--listen", &listen, "--reuse-port"]);
    let second = Daemon::start(&certs, &["--listen", &listen, "--reuse-port"]);
    assert_eq!(first.addr(), second.addr());
    // The kernel spreads connections over both accept queues by their address hash.
    let mut clients = Vec::new();
    for _ in 0..40 {
        let tcp = TcpStream::connect(first.addr()).unwrap();
        clients.push(tcp);
        if first.count_log(" accepted") > 0 && second.count_log(" accepted") > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(first.count_log(" accepted") > 0 && second.count_log(" accepted") > 0, "both must accept");
    let (status, stderr) = serve_to_exit(&certs, &["--listen", &listen], secs(10.0));
    assert_eq!(status.code(), Some(1), "without --reuse-port the port is taken: {stderr}");
}

#[test]
fn reuse_port_keeps_the_hitless_upgrade_working() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("tlsrelay.pid");
    let pid_arg = pid_file.display().to_string();
    let mut daemon = Daemon::start(&certs, &["--reuse-port", "--pid-file", &pid_arg]);
    let old = daemon.pid();
    let guard = KillPidFile(pid_file.clone());
    let (status, out) = run_to_exit(&["upgrade", "--pid-file", &pid_arg], secs(20.0));
    assert!(status.success(), "upgrade failed: {out}\nlog:\n{}", daemon.log_text());
    assert_eq!(daemon.wait_exit(secs(10.0)).code(), Some(0), "the old process exits 0");
    let new: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert_ne!(new, old);
    let r = python(daemon.port(), &certs, &["--send", "/quit\n", "--then", "wait"], PEER);
    assert_eq!(r.handshake, "ok", "the new process serves on the shared port: {}", r.raw);
    drop(guard);
}

/// The upgraded process is not our child: kill whatever the pid file names.
struct KillPidFile(std::path::PathBuf);

impl Drop for KillPidFile {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.0).ok().and_then(|t| t.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2) on the pid of a daemon this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
