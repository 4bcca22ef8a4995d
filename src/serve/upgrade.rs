//! Hitless upgrade (DESIGN §7): hand the listening sockets to a new process, wait for its
//! ready word, and report the outcome; plus the child's side and `tlsrelay upgrade`.

use std::ffi::OsString;
use std::io::Read;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::error::{describe_io, Error};
use crate::serve::event::Event;
use crate::sys::{self, Wake};

/// Environment variable naming the inherited listening descriptors, in --listen order.
const LISTEN_FDS_VAR: &str = "TLSRELAY_LISTEN_FDS";
/// Environment variable naming the --status listening descriptor, when there is one.
const STATUS_FD_VAR: &str = "TLSRELAY_STATUS_FD";
/// Environment variable naming the descriptor the child writes its ready word to.
const READY_FD_VAR: &str = "TLSRELAY_READY_FD";
/// What the child writes once it can serve.
const READY_WORD: &[u8] = b"ready\n";
/// How long the old process waits for the ready word.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How to start our successor: the binary path resolved at startup and our own arguments.
#[derive(Clone)]
pub struct Plan {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
    pub listen_fds: Vec<RawFd>,
    /// The --status socket, handed over too: the new process cannot bind it while we hold it.
    pub status_fd: Option<RawFd>,
}

impl Plan {
    pub fn new(exe: PathBuf, listen_fds: Vec<RawFd>, status_fd: Option<RawFd>) -> Plan {
        Plan { exe, args: std::env::args_os().skip(1).collect(), listen_fds, status_fd }
    }
}

/// Our binary's path, resolved at startup: after a package upgrade `/proc/self/exe`
/// reads `… (deleted)`.
pub fn resolve_exe() -> Result<PathBuf, Error> {
    std::env::current_exe().map_err(|e| Error::file("/proc/self/exe", "resolve", describe_io(&e)))
}

/// Starts the successor in the background; its outcome arrives as an [`Event`].
pub fn start(plan: &Plan, events: Sender<Event>) {
    let plan = plan.clone();
    let spawned = std::thread::Builder::new().name("upgrade".into()).spawn(move || {
        let event = match run_child(&plan) {
            Ok(pid) => Event::UpgradeReady { pid },
            Err(reason) => Event::UpgradeFailed { reason },
        };
        let _ = events.send(event);
    });
    if let Err(err) = spawned {
        log::warn!("upgrade: cannot start a thread: {err}");
    }
}

/// Spawns the child with the listeners and a ready pipe; waits for its word.
fn run_child(plan: &Plan) -> Result<u32, String> {
    let (ready_read, ready_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("cannot make a pipe: {e}"))?;
    let mut inherit = plan.listen_fds.clone();
    inherit.push(ready_write.as_raw_fd());
    let fds_list: Vec<String> = plan.listen_fds.iter().map(|fd| fd.to_string()).collect();

    let mut command = Command::new(&plan.exe);
    command
        .args(&plan.args)
        .env(LISTEN_FDS_VAR, fds_list.join(","))
        .env(READY_FD_VAR, ready_write.as_raw_fd().to_string());
    if let Some(fd) = plan.status_fd {
        inherit.push(fd);
        command.env(STATUS_FD_VAR, fd.to_string());
    }
    // SAFETY: between fork and exec only fcntl runs, which is async-signal-safe; it clears
    // close-on-exec on exactly the descriptors we hand over, in the child only.
    unsafe {
        command.pre_exec(move || sys::keep_across_exec(&inherit));
    }
    let mut child =
        command.spawn().map_err(|e| format!("cannot start {}: {}", plan.exe.display(), describe_io(&e)))?;
    drop(ready_write);
    match wait_ready(std::fs::File::from(ready_read), &mut child) {
        Ok(()) => Ok(child.id()),
        Err(reason) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(reason)
        }
    }
}

/// Reads the ready word; EOF means the child died or closed the pipe first.
fn wait_ready(mut pipe: std::fs::File, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut word = Vec::new();
    while word.len() < READY_WORD.len() {
        match sys::wait_one(pipe.as_raw_fd(), false, &[], deadline) {
            Ok(Wake::Ready) => {}
            Ok(Wake::Deadline) => return Err(format!("no ready word within {} s", READY_TIMEOUT.as_secs())),
            Ok(_) => continue,
            Err(err) => return Err(err.to_string()),
        }
        let mut chunk = [0u8; 16];
        match pipe.read(&mut chunk) {
            Ok(0) => return Err(child_gone(child)),
            Ok(n) => word.extend_from_slice(&chunk[..n]),
            Err(err) => return Err(err.to_string()),
        }
    }
    if word != READY_WORD {
        return Err("the new process sent a wrong ready word".into());
    }
    Ok(())
}

