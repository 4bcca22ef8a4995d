//! One connection's life on its worker thread: the handshake with its deadline, then forward
//! mode or the hub, then exactly one `closed:` log line.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crossbeam_channel::Sender;
use log::info;
use openssl::ssl::{SslAcceptor, SslStream};

use crate::config::RelayConfig;
use crate::forward::Endpoints;
use crate::hub::outbox::Outbox;
use crate::hub::room::HubMsg;
use crate::serve::admission::{self, Admission, Admitted, Dropped};
use crate::serve::tally::Tally;
use crate::stop::Shutdown;
use crate::tls::close::CloseKind;
use crate::tls::{handshake, handshake_memory};
use crate::{forward, hub};

/// What every worker needs to know, fixed at start (the acceptor aside).
pub struct Settings {
    /// Swapped whole by a reload; each handshake takes the current one.
    pub acceptor: RwLock<Arc<SslAcceptor>>,
    pub relay: RelayConfig,
    /// Hub mode: where lines go. `None` in forward mode.
    pub hub: Option<Sender<HubMsg>>,
}

/// A connection's second descriptor, taken by the listener before the worker starts, so
/// that a full descriptor table refuses a connection at once rather than after its handshake.
pub enum Reserved {
    /// Hub mode: the client's outbox with its wake-up eventfd.
    Outbox(Arc<Outbox>),
    /// Forward mode: a placeholder, closed just before the upstream socket is made.
    Spare(OwnedFd),
}

pub fn reserve_descriptor(tcp: &TcpStream, settings: &Settings) -> std::io::Result<Reserved> {
    match settings.hub {
        Some(_) => Ok(Reserved::Outbox(Arc::new(Outbox::new()?))),
        None => Ok(Reserved::Spare(tcp.as_fd().try_clone_to_owned()?)),
    }
}

/// An accepted connection as the listener hands it to its worker.
pub struct Client {
    pub tcp: TcpStream,
    /// The direct peer (a balancer, with --accept-proxy).
    pub peer: SocketAddr,
    pub admission: Admission,
}

/// Serves one accepted client from start to end; logs exactly one `closed:` line (or, for a
/// connection refused before its handshake, the one line saying why).
pub fn run(
    id: u64,
    client: Client,
    reserved: Reserved,
    settings: &Settings,
    shutdown: &Shutdown,
    tally: &Tally,
) {
    let started = Instant::now();
    handshake_memory::forget_earlier_errors();
    // One deadline for the PROXY header and the handshake after it.
    let deadline = started + settings.relay.handshake_timeout;
    let stops = [shutdown.handshakes.fd(), shutdown.fast.fd()];
    let Client { tcp, peer, admission } = client;
    let (kind, bytes_in, bytes_out) =
        match admission::admit(id, &tcp, peer, admission, (deadline, &stops), tally) {
            Ok(admitted) => serve(id, tcp, &admitted, reserved, settings, shutdown, (deadline, tally)),
            // Still waiting for its PROXY header: a connection dropped in its handshake.
            Err(Dropped::Stop) => (CloseKind::DroppedInHandshake, 0, 0),
            Err(Dropped::Refused(why)) => return tally.refused(why),
        };
    // Counted before the line: a scrape after the line has been read includes it.
    tally.count(&kind);
    info!(
        "conn {id} closed: {kind}, in {bytes_in} B, out {bytes_out} B, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn serve(
    id: u64,
    tcp: TcpStream,
    admitted: &Admitted,
    reserved: Reserved,
    settings: &Settings,
    shutdown: &Shutdown,
    (deadline, tally): (Instant, &Tally),
) -> (CloseKind, u64, u64) {
    let peer = admitted.client;
    let endpoints = endpoints(&tcp, admitted, &settings.relay);
    // The socket comes non-blocking from sys::accept, with TCP_NODELAY and keepalive
    // inherited from the listening socket (sys::set_accepted_options).
    let tls = match handshake(tcp, settings, shutdown, deadline, tally) {
        Ok(tls) => tls,
        Err(kind) => {
            // The operator's one line with the peer address and the reason.
            if matches!(kind, CloseKind::HandshakeFailed(_) | CloseKind::HandshakeTimeout) {
                info!("conn {id} from {peer} {kind}");
            }
            return (kind, 0, 0);
        }
    };
    handshake::log_established(id, &tls);

    match reserved {
        Reserved::Outbox(outbox) => {
            let room = settings.hub.clone().expect("hub mode has a hub");
            hub::serve(id, tls, outbox, room, &settings.relay, shutdown)
        }
        Reserved::Spare(spare) => {
            drop(spare); // its descriptor number is for the upstream socket now
            let connected = |took| tally.upstream_connect_duration.observe(took);
            forward::serve(id, tls, endpoints, &settings.relay, shutdown, connected)
        }
    }
}

/// The handshake with the current acceptor, bounded by --handshake-timeout; a stop drops it.
fn handshake(
    tcp: TcpStream,
    settings: &Settings,
    shutdown: &Shutdown,
    deadline: Instant,
    tally: &Tally,
) -> Result<SslStream<TcpStream>, CloseKind> {
    let started = Instant::now();
    let acceptor = settings.acceptor.read().unwrap_or_else(|e| e.into_inner()).clone();
    let tls = handshake::accept(&acceptor, tcp, deadline, &[shutdown.handshakes.fd(), shutdown.fast.fd()])?;
    // A clock read through the vDSO, not a system call.
    tally.handshake_took(started.elapsed());
    Ok(tls)
}

/// The client and the address it reached, for the PROXY header to the upstream (the local
/// address is looked up only when a header is sent).
fn endpoints(tcp: &TcpStream, admitted: &Admitted, relay: &RelayConfig) -> Endpoints {
    let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
    let local = match (admitted.destination, relay.proxy_protocol) {
        (Some(destination), _) => destination,
        (None, Some(_)) => tcp.local_addr().unwrap_or(unknown),
        (None, None) => unknown,
    };
    Endpoints { client: admitted.client, local }
}
