//! TLS: the server's acceptor and its reload, the server handshake, the client's TLS side and
//! its closing sequence (DESIGN §3), how a TLS stream ended, and development certificates.
//! Lower layer: it reads `config`, `sys` and `error` and nothing of the daemon.

pub mod abort;
pub mod acceptor;
pub mod certgen;
pub mod close;
pub mod expiry;
pub mod files;
pub mod handshake;
pub mod handshake_memory;
pub mod side;
#[cfg(test)]
pub mod test_pair;
