//! Direct (zero-copy) rx: the guest's rx buffers are posted to the port's device, which writes
//! each frame straight into one, after the room left for the virtio-net header; the daemon then
//! writes the header and returns the chain.
//!
//! A buffer qualifies when the chain's first descriptor is device-writable, lies in one guest
//! memory region and holds the header plus the port's direct buffer length, which bounds every
//! DMA write into it: a frame is never written outside the buffer the guest gave. The whole
//! chain is validated first ([`chain::walk`]). Posted chains are kept in posting order, which is
//! the order the device fills them in, so chains go back to the used ring in order. Buffers the
//! port gives back unfilled are the newest posted, so they return to the avail ring by a rewind.

use std::collections::VecDeque;

use vf_dataplane::{BURST_SIZE, Port, VirtioNetHdr};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::chain::{self, ChainFault, Direction};
use crate::rx::{QueueError, RxLayout};
use crate::stats::NetStats;

/// A guest buffer the port holds.
#[derive(Clone, Copy, Debug, Default)]
struct Posted {
    head: u16,
    /// Where the chain's buffer starts: the header goes here, the frame after it.
    buf: GuestAddress,
}

/// What became of a chain offered for direct rx.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qualified {
    /// Its buffer starts here and is large enough.
    Buffer(GuestAddress),
    /// A valid chain whose first buffer is too small: the guest's buffers need copying.
    TooSmall,
    /// A malformed chain.
    Bad(ChainFault),
}

/// Checks one chain for direct rx with `hdr_len`-byte headers into a port that writes up to
/// `frame_len` bytes per buffer.
pub fn qualify<M>(
    chain: virtio_queue::DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    queue_size: u16,
    hdr_len: usize,
    frame_len: usize,
) -> Qualified
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut first = None;
    let walked = chain::walk(
        chain,
        mem,
        Direction::DeviceWrites,
        queue_size,
        |addr, len| {
            first.get_or_insert((addr, len));
            Ok(())
        },
    );
    if let Err(fault) = walked {
        return Qualified::Bad(fault);
    }
    let Some((addr, len)) = first else {
        return Qualified::Bad(ChainFault::Unterminated);
    };
    let needed = hdr_len + frame_len;
    // One region: the device writes by IOVA = guest address, contiguously.
    if len < needed || mem.get_slice(addr, needed).is_err() {
        return Qualified::TooSmall;
    }
    Qualified::Buffer(addr)
}

/// What a refill found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refill {
    /// This many buffers were posted (0: the avail ring is empty or the port is full).
    Posted(usize),
    /// The next chain is too small for direct rx: rx must copy from now on. That chain is
    /// back in the avail ring; buffers posted before it are still posted.
    NeedsCopy,
}

/// The guest buffers posted to the port, and the worker's scratch for a burst of them.
pub struct DirectRx {
    posted: VecDeque<Posted>,
    lens: [u32; BURST_SIZE],
    batch: [Posted; BURST_SIZE],
    iovas: [u64; BURST_SIZE],
}

impl DirectRx {
    /// Room for `capacity` posted chains (the largest queue size) without reallocating.
    pub fn with_capacity(capacity: usize) -> Self {
        DirectRx {
            posted: VecDeque::with_capacity(capacity),
            lens: [0; BURST_SIZE],
            batch: [Posted::default(); BURST_SIZE],
            iovas: [0; BURST_SIZE],
        }
    }

    /// Chains the port holds.
    pub fn posted(&self) -> usize {
        self.posted.len()
    }

    /// Returns the buffers the port filled to the guest, in order, each with its header; a
    /// bad frame's buffer goes back with length 0 (the guest counts a length error). Also
    /// hands back to the avail ring the buffers the port gave up (a device reset). Returns
    /// whether it used any chain.
    pub fn complete(
        &mut self,
        port: &mut dyn Port,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        layout: RxLayout,
        stats: &mut NetStats,
    ) -> Result<bool, QueueError> {
        let mut used = false;
        loop {
            let n = port.rx_filled(&mut self.lens);
            for &len in &self.lens[..n] {
                let posted = self
                    .posted
                    .pop_front()
                    .expect("the port fills only buffers it was given");
                used = true;
                if len == 0 {
                    stats.rx_errors += 1;
                    queue.add_used(mem, posted.head, 0)?;
                    continue;
                }
                let hdr = VirtioNetHdr {
                    num_buffers: 1,
                    ..VirtioNetHdr::default()
                }
                .to_bytes();
                mem.write_slice(&hdr[..layout.hdr_len], posted.buf)
                    .map_err(QueueError::GuestMemory)?;
                let total = u32::try_from(layout.hdr_len).expect("12 bytes") + len;
                queue.add_used(mem, posted.head, total)?;
                stats.rx_packets += 1;
                stats.rx_bytes += u64::from(len);
            }
            if n < self.lens.len() {
                break;
            }
        }
        let cancelled = port.rx_cancelled();
        self.give_back(queue, cancelled);
        Ok(used)
    }

