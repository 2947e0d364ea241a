//! The data path of the driver: send frames on tx, post rx buffers and reassemble received
//! frames (one buffer each, or `num_buffers` of them with VIRTIO_NET_F_MRG_RXBUF), and push raw
//! descriptor chains for malicious-input tests.
//!
//! Invariant: a frame returned by [`NetFrontend::recv_frame`] is exactly the bytes the device
//! reported in the used ring (lengths checked against the buffers), and consumed rx buffers are
//! posted again with the same size, as a real driver refills its ring.

use std::time::{Duration, Instant};

use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::GuestAddress;

use super::Error;
use super::memory::GuestRam;
use super::net::{HDR_LEN, NetHdr};
use super::queue::{Owner, Virtqueue};
use super::session::{NetFrontend, QueueId};
use super::vring::Desc;

/// `VRING_DESC_F_NEXT` as the 16-bit field holds it.
#[expect(
    clippy::cast_possible_truncation,
    reason = "descriptor flags are bits 0..=2"
)]
const F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
/// `VRING_DESC_F_WRITE` as the 16-bit field holds it.
#[expect(
    clippy::cast_possible_truncation,
    reason = "descriptor flags are bits 0..=2"
)]
const F_WRITE: u16 = VRING_DESC_F_WRITE as u16;

/// Where a raw descriptor's `next` field points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// `next` = 0 (meaningful only without `VRING_DESC_F_NEXT`).
    End,
    /// The table index given to entry `i` of the same raw chain (0 is the head: a loop).
    Chain(usize),
    /// This table index, written verbatim (may be out of range).
    Index(u16),
}

/// A descriptor of a raw chain: every field as the caller wants it, flags verbatim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawDesc {
    /// Guest address (need not be inside guest memory).
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// `VRING_DESC_F_*`, written as given.
    pub flags: u16,
    /// What `next` holds.
    pub next: Link,
}

impl RawDesc {
    /// A device-readable descriptor, not linked.
    pub fn readable(addr: u64, len: u32) -> Self {
        RawDesc {
            addr,
            len,
            flags: 0,
            next: Link::End,
        }
    }

    /// A device-writable descriptor, not linked.
    pub fn writable(addr: u64, len: u32) -> Self {
        RawDesc {
            flags: F_WRITE,
            ..RawDesc::readable(addr, len)
        }
    }

    /// Sets `VRING_DESC_F_NEXT` and links to entry `i` of the same chain.
    pub fn then(self, i: usize) -> Self {
        RawDesc {
            flags: self.flags | F_NEXT,
            next: Link::Chain(i),
            ..self
        }
    }
}

/// Links each descriptor to the following one (the last keeps its own link).
pub fn linear(mut descs: Vec<RawDesc>) -> Vec<RawDesc> {
    let n = descs.len();
    for (i, d) in descs.iter_mut().enumerate().take(n.saturating_sub(1)) {
        *d = d.then(i + 1);
    }
    descs
}

/// A frame received on the rx queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxFrame {
    /// The header the device wrote.
    pub hdr: NetHdr,
    /// The frame, header excluded.
    pub frame: Vec<u8>,
    /// Used entries (buffers) the frame spanned.
    pub buffers: usize,
}

impl NetFrontend {
    /// Queue `q` and the memory, borrowed apart.
    pub(super) fn q(&mut self, q: QueueId) -> (&mut Virtqueue, &GuestRam) {
        let (queues, ram) = (&mut self.queues, &self.ram);
        (&mut queues[q.index()], ram)
    }

    /// Sends `frame` behind a zeroed header in one descriptor. Returns the chain's head.
    pub fn send(&mut self, frame: &[u8]) -> Result<u16, Error> {
        self.send_split(&NetHdr::default(), frame, &[])
    }

