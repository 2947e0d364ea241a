//! `DmaRegion`: memory the device reaches by DMA. Made only here; mapped into the IOMMU
//! domain at an IOVA from the allocator when created, and unmapped there before its memory is
//! unmapped, on drop. Invariant: a `DmaRegion` is mapped for its whole life.
//!
//! Backed by 2 MiB hugepages when the system has them (fewer IOMMU and TLB entries), else by
//! normal pages.

use std::io;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use super::iova::{self, IovaAllocator};

/// Hugepage size tried first.
pub const HUGEPAGE: usize = 2 << 20;
/// Normal page size (x86-64).
pub const PAGE: usize = 4096;

/// Who puts memory into the device's IOMMU domain: VFIO in the daemon, a recorder in tests.
pub trait DmaMapper: Send + Sync {
    /// Maps `len` bytes at `vaddr` to `iova`.
    ///
    /// # Safety
    /// `vaddr..vaddr + len` must stay mapped until `unmap` of the same range.
    unsafe fn map(&self, iova: u64, len: usize, vaddr: *mut u8) -> io::Result<()>;
    /// Removes the mapping at `iova`.
    fn unmap(&self, iova: u64, len: usize) -> io::Result<()>;
}

/// Errors making a region.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No memory could be had.
    #[error("cannot allocate {len} bytes of DMA memory")]
    Alloc {
        /// Bytes asked for.
        len: usize,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// No IOVA space.
    #[error(transparent)]
    Iova(#[from] iova::Error),
    /// The IOMMU refused the mapping.
    #[error("cannot map {len} bytes of DMA memory at IOVA {iova:#x}")]
    Map {
        /// IOVA.
        iova: u64,
        /// Length.
        len: usize,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Device-reachable memory.
pub struct DmaRegion {
    vaddr: NonNull<u8>,
    len: usize,
    iova: u64,
    hugepages: bool,
    mapper: Arc<dyn DmaMapper>,
    allocator: Arc<Mutex<IovaAllocator>>,
}

// SAFETY: the region owns its anonymous mapping; moving the owner between threads moves no
// shared state. Access to the bytes goes through `&self`/`&mut self` methods.
unsafe impl Send for DmaRegion {}

impl DmaRegion {
    /// Allocates at least `len` bytes (rounded up to the page size used), takes an IOVA for
    /// them and maps them into the device's domain.
    pub fn new(
        len: usize,
        mapper: Arc<dyn DmaMapper>,
        allocator: Arc<Mutex<IovaAllocator>>,
    ) -> Result<Self, Error> {
        let (vaddr, len, hugepages) = alloc(len)?;
        let page = if hugepages { HUGEPAGE } else { PAGE } as u64;
        let taken = allocator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .alloc(len as u64, page);
        let iova = match taken {
            Ok(iova) => iova,
            Err(e) => {
                free(vaddr, len);
                return Err(e.into());
            }
        };
        // SAFETY: `vaddr..vaddr + len` is our mapping and is unmapped from the IOMMU in `drop`
        // before it is freed.
        if let Err(source) = unsafe { mapper.map(iova, len, vaddr.as_ptr()) } {
            allocator
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .release(iova, len as u64);
            free(vaddr, len);
            return Err(Error::Map { iova, len, source });
        }
        Ok(DmaRegion {
            vaddr,
            len,
            iova,
            hugepages,
            mapper,
            allocator,
        })
    }

    /// The device's address of byte 0.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (never: lengths round up to a page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether hugepages back the region.
    pub fn on_hugepages(&self) -> bool {
        self.hugepages
    }

    /// Host pointer to byte 0, for the ring and pool types built on top.
    pub fn as_ptr(&self) -> *mut u8 {
        self.vaddr.as_ptr()
    }

    /// Copies `dst.len()` bytes from `offset` out of the region. Callers read only buffers the
    /// device has finished with (its descriptor reported done, then an acquire fence).
    pub fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        assert!(
            offset + dst.len() <= self.len,
            "read outside the DMA region"
        );
        // SAFETY: `offset + dst.len() <= len` (checked above), so the pointer stays inside
        // the mapping.
        let src = unsafe { self.vaddr.as_ptr().add(offset) };
        // SAFETY: the source range is inside the mapping and cannot overlap `dst`, which is
        // ordinary memory borrowed mutably.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
    }

    /// Copies `src` into the region at `offset`. Callers write only buffers the device does
    /// not own (not yet handed over, or reported done).
    pub fn write_bytes(&mut self, offset: usize, src: &[u8]) {
        assert!(
            offset + src.len() <= self.len,
            "write outside the DMA region"
        );
        // SAFETY: `offset + src.len() <= len` (checked above).
        let dst = unsafe { self.vaddr.as_ptr().add(offset) };
        // SAFETY: as in `read_bytes`, with the roles swapped; `&mut self` keeps other software
        // writers out.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
    }
}

impl Drop for DmaRegion {
    fn drop(&mut self) {
        // The device must lose access before the memory can be reused.
        let _ = self.mapper.unmap(self.iova, self.len);
        self.allocator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(self.iova, self.len as u64);
        free(self.vaddr, self.len);
    }
}

fn alloc(len: usize) -> Result<(NonNull<u8>, usize, bool), Error> {
    let huge_len = len.div_ceil(HUGEPAGE) * HUGEPAGE;
    if let Some(p) = mmap_anon(huge_len, libc::MAP_HUGETLB) {
        return Ok((p, huge_len, true));
    }
    let small_len = len.div_ceil(PAGE) * PAGE;
    match mmap_anon(small_len, 0) {
        Some(p) => Ok((p, small_len, false)),
        None => Err(Error::Alloc {
            len,
            source: io::Error::last_os_error(),
        }),
    }
}

fn mmap_anon(len: usize, extra_flags: libc::c_int) -> Option<NonNull<u8>> {
    // SAFETY: a fresh private anonymous mapping chosen by the kernel aliases nothing; locked
    // (MAP_POPULATE | MAP_LOCKED) because the device may DMA into it at any time.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE | extra_flags,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        None
    } else {
        NonNull::new(ptr.cast())
    }
}

fn free(vaddr: NonNull<u8>, len: usize) {
    // SAFETY: `vaddr..vaddr + len` was mapped by `alloc` and is unmapped once.
    unsafe { libc::munmap(vaddr.as_ptr().cast(), len) };
}

#[cfg(test)]
#[allow(
    clippy::single_range_in_vec_init,
    reason = "lists of one IOVA range, not ranges of values"
)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(bool, u64, usize)>>);

    impl DmaMapper for Recorder {
        unsafe fn map(&self, iova: u64, len: usize, _vaddr: *mut u8) -> io::Result<()> {
            self.0.lock().unwrap().push((true, iova, len));
            Ok(())
        }
        fn unmap(&self, iova: u64, len: usize) -> io::Result<()> {
            self.0.lock().unwrap().push((false, iova, len));
            Ok(())
        }
    }

    #[test]
    fn region_is_mapped_for_its_life_and_unmapped_on_drop() {
        let rec = Arc::new(Recorder::default());
        let alloc = Arc::new(Mutex::new(IovaAllocator::new(&[0..1 << 40])));
        let region = DmaRegion::new(10_000, rec.clone(), alloc.clone()).unwrap();
        let (iova, len) = (region.iova(), region.len());
        assert!(len >= 10_000 && len % PAGE == 0);
        // The memory is usable.
        // SAFETY: the region is `len` bytes and nothing else uses it.
        let last = unsafe { region.as_ptr().add(len - 1) };
        // SAFETY: `last` is the region's last byte.
        unsafe { last.write(0xab) };
        drop(region);
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![(true, iova, len), (false, iova, len)]
        );
        assert_eq!(
            alloc.lock().unwrap().free_ranges(),
            &[0..1 << 40],
            "IOVA given back"
        );
    }
}
