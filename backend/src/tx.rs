//! Guest tx chains to port frames.
//!
//! A tx chain is the virtio-net header followed by the frame, in device-readable descriptors
//! (virtio 1.2 §5.1.6.2). The chain is validated by [`chain::walk`] before any of its bytes is
//! used; the frame part becomes segments that carry both the host address and the guest
//! physical address (the IOVA a VF would use), one per memory region the range touches.

use vf_dataplane::net_hdr::{VIRTIO_NET_HDR_V1_LEN, VirtioNetHdr};
use vf_dataplane::{TxBurst, TxSegment};
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::chain::{self, ChainFault, Direction};

/// Ethernet header length: a frame shorter than this has no destination to go to.
pub const ETH_HLEN: usize = 14;
/// An 802.1Q tag, allowed on top of the MTU.
pub const VLAN_HLEN: usize = 4;

/// Why a tx chain was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxDrop {
    /// The chain itself is malformed or points outside guest memory.
    BadChain(ChainFault),
    /// Shorter than the virtio-net header plus an Ethernet header.
    TooShort,
    /// Longer than the MTU allows, without segmentation offload.
    Oversize,
    /// Asks for segmentation offload the device did not negotiate.
    UnnegotiatedGso,
}

/// What the tx path needs to know about the negotiated device.
#[derive(Clone, Copy, Debug)]
pub struct TxLimits {
    /// Header length in the chain: 12 with VERSION_1 or MRG_RXBUF, else 10.
    pub hdr_len: usize,
    /// Largest frame without GSO: MTU plus Ethernet and VLAN headers.
    pub max_frame: usize,
    /// Whether the guest may send GSO frames (a HOST_TSO feature was negotiated).
    pub gso_allowed: bool,
}

/// Reads one tx chain, from a queue of `queue_size` entries, into `burst` as a committed frame,
/// or refuses it. `burst` must have room for one more frame.
pub fn chain_to_frame<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    queue_size: u16,
    limits: &TxLimits,
    burst: &mut TxBurst,
) -> Result<(), TxDrop>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    if !burst.start_frame() {
        return Err(TxDrop::BadChain(ChainFault::TooManySegments));
    }
    let result = fill_frame(chain, mem, queue_size, limits, burst);
    match result {
        Ok(hdr) => {
            burst.commit_frame(hdr);
            Ok(())
        }
        Err(drop) => {
            burst.cancel_frame();
            Err(drop)
        }
    }
}

fn fill_frame<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    queue_size: u16,
    limits: &TxLimits,
    burst: &mut TxBurst,
) -> Result<VirtioNetHdr, TxDrop>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut hdr_bytes = [0u8; VIRTIO_NET_HDR_V1_LEN];
    let mut hdr_got = 0;
    chain::walk(
        chain,
        mem,
        Direction::DeviceReads,
        queue_size,
        |mut addr, mut left| {
            if hdr_got < limits.hdr_len {
                let take = (limits.hdr_len - hdr_got).min(left);
                mem.read_slice(&mut hdr_bytes[hdr_got..hdr_got + take], addr)
                    .map_err(|_| ChainFault::OutsideMemory)?;
                hdr_got += take;
                left -= take;
                addr = addr.unchecked_add(take as u64);
            }
            if left > 0 {
                add_segments(mem, addr, left, burst)?;
            }
            Ok(())
        },
    )
    .map_err(TxDrop::BadChain)?;
    if hdr_got < limits.hdr_len || burst.open_frame_len() < ETH_HLEN {
        return Err(TxDrop::TooShort);
    }
    let hdr = VirtioNetHdr::from_bytes(&hdr_bytes);
    if hdr.is_gso() {
        if !limits.gso_allowed {
            return Err(TxDrop::UnnegotiatedGso);
        }
    } else if burst.open_frame_len() > limits.max_frame {
        return Err(TxDrop::Oversize);
    }
    Ok(VirtioNetHdr {
        num_buffers: 0,
        ..hdr
    })
}

