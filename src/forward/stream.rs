//! The upstream socket of forward mode, TCP or unix stream: the operations the pump needs,
//! with the one difference DESIGN §11 names — a unix socket has no reset, so where a TCP
//! upstream gets an RST the unix one gets its bytes and then a plain close.

use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;

use crate::sys;

/// A connected, non-blocking upstream socket.
pub enum UpstreamStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl UpstreamStream {
    /// Half-closes our direction (FIN on TCP; the reader sees EOF on a unix socket too).
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            UpstreamStream::Tcp(s) => s.shutdown(how),
            UpstreamStream::Unix(s) => s.shutdown(how),
        }
    }

    /// Makes the close that follows an abortive one where the transport has that (TCP RST).
    /// A unix socket has none: it is closed normally and its reader gets every byte first.
    pub fn reset_on_close(&self) {
        if let UpstreamStream::Tcp(s) = self {
            sys::set_linger_zero(s);
        }
    }

    /// Bytes sent that a reset could still destroy. On a unix socket a close destroys
    /// nothing already sent (the peer reads it, then EOF), so there is nothing to wait for;
    /// TIOCOUTQ would work there too, but counts buffer memory (2304 for 1000 B unread), not
    /// bytes.
    pub fn unsent_bytes(&self) -> io::Result<usize> {
        match self {
            UpstreamStream::Tcp(s) => sys::unsent_bytes(s),
            UpstreamStream::Unix(_) => Ok(0),
        }
    }

    /// Writes a short header in one go on a fresh connection (its send buffer is empty);
    /// anything less than all of it is an error.
    pub fn write_header(&mut self, header: &[u8]) -> io::Result<()> {
        match self.write(header)? {
            n if n == header.len() => Ok(()),
            n => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("only {n} B of the PROXY header went out"),
            )),
        }
    }
}

impl Write for UpstreamStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            UpstreamStream::Tcp(s) => s.write(buf),
            UpstreamStream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for UpstreamStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            UpstreamStream::Tcp(s) => s.as_fd(),
            UpstreamStream::Unix(s) => s.as_fd(),
        }
    }
}

impl AsRawFd for UpstreamStream {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// The DESIGN §11 promise at the socket level: bytes written, then a close after
    /// `reset_on_close`, still reach a unix reader in full, followed by EOF.
    #[test]
    fn unix_close_after_reset_request_delivers_every_byte_then_eof() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut upstream = UpstreamStream::Unix(ours);
        upstream.write_all(&[7u8; 100_000][..50_000]).unwrap();
        upstream.reset_on_close();
        assert_eq!(upstream.unsent_bytes().unwrap(), 0);
        drop(upstream);
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), 50_000);
    }
}
