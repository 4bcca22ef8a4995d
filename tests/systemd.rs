//! The Debian package under a real systemd (issue 12): a systemd-nspawn container boots the
//! host's own system, installs target/debian/tlsrelay_*.deb with dpkg, and the unit is
//! driven with systemctl while clients talk to the hub inside the container's network.
//! One test, in steps that build on each other (one boot costs ~10 s); each step's panic
//! says what broke. It never skips: a container that cannot boot fails the test.

mod systemd_support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::ssl::SslConnector;
use systemd_support::container::Container;
use systemd_support::hub_client::{connector, HubClient};
use systemd_support::package;

/// The hub's default address inside the container (no --listen in /etc/default/tlsrelay).
const HUB_PORT: u16 = 7443;
/// tlsrelay@alt's --listen port.
const ALT_PORT: u16 = 7444;
/// tlsrelay.socket's ListenStream=.
const SOCKET_PORT: u16 = 443;
/// --close-timeout's default, which `systemctl stop` must stay within.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

struct Service {
    box_: Container,
    tls: SslConnector,
}

impl Service {
    fn client(&self, port: u16) -> Result<(HubClient, String), String> {
        let tcp = self.box_.connect(port).map_err(|e| format!("connect to port {port}: {e}"))?;
        HubClient::start(tcp, &self.tls)
    }

    fn main_pid(&self) -> u32 {
        self.box_.property("MainPID").parse().expect("MainPID is a number")
    }

