//! The supervisor: sole owner of the worker registry and of shutdown (stop, fast stop, join).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{info, warn};

use crate::serve::event::Event;
use crate::serve::status::{Health, HealthState};
use crate::serve::tally::{stop_summary, Counts, Tally};
use crate::serve::thread_cache::ThreadCache;
use crate::serve::{notify, upgrade};
use crate::stop::Shutdown;

/// What the supervisor needs for reloads and upgrades.
pub struct Control {
    /// Rebuilds the TLS acceptor from the files and installs it; logs its own failure.
    pub reload: Box<dyn Fn() + Send>,
    pub upgrade: upgrade::Plan,
    pub pid_file: Option<PathBuf>,
    pub drain: Duration,
    /// What /health says; turned by a stop or an upgrade before anything else happens.
    pub health: Arc<HealthState>,
    /// --stop-delay: between a stop signal (health turned) and the closures.
    pub stop_delay: Duration,
}

/// What the supervisor sees of the connections: how many are open, how they ended, and
/// the cache of threads that serve them.
pub struct Connections {
    pub active: Arc<AtomicUsize>,
    pub tally: Arc<Tally>,
    pub threads: Arc<ThreadCache>,
}

impl Connections {
    pub fn open(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }
}

pub struct Supervisor {
    events: Receiver<Event>,
    shutdown: Arc<Shutdown>,
    listeners: Vec<JoinHandle<()>>,
    connections: Arc<Connections>,
    threads: HashMap<ThreadId, JoinHandle<()>>,
    /// Threads whose Exited overtook their Started in the channel.
    exited_early: HashSet<ThreadId>,
    stopping: bool,
    /// The tally when the stop began, for the `stopped:` line.
    tally_at_stop: Counts,
    control: Control,
    events_tx: Sender<Event>,
    upgrading: bool,
    /// After a successful upgrade: when our connections get their clean close.
    drain_until: Option<Instant>,
    /// A stop signal came with --stop-delay: when the stop begins.
    stop_at: Option<Instant>,
    /// Whether the pid file names our successor now (so we must not remove it).
    pub handed_over: bool,
}

impl Supervisor {
    pub fn new(
        (events_tx, events): (Sender<Event>, Receiver<Event>),
        shutdown: Arc<Shutdown>,
        listeners: Vec<JoinHandle<()>>,
        connections: Arc<Connections>,
        control: Control,
    ) -> Self {
        Supervisor {
            control,
            events_tx,
            upgrading: false,
            drain_until: None,
            stop_at: None,
            handed_over: false,
            events,
            shutdown,
            listeners,
            connections,
            threads: HashMap::new(),
            exited_early: HashSet::new(),
            stopping: false,
            tally_at_stop: Counts::default(),
        }
    }

    /// Runs until a stop (or an upgrade) has closed every connection and all are joined.
    /// Returns whether the pid file now belongs to a successor.
    pub fn run(mut self) -> bool {
        while !self.stopping {
            self.handle_next();
        }
        // Listeners exit on the stop beacon; after they are joined no client can come, and
        // closing the cache sends its parked threads away.
        for listener in std::mem::take(&mut self.listeners) {
            let _ = listener.join();
        }
        self.connections.threads.close();
        // Every ThreadStarted is queued by now: take them all before trusting `threads`.
        while let Ok(event) = self.events.try_recv() {
            self.handle(event);
        }
        while !self.threads.is_empty() {
            self.handle_next();
        }
        info!("{}", stop_summary(self.tally_at_stop, self.connections.tally.snapshot()));
        self.handed_over
    }

    fn handle_next(&mut self) {
        let received = match self.stop_at.or(self.drain_until) {
            Some(at) => self.events.recv_deadline(at),
            None => self.events.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(event) => self.handle(event),
            Err(RecvTimeoutError::Timeout) if self.stop_at.is_some() => self.stop_now(),
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
                notify::reloading();
                (self.control.reload)();
                notify::ready();
            }
            Event::UpgradeRequested => self.on_upgrade_requested(),
            Event::UpgradeReady { pid } => self.on_upgrade_ready(pid),
            Event::UpgradeFailed { reason } => self.on_upgrade_failed(&reason),
            Event::ThreadStarted(handle) => {
                let thread = handle.thread().id();
                if self.exited_early.remove(&thread) {
                    let _ = handle.join();
                } else {
                    self.threads.insert(thread, handle);
                }
            }
            Event::ThreadExited(thread) => match self.threads.remove(&thread) {
                Some(handle) => {
                    let _ = handle.join();
                }
                None => {
                    self.exited_early.insert(thread);
                }
            },
        }
    }

    fn on_upgrade_requested(&mut self) {
        if self.upgrading || self.stopping || self.drain_until.is_some() || self.stop_at.is_some() {
            warn!("SIGUSR2 ignored: an upgrade or a stop is already under way");
            return;
        }
        info!("SIGUSR2: upgrading: starting {}", self.control.upgrade.exe.display());
        self.control.health.set(Health::Draining);
        self.upgrading = true;
        upgrade::start(&self.control.upgrade, self.events_tx.clone());
    }

    fn on_upgrade_ready(&mut self, pid: u32) {
        self.upgrading = false;
        self.connections.tally.upgraded(true);
        info!(
            "upgrade: pid {pid} is serving; closing our {} connections after {:.1} s",
            self.connections.open(),
            self.control.drain.as_secs_f64()
        );
        self.shutdown.accepting.light();
        notify::hand_over();
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
            self.begin_stop();
            self.shutdown.close_for_upgrade();
        }
    }

    fn on_upgrade_failed(&mut self, reason: &str) {
        self.upgrading = false;
        self.connections.tally.upgraded(false);
        if self.stop_at.is_none() {
            self.control.health.set(Health::Accepting);
        }
        warn!("upgrade failed: {reason}; still serving");
        if let Some(path) = &self.control.pid_file {
            let _ = std::fs::write(upgrade::status_path(path), format!("{reason}\n"));
        }
    }

    /// The graceful stop of DESIGN §3, after --stop-delay or a second signal.
    fn stop_now(&mut self) {
        self.stop_at = None;
        self.begin_stop();
        self.shutdown.stop();
    }

    fn begin_stop(&mut self) {
        self.stopping = true;
        self.tally_at_stop = self.connections.tally.snapshot();
    }

    fn on_stop_requested(&mut self, signal: &str) {
        self.drain_until = None;
        self.control.health.set(Health::Stopping);
        if !self.stopping && self.stop_at.is_none() {
            notify::stopping(); // a --stop-delay is part of the stop systemd times
        }
        let delay = self.control.stop_delay;
        if !self.stopping && self.stop_at.is_none() && !delay.is_zero() {
            info!("{signal}: stopping in {:.1} s; /health answers 503 meanwhile", delay.as_secs_f64());
            self.stop_at = Some(Instant::now() + delay);
        } else if !self.stopping {
            info!("{signal}: stopping; closing {} connections cleanly", self.connections.open());
            self.stop_now();
        } else {
            info!("{signal} again: fast stop");
            self.shutdown.fast.light();
        }
    }
}
