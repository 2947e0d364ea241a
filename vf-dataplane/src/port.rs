//! The `Port` abstraction: a network endpoint that moves bursts of frames.
//!
//! The daemon owns one [`RxBurst`] and one [`TxBurst`] per worker, made once, and hands them to
//! the port on every call; nothing on this path allocates. A port fills an rx burst only when
//! the caller has delivered everything from the last one, so frames the guest has no room for
//! stay in the burst (and behind it, in the port) instead of being dropped.
//!
//! Tx frames are scatter-gather lists over memory the caller owns (guest memory): each
//! [`TxSegment`] carries both the host address, for ports that copy (TAP), and the IO virtual
//! address, for ports whose device reads it by DMA (a VF behind an IOMMU).

use std::os::fd::RawFd;

use crate::net_hdr::{VIRTIO_NET_HDR_V1_LEN, VirtioNetHdr};

/// Frames per burst: one doorbell, one used-ring update, one notification per burst.
pub const BURST_SIZE: usize = 32;

/// Segments one tx frame may span. Linux's virtio-net sends at most `MAX_SKB_FRAGS + 2`;
/// longer chains are refused by the caller and counted.
pub const MAX_TX_SEGMENTS: usize = 64;

/// Largest frame a port may hand over: a 64 KiB GSO super-frame plus Ethernet and VLAN headers.
pub const MAX_RX_FRAME: usize = 65_535 + 14 + 4;

/// Offloads a port performs or accepts, in virtio-net terms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    /// Partial checksums (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).
    pub csum: bool,
    /// TCPv4 segmentation.
    pub tso4: bool,
    /// TCPv6 segmentation.
    pub tso6: bool,
    /// TCP segmentation with ECN.
    pub tso_ecn: bool,
}

/// Whether the port can pass traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Carrier present.
    Up,
    /// No carrier.
    Down,
}

/// Counters a port keeps about itself. Frames the caller refuses before they reach the port are
/// the caller's to count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames received from the wire side.
    pub rx_packets: u64,
    /// Bytes received, without the virtio-net header.
    pub rx_bytes: u64,
    /// Frames the port received but could not hand over (too short, truncated).
    pub rx_errors: u64,
    /// Frames transmitted.
    pub tx_packets: u64,
    /// Bytes transmitted, without the virtio-net header.
    pub tx_bytes: u64,
    /// Frames the port refused or the device failed to send.
    pub tx_errors: u64,
}

/// A network endpoint the daemon forwards a virtio-net device to.
pub trait Port: Send {
    /// Name for logs (interface name, PCI address).
    fn name(&self) -> &str;

    /// Offloads the port performs on tx and accepts on rx. The daemon offers the matching
    /// virtio-net features and no others.
    fn offloads(&self) -> Offloads;

    /// Tells the port which offloaded frames the receiver (the guest) accepts, from the
    /// negotiated GUEST_* features; the port must do the rest in software or in the device.
    fn set_rx_offloads(&mut self, accepted: Offloads) -> std::io::Result<()>;

    /// Appends received frames to `burst`; returns how many. Appends nothing while the burst
    /// still holds frames the caller has not consumed.
    fn rx_burst(&mut self, burst: &mut RxBurst) -> usize;

    /// Sends frames `0..n` of `burst` and returns `n`; frames from `n` on were not taken
    /// (the device is full) and stay the caller's. The device may read the segments' memory
    /// until [`tx_completed`](Self::tx_completed) reports the frame.
    fn tx_burst(&mut self, burst: &TxBurst) -> usize;

    /// The size of buffer the port receives into directly ("direct rx": frames land in
    /// caller memory, by DMA), which is also the most it writes into one; `None` for ports
    /// that always receive into their own buffers.
    fn rx_direct_buffer_len(&self) -> Option<usize> {
        None
    }