    fn wait_main_pid_change(&self, old: u32, timeout: Duration) -> u32 {
        let deadline = Instant::now() + timeout;
        loop {
            let pid = self.main_pid();
            if pid != old && pid != 0 {
                return pid;
            }
            assert!(Instant::now() < deadline, "MainPID still {pid} after {timeout:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn the_package_runs_tlsrelay_as_a_systemd_service() {
    let share = tempfile::tempdir().unwrap();
    let deb = package::fresh_deb(share.path());
    let next_version = package::next_revision(share.path(), &deb);
    let box_ = Container::boot(share.path());
    let installed = box_.sh("DEBIAN_FRONTEND=noninteractive dpkg -i /pkg/tlsrelay.deb 2>&1");
    let ca = box_.path("/etc/tlsrelay/ca.crt");
    assert!(ca.is_file(), "postinst made no development CA at /etc/tlsrelay/ca.crt:\n{installed}");
    let service = Service { tls: connector(&ca), box_ };
    assert_eq!(service.box_.property("ActiveState"), "active", "install starts the service:\n{installed}");
    the_package_ships_units_man_pages_and_completions(&service);

    start_returns_once_the_hub_answers(&service);
    runs_unprivileged_with_the_small_malloc_cache(&service);
    sandbox_scores_ok_in_systemd_analyze_security(&service);
    reload_serves_a_new_certificate_and_keeps_old_clients(&service);
    package_upgrade_is_hitless(&service, &next_version);
    sigkill_of_the_main_process_is_restarted(&service);
    stop_closes_100_clients_cleanly_within_the_close_timeout(&service);
    journal_holds_the_listening_and_closed_lines(&service);
    socket_activation_serves_on_a_port_the_service_never_bound(&service);
    purge_removes_what_postinst_made(&service);
}

fn the_package_ships_units_man_pages_and_completions(service: &Service) {
    assert_eq!(service.box_.sh("systemctl is-enabled tlsrelay.service"), "enabled");
    let socket = service.box_.try_sh("systemctl is-enabled tlsrelay.socket", Duration::from_secs(10));
    assert_eq!(String::from_utf8_lossy(&socket.stdout).trim(), "disabled", "the socket unit ships disabled");
    for file in [
        "/usr/share/man/man1/tlsrelay.1.gz",
        "/usr/share/man/man1/tlsrelay-serve.1.gz",
        "/usr/share/bash-completion/completions/tlsrelay",
        "/usr/share/zsh/vendor-completions/_tlsrelay",
        "/usr/share/fish/vendor_completions.d/tlsrelay.fish",
        "/usr/lib/sysusers.d/tlsrelay.conf",
        "/usr/lib/systemd/system/tlsrelay@.service",
    ] {
        assert!(service.box_.path(file).is_file(), "the package lacks {file}");
    }
    // The container's fresh /etc has no manpath.config: render the page on the host.
    let page = service.box_.path("/usr/share/man/man1/tlsrelay-serve.1.gz");
    let man = std::process::Command::new("man").arg("-l").arg(&page).env("MANWIDTH", "80").output();
    let man = man.expect("run man -l");
    assert!(String::from_utf8_lossy(&man.stdout).contains("--close-timeout"), "man tlsrelay-serve renders");
}

fn start_returns_once_the_hub_answers(service: &Service) {
    service.box_.sh("systemctl stop tlsrelay");
    assert!(service.box_.connect(HUB_PORT).is_err(), "the port still answers after a stop");
    let t0 = Instant::now();
    service.box_.sh("systemctl start tlsrelay");
    let took = t0.elapsed();
    // No retry: READY=1 comes only after every listener is bound.
    let (_client, welcome) = service.client(HUB_PORT).expect("the hub answers as soon as start returns");
    eprintln!("measured: systemctl start to ready: {} ms ({welcome})", took.as_millis());
    // Issue 12's "done": openssl s_client with the package's CA talks to the hub.
    let ca = service.box_.path("/etc/tlsrelay/ca.crt");
    let script = format!(
        "sleep 1 | openssl s_client -quiet -no_ign_eof -verify_return_error -CAfile {} -connect 127.0.0.1:{HUB_PORT}",
        ca.display()
    );
    let s_client = service.box_.host_sh_in_net(&script, Duration::from_secs(20));
    let said = String::from_utf8_lossy(&s_client.stdout);
    assert!(
        said.starts_with("* welcome to tlsrelay"),
        "s_client: {said}{}",
        String::from_utf8_lossy(&s_client.stderr)
    );
    let status = wait_for(Duration::from_secs(5), || {
        let text = service.box_.property("StatusText");
        text.contains("1 connection;").then_some(text)
    });
    assert!(status.contains("closed cleanly") && status.contains("peer did not answer"), "{status}");
}

fn runs_unprivileged_with_the_small_malloc_cache(service: &Service) {
    let pid = service.main_pid();
    let user = service.box_.sh(&format!("ps -o user= -p {pid}"));
    assert_eq!(user, "tlsrelay", "the service runs as the tlsrelay user");
    // The re-exec with GLIBC_TUNABLES happened despite NoNewPrivileges and ambient caps.
    let environ = std::fs::read(service.box_.path(&format!("/proc/{pid}/environ"))).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(environ.contains("glibc.malloc.tcache_count=1"), "no malloc re-exec: {environ}");
    let status = std::fs::read_to_string(service.box_.path(&format!("/proc/{pid}/status"))).unwrap();
    let amb = status.lines().find(|l| l.starts_with("CapAmb:")).unwrap_or_default().to_string();
    assert!(amb.ends_with("0000000000000400"), "only CAP_NET_BIND_SERVICE is ambient: {amb}");
}

/// Issue 12: `systemd-analyze security` at or under 2.5 ("OK").
fn sandbox_scores_ok_in_systemd_analyze_security(service: &Service) {
    let report = service.box_.sh("systemd-analyze security --no-pager tlsrelay.service");
    let line =
        report.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{report}"));
    let score: f64 = line
        .split(": ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no score in {line:?}"));
    eprintln!("measured: {line}");
    assert!(score <= 2.5, "{report}");
}

fn reload_serves_a_new_certificate_and_keeps_old_clients(service: &Service) {
    let (mut old, _) = service.client(HUB_PORT).expect("client before the reload");
    let pid = service.main_pid();
    // A new server certificate from the same CA, as certbot replaces files in place.
    service.box_.sh(
        "cd /etc/tlsrelay && tlsrelay gen-cert --out . 2>/dev/null && chgrp tlsrelay server.key && chmod 640 server.key",
    );
    let reloads =
        || service.box_.sh("journalctl -u tlsrelay --no-pager -o cat | grep -c '^.*reloaded ' || true");
    let before: u32 = reloads().parse().unwrap();
    service.box_.sh("systemctl reload tlsrelay");
    // systemd 252's `systemctl reload` returns once ExecReload's kill has run (Type=notify-
    // reload, which waits for RELOADING=1/READY=1, came in 253): wait for the daemon's line.
    wait_for(Duration::from_secs(5), || (reloads().parse::<u32>().unwrap() > before).then_some(()));
    let (mut new, _) = service.client(HUB_PORT).expect("client after the reload");
    assert_ne!(new.serial(), old.serial(), "new clients get the new certificate");
    new.send("/nick after");
    new.send("still there?");
    let seen = wait_line(&mut old, "<after> still there?");
    assert!(seen, "the client from before the reload is still served");
    assert_eq!(service.main_pid(), pid, "a reload keeps the process");
    assert_eq!(service.box_.property("ActiveState"), "active");
}

/// A second instance (tlsrelay@alt, its own port from /etc/tlsrelay/alt.env) is upgraded too.
fn package_upgrade_is_hitless(service: &Service, next_version: &str) {
    service.box_.sh(&format!(
        "echo 'TLSRELAY_OPTS=\"--listen 127.0.0.1:{ALT_PORT} --cert /etc/tlsrelay/server.crt --key /etc/tlsrelay/server.key\"' \
         > /etc/tlsrelay/alt.env && systemctl start tlsrelay@alt"
    ));
    service.client(ALT_PORT).expect("the template instance answers on its own port");
    let alt_pid = || service.box_.sh("systemctl show -P MainPID tlsrelay@alt");
    let old_alt = alt_pid();
    let old_pid = service.main_pid();
    let (held, _) = service.client(HUB_PORT).expect("client before the upgrade");
    let stop = Arc::new(AtomicBool::new(false));
    let (attempts, refused, states) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Vec::new());
    let states = Arc::new(std::sync::Mutex::new(states));
    std::thread::scope(|scope| {
        // Set however this closure ends, or a failed assertion would wait for the loops forever.
        let _stop_loops = StopOnDrop(&stop);
        scope.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                attempts.fetch_add(1, Ordering::Relaxed);
                if let Err(err) = service.client(HUB_PORT) {
                    eprintln!("connection attempt failed during the upgrade: {err}");
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        scope.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                states.lock().unwrap().push(service.box_.property("ActiveState"));
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        // postinst's upgrade path: SIGUSR2, not a restart.
        let out = service.box_.sh("DEBIAN_FRONTEND=noninteractive dpkg -i /pkg/tlsrelay-next.deb 2>&1");
        assert!(out.contains("upgraded without a restart"), "postinst output:\n{out}");
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Release);
    });
    let new_pid = service.main_pid();
    assert_ne!(new_pid, old_pid, "the upgrade changed MainPID");
    assert_eq!(service.box_.sh("dpkg-query -W -f '${Version}' tlsrelay"), next_version);
    assert_ne!(alt_pid(), old_alt, "the upgrade changed tlsrelay@alt's MainPID too");
    service.client(ALT_PORT).expect("tlsrelay@alt serves after the upgrade");
    service.box_.sh("systemctl stop tlsrelay@alt");
    let (lines, clean) = held.finish();
    assert_eq!(lines.last().map(String::as_str), Some("* closing: upgrade"), "{lines:?}");
    assert!(clean, "the old process closed with close_notify");
    let states = states.lock().unwrap();
    assert!(states.iter().all(|s| s == "active"), "the unit left `active`: {states:?}");
    let (attempts, refused) = (attempts.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
    assert_eq!(refused, 0, "{refused} of {attempts} connection attempts failed across the upgrade");
    assert!(attempts > 10, "only {attempts} connection attempts: the loop did not run");

    // Measured on its own: SIGUSR2 to the new MainPID.
    let t0 = Instant::now();
    service.box_.sh("systemctl kill -s SIGUSR2 --kill-whom=main tlsrelay");
    service.wait_main_pid_change(new_pid, Duration::from_secs(15));
    eprintln!(
        "measured: upgrade to new MainPID: {} ms ({attempts} connection attempts during the package upgrade, 0 refused)",
        t0.elapsed().as_millis()
    );
}

fn sigkill_of_the_main_process_is_restarted(service: &Service) {
    let pid = service.main_pid();
    service.box_.sh("systemctl kill -s SIGKILL --kill-whom=main tlsrelay");
    service.wait_main_pid_change(pid, Duration::from_secs(15));
    wait_for(Duration::from_secs(15), || (service.box_.property("ActiveState") == "active").then_some(()));
    service.client(HUB_PORT).expect("the restarted service answers");
    assert!(service.box_.property("NRestarts").parse::<u32>().unwrap() >= 1);
}

fn stop_closes_100_clients_cleanly_within_the_close_timeout(service: &Service) {
    let clients: Vec<HubClient> =
        (0..100).map(|i| service.client(HUB_PORT).unwrap_or_else(|e| panic!("client {i}: {e}")).0).collect();
    let ends = std::thread::scope(|scope| {
        let readers: Vec<_> = clients.into_iter().map(|c| scope.spawn(move || c.finish())).collect();
        let t0 = Instant::now();
        service.box_.sh("systemctl stop tlsrelay");
        let took = t0.elapsed();
        eprintln!("measured: systemctl stop with 100 clients: {} ms", took.as_millis());
        assert!(took < CLOSE_TIMEOUT, "systemctl stop took {took:?}, over the close timeout");
        readers.into_iter().map(|r| r.join().expect("reader")).collect::<Vec<_>>()
    });
    for (i, (lines, clean)) in ends.iter().enumerate() {
        assert_eq!(lines.last().map(String::as_str), Some("* closing: shutdown"), "client {i}: {lines:?}");
        assert!(clean, "client {i} got no close_notify");
    }
    let summary = service.box_.sh("journalctl -u tlsrelay --no-pager -o cat | grep 'stopped:' | tail -1");
    assert!(summary.contains("100 clean"), "{summary}");
    service.box_.sh("systemctl start tlsrelay");
}

fn journal_holds_the_listening_and_closed_lines(service: &Service) {
    let journal = service.box_.sh("journalctl -u tlsrelay --no-pager -o cat");
    assert!(journal.contains("listening on 127.0.0.1:7443"), "{journal}");
    assert!(journal.contains(" closed: clean"), "{journal}");
}

fn socket_activation_serves_on_a_port_the_service_never_bound(service: &Service) {
    // systemd refuses to start a socket whose service already runs without it.
    service
        .box_
        .sh("systemctl stop tlsrelay && systemctl enable --now tlsrelay.socket && systemctl start tlsrelay");
    let (_client, _) = service.client(SOCKET_PORT).expect("the hub answers on the socket unit's port");
    assert!(service.box_.connect(HUB_PORT).is_err(), "with passed sockets it must not bind the default");
    let journal = service.box_.sh("journalctl -u tlsrelay --no-pager -o cat | grep 'listening on' | tail -1");
    assert_eq!(journal, "listening on [::]:443", "the passed socket, not a bound one");
    // Upgrades hand the passed socket on, too.
    let pid = service.main_pid();
    service.box_.sh("systemctl kill -s SIGUSR2 --kill-whom=main tlsrelay");
    service.wait_main_pid_change(pid, Duration::from_secs(15));
    service.client(SOCKET_PORT).expect("the upgraded process serves the passed socket");
    // A restart with the socket held by systemd refuses no connection: they wait in its backlog.
    let (attempts, refused, unserved) =
        under_connection_loop(service, SOCKET_PORT, || service.box_.sh("systemctl restart tlsrelay"));
    eprintln!(
        "measured: systemctl restart under socket activation: {attempts} attempts, {refused} refused, \
         {unserved} accepted but closed before their welcome"
    );
    assert_eq!(refused, 0, "{refused} of {attempts} connection attempts refused across a restart");
    service.box_.sh("systemctl disable --now tlsrelay.socket && systemctl restart tlsrelay");
}

/// Runs `action` while a client connects in a loop; returns the attempts, those refused at
/// the TCP level, and those accepted but closed before the hub's welcome.
fn under_connection_loop(
    service: &Service,
    port: u16,
    action: impl FnOnce() -> String,
) -> (usize, usize, usize) {
    let stop = AtomicBool::new(false);
    let (attempts, refused, unserved) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|scope| {
        let _stop_loop = StopOnDrop(&stop);
        scope.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                attempts.fetch_add(1, Ordering::Relaxed);
                match service.box_.connect(port) {
                    Err(_) => refused.fetch_add(1, Ordering::Relaxed),
                    Ok(tcp) => match HubClient::start(tcp, &service.tls) {
                        Err(_) => unserved.fetch_add(1, Ordering::Relaxed),
                        Ok(_) => 0,
                    },
                };
            }
        });
        action();
        std::thread::sleep(Duration::from_millis(300));
    });
    (attempts.into_inner(), refused.into_inner(), unserved.into_inner())
}

/// The reload step replaced server.crt and server.key, as an operator would: those stay.
fn purge_removes_what_postinst_made(service: &Service) {
    service.box_.sh("dpkg --purge tlsrelay >/dev/null 2>&1");
    for generated in ["ca.crt", "ca.key", ".generated-by-package"] {
        let path = service.box_.path(&format!("/etc/tlsrelay/{generated}"));
        assert!(!path.exists(), "purge left {}", path.display());
    }
    assert!(service.box_.path("/etc/tlsrelay/server.crt").exists(), "purge removed a replaced certificate");
    assert!(!service.box_.path("/usr/lib/systemd/system/tlsrelay.service").exists());
    let user = service.box_.try_sh("getent passwd tlsrelay", Duration::from_secs(10));
    assert!(!user.status.success(), "the tlsrelay user is gone");
    assert!(service.box_.connect(HUB_PORT).is_err(), "nothing serves after the purge");
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Reads lines until `want` arrives; false if the stream ends or stalls first.
fn wait_line(client: &mut HubClient, want: &str) -> bool {
    while let Ok(line) = client.line() {
        if line == want {
            return true;
        }
    }
    false
}

fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "condition not met within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
