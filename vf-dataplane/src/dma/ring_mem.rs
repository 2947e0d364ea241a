//! `DescRing<T>`: an array of descriptors in a [`DmaRegion`] that the device reads and writes
//! concurrently. The one place descriptor memory is touched: every access is a bounds-checked
//! volatile read or write of a whole descriptor, and the fences that order descriptor writes
//! against the doorbell (and DD reads against the rest of the write-back) are named methods.

use std::marker::PhantomData;
use std::sync::atomic::{Ordering, fence};

use super::region::DmaRegion;

/// Descriptors of type `T` (plain old data, `#[repr(C)]`, little-endian fields).
pub struct DescRing<T: Copy> {
    region: DmaRegion,
    len: usize,
    _desc: PhantomData<T>,
}

impl<T: Copy> DescRing<T> {
    /// Uses `region` for `len` descriptors. Panics if the region is too small: ring sizes are
    /// driver constants.
    pub fn new(region: DmaRegion, len: usize) -> Self {
        assert!(
            len * std::mem::size_of::<T>() <= region.len(),
            "{len} descriptors do not fit a {}-byte region",
            region.len()
        );
        DescRing {
            region,
            len,
            _desc: PhantomData,
        }
    }

    /// Number of descriptors.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the ring has no descriptors.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// IOVA of descriptor 0, for the base registers.
    pub fn iova(&self) -> u64 {
        self.region.iova()
    }

    /// Bytes the descriptors take, for the length register.
    pub fn byte_len(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }

    fn slot(&self, i: usize) -> *mut T {
        assert!(
            i < self.len,
            "descriptor {i} outside a ring of {}",
            self.len
        );
        // SAFETY: `i < len` and `len` descriptors fit the region (checked in `new`); the
        // region is page-aligned, so every `T` slot is aligned for `T`'s 8-byte fields.
        unsafe { self.region.as_ptr().cast::<T>().add(i) }
    }

    /// Reads descriptor `i` as the device last left it.
    pub fn read(&self, i: usize) -> T {
        let slot = self.slot(i);
        // SAFETY: `slot` is in bounds and aligned; the region stays mapped while `self` lives.
        // Volatile: the device writes this memory behind the compiler's back.
        unsafe { slot.read_volatile() }
    }

    /// Writes descriptor `i`.
    pub fn write(&mut self, i: usize, desc: T) {
        let slot = self.slot(i);
        // SAFETY: as in `read`; `&mut self` keeps other software writers out.
        unsafe { slot.write_volatile(desc) }
    }

    /// Orders descriptor writes before the tail (doorbell) write that hands them to the device.
    pub fn release(&self) {
        fence(Ordering::Release);
    }

    /// Orders the read of a descriptor's DD bit before reads of the rest of its write-back and
    /// of the buffer the device filled.
    pub fn acquire(&self) {
        fence(Ordering::Acquire);
    }
}

#[cfg(test)]
#[allow(
    clippy::single_range_in_vec_init,
    reason = "lists of one IOVA range, not ranges of values"
)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::dma::iova::IovaAllocator;
    use crate::dma::region::DmaMapper;

    struct NoIommu;

    impl DmaMapper for NoIommu {
        unsafe fn map(&self, _iova: u64, _len: usize, _vaddr: *mut u8) -> io::Result<()> {
            Ok(())
        }
        fn unmap(&self, _iova: u64, _len: usize) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn descriptors_read_back_and_indexes_are_checked() {
        let alloc = Arc::new(Mutex::new(IovaAllocator::new(&[0..1 << 40])));
        let region = DmaRegion::new(4096, Arc::new(NoIommu), alloc).unwrap();
        let mut ring: DescRing<[u64; 2]> = DescRing::new(region, 256);
        ring.write(255, [1, 2]);
        assert_eq!(ring.read(255), [1, 2]);
        assert_eq!(ring.byte_len(), 4096);
        let out_of_range =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ring.read(256)));
        assert!(out_of_range.is_err());
    }
}
