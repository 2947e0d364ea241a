//! Guest memory of the emulated driver: one memfd, mapped in-process through vm-memory as one or
//! two regions, and a bump allocator that hands out ranges of it for rings and buffers; plus
//! regions added and removed at run time (ADD_MEM_REG / REM_MEM_REG), each with a memfd of its
//! own, that the caller places buffers in itself.
//!
//! Invariant: every address the allocator hands out lies inside one of the first regions for its
//! whole length, so rings never sit in a region that can be removed; and all guest accesses go
//! through vm-memory (`write_slice`, `read_slice`, `load`, `store`), never through a pointer
//! computed by hand.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
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
    /// Start of each region added with [`GuestRam::add_region`] and not removed since.
    added: Vec<GuestAddress>,
}

impl GuestRam {
    /// Creates the memfd, sizes it and maps each region of `layout` `MAP_SHARED`.
    pub fn new(layout: MemoryLayout) -> Result<Self, Error> {
        let ranges = layout.ranges()?;
        let file = create_memfd(c"vhost-vf-guest")?;
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
            added: Vec::new(),
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
        self.mem.iter().map(region_info).collect()
    }

    /// Maps a new region of `size` bytes (whole pages) at guest address `addr` (page aligned),
    /// backed by a memfd of its own, and returns its ADD_MEM_REG description. The allocator
    /// never hands out its addresses: the caller places buffers in it, and may remove it again.
    pub fn add_region(
        &mut self,
        addr: GuestAddress,
        size: u64,
    ) -> Result<VhostUserMemoryRegionInfo, Error> {
        let invalid = || Error::InvalidRegion { addr: addr.0, size };
        if size == 0
            || !size.is_multiple_of(PAGE_SIZE)
            || !addr.0.is_multiple_of(PAGE_SIZE)
            || addr.0.checked_add(size).is_none()
        {
            return Err(invalid());
        }
        let len = usize::try_from(size).map_err(|_| invalid())?;
        let file = create_memfd(c"vhost-vf-guest-added")?;
        file.set_len(size)
            .map_err(|source| Error::MemfdSize { size, source })?;
        let region = GuestRegionMmap::from_range(addr, len, Some(FileOffset::new(file, 0)))
            .map_err(Error::MapMemory)?;
        self.mem = self
            .mem
            .insert_region(Arc::new(region))
            .map_err(|source| Error::AddRegion {
                addr: addr.0,
                size,
                source,
            })?;
        self.added.push(addr);
        self.added_region_info(addr)
    }

    /// The ADD_MEM_REG / REM_MEM_REG description of the added region that starts at `addr`.
    pub fn added_region_info(
        &self,
        addr: GuestAddress,
    ) -> Result<VhostUserMemoryRegionInfo, Error> {
        let region = self
            .added
            .contains(&addr)
            .then(|| self.mem.find_region(addr))
            .flatten()
            .ok_or(Error::NotAnAddedRegion { addr: addr.0 })?;
        region_info(region)
    }

    /// Unmaps the added region that starts at `addr`. Nothing may refer to it any more: the
    /// back-end must have let it go (REM_MEM_REG acknowledged) and no chain may point into it.
    pub fn remove_region(&mut self, addr: GuestAddress) -> Result<(), Error> {
        let info = self.added_region_info(addr)?;
        let (mem, _removed) = self
            .mem
            .remove_region(addr, info.memory_size)
            .map_err(|_| Error::NotAnAddedRegion { addr: addr.0 })?;
        self.mem = mem;
        self.added.retain(|a| *a != addr);
        Ok(())
    }

    /// Start of each added region still mapped, in the order they were added.
    pub fn added_regions(&self) -> &[GuestAddress] {
        &self.added
    }
}

/// The memory-table description of `region` (fd, offset in it, guest and user addresses).
fn region_info(region: &GuestRegionMmap) -> Result<VhostUserMemoryRegionInfo, Error> {
    VhostUserMemoryRegionInfo::from_guest_region(region).map_err(|source| Error::RegionInfo {
        addr: region.start_addr().0,
        source,
    })
}

/// Creates an empty, close-on-exec memfd called `name` (as /proc/PID/maps shows it).
fn create_memfd(name: &CStr) -> Result<File, Error> {
    // SAFETY: `name` is a NUL-terminated string that lives across the call and that
    // memfd_create only reads; the result is checked below before it is used as a descriptor.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
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
    fn added_region_is_mapped_described_and_never_allocated_from() {
        let mut ram = GuestRam::new(MemoryLayout {
            size: 1 << 20,
            regions: 1,
        })
        .unwrap();
        let at = GuestAddress(2 * REGION_STRIDE);
        let info = ram.add_region(at, 1 << 20).unwrap();
        assert_eq!(
            (info.guest_phys_addr, info.memory_size, info.mmap_offset),
            (at.0, 1 << 20, 0)
        );
        assert_eq!(info.userspace_addr, ram.host_addr(at).unwrap());
        assert_eq!(ram.added_regions(), &[at]);
        assert_eq!(ram.region_infos().unwrap().len(), 2);
        ram.write(at, b"moved").unwrap();
        let mut back = [0u8; 5];
        ram.read(at, &mut back).unwrap();
        assert_eq!(&back, b"moved");
        // The allocator stays in the first region, and says so when it is full.
        assert!(ram.alloc(1 << 20, PAGE_SIZE).is_err());
        assert!(ram.alloc(0x1000, PAGE_SIZE).unwrap().0 < 1 << 20);

        ram.remove_region(at).unwrap();
        assert!(ram.added_regions().is_empty());
        assert!(ram.read(at, &mut back).is_err(), "the region is unmapped");
        assert_eq!(ram.region_infos().unwrap().len(), 1);
    }

    #[test]
    fn overlapping_or_unaligned_regions_are_refused_and_base_regions_stay() {
        let mut ram = GuestRam::new(MemoryLayout {
            size: 1 << 20,
            regions: 1,
        })
        .unwrap();
        assert!(matches!(
            ram.add_region(GuestAddress(0x8_0000), 1 << 20),
            Err(Error::AddRegion { .. })
        ));
        for (addr, size) in [(0x10_0001, 4096), (0x10_0000, 100), (0x10_0000, 0)] {
            assert!(matches!(
                ram.add_region(GuestAddress(addr), size),
                Err(Error::InvalidRegion { .. })
            ));
        }
        assert!(matches!(
            ram.remove_region(GuestAddress(0)),
            Err(Error::NotAnAddedRegion { addr: 0 })
        ));
        assert!(ram.added_regions().is_empty());
        assert_eq!(ram.region_infos().unwrap().len(), 1);
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
