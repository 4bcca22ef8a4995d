//! A bounded relay buffer that holds memory only while bytes are in flight.

/// Bytes read from one side and not yet written to the other. Its allocation is taken
/// when a read starts and given back once drained, so an idle connection holds none.
pub struct Buffer {
    data: Option<Box<[u8]>>,
    start: usize,
    end: usize,
    capacity: usize,
}

impl Buffer {
    pub fn new(capacity: usize) -> Self {
        Buffer { data: None, start: 0, end: 0, capacity }
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The bytes waiting to be written.
    pub fn pending(&self) -> &[u8] {
        match &self.data {
            Some(data) => &data[self.start..self.end],
            None => &[],
        }
    }

    /// Space after the pending bytes to read into (all of it when empty).
    pub fn space(&mut self) -> &mut [u8] {
        if self.is_empty() {
            self.start = 0;
            self.end = 0;
        }
        let capacity = self.capacity;
        let end = self.end;
        &mut self.data.get_or_insert_with(|| vec![0u8; capacity].into_boxed_slice())[end..]
    }

    /// How many more bytes [`Buffer::space`] can take.
    pub fn room(&self) -> usize {
        if self.is_empty() {
            self.capacity
        } else {
            self.capacity - self.end
        }
    }

    /// Records that `n` bytes were read into [`Buffer::space`].
    pub fn filled(&mut self, n: usize) {
        self.end += n;
        debug_assert!(self.end <= self.capacity);
    }

    /// Records that `n` pending bytes were written.
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.end);
    }

    /// Drops whatever is pending (the other side can no longer take it).
    pub fn discard(&mut self) {
        self.start = 0;
        self.end = 0;
        self.release();
    }

    /// Gives the memory back when nothing is in flight.
    pub fn release(&mut self) {
        if self.is_empty() {
            self.data = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_memory_only_while_bytes_are_in_flight() {
        let mut buf = Buffer::new(8);
        assert!(buf.data.is_none());
        buf.space()[..3].copy_from_slice(b"abc");
        buf.filled(3);
        assert_eq!(buf.pending(), b"abc");
        buf.release();
        assert!(buf.data.is_some(), "pending bytes keep the allocation");
        buf.consume(2);
        assert_eq!(buf.pending(), b"c");
        buf.consume(1);
        assert!(buf.is_empty());
        buf.release();
        assert!(buf.data.is_none());
    }

    #[test]
    fn reads_append_after_pending_bytes() {
        let mut buf = Buffer::new(8);
        buf.space()[..3].copy_from_slice(b"abc");
        buf.filled(3);
        assert_eq!(buf.room(), 5);
        buf.space()[..2].copy_from_slice(b"de");
        buf.filled(2);
        assert_eq!(buf.pending(), b"abcde");
        buf.consume(5);
        assert_eq!(buf.room(), 8, "a drained buffer starts over");
    }

    #[test]
    fn discard_forgets_pending_bytes() {
        let mut buf = Buffer::new(4);
        buf.space();
        buf.filled(4);
        buf.discard();
        assert!(buf.is_empty());
        assert_eq!(buf.pending(), b"");
    }
}
