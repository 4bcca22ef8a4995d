//! What the supervisor hears about, from signal handlers, listeners, worker threads and
//! upgrades: every decision is taken on its thread, in the order these arrive.

use std::thread::{JoinHandle, ThreadId};

/// What the supervisor hears about, from signal handlers, listeners, workers and upgrades.
pub enum Event {
    /// SIGINT or SIGTERM: the first starts a graceful stop, the next a fast stop.
    StopRequested(&'static str),
    /// SIGHUP or SIGUSR1: re-read certificate, key and client CA for new handshakes.
    ReloadRequested(&'static str),
    /// SIGUSR2: start a hitless upgrade.
    UpgradeRequested,
    /// The new process wrote its ready word.
    UpgradeReady { pid: u32 },
    /// The new process failed, crashed or was late; it has been killed and reaped.
    UpgradeFailed { reason: String },
    /// A worker thread started; the supervisor keeps its handle to join it.
    ThreadStarted(JoinHandle<()>),
    /// A worker thread is about to return (its last client is done).
    ThreadExited(ThreadId),
}
