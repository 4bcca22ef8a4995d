//! systemd's notify protocol (sd_notify(3)): one datagram to `$NOTIFY_SOCKET` per state
//! change — `READY=1`, `RELOADING=1`, `STOPPING=1`, `STATUS=…`, and `MAINPID=` from the new
//! process of an upgrade. Without `NOTIFY_SOCKET` every call here does nothing.
//!
//! A dozen lines over `UnixDatagram` rather than the `sd-notify` crate: the protocol is one
//! `sendto`, abstract socket names (`@…`) come with std, and we need two things the crate
//! would not do for us anyway — go quiet for good once an upgrade has handed the service to
//! our successor, and pace `STATUS=` without a timer.
//!
//! `NOTIFY_SOCKET` stays in the environment: the upgrade child needs it to announce itself.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::{Duration, Instant};

use log::{debug, warn};

use crate::sys;

/// The least time between two `STATUS=` messages.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// How long a change may settle before it is reported, so that a connection's close and
/// the drop of its slot, a few instructions apart, make one status and not two.
const STATUS_SETTLE: Duration = Duration::from_millis(100);

/// Where systemd listens, read once; `None` outside systemd.
static TARGET: OnceLock<Option<SocketAddr>> = OnceLock::new();
/// Set once our successor has taken the service over: from then on systemd must hear
/// nothing from us (a `STOPPING=1` from the old process would stop the whole unit).
static HANDED_OVER: AtomicBool = AtomicBool::new(false);
/// The status thread, when there is one; `changed()` wakes it.
static STATUS_THREAD: OnceLock<Thread> = OnceLock::new();
/// Whether something changed since the last `STATUS=`.
static DIRTY: AtomicBool = AtomicBool::new(false);
/// Whether a failed send was logged: the status line could otherwise repeat it every second.
static WARNED: AtomicBool = AtomicBool::new(false);

/// Whether systemd asked to be notified.
pub fn enabled() -> bool {
    target().is_some()
}

/// Every listener is bound: the service is up.
pub fn ready() {
    send("READY=1");
}

/// A reload begins; [`ready`] ends it.
pub fn reloading() {
    send(&format!("RELOADING=1\nMONOTONIC_USEC={}", sys::monotonic_usec()));
}

/// A stop begins.
pub fn stopping() {
    send("STOPPING=1");
}

/// In the new process of an upgrade, once it accepts: systemd follows this pid from now on.
pub fn ready_as_main_process() {
    send(&format!("MAINPID={}\nREADY=1", std::process::id()));
}

/// In the old process of an upgrade, once the new one serves: no more messages from us.
pub fn hand_over() {
    HANDED_OVER.store(true, Ordering::Release);
}

/// Something the status line counts has changed; cheap enough for every accept and close
/// (one atomic swap; the status thread is woken at most once per report).
pub fn changed() {
    if let Some(thread) = STATUS_THREAD.get() {
        if !DIRTY.swap(true, Ordering::AcqRel) {
            thread.unpark();
        }
    }
}

/// Starts the thread that sends `STATUS=` lines built by `status`, at most once a second
/// and only after a change; it sleeps (parked) while nothing changes. Does nothing outside
/// systemd.
pub fn start_status(status: impl Fn() -> String + Send + 'static) -> io::Result<()> {
    if !enabled() {
        return Ok(());
    }
    let handle = std::thread::Builder::new().name("notify-status".into()).spawn(move || {
        // `Instant::now() - STATUS_INTERVAL` would panic within a second of boot.
        let mut last_sent: Option<Instant> = None;
        loop {
            while !DIRTY.load(Ordering::Acquire) {
                std::thread::park();
            }
            let settled = Instant::now() + STATUS_SETTLE;
            let at = last_sent.map_or(settled, |sent| (sent + STATUS_INTERVAL).max(settled));
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            DIRTY.store(false, Ordering::Release);
            send(&format!("STATUS={}", status()));
            last_sent = Some(Instant::now());
        }
    })?;
    let _ = STATUS_THREAD.set(handle.thread().clone());
    Ok(())
}

/// The status line systemd shows: `42 connections; 1,234 closed cleanly, 3 peer did not answer`.
pub fn status_line(open: usize, clean: u64, no_answer: u64) -> String {
    let plural = if open == 1 { "" } else { "s" };
    format!(
        "{} connection{plural}; {} closed cleanly, {} peer did not answer",
        thousands(open as u64),
        thousands(clean),
        thousands(no_answer)
    )
}

/// 1234567 as "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn send(message: &str) {
    let Some(addr) = target() else { return };
    if HANDED_OVER.load(Ordering::Acquire) {
        return;
    }
    // Non-blocking: a service manager whose queue is full costs a notification, never a
    // stalled supervisor (STOPPING=1 is sent from its thread).
    let sent = UnixDatagram::unbound().and_then(|socket| {
        socket.set_nonblocking(true)?;
        socket.send_to_addr(message.as_bytes(), addr)
    });
    match sent {
        Ok(_) => debug!("notify: {}", message.replace('\n', " ")),
        Err(err) if !WARNED.swap(true, Ordering::Relaxed) => {
            warn!("cannot notify systemd at {addr:?} ({}): {err}", message.replace('\n', " "))
        }
        Err(_) => {}
    }
}

fn target() -> Option<&'static SocketAddr> {
    TARGET.get_or_init(|| parse_target(&std::env::var_os("NOTIFY_SOCKET")?)).as_ref()
}

/// `/run/systemd/notify`, or `@name` for a socket in the abstract namespace.
fn parse_target(value: &std::ffi::OsStr) -> Option<SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = value.as_bytes();
    let parsed = match bytes.split_first() {
        Some((b'@', name)) => SocketAddr::from_abstract_name(name),
        Some((b'/', _)) => SocketAddr::from_pathname(std::path::Path::new(value)),
        _ => return None,
    };
    match parsed {
        Ok(addr) => Some(addr),
        Err(err) => {
            warn!("NOTIFY_SOCKET={}: {err}; systemd will not hear from us", value.to_string_lossy());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_groups_thousands_and_counts_connections() {
        assert_eq!(status_line(42, 1234, 3), "42 connections; 1,234 closed cleanly, 3 peer did not answer");
        assert_eq!(status_line(1, 0, 0), "1 connection; 0 closed cleanly, 0 peer did not answer");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
    }

    #[test]
    fn targets_are_paths_or_abstract_names() {
        let path = parse_target("/run/systemd/notify".as_ref()).unwrap();
        assert_eq!(path.as_pathname(), Some(std::path::Path::new("/run/systemd/notify")));
        let abstract_name = parse_target("@tlsrelay/test".as_ref()).unwrap();
        assert_eq!(abstract_name.as_abstract_name(), Some(&b"tlsrelay/test"[..]));
        assert!(parse_target("relative/path".as_ref()).is_none());
        assert!(parse_target("".as_ref()).is_none());
    }

    #[test]
    fn a_message_reaches_an_abstract_socket() {
        let name = format!("tlsrelay-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        let target = parse_target(format!("@{name}").as_ref()).unwrap();
        UnixDatagram::unbound().unwrap().send_to_addr(b"READY=1", &target).unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
