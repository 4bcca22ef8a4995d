//! A child process whose stdout and stderr are collected by reader threads; killed on Drop.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Everything a child has printed so far, as raw bytes (output may stop mid-line).
#[derive(Default)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Both pipes reached EOF: the child (and anything it passed them to) is gone.
    pub closed: usize,
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    /// Whether `needle` was printed on either stream.
    pub fn contains(&self, needle: &str) -> bool {
        self.stdout_text().contains(needle) || self.stderr_text().contains(needle)
    }
}

#[derive(Default)]
struct Shared {
    output: Mutex<Output>,
    changed: Condvar,
}

/// A spawned child with captured output. Every wait takes a deadline; Drop kills the child.
pub struct Proc {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    shared: Arc<Shared>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` with all three standard streams piped.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let shared = Arc::new(Shared::default());
        let out = child.stdout.take().expect("stdout piped");
        let err = child.stderr.take().expect("stderr piped");
        collect(out, Arc::clone(&shared), |o, b| o.stdout.extend_from_slice(b));
        collect(err, Arc::clone(&shared), |o, b| o.stderr.extend_from_slice(b));
        let stdin = child.stdin.take();
        Proc { name: name.to_string(), child, stdin, shared, status: None }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Runs `f` on the output captured so far.
    pub fn with_output<T>(&self, f: impl FnOnce(&Output) -> T) -> T {
        f(&self.shared.output.lock().unwrap())
    }

    pub fn stdout(&self) -> String {
        self.with_output(|o| o.stdout_text())
    }

    pub fn stderr(&self) -> String {
        self.with_output(|o| o.stderr_text())
    }

    /// Waits until `pred` holds for the output; false when `timeout` passed first.
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&Output) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.shared.output.lock().unwrap();
        loop {
            if pred(&guard) {
                return true;
            }
            let now = Instant::now();
            // Both pipes at EOF: nothing more will be printed, so waiting longer is pointless.
            if now >= deadline || guard.closed == 2 {
                return false;
            }
            guard = self.shared.changed.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }

    /// Writes to the child's stdin; a child that already exited is not an error here.
    pub fn write_stdin(&mut self, data: &[u8]) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(data).and_then(|_| stdin.flush());
        }
    }

    /// Closes the child's stdin (EOF), which many peers take as "end the session".
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends a signal with kill(2).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) takes plain integers; the pid is our own child, not yet reaped.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed: {}", self.pid(), std::io::Error::last_os_error());
    }

    /// The exit status once the child has exited, polling every 5 ms until `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                self.wait_output_closed(Duration::from_secs(2));
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits until the reader threads have seen EOF on both pipes, so the output is complete.
    pub fn wait_output_closed(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |o| o.closed == 2)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Copies everything `pipe` yields into the shared output until EOF, waking waiters.
fn collect<R: Read + Send + 'static>(
    mut pipe: R,
    shared: Arc<Shared>,
    append: impl Fn(&mut Output, &[u8]) + Send + 'static,
) {
    thread::spawn(move || {
        let mut buf = [0u8; 16384];
        loop {
            let n = pipe.read(&mut buf).unwrap_or(0);
            let mut guard = shared.output.lock().unwrap();
            if n == 0 {
                guard.closed += 1;
            } else {
                append(&mut guard, &buf[..n]);
            }
            drop(guard);
            shared.changed.notify_all();
            if n == 0 {
                return;
            }
        }
    });
}
