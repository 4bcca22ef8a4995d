//! `tlsrelay generate-docs` (hidden; `make deb` and `make install` run it): man pages and
//! completions made from the same clap definitions the binary parses with.

mod common;

use common::run_to_exit;
use std::time::Duration;

#[test]
fn generate_docs_writes_a_man_page_per_subcommand_and_three_completions() {
    let out = tempfile::tempdir().unwrap();
    let (status, stderr) =
        run_to_exit(&["generate-docs", "--out", out.path().to_str().unwrap()], Duration::from_secs(10));
    assert!(status.success(), "{stderr}");
    let read =
        |path: &str| std::fs::read_to_string(out.path().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    for page in
        ["tlsrelay.1", "tlsrelay-serve.1", "tlsrelay-connect.1", "tlsrelay-gen-cert.1", "tlsrelay-upgrade.1"]
    {
        assert!(read(&format!("man/{page}")).starts_with(".ie"), "{page} is not roff");
    }
    assert!(read("man/tlsrelay-serve.1").contains("close\\-timeout"), "serve's page lists its flags");
    assert!(!out.path().join("man/tlsrelay-generate-docs.1").exists(), "the hidden subcommand has no page");
    assert!(read("completions/tlsrelay.bash").contains("--close-timeout"));
    assert!(read("completions/_tlsrelay").contains("#compdef tlsrelay"));
    assert!(read("completions/tlsrelay.fish").contains("complete -c tlsrelay"));
}
