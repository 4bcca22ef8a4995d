//! A booted systemd in a `systemd-nspawn` container: the host's own /usr (under a throwaway
//! writable overlay, so `dpkg -i` works and the host stays untouched), a fresh tmpfs root,
//! a private network, and commands run inside with `nsenter`.

use std::fs::File;
use std::io::Read;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long the container may take to boot (about 10 s measured; a busy CI machine more).
const BOOT_DEADLINE: Duration = Duration::from_secs(90);

/// A running container; powered off (or killed) on Drop.
pub struct Container {
    nspawn: Child,
    /// The container's PID 1 (its systemd), as the host sees it.
    pid: u32,
}

impl Container {
    /// Boots the container with `share` bound read-only at /pkg. Panics saying why when it
    /// cannot boot: this test never skips.
    pub fn boot(share: &Path) -> Container {
        for tool in ["systemd-nspawn", "nsenter"] {
            let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output();
            assert!(
                found.is_ok_and(|o| o.status.success()),
                "{tool} is missing: `make deps` installs it (Debian: systemd-container, util-linux)"
            );
        }
        let name = format!("tlsrelay-test-{}", std::process::id());
        let mut nspawn = Command::new("systemd-nspawn");
        // If this test dies without its Drop, nspawn gets SIGTERM and powers the container off.
        // SAFETY: prctl between fork and exec only sets this process's death signal.
        unsafe {
            nspawn.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut nspawn = nspawn
            .args(["--quiet", "--register=no", "--keep-unit", "--volatile=yes", "-D", "/"])
            .arg(format!("--machine={name}"))
            .arg("--private-network")
            // A writable layer over the host's /usr and its dpkg database, thrown away at
            // power-off: the package installs inside without touching the host.
            .args(["--overlay=/usr::/usr", "--overlay=/var/lib/dpkg::/dpkgdb"])
            .arg(format!("--bind-ro={}:/pkg", share.display()))
            .args([
                "--boot",
                "--",
                "systemd.firstboot=off",
                "systemd.mask=systemd-networkd-wait-online.service",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start systemd-nspawn: {e}"));
        let pid = wait_for_init(&mut nspawn);
        let mut container = Container { nspawn, pid };
        container.wait_booted();
        // The host's stat overrides name groups the container's fresh /etc does not have;
        // dpkg refuses to run with them (the overlay keeps the host's file intact).
        container.sh("mkdir -p /var/lib && ln -sfn /dpkgdb /var/lib/dpkg && : > /dpkgdb/statoverride");
        // A build host's policy-rc.d (as in Docker images) forbids starting services; this
        // container is a real system.
        container.sh("rm -f /usr/sbin/policy-rc.d");
        container
    }

    /// The container's PID 1, for nsenter and /proc/PID/root.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A path inside the container, as the host can read it.
    pub fn path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{inside}", self.pid))
    }

    /// Runs `sh -c SCRIPT` inside; panics when it fails or takes over a minute.
    pub fn sh(&self, script: &str) -> String {
        let out = self.try_sh(script, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "in the container, `{script}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs `sh -c SCRIPT` inside and returns whatever happened; killed after `timeout`.
    pub fn try_sh(&self, script: &str, timeout: Duration) -> Output {
        self.nsenter("-a", script, timeout)
    }

    /// Runs `sh -c SCRIPT` with the host's files and tools in the container's network, for
    /// tools the container's fresh /etc cannot run (openssl without its openssl.cnf).
    pub fn host_sh_in_net(&self, script: &str, timeout: Duration) -> Output {
        self.nsenter("-n", script, timeout)
    }

    fn nsenter(&self, namespaces: &str, script: &str, timeout: Duration) -> Output {
        let child = Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), namespaces, "sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nsenter");
        wait_with_deadline(child, timeout)
            .unwrap_or_else(|| panic!("in the container, `{script}` did not finish within {timeout:?}"))
    }

    /// `systemctl show -P PROPERTY tlsrelay`.
    pub fn property(&self, property: &str) -> String {
        self.sh(&format!("systemctl show -P {property} tlsrelay.service"))
    }

    /// Connects to 127.0.0.1:`port` in the container's network namespace (entered by a
    /// short-lived thread: setns changes only the calling thread's namespace).
    pub fn connect(&self, port: u16) -> std::io::Result<TcpStream> {
        let netns = File::open(format!("/proc/{}/ns/net", self.pid))?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns on a namespace descriptor we hold; affects this thread only.
                    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5))
                })
                .join()
                .expect("connect thread")
        })
    }

    fn wait_booted(&mut self) {
        let deadline = Instant::now() + BOOT_DEADLINE;
        loop {
            // `degraded` is fine: host units that cannot run in a container fail there.
            let out = self.try_sh("systemctl is-system-running", Duration::from_secs(10));
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "running" || state == "degraded" {
                return;
            }
            if let Ok(Some(status)) = self.nspawn.try_wait() {
                panic!("the container exited ({status}) while booting: {}", self.nspawn_stderr());
            }
            assert!(
                Instant::now() < deadline,
                "the container did not boot within {BOOT_DEADLINE:?}: {state}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn nspawn_stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut err) = self.nspawn.stderr.take() {
            let _ = err.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.try_sh("systemctl poweroff", Duration::from_secs(10));
        if wait_with_deadline_ref(&mut self.nspawn, Duration::from_secs(30)).is_none() {
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
    }
}

/// Finds the container's systemd: the child of systemd-nspawn.
fn wait_for_init(nspawn: &mut Child) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(pid) = child_of(nspawn.id()) {
            return pid;
        }
        if let Ok(Some(status)) = nspawn.try_wait() {
            let mut err = String::new();
            if let Some(mut pipe) = nspawn.stderr.take() {
                let _ = pipe.read_to_string(&mut err);
            }
            panic!("systemd-nspawn exited ({status}) before the container started: {err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("systemd-nspawn started no container within 20 s");
}

fn child_of(parent: u32) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // Fields after the command name (which may hold spaces): state, ppid, ...
        let rest = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            return Some(pid);
        }
    }
    None
}

fn wait_with_deadline(mut child: Child, timeout: Duration) -> Option<Output> {
    // One reader per pipe, so that neither can fill up while the other is read.
    let read_all = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = read_all(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = read_all(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let status = wait_with_deadline_ref(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    let (stdout, stderr) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    Some(Output { status: status?, stdout, stderr })
}

fn wait_with_deadline_ref(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
