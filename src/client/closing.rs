//! Remembers the last line the server sent, to recognise the hub's announced closes
//! (`* closing: REASON`, DESIGN §5 last bullet) without holding more than one line.

/// Lines longer than this cannot be a closing line, so they are not kept.
const MAX_LINE: usize = 256;

/// The last complete line of the server's stream, and what follows it so far.
#[derive(Default)]
pub struct LastLine {
    last: Option<Vec<u8>>,
    current: Vec<u8>,
    /// `current` outgrew [`MAX_LINE`]: this line is not a closing line.
    too_long: bool,
}

impl LastLine {
    /// Takes the next bytes of the server's stream.
    pub fn feed(&mut self, data: &[u8]) {
        let mut rest = data;
        while let Some(at) = rest.iter().position(|&b| b == b'\n') {
            self.append(&rest[..at]);
            let line = std::mem::take(&mut self.current);
            self.last = if self.too_long { None } else { Some(line) };
            self.too_long = false;
            rest = &rest[at + 1..];
        }
        self.append(rest);
    }

    fn append(&mut self, part: &[u8]) {
        if self.too_long || self.current.len() + part.len() > MAX_LINE {
            self.too_long = true;
            self.current.clear();
        } else {
            self.current.extend_from_slice(part);
        }
    }

    /// REASON when the stream so far ends with the line `* closing: REASON`.
    pub fn closing_reason(&self) -> Option<String> {
        if !self.current.is_empty() || self.too_long {
            return None;
        }
        let line = self.last.as_deref()?;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let reason = line.strip_prefix(b"* closing: ")?;
        Some(String::from_utf8_lossy(reason).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason_after(chunks: &[&[u8]]) -> Option<String> {
        let mut lines = LastLine::default();
        for chunk in chunks {
            lines.feed(chunk);
        }
        lines.closing_reason()
    }

    #[test]
    fn finds_the_reason_of_a_last_closing_line() {
        assert_eq!(reason_after(&[b"hello\n* closing: upgrade\n"]).as_deref(), Some("upgrade"));
        assert_eq!(reason_after(&[b"* closing: shutdown\r\n"]).as_deref(), Some("shutdown"));
    }

    #[test]
    fn the_line_may_arrive_in_pieces() {
        assert_eq!(reason_after(&[b"x\n* clo", b"sing: sh", b"utdown", b"\n"]).as_deref(), Some("shutdown"));
    }

    #[test]
    fn only_the_last_line_counts() {
        assert_eq!(reason_after(&[b"* closing: upgrade\nmore\n"]), None);
        assert_eq!(reason_after(&[b"* closing: upgrade\npartial"]), None);
        assert_eq!(reason_after(&[b"* closing: upgrade"]), None, "a line needs its newline");
        assert_eq!(reason_after(&[b"<bob> * closing: upgrade\n"]), None);
    }

    #[test]
    fn a_long_line_is_not_kept() {
        let long = vec![b'x'; 10_000];
        assert_eq!(reason_after(&[b"* closing: ", &long, b"\n"]), None);
        assert_eq!(reason_after(&[&long, b"\n* closing: quit\n"]).as_deref(), Some("quit"));
    }
}