    /// Receives into buffers the caller posts (`true`, see
    /// [`rx_direct_buffer_len`](Self::rx_direct_buffer_len)) or into the port's own (`false`,
    /// [`rx_burst`](Self::rx_burst)). Call it with no buffer posted; returns whether the
    /// device took the change.
    fn set_rx_direct(&mut self, direct: bool) -> bool {
        !direct
    }

    /// Direct rx: gives the device the buffers at IO virtual addresses `iovas`, in order;
    /// returns how many it took (the rest stay the caller's).
    fn rx_post(&mut self, iovas: &[u64]) -> usize {
        let _ = iovas;
        0
    }

    /// Direct rx: how many posted buffers the device filled, oldest first, with each frame's
    /// length in `lens` (0 for a bad frame: that buffer holds nothing usable); at most
    /// `lens.len()`.
    fn rx_filled(&mut self, lens: &mut [u32]) -> usize {
        let _ = lens;
        0
    }

    /// Direct rx: stops the device writing into posted buffers and gives back those it had not
    /// filled, the newest ones; returns how many. Buffers filled before the stop are still
    /// reported by [`rx_filled`](Self::rx_filled); [`set_rx_direct`](Self::set_rx_direct)
    /// starts receiving again.
    fn rx_unpost(&mut self) -> usize {
        0
    }

    /// Direct rx: how many posted buffers the device gave up since the last call (a reset),
    /// filled or not; they are the newest ones still posted, and hold nothing usable.
    fn rx_cancelled(&mut self) -> usize {
        0
    }

    /// How many frames accepted by `tx_burst`, oldest first, the device has finished reading
    /// since the last call; their memory may be reused. Ports that copy (TAP) finish every
    /// frame inside `tx_burst`.
    fn tx_completed(&mut self) -> usize;

    /// How many frames accepted by `tx_burst` the device gave back unsent since the last call
    /// (a reset of the device, [`cancel_tx`](Self::cancel_tx)). They are the newest ones still
    /// in flight, after every frame [`tx_completed`](Self::tx_completed) reported: the caller
    /// may send them again. Call it after `tx_completed`.
    fn tx_cancelled(&mut self) -> usize {
        0
    }

    /// Gives back every frame accepted and not yet completed; the device will not read them
    /// after this returns. They are reported by [`tx_cancelled`](Self::tx_cancelled).
    fn cancel_tx(&mut self) {}

    /// Makes guest memory reachable by the device: each region at IO virtual address = its
    /// guest address, replacing the previous set. `regions` must stay mapped in this process
    /// as long as the port holds `owner`, which it keeps until the next call. Ports that copy
    /// need nothing and accept anything.
    fn set_guest_memory(
        &mut self,
        regions: &[GuestRegion],
        owner: MemoryOwner,
    ) -> Result<(), GuestMemoryError> {
        let _ = (regions, owner);
        Ok(())
    }

    /// Handles what the device signalled outside the data path (the VF's mailbox: a PF reset,
    /// a link change, a new MAC); call it when [`control_fd`](Self::control_fd) is readable
    /// and now and then. Returns what changed.
    fn service(&mut self) -> PortEvents {
        PortEvents::default()
    }

    /// The port's own MAC address, when the device has one (a VF); `None` for ports that carry
    /// any address (TAP).
    fn mac(&self) -> Option<[u8; 6]> {
        None
    }

    /// A file descriptor that becomes readable when the device finished sending frames, for
    /// ports that complete frames after `tx_burst` returns; `None` otherwise.
    fn tx_done_fd(&self) -> Option<RawFd> {
        None
    }

    /// A file descriptor that becomes readable when [`service`](Self::service) has work.
    fn control_fd(&self) -> Option<RawFd> {
        None
    }

    /// How often [`service`](Self::service) should run even when the control fd stays quiet,
    /// as a NIC driver's watchdog does (device events an interrupt can miss, retries after a
    /// failed re-initialisation); `None` when the control fd is enough.
    fn watchdog_interval(&self) -> Option<std::time::Duration> {
        None
    }

