//! Port frames into guest rx buffers.
//!
//! A frame is the virtio-net header followed by the frame bytes. Without MRG_RXBUF it must fit
//! in one chain; with it, it spans as many chains as it needs and the header's `num_buffers`
//! says how many (virtio 1.2 §5.1.6.4). Chains are first gathered and validated, and only when
//! they can hold the whole frame are bytes written, so a frame is never written outside the
//! buffers the guest gave, and a guest short of buffers loses nothing: its chains go back and
//! the frame waits.

use vf_dataplane::VirtioNetHdr;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use crate::chain::{self, ChainFault, Direction};

/// Chains one frame may span (a 64 KiB frame over 512-byte buffers needs 129).
pub const MAX_RX_CHAINS: usize = 256;
/// Descriptors those chains may have in all.
pub const MAX_RX_SEGMENTS: usize = 512;

/// How frames are laid out in the guest's buffers, from the negotiated features.
#[derive(Clone, Copy, Debug)]
pub struct RxLayout {
    /// Header length: 12 with VERSION_1 or MRG_RXBUF, else 10.
    pub hdr_len: usize,
    /// Whether MRG_RXBUF was negotiated.
    pub mergeable: bool,
}

/// What became of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Written into this many chains, which are on the used ring.
    Delivered(usize),
    /// The guest has not enough buffers posted; nothing was consumed. Try again after a kick.
    NoBuffers,
    /// The guest's buffers cannot hold this frame (too small without MRG_RXBUF, or too many
    /// pieces); the frame is dropped and the buffers are left for the next one.
    TooBig,
}

#[derive(Clone, Copy, Debug, Default)]
struct GatheredChain {
    head: u16,
    first_segment: usize,
    segments: usize,
}

/// Reusable space for one frame's chains; made once per worker.
pub struct RxScratch {
    segments: Vec<(GuestAddress, usize)>,
    chains: Vec<GatheredChain>,
}

impl Default for RxScratch {
    fn default() -> Self {
        Self::new()
    }
}

impl RxScratch {
    /// Scratch with room for [`MAX_RX_CHAINS`] and [`MAX_RX_SEGMENTS`].
    pub fn new() -> Self {
        RxScratch {
            segments: Vec::with_capacity(MAX_RX_SEGMENTS),
            chains: Vec::with_capacity(MAX_RX_CHAINS),
        }
    }
}

/// Errors that stop the rx path: the queue itself is unusable.
pub type QueueError = virtio_queue::Error;

