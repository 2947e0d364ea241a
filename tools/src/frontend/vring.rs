//! The driver side of one split virtqueue (virtio 1.2 §2.7): descriptor table, available ring
//! and used ring in guest memory, a free list of descriptors, and the two indexes the driver
//! keeps (next available slot, last used entry seen).
//!
//! Invariant: a descriptor index is either on the free list or owned by exactly one chain the
//! caller made available; the avail index is published only after the entries it covers are
//! written (release), and used entries are read only after the used index that covers them
//! (acquire).

use std::sync::atomic::{Ordering, fence};

use virtio_bindings::virtio_ring::{
    VRING_AVAIL_ALIGN_SIZE, VRING_DESC_ALIGN_SIZE, VRING_USED_ALIGN_SIZE,
};
use vm_memory::{Bytes, GuestAddress};

use super::Error;
use super::memory::{GuestRam, PAGE_SIZE};

/// Bytes of one descriptor-table entry (§2.7.5).
pub const DESC_SIZE: u64 = 16;

/// Bytes of the descriptor table of a queue of `size` entries.
pub const fn desc_table_bytes(size: u16) -> u64 {
    DESC_SIZE * size as u64
}

/// Bytes of the available ring: flags, idx, `size` entries, used_event (§2.7.6).
pub const fn avail_ring_bytes(size: u16) -> u64 {
    6 + 2 * size as u64
}

/// Bytes of the used ring: flags, idx, `size` 8-byte elements, avail_event (§2.7.8).
pub const fn used_ring_bytes(size: u16) -> u64 {
    6 + 8 * size as u64
}

/// One descriptor-table entry as the driver writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Length of the buffer in bytes.
    pub len: u32,
    /// `VRING_DESC_F_*` bits.
    pub flags: u16,
    /// Index of the next descriptor when `VRING_DESC_F_NEXT` is set.
    pub next: u16,
}

impl Desc {
    /// The little-endian encoding of the entry.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[0..8].copy_from_slice(&self.addr.to_le_bytes());
        out[8..12].copy_from_slice(&self.len.to_le_bytes());
        out[12..14].copy_from_slice(&self.flags.to_le_bytes());
        out[14..16].copy_from_slice(&self.next.to_le_bytes());
        out
    }

    /// Decodes a little-endian entry.
    pub fn from_bytes(b: [u8; 16]) -> Self {
        let [
            a0,
            a1,
            a2,
            a3,
            a4,
            a5,
            a6,
            a7,
            l0,
            l1,
            l2,
            l3,
            f0,
            f1,
            n0,
            n1,
        ] = b;
        Desc {
            addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            flags: u16::from_le_bytes([f0, f1]),
            next: u16::from_le_bytes([n0, n1]),
        }
    }
}

/// One used-ring element as the device wrote it (`id` is not checked here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElem {
    /// Head index of the chain the device returned.
    pub id: u32,
    /// Bytes the device wrote into the chain's writable buffers.
    pub len: u32,
}

/// Guest addresses of the three parts of a split queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingAddrs {
    /// Descriptor table.
    pub desc: GuestAddress,
    /// Available ring.
    pub avail: GuestAddress,
    /// Used ring.
    pub used: GuestAddress,
}

/// Driver state of a split virtqueue.
#[derive(Debug)]
pub struct SplitRing {
    size: u16,
    addrs: RingAddrs,
    free: Vec<u16>,
    /// Shadow of avail.idx: the next avail slot to fill (free-running, wraps at 2^16).
    next_avail: u16,
    /// The used index up to which entries were consumed (free-running).
    last_used: u16,
}

impl SplitRing {
    /// Allocates the three parts of a queue of `size` entries (a power of two, at most 32768) in
    /// guest memory. Fresh memfd memory is zero, as both rings must start.
    pub fn new(ram: &mut GuestRam, size: u16) -> Result<Self, Error> {
        if !size.is_power_of_two() || size > 32768 {
            return Err(Error::InvalidQueueSize { size });
        }
        // Each part on its own page: more than the spec's alignment (16, 2, 4) and easy to read
        // in a dump.
        debug_assert!(
            u64::from(VRING_DESC_ALIGN_SIZE | VRING_AVAIL_ALIGN_SIZE | VRING_USED_ALIGN_SIZE)
                <= PAGE_SIZE
        );
        let addrs = RingAddrs {
            desc: ram.alloc(desc_table_bytes(size), PAGE_SIZE)?,
            avail: ram.alloc(avail_ring_bytes(size), PAGE_SIZE)?,
            used: ram.alloc(used_ring_bytes(size), PAGE_SIZE)?,
        };
        Ok(SplitRing {
            size,
            addrs,
            // Popped from the end: hand out low indexes first.
            free: (0..size).rev().collect(),
            next_avail: 0,
            last_used: 0,
        })
    }

