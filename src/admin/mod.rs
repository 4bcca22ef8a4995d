//! The operator's tools beside the daemon and the client: `tlsrelay status` (a summary read
//! from a running daemon's status endpoint) and `tlsrelay generate-docs` (man pages and shell
//! completions from the clap definitions, for packaging).

pub mod docs;
pub mod status;