    /// Posts guest buffers from the avail ring to the port, a burst at a time, until the ring
    /// is empty or the port is full. Malformed chains go back to the guest unused, through
    /// `on_bad_chain` for counting.
    pub fn refill(
        &mut self,
        port: &mut dyn Port,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        hdr_len: usize,
        mut on_bad_chain: impl FnMut(ChainFault),
    ) -> Result<Refill, QueueError> {
        let Some(frame_len) = port.rx_direct_buffer_len() else {
            return Ok(Refill::NeedsCopy);
        };
        let queue_size = queue.size();
        let mut total = 0;
        loop {
            let mut k = 0;
            let mut too_small = false;
            while k < BURST_SIZE {
                let Some(chain) = queue.pop_descriptor_chain(mem) else {
                    break;
                };
                let head = chain.head_index();
                match qualify(chain, mem, queue_size, hdr_len, frame_len) {
                    Qualified::Buffer(buf) => {
                        self.batch[k] = Posted { head, buf };
                        self.iovas[k] = buf.0 + hdr_len as u64;
                        k += 1;
                    }
                    Qualified::Bad(fault) => {
                        queue.add_used(mem, head, 0)?;
                        on_bad_chain(fault);
                    }
                    Qualified::TooSmall => {
                        chain::give_back(queue, 1);
                        too_small = true;
                        break;
                    }
                }
            }
            let taken = port.rx_post(&self.iovas[..k]);
            self.posted.extend(&self.batch[..taken]);
            chain::give_back(queue, k - taken);
            total += taken;
            if too_small {
                return Ok(Refill::NeedsCopy);
            }
            if k < BURST_SIZE || taken < k {
                return Ok(Refill::Posted(total));
            }
        }
    }

    /// Takes every posted buffer back: the port stops writing, the buffers it filled go to the
    /// guest, the rest back to the avail ring. Returns whether it used any chain.
    pub fn take_back(
        &mut self,
        port: &mut dyn Port,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        layout: RxLayout,
        stats: &mut NetStats,
    ) -> Result<bool, QueueError> {
        let unfilled = port.rx_unpost();
        let used = self.complete(port, queue, mem, layout, stats)?;
        self.give_back(queue, unfilled);
        Ok(used)
    }

    /// Forgets every posted buffer (the connection ended; the port was stopped).
    pub fn clear(&mut self) {
        self.posted.clear();
    }

