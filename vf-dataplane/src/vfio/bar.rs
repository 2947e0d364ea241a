//! `Bar0`: the one place that touches device registers. It owns the mmap of a PCI BAR (through
//! the VFIO device fd), checks every offset against the mapped length, and does volatile 32-bit
//! accesses, so no other code needs `unsafe` for MMIO.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

use crate::nic::regs_io::RegisterAccess;

/// A mapped BAR. Invariant: `base..base + len` stays mapped, readable and writable for the
/// life of the value, and is unmapped exactly once, on drop.
#[derive(Debug)]
pub struct Bar0 {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain device memory owned by this value; register accesses are single
// volatile loads/stores, which the device serialises, so sharing the handle across threads
// cannot break memory safety (ordering between threads is the driver's business).
unsafe impl Send for Bar0 {}
// SAFETY: as for Send: `&Bar0` only allows volatile 32-bit accesses inside the mapping.
unsafe impl Sync for Bar0 {}

impl Bar0 {
    /// Maps `len` bytes at `offset` of `fd` (a VFIO device fd and the BAR's region offset).
    pub fn map(fd: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<Self> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BAR offset too large"))?;
        // SAFETY: a fresh shared mapping chosen by the kernel (no fixed address), so it aliases
        // nothing we own; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Bar0 { base, len })
    }

    /// The mapped length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is mapped (never, for a BAR that mapped).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A pointer to the 32-bit register at `offset`, checked to lie inside the mapping and be
    /// aligned. Panics otherwise: register offsets are driver constants, so a bad one is a bug.
    fn reg(&self, offset: u32) -> *mut u32 {
        let at = offset as usize;
        assert!(
            at.is_multiple_of(4) && at + 4 <= self.len,
            "register offset {offset:#x} outside BAR0 ({:#x} bytes) or unaligned",
            self.len
        );
        // SAFETY: `at + 4 <= len`, so the pointer stays inside the mapping.
        unsafe { self.base.as_ptr().add(at).cast::<u32>() }
    }
}

impl RegisterAccess for Bar0 {
    fn read32(&self, offset: u32) -> u32 {
        let reg = self.reg(offset);
        // SAFETY: `reg` is in bounds and aligned (checked in `Bar0::reg`); the mapping outlives
        // `self`.
        u32::from_le(unsafe { reg.read_volatile() })
    }

    fn write32(&self, offset: u32, value: u32) {
        let reg = self.reg(offset);
        // SAFETY: as in `read32`.
        unsafe { reg.write_volatile(value.to_le()) }
    }
}

impl Drop for Bar0 {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `map` with this length and is unmapped only here.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    use super::*;

    fn memfd(len: usize) -> OwnedFd {
        // SAFETY: memfd_create with a literal name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"bar0-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let size = libc::off_t::try_from(len).unwrap();
        // SAFETY: ftruncate on our own descriptor.
        let rc = unsafe { libc::ftruncate(fd.as_raw_fd(), size) };
        assert_eq!(rc, 0);
        fd
    }

    #[test]
    fn registers_read_back_what_was_written() {
        let fd = memfd(0x4000);
        let bar = Bar0::map(fd.as_fd(), 0, 0x4000).unwrap();
        bar.write32(0x3818, 0xdead_beef);
        assert_eq!(bar.read32(0x3818), 0xdead_beef);
        assert_eq!(bar.read32(0x3ffc), 0);
    }

    #[test]
    #[should_panic(expected = "outside BAR0")]
    fn offset_past_the_mapping_is_refused() {
        let fd = memfd(0x1000);
        let bar = Bar0::map(fd.as_fd(), 0, 0x1000).unwrap();
        bar.read32(0x1000);
    }
}
