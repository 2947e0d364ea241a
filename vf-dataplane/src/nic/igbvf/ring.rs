//! The VF's rx and tx descriptor rings (datasheet §7.1, §7.2), one queue each.
//!
//! Ownership: the NIC owns descriptors `[head, tail)`; software owns the rest. Rx keeps one
//! descriptor back so the tail never reaches the head (an empty-looking full ring), and writes
//! the tail once per burst. Tx hands whole frames over and reclaims them, oldest first, when
//! the last descriptor of a frame reports DD.
//!
//! The rx ring also watches destinations: the VF's pool filter passes unicast frames only for
//! the addresses the PF assigned to it, so a unicast frame for an address other than the VF's
//! own means the PF moved the VF to a new MAC (`ip link set PF vf N mac ...`), which the PF
//! never announces through the mailbox.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_net::VIRTIO_NET_HDR_F_NEEDS_CSUM;

use super::desc::{
    ADVTXD_IPLEN_MAX, ADVTXD_POPTS_TXSM, ADVTXD_TUCMD_L4T_TCP, AdvRxDesc, AdvTxContextDesc,
    AdvTxDesc, DESC_LEN, RXD_STAT_EOP, RXDEXT_ERR_FRAME_ERR_MASK, split_u64,
};
use super::regs::{
    SRRCTL_BSIZEPKT_SHIFT, SRRCTL_DESCTYPE_ADV_ONEBUF, SRRCTL_DROP_EN, XDCTL_QUEUE_ENABLE, rdbah,
    rdbal, rdh, rdlen, rdt, rxdctl, srrctl, tdbah, tdbal, tdh, tdlen, tdt, txdctl,
};
use crate::dma::iova::IovaAllocator;
use crate::dma::region::{self, DmaMapper, DmaRegion};
use crate::dma::ring_mem::DescRing;
use crate::net_hdr::VirtioNetHdr;
use crate::nic::regs_io::RegisterAccess;
use crate::port::{PortStats, RxBurst, TxBurst};

/// Rx buffer size: 2 KiB holds a 1522-byte frame (SRRCTL.BSIZEPACKET in KiB).
pub const RX_BUF_LEN: usize = 2048;
/// The Ethernet header: shorter frames are errors.
const ETH_HLEN: usize = 14;
/// RXDCTL thresholds as igbvf sets them: prefetch 16, host 8, write-back 1.
const RXDCTL_THRESHOLDS: u32 = 16 | (8 << 8) | (1 << 16);

/// Allocates the memory of a ring of `len` descriptors (and `buf_len` bytes per buffer).
fn regions(
    len: usize,
    buf_len: usize,
    mapper: &Arc<dyn DmaMapper>,
    alloc: &Arc<Mutex<IovaAllocator>>,
) -> Result<(DmaRegion, Option<DmaRegion>), region::Error> {
    let desc = DmaRegion::new(len * DESC_LEN, mapper.clone(), alloc.clone())?;
    let bufs = if buf_len > 0 {
        Some(DmaRegion::new(
            len * buf_len,
            mapper.clone(),
            alloc.clone(),
        )?)
    } else {
        None
    };
    Ok((desc, bufs))
}

/// Whose buffers the rx ring's descriptors point at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxBuffers {
    /// The ring's own pool: the NIC holds all but one, frames are copied out into the caller's
    /// burst ([`RxRing::receive`]).
    Own,
    /// Buffers the caller posts ([`RxRing::post`]), each at least [`RX_BUF_LEN`] bytes: frames
    /// land there directly and the caller learns their lengths ([`RxRing::filled`]).
    Posted,
}

/// The receive ring, on its own buffers or on buffers the caller posts.
pub struct RxRing {
    desc: DescRing<AdvRxDesc>,
    bufs: DmaRegion,
    /// The next descriptor the NIC completes.
    next: usize,
    queue: u32,
    mode: RxBuffers,
    /// Posted mode: where the next posted buffer goes, and how many the NIC holds.
    tail: usize,
    posted: usize,
    /// The frame being received spans descriptors (no EOP yet): its pieces are dropped.
    in_partial_frame: bool,
    /// The VF's MAC when the ring started.
    station: [u8; 6],
    /// Unicast frames for another address since the last [`take_foreign_unicast`] call.
    ///
    /// [`take_foreign_unicast`]: Self::take_foreign_unicast
    foreign_unicast: u64,
}

impl RxRing {
    /// A ring of `len` descriptors (a multiple of 8) for queue `queue`, on its own buffers.
    pub fn new(
        queue: u32,
        len: usize,
        mapper: &Arc<dyn DmaMapper>,
        alloc: &Arc<Mutex<IovaAllocator>>,
    ) -> Result<Self, region::Error> {
        let (desc, bufs) = regions(len, RX_BUF_LEN, mapper, alloc)?;
        Ok(RxRing {
            desc: DescRing::new(desc, len),
            bufs: bufs.expect("rx rings have buffers"),
            next: 0,
            queue,
            mode: RxBuffers::Own,
            tail: 0,
            posted: 0,
            in_partial_frame: false,
            station: [0; 6],
            foreign_unicast: 0,
        })
    }

