//! The .deb under test: target/debian/tlsrelay_*.deb, rebuilt with `make deb` when it is
//! missing or older than the sources and packaging files (`make test` builds it first).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The freshly built package, copied into `share` as `tlsrelay.deb`; returns where
/// `make deb` left it.
pub fn fresh_deb(share: &Path) -> PathBuf {
    let deb = match newest_deb() {
        Some((deb, built)) if built >= newest_source() => deb,
        _ => {
            let status = Command::new("make").arg("-C").arg(ROOT).arg("deb").status().expect("run make deb");
            assert!(status.success(), "make deb failed ({status})");
            newest_deb().expect("make deb wrote no target/debian/tlsrelay_*.deb").0
        }
    };
    let copy = share.join("tlsrelay.deb");
    std::fs::copy(&deb, &copy).unwrap_or_else(|e| panic!("copy {}: {e}", deb.display()));
    deb
}

/// The same build packaged as the next Debian revision (`tlsrelay-next.deb` in `share`),
/// for a real version upgrade. Returns its version. cargo-deb deletes the other versions in
/// target/debian when it builds one, so `deb` (the fresh package) is put back.
pub fn next_revision(share: &Path, deb: &Path) -> String {
    let out = share.join("tlsrelay-next.deb");
    let status = Command::new("cargo")
        .current_dir(ROOT)
        .args(["deb", "--no-build", "--strip", "--deb-revision", "2", "--output"])
        .arg(&out)
        .status()
        .expect("run cargo deb");
    assert!(status.success(), "cargo deb --deb-revision 2 failed ({status})");
    if !deb.exists() {
        std::fs::copy(share.join("tlsrelay.deb"), deb)
            .unwrap_or_else(|e| panic!("restore {}: {e}", deb.display()));
    }
    format!("{}-2", env!("CARGO_PKG_VERSION"))
}

fn newest_deb() -> Option<(PathBuf, SystemTime)> {
    std::fs::read_dir(Path::new(ROOT).join("target/debian"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .filter_map(|p| Some((p.clone(), p.metadata().ok()?.modified().ok()?)))
        .max_by_key(|(_, modified)| *modified)
}

/// The latest change to anything that goes into the package.
fn newest_source() -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    for top in ["src", "packaging", "Cargo.toml", "Cargo.lock"] {
        visit(&Path::new(ROOT).join(top), &mut newest);
    }
    newest
}

fn visit(path: &Path, newest: &mut SystemTime) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            visit(&entry.path(), newest);
        }
    } else if let Ok(modified) = path.metadata().and_then(|m| m.modified()) {
        *newest = (*newest).max(modified);
    }
}
