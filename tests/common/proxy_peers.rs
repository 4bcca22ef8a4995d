//! Real PROXY protocol peers for the tests of DESIGN §11: Debian's nginx and haproxy as
//! unprivileged foreground processes with their configuration in a temporary directory, on
//! 127.0.0.1 ports found free by binding port 0; and a TLS client that sends a PROXY header
//! of the test's choosing before its handshake, as a balancer in front of tlsrelay would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslStream, SslVerifyMode};
use tempfile::TempDir;

use super::process::Proc;
use super::Certs;

/// How long nginx or haproxy may take to accept connections after it starts.
const START: Duration = Duration::from_secs(10);

/// A 127.0.0.1 port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something accepts on 127.0.0.1:`port`.
pub fn wait_listening(port: u16, what: &str, proc: &Proc) {
    let deadline = Instant::now() + START;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} within {START:?}; stdout:\n{}\nstderr:\n{}",
            proc.stdout(),
            proc.stderr()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// nginx (http module) on `listen 127.0.0.1:PORT proxy_protocol;`, answering `ok` to every
/// request and logging `$proxy_protocol_addr:$proxy_protocol_port` per request.
pub struct Nginx {
    pub port: u16,
    proc: Proc,
    dir: TempDir,
}

impl Nginx {
    pub fn start() -> Nginx {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               log_format pp 'PP $proxy_protocol_addr:$proxy_protocol_port';\n\
               access_log {d}/access.log pp;\n\
               server {{ listen 127.0.0.1:{port} proxy_protocol;\n\
                 location / {{ return 200 \"ok\\n\"; }} }}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let mut cmd = Command::new("nginx");
        cmd.arg("-p").arg(dir.path()).arg("-c").arg(dir.path().join("nginx.conf"));
        cmd.arg("-e").arg(dir.path().join("error.log"));
        let proc = Proc::spawn("nginx", cmd);
        wait_listening(port, "nginx", &proc);
        Nginx { port, proc, dir }
    }

    /// The `--upstream` argument.
    pub fn arg(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Waits until the access log has a line containing `needle`; returns the whole log.
    pub fn wait_logged(&self, needle: &str, timeout: Duration) -> String {
        let path = self.dir.path().join("access.log");
        let deadline = Instant::now() + timeout;
        loop {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            if log.contains(needle) {
                return log;
            }
            if Instant::now() >= deadline {
                let errors = std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default();
                panic!(
                    "nginx logged no {needle:?} within {timeout:?}; access log:\n{log}\nerror log:\n{errors}\n{}",
                    self.proc.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// haproxy in the foreground (`-db`), logging to its stdout.
pub struct Haproxy {
    proc: Proc,
    _dir: TempDir,
}

impl Haproxy {
    /// Starts haproxy with `global` logging to stdout, `defaults` in tcp mode, and `body`
    /// (frontends and backends); waits until `port` accepts.
    pub fn start(body: &str, port: u16) -> Haproxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = format!(
            "global\n  log stdout format raw local0\n\n\
             defaults\n  mode tcp\n  log global\n  timeout connect 2s\n  timeout client 60s\n  \
             timeout server 60s\n\n{body}\n"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, conf).unwrap();
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db").arg("-f").arg(&path);
        let proc = Proc::spawn("haproxy", cmd);
        wait_listening(port, "haproxy", &proc);
        Haproxy { proc, _dir: dir }
    }

    pub fn log(&self) -> String {
        self.proc.stdout() + &self.proc.stderr()
    }

    /// Waits until haproxy's log has `n` lines containing `needle`; returns the log.
    pub fn wait_logged(&self, needle: &str, n: usize, timeout: Duration) -> String {
        let ok = self.proc.wait_until(timeout, |o| {
            let text = o.stdout_text() + &o.stderr_text();
            text.lines().filter(|l| l.contains(needle)).count() >= n
        });
        assert!(
            ok,
            "haproxy logged {needle:?} fewer than {n} times within {timeout:?}; log:\n{}",
            self.log()
        );
        self.log()
    }
}

/// What a [`ProxiedTls`] client does.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// Sent before the handshake, in pieces of this size (0: at once) with `gap` between.
    pub segment: usize,
    pub gap: Duration,
    pub alpn: Option<Vec<u8>>,
    /// A client certificate name made by `gen-cert --client NAME`.
    pub client_cert: Option<String>,
    /// Sent after the handshake, then close_notify.
    pub request: Vec<u8>,
}

/// The outcome of one PROXY-then-TLS connection.
#[derive(Debug)]
pub struct ProxiedTls {
    /// `Err`: the handshake failed (the text says how).
    pub handshake: Result<(), String>,
    pub alpn: Option<Vec<u8>>,
    pub received: Vec<u8>,
    /// Our local address, as the relay saw it.
    pub local: SocketAddr,
}

/// Connects to 127.0.0.1:`port`, sends `header`, then does a TLS handshake (SNI localhost)
/// and sends `request`; reads the answer until the server ends the stream.
pub fn proxied_tls(port: u16, certs: &Certs, header: &[u8], options: &ClientOptions) -> ProxiedTls {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect to the relay");
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let local = tcp.local_addr().unwrap();
    send_in_segments(&mut tcp, header, options.segment, options.gap);
    let connector = connector(certs, options);
    let mut tls = match connector.connect("localhost", tcp) {
        Ok(tls) => tls,
        Err(err) => {
            return ProxiedTls { handshake: Err(err.to_string()), alpn: None, received: Vec::new(), local }
        }
    };
    let alpn = tls.ssl().selected_alpn_protocol().map(<[u8]>::to_vec);
    let mut received = Vec::new();
    if tls.write_all(&options.request).is_ok() {
        let _ = tls.read_to_end(&mut received);
    }
    let _ = tls.shutdown();
    ProxiedTls { handshake: Ok(()), alpn, received, local }
}

/// Writes `bytes` in pieces of `segment` bytes (0: all at once), `gap` apart.
pub fn send_in_segments(tcp: &mut TcpStream, bytes: &[u8], segment: usize, gap: Duration) {
    tcp.set_nodelay(true).unwrap();
    if segment == 0 {
        tcp.write_all(bytes).expect("send the PROXY header");
        return;
    }
    for piece in bytes.chunks(segment) {
        tcp.write_all(piece).expect("send a piece of the PROXY header");
        thread::sleep(gap);
    }
}

fn connector(certs: &Certs, options: &ClientOptions) -> SslConnector {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
    builder.set_ca_file(certs.ca()).unwrap();
    builder.set_verify(SslVerifyMode::PEER);
    if let Some(alpn) = &options.alpn {
        builder.set_alpn_protos(alpn).unwrap();
    }
    if let Some(name) = &options.client_cert {
        let dir: PathBuf = certs.dir();
        builder.set_certificate_chain_file(dir.join(format!("{name}.crt"))).unwrap();
        builder.set_private_key_file(dir.join(format!("{name}.key")), SslFiletype::PEM).unwrap();
    }
    builder.build()
}

/// A PROXY v1 line for a TCP client at `source` that reached `destination`.
pub fn v1_header(source: &str, destination: &str) -> Vec<u8> {
    let (s, d): (SocketAddr, SocketAddr) = (source.parse().unwrap(), destination.parse().unwrap());
    let family = if s.is_ipv4() { "TCP4" } else { "TCP6" };
    format!("PROXY {family} {} {} {} {}\r\n", s.ip(), d.ip(), s.port(), d.port()).into_bytes()
}

/// The 12-byte PROXY v2 signature.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A PROXY v2 header: version 2 with `command` (0 LOCAL, 1 PROXY), the family/protocol
/// byte, then `body` (addresses and TLVs).
pub fn v2_header(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.extend([0x20 | command, family]);
    header.extend((body.len() as u16).to_be_bytes());
    header.extend_from_slice(body);
    header
}

/// A v2 PROXY header for TCP over IPv4 from `source` to `destination`.
pub fn v2_tcp4(source: &str, destination: &str) -> Vec<u8> {
    let (s, d): (SocketAddr, SocketAddr) = (source.parse().unwrap(), destination.parse().unwrap());
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (s, d) else { panic!("IPv4 addresses") };
    let mut body = Vec::new();
    body.extend(s.ip().octets());
    body.extend(d.ip().octets());
    body.extend(s.port().to_be_bytes());
    body.extend(d.port().to_be_bytes());
    v2_header(1, 0x11, &body)
}

/// A decoded PROXY v2 header, read by hand (independently of the relay's own builder).
#[derive(Debug, Default)]
pub struct DecodedV2 {
    pub command: u8,
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
    /// (type, value) in order.
    pub tlvs: Vec<(u8, Vec<u8>)>,
}

impl DecodedV2 {
    pub fn tlv(&self, kind: u8) -> Option<&[u8]> {
        self.tlvs.iter().find(|(k, _)| *k == kind).map(|(_, v)| v.as_slice())
    }
}

/// Reads a v2 header off `stream`: exactly its bytes, nothing after it.
pub fn read_v2(stream: &mut impl Read) -> DecodedV2 {
    let mut fixed = [0u8; 16];
    stream.read_exact(&mut fixed).expect("16 bytes of PROXY v2 header");
    assert_eq!(&fixed[..12], V2_SIGNATURE, "not a v2 signature: {fixed:?}");
    assert_eq!(fixed[12] >> 4, 2, "version 2");
    let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).expect("the v2 header's body");
    let mut decoded = DecodedV2 { command: fixed[12] & 0x0f, ..Default::default() };
    let rest = match fixed[13] {
        0x11 => {
            let ip = |b: &[u8]| std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            decoded.source = Some(SocketAddr::from((ip(&body[0..4]), port(&body[8..10]))));
            decoded.destination = Some(SocketAddr::from((ip(&body[4..8]), port(&body[10..12]))));
            &body[12..]
        }
        0x21 => {
            let ip = |b: &[u8]| std::net::Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap());
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            decoded.source = Some(SocketAddr::from((ip(&body[0..16]), port(&body[32..34]))));
            decoded.destination = Some(SocketAddr::from((ip(&body[16..32]), port(&body[34..36]))));
            &body[36..]
        }
        _ => &body[..],
    };
    decoded.tlvs = split_tlvs(rest);
    decoded
}

/// Splits a run of TLVs (type u8, length u16 big-endian, value).
pub fn split_tlvs(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut tlvs = Vec::new();
    while bytes.len() >= 3 {
        let len = u16::from_be_bytes([bytes[1], bytes[2]]) as usize;
        assert!(bytes.len() >= 3 + len, "a TLV runs past the header: {bytes:?}");
        tlvs.push((bytes[0], bytes[3..3 + len].to_vec()));
        bytes = &bytes[3 + len..];
    }
    assert!(bytes.is_empty(), "trailing bytes after the TLVs: {bytes:?}");
    tlvs
}

/// Reads a v1 line off `stream` byte by byte (nothing after it).
pub fn read_v1(stream: &mut impl Read) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") && line.len() < 108 {
        stream.read_exact(&mut byte).expect("a PROXY v1 line");
        line.push(byte[0]);
    }
    String::from_utf8(line).expect("ASCII")
}

/// Connects, sends `header`, handshakes and sends `options.request` (when not empty); the
/// stream stays open for the test.
pub fn open_proxied(
    port: u16,
    certs: &Certs,
    header: &[u8],
    options: &ClientOptions,
) -> Result<SslStream<TcpStream>, String> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    send_in_segments(&mut tcp, header, options.segment, options.gap);
    let mut tls = connector(certs, options).connect("localhost", tcp).map_err(|e| e.to_string())?;
    if !options.request.is_empty() {
        tls.write_all(&options.request).map_err(|e| format!("write: {e}"))?;
    }
    Ok(tls)
}

/// Reads until exactly `expected` has come back; panics on anything else.
pub fn expect_echo(tls: &mut SslStream<TcpStream>, expected: &[u8]) {
    let mut got = vec![0u8; expected.len()];
    tls.read_exact(&mut got).unwrap_or_else(|e| panic!("no echo of {expected:?}: {e}"));
    assert_eq!(got, expected);
}

/// A client that sends `options.request`, reads `expect` back and closes; returns its
/// local address (the one a consumer behind the relay must log).
pub fn proxied_tls_until(port: u16, certs: &Certs, options: &ClientOptions, expect: &[u8]) -> SocketAddr {
    let mut tls = open_proxied(port, certs, b"", options).expect("handshake");
    expect_echo(&mut tls, expect);
    let local = tls.get_ref().local_addr().unwrap();
    let _ = tls.shutdown();
    let _ = tls.read(&mut [0u8; 16]);
    local
}
