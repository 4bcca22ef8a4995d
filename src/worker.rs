//! One connection's life: handshake with its deadline → upstream connect → pump → one
//! `closed:` log line.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::{info, warn};
use openssl::ssl::{Ssl, SslAcceptor, SslStream};

use crate::cli::ClientEof;
use crate::close::{classify, handshake_reason, CloseKind, TlsStatus, Want};
use crate::error::describe_io;
use crate::hub::HubMsg;
use crate::outbox::Outbox;
use crate::pump::Relay;
use crate::session::Session;
use crate::stop::Shutdown;
use crate::supervisor::Tally;
use crate::sys::{self, Wake};
use crate::tls;

/// What every worker needs to know, fixed at start.
pub struct Settings {
    /// Swapped whole by a reload; each handshake takes the current one.
    pub acceptor: RwLock<Arc<SslAcceptor>>,
    pub upstream: Option<String>,
    pub connect_timeout: Duration,
    pub close_timeout: Duration,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub keepalive: u32,
    pub client_eof: ClientEof,
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

/// Serves one accepted client from start to end; logs exactly one `closed:` line.
pub fn run(
    id: u64,
    tcp: TcpStream,
    peer: SocketAddr,
    reserved: Reserved,
    settings: &Settings,
    shutdown: &Shutdown,
    tally: &Tally,
) {
    let started = Instant::now();
    tls::forget_earlier_errors();
    let (kind, bytes_in, bytes_out) = serve(id, tcp, peer, reserved, settings, shutdown);
    info!(
        "conn {id} closed: {kind}, in {bytes_in} B, out {bytes_out} B, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    tally.count(&kind);
}

fn serve(
    id: u64,
    tcp: TcpStream,
    peer: SocketAddr,
    reserved: Reserved,
    settings: &Settings,
    shutdown: &Shutdown,
) -> (CloseKind, u64, u64) {
    // The socket comes non-blocking from sys::accept, with TCP_NODELAY and keepalive
    // inherited from the listening socket (sys::set_accepted_options).
    let tls = match handshake(tcp, settings, shutdown) {
        Ok(tls) => tls,
        Err(kind) => {
            // The operator's one line with the peer address and the reason.
            if matches!(kind, CloseKind::HandshakeFailed(_) | CloseKind::HandshakeTimeout) {
                info!("conn {id} from {peer} {kind}");
            }
            return (kind, 0, 0);
        }
    };
    log_established(id, &tls);

    match reserved {
        Reserved::Outbox(outbox) => serve_hub(id, tls, outbox, settings, shutdown),
        Reserved::Spare(spare) => {
            drop(spare); // its descriptor number is for the upstream socket now
            serve_forward(id, tls, settings, shutdown)
        }
    }
}

fn serve_forward(
    id: u64,
    tls: SslStream<TcpStream>,
    settings: &Settings,
    shutdown: &Shutdown,
) -> (CloseKind, u64, u64) {
    let target = settings.upstream.as_deref().expect("forward mode has an upstream");
    let upstream = match connect_upstream(target, settings, shutdown) {
        Ok(stream) => stream,
        Err(reason) => {
            warn!("conn {id} upstream {target} unreachable: {reason}");
            sys::set_linger_zero(tls.get_ref());
            return (CloseKind::UpstreamUnreachable, 0, 0);
        }
    };
    let mut relay = Relay::new(id, tls, upstream, settings, shutdown);
    let kind = relay.run();
    (kind, relay.bytes_in, relay.bytes_out)
}

fn serve_hub(
    id: u64,
    tls: SslStream<TcpStream>,
    outbox: Arc<Outbox>,
    settings: &Settings,
    shutdown: &Shutdown,
) -> (CloseKind, u64, u64) {
    let hub = settings.hub.clone().expect("hub mode has a hub");
    let mut session = Session::new(id, tls, outbox, settings, shutdown, hub);
    let kind = session.run();
    (kind, session.bytes_in, session.bytes_out)
}

/// Runs the server handshake on the non-blocking socket, bounded by --handshake-timeout;
/// a stop drops it.
fn handshake(
    tcp: TcpStream,
    settings: &Settings,
    shutdown: &Shutdown,
) -> Result<SslStream<TcpStream>, CloseKind> {
    let deadline = Instant::now() + settings.handshake_timeout;
    let acceptor = settings.acceptor.read().unwrap_or_else(|e| e.into_inner()).clone();
    let ssl = Ssl::new(acceptor.context()).map_err(|e| CloseKind::HandshakeFailed(e.to_string()))?;
    let mut tls = SslStream::new(ssl, tcp).map_err(|e| CloseKind::HandshakeFailed(e.to_string()))?;
    let stops = [shutdown.handshakes.fd(), shutdown.fast.fd()];
    loop {
        let err = match tls.accept() {
            Ok(()) => return Ok(tls),
            Err(err) => err,
        };
        let want = match classify(&err) {
            TlsStatus::Blocked(want) => want,
            TlsStatus::Ended(_) => return Err(CloseKind::HandshakeFailed(failure_reason(&tls, &err))),
        };
        let fd = tls.get_ref().as_raw_fd();
        match sys::wait_one(fd, want == Want::Write, &stops, deadline) {
            Ok(Wake::Ready | Wake::Spurious) => {}
            Ok(Wake::Stop) => return Err(CloseKind::DroppedInHandshake),
            Ok(Wake::Deadline) => return Err(CloseKind::HandshakeTimeout),
            Err(err) => return Err(CloseKind::HandshakeFailed(describe_io(&err))),
        }
    }
}

/// OpenSSL's reason, plus the certificate check's own when that is what failed.
fn failure_reason(tls: &SslStream<TcpStream>, err: &openssl::ssl::Error) -> String {
    let reason = handshake_reason(err);
    let verify = tls.ssl().verify_result();
    if verify == openssl::x509::X509VerifyResult::OK {
        return reason;
    }
    if verify == openssl::x509::X509VerifyResult::APPLICATION_VERIFICATION {
        // Our own verify callback refused it (tls.rs).
        return format!("{reason} (client certificate matches no --allow-cn/--allow-san)");
    }
    format!("{reason} ({})", verify.error_string())
}

/// `conn ID established TLSv1.3 CIPHER [client CN=…]`
fn log_established(id: u64, tls: &SslStream<TcpStream>) {
    let ssl = tls.ssl();
    let cipher = ssl.current_cipher().map(|c| c.name()).unwrap_or("unknown");
    let client = ssl
        .peer_certificate()
        .and_then(|cert| {
            let cn = cert.subject_name().entries_by_nid(openssl::nid::Nid::COMMONNAME).next()?;
            Some(format!(" client CN={}", cn.data().to_string().ok()?))
        })
        .unwrap_or_default();
    info!("conn {id} established {} {cipher}{client}", ssl.version_str());
}

/// Resolves `target` now (DNS may have changed) and tries every address in turn.
/// `Ok(None)`: a stop came first, so there is no upstream and the client is closed cleanly.
fn connect_upstream(
    target: &str,
    settings: &Settings,
    shutdown: &Shutdown,
) -> Result<Option<TcpStream>, String> {
    let deadline = Instant::now() + settings.connect_timeout;
    let addrs: Vec<SocketAddr> = target.to_socket_addrs().map_err(|e| describe_io(&e))?.collect();
    let stops = [shutdown.close.fd(), shutdown.fast.fd()];
    let mut failures = Vec::new();
    for addr in addrs {
        match sys::connect(addr, deadline, &stops) {
            Ok(stream) => {
                stream.set_nodelay(true).map_err(|e| describe_io(&e))?;
                sys::set_keepalive(&stream, settings.keepalive);
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
