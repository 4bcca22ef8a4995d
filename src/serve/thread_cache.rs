//! Worker threads: each client has a thread of its own for its whole life, and a thread
//! whose client has gone waits a little, parked, for the next one instead of exiting.
//!
//! Starting and ending a thread costs about 17 system calls and fresh stack pages; under a
//! stream of short connections that is most of what separates a thread per connection from
//! an event loop (BENCH.md, M4). The cache is small and short-lived, like MySQL's
//! thread_cache_size: a burst leaves at most [`MAX_PARKED`] threads behind, and each one
//! exits after [`PARK_LIMIT`] without a client.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::serve::event::Event;
use crate::sys;
use crate::tls::handshake_memory;

/// Threads kept waiting for a client at most; past it a finished worker exits.
pub const MAX_PARKED: usize = 32;

/// How long a parked thread waits for a client before it exits.
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
    parking: Mutex<Parking>,
    /// Signalled when a job is handed over and when the cache closes.
    wake: Condvar,
    events: Sender<Event>,
}

/// The parked threads and what is handed to them. A plain mutex and condition variable:
/// handing over is one futex wake, with none of a channel's spinning before it sleeps.
#[derive(Default)]
struct Parking {
    /// Threads waiting for a client now.
    parked: usize,
    /// Jobs handed to parked threads and not picked up yet; never more than `parked`.
    handed: VecDeque<Job>,
    closed: bool,
}

impl ThreadCache {
    pub fn new(events: Sender<Event>) -> Self {
        ThreadCache { parking: Mutex::new(Parking::default()), wake: Condvar::new(), events }
    }

    /// Runs `job` on a parked thread if one is waiting, or else on a new thread, which is
    /// announced to the supervisor. On error the job (and the client with it) is dropped.
    pub fn run(self: &Arc<Self>, job: Job) -> io::Result<()> {
        let mut parking = self.lock();
        if parking.closed {
            return Err(io::Error::other("stopping"));
        }
        if parking.parked > parking.handed.len() {
            parking.handed.push_back(job);
            drop(parking);
            self.wake.notify_one();
            return Ok(());
        }
        drop(parking);
        let cache = self.clone();
        let handle = thread::Builder::new()
            .name(job.name.clone())
            .stack_size(WORKER_STACK)
            .spawn(move || cache.worker_life(job.work))?;
        let _ = self.events.send(Event::ThreadStarted(handle));
        Ok(())
    }

    /// No more clients: parked threads exit now, busy ones once their client is done.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }

    /// A worker thread's life: its first client, then whoever comes while it is parked.
    fn worker_life(&self, first: Box<dyn FnOnce() + Send>) {
        // Announced however the thread ends, a panic included: the supervisor waits for it.
        let _exit = ExitNotice { events: &self.events };
        let mut work = first;
        loop {
            work();
            match self.park() {
                Some(job) => {
                    // What `ps -L` and `top -H` show; a panic message still names the
                    // thread's first client (std keeps the name it was spawned with).
                    sys::set_thread_name(&job.name);
                    work = job.work;
                }
                None => break,
            }
        }
    }

    /// Waits for the next client, unless enough threads wait already, the cache is closed,
    /// or none comes in time. After [`handshake_memory::SETTLE`] without one, the thread gives
    /// back what an idle connection would.
    fn park(&self) -> Option<Job> {
        let mut parking = self.lock();
        if parking.closed || parking.parked >= MAX_PARKED {
            return None;
        }
        parking.parked += 1;
        sys::set_thread_name("parked");
        let started = Instant::now();
        let mut released = false;
        let job = loop {
            // A handed job comes first: it was promised to one of the parked threads.
            if let Some(job) = parking.handed.pop_front() {
                break Some(job);
            }
            let waited = started.elapsed();
            if parking.closed || waited >= PARK_LIMIT {
                break None;
            }
            if !released && waited >= handshake_memory::SETTLE {
                drop(parking);
                handshake_memory::release();
                released = true;
                parking = self.lock();
                continue;
            }
            let until = if released { PARK_LIMIT } else { handshake_memory::SETTLE };
            parking = self.wake.wait_timeout(parking, until - waited).unwrap_or_else(|e| e.into_inner()).0;
        };
        parking.parked -= 1;
        job
    }

    fn lock(&self) -> MutexGuard<'_, Parking> {
        self.parking.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Tells the supervisor that this worker thread is ending, when dropped.
struct ExitNotice<'a> {
    events: &'a Sender<Event>,
}

impl Drop for ExitNotice<'_> {
    fn drop(&mut self) {
        let _ = self.events.send(Event::ThreadExited(thread::current().id()));
    }
}