    /// Consumes the notification pending on one of the port's fds and lets the device signal
    /// it again. Call it once per wake-up on that fd, before handling it: a device event that
    /// comes in between signals again.
    fn rearm(&mut self, fd: PortFd) {
        let _ = fd;
    }

    /// The port's carrier state.
    fn link_state(&self) -> LinkState;

    /// Counters.
    fn stats(&self) -> PortStats;

    /// A file descriptor that becomes readable when frames wait to be received, for epoll;
    /// `None` for ports that never receive.
    fn rx_ready_fd(&self) -> Option<RawFd>;
}

/// One region of guest memory a port's device may reach: `len` bytes at guest physical address
/// `gpa`, mapped in this process at `host_addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRegion {
    /// Guest physical address of byte 0 (the IO virtual address it gets).
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Where this process has it mapped.
    pub host_addr: u64,
}

/// Keeps a set of [`GuestRegion`]s mapped in this process for as long as it is held (the
/// daemon passes its snapshot of guest memory).
pub type MemoryOwner = std::sync::Arc<dyn std::any::Any + Send + Sync>;

/// The port's file descriptors that wake the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortFd {
    /// [`Port::rx_ready_fd`].
    Rx,
    /// [`Port::tx_done_fd`].
    TxDone,
    /// [`Port::control_fd`].
    Control,
}

/// What [`Port::service`] found changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortEvents {
    /// The device was reset and re-initialised (frames in flight were cancelled).
    pub reset: bool,
    /// The carrier state changed.
    pub link_changed: bool,
    /// The port's MAC address changed.
    pub mac_changed: bool,
}