    /// Number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Where the parts live.
    pub fn addrs(&self) -> RingAddrs {
        self.addrs
    }

    /// Descriptors not owned by any chain.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// The free-running used index up to which entries were consumed.
    pub fn last_used(&self) -> u16 {
        self.last_used
    }

    /// The free-running avail index the next published entry gets.
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// Takes `n` descriptors off the free list, or none if fewer are free.
    pub fn alloc(&mut self, n: usize) -> Option<Vec<u16>> {
        if n > self.free.len() {
            return None;
        }
        let at = self.free.len() - n;
        let mut taken = self.free.split_off(at);
        taken.reverse();
        Some(taken)
    }

    /// Takes one descriptor off the free list, without allocating.
    pub fn alloc_one(&mut self) -> Option<u16> {
        self.free.pop()
    }

    /// Returns descriptors to the free list.
    pub fn release(&mut self, descs: &[u16]) {
        debug_assert!(
            descs
                .iter()
                .all(|d| *d < self.size && !self.free.contains(d))
        );
        self.free.extend(descs.iter().rev());
    }

    /// Writes descriptor-table entry `index`.
    pub fn write_desc(&self, ram: &GuestRam, index: u16, desc: Desc) -> Result<(), Error> {
        ram.write(self.desc_addr(index), &desc.to_bytes())
    }

    /// Reads descriptor-table entry `index`.
    pub fn read_desc(&self, ram: &GuestRam, index: u16) -> Result<Desc, Error> {
        let mut b = [0u8; 16];
        ram.read(self.desc_addr(index), &mut b)?;
        Ok(Desc::from_bytes(b))
    }

    fn desc_addr(&self, index: u16) -> GuestAddress {
        GuestAddress(self.addrs.desc.0 + DESC_SIZE * u64::from(index % self.size))
    }

    /// Writes `head` into the next available slot; the device sees it after [`Self::publish`].
    pub fn push_avail(&mut self, ram: &GuestRam, head: u16) -> Result<(), Error> {
        let slot = self.next_avail % self.size;
        let addr = GuestAddress(self.addrs.avail.0 + 4 + 2 * u64::from(slot));
        ram.write(addr, &head.to_le_bytes())?;
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(())
    }

    /// Makes every pushed entry visible to the device by storing avail.idx.
    pub fn publish(&self, ram: &GuestRam) -> Result<(), Error> {
        // §2.7.13.1: descriptors and avail entries must be visible before the index that covers
        // them. The release fence orders all the writes above before the store below.
        fence(Ordering::Release);
        let addr = GuestAddress(self.addrs.avail.0 + 2);
        ram.mem()
            .store(self.next_avail.to_le(), addr, Ordering::Relaxed)
            .map_err(|source| Error::GuestMemory {
                addr: addr.0,
                source,
            })
    }

    /// Reads the device's used.idx.
    pub fn used_idx(&self, ram: &GuestRam) -> Result<u16, Error> {
        let addr = GuestAddress(self.addrs.used.0 + 2);
        let idx: u16 =
            ram.mem()
                .load(addr, Ordering::Relaxed)
                .map_err(|source| Error::GuestMemory {
                    addr: addr.0,
                    source,
                })?;
        // §2.7.14: the used elements up to idx must be read only after idx itself; the acquire
        // fence orders the load above before the element reads that follow.
        fence(Ordering::Acquire);
        Ok(u16::from_le(idx))
    }

    /// The next used element the device returned, if any.
    pub fn pop_used(&mut self, ram: &GuestRam) -> Result<Option<UsedElem>, Error> {
        if self.used_idx(ram)? == self.last_used {
            return Ok(None);
        }
        let slot = self.last_used % self.size;
        let addr = GuestAddress(self.addrs.used.0 + 4 + 8 * u64::from(slot));
        let mut b = [0u8; 8];
        ram.read(addr, &mut b)?;
        let [i0, i1, i2, i3, l0, l1, l2, l3] = b;
        self.last_used = self.last_used.wrapping_add(1);
        Ok(Some(UsedElem {
            id: u32::from_le_bytes([i0, i1, i2, i3]),
            len: u32::from_le_bytes([l0, l1, l2, l3]),
        }))
    }

