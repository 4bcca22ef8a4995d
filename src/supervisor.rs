//! The supervisor: sole owner of the worker registry and of shutdown (stop, fast stop, join).

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{info, warn};

use crate::close::CloseKind;
use crate::stop::Shutdown;
use crate::upgrade;

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
    /// A listener spawned a worker; the supervisor keeps its handle to join it.
    WorkerStarted { id: u64, handle: JoinHandle<()> },
    /// A worker logged its `closed:` line and is about to return.
    WorkerFinished { id: u64, kind: CloseKind },
}

/// Routes SIGINT (through `ctrlc`) and TERM, HUP, USR1, USR2 (through `signal-hook`) into
/// the event channel, so every decision is taken on the supervisor thread.
pub fn install_signal_handlers(events: &Sender<Event>) -> io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGTERM, SIGUSR1, SIGUSR2};
    let on_int = events.clone();
    ctrlc::set_handler(move || {
        let _ = on_int.send(Event::StopRequested("SIGINT"));
    })
    .map_err(|e| io::Error::other(e.to_string()))?;

    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGHUP, SIGUSR1, SIGUSR2])?;
    let events = events.clone();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for signal in signals.forever() {
            let event = match signal {
                SIGTERM => Event::StopRequested("SIGTERM"),
                SIGHUP => Event::ReloadRequested("SIGHUP"),
                SIGUSR1 => Event::ReloadRequested("SIGUSR1"),
                _ => Event::UpgradeRequested,
            };
            let _ = events.send(event);
        }
    })?;
    Ok(())
}

/// What the supervisor needs for reloads and upgrades.
pub struct Control {
    /// Rebuilds the TLS acceptor from the files and installs it; logs its own failure.
    pub reload: Box<dyn Fn() + Send>,
    pub upgrade: upgrade::Plan,
    pub pid_file: Option<PathBuf>,
    pub drain: Duration,
}

/// Tallies of the connections that a stop closed, for the summary line.
#[derive(Default)]
struct StopTally {
    clean: u64,
    no_answer: u64,
    dropped_in_handshake: u64,
    other: u64,
}

impl StopTally {
    fn count(&mut self, kind: &CloseKind) {
        match kind {
            CloseKind::Clean => self.clean += 1,
            CloseKind::PeerDidNotAnswer => self.no_answer += 1,
            CloseKind::DroppedInHandshake => self.dropped_in_handshake += 1,
            _ => self.other += 1,
        }
    }

    fn summary(&self) -> String {
        let total = self.clean + self.no_answer + self.dropped_in_handshake + self.other;
        format!(
            "stopped: {total} connections: {} clean, {} peer did not answer, {} dropped in handshake, {} other",
            self.clean, self.no_answer, self.dropped_in_handshake, self.other
        )
    }
}

pub struct Supervisor {
    events: Receiver<Event>,
    shutdown: Arc<Shutdown>,
    listeners: Vec<JoinHandle<()>>,
    workers: HashMap<u64, JoinHandle<()>>,
    /// Workers whose Finished overtook their Started in the channel.
    finished_early: HashSet<u64>,
    stopping: bool,
    tally: StopTally,
    control: Control,
    events_tx: Sender<Event>,
    upgrading: bool,
    /// After a successful upgrade: when our connections get their clean close.
    drain_until: Option<Instant>,
    /// Whether the pid file names our successor now (so we must not remove it).
    pub handed_over: bool,
}

impl Supervisor {
    pub fn new(
        (events_tx, events): (Sender<Event>, Receiver<Event>),
        shutdown: Arc<Shutdown>,
        listeners: Vec<JoinHandle<()>>,
        control: Control,
    ) -> Self {
        Supervisor {
            control,
            events_tx,
            upgrading: false,
            drain_until: None,
            handed_over: false,
            events,
            shutdown,
            listeners,
            workers: HashMap::new(),
            finished_early: HashSet::new(),
            stopping: false,
            tally: StopTally::default(),
        }
    }