    /// Sends `hdr` + `frame` in one chain whose descriptors hold `segments` bytes each, in order
    /// (empty: one descriptor). The segments cut the 12-byte header and the frame as a single
    /// byte stream, so `[HDR_LEN, n, rest]` puts the header alone in the first descriptor.
    /// When the ring is full, waits up to `FrontendOptions::timeout` for the device to return
    /// enough chains.
    pub fn send_split(
        &mut self,
        hdr: &NetHdr,
        frame: &[u8],
        segments: &[usize],
    ) -> Result<u16, Error> {
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(frame);
        let timeout = self.timeout;
        let (q, ram) = self.q(QueueId::Tx);
        let single = [bytes.len()];
        let segments = if segments.is_empty() {
            &single[..]
        } else {
            segments
        };
        let slot = q.slot_size();
        let fits = |s: &usize| *s > 0 && u32::try_from(*s).is_ok_and(|s| s <= slot);
        if !segments.iter().all(fits) || segments.iter().sum::<usize>() != bytes.len() {
            return Err(Error::InvalidSegments {
                segments: segments.to_vec(),
                total: bytes.len(),
                slot,
            });
        }
        let descs = q.alloc_within(ram, segments.len(), timeout)?;
        let mut offset = 0;
        for (k, (&d, &len)) in descs.iter().zip(segments).enumerate() {
            let addr = q.slot_addr(d);
            ram.write(addr, &bytes[offset..offset + len])?;
            offset += len;
            let (flags, next) = match descs.get(k + 1) {
                Some(&n) => (F_NEXT, n),
                None => (0, 0),
            };
            let len = u32::try_from(len).expect("checked against the slot size");
            q.ring().write_desc(
                ram,
                d,
                Desc {
                    addr: addr.0,
                    len,
                    flags,
                    next,
                },
            )?;
        }
        let head = q.push(ram, descs, Owner::Tx)?;
        q.publish_and_kick(ram)?;
        Ok(head)
    }

    /// Waits until the device returned every tx chain sent with [`Self::send`].
    pub fn wait_tx_idle(&mut self, timeout: Duration) -> Result<(), Error> {
        let (q, ram) = self.q(QueueId::Tx);
        let done = q.wait_until(ram, Instant::now() + timeout, |q, _| {
            Ok(q.tx_in_flight() == 0)
        })?;
        done.then_some(()).ok_or(Error::Timeout {
            what: "the device to return the tx chains",
            timeout,
        })
    }

    /// Offers `count` rx buffers of `size` bytes (one writable descriptor each).
    pub fn post_rx_buffers(&mut self, count: usize, size: u32) -> Result<(), Error> {
        let (q, ram) = self.q(QueueId::Rx);
        if size > q.slot_size() {
            return Err(Error::BufferTooLarge {
                size,
                slot: q.slot_size(),
            });
        }
        for _ in 0..count {
            post_one(q, ram, size)?;
        }
        q.publish_and_kick(ram)
    }

    /// Receives one frame, waiting up to `timeout`. With MRG_RXBUF the frame is the bytes of
    /// `num_buffers` used entries after the header; without, of one entry.
    pub fn recv_frame(&mut self, timeout: Duration) -> Result<RxFrame, Error> {
        let mrg = self.has_feature(VIRTIO_NET_F_MRG_RXBUF);
        let (q, ram) = self.q(QueueId::Rx);
        let size = q.ring().size();
        let ready = q.wait_until(ram, Instant::now() + timeout, |q, ram| {
            let Some(first) = q.rx_done().front() else {
                return Ok(false);
            };
            if !mrg {
                return Ok(true);
            }
            let n = first_header(q, ram, first.head, first.len)?.num_buffers;
            if n == 0 || n > size {
                return Err(Error::BadNumBuffers { num_buffers: n });
            }
            Ok(q.rx_done().len() >= usize::from(n))
        })?;
        if !ready {
            return Err(Error::Timeout {
                what: "a received frame",
                timeout,
            });
        }
        let first = q.take_rx().expect("wait_until saw a completed buffer");
        let hdr = first_header(q, ram, first.head, first.len)?;
        let buffers = if mrg { usize::from(hdr.num_buffers) } else { 1 };
        let mut frame = read_slot(q, ram, first.head, first.len)?.split_off(HDR_LEN);
        let mut sizes = vec![first.size];
        for _ in 1..buffers {
            let next = q.take_rx().expect("wait_until counted num_buffers entries");
            frame.extend_from_slice(&read_slot(q, ram, next.head, next.len)?);
            sizes.push(next.size);
        }
        for size in sizes {
            post_one(q, ram, size)?;
        }
        q.publish_and_kick(ram)?;
        Ok(RxFrame {
            hdr,
            frame,
            buffers,
        })
    }

    /// Whether a completed rx buffer is waiting (after reaping the used ring).
    pub fn rx_pending(&mut self) -> Result<bool, Error> {
        let (q, ram) = self.q(QueueId::Rx);
        q.reap(ram)?;
        Ok(!q.rx_done().is_empty())
    }

