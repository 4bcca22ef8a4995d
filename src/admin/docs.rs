//! `tlsrelay generate-docs --out DIR` (hidden): man pages and shell completions made from the
//! clap definitions in cli.rs, so they always describe the binary that ships with them.
//!
//! A hidden subcommand rather than a build script: cli.rs uses the crate's own types
//! (`Error`, the value parsers), which a build script could only reach by compiling a copy
//! of them; and `make deb` / `make install` run the very binary they package, so a page can
//! never describe another build's flags.

use std::fs;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;
use crate::error::{describe_io, Error};

/// Writes `DIR/man/tlsrelay.1` and one `tlsrelay-SUBCOMMAND.1` per visible subcommand, and
/// `DIR/completions/` for bash (`tlsrelay.bash`), zsh (`_tlsrelay`) and fish (`tlsrelay.fish`).
pub fn generate(out: &Path) -> Result<(), Error> {
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        fs::create_dir_all(dir).map_err(|e| Error::file(dir, "create directory", describe_io(&e)))?;
    }
    clap_mangen::generate_to(Cli::command(), &man)
        .map_err(|e| Error::file(&man, "write man pages into", describe_io(&e)))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "tlsrelay", &completions)
            .map_err(|e| Error::file(&completions, "write completions into", describe_io(&e)))?;
    }
    Ok(())
}
