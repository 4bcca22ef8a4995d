//! Forward mode: each client's TLS stream relayed to a plain upstream connection (TCP or
//! unix), with every closure of DESIGN §3, and the PROXY header ahead of the client's bytes
//! when asked. Reads `config`, `tls`, `stop` and `sys`; knows nothing of the daemon.

mod proxy_header;
mod pump;
mod stream;
mod upstream;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use log::warn;
use openssl::ssl::SslStream;

use crate::config::RelayConfig;
use crate::stop::Shutdown;
use crate::tls::abort;
use crate::tls::close::CloseKind;
use pump::Relay;

/// The two ends of the client's connection, as the PROXY header to the upstream names them:
/// the client (the address a balancer's header gave, when one did) and the address it reached.
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    pub client: SocketAddr,
    pub local: SocketAddr,
}

/// Connects the upstream and relays until the connection is closed: (how, bytes in, bytes out).
/// `connected` hears how long a successful upstream connect took (the daemon's histogram).
pub fn serve(
    id: u64,
    mut tls: SslStream<TcpStream>,
    endpoints: Endpoints,
    config: &RelayConfig,
    shutdown: &Shutdown,
    connected: impl FnOnce(Duration),
) -> (CloseKind, u64, u64) {
    let target = config.upstream.as_ref().expect("forward mode has an upstream");
    let started = Instant::now();
    let reached = upstream::connect(target, config, shutdown).and_then(|mut stream| {
        if stream.is_some() {
            connected(started.elapsed());
        }
        if let (Some(version), Some(upstream)) = (config.proxy_protocol, stream.as_mut()) {
            let facts = proxy_header::TlsFacts::of(tls.ssl());
            let header = proxy_header::build(version, endpoints.client, endpoints.local, &facts)?;
            upstream.write_header(&header).map_err(|e| format!("sending the PROXY header: {e}"))?;
        }
        Ok(stream)
    });
    let upstream = match reached {
        Ok(stream) => stream,
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
