//! Linear memories, kept for the next connection instead of unmapped.
//!
//! In isolated mode every connection has a store with a linear memory. With Wasmtime's
//! on-demand allocator it is mapped when a connection starts and unmapped when it
//! ends, and on a multi-threaded host every unmap interrupts the other cores to flush
//! their TLBs: a set-up load spent about a third of its time mapping, unmapping and
//! faulting pages in (fiber stacks included, before guest calls became synchronous).
//! [`MemoryPool`] keeps released memories (up to a limit) and hands them to new
//! stores.
//!
//! A reused linear memory is zero, as WebAssembly requires and as one tenant's data
//! must never reach the next: every page of it that holds data (resident or swapped
//! out, as the kernel's page map says) is cleared before it is kept; without the page
//! map, the kernel drops them all.
//!
//! The only unsafe code in the host: mapping memory, and promising Wasmtime it is a
//! linear memory (the `LinearMemory` contract).
#![allow(unsafe_code, reason = "maps the memories Wasmtime runs guests in")]

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::sync::{Arc, Mutex};

use rustix::mm::{Advice, MapFlags, MprotectFlags, ProtFlags};
use wasmtime::{LinearMemory, MemoryCreator, MemoryType};

/// Part of every error message for a mapping the kernel refused for want of memory
/// or mappings (how a caller tells it from a guest's fault).
pub(crate) const OUT_OF_MAPPINGS: &str = "the kernel could not map";

fn page_size() -> usize {
    rustix::param::page_size()
}

/// A private anonymous mapping, inaccessible until parts of it are opened; unmapped
/// when dropped.
struct Region {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; nothing about it is tied
// to the thread that mapped it.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    fn reserve(len: usize) -> std::io::Result<Self> {
        // SAFETY: a fresh anonymous mapping; nothing else refers to its range.
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }?;
        Ok(Self {
            base: base.cast(),
            len,
        })
    }

    /// Makes `range` (page-aligned offsets) readable and writable.
    fn open(&self, range: Range<usize>) -> std::io::Result<()> {
        assert!(range.start <= range.end && range.end <= self.len);
        if range.is_empty() {
            return Ok(());
        }
        // SAFETY: the range lies inside this mapping.
        unsafe {
            rustix::mm::mprotect(
                self.base.add(range.start).cast(),
                range.len(),
                MprotectFlags::READ | MprotectFlags::WRITE,
            )
        }?;
        Ok(())
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `Region::reserve` and is no longer used.
        let _ = unsafe { rustix::mm::munmap(self.base.cast(), self.len) };
    }
}

fn mapping_error(what: &str, error: std::io::Error) -> String {
    format!("{OUT_OF_MAPPINGS} {what}: {error}")
}

/// Linear memories released by dropped stores, zeroed, for the next ones.
pub(crate) struct MemoryPool {
    free: Mutex<Vec<Linear>>,
    keep: usize,
    /// `/proc/self/pagemap`, to find the pages a released memory holds data in.
    pagemap: Option<File>,
}

impl MemoryPool {
    /// A pool that keeps at most `keep` released memories mapped.
    pub(crate) fn new(keep: usize) -> Arc<Self> {
        Arc::new(Self {
            free: Mutex::new(Vec::new()),
            keep,
            pagemap: File::open("/proc/self/pagemap").ok(),
        })
    }

