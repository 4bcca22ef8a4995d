//! Worker threads: each client has a thread of its own for its whole life, and a thread
//! whose client has gone waits a little, parked, for the next one instead of exiting.
//!
//! Starting and ending a thread costs about 17 system calls and fresh stack pages; under a
//! stream of short connections that is most of what separates a thread per connection from
//! an event loop (BENCH.md, M4). The cache is small and short-lived, like MySQL's
//! thread_cache_size: a burst leaves at most [`MAX_PARKED`] threads behind, and each one
//! exits after [`PARK_LIMIT`] without a client.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::supervisor::Event;
use crate::{sys, thread_memory};

/// Threads kept waiting for a client at most; past it a finished worker exits.
pub const MAX_PARKED: usize = 32;

/// How long a parked thread waits for a client before it exits (after [`thread_memory::SETTLE`]).
const PARK_LIMIT: Duration = Duration::from_secs(5);

/// Stack for each worker thread: the whole test suite (ECDSA and RSA handshakes, client
/// certificates, the hub session) runs with it, and only touched pages cost memory.
const WORKER_STACK: usize = 128 * 1024;

/// One client's whole life on a worker thread, and the thread's name meanwhile.
pub struct Job {
    pub name: String,
    pub work: Box<dyn FnOnce() + Send>,
}

pub struct ThreadCache {
    /// Rendezvous channel: a send succeeds only when a parked thread is waiting on it.
    /// Taken out by [`ThreadCache::close`], which wakes every parked thread to exit.
    handoff: Mutex<Option<Sender<Job>>>,
    parked_on: Receiver<Job>,
    parked: AtomicUsize,
    events: Sender<Event>,
}

impl ThreadCache {
    pub fn new(events: Sender<Event>) -> Self {
        let (handoff, parked_on) = crossbeam_channel::bounded(0);
        ThreadCache { handoff: Mutex::new(Some(handoff)), parked_on, parked: AtomicUsize::new(0), events }
    }

    /// Runs `job` on a parked thread if one is waiting, or else on a new thread, which is
    /// announced to the supervisor. On error the job (and the client with it) is dropped.
    pub fn run(self: &std::sync::Arc<Self>, job: Job) -> io::Result<()> {
        let handoff = self.handoff.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let job = match handoff.map(|handoff| handoff.try_send(job)) {
            Some(Ok(())) => return Ok(()),
            Some(Err(TrySendError::Full(job) | TrySendError::Disconnected(job))) => job,
            None => return Err(io::Error::other("stopping")),
        };
        let cache = self.clone();
        let handle = thread::Builder::new()
            .name(job.name.clone())
            .stack_size(WORKER_STACK)
            .spawn(move || cache.serve(job.work))?;
        let _ = self.events.send(Event::ThreadStarted(handle));
        Ok(())
    }

    /// No more clients: parked threads exit now, busy ones once their client is done.
    pub fn close(&self) {
        self.handoff.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// A worker thread's life: its first client, then whoever comes while it is parked.
    fn serve(&self, first: Box<dyn FnOnce() + Send>) {
        let mut work = first;
        loop {
            work();
            match self.park() {
                Some(job) => {
                    sys::set_thread_name(&job.name);
                    work = job.work;
                }
                None => break,
            }
        }
        let _ = self.events.send(Event::ThreadExited(thread::current().id()));
    }

    /// Waits for the next client, unless enough threads wait already, the cache is closed,
    /// or none comes in time.
    fn park(&self) -> Option<Job> {
        if self.parked.fetch_add(1, Ordering::AcqRel) >= MAX_PARKED {
            self.parked.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        sys::set_thread_name("parked");
        let job = self.parked_on.recv_timeout(thread_memory::SETTLE).or_else(|_| {
            // Not needed at once: hold no more than an idle connection does.
            thread_memory::release();
            self.parked_on.recv_timeout(PARK_LIMIT)
        });
        self.parked.fetch_sub(1, Ordering::AcqRel);
        job.ok()
    }
}