    /// Writes `chain` into free descriptors of queue `queue`, makes its first entry available
    /// and kicks. Returns the head index, as the used ring will name it.
    pub fn push_raw(&mut self, queue: QueueId, chain: &[RawDesc]) -> Result<u16, Error> {
        let timeout = self.timeout;
        let (q, ram) = self.q(queue);
        if chain.is_empty() {
            return Err(Error::EmptyChain);
        }
        let descs = q.alloc_within(ram, chain.len(), timeout)?;
        for (raw, &d) in chain.iter().zip(&descs) {
            let next = match raw.next {
                Link::End => 0,
                Link::Index(i) => i,
                Link::Chain(i) => *descs.get(i).ok_or(Error::InvalidRawLink {
                    len: chain.len(),
                    link: i,
                })?,
            };
            q.ring().write_desc(
                ram,
                d,
                Desc {
                    addr: raw.addr,
                    len: raw.len,
                    flags: raw.flags,
                    next,
                },
            )?;
        }
        let head = q.push(ram, descs, Owner::Raw)?;
        q.publish_and_kick(ram)?;
        Ok(head)
    }

    /// Waits until the device returns raw chain `head` of `queue`; returns its used length.
    pub fn wait_raw_used(
        &mut self,
        queue: QueueId,
        head: u16,
        timeout: Duration,
    ) -> Result<u32, Error> {
        let (q, ram) = self.q(queue);
        q.wait_until(ram, Instant::now() + timeout, |q, _| {
            Ok(q.raw_done_contains(head))
        })?;
        q.take_raw(head).ok_or(Error::Timeout {
            what: "the device to return the raw chain",
            timeout,
        })
    }

    /// Allocates `len` bytes of guest memory (16-byte aligned) for raw buffers or indirect
    /// tables, filled with `bytes` (zero-padded).
    pub fn alloc_guest(&mut self, len: u64, bytes: &[u8]) -> Result<GuestAddress, Error> {
        let addr = self.ram.alloc(len.max(1), 16)?;
        self.ram.write(addr, bytes)?;
        Ok(addr)
    }

    /// `hdr` followed by `frame` in newly allocated guest memory, for raw chains: returns the
    /// address of the header; the packet is `HDR_LEN + frame.len()` bytes.
    pub fn packet_in_guest(&mut self, hdr: &NetHdr, frame: &[u8]) -> Result<GuestAddress, Error> {
        let len = (HDR_LEN + frame.len()) as u64;
        let addr = self.alloc_guest(len, &hdr.to_bytes())?;
        self.ram
            .write(GuestAddress(addr.0 + HDR_LEN as u64), frame)?;
        Ok(addr)
    }
}

/// Offers one rx buffer of `size` bytes, without publishing.
fn post_one(q: &mut Virtqueue, ram: &GuestRam, size: u32) -> Result<(), Error> {
    let descs = q.alloc(ram, 1)?;
    let d = descs[0];
    q.ring().write_desc(
        ram,
        d,
        Desc {
            addr: q.slot_addr(d).0,
            len: size,
            flags: F_WRITE,
            next: 0,
        },
    )?;
    q.push(ram, descs, Owner::Rx { size })?;
    Ok(())
}

/// The header at the start of a frame's first rx buffer.
fn first_header(q: &Virtqueue, ram: &GuestRam, head: u16, len: u32) -> Result<NetHdr, Error> {
    if usize::try_from(len).is_ok_and(|l| l < HDR_LEN) {
        return Err(Error::ShortRxBuffer { len });
    }
    let mut b = [0u8; HDR_LEN];
    ram.read(q.slot_addr(head), &mut b)?;
    Ok(NetHdr::from_bytes(&b))
}

/// The `len` bytes the device wrote into `head`'s slot.
fn read_slot(q: &Virtqueue, ram: &GuestRam, head: u16, len: u32) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
    ram.read(q.slot_addr(head), &mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_links_each_entry_to_the_next() {
        let c = linear(vec![
            RawDesc::readable(0, 12),
            RawDesc::readable(16, 60),
            RawDesc::writable(96, 4),
        ]);
        assert_eq!(c[0].next, Link::Chain(1));
        assert_eq!(c[1].next, Link::Chain(2));
        assert_eq!(c[2].next, Link::End);
        assert_eq!(c[0].flags, F_NEXT);
        assert_eq!(c[2].flags, F_WRITE);
    }

    #[test]
    fn then_keeps_the_write_flag() {
        let d = RawDesc::writable(0, 1).then(0);
        assert_eq!(d.flags, F_WRITE | F_NEXT);
        assert_eq!(d.next, Link::Chain(0));
    }
}
