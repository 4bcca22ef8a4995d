//! A hub client over a socket connected inside the container: TLS with the package's
//! development CA, line reads, and how the stream ended.

use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use openssl::ssl::{ErrorCode, SslConnector, SslMethod, SslStream};

pub fn connector(ca: &Path) -> SslConnector {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).expect("connector");
    builder.set_ca_file(ca).unwrap_or_else(|e| panic!("CA file {}: {e}", ca.display()));
    builder.build()
}

pub struct HubClient {
    tls: SslStream<TcpStream>,
    pending: Vec<u8>,
}

impl HubClient {
    /// Handshakes over `tcp` (verifying `localhost` against the CA) and reads the welcome.
    pub fn start(tcp: TcpStream, connector: &SslConnector) -> Result<(HubClient, String), String> {
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let tls = connector.connect("localhost", tcp).map_err(|e| format!("handshake: {e}"))?;
        let mut client = HubClient { tls, pending: Vec::new() };
        let welcome = client.line()?;
        if !welcome.starts_with("* welcome to tlsrelay") {
            return Err(format!("first line is not the welcome: {welcome:?}"));
        }
        Ok((client, welcome))
    }

    /// The serial of the server's certificate, in hex.
    pub fn serial(&self) -> String {
        let cert = self.tls.ssl().peer_certificate().expect("server certificate");
        cert.serial_number().to_bn().unwrap().to_hex_str().unwrap().to_string()
    }

    pub fn send(&mut self, line: &str) {
        self.tls.ssl_write(format!("{line}\n").as_bytes()).expect("write to the hub");
    }

    /// The next line, without its newline.
    pub fn line(&mut self) -> Result<String, String> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(at) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=at).collect();
                return Ok(String::from_utf8_lossy(&line[..at]).into_owned());
            }
            match self.tls.ssl_read(&mut chunk) {
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// Reads to the end: the lines left, and whether the server closed with close_notify
    /// (then we answer with ours, completing the clean close).
    pub fn finish(mut self) -> (Vec<String>, bool) {
        let mut chunk = [0u8; 4096];
        let clean = loop {
            match self.tls.ssl_read(&mut chunk) {
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) => break e.code() == ErrorCode::ZERO_RETURN,
            }
        };
        if clean {
            let _ = self.tls.shutdown();
        }
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        (text.lines().map(str::to_string).collect(), clean)
    }
}