    fn buf_iova(&self, i: usize) -> u64 {
        self.bufs.iova() + (i * RX_BUF_LEN) as u64
    }

    /// The buffers the ring uses.
    pub fn mode(&self) -> RxBuffers {
        self.mode
    }

    /// Buffers the caller may post before the ring is full (posted mode).
    pub fn room(&self) -> usize {
        match self.mode {
            RxBuffers::Own => 0,
            RxBuffers::Posted => self.desc.len() - 1 - self.posted,
        }
    }

    /// Programs the queue registers and enables the queue for a VF whose address is
    /// `station`, in the ring's mode: on its own buffers every buffer but one goes to the NIC;
    /// in posted mode the ring starts empty. Buffers posted before are forgotten. Returns
    /// whether the NIC reported the queue enabled.
    pub fn start(&mut self, regs: &impl RegisterAccess, station: [u8; 6]) -> bool {
        let q = self.queue;
        self.station = station;
        self.foreign_unicast = 0;
        self.in_partial_frame = false;
        regs.write32(rxdctl(q), 0);
        for i in 0..self.desc.len() {
            let d = match self.mode {
                RxBuffers::Own => AdvRxDesc::read_format(self.buf_iova(i)),
                RxBuffers::Posted => AdvRxDesc::default(),
            };
            self.desc.write(i, d);
        }
        let [lo, hi] = split_u64(self.desc.iova());
        regs.write32(rdbal(q), lo);
        regs.write32(rdbah(q), hi);
        regs.write32(
            rdlen(q),
            u32::try_from(self.desc.byte_len()).expect("ring fits"),
        );
        // SRRCTL.BSIZEPACKET bounds every DMA write into a buffer, own or posted.
        let bsize = u32::try_from(RX_BUF_LEN).expect("2048") >> SRRCTL_BSIZEPKT_SHIFT;
        regs.write32(
            srrctl(q),
            bsize | SRRCTL_DESCTYPE_ADV_ONEBUF | SRRCTL_DROP_EN,
        );
        regs.write32(rdh(q), 0);
        regs.write32(rdt(q), 0);
        regs.write32(rxdctl(q), XDCTL_QUEUE_ENABLE | RXDCTL_THRESHOLDS);
        let enabled = wait_enabled(regs, rxdctl(q));
        self.next = 0;
        self.tail = 0;
        self.posted = 0;
        if self.mode == RxBuffers::Own {
            self.desc.release();
            regs.write32(
                rdt(q),
                u32::try_from(self.desc.len() - 1).expect("ring fits"),
            );
        }
        enabled
    }

    /// Switches between own and posted buffers and restarts the queue (see
    /// [`start`](Self::start)). Posted buffers not yet taken back are forgotten: call
    /// [`unpost`](Self::unpost) and drain [`filled`](Self::filled) first.
    pub fn set_mode(&mut self, regs: &impl RegisterAccess, mode: RxBuffers) -> bool {
        self.stop(regs);
        self.mode = mode;
        let station = self.station;
        self.start(regs, station)
    }

    /// Reads descriptor `self.next` if the NIC is done with it: `Some(length)` for a whole,
    /// good frame, `Some(0)` for a bad one or a piece of a frame that spans descriptors
    /// (counted in `stats.rx_errors`), `None` if not done yet.
    fn take_completed(&mut self, max_len: usize, stats: &mut PortStats) -> Option<usize> {
        if !self.desc.read(self.next).is_done() {
            return None;
        }
        self.desc.acquire();
        let done = self.desc.read(self.next);
        let status = done.status_error();
        let len = usize::from(done.length());
        let eop = status & RXD_STAT_EOP != 0;
        let whole = eop && !self.in_partial_frame;
        self.in_partial_frame = !eop;
        let good = whole
            && status & RXDEXT_ERR_FRAME_ERR_MASK == 0
            && (ETH_HLEN..=max_len.min(RX_BUF_LEN)).contains(&len);
        if good {
            stats.rx_packets += 1;
            stats.rx_bytes += len as u64;
            Some(len)
        } else {
            stats.rx_errors += 1;
            Some(0)
        }
    }