/// Delivers one frame. `on_bad_chain` is told of each chain refused on the way (it has already
/// been returned to the guest with length 0).
pub fn deliver_frame(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    layout: RxLayout,
    hdr: VirtioNetHdr,
    frame: &[u8],
    scratch: &mut RxScratch,
    mut on_bad_chain: impl FnMut(ChainFault),
) -> Result<Delivery, QueueError> {
    let total = layout.hdr_len + frame.len();
    let queue_size = queue.size();
    scratch.segments.clear();
    scratch.chains.clear();
    let mut rewind_to = queue.next_avail();
    let mut capacity = 0;
    while capacity < total {
        if scratch.chains.len() == MAX_RX_CHAINS
            || (!layout.mergeable && !scratch.chains.is_empty())
        {
            queue.set_next_avail(rewind_to);
            return Ok(Delivery::TooBig);
        }
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            queue.set_next_avail(rewind_to);
            return Ok(Delivery::NoBuffers);
        };
        let head = chain.head_index();
        let first_segment = scratch.segments.len();
        let mut chain_capacity = 0;
        let walked = chain::walk(
            chain,
            mem,
            Direction::DeviceWrites,
            queue_size,
            |addr, len| {
                if scratch.segments.len() == MAX_RX_SEGMENTS {
                    return Err(ChainFault::TooManySegments);
                }
                scratch.segments.push((addr, len));
                chain_capacity += len;
                Ok(())
            },
        );
        match walked {
            Ok(()) => {
                scratch.chains.push(GatheredChain {
                    head,
                    first_segment,
                    segments: scratch.segments.len() - first_segment,
                });
                capacity += chain_capacity;
            }
            Err(ChainFault::TooManySegments) if !scratch.chains.is_empty() => {
                // The chain is fine; the frame needs more pieces than we gather.
                queue.set_next_avail(rewind_to);
                return Ok(Delivery::TooBig);
            }
            Err(fault) => {
                scratch.segments.truncate(first_segment);
                // Return the bad chain so the guest does not leak it. Chains gathered before
                // it cannot be rewound past it: give them back empty too.
                for gathered in &scratch.chains {
                    queue.add_used(mem, gathered.head, 0)?;
                }
                queue.add_used(mem, head, 0)?;
                on_bad_chain(fault);
                if !scratch.chains.is_empty() {
                    scratch.chains.clear();
                    scratch.segments.clear();
                    capacity = 0;
                }
                rewind_to = queue.next_avail();
            }
        }
    }

    let num_buffers = u16::try_from(scratch.chains.len()).expect("at most MAX_RX_CHAINS");
    let hdr_bytes = VirtioNetHdr { num_buffers, ..hdr }.to_bytes();
    let mut stream = FrameStream {
        hdr: &hdr_bytes[..layout.hdr_len],
        frame,
        offset: 0,
    };
    for gathered in &scratch.chains {
        let mut used = 0;
        let segments =
            &scratch.segments[gathered.first_segment..gathered.first_segment + gathered.segments];
        for &(addr, len) in segments {
            used += stream.write_to(mem, addr, len)?;
        }
        let used = u32::try_from(used).expect("a chain holds at most 4 GiB");
        queue.add_used(mem, gathered.head, used)?;
    }
    Ok(Delivery::Delivered(scratch.chains.len()))
}

/// The bytes a guest receives for one frame: header, then frame.
struct FrameStream<'a> {
    hdr: &'a [u8],
    frame: &'a [u8],
    offset: usize,
}

