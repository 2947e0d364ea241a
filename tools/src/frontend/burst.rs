//! Batched tx for traffic generators: many single-descriptor chains in flight, the avail index
//! published and the device kicked once per batch, used entries reaped in batches.
//!
//! A frame is queued with [`NetFrontend::tx_queue`], whose closure writes the bytes (the
//! virtio-net header first) into the slot of the descriptor it is given, or anywhere else in
//! guest memory, and says where they are; [`NetFrontend::tx_kick`] hands the batch to the device.
//!
//! Invariant: nothing here allocates or makes a system call per frame; the only per-batch system
//! calls are the kick and, when the ring is full, the sleep on the call eventfd.

use std::time::{Duration, Instant};

use vm_memory::GuestAddress;

use super::Error;
use super::memory::GuestRam;
use super::net::{HDR_LEN, NetHdr};
use super::queue::Owner;
use super::session::{NetFrontend, QueueId};
use super::vring::Desc;

/// The descriptor a frame is being queued in, and the buffer slot that belongs to it. The slot
/// is the frame's alone until the device returns the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxSlot {
    /// Descriptor index, also the chain's head.
    pub desc: u16,
    /// Guest address of the descriptor's slot.
    pub addr: GuestAddress,
    /// Bytes of the slot.
    pub size: u32,
}

/// Where the bytes of a queued frame (virtio-net header, then the frame) are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxBuffer {
    /// Guest address of the first header byte.
    pub addr: GuestAddress,
    /// Bytes of header plus frame.
    pub len: u32,
}

impl TxSlot {
    /// Writes `hdr` and `frame` at the start of the slot; returns where they are.
    pub fn write_packet(
        &self,
        ram: &GuestRam,
        hdr: &NetHdr,
        frame: &[u8],
    ) -> Result<TxBuffer, Error> {
        let len = HDR_LEN + frame.len();
        let fits = u32::try_from(len).ok().filter(|len| *len <= self.size);
        let Some(len) = fits else {
            return Err(Error::TxFrameTooLarge {
                len,
                slot: self.size,
            });
        };
        ram.write(self.addr, &hdr.to_bytes())?;
        ram.write(GuestAddress(self.addr.0 + HDR_LEN as u64), frame)?;
        Ok(TxBuffer {
            addr: self.addr,
            len,
        })
    }
}

impl NetFrontend {
    /// Tx descriptors free for new chains, as of the last reap.
    pub fn tx_free(&self) -> usize {
        self.queue(QueueId::Tx).ring().free_count()
    }

    /// Queues one frame in a chain of one device-readable descriptor, without publishing it:
    /// `fill` writes the bytes and returns where they are. Returns the chain's head, or `None`
    /// when no descriptor is free (reap with [`Self::wait_tx_free`]). The device sees the frame
    /// after [`Self::tx_kick`].
    pub fn tx_queue(
        &mut self,
        fill: impl FnOnce(&GuestRam, TxSlot) -> Result<TxBuffer, Error>,
    ) -> Result<Option<u16>, Error> {
        let (q, ram) = self.q(QueueId::Tx);
        let Some(desc) = q.ring_mut().alloc_one() else {
            return Ok(None);
        };
        let slot = TxSlot {
            desc,
            addr: q.slot_addr(desc),
            size: q.slot_size(),
        };
        let queued = fill(ram, slot).and_then(|buf| {
            let d = Desc {
                addr: buf.addr.0,
                len: buf.len,
                flags: 0,
                next: 0,
            };
            q.ring().write_desc(ram, desc, d)?;
            q.push_single(ram, desc, Owner::Tx)
        });
        if queued.is_err() {
            // Not made available: the descriptor is still ours to give back.
            q.ring_mut().release(&[desc]);
        }
        queued.map(Some)
    }

    /// Publishes every frame queued since the last kick and kicks the device once.
    pub fn tx_kick(&mut self) -> Result<(), Error> {
        let (q, ram) = self.q(QueueId::Tx);
        q.publish_and_kick(ram)
    }

    /// Reaps tx completions until at least `min` descriptors are free or no tx chain is in
    /// flight, sleeping on the call eventfd in between, for up to `timeout`.
    pub fn wait_tx_free(&mut self, min: usize, timeout: Duration) -> Result<(), Error> {
        let (q, ram) = self.q(QueueId::Tx);
        let done = q.wait_until(ram, Instant::now() + timeout, |q, _| {
            Ok(q.ring().free_count() >= min || q.tx_in_flight() == 0)
        })?;
        done.then_some(()).ok_or(Error::Timeout {
            what: "the device to return tx chains",
            timeout,
        })
    }

    /// The submission number the next chain on tx gets: a mark for
    /// [`Self::tx_oldest_in_flight`].
    pub fn tx_submitted(&self) -> u64 {
        self.queue(QueueId::Tx).submitted()
    }

    /// The submission number of the oldest tx chain still in flight (as of the last reap), or
    /// `None`: every chain queued before mark `m` of [`Self::tx_submitted`] is done once this
    /// is `None` or `>= m`.
    pub fn tx_oldest_in_flight(&self) -> Option<u64> {
        self.queue(QueueId::Tx).oldest_tx_in_flight()
    }

    /// Tx chains the device has returned since the start (every path, raw chains excepted).
    pub fn tx_completed(&self) -> u64 {
        self.queue(QueueId::Tx).tx_done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::memory::{MemoryLayout, PAGE_SIZE};

    #[test]
    fn write_packet_puts_the_header_then_the_frame_and_refuses_overflow() {
        let mut ram = GuestRam::new(MemoryLayout {
            size: 1 << 20,
            regions: 1,
        })
        .unwrap();
        let slot = TxSlot {
            desc: 3,
            addr: ram.alloc(128, PAGE_SIZE).unwrap(),
            size: 128,
        };
        let hdr = NetHdr {
            flags: 1,
            csum_start: 34,
            csum_offset: 6,
            ..NetHdr::default()
        };
        let buf = slot.write_packet(&ram, &hdr, &[0xab; 100]).unwrap();
        assert_eq!(
            buf,
            TxBuffer {
                addr: slot.addr,
                len: 112
            }
        );
        let mut back = [0u8; 112];
        ram.read(slot.addr, &mut back).unwrap();
        assert_eq!(back[..HDR_LEN], hdr.to_bytes());
        assert!(back[HDR_LEN..].iter().all(|b| *b == 0xab));
        assert!(matches!(
            slot.write_packet(&ram, &hdr, &[0; 117]),
            Err(Error::TxFrameTooLarge {
                len: 129,
                slot: 128
            })
        ));
    }
}
