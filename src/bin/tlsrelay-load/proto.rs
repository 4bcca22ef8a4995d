//! The bench protocol: the client opens each operation with a 16-byte header
//! (op, 7 bytes padding, count as u64 LE); the backend carries it out, then reads the next.

use std::io::{self, Read, Write};

/// Client sends `count` bytes; the backend answers one byte, [`ACK`], once all arrived.
pub const UPLOAD: u8 = b'U';
/// Backend sends `count` bytes.
pub const DOWNLOAD: u8 = b'D';
/// Backend echoes what it reads until `count` bytes went back.
pub const ECHO: u8 = b'E';
/// Connection stays idle until the client (or the relay) ends it.
pub const IDLE: u8 = b'I';
pub const ACK: u8 = b'K';

pub const HEADER_LEN: usize = 16;

pub fn header(op: u8, count: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = op;
    h[8..].copy_from_slice(&count.to_le_bytes());
    h
}

pub fn parse(h: &[u8; HEADER_LEN]) -> (u8, u64) {
    let mut count = [0u8; 8];
    count.copy_from_slice(&h[8..]);
    (h[0], u64::from_le_bytes(count))
}

/// Reads a header; `Ok(None)` on a clean end before its first byte.
pub fn read_header<S: Read>(s: &mut S) -> io::Result<Option<(u8, u64)>> {
    let mut h = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match s.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(parse(&h)))
}

/// Reads and drops exactly `count` bytes.
pub fn sink<S: Read>(s: &mut S, mut count: u64, buf: &mut [u8]) -> io::Result<()> {
    while count > 0 {
        let want = buf.len().min(count.min(usize::MAX as u64) as usize);
        match s.read(&mut buf[..want]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => count -= n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes `count` bytes taken from `buf` over and over.
pub fn source<S: Write>(s: &mut S, mut count: u64, buf: &[u8]) -> io::Result<()> {
    while count > 0 {
        let n = buf.len().min(count.min(usize::MAX as u64) as usize);
        s.write_all(&buf[..n])?;
        count -= n as u64;
    }
    s.flush()
}

/// Skips a PROXY protocol header (v1 line or v2 binary) at the start of a connection.
pub fn skip_proxy_header<S: Read>(s: &mut S) -> io::Result<()> {
    let mut first = [0u8; 1];
    s.read_exact(&mut first)?;
    if first[0] == b'P' {
        // v1: up to and including CRLF (at most 107 bytes).
        let mut last = [0u8; 2];
        for _ in 0..107 {
            s.read_exact(&mut first)?;
            last = [last[1], first[0]];
            if last == *b"\r\n" {
                return Ok(());
            }
        }
        return Err(io::Error::other("PROXY v1 line without CRLF"));
    }
    // v2: 16 bytes, the last two the length of what follows.
    let mut fixed = [0u8; 15];
    s.read_exact(&mut fixed)?;
    let len = u16::from_be_bytes([fixed[13], fixed[14]]) as usize;
    let mut rest = vec![0u8; len];
    s.read_exact(&mut rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_proxy_header_leaves_the_first_bench_header() {
        for prefix in [b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(), {
            let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
            v2.extend([0u8; 12]);
            v2
        }] {
            let mut input = prefix;
            input.extend(header(ECHO, 5));
            let mut reader = &input[..];
            skip_proxy_header(&mut reader).unwrap();
            assert_eq!(read_header(&mut reader).unwrap(), Some((ECHO, 5)));
        }
    }

    #[test]
    fn header_round_trips() {
        let h = header(UPLOAD, 1 << 40);
        assert_eq!(parse(&h), (UPLOAD, 1 << 40));
    }
}