    /// Own buffers: moves completed frames into `burst` (up to its free slots); returns how
    /// many. Bad frames (errors, no EOP, too short) are dropped and counted.
    pub fn receive(
        &mut self,
        regs: &impl RegisterAccess,
        burst: &mut RxBurst,
        stats: &mut PortStats,
    ) -> usize {
        debug_assert_eq!(self.mode, RxBuffers::Own);
        let mut received = 0;
        let mut returned = None;
        while let Some((hdr, buf)) = burst.free_slot() {
            let Some(len) = self.take_completed(buf.len(), stats) else {
                break;
            };
            if len > 0 {
                self.bufs
                    .read_bytes(self.next * RX_BUF_LEN, &mut buf[..len]);
                if is_foreign_unicast(&buf[..6], &self.station) {
                    self.foreign_unicast += 1;
                }
                *hdr = [0; 12];
                burst.commit_slot(len);
                received += 1;
            }
            let fresh = AdvRxDesc::read_format(self.buf_iova(self.next));
            self.desc.write(self.next, fresh);
            returned = Some(self.next);
            self.next = (self.next + 1) % self.desc.len();
        }
        if let Some(last) = returned {
            // Everything up to `last` goes back; `last` itself is the one held back.
            self.desc.release();
            regs.write32(rdt(self.queue), u32::try_from(last).expect("ring fits"));
        }
        received
    }

    /// Posted buffers: gives the NIC the buffers at `iovas` (each at least [`RX_BUF_LEN`]
    /// bytes, reachable by DMA), in order, with one tail write; returns how many it took (the
    /// ring holds at most its size minus one).
    pub fn post(&mut self, regs: &impl RegisterAccess, iovas: &[u64]) -> usize {
        debug_assert_eq!(self.mode, RxBuffers::Posted);
        let n = iovas.len().min(self.room());
        for &iova in &iovas[..n] {
            self.desc.write(self.tail, AdvRxDesc::read_format(iova));
            self.tail = (self.tail + 1) % self.desc.len();
        }
        if n > 0 {
            self.posted += n;
            self.desc.release();
            regs.write32(
                rdt(self.queue),
                u32::try_from(self.tail).expect("ring fits"),
            );
        }
        n
    }

    /// Posted buffers: the NIC's completions, oldest first, as frame lengths in `lens` (0 for
    /// a bad frame: the buffer holds nothing usable); returns how many, at most `lens.len()`.
    pub fn filled(&mut self, lens: &mut [u32], stats: &mut PortStats) -> usize {
        let mut n = 0;
        while n < lens.len() && self.posted > 0 {
            let Some(len) = self.take_completed(RX_BUF_LEN, stats) else {
                break;
            };
            lens[n] = u32::try_from(len).expect("at most 2 KiB");
            n += 1;
            self.posted -= 1;
            self.next = (self.next + 1) % self.desc.len();
        }
        n
    }

    /// Posted buffers: stops the queue and gives back the buffers the NIC had not filled (the
    /// newest ones); returns how many. Buffers it filled before it stopped are still reported
    /// by [`filled`](Self::filled). The ring stays stopped until [`start`](Self::start) or
    /// [`set_mode`](Self::set_mode).
    pub fn unpost(&mut self, regs: &impl RegisterAccess) -> usize {
        self.stop(regs);
        let mut done = 0;
        while done < self.posted
            && self
                .desc
                .read((self.next + done) % self.desc.len())
                .is_done()
        {
            done += 1;
        }
        let unfilled = self.posted - done;
        self.posted = done;
        unfilled
    }

    /// Posted buffers: gives up every buffer the NIC holds, filled or not (the VF is being
    /// reset); returns how many.
    pub fn abandon_posted(&mut self) -> usize {
        std::mem::take(&mut self.posted)
    }

    /// Unicast frames for an address other than the VF's that arrived since the last call:
    /// non-zero means the PF moved the VF to another MAC. Frames received into posted buffers
    /// are not seen here.
    pub fn take_foreign_unicast(&mut self) -> u64 {
        std::mem::take(&mut self.foreign_unicast)
    }

    /// Disables the queue; once this returns `true` the NIC writes no more frames into the
    /// ring's buffers. Frames it completed and [`receive`](Self::receive) did not take are
    /// dropped when the ring starts again.
    pub fn stop(&mut self, regs: &impl RegisterAccess) -> bool {
        regs.write32(rxdctl(self.queue), 0);
        wait_queue(regs, rxdctl(self.queue), false)
    }
}

/// Whether `dst` is a unicast address (I/G bit clear, IEEE 802 §8.2) other than `station`.
fn is_foreign_unicast(dst: &[u8], station: &[u8; 6]) -> bool {
    dst[0] & 1 == 0 && dst != station
}

/// Most bytes one tx data descriptor carries: DTALEN is 16 bits; Linux igb stays at 32 KiB
/// (`IGB_MAX_DATA_PER_TXD`), and so do we.
pub const MAX_DATA_PER_TXD: usize = 1 << 15;

/// `in_flight` entry of a frame the ring refused without giving it to the NIC: complete as soon
/// as it reaches the front.
const NO_DESCRIPTOR: usize = usize::MAX;

