//! Ctrl-C for `tlsrelay connect`: a first press asks for a clean close, a second stops waiting.

use std::os::fd::RawFd;
use std::sync::Arc;

use crate::error::Error;
use crate::sys::Beacon;

/// Ctrl-C as two beacons the poll loops watch: the first press asks for a clean close
/// (close_notify sent, the server's awaited), the second stops waiting.
pub struct Interrupt {
    pub stop: Beacon,
    pub fast: Beacon,
}

impl Interrupt {
    pub fn install() -> Result<Arc<Self>, Error> {
        let interrupt = Arc::new(Interrupt { stop: Beacon::new()?, fast: Beacon::new()? });
        let handler = interrupt.clone();
        ctrlc::set_handler(move || match handler.stop.is_lit() {
            false => handler.stop.light(),
            true => handler.fast.light(),
        })
        .map_err(|e| Error::Io(std::io::Error::other(format!("cannot handle Ctrl-C: {e}"))))?;
        Ok(interrupt)
    }

    pub fn fds(&self) -> [RawFd; 2] {
        [self.stop.fd(), self.fast.fd()]
    }
}
