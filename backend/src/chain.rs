//! The one place where guest descriptor chains are walked and validated.
//!
//! Every descriptor must have the direction the queue expects, a non-zero length, and lie
//! inside guest memory for its full length, and the chain must end within the queue's bounds:
//! virtio-queue's iterator stops silently at loops, over-long chains and unreadable indirect
//! tables, so a chain whose last yielded descriptor still has NEXT set is refused. Its length
//! bound restarts at the size of an indirect table, so the walk also counts descriptors and
//! refuses more than the queue size (virtio 1.2 §2.7.5.3.1 forbids such chains). Only ranges
//! that pass reach the caller, and from there a port.

use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap};

/// Why a descriptor chain was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainFault {
    /// A descriptor points (partly) outside guest memory, or its range wraps.
    OutsideMemory,
    /// The chain loops, is longer than the queue, or names a descriptor that does not exist.
    Unterminated,
    /// A descriptor of length 0.
    ZeroLength,
    /// A device-writable descriptor where the device reads, or the reverse.
    WrongDirection,
    /// More pieces than the caller can hold.
    TooManySegments,
}

/// Which way the device uses a queue's buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The device reads (tx): descriptors must not be write-only.
    DeviceReads,
    /// The device writes (rx): descriptors must be write-only.
    DeviceWrites,
}

/// Gives the `chains` last taken from the avail ring back to it: the avail position moves back
/// and they are read again, from the avail ring where the driver leaves them until they are
/// used (virtio 1.2 §2.7.13).
pub fn give_back(queue: &mut virtio_queue::Queue, chains: usize) {
    use virtio_queue::QueueT;
    if chains > 0 {
        let back = u16::try_from(chains).expect("at most a queue's worth of chains");
        queue.set_next_avail(queue.next_avail().wrapping_sub(back));
    }
}

/// Walks `chain` of a queue of `queue_size` entries, checking each descriptor, and calls
/// `visit(addr, len)` for each one in order. Stops at the first fault, from the chain or from
/// `visit`.
pub fn walk<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    direction: Direction,
    queue_size: u16,
    mut visit: impl FnMut(GuestAddress, usize) -> Result<(), ChainFault>,
) -> Result<(), ChainFault>
where
    M: std::ops::Deref,
    M::Target: GuestMemory,
{
    let mut terminated = false;
    for (count, desc) in chain.enumerate() {
        if count >= usize::from(queue_size) {
            return Err(ChainFault::Unterminated);
        }
        terminated = !desc.has_next();
        let expected_write = direction == Direction::DeviceWrites;
        if desc.is_write_only() != expected_write {
            return Err(ChainFault::WrongDirection);
        }
        let len = desc.len() as usize;
        if len == 0 {
            return Err(ChainFault::ZeroLength);
        }
        if !GuestMemoryBackend::check_range(mem, desc.addr(), len) {
            return Err(ChainFault::OutsideMemory);
        }
        visit(desc.addr(), len)?;
    }
    if terminated {
        Ok(())
    } else {
        Err(ChainFault::Unterminated)
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::mock::MockSplitQueue;

    use super::*;

    #[test]
    fn regression_chain_longer_than_the_queue_is_refused() {
        // virtio-queue bounds a chain by the size of the table it is walking, which for an
        // indirect table is the table's own length: the queue size must bound it too.
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let descs: Vec<_> = (0..3u64)
            .map(|i| RawDescriptor::from(SplitDescriptor::new(0x8000 + i * 0x100, 64, 0, 0)))
            .collect();
        let ok = walk(
            vq.build_desc_chain(&descs).unwrap(),
            &mem,
            Direction::DeviceReads,
            3,
            |_, _| Ok(()),
        );
        assert_eq!(ok, Ok(()));
        let chain = vq.build_desc_chain(&descs).unwrap();
        let too_long = walk(chain, &mem, Direction::DeviceReads, 2, |_, _| Ok(()));
        assert_eq!(too_long, Err(ChainFault::Unterminated));
    }
}
