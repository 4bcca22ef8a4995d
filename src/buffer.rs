//! A bounded relay buffer that holds memory only while bytes are in flight.

use std::mem::MaybeUninit;

/// Bytes read from one side and not yet written to the other. Its allocation is taken
/// when a read starts and given back once drained, so an idle connection holds none. It is
/// never zeroed: reads write into it directly, and only the bytes they report are used.
pub struct Buffer {
    /// Initialised in `start..end`, the bytes reads reported.
    data: Option<Box<[MaybeUninit<u8>]>>,
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
            // SAFETY: `start..end` only ever covers bytes a read wrote (see `filled`).
            Some(data) => unsafe { data[self.start..self.end].assume_init_ref() },
            None => &[],
        }
    }

    /// Space after the pending bytes to read into (all of it when empty); whoever writes
    /// there reports how much with [`Buffer::filled`].
    pub fn space(&mut self) -> &mut [MaybeUninit<u8>] {
        if self.is_empty() {
            self.start = 0;
            self.end = 0;
        }
        let capacity = self.capacity;
        let end = self.end;
        &mut self.data.get_or_insert_with(|| Box::new_uninit_slice(capacity))[end..]
    }

    /// How many more bytes [`Buffer::space`] can take.
    pub fn room(&self) -> usize {
        if self.is_empty() {
            self.capacity
        } else {
            self.capacity - self.end
        }
    }

    /// Copies `bytes` into [`Buffer::space`]; they must fit.
    pub fn push(&mut self, bytes: &[u8]) {
        self.space()[..bytes.len()].write_copy_of_slice(bytes);
        // SAFETY: the copy just initialised these bytes.
        unsafe { self.filled(bytes.len()) };
    }

    /// Records that the first `n` bytes of [`Buffer::space`] were written.
    ///
    /// # Safety
    /// Those `n` bytes must have been initialised (a read reported writing them), because
    /// [`Buffer::pending`] hands them out as `&[u8]`.
    pub unsafe fn filled(&mut self, n: usize) {
        assert!(self.end + n <= self.capacity, "filled past the buffer's space");
        self.end += n;
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
        buf.push(b"abc");
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
        buf.push(b"abc");
        assert_eq!(buf.room(), 5);
        buf.push(b"de");
        assert_eq!(buf.pending(), b"abcde");
        buf.consume(5);
        assert_eq!(buf.room(), 8, "a drained buffer starts over");
    }

    #[test]
    fn discard_forgets_pending_bytes() {
        let mut buf = Buffer::new(4);
        buf.push(b"abcd");
        buf.discard();
        assert!(buf.is_empty());
        assert_eq!(buf.pending(), b"");
    }
}
