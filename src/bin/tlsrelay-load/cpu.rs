//! CPU time of a process and all its descendants, from /proc/PID/stat (utime+stime, plus
//! cutime+cstime for reaped children such as socat's forks).

use std::collections::HashMap;
use std::fs;

/// Seconds of CPU used so far by `root` and every live descendant.
pub fn tree_seconds(root: u32) -> f64 {
    let mut parents: HashMap<u32, u32> = HashMap::new();
    let mut ticks: HashMap<u32, u64> = HashMap::new();
    let Ok(dir) = fs::read_dir("/proc") else { return 0.0 };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if let Some((ppid, t)) = stat(pid) {
            parents.insert(pid, ppid);
            ticks.insert(pid, t);
        }
    }
    let mut total = 0u64;
    let mut count = 0;
    for (&pid, &t) in &ticks {
        if descends(pid, root, &parents) {
            total += t;
            count += 1;
        }
    }
    if std::env::var_os("TLSRELAY_LOAD_DEBUG").is_some() {
        eprintln!("cpu tree of {root}: {count} processes, {total} ticks");
    }
    total as f64 / clock_ticks()
}

fn descends(mut pid: u32, root: u32, parents: &HashMap<u32, u32>) -> bool {
    for _ in 0..64 {
        if pid == root {
            return true;
        }
        match parents.get(&pid) {
            Some(&p) if p != 0 && p != pid => pid = p,
            _ => return false,
        }
    }
    false
}

/// (ppid, utime+stime+cutime+cstime) of one process.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); ppid is field 4, utime..cstime are fields 14..17.
    let ppid = fields.get(1)?.parse().ok()?;
    let t: u64 = fields.get(11..15)?.iter().filter_map(|f| f.parse::<u64>().ok()).sum();
    Some((ppid, t))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Relay CPU between `start()` and `end()`, or nothing without a pid.
pub struct Meter {
    pid: Option<u32>,
    start: f64,
}

impl Meter {
    pub fn start(pid: Option<u32>) -> Self {
        Meter { pid, start: pid.map(tree_seconds).unwrap_or(0.0) }
    }

    pub fn end(&self) -> Option<f64> {
        self.pid.map(|p| tree_seconds(p) - self.start)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_process_has_a_stat() {
        assert!(super::stat(std::process::id()).is_some());
    }
}
