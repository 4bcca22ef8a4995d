//! The daemon's log, which never makes the relay wait (issue 15). env_logger still filters
//! (`RUST_LOG`) and formats every line, but hands each whole line to a bounded queue instead
//! of writing it; one writer thread writes the queue to stderr. A sink that stops reading (a
//! pipe nobody reads, a stuck journald, a slow `| logger`) then costs log lines, never a
//! stalled worker or a stop that never ends: when the queue is full a line is dropped and
//! counted, and a `N log lines dropped` warning takes the lost lines' place in the log once
//! the queue has room again. At exit the writer gets a bounded wait to empty the queue.
//!
//! Why env_logger's `Target::Pipe` and not a `log::Log` of our own around env_logger's
//! `Logger`: that `Logger` can only format into its target, so a wrapper would need this
//! target anyway; as the target, env_logger keeps doing everything else unchanged (filters,
//! the line format, `log::set_max_level`) and calls `write_all` once per formatted line.
//!
//! The `listening on ADDR` lines and the operator's error line take the same queue (never
//! filtered), so they keep their order among the log lines, each still one `write`.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use env_logger::{Builder, Env, Target};

/// Lines that may wait for the sink: about 0.5 MiB at ~120 B a line, seconds of a busy
/// daemon's lifecycle lines; a sink that falls further behind than that is stuck or too slow.
const QUEUE_LINES: usize = 4096;
/// How long the writer may go on writing at exit, so a healthy sink gets the last lines
/// (`stopped: …`) and a stuck one delays the exit by no more than this.
pub const EXIT_WAIT: Duration = Duration::from_millis(500);

/// How long the writer lets lines gather after a write. Woken once a line, the writer cost
/// every new connection (three lines) 0.45 context switches and 7.5 system calls (a futex
/// wake, a `write`, a broadcast, crossbeam's `sched_yield` spins; BENCH.md, issue 16), and
/// the log's reader (journald) a wake-up a line. Lines that come while it sleeps do not wake
/// it (no receiver waits on the channel), so a busy daemon writes at most 200 times a second,
/// and a line after a quiet spell still goes out at once.
const GATHER: Duration = Duration::from_millis(5);

/// Bytes of batch buffer the writer keeps between writes (a busy daemon's 5 ms of lines).
const BATCH_KEPT: usize = 64 * 1024;

/// The daemon's queue, once `init` installed it.
static QUEUE: OnceLock<Arc<Queue>> = OnceLock::new();

/// Where log lines go: the queue for the daemon; straight to stderr for the short-lived
/// subcommands, whose notices are printed directly and must stay in order with their log.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Queued,
    Direct,
}

/// Installs the logger (`RUST_LOG`, level `info` when unset).
pub fn init(sink: Sink) {
    if sink == Sink::Direct {
        builder().init();
        return;
    }
    let (queue, items) = Queue::new(QUEUE_LINES);
    let spawned = stderr_clone().and_then(|out| {
        let notice = notice_formatter();
        let queue = queue.clone();
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || queue.write_out(items, out, notice))
    });
    if let Err(err) = spawned {
        eprintln!("tlsrelay: cannot start the log writer ({err}); logging straight to stderr");
        builder().init();
        return;
    }
    let _ = QUEUE.set(queue.clone());
    builder().target(Target::Pipe(Box::new(QueueWriter(queue)))).init();
}

/// One line that no log level filters out (`line` ends with `\n`): queued behind the log
/// lines before it, or written at once when there is no queue.
pub fn line(line: &str) {
    match QUEUE.get() {
        Some(queue) => queue.push(line.as_bytes()),
        None => {
            let _ = io::stderr().write_all(line.as_bytes());
        }
    }
}

/// Waits, at most `wait`, until the writer has written everything queued so far (and the
/// count of lines dropped since the last notice). Called before the process exits or
/// executes itself again.
pub fn flush(wait: Duration) {
    if let Some(queue) = QUEUE.get() {
        queue.flush(wait);
    }
}