/// Adds the guest range `[addr, addr + len)`, already checked to lie in guest memory, as one
/// segment per memory region it touches.
fn add_segments(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    len: usize,
    burst: &mut TxBurst,
) -> Result<(), ChainFault> {
    let mut gpa = addr;
    for slice in GuestMemoryBackend::get_slices(mem, addr, len) {
        let slice = slice.map_err(|_| ChainFault::OutsideMemory)?;
        let seg_len = u32::try_from(slice.len()).map_err(|_| ChainFault::TooManySegments)?;
        let segment = TxSegment {
            addr: slice.ptr_guard().as_ptr() as u64,
            len: seg_len,
            iova: gpa.raw_value(),
        };
        if !burst.add_segment(segment) {
            return Err(ChainFault::TooManySegments);
        }
        gpa = gpa.unchecked_add(slice.len() as u64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::mock::MockSplitQueue;

    use super::*;

    const LIMITS: TxLimits = TxLimits {
        hdr_len: 12,
        max_frame: 1500 + ETH_HLEN + VLAN_HLEN,
        gso_allowed: false,
    };

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u32) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(
            addr,
            len,
            u16::try_from(flags).unwrap(),
            0,
        ))
    }

    fn run(mem: &GuestMemoryMmap, descs: &[RawDescriptor]) -> (Result<(), TxDrop>, TxBurst) {
        let vq = MockSplitQueue::new(mem, 16);
        let chain = vq.build_desc_chain(descs).unwrap();
        let mut burst = TxBurst::new();
        let r = chain_to_frame(chain, mem, 16, &LIMITS, &mut burst);
        (r, burst)
    }

    #[test]
    fn tx_header_and_frame_split_over_descriptors_become_segments() {
        let mem = memory();
        let hdr = VirtioNetHdr::default().to_bytes();
        mem.write_slice(&hdr[..5], GuestAddress(0x8000)).unwrap();
        mem.write_slice(&hdr[5..], GuestAddress(0x9000)).unwrap();
        let (r, burst) = run(
            &mem,
            &[
                desc(0x8000, 5, 0),
                desc(0x9000, 7 + 60, 0),
                desc(0xa000, 40, 0),
            ],
        );
        assert_eq!(r, Ok(()));
        let (_, segs, len) = burst.frame(0);
        assert_eq!(len, 100);
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[0].iova, 0x9007);
        assert_eq!(segs[0].len, 60);
    }

    #[test]
    fn tx_descriptor_outside_guest_memory_is_refused() {
        let mem = memory();
        let (r, burst) = run(&mem, &[desc(0x8000, 12, 0), desc(0xf_fff0, 0x100, 0)]);
        assert_eq!(r, Err(TxDrop::BadChain(ChainFault::OutsideMemory)));
        assert!(burst.is_empty());
        let (r, _) = run(&mem, &[desc(u64::MAX - 8, 100, 0)]);
        assert_eq!(
            r,
            Err(TxDrop::BadChain(ChainFault::OutsideMemory)),
            "an address that wraps"
        );
    }

    #[test]
    fn tx_write_only_descriptor_is_refused() {
        let mem = memory();
        let (r, _) = run(
            &mem,
            &[desc(0x8000, 12, 0), desc(0x9000, 60, VRING_DESC_F_WRITE)],
        );
        assert_eq!(r, Err(TxDrop::BadChain(ChainFault::WrongDirection)));
    }

    #[test]
    fn tx_zero_length_descriptor_is_refused() {
        let mem = memory();
        let (r, _) = run(&mem, &[desc(0x8000, 12, 0), desc(0x9000, 0, 0)]);
        assert_eq!(r, Err(TxDrop::BadChain(ChainFault::ZeroLength)));
    }

    #[test]
    fn tx_frame_over_mtu_without_gso_is_refused() {
        let mem = memory();
        let (r, _) = run(&mem, &[desc(0x8000, 12 + 3000, 0)]);
        assert_eq!(r, Err(TxDrop::Oversize));
        let (r, _) = run(&mem, &[desc(0x8000, 12 + 1518, 0)]);
        assert_eq!(r, Ok(()), "MTU plus Ethernet and VLAN headers fits");
    }

    #[test]
    fn tx_chain_without_a_frame_is_refused() {
        let mem = memory();
        let (r, _) = run(&mem, &[desc(0x8000, 12, 0)]);
        assert_eq!(r, Err(TxDrop::TooShort));
        let (r, _) = run(&mem, &[desc(0x8000, 8, 0)]);
        assert_eq!(r, Err(TxDrop::TooShort));
    }

    #[test]
    fn tx_gso_frame_is_refused_unless_negotiated() {
        let mem = memory();
        let hdr = VirtioNetHdr {
            gso_type: 1,
            gso_size: 1448,
            ..Default::default()
        };
        mem.write_slice(&hdr.to_bytes(), GuestAddress(0x8000))
            .unwrap();
        let (r, _) = run(&mem, &[desc(0x8000, 12 + 3000, 0)]);
        assert_eq!(r, Err(TxDrop::UnnegotiatedGso));
    }

    #[test]
    fn tx_looping_chain_is_refused() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        // 0 -> 1 -> 0 -> ...
        let f = u16::try_from(VRING_DESC_F_NEXT).unwrap();
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(0x8000, 12, f, 1)),
            RawDescriptor::from(SplitDescriptor::new(0x9000, 60, f, 0)),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut q: virtio_queue::Queue = vq.create_queue().unwrap();
        use virtio_queue::QueueOwnedT;
        let chain = q.iter(&mem).unwrap().next().unwrap();
        let mut burst = TxBurst::new();
        assert_eq!(
            chain_to_frame(chain, &mem, 16, &LIMITS, &mut burst),
            Err(TxDrop::BadChain(ChainFault::Unterminated))
        );
        assert!(burst.is_empty());
    }
}