    /// The `n` newest posted buffers go back to the avail ring.
    fn give_back(&mut self, queue: &mut Queue, n: usize) {
        if n > 0 {
            let keep = self.posted.len() - n;
            self.posted.truncate(keep);
            chain::give_back(queue, n);
        }
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::mock::MockSplitQueue;

    use super::*;

    const LAYOUT: RxLayout = RxLayout {
        hdr_len: 12,
        mergeable: true,
    };

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn wdesc(addr: u64, len: u32, next: Option<u16>) -> RawDescriptor {
        let mut flags = u16::try_from(VRING_DESC_F_WRITE).unwrap();
        if next.is_some() {
            flags |= u16::try_from(VRING_DESC_F_NEXT).unwrap();
        }
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next.unwrap_or(0)))
    }

    /// A port that takes up to `room` posted buffers and fills them as told.
    #[derive(Default)]
    struct FakeDirect {
        room: usize,
        posted: Vec<u64>,
        fill: VecDeque<u32>,
        unposted: usize,
    }

    impl Port for FakeDirect {
        fn name(&self) -> &str {
            "fake"
        }
        fn offloads(&self) -> vf_dataplane::Offloads {
            vf_dataplane::Offloads::default()
        }
        fn set_rx_offloads(&mut self, _: vf_dataplane::Offloads) -> std::io::Result<()> {
            Ok(())
        }
        fn rx_burst(&mut self, _: &mut vf_dataplane::RxBurst) -> usize {
            0
        }
        fn tx_burst(&mut self, _: &vf_dataplane::TxBurst) -> usize {
            0
        }
        fn tx_completed(&mut self) -> usize {
            0
        }
        fn link_state(&self) -> vf_dataplane::LinkState {
            vf_dataplane::LinkState::Up
        }
        fn stats(&self) -> vf_dataplane::PortStats {
            vf_dataplane::PortStats::default()
        }
        fn rx_ready_fd(&self) -> Option<std::os::fd::RawFd> {
            None
        }
        fn rx_direct_buffer_len(&self) -> Option<usize> {
            Some(2048)
        }
        fn rx_post(&mut self, iovas: &[u64]) -> usize {
            let n = iovas.len().min(self.room - self.posted.len());
            self.posted.extend(&iovas[..n]);
            n
        }
        fn rx_filled(&mut self, lens: &mut [u32]) -> usize {
            let mut n = 0;
            while n < lens.len()
                && let Some(len) = self.fill.pop_front()
            {
                lens[n] = len;
                self.posted.remove(0);
                n += 1;
            }
            n
        }
        fn rx_unpost(&mut self) -> usize {
            let unfilled = self.posted.len() - self.fill.len();
            self.unposted += unfilled;
            self.posted.truncate(self.fill.len());
            unfilled
        }
    }

    /// Posts four single-descriptor 4 KiB rx buffers and returns the queue.
    fn four_large_buffers(vq: &MockSplitQueue<GuestMemoryMmap>) -> Queue {
        let descs: Vec<_> = (0..4)
            .map(|i| wdesc(0x1_0000 + i * 0x1000, 4096, None))
            .collect();
        vq.build_multiple_desc_chains(&descs).unwrap();
        vq.create_queue().unwrap()
    }

    #[test]
    fn qualifying_takes_the_first_buffer_if_it_holds_header_and_frame() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let descs = [
            wdesc(0x1_0000, 12 + 2048, None),
            wdesc(0x2_0000, 2048, None),
            wdesc(0x3_0000, 12, Some(3)),
            wdesc(0x3_1000, 4096, None),
            wdesc(0xFFFF_0000, 4096, None),
        ];
        vq.build_multiple_desc_chains(&descs).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut next = || qualify(q.pop_descriptor_chain(&mem).unwrap(), &mem, 16, 12, 2048);
        assert_eq!(next(), Qualified::Buffer(GuestAddress(0x1_0000)));
        assert_eq!(next(), Qualified::TooSmall, "no room for the header");
        assert_eq!(
            next(),
            Qualified::TooSmall,
            "a header-only first descriptor"
        );
        assert_eq!(next(), Qualified::Bad(ChainFault::OutsideMemory));
    }

    #[test]
    fn filled_buffers_get_a_header_and_go_back_in_order() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let mut q = four_large_buffers(&vq);
        let mut port = FakeDirect {
            room: 3,
            ..FakeDirect::default()
        };
        let mut direct = DirectRx::with_capacity(16);
        let refill = direct.refill(&mut port, &mut q, &mem, 12, |_| panic!("no bad chain"));
        assert_eq!(refill.unwrap(), Refill::Posted(3));
        assert_eq!(
            port.posted,
            [0x1_000c, 0x1_100c, 0x1_200c],
            "after the header"
        );
        assert_eq!(
            q.next_avail(),
            3,
            "the fourth chain waits in the avail ring"
        );
        port.fill.extend([100, 0]);
        let mut stats = NetStats::default();
        assert!(
            direct
                .complete(&mut port, &mut q, &mem, LAYOUT, &mut stats)
                .unwrap()
        );
        let used = vq.used();
        assert_eq!(used.idx().load(), 2);
        let first = used.ring().ref_at(0).unwrap().load();
        assert_eq!((first.id(), first.len()), (0, 112));
        let second = used.ring().ref_at(1).unwrap().load();
        assert_eq!((second.id(), second.len()), (1, 0), "a bad frame: length 0");
        let hdr: [u8; 12] = mem.read_obj(GuestAddress(0x1_0000)).unwrap();
        assert_eq!(VirtioNetHdr::from_bytes(&hdr).num_buffers, 1);
        assert_eq!((stats.rx_packets, stats.rx_errors), (1, 1));
    }

    #[test]
    fn taking_back_returns_unfilled_buffers_to_the_avail_ring() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let mut q = four_large_buffers(&vq);
        let mut port = FakeDirect {
            room: 8,
            ..FakeDirect::default()
        };
        let mut direct = DirectRx::with_capacity(16);
        direct.refill(&mut port, &mut q, &mem, 12, |_| {}).unwrap();
        assert_eq!(q.next_avail(), 4);
        port.fill.push_back(60);
        let mut stats = NetStats::default();
        direct
            .take_back(&mut port, &mut q, &mem, LAYOUT, &mut stats)
            .unwrap();
        assert_eq!(vq.used().idx().load(), 1, "the filled one is delivered");
        assert_eq!(
            q.next_avail(),
            1,
            "the three unfilled ones are available again"
        );
        assert_eq!(direct.posted(), 0);
    }

    #[test]
    fn a_too_small_chain_asks_for_copying_and_stays_available() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.build_multiple_desc_chains(&[wdesc(0x1_0000, 1536, None)])
            .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut port = FakeDirect {
            room: 8,
            ..FakeDirect::default()
        };
        let mut direct = DirectRx::with_capacity(16);
        let refill = direct.refill(&mut port, &mut q, &mem, 12, |_| {});
        assert_eq!(refill.unwrap(), Refill::NeedsCopy);
        assert_eq!(q.next_avail(), 0);
    }
}