fn child_gone(child: &mut Child) -> String {
    std::thread::sleep(Duration::from_millis(50));
    match child.try_wait() {
        Ok(Some(status)) => format!("the new process exited ({status}) before it was ready"),
        _ => "the new process closed its ready pipe before it was ready".into(),
    }
}

/// In the child: the listeners and ready pipe our parent handed over, if it did.
pub struct Inherited {
    pub listeners: Vec<TcpListener>,
    /// The --status socket, when the parent had one.
    pub status: Option<TcpListener>,
    ready: OwnedFd,
}

/// Takes over the descriptors named in the environment, checking each is a listening TCP
/// socket; the variables are removed so our own children do not see them. `expected` is the
/// --listen count, when --listen was given (without it the parent may have served on sockets
/// systemd passed, any number of them).
pub fn inherited(expected: Option<usize>) -> Result<Option<Inherited>, Error> {
    let (Some(fds), Some(ready)) = (std::env::var_os(LISTEN_FDS_VAR), std::env::var_os(READY_FD_VAR)) else {
        return Ok(None);
    };
    std::env::remove_var(LISTEN_FDS_VAR);
    std::env::remove_var(READY_FD_VAR);
    let bad = |what: &str| Error::Usage(format!("upgrade: {what} in {LISTEN_FDS_VAR}/{READY_FD_VAR}"));
    let ready: RawFd =
        ready.to_str().and_then(|s| s.parse().ok()).ok_or_else(|| bad("bad ready descriptor"))?;
    let mut listeners = Vec::new();
    for text in fds.to_str().ok_or_else(|| bad("bad descriptor list"))?.split(',') {
        let fd: RawFd = text.parse().map_err(|_| bad("bad descriptor list"))?;
        listeners.push(sys::adopt_listener(fd).map_err(|e| bad(&format!("descriptor {fd}: {e}")))?);
    }
    if expected.is_some_and(|n| n != listeners.len()) {
        return Err(bad("a listener count that differs from --listen"));
    }
    let status = match std::env::var_os(STATUS_FD_VAR) {
        Some(fd) => {
            std::env::remove_var(STATUS_FD_VAR);
            let fd: RawFd =
                fd.to_str().and_then(|s| s.parse().ok()).ok_or_else(|| bad("bad status descriptor"))?;
            Some(sys::adopt_listener(fd).map_err(|e| bad(&format!("status descriptor {fd}: {e}")))?)
        }
        None => None,
    };
    sys::set_cloexec(ready).map_err(|e| bad(&format!("ready descriptor {ready}: {e}")))?;
    // SAFETY: the parent handed this descriptor to us alone; nothing else in this process owns it.
    let ready = unsafe { OwnedFd::from_raw_fd(ready) };
    Ok(Some(Inherited { listeners, status, ready }))
}

impl Inherited {
    /// Tells the parent we serve from now on.
    pub fn signal_ready(self) {
        let _ = nix::unistd::write(&self.ready, READY_WORD);
    }
}

/// Where the old process leaves the reason of a failed upgrade for `tlsrelay upgrade`.
pub fn status_path(pid_file: &Path) -> PathBuf {
    let mut name = pid_file.as_os_str().to_owned();
    name.push(".upgrade-error");
    PathBuf::from(name)
}

/// `tlsrelay upgrade --pid-file FILE`: signal, then wait for a new live pid in FILE.
pub fn request(pid_file: &Path) -> Result<(), Error> {
    let old = read_pid(pid_file)?;
    let status = status_path(pid_file);
    let _ = std::fs::remove_file(&status);
    sys::send_signal(old, nix::sys::signal::Signal::SIGUSR2).map_err(|e| {
        Error::file(pid_file, "signal the process named in", format!("pid {old}: {}", describe_io(&e)))
    })?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        if let Ok(reason) = std::fs::read_to_string(&status) {
            return Err(Error::Upgrade(format!("upgrade failed: {}", reason.trim())));
        }
        if let Ok(new) = read_pid(pid_file) {
            if new != old && sys::is_alive(new) {
                eprintln!("upgraded: pid {old} → {new}");
                return Ok(());
            }
        }
    }
    Err(Error::Upgrade(format!("no new process named in {} within 15 s", pid_file.display())))
}

pub fn read_pid(pid_file: &Path) -> Result<i32, Error> {
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| Error::file(pid_file, "read pid file", describe_io(&e)))?;
    text.trim().parse().map_err(|_| Error::file(pid_file, "read pid file", "no pid in it"))
}
