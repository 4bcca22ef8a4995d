//! A plain-HTTP client for the daemon's `--status` endpoint.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::{secs, Daemon};

/// The real address of `--status 127.0.0.1:0`, from the daemon's log.
pub fn status_addr(daemon: &Daemon) -> SocketAddr {
    let line = daemon.wait_for_log("status endpoint on http://", secs(5.0));
    let rest = line.split("http://").nth(1).unwrap();
    rest.split('/').next().unwrap().parse().unwrap()
}

/// One `GET path`: (status code, body); `None` when the endpoint does not answer in 3 s.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, secs(3.0)).ok()?;
    stream.set_read_timeout(Some(secs(3.0))).ok()?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n")?.1.to_string()))
}
