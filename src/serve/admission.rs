//! Who a connection's client is, settled on its worker thread before the TLS handshake: the
//! direct peer, or — from a `--accept-proxy` source — the client a balancer's PROXY header
//! names; then its `--max-clients-per-ip` slot and its `accepted` line. A header that is bad,
//! late, or sent by a source not listed closes the connection before any TLS byte, with one
//! line naming the source address.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Instant;

use log::{debug, info};

use crate::serve::per_ip::{PerIp, Slot};
use crate::serve::proxy_accept::{self, Origin, Refused};
use crate::serve::tally::{Refusal, Tally};

/// How the listener handed a connection over.
pub enum Admission {
    /// A direct client; `logged`: its `accepted` line is out and its address slot taken.
    Direct { logged: bool },
    /// From a `--accept-proxy` source: a PROXY header comes first; the per-IP count (when
    /// set) applies to the client it names.
    Proxied(Option<Arc<PerIp>>),
}

/// The client as the rest of the connection sees it.
pub struct Admitted {
    /// The client's address: the header's, or the direct peer's.
    pub client: SocketAddr,
    /// The address the client connected to, when a header named it.
    pub destination: Option<SocketAddr>,
    /// Held until the connection ends.
    pub _slot: Option<Slot>,
}

/// Why a connection ends before its handshake.
pub enum Dropped {
    /// A stop came first: counted as dropped in handshake, no line of its own.
    Stop,
    /// Refused, its one line logged.
    Refused(Refusal),
}

/// Settles who the client is; logs `accepted` (or the one refusal line).
pub fn admit(
    id: u64,
    tcp: &TcpStream,
    peer: SocketAddr,
    admission: Admission,
    (deadline, stops): (Instant, &[RawFd]),
    tally: &Tally,
) -> Result<Admitted, Dropped> {
    let direct = Admitted { client: peer, destination: None, _slot: None };
    match admission {
        Admission::Direct { logged: true } => Ok(direct),
        Admission::Direct { logged: false } => match proxy_accept::starts_with_header(tcp, deadline, stops) {
            Ok(true) => {
                info!("conn {id} from {peer} refused: a PROXY header from a source outside --accept-proxy (add the balancer's address to --accept-proxy)");
                Err(Dropped::Refused(Refusal::ProxyUntrusted))
            }
            Err(Refused::Stop) => Err(Dropped::Stop),
            // Silence or an early end: the handshake reports it as usual.
            _ => {
                tally.accept();
                info!("conn {id} from {peer} accepted");
                Ok(direct)
            }
        },
        Admission::Proxied(per_ip) => match proxy_accept::read(tcp, deadline, stops) {
            Ok(origin) => admit_origin(id, peer, origin, per_ip.as_ref(), tally),
            Err(Refused::Stop) => Err(Dropped::Stop),
            Err(refused) => {
                info!("conn {id} from {peer} refused: {refused} (a source in --accept-proxy must send a PROXY v1/v2 header first; is the balancer's send-proxy on?)");
                Err(Dropped::Refused(Refusal::ProxyHeader))
            }
        },
    }
}

fn admit_origin(
    id: u64,
    peer: SocketAddr,
    origin: Origin,
    per_ip: Option<&Arc<PerIp>>,
    tally: &Tally,
) -> Result<Admitted, Dropped> {
    let (client, destination, via) = match origin {
        Origin::Relayed { source, destination } => (source, Some(destination), format!(" via {peer}")),
        Origin::Direct(why) => {
            debug!("conn {id} from {peer}: {why}, served as the direct peer");
            (peer, None, String::new())
        }
    };
    let slot = match per_ip {
        Some(per_ip) => match per_ip.take(client.ip()) {
            Some(slot) => Some(slot),
            None => {
                info!("conn {id} from {client}{via} refused: max clients per ip");
                return Err(Dropped::Refused(Refusal::MaxClientsPerIp));
            }
        },
        None => None,
    };
    tally.accept();
    info!("conn {id} from {client}{via} accepted");
    Ok(Admitted { client, destination, _slot: slot })
}
