//! The upstream connection of forward mode: a TCP target resolved per connection with every
//! address tried, bounded by --connect-timeout and cut short by a stop; or a unix socket.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Instant;

use crate::config::upstream_addr::UpstreamAddr;
use crate::config::RelayConfig;
use crate::error::describe_io;
use crate::stop::Shutdown;
use crate::sys;

use super::stream::UpstreamStream;

/// Connects to `target`. `Ok(None)`: a stop came first, so there is no upstream and the
/// client is closed cleanly. `Err`: the reason, naming each address or the path tried.
pub fn connect(
    target: &UpstreamAddr,
    config: &RelayConfig,
    shutdown: &Shutdown,
) -> Result<Option<UpstreamStream>, String> {
    match target {
        UpstreamAddr::Tcp(target) => connect_tcp(target, config, shutdown),
        UpstreamAddr::Unix(path) => connect_unix(path, None),
        UpstreamAddr::Abstract(name) => connect_unix(Path::new(""), Some(name)),
    }
}

/// Resolves `target` now (DNS may have changed) and tries every address in turn.
fn connect_tcp(
    target: &str,
    config: &RelayConfig,
    shutdown: &Shutdown,
) -> Result<Option<UpstreamStream>, String> {
    let deadline = Instant::now() + config.connect_timeout;
    let addrs: Vec<SocketAddr> = target.to_socket_addrs().map_err(|e| describe_io(&e))?.collect();
    let stops = [shutdown.close.fd(), shutdown.fast.fd()];
    let mut failures = Vec::new();
    for addr in addrs {
        match sys::connect(addr, deadline, &stops) {
            Ok(stream) => {
                stream.set_nodelay(true).map_err(|e| describe_io(&e))?;
                sys::set_keepalive(&stream, config.keepalive);
                return Ok(Some(UpstreamStream::Tcp(stream)));
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

/// A unix connect completes at once or fails: no deadline and no stop to wait for.
fn connect_unix(path: &Path, abstract_name: Option<&[u8]>) -> Result<Option<UpstreamStream>, String> {
    match sys::connect_unix(path, abstract_name) {
        Ok(stream) => Ok(Some(UpstreamStream::Unix(stream))),
        Err(err) if err.raw_os_error() == Some(libc::EAGAIN) => {
            Err(format!("{}: its accept queue is full", describe_io(&err)))
        }
        Err(err) => Err(describe_io(&err)),
    }
}
