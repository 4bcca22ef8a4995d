//! The supervisor: sole owner of the worker registry and of shutdown (stop, fast stop, join).

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use log::{info, warn};

use crate::close::CloseKind;
use crate::sys::Beacon;

/// What the supervisor hears about, from signal handlers, listeners and workers.
pub enum Event {
    /// SIGINT or SIGTERM: the first starts a graceful stop, the next a fast stop.
    StopRequested(&'static str),
    /// A listener spawned a worker; the supervisor keeps its handle to join it.
    WorkerStarted { id: u64, handle: JoinHandle<()> },
    /// A worker logged its `closed:` line and is about to return.
    WorkerFinished { id: u64, kind: CloseKind },
}

/// The two broadcast descriptors every listener and worker polls (DESIGN §4).
pub struct Shutdown {
    /// Lit once at a graceful stop: close every connection properly.
    pub stop: Beacon,
    /// Lit at a second signal: close now, close_notify only where nothing is pending.
    pub fast: Beacon,
}

impl Shutdown {
    pub fn new() -> io::Result<Self> {
        Ok(Shutdown { stop: Beacon::new()?, fast: Beacon::new()? })
    }
}

/// Routes SIGINT (through `ctrlc`) and SIGTERM (through `signal-hook`) into the event channel.
pub fn install_signal_handlers(events: &Sender<Event>) -> io::Result<()> {
    let on_int = events.clone();
    ctrlc::set_handler(move || {
        let _ = on_int.send(Event::StopRequested("SIGINT"));
    })
    .map_err(|e| io::Error::other(e.to_string()))?;

    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM])?;
    let on_term = events.clone();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for _ in signals.forever() {
            let _ = on_term.send(Event::StopRequested("SIGTERM"));
        }
    })?;
    Ok(())
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
}

impl Supervisor {
    pub fn new(events: Receiver<Event>, shutdown: Arc<Shutdown>, listeners: Vec<JoinHandle<()>>) -> Self {
        Supervisor {
            events,
            shutdown,
            listeners,
            workers: HashMap::new(),
            finished_early: HashSet::new(),
            stopping: false,
            tally: StopTally::default(),
        }
    }

    /// Runs until a stop was requested and every listener and worker has been joined.
    pub fn run(mut self) {
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
    }

    fn handle_next(&mut self) {
        match self.events.recv() {
            Ok(event) => self.handle(event),
            Err(_) => {
                warn!("supervisor: event channel closed");
                self.stopping = true;
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::StopRequested(signal) => self.on_stop_requested(signal),
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

    fn on_stop_requested(&mut self, signal: &str) {
        if !self.stopping {
            info!("{signal}: stopping; closing {} connections cleanly", self.workers.len());
            self.stopping = true;
            self.shutdown.stop.light();
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
