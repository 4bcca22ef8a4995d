//! Forward mode: each client's TLS stream relayed to a plain upstream connection, with every
//! closure of DESIGN §3. Reads `config`, `tls`, `stop` and `sys`; knows nothing of the daemon.

mod pump;
mod upstream;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use log::warn;
use openssl::ssl::SslStream;

use crate::config::RelayConfig;
use crate::stop::Shutdown;
use crate::tls::abort;
use crate::tls::close::CloseKind;
use pump::Relay;

/// Connects the upstream and relays until the connection is closed: (how, bytes in, bytes out).
/// `connected` hears how long a successful upstream connect took (the daemon's histogram).
pub fn serve(
    id: u64,
    mut tls: SslStream<TcpStream>,
    config: &RelayConfig,
    shutdown: &Shutdown,
    connected: impl FnOnce(Duration),
) -> (CloseKind, u64, u64) {
    let target = config.upstream.as_deref().expect("forward mode has an upstream");
    let started = Instant::now();
    let upstream = match upstream::connect(target, config, shutdown) {
        Ok(stream) => {
            if stream.is_some() {
                connected(started.elapsed());
            }
            stream
        }
        Err(reason) => {
            warn!("conn {id} upstream {target} unreachable: {reason}");
            // Not a clean close: an `internal_error` alert, then a reset (DESIGN §3).
            abort::abort(&mut tls);
            return (CloseKind::UpstreamUnreachable, 0, 0);
        }
    };
    let mut relay = Relay::new(id, tls, upstream, config, shutdown);
    let kind = relay.run();
    (kind, relay.bytes_in, relay.bytes_out)
}
