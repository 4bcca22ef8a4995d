//! Hub mode: without an upstream, connected clients relay lines to each other (DESIGN §5).
//! The room thread owns the nick table and fans lines out to per-client outboxes; each
//! client's session, on its worker thread, frames what it says and drains its outbox.
//! Reads `config`, `tls`, `stop` and `sys`; knows nothing of the daemon.

pub mod lines;
pub mod outbox;
pub mod room;
mod session;

use std::net::TcpStream;
use std::sync::Arc;

use crossbeam_channel::Sender;
use openssl::ssl::SslStream;

use crate::config::RelayConfig;
use crate::stop::Shutdown;
use crate::tls::close::CloseKind;
use outbox::Outbox;
use room::HubMsg;
use session::Session;

/// Serves one hub client until it is closed: (how, bytes in, bytes out).
pub fn serve(
    id: u64,
    tls: SslStream<TcpStream>,
    outbox: Arc<Outbox>,
    room: Sender<HubMsg>,
    config: &RelayConfig,
    shutdown: &Shutdown,
) -> (CloseKind, u64, u64) {
    let mut session = Session::new(id, tls, outbox, config, shutdown, room);
    let kind = session.run();
    (kind, session.bytes_in, session.bytes_out)
}
