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

    /// Space to read into; only called on an empty buffer, so reads never reorder bytes.
    pub fn space(&mut self) -> &mut [u8] {
        debug_assert!(self.is_empty());
        self.start = 0;
        self.end = 0;
        let capacity = self.capacity;
        self.data.get_or_insert_with(|| vec![0u8; capacity].into_boxed_slice())
    }

    /// Records that `n` bytes were read into [`Buffer::space`].
    pub fn filled(&mut self, n: usize) {
        self.end = n;
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
    fn discard_forgets_pending_bytes() {
        let mut buf = Buffer::new(4);
        buf.space();
        buf.filled(4);
        buf.discard();
        assert!(buf.is_empty());
        assert_eq!(buf.pending(), b"");
    }
}