/// What a frame asks of the checksum engine, as a context descriptor's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ChecksumContext {
    mac_len: u32,
    ip_len: u32,
    tucmd: u32,
}

/// Why [`checksum_context`] cannot map a frame's request onto the NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct UnsupportedOffload;

/// Maps a virtio-net checksum request onto the 82576's context (datasheet §7.2.3.2.3): the NIC
/// sums from MACLEN + IPLEN to the end of the frame and stores the result at the L4 type's
/// checksum field, so `csum_start` becomes MACLEN (14) + IPLEN and `csum_offset` the L4 type
/// (16: TCP, 6: UDP). The pseudo-header sum is already in the field, as virtio requires of the
/// driver. Other offsets (SCTP's CRC, anything else) have no mapping.
fn checksum_context(hdr: &VirtioNetHdr) -> Result<Option<ChecksumContext>, UnsupportedOffload> {
    if u32::from(hdr.flags) & VIRTIO_NET_HDR_F_NEEDS_CSUM == 0 {
        return Ok(None);
    }
    let tucmd = match u32::from(hdr.csum_offset) {
        TCP_CSUM_OFFSET => ADVTXD_TUCMD_L4T_TCP,
        UDP_CSUM_OFFSET => 0,
        _ => return Err(UnsupportedOffload),
    };
    let mac_len = MACLEN_ETHERNET;
    let ip_len = u32::from(hdr.csum_start)
        .checked_sub(mac_len)
        .filter(|&l| l <= ADVTXD_IPLEN_MAX)
        .ok_or(UnsupportedOffload)?;
    Ok(Some(ChecksumContext {
        mac_len,
        ip_len,
        tucmd,
    }))
}

/// MACLEN for an untagged Ethernet header. A VLAN tag then counts into IPLEN, which moves
/// nothing: the NIC sums from MACLEN + IPLEN either way.
const MACLEN_ETHERNET: u32 = 14;
/// Where a TCP header keeps its checksum.
const TCP_CSUM_OFFSET: u32 = 16;
/// Where a UDP header keeps its checksum.
const UDP_CSUM_OFFSET: u32 = 6;

/// The transmit ring: frames are sent from their IOVAs (the caller's DMA memory or guest
/// memory mapped at its GPA) and reclaimed in order.
pub struct TxRing {
    desc: DescRing<AdvTxDesc>,
    queue: u32,
    tail: usize,
    clean: usize,
    free: usize,
    /// Last descriptor of each frame in flight, oldest first ([`NO_DESCRIPTOR`] for frames
    /// refused without reaching the NIC).
    in_flight: VecDeque<usize>,
    /// The context the NIC holds for this queue (contexts survive across frames, not resets).
    context: Option<ChecksumContext>,
}

impl TxRing {
    /// A ring of `len` descriptors (a multiple of 8) for queue `queue`.
    pub fn new(
        queue: u32,
        len: usize,
        mapper: &Arc<dyn DmaMapper>,
        alloc: &Arc<Mutex<IovaAllocator>>,
    ) -> Result<Self, region::Error> {
        let (desc, _) = regions(len, 0, mapper, alloc)?;
        Ok(TxRing {
            desc: DescRing::new(desc, len),
            queue,
            tail: 0,
            clean: 0,
            free: len - 1,
            in_flight: VecDeque::with_capacity(len),
            context: None,
        })
    }

    /// Programs and enables the queue. Frames in flight are forgotten: call after a reset,
    /// once the caller has accounted for them (see [`abandon`](Self::abandon)).
    pub fn start(&mut self, regs: &impl RegisterAccess) -> bool {
        let q = self.queue;
        regs.write32(txdctl(q), 0);
        for i in 0..self.desc.len() {
            self.desc.write(i, AdvTxDesc::default());
        }
        let [lo, hi] = split_u64(self.desc.iova());
        regs.write32(tdbal(q), lo);
        regs.write32(tdbah(q), hi);
        regs.write32(
            tdlen(q),
            u32::try_from(self.desc.byte_len()).expect("ring fits"),
        );
        regs.write32(tdh(q), 0);
        regs.write32(tdt(q), 0);
        self.tail = 0;
        self.clean = 0;
        self.free = self.desc.len() - 1;
        self.in_flight.clear();
        self.context = None;
        regs.write32(txdctl(q), XDCTL_QUEUE_ENABLE);
        wait_enabled(regs, txdctl(q))
    }