    /// Keeps `memory` for reuse if it is as it was made and there is room; it is
    /// unmapped otherwise.
    fn release(&self, memory: Linear) {
        if memory.accessible != memory.initial
            || self.free.lock().unwrap_or_else(|e| e.into_inner()).len() >= self.keep
        {
            return;
        }
        if !self.clear(&memory) {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.keep {
            free.push(memory);
        }
    }

    /// Zeroes the accessible part of `memory`. `false` if it could not.
    fn clear(&self, memory: &Linear) -> bool {
        let page = page_size();
        let pages = memory.accessible / page;
        if let Some(pagemap) = &self.pagemap {
            // One 64-bit entry per page: bit 63 resident, bit 62 swapped out. A page
            // with neither has never been written (or was dropped): it reads as zero.
            let mut entries = vec![0u8; pages * 8];
            let offset = (memory.region.base as usize / page * 8) as u64;
            if pagemap.read_exact_at(&mut entries, offset).is_ok() {
                for (index, entry) in entries.chunks_exact(8).enumerate() {
                    let entry = u64::from_ne_bytes(entry.try_into().expect("8 bytes"));
                    if entry & (0b11 << 62) == 0 {
                        continue;
                    }
                    // SAFETY: the page lies in the accessible part, which no store
                    // uses any more.
                    let bytes = unsafe {
                        std::slice::from_raw_parts_mut(memory.region.base.add(index * page), page)
                    };
                    // Reading first leaves untouched zero pages unallocated. (The
                    // page is page-aligned: read it a word at a time.)
                    // SAFETY: any bytes are a valid u64.
                    let (head, words, tail) = unsafe { bytes.align_to::<u64>() };
                    if !head.is_empty() || !tail.is_empty() || words.iter().any(|&word| word != 0) {
                        bytes.fill(0);
                    }
                }
                return true;
            }
        }
        // SAFETY: the range is the accessible part, which no store uses any more;
        // dropping private anonymous pages makes them read as zero.
        unsafe {
            rustix::mm::madvise(
                memory.region.base.cast(),
                memory.accessible,
                Advice::LinuxDontNeed,
            )
        }
        .is_ok()
    }
}

/// A linear memory's reservation: `accessible` bytes open, then the rest of the
/// reservation and its guard, inaccessible.
struct Linear {
    region: Region,
    /// Bytes readable and writable (the memory's size).
    accessible: usize,
    /// The size it was made with.
    initial: usize,
    /// The reservation, without the guard: the most it may grow to.
    reserved: usize,
}

/// A linear memory lent to a store; zeroed and back to the pool when dropped.
struct PooledMemory {
    memory: Option<Linear>,
    pool: Arc<MemoryPool>,
}

impl PooledMemory {
    fn memory(&self) -> &Linear {
        self.memory.as_ref().expect("set until dropped")
    }
}

impl Drop for PooledMemory {
    fn drop(&mut self) {
        if let Some(memory) = self.memory.take() {
            self.pool.release(memory);
        }
    }
}

// SAFETY: `as_ptr` is page-aligned, `byte_size` bytes from it are readable and
// writable, and everything after them up to the reservation's end and its guard
// faults on access; growing never moves the base.
unsafe impl LinearMemory for PooledMemory {
    fn byte_size(&self) -> usize {
        self.memory().accessible
    }

    fn byte_capacity(&self) -> usize {
        self.memory().reserved
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        let memory = self.memory.as_mut().expect("set until dropped");
        if new_size > memory.reserved {
            wasmtime::bail!("memory of {new_size} bytes exceeds its reservation");
        }
        let page = page_size();
        let new_size = new_size.div_ceil(page) * page;
        if new_size > memory.accessible {
            memory
                .region
                .open(memory.accessible..new_size)
                .map_err(|e| wasmtime::format_err!(mapping_error("a growing memory", e)))?;
            memory.accessible = new_size;
        }
        Ok(())
    }

