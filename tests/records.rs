//! Several TLS records arriving in one TCP segment are all relayed at once.
//!
//! The daemon reads with OpenSSL's read-ahead on: one recv(2) may bring in records beyond
//! the one being decrypted, and poll(2) cannot see those any more. A worker that went to
//! sleep before reading them would leave them stuck until the client sent something else.

mod common;
mod hub_support;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::upstream::echo;
use common::{forward, secs, Certs, Daemon};
use hub_support::{HubClient, LINE_DEADLINE};
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};

/// A socket that holds back everything written until `send_held` sends it in one write,
/// so that several TLS records reach the relay in one TCP segment.
#[derive(Debug)]
struct HoldingSocket {
    tcp: TcpStream,
    held: Vec<u8>,
    holding: bool,
}

impl HoldingSocket {
    fn send_held(&mut self) {
        self.tcp.write_all(&self.held).unwrap();
        self.held.clear();
    }
}

impl Read for HoldingSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.read(buf)
    }
}

impl Write for HoldingSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.holding {
            return self.tcp.write(buf);
        }
        self.held.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn connect(port: u16, certs: &Certs) -> SslStream<HoldingSocket> {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
    builder.set_ca_file(certs.ca()).unwrap();
    builder.set_verify(SslVerifyMode::PEER);
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(secs(10.0))).unwrap();
    let socket = HoldingSocket { tcp, held: Vec::new(), holding: false };
    builder.build().connect("localhost", socket).unwrap()
}

/// Writes each chunk as its own TLS record, then sends all the records in one TCP write.
fn send_as_one_segment(tls: &mut SslStream<HoldingSocket>, chunks: &[&[u8]]) {
    tls.get_mut().holding = true;
    for chunk in chunks {
        tls.write_all(chunk).unwrap();
    }
    tls.get_mut().holding = false;
    tls.get_mut().send_held();
}

/// Reads until `want` bytes came, or fails with what did come by the deadline.
fn read_exactly(tls: &mut SslStream<HoldingSocket>, want: usize, within: Duration) -> Vec<u8> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < want {
        assert!(Instant::now() < deadline, "only {:?} by the deadline", String::from_utf8_lossy(&got));
        match tls.read(&mut buf) {
            Ok(0) => panic!("closed after {:?}", String::from_utf8_lossy(&got)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(err) => panic!("read failed after {:?}: {err}", String::from_utf8_lossy(&got)),
        }
    }
    got
}

#[test]
fn forward_relays_every_record_of_one_segment() {
    let f = forward(echo(), &[]);
    let mut tls = connect(f.port(), &f.certs);
    send_as_one_segment(&mut tls, &[b"one ", b"two ", b"three"]);
    let echoed = read_exactly(&mut tls, 13, secs(5.0));
    assert_eq!(echoed, b"one two three");
}

#[test]
fn hub_relays_every_line_of_one_segment() {
    let certs = Certs::new();
    let daemon = Daemon::start(&certs, &[]);
    let listener = HubClient::connect(&daemon, &certs);
    let mut tls = connect(daemon.port(), &certs);
    let welcome = read_line(&mut tls);
    assert!(welcome.starts_with("* welcome to tlsrelay; you are "), "{welcome}");
    let nick =
        welcome.trim_start_matches("* welcome to tlsrelay; you are ").split('.').next().unwrap().to_string();
    listener.wait_line(&format!("* {nick} joined"), LINE_DEADLINE);

    send_as_one_segment(&mut tls, &[b"first\n", b"second\n", b"third\n"]);
    for word in ["first", "second", "third"] {
        listener.wait_line(&format!("<{nick}> {word}"), LINE_DEADLINE);
    }
}

/// One line of the hub's output, read a byte at a time (the test's own stream is blocking).
fn read_line(tls: &mut SslStream<HoldingSocket>) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        assert_eq!(tls.read(&mut byte).unwrap(), 1, "closed after {:?}", String::from_utf8_lossy(&line));
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap().trim_end().to_string()
}
