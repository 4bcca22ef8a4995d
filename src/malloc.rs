//! glibc malloc's per-thread cache, turned off for the daemon.
//!
//! glibc gives every thread a cache of freed blocks (the tcache) that only that thread can
//! reuse. With a thread per connection, each idle client's thread keeps the blocks its
//! handshake freed there — about 11 KiB each (BENCH.md, M5) — where no other connection can
//! use them. The cache can only be turned off from the environment at process start
//! (`GLIBC_TUNABLES`), so `serve` executes itself again, once, with it off. The pid, the
//! arguments and every inherited descriptor stay the same.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use log::warn;

const TUNABLES: &str = "GLIBC_TUNABLES";
const TCACHE_COUNT: &str = "glibc.malloc.tcache_count";

/// Re-executes `exe` with the tcache off unless the environment already sets its size
/// (ours from the first start, or an operator's own choice, which wins). Returns only when
/// no re-execution happens.
pub fn turn_off_thread_cache(exe: &Path) {
    let current = std::env::var_os(TUNABLES).unwrap_or_default();
    if current.to_string_lossy().contains(TCACHE_COUNT) {
        return;
    }
    let mut tunables = current.clone();
    if !tunables.is_empty() {
        tunables.push(":");
    }
    tunables.push(format!("{TCACHE_COUNT}=0"));
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("tlsrelay"));
    let err = Command::new(exe).arg0(arg0).args(args).env(TUNABLES, tunables).exec();
    warn!(
        "cannot execute {} again with glibc's per-thread malloc cache off: {err}; \
         each idle connection costs about 11 KiB more",
        exe.display()
    );
}
