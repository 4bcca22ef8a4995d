//! The user's side of `tlsrelay connect`: stdin and stdout, used as they are (never set
//! non-blocking: they may be shared with a shell or a terminal), and the stdin bytes not yet
//! sent, which survive a reconnection.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};

use crate::buffer::Buffer;
use crate::sys::{self, PollSet};

/// Bytes read from stdin at once: one TLS record's worth.
const STDIN_CHUNK: usize = 16 * 1024;

pub struct Console {
    /// A duplicate of fd 0, so reads bypass std's buffering (poll must see every byte);
    /// `None` when fd 0 is closed, which reads as an empty stdin.
    stdin: Option<File>,
    stdout: File,
    /// Read from stdin, not yet accepted by the TLS stream.
    pub outgoing: Buffer,
}

impl Console {
    pub fn open() -> io::Result<Self> {
        let stdin = io::stdin().as_fd().try_clone_to_owned().ok().map(File::from);
        let stdout = File::from(io::stdout().as_fd().try_clone_to_owned()?);
        Ok(Console { stdin, stdout, outgoing: Buffer::new(STDIN_CHUNK) })
    }

    /// The descriptor to poll for stdin, while there is one.
    pub fn stdin_fd(&self) -> Option<RawFd> {
        self.stdin.as_ref().map(|file| file.as_raw_fd())
    }

    /// One read(2) into [`Console::outgoing`] (only after poll said readable, so it does
    /// not block); returns true at end of input. Call only with `outgoing` empty.
    pub fn read_stdin(&mut self) -> io::Result<bool> {
        let Some(stdin) = self.stdin.as_mut() else { return Ok(true) };
        match sys::read_uninit(stdin, self.outgoing.space()) {
            Ok(0) => {
                self.stdin = None;
                Ok(true)
            }
            Ok(n) => {
                // SAFETY: read(2) reported writing `n` bytes into the space.
                unsafe { self.outgoing.filled(n) };
                Ok(false)
            }
            // Someone else made the shared descriptor non-blocking, or a signal came.
            Err(err) if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
                Ok(false)
            }
            Err(err) => {
                self.stdin = None;
                Err(err)
            }
        }
    }

    /// Writes every byte to stdout, blocking as a terminal or pipe demands.
    pub fn write_stdout(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match self.stdout.write(data) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => self.wait_stdout_writable()?,
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// For a stdout that someone else made non-blocking: wait instead of spinning.
    fn wait_stdout_writable(&self) -> io::Result<()> {
        let mut set = PollSet::new();
        set.add(self.stdout.as_raw_fd(), false, true);
        set.wait(None)
    }
}
