//! Socket activation (sd_listen_fds(3)): when systemd passes us listening sockets
//! (`LISTEN_PID` is our pid, `LISTEN_FDS` how many, numbered from 3), we serve on those
//! instead of binding, so systemd can own a privileged port and keep it open across our
//! restarts. The variables are removed once read, so that no child of ours misreads them;
//! an upgrade child gets the same sockets through `TLSRELAY_LISTEN_FDS` (upgrade.rs).

use std::ffi::OsString;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::RawFd;

use crate::error::{describe_io, Error};
use crate::sys;

/// sd_listen_fds(3): the first passed descriptor; the others follow it.
const FIRST_FD: RawFd = 3;

/// The sockets systemd passed to this process, if any. `--listen` addresses, when the
/// operator gave some, must be exactly the sockets' addresses: anything else would serve
/// on addresses the command line does not name.
pub fn take(listen: Option<&[SocketAddr]>) -> Result<Option<Vec<TcpListener>>, Error> {
    let pid = take_var("LISTEN_PID");
    let count = take_var("LISTEN_FDS");
    let _ = take_var("LISTEN_FDNAMES");
    let (Some(pid), Some(count)) = (pid, count) else { return Ok(None) };
    if pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
        return Ok(None); // meant for another process (an ancestor of ours)
    }
    let count: RawFd = count
        .to_str()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| failure(format!("LISTEN_FDS={} is not a number", count.to_string_lossy())))?;
    if count <= 0 {
        return Ok(None);
    }
    let listeners = (FIRST_FD..FIRST_FD + count).map(adopt).collect::<Result<Vec<_>, _>>()?;
    if let Some(listen) = listen {
        check_listen_matches(listen, &listeners)?;
    }
    Ok(Some(listeners))
}

fn take_var(name: &str) -> Option<OsString> {
    let value = std::env::var_os(name);
    // Single-threaded still: serve runs this before it starts any thread.
    std::env::remove_var(name);
    value
}

/// Checks descriptor `fd` is a listening TCP socket and takes it over (non-blocking,
/// close-on-exec), as an upgrade child does with the ones it inherits.
fn adopt(fd: RawFd) -> Result<TcpListener, Error> {
    sys::adopt_listener(fd).map_err(|err| {
        failure(format!(
            "descriptor {fd} passed by systemd (LISTEN_FDS): {}; \
             tlsrelay.socket must use ListenStream= with a TCP address or port only",
            describe_io(&err)
        ))
    })
}

fn check_listen_matches(listen: &[SocketAddr], sockets: &[TcpListener]) -> Result<(), Error> {
    let mut passed = sockets.iter().map(TcpListener::local_addr).collect::<io::Result<Vec<_>>>()?;
    let mut wanted = listen.to_vec();
    passed.sort();
    wanted.sort();
    if passed == wanted {
        return Ok(());
    }
    let show = |addrs: &[SocketAddr]| addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ");
    Err(Error::Usage(format!(
        "--listen {} does not match the sockets systemd passed ({}): remove --listen to serve on \
         the sockets of the .socket unit, or make its ListenStream= lines name the same addresses",
        show(&wanted),
        show(&passed)
    )))
}

fn failure(message: String) -> Error {
    Error::Io(io::Error::other(format!("socket activation: {message}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_must_name_exactly_the_passed_sockets() {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        let (addr_a, addr_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let sockets = [a, b];
        assert!(check_listen_matches(&[addr_b, addr_a], &sockets).is_ok(), "order does not matter");
        let err = check_listen_matches(&[addr_a], &sockets).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let text = err.to_string();
        assert!(text.contains(&addr_a.to_string()) && text.contains(&addr_b.to_string()), "{text}");
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(check_listen_matches(&[addr_a, other], &sockets).is_err());
    }
}
