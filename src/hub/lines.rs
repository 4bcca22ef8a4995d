//! Hub line framing: bytes in, complete sanitised lines out, with the 4096-byte limit (DESIGN §5).

/// The longest line, in raw bytes without its `\n`, that the hub relays.
pub const MAX_LINE: usize = 4096;

/// What the framer found in the bytes it was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Framed {
    /// A complete line, without `\r\n`, made safe to print on anyone's terminal.
    Line(String),
    /// A line passed the limit; the rest of it up to its `\n` is discarded.
    TooLong,
}

/// Splits a byte stream into lines. Holds at most `MAX_LINE` bytes of a partial line.
#[derive(Default)]
pub struct LineFramer {
    partial: Vec<u8>,
    /// Inside a too-long line: drop bytes until the next `\n`.
    discarding: bool,
}

impl LineFramer {
    /// Feeds bytes; complete lines and errors are appended to `out` in order.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<Framed>) {
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|&b| b == b'\n');
            let (chunk, rest, ends_line) = match newline {
                Some(at) => (&bytes[..at], &bytes[at + 1..], true),
                None => (bytes, &[][..], false),
            };
            self.take(chunk, ends_line, out);
            bytes = rest;
        }
        if self.partial.is_empty() {
            // An idle connection holds no line memory.
            self.partial = Vec::new();
        }
    }

    fn take(&mut self, chunk: &[u8], ends_line: bool, out: &mut Vec<Framed>) {
        if !self.discarding {
            if self.partial.len() + chunk.len() > MAX_LINE + usize::from(chunk.ends_with(b"\r") && ends_line)
            {
                self.discarding = true;
                self.partial.clear();
                out.push(Framed::TooLong);
            } else {
                self.partial.extend_from_slice(chunk);
            }
        }
        if ends_line {
            if !self.discarding {
                let mut line = std::mem::take(&mut self.partial);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                out.push(Framed::Line(sanitize(&line)));
            }
            self.discarding = false;
        }
    }
}

/// Invalid UTF-8 becomes U+FFFD, and so does every control character but tab, so no
/// terminal escape sequence reaches another user.
pub fn sanitize(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .chars()
        .map(|c| if c.is_control() && c != '\t' { '\u{FFFD}' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(chunks: &[&[u8]]) -> Vec<Framed> {
        let mut framer = LineFramer::default();
        let mut out = Vec::new();
        for chunk in chunks {
            framer.push(chunk, &mut out);
        }
        out
    }

    fn line(text: &str) -> Framed {
        Framed::Line(text.to_string())
    }

    #[test]
    fn lines_split_on_newline_across_chunks() {
        assert_eq!(frame(&[b"hel", b"lo\nwor", b"ld\n"]), vec![line("hello"), line("world")]);
        assert_eq!(frame(&[b"no newline yet"]), vec![]);
    }

    #[test]
    fn crlf_is_tolerated() {
        assert_eq!(frame(&[b"hi\r\n", b"\r\n"]), vec![line("hi"), line("")]);
    }

    #[test]
    fn a_line_of_exactly_the_limit_passes_and_one_more_byte_does_not() {
        let exact = vec![b'a'; MAX_LINE];
        assert_eq!(frame(&[&exact, b"\n"]), vec![line(&"a".repeat(MAX_LINE))]);
        let exact_crlf = [&exact[..], b"\r\n"].concat();
        assert_eq!(frame(&[&exact_crlf]), vec![line(&"a".repeat(MAX_LINE))]);
        let over = vec![b'a'; MAX_LINE + 1];
        assert_eq!(frame(&[&over, b"\nnext\n"]), vec![Framed::TooLong, line("next")]);
    }

    #[test]
    fn a_long_line_is_reported_once_and_its_rest_discarded() {
        let big = vec![b'x'; 10 * 1024];
        let out = frame(&[&big[..5000], &big[5000..], b"tail\nok\n"]);
        assert_eq!(out, vec![Framed::TooLong, line("ok")]);
    }

    #[test]
    fn invalid_utf8_and_escapes_are_replaced() {
        assert_eq!(frame(&[b"a\xffb\n"]), vec![line("a\u{FFFD}b")]);
        assert_eq!(frame(&[b"\x1b[31mred\ttab\n"]), vec![line("\u{FFFD}[31mred\ttab")]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// However the bytes are split into reads, the framer yields the same lines.
            #[test]
            fn chunking_never_changes_the_lines(data in proptest::collection::vec(any::<u8>(), 0..6000), cuts in proptest::collection::vec(0usize..6000, 0..8)) {
                let whole = frame(&[&data]);
                let mut points: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
                points.sort_unstable();
                let mut chunks = Vec::new();
                let mut start = 0;
                for point in points {
                    chunks.push(&data[start..point]);
                    start = point;
                }
                chunks.push(&data[start..]);
                prop_assert_eq!(frame(&chunks), whole);
            }

            /// Every line is within the limit and free of control characters but tab.
            #[test]
            fn lines_are_bounded_and_printable(data in proptest::collection::vec(any::<u8>(), 0..10000)) {
                for item in frame(&[&data]) {
                    if let Framed::Line(text) = item {
                        prop_assert!(text.chars().count() <= MAX_LINE);
                        prop_assert!(text.chars().all(|c| c == '\t' || !c.is_control()));
                    }
                }
            }

            /// Short lines of printable ASCII come out exactly as they went in.
            #[test]
            fn printable_lines_round_trip(lines in proptest::collection::vec("[ -~]{0,100}", 0..20)) {
                let data: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\n").into_bytes()).collect();
                let expected: Vec<Framed> = lines.iter().map(|l| Framed::Line(l.clone())).collect();
                prop_assert_eq!(frame(&[&data]), expected);
            }
        }
    }
}
