//! Guest memory of the emulated driver: one memfd, mapped in-process through vm-memory as one or
//! two regions, and a bump allocator that hands out ranges of it for rings and buffers.
//!
//! Invariant: every address this module hands out lies inside one region for its whole length,
//! and all guest accesses go through vm-memory (`write_slice`, `read_slice`, `load`, `store`),
//! never through a pointer computed by hand.

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use super::Error;

/// Guest-physical distance between the starts of two regions: region `i` starts at
/// `i * REGION_STRIDE`, so a two-region layout leaves a hole after region 0.
pub const REGION_STRIDE: u64 = 1 << 32;

/// Page size the layout is aligned to.
pub const PAGE_SIZE: u64 = 4096;

/// Shape of the guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    /// Total size in bytes, split evenly between the regions (a multiple of
    /// `regions * PAGE_SIZE`).
    pub size: u64,
    /// Number of regions: 1 or 2.
    pub regions: u8,
}

impl Default for MemoryLayout {
    fn default() -> Self {
        MemoryLayout {
            size: 64 << 20,
            regions: 1,
        }
    }
}

impl MemoryLayout {
    /// The `(guest address, size, offset in the memfd)` of each region.
    pub fn ranges(&self) -> Result<Vec<(GuestAddress, u64, u64)>, Error> {
        let regions = u64::from(self.regions);
        if !(1..=2).contains(&regions)
            || self.size == 0
            || !self.size.is_multiple_of(regions * PAGE_SIZE)
            || self.size / regions > REGION_STRIDE
        {
            return Err(Error::InvalidLayout {
                size: self.size,
                regions: self.regions,
            });
        }
        let each = self.size / regions;
        Ok((0..regions)
            .map(|i| (GuestAddress(i * REGION_STRIDE), each, i * each))
            .collect())
    }
}

/// A bump allocator over one region's guest addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cursor {
    next: u64,
    end: u64,
}

impl Cursor {
    /// Takes `len` bytes aligned to `align` (a power of two), if they fit.
    fn take(&mut self, len: u64, align: u64) -> Option<u64> {
        let start = self.next.checked_next_multiple_of(align)?;
        let end = start.checked_add(len)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(start)
    }
}

/// The guest memory: a memfd shared with the back-end, mapped here, plus its allocator.
pub struct GuestRam {
    mem: GuestMemoryMmap,
    cursors: Vec<Cursor>,
    /// The region the next allocation tries first.
    turn: usize,
}

impl GuestRam {
    /// Creates the memfd, sizes it and maps each region of `layout` `MAP_SHARED`.
    pub fn new(layout: MemoryLayout) -> Result<Self, Error> {
        let ranges = layout.ranges()?;
        let file = create_memfd()?;
        file.set_len(layout.size)
            .map_err(|source| Error::MemfdSize {
                size: layout.size,
                source,
            })?;
        let mut with_files = Vec::with_capacity(ranges.len());
        for &(gpa, len, offset) in &ranges {
            let file = file.try_clone().map_err(Error::Memfd)?;
            let len = usize::try_from(len).map_err(|_| Error::InvalidLayout {
                size: layout.size,
                regions: layout.regions,
            })?;
            with_files.push((gpa, len, Some(FileOffset::new(file, offset))));
        }
        let mem = GuestMemoryMmap::from_ranges_with_files(with_files).map_err(Error::MapMemory)?;
        // Page 0 stays unused, as in a real guest: virtio-queue 0.18 takes an avail ring at
        // guest address 0 for "not set up" (`Queue::iter` returns QueueNotReady), so a ring
        // there would never be served by a back-end built on it.
        let cursors = ranges
            .iter()
            .map(|&(gpa, len, _)| Cursor {
                next: gpa.0.max(PAGE_SIZE),
                end: gpa.0 + len,
            })
            .collect();
        Ok(GuestRam {
            mem,
            cursors,
            turn: 0,
        })
    }

    /// The vm-memory view of the guest memory.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Allocates `len` bytes aligned to `align` (a power of two), taking the regions in turn
    /// (skipping those without room), so that with two regions each queue has parts in both.
    pub fn alloc(&mut self, len: u64, align: u64) -> Result<GuestAddress, Error> {
        let n = self.cursors.len();
        for k in 0..n {
            let i = (self.turn + k) % n;
            if let Some(addr) = self.cursors[i].take(len, align) {
                self.turn = (i + 1) % n;
                return Ok(GuestAddress(addr));
            }
        }
        Err(Error::OutOfGuestMemory { len })
    }

    /// The first guest address past the end of the last region.
    pub fn end(&self) -> GuestAddress {
        GuestAddress(self.mem.last_addr().0 + 1)
    }