    /// Queues frames `0..n` of `burst` and rings the doorbell once; returns `n` (fewer when the
    /// ring is full). A frame whose offload request the NIC cannot carry out is taken but not
    /// sent: it completes in turn and is counted in `stats.tx_errors`.
    pub fn transmit(
        &mut self,
        regs: &impl RegisterAccess,
        burst: &TxBurst,
        stats: &mut PortStats,
    ) -> usize {
        let mut taken = 0;
        let mut queued = false;
        for i in 0..burst.len() {
            let (hdr, segments, len) = burst.frame(i);
            let Ok(context) = checksum_context(&hdr) else {
                self.in_flight.push_back(NO_DESCRIPTOR);
                stats.tx_errors += 1;
                taken += 1;
                continue;
            };
            let new_context = context.filter(|c| Some(*c) != self.context);
            let data_descs: usize = segments
                .iter()
                .map(|s| (s.len as usize).div_ceil(MAX_DATA_PER_TXD))
                .sum();
            let needed = data_descs + usize::from(new_context.is_some());
            if data_descs == 0 || needed > self.free {
                break;
            }
            if let Some(c) = new_context {
                let d = AdvTxContextDesc::checksum(c.mac_len, c.ip_len, c.tucmd);
                self.desc.write(self.tail, d.into_ring_slot());
                self.tail = (self.tail + 1) % self.desc.len();
                self.context = Some(c);
            }
            let popts = if context.is_some() {
                ADVTXD_POPTS_TXSM
            } else {
                0
            };
            let paylen = u32::try_from(len).unwrap_or(u32::MAX);
            let mut first = true;
            for (k, seg) in segments.iter().enumerate() {
                let mut at = 0usize;
                let seg_len = seg.len as usize;
                while at < seg_len {
                    let piece = (seg_len - at).min(MAX_DATA_PER_TXD);
                    let last = k + 1 == segments.len() && at + piece == seg_len;
                    let d = AdvTxDesc::data(
                        seg.iova + at as u64,
                        u16::try_from(piece).expect("at most 32 KiB"),
                        if first { paylen } else { 0 },
                        if first { popts } else { 0 },
                        last,
                    );
                    self.desc.write(self.tail, d);
                    if last {
                        self.in_flight.push_back(self.tail);
                    }
                    self.tail = (self.tail + 1) % self.desc.len();
                    first = false;
                    at += piece;
                }
            }
            self.free -= needed;
            taken += 1;
            queued = true;
            stats.tx_packets += 1;
            stats.tx_bytes += len as u64;
        }
        if queued {
            self.desc.release();
            regs.write32(
                tdt(self.queue),
                u32::try_from(self.tail).expect("ring fits"),
            );
        }
        taken
    }

    /// Frames the NIC has finished with since the last call, oldest first.
    pub fn reclaim(&mut self) -> usize {
        let mut done = 0;
        while let Some(&last) = self.in_flight.front() {
            if last != NO_DESCRIPTOR {
                if !self.desc.read(last).is_done() {
                    break;
                }
                self.desc.acquire();
                let used = (last + self.desc.len() + 1 - self.clean) % self.desc.len();
                self.free += if used == 0 { self.desc.len() } else { used };
                self.clean = (last + 1) % self.desc.len();
            }
            self.in_flight.pop_front();
            done += 1;
        }
        done
    }

    /// Disables the queue; once this returns `true` the NIC reads no more descriptors or
    /// frames. Frames still in flight are the caller's to [`abandon`](Self::abandon).
    pub fn stop(&mut self, regs: &impl RegisterAccess) -> bool {
        regs.write32(txdctl(self.queue), 0);
        wait_queue(regs, txdctl(self.queue), false)
    }

    /// Frames in flight, given up after the queue stopped or the device reset; the caller
    /// restarts the queue before sending again.
    pub fn abandon(&mut self) -> usize {
        let n = self.in_flight.len();
        self.in_flight.clear();
        n
    }