fn builder() -> Builder {
    Builder::from_env(Env::default().default_filter_or("info"))
}

/// A descriptor of our own for stderr: the writer never holds std's stderr lock while a stuck
/// sink blocks it, so a direct `eprintln!` elsewhere (a panic message) is not held up by it.
fn stderr_clone() -> io::Result<std::fs::File> {
    Ok(std::fs::File::from(io::stderr().as_fd().try_clone_to_owned()?))
}

/// Formats the drop notice exactly as env_logger formats every other line.
fn notice_formatter() -> impl Fn(u64) -> Vec<u8> {
    let captured = Arc::new(Mutex::new(Vec::new()));
    let logger = builder().target(Target::Pipe(Box::new(Capture(captured.clone())))).build();
    move |dropped| {
        log::Log::log(
            &logger,
            &log::Record::builder()
                .args(format_args!("{dropped} log lines dropped"))
                .level(log::Level::Warn)
                .target(module_path!())
                .module_path_static(Some(module_path!()))
                .build(),
        );
        std::mem::take(&mut *captured.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// What waits for the sink, in order: a line, or how many lines were dropped at that point.
enum Item {
    Line(Box<[u8]>),
    Dropped(u64),
}

struct Queue {
    items: Sender<Item>,
    /// Lines dropped since the last notice was queued.
    dropped: AtomicU64,
    /// Items queued so far, and items written so far (`written` wakes `flush`).
    queued: AtomicU64,
    written: Mutex<u64>,
    progress: Condvar,
}

impl Queue {
    fn new(capacity: usize) -> (Arc<Queue>, Receiver<Item>) {
        let (items, receiver) = crossbeam_channel::bounded(capacity);
        let queue = Queue {
            items,
            dropped: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            written: Mutex::new(0),
            progress: Condvar::new(),
        };
        (Arc::new(queue), receiver)
    }

    /// Queues `line`, or counts it dropped when the queue is full. Never blocks.
    fn push(&self, line: &[u8]) {
        // The notice goes first, where the lines went missing; without room for it there is
        // none for the line either.
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 && !self.try_queue(Item::Dropped(dropped)) {
            self.dropped.fetch_add(dropped + 1, Ordering::Relaxed);
            return;
        }
        if !self.try_queue(Item::Line(line.into())) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn try_queue(&self, item: Item) -> bool {
        let queued = self.items.try_send(item).is_ok();
        if queued {
            self.queued.fetch_add(1, Ordering::Relaxed);
        }
        queued
    }

    /// The writer thread, until the queue is gone: waits for an item, writes it with
    /// whatever else is queued by then in one `write`, then lets lines gather for
    /// [`GATHER`]. A failed write (stderr closed) loses its lines, as it would without the
    /// queue.
    fn write_out(&self, items: Receiver<Item>, mut out: impl Write, notice: impl Fn(u64) -> Vec<u8>) {
        let mut batch = Vec::new();
        while let Ok(first) = items.recv() {
            let mut count = 0;
            for item in std::iter::once(first).chain(items.try_iter()) {
                match item {
                    Item::Line(line) => batch.extend_from_slice(&line),
                    Item::Dropped(dropped) => batch.extend_from_slice(&notice(dropped)),
                }
                count += 1;
            }
            let _ = out.write_all(&batch);
            batch.clear();
            // A burst (or a sink that was stuck) may have grown it to the whole queue.
            batch.shrink_to(BATCH_KEPT);
            *self.written.lock().unwrap_or_else(|e| e.into_inner()) += count;
            self.progress.notify_all();
            std::thread::sleep(GATHER);
        }
    }

    /// Waits until everything queued is written and no drop is left uncounted, or `wait`.
    fn flush(&self, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            // The count of lines dropped since the last notice: it needs room in the queue,
            // which the writer makes as it goes.
            let dropped = self.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 && !self.try_queue(Item::Dropped(dropped)) {
                self.dropped.fetch_add(dropped, Ordering::Relaxed);
            }
            let all_written = self.wait_written(self.queued.load(Ordering::Relaxed), deadline);
            if !all_written || self.dropped.load(Ordering::Relaxed) == 0 || Instant::now() >= deadline {
                return;
            }
        }
    }

    /// Waits until `target` items are written (true) or `deadline` (false).
    fn wait_written(&self, target: u64, deadline: Instant) -> bool {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        while *written < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            written = self.progress.wait_timeout(written, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }
}

/// env_logger's target for the daemon: every formatted line into the queue.
struct QueueWriter(Arc<Queue>);

impl Write for QueueWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.0.push(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// env_logger's target for the drop notice: the formatted line kept for the writer.
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    /// A sink whose writes are collected; `gate` holds every write until a message comes.
    #[derive(Clone)]
    struct Collected(Arc<Mutex<Vec<u8>>>, Option<Receiver<()>>);

    impl Write for Collected {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            if let Some(gate) = &self.1 {
                let _ = gate.recv();
            }
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn plain_notice(count: u64) -> Vec<u8> {
        format!("{count} log lines dropped\n").into_bytes()
    }

    fn text(sink: &Collected) -> String {
        String::from_utf8(sink.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn lines_beyond_the_queue_are_counted_and_the_count_takes_their_place() {
        let (queue, items) = Queue::new(2);
        for n in 1..=5 {
            queue.push(format!("line {n}\n").as_bytes());
        }
        let sink = Collected(Arc::new(Mutex::new(Vec::new())), None);
        let (q, s) = (queue.clone(), sink.clone());
        thread::spawn(move || q.write_out(items, s, plain_notice));
        queue.flush(Duration::from_secs(5));
        queue.push(b"line 6\n");
        queue.flush(Duration::from_secs(5));
        queue.push(b"line 7\n");
        queue.flush(Duration::from_secs(5));
        assert_eq!(text(&sink), "line 1\nline 2\n3 log lines dropped\nline 6\nline 7\n");
    }

    #[test]
    fn a_count_with_no_line_after_it_is_written_by_the_flush_at_exit() {
        let (queue, items) = Queue::new(1);
        queue.push(b"kept\n");
        queue.push(b"lost\n");
        let sink = Collected(Arc::new(Mutex::new(Vec::new())), None);
        let (q, s) = (queue.clone(), sink.clone());
        thread::spawn(move || q.write_out(items, s, plain_notice));
        queue.flush(Duration::from_secs(5));
        assert_eq!(text(&sink), "kept\n1 log lines dropped\n");
    }

    #[test]
    fn pushing_never_waits_for_a_stuck_sink_and_the_exit_wait_is_bounded() {
        let (queue, items) = Queue::new(8);
        let (_gate, held) = crossbeam_channel::bounded::<()>(0);
        let sink = Collected(Arc::new(Mutex::new(Vec::new())), Some(held));
        let (q, s) = (queue.clone(), sink.clone());
        thread::spawn(move || q.write_out(items, s, plain_notice));
        let start = Instant::now();
        for _ in 0..10_000 {
            queue.push(b"a line nobody reads\n");
        }
        assert!(start.elapsed() < Duration::from_secs(1), "pushing took {:?}", start.elapsed());
        let start = Instant::now();
        queue.flush(Duration::from_millis(200));
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(1), "{waited:?}");
    }

    #[test]
    fn the_notice_has_env_loggers_line_format() {
        let line = String::from_utf8(notice_formatter()(12)).unwrap();
        assert!(line.starts_with('[') && line.ends_with("] 12 log lines dropped\n"), "{line:?}");
        assert!(line.contains("WARN") && line.contains("tlsrelay::logging"), "{line:?}");
    }
}
