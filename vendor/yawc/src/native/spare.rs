//! Buffers that connections on this thread gave back while waiting.
//!
//! With [`Options::release_idle_buffers`](crate::Options::release_idle_buffers) a
//! connection gives its buffers back every time it has nothing to read and nothing to
//! write, and takes one again for the next read or write. Handing them through a small
//! per-thread list instead of the allocator keeps that to a few instructions; freeing
//! 64 KiB blocks on every message made the allocator trim and refault its heap.

use std::cell::RefCell;

use bytes::BytesMut;

/// Buffers kept per thread.
const KEEP: usize = 16;
/// Larger buffers (grown for a large frame) are freed rather than kept.
const MAX_KEPT_CAPACITY: usize = 256 * 1024;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer of at least `capacity` bytes.
pub(crate) fn take(capacity: usize) -> BytesMut {
    let kept = SPARE.with(|spare| {
        let mut spare = spare.borrow_mut();
        // A read buffer frames were split from reports less capacity than its block
        // has; `reserve` below takes the whole block back without allocating.
        let found = spare
            .iter()
            .rposition(|buffer| buffer.capacity() >= capacity / 2)?;
        Some(spare.swap_remove(found))
    });
    match kept {
        Some(mut buffer) => {
            buffer.clear();
            buffer.reserve(capacity);
            buffer
        }
        None => BytesMut::with_capacity(capacity),
    }
}

/// Gives back `buffer`, whose contents are no longer needed.
pub(crate) fn give(buffer: BytesMut) {
    if buffer.capacity() == 0 || buffer.capacity() > MAX_KEPT_CAPACITY {
        return;
    }
    SPARE.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < KEEP {
            spare.push(buffer);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_and_large_enough() {
        let mut buffer = take(1024);
        assert!(buffer.capacity() >= 1024);
        buffer.extend_from_slice(b"left over");
        let address = buffer.as_ptr();
        give(buffer);
        let again = take(1024);
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), address, "the same allocation");
        assert!(take(4096).capacity() >= 4096);
        // A kept buffer much smaller than the request stays for a smaller one.
        give(BytesMut::with_capacity(16));
        assert!(take(64 * 1024).capacity() >= 64 * 1024);
        assert_eq!(take(16).capacity(), 16);

        // A buffer frames were split from is taken back whole.
        let mut buffer = take(1024);
        let address = buffer.as_ptr();
        buffer.extend_from_slice(&[0; 100]);
        drop(buffer.split_to(100));
        assert!(buffer.capacity() < 1024);
        give(buffer);
        let again = take(1024);
        assert_eq!(
            again.as_ptr(),
            address,
            "the same allocation, from its start"
        );
        assert!(again.capacity() >= 1024);
    }
}