    /// Frames handed to the NIC and not yet reclaimed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

/// Polls a queue control register until its enable bit reads back set.
fn wait_enabled(regs: &impl RegisterAccess, reg: u32) -> bool {
    wait_queue(regs, reg, true)
}

/// Polls a queue control register until its enable bit reads back as `enabled` (about 10 ms
/// at most): RXDCTL/TXDCTL.ENABLE reads back the queue's actual state, which follows a write
/// once the queue has finished what it was doing.
fn wait_queue(regs: &impl RegisterAccess, reg: u32, enabled: bool) -> bool {
    for _ in 0..100 {
        if (regs.read32(reg) & XDCTL_QUEUE_ENABLE != 0) == enabled {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    false
}

#[cfg(test)]
#[allow(
    clippy::single_range_in_vec_init,
    reason = "lists of one IOVA range, not ranges of values"
)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::io;

    use super::*;
    use crate::nic::igbvf::desc::{ADVTXD_DCMD_EOP, ADVTXD_DTYP_CTXT};
    use crate::port::TxSegment;

    struct NoIommu;
    impl DmaMapper for NoIommu {
        unsafe fn map(&self, _iova: u64, _len: usize, _vaddr: *mut u8) -> io::Result<()> {
            Ok(())
        }
        fn unmap(&self, _iova: u64, _len: usize) -> io::Result<()> {
            Ok(())
        }
    }

    /// Registers as plain memory; queue enable bits read back as written.
    #[derive(Default)]
    struct Regs(RefCell<HashMap<u32, u32>>);
    impl RegisterAccess for Regs {
        fn read32(&self, offset: u32) -> u32 {
            *self.0.borrow().get(&offset).unwrap_or(&0)
        }
        fn write32(&self, offset: u32, value: u32) {
            self.0.borrow_mut().insert(offset, value);
        }
    }

    const STATION: [u8; 6] = [0x52, 0x54, 0, 0xaa, 0, 0x10];

    fn deps() -> (Arc<dyn DmaMapper>, Arc<Mutex<IovaAllocator>>) {
        (
            Arc::new(NoIommu),
            Arc::new(Mutex::new(IovaAllocator::new(&[0..1 << 40]))),
        )
    }

    #[test]
    fn rx_start_holds_one_descriptor_back() {
        let (m, a) = deps();
        let mut rx = RxRing::new(0, 64, &m, &a).unwrap();
        let regs = Regs::default();
        assert!(rx.start(&regs, STATION));
        assert_eq!(regs.read32(rdt(0)), 63);
        assert_eq!(regs.read32(srrctl(0)) & 0x7F, 2, "2 KiB buffers");
    }

    #[test]
    fn rx_completed_frames_are_copied_out_and_descriptors_returned() {
        let (m, a) = deps();
        let mut rx = RxRing::new(0, 64, &m, &a).unwrap();
        let regs = Regs::default();
        rx.start(&regs, STATION);
        // The "NIC" fills buffers 0 and 1 and writes back; buffer 1 has an error.
        rx.bufs.write_bytes(0, &[0xab; 60]);
        let wb = |status: u32, len: u32| AdvRxDesc {
            dw: [0, 0, status.to_le(), len.to_le()],
        };
        rx.desc.write(0, wb(1 | RXD_STAT_EOP, 60));
        rx.desc.write(1, wb(1 | RXD_STAT_EOP | 0x8000_0000, 60));
        let mut burst = RxBurst::new(2048);
        let mut stats = PortStats::default();
        assert_eq!(rx.receive(&regs, &mut burst, &mut stats), 1);
        assert_eq!(burst.peek().unwrap().1, &[0xab; 60][..]);
        assert_eq!((stats.rx_packets, stats.rx_errors), (1, 1));
        assert_eq!(
            regs.read32(rdt(0)),
            1,
            "tail moves once, to the last returned"
        );
        assert!(
            !rx.desc.read(0).is_done(),
            "descriptor handed back in read format"
        );
    }

    /// Writes a good 60-byte frame for `dst` into rx slot `i`, as the NIC would.
    fn nic_receives(rx: &mut RxRing, i: usize, dst: [u8; 6]) {
        let mut frame = [0u8; 60];
        frame[..6].copy_from_slice(&dst);
        rx.bufs.write_bytes(i * RX_BUF_LEN, &frame);
        rx.desc.write(
            i,
            AdvRxDesc {
                dw: [0, 0, (1 | RXD_STAT_EOP).to_le(), 60u32.to_le()],
            },
        );
    }

    /// The "NIC" completes descriptor `i` with `len` bytes and the given EOP.
    fn complete(rx: &mut RxRing, i: usize, len: u32, eop: bool) {
        let status = 1 | if eop { RXD_STAT_EOP } else { 0 };
        rx.desc.write(
            i,
            AdvRxDesc {
                dw: [0, 0, status.to_le(), len.to_le()],
            },
        );
    }

    #[test]
    fn rx_pieces_of_a_frame_spanning_descriptors_are_dropped() {
        let (m, a) = deps();
        let mut rx = RxRing::new(0, 64, &m, &a).unwrap();
        let regs = Regs::default();
        rx.start(&regs, STATION);
        complete(&mut rx, 0, 2048, false);
        complete(&mut rx, 1, 300, true);
        nic_receives(&mut rx, 2, STATION);
        let mut burst = RxBurst::new(2048);
        let mut stats = PortStats::default();
        assert_eq!(rx.receive(&regs, &mut burst, &mut stats), 1);
        assert_eq!(burst.peek().unwrap().1.len(), 60);
        assert_eq!((stats.rx_packets, stats.rx_errors), (1, 2));
    }

    #[test]
    fn posted_buffers_are_filled_in_order_and_unfilled_ones_given_back() {
        let (m, a) = deps();
        let mut rx = RxRing::new(0, 8, &m, &a).unwrap();
        let regs = Regs::default();
        rx.start(&regs, STATION);
        assert!(rx.set_mode(&regs, RxBuffers::Posted));
        assert_eq!(regs.read32(rdt(0)), 0, "a posted ring starts empty");
        let iovas: Vec<u64> = (0..10).map(|i| 0x10_0000 + i * 0x1000).collect();
        assert_eq!(rx.post(&regs, &iovas), 7, "one slot always stays free");
        assert_eq!(regs.read32(rdt(0)), 7);
        assert_eq!(u32::from_le(rx.desc.read(3).dw[0]), 0x10_3000);
        complete(&mut rx, 0, 60, true);
        complete(&mut rx, 1, 9, true);
        let mut lens = [0u32; 4];
        let mut stats = PortStats::default();
        assert_eq!(rx.filled(&mut lens, &mut stats), 2);
        assert_eq!(lens[..2], [60, 0], "a runt frame reads as length 0");
        complete(&mut rx, 2, 100, true);
        assert_eq!(rx.unpost(&regs), 4, "buffers 3 to 6 were never filled");
        assert_eq!(
            rx.filled(&mut lens, &mut stats),
            1,
            "buffer 2 is still reported"
        );
        assert_eq!(lens[0], 100);
        assert_eq!(rx.filled(&mut lens, &mut stats), 0);
        assert!(rx.set_mode(&regs, RxBuffers::Own));
        assert_eq!(regs.read32(rdt(0)), 7, "own buffers again");
    }

    #[test]
    fn rx_unicast_for_another_address_is_reported_once() {
        let (m, a) = deps();
        let mut rx = RxRing::new(0, 64, &m, &a).unwrap();
        let regs = Regs::default();
        rx.start(&regs, STATION);
        nic_receives(&mut rx, 0, STATION);
        nic_receives(&mut rx, 1, [0xff; 6]);
        nic_receives(&mut rx, 2, [0x01, 0x00, 0x5e, 0, 0, 1]);
        let mut burst = RxBurst::new(2048);
        let mut stats = PortStats::default();
        assert_eq!(rx.receive(&regs, &mut burst, &mut stats), 3);
        assert_eq!(
            rx.take_foreign_unicast(),
            0,
            "own, broadcast and multicast frames are expected"
        );
        while burst.pending() > 0 {
            burst.consume();
        }
        nic_receives(&mut rx, 3, [0x52, 0x54, 0, 0xbb, 0, 1]);
        assert_eq!(rx.receive(&regs, &mut burst, &mut stats), 1);
        assert_eq!(rx.take_foreign_unicast(), 1);
        assert_eq!(rx.take_foreign_unicast(), 0, "taken");
    }

    #[test]
    fn tx_frames_use_one_descriptor_per_segment_and_reclaim_in_order() {
        let (m, a) = deps();
        let mut tx = TxRing::new(0, 64, &m, &a).unwrap();
        let regs = Regs::default();
        tx.start(&regs);
        let mut burst = TxBurst::new();
        for segs in [&[60u32][..], &[14, 46]] {
            burst.start_frame();
            for (i, &len) in segs.iter().enumerate() {
                burst.add_segment(TxSegment {
                    addr: 0,
                    len,
                    iova: 0x1000 * (i as u64 + 1),
                });
            }
            burst.commit_frame(VirtioNetHdr::default());
        }
        assert_eq!(tx.transmit(&regs, &burst, &mut PortStats::default()), 2);
        assert_eq!(regs.read32(tdt(0)), 3);
        assert_eq!(tx.in_flight(), 2);
        // The NIC finishes the first frame only.
        let mut d = tx.desc.read(0);
        d.olinfo_status = 1u32.to_le();
        tx.desc.write(0, d);
        assert_eq!(tx.reclaim(), 1);
        assert_eq!(tx.in_flight(), 1);
    }

    fn one_segment_frame(burst: &mut TxBurst, len: u32, hdr: VirtioNetHdr) {
        burst.start_frame();
        burst.add_segment(TxSegment {
            addr: 0,
            len,
            iova: 0x10_0000,
        });
        burst.commit_frame(hdr);
    }

    fn csum_hdr(csum_start: u16, csum_offset: u16) -> VirtioNetHdr {
        VirtioNetHdr {
            flags: u8::try_from(VIRTIO_NET_HDR_F_NEEDS_CSUM).unwrap(),
            csum_start,
            csum_offset,
            ..VirtioNetHdr::default()
        }
    }

    #[test]
    fn needs_csum_becomes_one_context_and_txsm_on_the_data_descriptor() {
        let (m, a) = deps();
        let mut tx = TxRing::new(0, 64, &m, &a).unwrap();
        let regs = Regs::default();
        tx.start(&regs);
        let mut burst = TxBurst::new();
        // Two TCP/IPv4 frames (csum at 34 + 16), then a UDP one (34 + 6).
        one_segment_frame(&mut burst, 100, csum_hdr(34, 16));
        one_segment_frame(&mut burst, 100, csum_hdr(34, 16));
        one_segment_frame(&mut burst, 100, csum_hdr(34, 6));
        let mut stats = PortStats::default();
        assert_eq!(tx.transmit(&regs, &burst, &mut stats), 3);
        assert_eq!(
            regs.read32(tdt(0)),
            5,
            "a context, two data, a new context, one data"
        );
        let ctx = tx.desc.read(0);
        let tucmd = u32::from_le(ctx.cmd_type_len);
        assert_eq!(tucmd & 0x00F0_0000, ADVTXD_DTYP_CTXT);
        assert_ne!(tucmd & ADVTXD_TUCMD_L4T_TCP, 0);
        assert_eq!(u64::from_le(ctx.buffer_addr) & 0xFFFF, (14 << 9) | 20);
        for data in [1, 2, 4] {
            let olinfo = u32::from_le(tx.desc.read(data).olinfo_status);
            assert_ne!(olinfo & ADVTXD_POPTS_TXSM, 0, "descriptor {data}");
        }
        assert_eq!(
            u32::from_le(tx.desc.read(3).cmd_type_len) & ADVTXD_TUCMD_L4T_TCP,
            0,
            "UDP"
        );
        assert_eq!((stats.tx_packets, stats.tx_errors), (3, 0));
    }

    #[test]
    fn a_checksum_request_the_nic_cannot_do_is_dropped_counted_and_completed_in_turn() {
        let (m, a) = deps();
        let mut tx = TxRing::new(0, 64, &m, &a).unwrap();
        let regs = Regs::default();
        tx.start(&regs);
        let mut burst = TxBurst::new();
        one_segment_frame(&mut burst, 60, VirtioNetHdr::default());
        one_segment_frame(&mut burst, 60, csum_hdr(34, 8));
        one_segment_frame(&mut burst, 60, csum_hdr(4, 16));
        let mut stats = PortStats::default();
        assert_eq!(tx.transmit(&regs, &burst, &mut stats), 3);
        assert_eq!((stats.tx_packets, stats.tx_errors), (1, 2));
        assert_eq!(tx.reclaim(), 0, "the refused frames wait behind the first");
        let mut d = tx.desc.read(0);
        d.olinfo_status = 1u32.to_le();
        tx.desc.write(0, d);
        assert_eq!(tx.reclaim(), 3);
    }

    #[test]
    fn a_segment_longer_than_32_kib_is_split_across_descriptors() {
        let (m, a) = deps();
        let mut tx = TxRing::new(0, 64, &m, &a).unwrap();
        let regs = Regs::default();
        tx.start(&regs);
        let mut burst = TxBurst::new();
        one_segment_frame(&mut burst, 70_000, VirtioNetHdr::default());
        assert_eq!(tx.transmit(&regs, &burst, &mut PortStats::default()), 1);
        assert_eq!(regs.read32(tdt(0)), 3);
        let lens: Vec<u32> = (0..3)
            .map(|i| u32::from_le(tx.desc.read(i).cmd_type_len) & 0xFFFF)
            .collect();
        assert_eq!(lens, [32768, 32768, 70_000 - 65536]);
        assert_eq!(u64::from_le(tx.desc.read(2).buffer_addr), 0x10_0000 + 65536);
        assert_ne!(
            u32::from_le(tx.desc.read(2).cmd_type_len) & ADVTXD_DCMD_EOP,
            0
        );
        assert_eq!(
            u32::from_le(tx.desc.read(1).cmd_type_len) & ADVTXD_DCMD_EOP,
            0
        );
    }

    #[test]
    fn stopped_queues_read_back_disabled() {
        let (m, a) = deps();
        let regs = Regs::default();
        let mut rx = RxRing::new(0, 8, &m, &a).unwrap();
        let mut tx = TxRing::new(0, 8, &m, &a).unwrap();
        assert!(rx.start(&regs, STATION) && tx.start(&regs));
        assert!(rx.stop(&regs) && tx.stop(&regs));
        assert_eq!(regs.read32(rxdctl(0)) & XDCTL_QUEUE_ENABLE, 0);
        assert_eq!(regs.read32(txdctl(0)) & XDCTL_QUEUE_ENABLE, 0);
    }

    #[test]
    fn tx_stops_when_the_ring_is_full() {
        let (m, a) = deps();
        let mut tx = TxRing::new(0, 8, &m, &a).unwrap();
        tx.start(&Regs::default());
        let mut burst = TxBurst::new();
        for _ in 0..10 {
            burst.start_frame();
            burst.add_segment(TxSegment {
                addr: 0,
                len: 60,
                iova: 0x1000,
            });
            burst.commit_frame(VirtioNetHdr::default());
        }
        assert_eq!(
            tx.transmit(&Regs::default(), &burst, &mut PortStats::default()),
            7,
            "one slot always stays free"
        );
    }
}
