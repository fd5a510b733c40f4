//! Fiber stacks for guest calls, kept for the next connection instead of unmapped.
//!
//! Every guest call runs on a fiber stack, and a store keeps its stack until it is
//! dropped: in isolated mode that is one stack per connection. Wasmtime's own
//! on-demand stacks are mapped when a connection's first call needs one and unmapped
//! when the connection ends, and on a multi-threaded host each unmap interrupts every
//! other core to flush its TLB: a set-up load spent about a sixth of its time there.
//! [`StackPool`] keeps up to `keep` released stacks and hands them to new stores.
//!
//! A reused stack still holds what the last guest call left on it: Wasmtime's own pool
//! does not zero its stacks either (`async_stack_zeroing` is off), and when Wasmtime
//! asks for a zeroed stack it gets a freshly mapped one.
//!
//! The only unsafe code in the host: mapping memory, and promising Wasmtime it is a
//! stack (the `StackMemory` contract).
#![allow(
    unsafe_code,
    reason = "maps the fiber stacks Wasmtime runs guest calls on"
)]

use std::ops::Range;
use std::sync::{Arc, Mutex};

use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};
use wasmtime::{StackCreator, StackMemory};

/// Stacks released by dropped stores, for the next ones.
pub(crate) struct StackPool {
    free: Mutex<Vec<Mapping>>,
    keep: usize,
}

impl StackPool {
    /// A pool that keeps at most `keep` released stacks mapped.
    pub(crate) fn new(keep: usize) -> Arc<Self> {
        Arc::new(Self {
            free: Mutex::new(Vec::new()),
            keep,
        })
    }

    fn release(&self, mapping: Mapping) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.keep {
            free.push(mapping);
        }
        // Otherwise `mapping` is dropped here, and unmapped.
    }

    #[cfg(test)]
    fn free_count(&self) -> usize {
        self.free.lock().unwrap().len()
    }
}

/// A stack's mapping: a guard page at the bottom, then `size` bytes of stack.
struct Mapping {
    base: *mut u8,
    /// Bytes including the guard page.
    len: usize,
    page: usize,
}

// SAFETY: the mapping is plain memory owned by this value; nothing about it is tied
// to the thread that mapped it.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(size: usize) -> Result<Self, wasmtime::Error> {
        let page = rustix::param::page_size();
        let size = size.div_ceil(page) * page;
        let len = size + page;
        // SAFETY: a fresh anonymous mapping; nothing else refers to its range.
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }
        .map_err(|e| wasmtime::Error::from(e).context("mapping a fiber stack"))?
        .cast::<u8>();
        let mapping = Self { base, len, page };
        // SAFETY: the range is inside the mapping made above, past its guard page.
        unsafe {
            rustix::mm::mprotect(
                base.add(page).cast(),
                size,
                MprotectFlags::READ | MprotectFlags::WRITE,
            )
        }
        .map_err(|e| wasmtime::Error::from(e).context("mapping a fiber stack"))?;
        Ok(mapping)
    }

    fn size(&self) -> usize {
        self.len - self.page
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `Mapping::new` and is no longer used.
        let _ = unsafe { rustix::mm::munmap(self.base.cast(), self.len) };
    }
}

/// A stack lent to a store; back to the pool when the store drops it.
struct PooledStack {
    mapping: Option<Mapping>,
    pool: Arc<StackPool>,
}

impl Drop for PooledStack {
    fn drop(&mut self) {
        if let Some(mapping) = self.mapping.take() {
            self.pool.release(mapping);
        }
    }
}

impl PooledStack {
    fn mapping(&self) -> &Mapping {
        self.mapping.as_ref().expect("set until dropped")
    }
}

// SAFETY: the stack is `size` bytes of readable, writable, page-aligned memory above a
// guard page that faults on access, and it stays mapped while the store holds it.
unsafe impl StackMemory for PooledStack {
    fn top(&self) -> *mut u8 {
        let mapping = self.mapping();
        // SAFETY: one past the end of the mapping.
        unsafe { mapping.base.add(mapping.len) }
    }

    fn range(&self) -> Range<usize> {
        let mapping = self.mapping();
        let bottom = mapping.base as usize + mapping.page;
        bottom..mapping.base as usize + mapping.len
    }

    fn guard_range(&self) -> Range<*mut u8> {
        let mapping = self.mapping();
        // SAFETY: the guard page is the first page of the mapping.
        mapping.base..unsafe { mapping.base.add(mapping.page) }
    }
}

/// Wasmtime's way in: `Config::with_host_stack`.
pub(crate) struct Stacks(pub(crate) Arc<StackPool>);

// SAFETY: every stack handed out is a `PooledStack` (see its `StackMemory`).
unsafe impl StackCreator for Stacks {
    fn new_stack(
        &self,
        size: usize,
        zeroed: bool,
    ) -> Result<Box<dyn StackMemory>, wasmtime::Error> {
        let reused = if zeroed {
            None
        } else {
            let mut free = self.0.free.lock().unwrap_or_else(|e| e.into_inner());
            let page = rustix::param::page_size();
            let wanted = size.div_ceil(page) * page;
            match free.last() {
                Some(last) if last.size() == wanted => free.pop(),
                _ => None,
            }
        };
        let mapping = match reused {
            Some(mapping) => mapping,
            None => Mapping::new(size)?,
        };
        Ok(Box::new(PooledStack {
            mapping: Some(mapping),
            pool: self.0.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_stacks_are_reused_up_to_the_limit() {
        let pool = StackPool::new(2);
        let stacks = Stacks(pool.clone());
        let a = stacks.new_stack(64 * 1024, false).unwrap();
        let b = stacks.new_stack(64 * 1024, false).unwrap();
        let c = stacks.new_stack(64 * 1024, false).unwrap();
        assert_eq!(a.range().len(), 64 * 1024);
        assert_eq!(a.top() as usize, a.range().end);
        assert_eq!(a.guard_range().end as usize, a.range().start);
        let a_top = a.top();
        // The stack is writable from its bottom to its top.
        // SAFETY: inside the stack's range.
        unsafe {
            *(a.range().start as *mut u8) = 1;
            *a_top.sub(1) = 1;
        }
        drop(a);
        drop(b);
        drop(c);
        assert_eq!(pool.free_count(), 2, "the third is unmapped");

        let again = stacks.new_stack(64 * 1024, false).unwrap();
        assert_eq!(pool.free_count(), 1);
        drop(again);
        // A zeroed stack is never a reused one.
        let zeroed = stacks.new_stack(64 * 1024, true).unwrap();
        assert_eq!(pool.free_count(), 2);
        // SAFETY: inside the fresh stack's range.
        assert_eq!(unsafe { *zeroed.top().sub(1) }, 0);
        // A stack of another size is mapped afresh.
        let other = stacks.new_stack(128 * 1024, false).unwrap();
        assert_eq!(other.range().len(), 128 * 1024);
        assert_eq!(pool.free_count(), 2);
    }
}
