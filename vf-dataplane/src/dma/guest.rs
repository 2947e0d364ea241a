//! Guest memory in the device's IOMMU domain at IOVA = guest physical address, so that NIC
//! descriptors can point straight at the guest's buffers (DESIGN.md, zero-copy).
//!
//! Invariants: every mapped region is reserved in the IOVA allocator, so the daemon's own rings
//! and pools never land on guest memory; and every mapped region stays mapped in this process
//! while the IOMMU maps it, because the [`MemoryOwner`] that keeps it alive is held until the
//! next update has unmapped what went away.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use super::iova::IovaAllocator;
use super::region::{DmaMapper, PAGE};
use crate::port::{GuestMemoryError, GuestRegion, MemoryOwner};

/// The guest regions mapped into one device's IOMMU domain.
pub struct GuestMappings {
    device: String,
    mapper: Arc<dyn DmaMapper>,
    allocator: Arc<Mutex<IovaAllocator>>,
    mapped: Vec<GuestRegion>,
    owner: Option<MemoryOwner>,
}

fn iova_range(r: &GuestRegion) -> Range<u64> {
    r.gpa..r.gpa + r.len
}

impl GuestMappings {
    /// No guest memory mapped yet for `device` (its name, for errors).
    pub fn new(
        device: &str,
        mapper: Arc<dyn DmaMapper>,
        allocator: Arc<Mutex<IovaAllocator>>,
    ) -> Self {
        GuestMappings {
            device: device.to_string(),
            mapper,
            allocator,
            mapped: Vec::new(),
            owner: None,
        }
    }

    /// The regions mapped now.
    pub fn regions(&self) -> &[GuestRegion] {
        &self.mapped
    }

    /// Makes `regions` the mapped set: unmaps the regions that went away or moved, maps the new
    /// ones. Every region is checked before anything changes; if mapping a new region fails,
    /// the regions new in this call are unmapped again and the error says which failed (the
    /// regions kept from before stay mapped).
    ///
    /// The caller must have stopped the device from using regions that go away.
    pub fn update(
        &mut self,
        regions: &[GuestRegion],
        owner: MemoryOwner,
    ) -> Result<(), GuestMemoryError> {
        for r in regions {
            self.check(r)?;
        }
        let mut allocator = self.allocator.lock().unwrap_or_else(|e| e.into_inner());
        let (kept, gone): (Vec<GuestRegion>, Vec<GuestRegion>) =
            self.mapped.iter().partition(|r| regions.contains(r));
        for r in &gone {
            // The device was stopped by the caller; an unmap failure leaves a stale IOMMU entry
            // for pages VFIO keeps pinned, which is harmless to others and cannot be mended here.
            let _ = self.mapper.unmap(r.gpa, len_usize(r.len));
            allocator.unreserve(iova_range(r));
        }
        self.mapped = kept;
        let mut added: Vec<GuestRegion> = Vec::new();
        let mut failure = None;
        for r in regions.iter().filter(|r| !self.mapped.contains(r)) {
            let end = r.gpa + r.len;
            if allocator.reserve(iova_range(r)).is_err() {
                failure = Some(GuestMemoryError::OverlapsDaemon {
                    gpa: r.gpa,
                    end,
                    device: self.device.clone(),
                });
                break;
            }
            // SAFETY: `owner` keeps `host_addr..host_addr + len` mapped in this process (the
            // caller's contract, Port::set_guest_memory) and is held below until a later update
            // has unmapped the region from the IOMMU, or `Drop` has.
            let mapped = unsafe {
                self.mapper
                    .map(r.gpa, len_usize(r.len), r.host_addr as *mut u8)
            };
            if let Err(source) = mapped {
                allocator.unreserve(iova_range(r));
                failure = Some(GuestMemoryError::Map {
                    gpa: r.gpa,
                    end,
                    device: self.device.clone(),
                    source,
                });
                break;
            }
            added.push(*r);
        }
        if let Some(error) = failure {
            for r in &added {
                let _ = self.mapper.unmap(r.gpa, len_usize(r.len));
                allocator.unreserve(iova_range(r));
            }
            return Err(error);
        }
        self.mapped.extend(added);
        self.owner = Some(owner);
        Ok(())
    }

    /// Unmaps every region. The caller must have stopped the device from using them.
    pub fn clear(&mut self) {
        let mut allocator = self.allocator.lock().unwrap_or_else(|e| e.into_inner());
        for r in self.mapped.drain(..) {
            let _ = self.mapper.unmap(r.gpa, len_usize(r.len));
            allocator.unreserve(iova_range(&r));
        }
        self.owner = None;
    }

    fn check(&self, r: &GuestRegion) -> Result<(), GuestMemoryError> {
        let page = PAGE as u64;
        let end = r.gpa.checked_add(r.len);
        if r.len == 0
            || !r.gpa.is_multiple_of(page)
            || !r.len.is_multiple_of(page)
            || !r.host_addr.is_multiple_of(page)
            || end.is_none()
            || usize::try_from(r.len).is_err()
        {
            return Err(GuestMemoryError::Unaligned {
                gpa: r.gpa,
                len: r.len,
                host_addr: r.host_addr,
            });
        }
        let end = r.gpa + r.len;
        let allocator = self.allocator.lock().unwrap_or_else(|e| e.into_inner());
        if !allocator.is_usable(&(r.gpa..end)) {
            let usable = allocator
                .usable()
                .iter()
                .map(|u| format!("{:#x}..{:#x}", u.start, u.end))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(GuestMemoryError::OutsideIommu {
                gpa: r.gpa,
                end,
                device: self.device.clone(),
                usable,
            });
        }
        Ok(())
    }
}