/// Why guest memory cannot be made reachable by a port's device.
#[derive(Debug, thiserror::Error)]
pub enum GuestMemoryError {
    /// A region is not page-aligned (VFIO maps whole pages).
    #[error("guest region at {gpa:#x} ({len:#x} bytes, host {host_addr:#x}) is not page-aligned")]
    Unaligned {
        /// Guest address.
        gpa: u64,
        /// Length.
        len: u64,
        /// Host address.
        host_addr: u64,
    },
    /// A region lies (partly) outside the IO virtual addresses the IOMMU accepts, such as the
    /// MSI window.
    #[error(
        "guest region {gpa:#x}..{end:#x} is outside the IOVA ranges the IOMMU of {device} accepts ({usable})"
    )]
    OutsideIommu {
        /// Guest address.
        gpa: u64,
        /// End of the region.
        end: u64,
        /// The device.
        device: String,
        /// The accepted ranges, printed.
        usable: String,
    },
    /// A region overlaps the daemon's own DMA memory (rings, buffers).
    #[error("guest region {gpa:#x}..{end:#x} overlaps the daemon's own DMA memory of {device}")]
    OverlapsDaemon {
        /// Guest address.
        gpa: u64,
        /// End of the region.
        end: u64,
        /// The device.
        device: String,
    },
    /// The IOMMU refused the mapping.
    #[error(
        "cannot map guest region {gpa:#x}..{end:#x} for {device} (ENOMEM: raise the locked-memory limit, ulimit -l; ENOSPC: vfio_iommu_type1's dma_entry_limit)"
    )]
    Map {
        /// Guest address.
        gpa: u64,
        /// End of the region.
        end: u64,
        /// The device.
        device: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Frames received by a port, in caller-owned fixed buffers.
pub struct RxBurst {
    data: Box<[u8]>,
    frame_capacity: usize,
    hdrs: [[u8; VIRTIO_NET_HDR_V1_LEN]; BURST_SIZE],
    lens: [usize; BURST_SIZE],
    filled: usize,
    next: usize,
}

impl RxBurst {
    /// A burst whose frames may be up to `frame_capacity` bytes (without the header).
    pub fn new(frame_capacity: usize) -> Self {
        RxBurst {
            data: vec![0u8; frame_capacity * BURST_SIZE].into_boxed_slice(),
            frame_capacity,
            hdrs: [[0; VIRTIO_NET_HDR_V1_LEN]; BURST_SIZE],
            lens: [0; BURST_SIZE],
            filled: 0,
            next: 0,
        }
    }

    /// Frames received and not yet consumed.
    pub fn pending(&self) -> usize {
        self.filled - self.next
    }

    /// The oldest unconsumed frame: its header and bytes.
    pub fn peek(&self) -> Option<(VirtioNetHdr, &[u8])> {
        (self.next < self.filled).then(|| {
            let start = self.next * self.frame_capacity;
            (
                VirtioNetHdr::from_bytes(&self.hdrs[self.next]),
                &self.data[start..start + self.lens[self.next]],
            )
        })
    }

    /// Marks the oldest frame delivered (or dropped) by the caller.
    pub fn consume(&mut self) {
        if self.next < self.filled {
            self.next += 1;
        }
        if self.next == self.filled {
            self.next = 0;
            self.filled = 0;
        }
    }

    /// For ports: the header and data buffers of the next free slot, or `None` when the burst
    /// is full or still holds unconsumed frames.
    pub fn free_slot(&mut self) -> Option<(&mut [u8; VIRTIO_NET_HDR_V1_LEN], &mut [u8])> {
        if self.next != 0 || self.filled == BURST_SIZE {
            return None;
        }
        let start = self.filled * self.frame_capacity;
        Some((
            &mut self.hdrs[self.filled],
            &mut self.data[start..start + self.frame_capacity],
        ))
    }

    /// For ports: commits the slot returned by [`free_slot`](Self::free_slot) as a frame of
    /// `len` bytes.
    pub fn commit_slot(&mut self, len: usize) {
        debug_assert!(len <= self.frame_capacity && self.filled < BURST_SIZE);
        self.lens[self.filled] = len.min(self.frame_capacity);
        self.filled += 1;
    }

    /// Largest frame a slot holds.
    pub fn frame_capacity(&self) -> usize {
        self.frame_capacity
    }
}

/// One piece of a tx frame in caller-owned memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxSegment {
    /// Host virtual address of the bytes (for ports that copy).
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// IO virtual address of the same bytes (for ports whose device reads them by DMA).
    pub iova: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct TxFrame {
    hdr: VirtioNetHdr,
    first_segment: usize,
    segments: usize,
    len: usize,
}

/// Frames to send, described as segment lists, built by the caller and drained by a port.
pub struct TxBurst {
    frames: Vec<TxFrame>,
    segments: Vec<TxSegment>,
    open: Option<TxFrame>,
}

impl Default for TxBurst {
    fn default() -> Self {
        Self::new()
    }
}

impl TxBurst {
    /// An empty burst with room for [`BURST_SIZE`] frames of [`MAX_TX_SEGMENTS`] segments.
    pub fn new() -> Self {
        TxBurst {
            frames: Vec::with_capacity(BURST_SIZE),
            segments: Vec::with_capacity(BURST_SIZE * MAX_TX_SEGMENTS),
            open: None,
        }
    }

    /// Forgets every frame (the memory is kept).
    pub fn clear(&mut self) {
        self.frames.clear();
        self.segments.clear();
        self.open = None;
    }

    /// Frames committed.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether no frame is committed.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Whether another frame fits.
    pub fn is_full(&self) -> bool {
        self.frames.len() == BURST_SIZE
    }

    /// Starts a frame; any frame still open is discarded. Returns `false` when the burst is
    /// full.
    pub fn start_frame(&mut self) -> bool {
        self.cancel_frame();
        if self.is_full() {
            return false;
        }
        self.open = Some(TxFrame {
            hdr: VirtioNetHdr::default(),
            first_segment: self.segments.len(),
            segments: 0,
            len: 0,
        });
        true
    }

    /// Adds a segment to the open frame. Returns `false` when there is no open frame or it
    /// already has [`MAX_TX_SEGMENTS`].
    pub fn add_segment(&mut self, segment: TxSegment) -> bool {
        match self.open.as_mut() {
            Some(frame) if frame.segments < MAX_TX_SEGMENTS => {
                frame.segments += 1;
                frame.len += segment.len as usize;
                self.segments.push(segment);
                true
            }
            _ => false,
        }
    }

    /// Bytes in the open frame so far.
    pub fn open_frame_len(&self) -> usize {
        self.open.map_or(0, |f| f.len)
    }

    /// Drops the open frame and its segments.
    pub fn cancel_frame(&mut self) {
        if let Some(frame) = self.open.take() {
            self.segments.truncate(frame.first_segment);
        }
    }

    /// Commits the open frame with its offload header `hdr`. Returns `false` if none was open.
    pub fn commit_frame(&mut self, hdr: VirtioNetHdr) -> bool {
        match self.open.take() {
            Some(frame) => {
                self.frames.push(TxFrame { hdr, ..frame });
                true
            }
            None => false,
        }
    }

    /// Frame `i`: its header, segments and total length.
    pub fn frame(&self, i: usize) -> (VirtioNetHdr, &[TxSegment], usize) {
        let f = &self.frames[i];
        (
            f.hdr,
            &self.segments[f.first_segment..f.first_segment + f.segments],
            f.len,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(len: u32) -> TxSegment {
        TxSegment {
            addr: 0x1000,
            len,
            iova: 0x1000,
        }
    }

    #[test]
    fn tx_frame_collects_segments_and_length() {
        let mut burst = TxBurst::new();
        assert!(burst.start_frame());
        assert!(burst.add_segment(seg(10)));
        assert!(burst.add_segment(seg(20)));
        assert!(burst.commit_frame(VirtioNetHdr::default()));
        let (_, segs, len) = burst.frame(0);
        assert_eq!((segs.len(), len), (2, 30));
    }

    #[test]
    fn tx_cancelled_frame_leaves_no_segments() {
        let mut burst = TxBurst::new();
        burst.start_frame();
        burst.add_segment(seg(10));
        burst.commit_frame(VirtioNetHdr::default());
        burst.start_frame();
        burst.add_segment(seg(99));
        burst.cancel_frame();
        burst.start_frame();
        burst.add_segment(seg(5));
        burst.commit_frame(VirtioNetHdr::default());
        assert_eq!(burst.len(), 2);
        assert_eq!(burst.frame(1).1, &[seg(5)]);
    }

    #[test]
    fn tx_frame_with_too_many_segments_is_refused() {
        let mut burst = TxBurst::new();
        burst.start_frame();
        for _ in 0..MAX_TX_SEGMENTS {
            assert!(burst.add_segment(seg(1)));
        }
        assert!(!burst.add_segment(seg(1)));
    }

    #[test]
    fn tx_burst_refuses_frames_beyond_capacity() {
        let mut burst = TxBurst::new();
        for _ in 0..BURST_SIZE {
            assert!(burst.start_frame());
            burst.commit_frame(VirtioNetHdr::default());
        }
        assert!(burst.is_full());
        assert!(!burst.start_frame());
    }

    #[test]
    fn rx_burst_is_refilled_only_when_drained() {
        let mut burst = RxBurst::new(64);
        let (_, buf) = burst.free_slot().unwrap();
        buf[..3].copy_from_slice(b"abc");
        burst.commit_slot(3);
        assert_eq!(burst.pending(), 1);
        assert_eq!(burst.peek().unwrap().1, b"abc");
        // A frame is still pending: the port may not append.
        burst.commit_slot(0);
        burst.consume();
        assert!(burst.free_slot().is_none(), "one frame still pending");
        burst.consume();
        assert_eq!(burst.pending(), 0);
        assert!(burst.free_slot().is_some());
    }
}