    fn as_ptr(&self) -> *mut u8 {
        self.memory().region.base
    }
}

/// Wasmtime's way to the memory pool: `Config::with_host_memory`.
pub(crate) struct Memories(pub(crate) Arc<MemoryPool>);

// SAFETY: every memory handed out is a `PooledMemory` (see its `LinearMemory`), zero
// filled, with `reserved_size_in_bytes` reserved and `guard_size_in_bytes` of guard
// after it.
unsafe impl MemoryCreator for Memories {
    fn new_memory(
        &self,
        _ty: MemoryType,
        minimum: usize,
        _maximum: Option<usize>,
        reserved_size_in_bytes: Option<usize>,
        guard_size_in_bytes: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        let page = page_size();
        let initial = minimum.div_ceil(page) * page;
        let reserved = reserved_size_in_bytes.unwrap_or(initial).max(initial);
        let len = reserved + guard_size_in_bytes;
        let reused = {
            let mut free = self.0.free.lock().unwrap_or_else(|e| e.into_inner());
            let found = free.iter().rposition(|memory| {
                memory.initial == initial && memory.reserved == reserved && memory.region.len == len
            });
            found.map(|index| free.swap_remove(index))
        };
        let memory = match reused {
            Some(memory) => memory,
            None => {
                let region =
                    Region::reserve(len).map_err(|e| mapping_error("a linear memory", e))?;
                region
                    .open(0..initial)
                    .map_err(|e| mapping_error("a linear memory", e))?;
                Linear {
                    region,
                    accessible: initial,
                    initial,
                    reserved,
                }
            }
        };
        Ok(Box::new(PooledMemory {
            memory: Some(memory),
            pool: self.0.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_memory(memories: &Memories, minimum: usize) -> Box<dyn LinearMemory> {
        let ty = MemoryType::new(1, None);
        memories
            .new_memory(ty, minimum, None, Some(1 << 30), 64 * 1024)
            .unwrap()
    }

    /// Writes `value` at the start, middle and end of the memory's accessible bytes.
    fn scribble(memory: &dyn LinearMemory, value: u8) {
        let size = memory.byte_size();
        for offset in [0, size / 2, size - 1] {
            // SAFETY: inside the accessible bytes.
            unsafe { *memory.as_ptr().add(offset) = value };
        }
    }

    fn is_zero(memory: &dyn LinearMemory) -> bool {
        // SAFETY: the accessible bytes.
        let bytes = unsafe { std::slice::from_raw_parts(memory.as_ptr(), memory.byte_size()) };
        bytes.iter().all(|&b| b == 0)
    }

    fn released_memories_come_back_zeroed(pool: Arc<MemoryPool>) {
        let memories = Memories(pool.clone());
        let memory = new_memory(&memories, 256 * 1024);
        assert_eq!(memory.byte_size(), 256 * 1024);
        assert_eq!(memory.byte_capacity(), 1 << 30);
        assert!(is_zero(&*memory));
        scribble(&*memory, 0xa5);
        let base = memory.as_ptr();
        drop(memory);
        assert_eq!(pool.free.lock().unwrap().len(), 1);

        let again = new_memory(&memories, 256 * 1024);
        assert_eq!(again.as_ptr(), base, "the same mapping");
        assert!(is_zero(&*again), "a reused memory reads as zero");
        scribble(&*again, 0x5a);

        // A memory that grew is unmapped rather than kept.
        let mut grown = again;
        grown.grow_to(512 * 1024).unwrap();
        assert_eq!(grown.byte_size(), 512 * 1024);
        scribble(&*grown, 1);
        assert!(grown.grow_to(2 << 30).is_err(), "past the reservation");
        drop(grown);
        assert!(pool.free.lock().unwrap().is_empty());

        // A memory of another size is never a kept one.
        let small = new_memory(&memories, 128 * 1024);
        drop(small);
        let other = new_memory(&memories, 256 * 1024);
        assert!(is_zero(&*other));
        assert_eq!(pool.free.lock().unwrap().len(), 1, "the small one stays");
    }

    #[test]
    fn released_memories_come_back_zeroed_by_the_page_map() {
        let pool = MemoryPool::new(4);
        assert!(pool.pagemap.is_some(), "this test needs /proc/self/pagemap");
        released_memories_come_back_zeroed(pool);
    }

    #[test]
    fn released_memories_come_back_zeroed_without_the_page_map() {
        let pool = Arc::new(MemoryPool {
            free: Mutex::new(Vec::new()),
            keep: 4,
            pagemap: None,
        });
        released_memories_come_back_zeroed(pool);
    }

    #[test]
    fn memories_past_the_limit_are_unmapped() {
        let pool = MemoryPool::new(1);
        let memories = Memories(pool.clone());
        let a = new_memory(&memories, 64 * 1024);
        let b = new_memory(&memories, 64 * 1024);
        drop(a);
        drop(b);
        assert_eq!(pool.free.lock().unwrap().len(), 1);
    }
}