    /// Runs until a stop (or an upgrade) has closed every connection and all are joined.
    /// Returns whether the pid file now belongs to a successor.
    pub fn run(mut self) -> bool {
        while !self.stopping {
            self.handle_next();
        }
        // Listeners exit on the stop beacon; after they are joined no worker can start.
        for listener in std::mem::take(&mut self.listeners) {
            let _ = listener.join();
        }
        // Every WorkerStarted is queued by now: take them all before trusting `workers`.
        while let Ok(event) = self.events.try_recv() {
            self.handle(event);
        }
        while !self.workers.is_empty() {
            self.handle_next();
        }
        info!("{}", self.tally.summary());
        self.handed_over
    }

    fn handle_next(&mut self) {
        let received = match self.drain_until {
            Some(at) => self.events.recv_deadline(at),
            None => self.events.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(event) => self.handle(event),
            Err(RecvTimeoutError::Timeout) => self.end_drain(),
            Err(RecvTimeoutError::Disconnected) => {
                warn!("supervisor: event channel closed");
                self.stopping = true;
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::StopRequested(signal) => self.on_stop_requested(signal),
            Event::ReloadRequested(signal) => {
                info!("{signal}: reloading certificate, key and client CA");
                (self.control.reload)();
            }
            Event::UpgradeRequested => self.on_upgrade_requested(),
            Event::UpgradeReady { pid } => self.on_upgrade_ready(pid),
            Event::UpgradeFailed { reason } => self.on_upgrade_failed(&reason),
            Event::WorkerStarted { id, handle } => {
                if self.finished_early.remove(&id) {
                    let _ = handle.join();
                } else {
                    self.workers.insert(id, handle);
                }
            }
            Event::WorkerFinished { id, kind } => {
                if self.stopping {
                    self.tally.count(&kind);
                }
                match self.workers.remove(&id) {
                    Some(handle) => {
                        let _ = handle.join();
                    }
                    None => {
                        self.finished_early.insert(id);
                    }
                }
            }
        }
    }

    fn on_upgrade_requested(&mut self) {
        if self.upgrading || self.stopping || self.drain_until.is_some() {
            warn!("SIGUSR2 ignored: an upgrade or a stop is already under way");
            return;
        }
        info!("SIGUSR2: upgrading: starting {}", self.control.upgrade.exe.display());
        self.upgrading = true;
        upgrade::start(&self.control.upgrade, self.events_tx.clone());
    }

    fn on_upgrade_ready(&mut self, pid: u32) {
        self.upgrading = false;
        info!(
            "upgrade: pid {pid} is serving; closing our {} connections after {:.1} s",
            self.workers.len(),
            self.control.drain.as_secs_f64()
        );
        self.shutdown.accepting.light();
        if let Some(path) = &self.control.pid_file {
            match std::fs::write(path, format!("{pid}\n")) {
                Ok(()) => self.handed_over = true,
                Err(err) => warn!("cannot write pid file {}: {err}", path.display()),
            }
        }
        self.drain_until = Some(Instant::now() + self.control.drain);
    }

    fn end_drain(&mut self) {
        self.drain_until = None;
        if !self.stopping {
            self.stopping = true;
            self.shutdown.close_for_upgrade();
        }
    }

    fn on_upgrade_failed(&mut self, reason: &str) {
        self.upgrading = false;
        warn!("upgrade failed: {reason}; still serving");
        if let Some(path) = &self.control.pid_file {
            let _ = std::fs::write(upgrade::status_path(path), format!("{reason}\n"));
        }
    }

    fn on_stop_requested(&mut self, signal: &str) {
        self.drain_until = None;
        if !self.stopping {
            info!("{signal}: stopping; closing {} connections cleanly", self.workers.len());
            self.stopping = true;
            self.shutdown.stop();
        } else {
            info!("{signal} again: fast stop");
            self.shutdown.fast.light();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_each_kind() {
        let mut tally = StopTally::default();
        for kind in [
            CloseKind::Clean,
            CloseKind::Clean,
            CloseKind::PeerDidNotAnswer,
            CloseKind::DroppedInHandshake,
            CloseKind::WriteStalled,
        ] {
            tally.count(&kind);
        }
        assert_eq!(
            tally.summary(),
            "stopped: 5 connections: 2 clean, 1 peer did not answer, 1 dropped in handshake, 1 other"
        );
    }
}
