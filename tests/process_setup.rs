//! What `serve` sets up around itself: a smaller glibc per-thread malloc cache (it executes
//! itself once to get it, keeping its pid and name), and TCP keepalive on client sockets
//! through the listening socket.

mod common;

use std::net::TcpStream;

use common::daemon::serve_command;
use common::upstream::echo;
use common::{forward, secs, Certs, Daemon};

fn environ(pid: i32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|&b| b == 0).map(|var| String::from_utf8_lossy(var).into_owned()).collect()
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap().trim().to_string()
}

#[test]
fn serve_runs_with_a_one_block_malloc_thread_cache_under_its_own_pid_and_name() {
    let certs = Certs::new();
    let daemon = Daemon::start(&certs, &[]);
    let pid = daemon.pid();
    assert!(
        environ(pid).contains(&"GLIBC_TUNABLES=glibc.malloc.tcache_count=1".to_string()),
        "{:?}",
        environ(pid)
    );
    assert_eq!(comm(pid), "tlsrelay", "the re-execution keeps the process name");
}

#[test]
fn an_operators_own_tcache_setting_wins_and_other_tunables_are_kept() {
    let certs = Certs::new();
    let own = "glibc.malloc.tcache_count=4";
    let mut cmd = serve_command(&certs, &[]);
    cmd.env("GLIBC_TUNABLES", own);
    let daemon = Daemon::start_command(cmd);
    assert!(environ(daemon.pid()).contains(&format!("GLIBC_TUNABLES={own}")));

    let other = "glibc.malloc.arena_max=2";
    let mut cmd = serve_command(&certs, &[]);
    cmd.env("GLIBC_TUNABLES", other);
    let daemon = Daemon::start_command(cmd);
    // glibc's loader cuts the variable at each ':' in place while it parses it, so the
    // process's environment block shows the tunables as separate strings.
    let env = environ(daemon.pid());
    assert!(env.contains(&format!("GLIBC_TUNABLES={other}")), "{env:?}");
    assert!(env.contains(&"glibc.malloc.tcache_count=1".to_string()), "{env:?}");
}

/// Whether the daemon's established socket on `local_port` has its keepalive timer running
/// (/proc/net/tcp's `tr` column is 2 then), once the socket shows up.
fn keepalive_timer_on(local_port: u16) -> Option<bool> {
    let deadline = std::time::Instant::now() + secs(5.0);
    while std::time::Instant::now() < deadline {
        if let Some(running) = keepalive_timer_on_port(local_port) {
            return Some(running);
        }
        std::thread::sleep(secs(0.02));
    }
    None
}

fn keepalive_timer_on_port(local_port: u16) -> Option<bool> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = u16::from_str_radix(fields[1].rsplit(':').next()?, 16).ok()?;
        let established = fields[3] == "01";
        (port == local_port && established).then(|| fields[5].starts_with("02:"))
    })
}

#[test]
fn accepted_client_sockets_carry_the_keepalive_set_on_the_listener() {
    let with = forward(echo(), &["--keepalive", "30"]);
    let client = TcpStream::connect(with.daemon.addr()).unwrap();
    assert_eq!(keepalive_timer_on(with.port()), Some(true), "--keepalive 30: the timer runs");
    drop(client);

    let without = forward(echo(), &["--keepalive", "0"]);
    let client = TcpStream::connect(without.daemon.addr()).unwrap();
    assert_eq!(keepalive_timer_on(without.port()), Some(false), "--keepalive 0: no timer");
    drop(client);
}

/// A binary with file capabilities (`setcap cap_net_bind_service=+ep`, the usual way to bind
/// port 443 without root) runs in glibc's secure mode, which drops GLIBC_TUNABLES: the daemon
/// must start once and go on, not execute itself again and again.
#[test]
fn a_binary_with_file_capabilities_starts_once_as_an_unprivileged_user() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        eprintln!("skipped: setting file capabilities and switching to nobody needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join("tlsrelay");
    std::fs::copy(env!("CARGO_BIN_EXE_tlsrelay"), &copy).unwrap();
    let setcap = std::process::Command::new("setcap").arg("cap_net_bind_service=+ep").arg(&copy).status();
    assert!(setcap.unwrap().success(), "setcap failed");

    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(&copy);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--cert", "/nonexistent/server.crt"]);
    cmd.args(["--key", "/nonexistent/server.key"]);
    let mut proc = common::process::Proc::spawn("setpriv tlsrelay", cmd);
    let status = proc.wait_exit(secs(10.0));
    let stderr = proc.stderr();
    let status = status
        .unwrap_or_else(|| panic!("still running after 10 s (executing itself again?); stderr:\n{stderr}"));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent/server.crt"), "it reached its own check of the files: {stderr}");
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