    /// With VIRTIO_RING_F_EVENT_IDX: asks for a used-buffer notification as soon as the device
    /// adds any entry past those consumed, by writing used_event (§2.7.10).
    pub fn request_notification(&self, ram: &GuestRam) -> Result<(), Error> {
        let addr = GuestAddress(self.addrs.avail.0 + 4 + 2 * u64::from(self.size));
        ram.write(addr, &self.last_used.to_le_bytes())?;
        // The device must see used_event before we re-read used.idx, or an entry added in
        // between could be neither seen nor notified.
        fence(Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::memory::MemoryLayout;

    fn ram() -> GuestRam {
        GuestRam::new(MemoryLayout {
            size: 1 << 20,
            regions: 1,
        })
        .unwrap()
    }

    /// Plays the device: writes used element `n` (free-running) and publishes used.idx = n + 1.
    fn device_use(ram: &GuestRam, ring: &SplitRing, n: u16, id: u32, len: u32) {
        let a = ring.addrs();
        let slot = u64::from(n % ring.size());
        let mut elem = id.to_le_bytes().to_vec();
        elem.extend_from_slice(&len.to_le_bytes());
        ram.write(GuestAddress(a.used.0 + 4 + 8 * slot), &elem)
            .unwrap();
        ram.write(GuestAddress(a.used.0 + 2), &n.wrapping_add(1).to_le_bytes())
            .unwrap();
    }

    #[test]
    fn ring_sizes_follow_the_spec() {
        assert_eq!(desc_table_bytes(256), 4096);
        assert_eq!(avail_ring_bytes(256), 518);
        assert_eq!(used_ring_bytes(256), 2054);
    }

    #[test]
    fn desc_encoding_is_little_endian_and_round_trips() {
        let d = Desc {
            addr: 0x1122_3344_5566_7788,
            len: 0x99aa_bbcc,
            flags: 0x0102,
            next: 0x0304,
        };
        let b = d.to_bytes();
        assert_eq!(b[0], 0x88);
        assert_eq!(b[8], 0xcc);
        assert_eq!(b[12], 0x02);
        assert_eq!(b[14], 0x04);
        assert_eq!(Desc::from_bytes(b), d);
    }

    #[test]
    fn non_power_of_two_queue_size_is_rejected() {
        let mut ram = ram();
        assert!(SplitRing::new(&mut ram, 100).is_err());
        assert!(SplitRing::new(&mut ram, 0).is_err());
    }

    #[test]
    fn free_list_hands_out_every_descriptor_once() {
        let mut ram = ram();
        let mut ring = SplitRing::new(&mut ram, 8).unwrap();
        let a = ring.alloc(3).unwrap();
        assert_eq!(a, vec![0, 1, 2]);
        let b = ring.alloc(5).unwrap();
        assert_eq!(ring.free_count(), 0);
        assert!(ring.alloc(1).is_none());
        ring.release(&a);
        assert_eq!(ring.alloc(3).unwrap(), a);
        let mut all: Vec<u16> = a.iter().chain(&b).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn avail_entries_become_visible_only_on_publish() {
        let mut ram = ram();
        let mut ring = SplitRing::new(&mut ram, 4).unwrap();
        ring.push_avail(&ram, 3).unwrap();
        let idx_addr = GuestAddress(ring.addrs().avail.0 + 2);
        let mut idx = [0u8; 2];
        ram.read(idx_addr, &mut idx).unwrap();
        assert_eq!(u16::from_le_bytes(idx), 0);
        ring.publish(&ram).unwrap();
        ram.read(idx_addr, &mut idx).unwrap();
        assert_eq!(u16::from_le_bytes(idx), 1);
        let mut entry = [0u8; 2];
        ram.read(GuestAddress(ring.addrs().avail.0 + 4), &mut entry)
            .unwrap();
        assert_eq!(u16::from_le_bytes(entry), 3);
    }

    #[test]
    fn used_entries_are_read_in_order_across_the_index_wrap() {
        let mut ram = ram();
        let mut ring = SplitRing::new(&mut ram, 4).unwrap();
        // Start both indexes just below 2^16 as after a long run.
        ring.last_used = u16::MAX - 1;
        ram.write(
            GuestAddress(ring.addrs().used.0 + 2),
            &ring.last_used.to_le_bytes(),
        )
        .unwrap();
        assert_eq!(ring.pop_used(&ram).unwrap(), None);
        for (k, n) in [u16::MAX - 1, u16::MAX, 0].into_iter().enumerate() {
            let k = u32::try_from(k).unwrap();
            device_use(&ram, &ring, n, k, 10 * k);
            assert_eq!(
                ring.pop_used(&ram).unwrap(),
                Some(UsedElem { id: k, len: 10 * k })
            );
            assert_eq!(ring.pop_used(&ram).unwrap(), None);
        }
        assert_eq!(ring.last_used(), 1);
    }

    #[test]
    fn request_notification_writes_used_event() {
        let mut ram = ram();
        let mut ring = SplitRing::new(&mut ram, 4).unwrap();
        ring.last_used = 7;
        ring.request_notification(&ram).unwrap();
        let mut ev = [0u8; 2];
        ram.read(GuestAddress(ring.addrs().avail.0 + 4 + 8), &mut ev)
            .unwrap();
        assert_eq!(u16::from_le_bytes(ev), 7);
    }
}
