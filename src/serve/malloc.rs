//! glibc malloc's per-thread cache, cut down to one block per size for the daemon.
//!
//! glibc gives every thread a cache of freed blocks (the tcache, 7 blocks of each small
//! size) that only that thread can reuse. With a thread per connection, each idle client's
//! thread keeps there the blocks its handshake freed, where no other connection can use
//! them. Measured with 1,000 idle TLS 1.3 clients (BENCH.md, M5): 35.7 KiB a connection with
//! glibc's 7, 30.3 with 1, 25.0 with none; and relay CPU per new connection (M4) ~465,
//! ~479 and ~498 µs. One block keeps idle connections under 32 KiB at half the cost of none. The cache can only be sized from the environment
//! at process start (`GLIBC_TUNABLES`), so `serve` executes itself again, once, with it set.
//! The pid, the arguments and every inherited descriptor stay the same. A binary that runs
//! in glibc's secure mode (setuid, or file capabilities such as `cap_net_bind_service` to
//! bind port 443) is left alone: glibc drops the variable there.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use log::warn;

use crate::sys;

const TUNABLES: &str = "GLIBC_TUNABLES";
const TCACHE_COUNT: &str = "glibc.malloc.tcache_count";
/// Set for the re-executed process, so that nothing can make it execute itself again.
const REEXECUTED: &str = "TLSRELAY_TCACHE_SET";

/// Re-executes `exe` with a one-block tcache unless the environment already sizes it (ours
/// from the first start, or an operator's own choice, which wins). Returns only when no
/// re-execution happens.
pub fn limit_tcache(exe: &Path) {
    let current = std::env::var_os(TUNABLES).unwrap_or_default();
    let sized = current.to_string_lossy().contains(TCACHE_COUNT);
    if sized || std::env::var_os(REEXECUTED).is_some() || sys::secure_execution() {
        return;
    }
    let mut tunables = current.clone();
    if !tunables.is_empty() {
        tunables.push(":");
    }
    tunables.push(format!("{TCACHE_COUNT}=1"));
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("tlsrelay"));
    let err = Command::new(exe).arg0(arg0).args(args).env(TUNABLES, tunables).env(REEXECUTED, "1").exec();
    warn!(
        "cannot execute {} again with a smaller per-thread malloc cache: {err}; \
         each idle connection costs about 5 KiB more",
        exe.display()
    );
}
