//! The served certificate's expiry, kept for `/metrics` and checked at start, on every
//! reload and once a day (a warning within 30 days, an error once expired: DESIGN §12).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use log::warn;
use openssl::ssl::SslAcceptor;

use crate::tls::expiry::{self, Expiry};

/// How often a running daemon looks at its certificate's expiry again.
const CHECK_EVERY: Duration = Duration::from_secs(24 * 3600);

pub struct Certificate {
    file: PathBuf,
    current: Mutex<Option<Expiry>>,
}

impl Certificate {
    pub fn new(file: PathBuf) -> Arc<Self> {
        Arc::new(Certificate { file, current: Mutex::new(None) })
    }

    /// Reads the leaf certificate `acceptor` serves (at start and after a reload) and warns
    /// when it is close to its end.
    pub fn serving(&self, acceptor: &SslAcceptor) {
        let Some(leaf) = acceptor.context().certificate() else { return };
        match Expiry::of(leaf) {
            Ok(read) => {
                expiry::check(&self.file, &read);
                *self.lock() = Some(read);
            }
            Err(err) => warn!("cannot read the expiry of {}: {err}", self.file.display()),
        }
    }

    pub fn current(&self) -> Option<Expiry> {
        self.lock().clone()
    }

    /// Checks the certificate in force once a day, for as long as the process runs.
    pub fn check_daily(self: &Arc<Self>) {
        let watched = self.clone();
        let spawned = thread::Builder::new().name("cert-expiry".into()).spawn(move || loop {
            thread::sleep(CHECK_EVERY);
            if let Some(current) = watched.current() {
                expiry::check(&watched.file, &current);
            }
        });
        if let Err(err) = spawned {
            warn!("cannot start the daily certificate check: {err}");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Expiry>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}