    /// Writes `buf` at guest address `addr`.
    pub fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), Error> {
        self.mem
            .write_slice(buf, addr)
            .map_err(|source| Error::GuestMemory {
                addr: addr.0,
                source,
            })
    }

    /// Reads `buf.len()` bytes at guest address `addr`.
    pub fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), Error> {
        self.mem
            .read_slice(buf, addr)
            .map_err(|source| Error::GuestMemory {
                addr: addr.0,
                source,
            })
    }

    /// The address of guest address `addr` in this process, as SET_VRING_ADDR wants it (the
    /// back-end translates it through the `userspace_addr` of SET_MEM_TABLE).
    pub fn host_addr(&self, addr: GuestAddress) -> Result<u64, Error> {
        let ptr = self
            .mem
            .get_host_address(addr)
            .map_err(|source| Error::GuestMemory {
                addr: addr.0,
                source,
            })?;
        Ok(ptr as u64)
    }

    /// One SET_MEM_TABLE entry per region (fd, offset in it, guest and user addresses).
    pub fn region_infos(&self) -> Result<Vec<VhostUserMemoryRegionInfo>, Error> {
        self.mem
            .iter()
            .map(|region| {
                VhostUserMemoryRegionInfo::from_guest_region(region).map_err(|source| {
                    Error::RegionInfo {
                        addr: region.start_addr().0,
                        source,
                    }
                })
            })
            .collect()
    }
}

/// Creates an empty, close-on-exec memfd.
fn create_memfd() -> Result<File, Error> {
    // SAFETY: the name is a NUL-terminated literal that memfd_create only reads; the result is
    // checked below before it is used as a descriptor.
    let fd = unsafe { libc::memfd_create(c"vhost-vf-guest".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Memfd(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create, is valid and owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(File::from(owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_splits_two_regions_with_a_hole() {
        let layout = MemoryLayout {
            size: 8 << 20,
            regions: 2,
        };
        let ranges = layout.ranges().unwrap();
        assert_eq!(
            ranges,
            vec![
                (GuestAddress(0), 4 << 20, 0),
                (GuestAddress(REGION_STRIDE), 4 << 20, 4 << 20)
            ]
        );
    }

    #[test]
    fn layout_rejects_zero_three_regions_and_unaligned_sizes() {
        for (size, regions) in [(0, 1), (8 << 20, 3), (8 << 20, 0), (4097, 1), (4096, 2)] {
            assert!(
                MemoryLayout { size, regions }.ranges().is_err(),
                "{size} {regions}"
            );
        }
    }

    #[test]
    fn cursor_aligns_and_refuses_overflow() {
        let mut c = Cursor {
            next: 1,
            end: 0x3000,
        };
        assert_eq!(c.take(0x10, 0x1000), Some(0x1000));
        assert_eq!(c.take(0x10, 16), Some(0x1010));
        assert_eq!(c.take(0x2000, 16), None);
        assert_eq!(c.take(0x1fe0, 16), Some(0x1020));
        assert_eq!(c.next, c.end);
    }

    #[test]
    fn memfd_memory_round_trips_and_spreads_allocations() {
        let mut ram = GuestRam::new(MemoryLayout {
            size: 2 << 20,
            regions: 2,
        })
        .unwrap();
        let a = ram.alloc(0x1000, PAGE_SIZE).unwrap();
        let b = ram.alloc(0x1000, PAGE_SIZE).unwrap();
        assert_eq!(
            (a.0, b.0),
            (PAGE_SIZE, REGION_STRIDE),
            "one per region, in turn"
        );
        // Fill region 0: the next allocation goes to region 1 whatever the turn.
        let c = ram.alloc((1 << 20) - 0x2000, PAGE_SIZE).unwrap();
        assert_eq!(c.0, 0x2000);
        let d = ram.alloc(0x1000, PAGE_SIZE).unwrap();
        assert_eq!(d.0, REGION_STRIDE + 0x1000);
        let e = ram.alloc(0x1000, PAGE_SIZE).unwrap();
        assert_eq!(e.0, REGION_STRIDE + 0x2000);
        ram.write(b, b"hello").unwrap();
        let mut back = [0u8; 5];
        ram.read(b, &mut back).unwrap();
        assert_eq!(&back, b"hello");
        assert_eq!(ram.end(), GuestAddress(REGION_STRIDE + (1 << 20)));
        let infos = ram.region_infos().unwrap();
        assert_eq!(infos.len(), 2);
        assert_eq!(infos[1].mmap_offset, 1 << 20);
        assert_eq!(
            infos[1].userspace_addr,
            ram.host_addr(GuestAddress(REGION_STRIDE)).unwrap()
        );
        assert!(ram.alloc(1 << 20, 1).is_err());
    }
}
