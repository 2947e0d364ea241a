//! IO virtual address space for the daemon's own DMA memory (descriptor rings, buffer pools).
//!
//! Guest memory is mapped at IOVA = guest physical address, which sits low; the daemon's own
//! regions are taken top-down from the highest range the IOMMU accepts, and never from a range
//! reserved for the guest. Invariant: `free` is sorted, non-overlapping and never touches a
//! reserved range.

use std::ops::Range;

/// Errors of the allocator.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// No free range is large enough.
    #[error("no IOVA range of {len:#x} bytes (aligned to {align:#x}) is left")]
    Exhausted {
        /// Bytes asked for.
        len: u64,
        /// Alignment asked for.
        align: u64,
    },
    /// A reservation overlaps memory already handed out.
    #[error("IOVA range {start:#x}..{end:#x} overlaps the daemon's own DMA memory")]
    Overlap {
        /// Start of the range.
        start: u64,
        /// End of the range.
        end: u64,
    },
}

/// A first-fit, top-down allocator over the IOMMU's usable IOVA ranges.
#[derive(Debug, Clone)]
pub struct IovaAllocator {
    usable: Vec<Range<u64>>,
    free: Vec<Range<u64>>,
    allocated: Vec<Range<u64>>,
}

impl IovaAllocator {
    /// An allocator over `usable` (the IOMMU's valid IOVA ranges, in any order).
    pub fn new(usable: &[Range<u64>]) -> Self {
        let mut free: Vec<Range<u64>> = usable.iter().filter(|r| !r.is_empty()).cloned().collect();
        free.sort_by_key(|r| r.start);
        IovaAllocator {
            usable: free.clone(),
            free,
            allocated: Vec::new(),
        }
    }

    /// The ranges the IOMMU accepts, sorted.
    pub fn usable(&self) -> &[Range<u64>] {
        &self.usable
    }

    /// Whether all of `range` lies inside one usable range.
    pub fn is_usable(&self, range: &Range<u64>) -> bool {
        self.usable
            .iter()
            .any(|u| u.start <= range.start && range.end <= u.end)
    }

    /// Hands a range taken by [`reserve`](Self::reserve) back (guest memory that went away).
    pub fn unreserve(&mut self, range: Range<u64>) {
        for i in 0..self.usable.len() {
            let u = &self.usable[i];
            let piece = range.start.max(u.start)..range.end.min(u.end);
            if !piece.is_empty() {
                self.insert_free(piece);
            }
        }
    }

    fn insert_free(&mut self, range: Range<u64>) {
        let at = self.free.partition_point(|r| r.start < range.start);
        self.free.insert(at, range);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(self.free.len());
        for r in self.free.drain(..) {
            match merged.last_mut() {
                Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        self.free = merged;
    }

    /// Removes `range` from what may be handed out (guest memory, an MSI window). Fails if the
    /// daemon already uses part of it.
    pub fn reserve(&mut self, range: Range<u64>) -> Result<(), Error> {
        if self
            .allocated
            .iter()
            .any(|a| a.start < range.end && range.start < a.end)
        {
            return Err(Error::Overlap {
                start: range.start,
                end: range.end,
            });
        }
        let mut next = Vec::with_capacity(self.free.len() + 1);
        for r in self.free.drain(..) {
            if r.end <= range.start || range.end <= r.start {
                next.push(r);
                continue;
            }
            if r.start < range.start {
                next.push(r.start..range.start);
            }
            if range.end < r.end {
                next.push(range.end..r.end);
            }
        }
        self.free = next;
        Ok(())
    }

    /// Takes `len` bytes aligned to `align` (a power of two), from the top.
    pub fn alloc(&mut self, len: u64, align: u64) -> Result<u64, Error> {
        debug_assert!(align.is_power_of_two() && len > 0);
        for i in (0..self.free.len()).rev() {
            let r = self.free[i].clone();
            let Some(top) = r.end.checked_sub(len) else {
                continue;
            };
            let start = top & !(align - 1);
            if start < r.start {
                continue;
            }
            let end = start + len;
            self.free.remove(i);
            if end < r.end {
                self.free.insert(i, end..r.end);
            }
            if r.start < start {
                self.free.insert(i, r.start..start);
            }
            self.allocated.push(start..end);
            return Ok(start);
        }
        Err(Error::Exhausted { len, align })
    }

    /// Gives back a range returned by [`alloc`](Self::alloc).
    pub fn release(&mut self, start: u64, len: u64) {
        let range = start..start + len;
        let Some(pos) = self.allocated.iter().position(|a| *a == range) else {
            return;
        };
        self.allocated.swap_remove(pos);
        self.insert_free(range);
    }

    /// The ranges still free.
    pub fn free_ranges(&self) -> &[Range<u64>] {
        &self.free
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn over(range: Range<u64>) -> IovaAllocator {
        IovaAllocator::new(std::slice::from_ref(&range))
    }

    #[test]
    fn allocation_comes_from_the_top_of_the_highest_range() {
        let mut a = IovaAllocator::new(&[0..0xFEE0_0000, 0xFEF0_0000..(1 << 39)]);
        let iova = a.alloc(2 << 20, 2 << 20).unwrap();
        assert_eq!(iova, (1 << 39) - (2 << 20));
    }

    #[test]
    fn reserved_guest_ranges_are_never_handed_out() {
        let mut a = over(0..8 * GIB);
        a.reserve(4 * GIB..8 * GIB).unwrap();
        let iova = a.alloc(GIB, 4096).unwrap();
        assert!(
            iova + GIB <= 4 * GIB,
            "{iova:#x} is inside the reserved range"
        );
        assert_eq!(
            a.alloc(4 * GIB, 4096),
            Err(Error::Exhausted {
                len: 4 * GIB,
                align: 4096
            })
        );
    }

    #[test]
    fn reserving_over_daemon_memory_fails() {
        let mut a = over(0..GIB);
        let iova = a.alloc(4096, 4096).unwrap();
        assert_eq!(
            a.reserve(iova..iova + 1),
            Err(Error::Overlap {
                start: iova,
                end: iova + 1
            })
        );
    }

    #[test]
    fn unreserved_guest_ranges_become_free_again_within_the_usable_ranges() {
        let mut a = IovaAllocator::new(&[0..0xFEE0_0000, 0xFEF0_0000..8 * GIB]);
        a.reserve(GIB..5 * GIB).unwrap();
        assert!(!a.free_ranges().iter().any(|r| r.contains(&(2 * GIB))));
        a.unreserve(GIB..5 * GIB);
        assert_eq!(
            a.free_ranges(),
            &[0..0xFEE0_0000, 0xFEF0_0000..8 * GIB],
            "the MSI window stays out"
        );
        assert!(a.is_usable(&(0..GIB)));
        assert!(!a.is_usable(&(0xFE00_0000..0xFF00_0000)));
    }

    #[test]
    fn alignment_is_honoured_and_released_ranges_merge() {
        let mut a = over(0x1000..0x10_0000);
        let x = a.alloc(0x3000, 0x10000).unwrap();
        assert_eq!(x % 0x10000, 0);
        let y = a.alloc(0x1000, 0x1000).unwrap();
        a.release(x, 0x3000);
        a.release(y, 0x1000);
        assert_eq!(a.free_ranges(), std::slice::from_ref(&(0x1000..0x10_0000)));
    }
}