/// Lengths were checked to fit `usize` in `check`.
fn len_usize(len: u64) -> usize {
    usize::try_from(len).expect("checked in GuestMappings::check")
}

impl Drop for GuestMappings {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    /// Records map and unmap calls; fails maps at `fail_at`.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<(bool, u64, usize)>>,
        fail_at: Option<u64>,
    }

    impl DmaMapper for Recorder {
        unsafe fn map(&self, iova: u64, len: usize, _vaddr: *mut u8) -> io::Result<()> {
            if self.fail_at == Some(iova) {
                return Err(io::Error::from_raw_os_error(libc::ENOMEM));
            }
            self.calls.lock().unwrap().push((true, iova, len));
            Ok(())
        }
        fn unmap(&self, iova: u64, len: usize) -> io::Result<()> {
            self.calls.lock().unwrap().push((false, iova, len));
            Ok(())
        }
    }

    const MIB: u64 = 1 << 20;

    fn region(gpa: u64, len: u64) -> GuestRegion {
        GuestRegion {
            gpa,
            len,
            host_addr: 0x7f00_0000_0000 + gpa,
        }
    }

    fn owner() -> MemoryOwner {
        Arc::new(())
    }

    fn setup(fail_at: Option<u64>) -> (Arc<Recorder>, Arc<Mutex<IovaAllocator>>, GuestMappings) {
        let rec = Arc::new(Recorder {
            fail_at,
            ..Recorder::default()
        });
        let alloc = Arc::new(Mutex::new(IovaAllocator::new(&[
            0..0xFEE0_0000,
            0xFEF0_0000..1 << 40,
        ])));
        let maps = GuestMappings::new("0000:01:10.0", rec.clone(), alloc.clone());
        (rec, alloc, maps)
    }

    #[test]
    fn regions_are_mapped_at_their_guest_address_and_unmapped_when_they_go() {
        let (rec, alloc, mut maps) = setup(None);
        let a = region(0, 512 * MIB);
        let b = region(4096 * MIB, 512 * MIB);
        maps.update(&[a, b], owner()).unwrap();
        assert_eq!(maps.regions(), &[a, b]);
        // The daemon's own memory now comes from elsewhere.
        let own = alloc.lock().unwrap().alloc(MIB, 4096).unwrap();
        assert!(!(0..512 * MIB).contains(&own) && !(4096 * MIB..4608 * MIB).contains(&own));
        let c = region(8192 * MIB, 2 * MIB);
        maps.update(&[a, c], owner()).unwrap();
        assert_eq!(maps.regions(), &[a, c]);
        let calls = rec.calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            vec![
                (true, 0, 512 << 20),
                (true, 4096 * MIB, 512 << 20),
                (false, 4096 * MIB, 512 << 20),
                (true, 8192 * MIB, 2 << 20),
            ],
            "a stays mapped, b goes, c comes"
        );
        drop(maps);
        assert_eq!(rec.calls.lock().unwrap().len(), 6, "both unmapped on drop");
    }

    #[test]
    fn a_region_in_the_msi_window_is_refused_and_nothing_changes() {
        let (rec, _, mut maps) = setup(None);
        let low = region(0, 4096 * MIB);
        maps.update(&[region(0, MIB)], owner()).unwrap();
        let err = maps.update(&[low], owner()).unwrap_err();
        assert!(
            matches!(err, GuestMemoryError::OutsideIommu { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("0xfee00000"), "{err}");
        assert_eq!(maps.regions(), &[region(0, MIB)]);
        assert_eq!(rec.calls.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_region_over_the_daemons_own_memory_is_refused() {
        let (_, alloc, mut maps) = setup(None);
        let own = alloc.lock().unwrap().alloc(MIB, 4096).unwrap();
        let err = maps.update(&[region(own, MIB)], owner()).unwrap_err();
        assert!(
            matches!(err, GuestMemoryError::OverlapsDaemon { .. }),
            "{err}"
        );
        assert!(maps.regions().is_empty());
    }

    #[test]
    fn unaligned_regions_are_refused() {
        let (_, _, mut maps) = setup(None);
        for r in [region(0x800, MIB), region(0, 1000), region(0, 0)] {
            assert!(matches!(
                maps.update(&[r], owner()),
                Err(GuestMemoryError::Unaligned { .. })
            ));
        }
    }

    #[test]
    fn a_failed_map_undoes_the_regions_new_in_that_update() {
        let (rec, alloc, mut maps) = setup(Some(8192 * MIB));
        let a = region(0, MIB);
        maps.update(&[a], owner()).unwrap();
        let err = maps
            .update(
                &[a, region(4096 * MIB, MIB), region(8192 * MIB, MIB)],
                owner(),
            )
            .unwrap_err();
        assert!(matches!(err, GuestMemoryError::Map { .. }), "{err}");
        assert_eq!(maps.regions(), &[a]);
        assert_eq!(
            rec.calls.lock().unwrap()[1..],
            [(true, 4096 * MIB, 1 << 20), (false, 4096 * MIB, 1 << 20)]
        );
        // What was undone is free for the next try.
        alloc
            .lock()
            .unwrap()
            .reserve(4096 * MIB..4097 * MIB)
            .unwrap();
    }
}
