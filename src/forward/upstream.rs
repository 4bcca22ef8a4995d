//! The upstream connection of forward mode: resolved per connection, every address tried,
//! bounded by --connect-timeout and cut short by a stop.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Instant;

use crate::config::RelayConfig;
use crate::error::describe_io;
use crate::stop::Shutdown;
use crate::sys;

/// Resolves `target` now (DNS may have changed) and tries every address in turn.
/// `Ok(None)`: a stop came first, so there is no upstream and the client is closed cleanly.
pub fn connect(target: &str, config: &RelayConfig, shutdown: &Shutdown) -> Result<Option<TcpStream>, String> {
    let deadline = Instant::now() + config.connect_timeout;
    let addrs: Vec<SocketAddr> = target.to_socket_addrs().map_err(|e| describe_io(&e))?.collect();
    let stops = [shutdown.close.fd(), shutdown.fast.fd()];
    let mut failures = Vec::new();
    for addr in addrs {
        match sys::connect(addr, deadline, &stops) {
            Ok(stream) => {
                stream.set_nodelay(true).map_err(|e| describe_io(&e))?;
                sys::set_keepalive(&stream, config.keepalive);
                return Ok(Some(stream));
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => return Ok(None),
            Err(err) => failures.push(format!("{addr}: {}", describe_io(&err))),
        }
    }
    if failures.is_empty() {
        return Err("the name resolved to no address".into());
    }
    Err(failures.join("; "))
}