impl FrameStream<'_> {
    /// Writes the next bytes, at most `len`, at `addr` (checked to be guest memory when the
    /// chain was walked); returns how many were written.
    fn write_to(
        &mut self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        len: usize,
    ) -> Result<usize, QueueError> {
        let mut written = 0;
        while written < len && self.offset < self.hdr.len() + self.frame.len() {
            let src = if self.offset < self.hdr.len() {
                &self.hdr[self.offset..]
            } else {
                &self.frame[self.offset - self.hdr.len()..]
            };
            let n = src.len().min(len - written);
            mem.write_slice(&src[..n], addr.unchecked_add(written as u64))
                .map_err(QueueError::GuestMemory)?;
            written += n;
            self.offset += n;
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::mock::MockSplitQueue;

    use super::*;

    const MRG: RxLayout = RxLayout {
        hdr_len: 12,
        mergeable: true,
    };
    const NO_MRG: RxLayout = RxLayout {
        hdr_len: 12,
        mergeable: false,
    };

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn wdesc(addr: u64, len: u32) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(
            addr,
            len,
            u16::try_from(VRING_DESC_F_WRITE).unwrap(),
            0,
        ))
    }

    /// Posts `n` single-descriptor buffers of `size` bytes at 0x10000 + i * 0x1000.
    fn post(vq: &MockSplitQueue<GuestMemoryMmap>, n: u16, size: u32) {
        let descs: Vec<_> = (0..n)
            .map(|i| wdesc(0x10000 + u64::from(i) * 0x1000, size))
            .collect();
        vq.add_desc_chains(&descs, 0).unwrap();
    }

    fn frame(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| u8::try_from((i * 7 + 3) % 256).unwrap())
            .collect()
    }

    fn used(vq: &MockSplitQueue<GuestMemoryMmap>, i: u16) -> (u32, u32) {
        let e = vq.used().ring().ref_at(i as usize).unwrap().load();
        (e.id(), e.len())
    }

    #[test]
    fn rx_mrg_frame_spans_buffers_and_counts_them() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        post(&vq, 4, 512);
        let mut q: Queue = vq.create_queue().unwrap();
        let data = frame(1000);
        let r = deliver_frame(
            &mut q,
            &mem,
            MRG,
            VirtioNetHdr::default(),
            &data,
            &mut RxScratch::new(),
            |_| {},
        )
        .unwrap();
        assert_eq!(r, Delivery::Delivered(2));
        assert_eq!(used(&vq, 0), (0, 512));
        assert_eq!(used(&vq, 1), (1, 1012 - 512));
        let mut got = vec![0u8; 1012];
        mem.read_slice(&mut got[..512], GuestAddress(0x10000))
            .unwrap();
        mem.read_slice(&mut got[512..], GuestAddress(0x11000))
            .unwrap();
        let hdr = VirtioNetHdr::from_bytes(got[..12].try_into().unwrap());
        assert_eq!(hdr.num_buffers, 2);
        assert_eq!(&got[12..], &data[..]);
    }

    #[test]
    fn rx_no_mrg_frame_fills_one_buffer() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        post(&vq, 2, 2048);
        let mut q: Queue = vq.create_queue().unwrap();
        let data = frame(1514);
        let r = deliver_frame(
            &mut q,
            &mem,
            NO_MRG,
            VirtioNetHdr::default(),
            &data,
            &mut RxScratch::new(),
            |_| {},
        )
        .unwrap();
        assert_eq!(r, Delivery::Delivered(1));
        assert_eq!(used(&vq, 0), (0, 1526));
    }

    #[test]
    fn rx_no_mrg_frame_larger_than_buffer_is_dropped_and_buffer_kept() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        post(&vq, 2, 512);
        let mut q: Queue = vq.create_queue().unwrap();
        let r = deliver_frame(
            &mut q,
            &mem,
            NO_MRG,
            VirtioNetHdr::default(),
            &frame(1000),
            &mut RxScratch::new(),
            |_| {},
        )
        .unwrap();
        assert_eq!(r, Delivery::TooBig);
        assert_eq!(q.next_avail(), 0, "the buffer stays for the next frame");
    }

    #[test]
    fn rx_without_enough_buffers_consumes_nothing() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        post(&vq, 1, 512);
        let mut q: Queue = vq.create_queue().unwrap();
        let r = deliver_frame(
            &mut q,
            &mem,
            MRG,
            VirtioNetHdr::default(),
            &frame(1000),
            &mut RxScratch::new(),
            |_| {},
        )
        .unwrap();
        assert_eq!(r, Delivery::NoBuffers);
        assert_eq!(q.next_avail(), 0);
        assert_eq!(vq.used().idx().load(), 0);
    }

    #[test]
    fn rx_bad_chain_is_returned_empty_and_the_next_buffer_is_used() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        // Chain 0 points outside guest memory; chain 1 is read-only; chain 2 is good.
        let descs = [
            wdesc(0xff_0000_0000, 512),
            RawDescriptor::from(SplitDescriptor::new(0x11000, 512, 0, 0)),
            wdesc(0x12000, 2048),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut faults = Vec::new();
        let r = deliver_frame(
            &mut q,
            &mem,
            MRG,
            VirtioNetHdr::default(),
            &frame(100),
            &mut RxScratch::new(),
            |f| faults.push(f),
        )
        .unwrap();
        assert_eq!(r, Delivery::Delivered(1));
        assert_eq!(
            faults,
            [ChainFault::OutsideMemory, ChainFault::WrongDirection]
        );
        assert_eq!(used(&vq, 0), (0, 0));
        assert_eq!(used(&vq, 1), (1, 0));
        assert_eq!(used(&vq, 2), (2, 112));
    }
}
