//! The 82576 VF as a [`Port`]: one rx and one tx queue, rx copied out of the driver's own
//! buffers, tx sent by IOVA (the caller's DMA memory, or guest memory mapped at IOVA = guest
//! address with [`Port::set_guest_memory`]), checksum offload through context descriptors, and
//! MSI-X vectors delivered to eventfds (interrupt mode) or none (poll mode).
//!
//! Interrupts auto-mask when they fire (VTEIAM): a vector stays quiet until the caller has
//! handled its wake-up and [`rearm`](Port::rearm)s it, so a busy queue costs one wake-up per
//! burst, not one per frame. A cause that arrives while masked is held and fires on re-arm.
//!
//! A PF-initiated reset (mailbox reset indication or control message: link change, PF reset)
//! or unicast frames for another address (the PF moved the VF to a new MAC) re-initialise the
//! VF; frames in flight are reported cancelled so the caller can send them again: nothing leaks.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::device::{self, IgbVf, Mac};
use super::regs::{IVAR_VALID, VTEIAC, VTEIAM, VTEIMC, VTEIMS, VTIVAR, VTIVAR_MISC};
use super::ring::{RX_BUF_LEN, RxBuffers, RxRing, TxRing};
use super::vf::PfEvent;
use crate::dma::guest::GuestMappings;
use crate::dma::iova::IovaAllocator;
use crate::dma::region::{self, DmaMapper, DmaRegion};
use crate::nic::regs_io::RegisterAccess;
use crate::port::{
    GuestMemoryError, GuestRegion, LinkState, MemoryOwner, Offloads, Port, PortEvents, PortFd,
    PortStats, RxBurst, TxBurst,
};
use crate::vfio::device as vfio;

/// MSI-X vector of the rx queue.
pub const VECTOR_RX: u32 = 0;
/// MSI-X vector of the tx queue.
pub const VECTOR_TX: u32 = 1;
/// MSI-X vector of the mailbox ("other" causes).
pub const VECTOR_MAILBOX: u32 = 2;
const ALL_VECTORS: u32 = (1 << VECTOR_RX) | (1 << VECTOR_TX) | (1 << VECTOR_MAILBOX);
/// How often the mailbox and link are looked at without an interrupt (Linux igbvf's watchdog
/// runs every 2 s). QEMU igb: a PF message raises the VF's vector numbered one below the one
/// VTIVAR_MISC names (it shifts the vector number, not a bit), so in the lab the mailbox
/// interrupt lands on the tx vector and the watchdog is what notices PF events.
const WATCHDOG_INTERVAL: Duration = Duration::from_secs(1);

/// How to bring the port up.
#[derive(Clone, Copy, Debug)]
pub struct VfPortOptions {
    /// Descriptors per ring (a multiple of 8).
    pub ring_size: usize,
    /// MSI-X eventfds (true) or polling (false).
    pub interrupts: bool,
    /// Largest frame to accept, without FCS (asked of the PF with SET_LPE).
    pub max_frame: u16,
}

impl Default for VfPortOptions {
    fn default() -> Self {
        VfPortOptions {
            ring_size: 256,
            interrupts: true,
            max_frame: 1518,
        }
    }
}

/// Errors bringing the port up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening or resetting the VF failed.
    #[error(transparent)]
    Device(#[from] device::Error),
    /// VFIO failed (IOMMU query, MSI-X).
    #[error(transparent)]
    Vfio(#[from] vfio::Error),
    /// DMA memory for the rings could not be had.
    #[error("cannot allocate ring memory for VF {bdf}")]
    Dma {
        /// The VF.
        bdf: String,
        /// Cause.
        #[source]
        source: region::Error,
    },
    /// An eventfd could not be made.
    #[error("cannot create an eventfd")]
    EventFd(#[source] io::Error),
    /// A queue did not report enabled.
    #[error("VF {bdf}: the {queue} queue did not enable (is the PF up?)")]
    QueueEnable {
        /// The VF.
        bdf: String,
        /// "rx" or "tx".
        queue: &'static str,
    },
}

/// The three MSI-X eventfds.
struct Interrupts {
    rx: EventFd,
    tx: EventFd,
    mailbox: EventFd,
}

/// An 82576 VF port.
pub struct IgbVfPort {
    vf: IgbVf,
    rx: RxRing,
    tx: TxRing,
    options: VfPortOptions,
    stats: PortStats,
    irq: Option<Interrupts>,
    name: String,
    /// Frames in flight given up by a reset or `cancel_tx`, not yet reported.
    cancelled_tx: usize,
    /// Posted rx buffers given up by a reset, not yet reported.
    cancelled_rx: usize,
    resets: u64,
    /// The link state last reported by `service`.
    link: LinkState,
    /// A re-initialisation failed and is retried on the next `service`.
    broken: bool,
    guest: GuestMappings,
    mapper: Arc<dyn DmaMapper>,
    alloc: Arc<Mutex<IovaAllocator>>,
}

impl IgbVfPort {
    /// Opens and starts the VF at `bdf`.
    pub fn open(bdf: &str, options: VfPortOptions) -> Result<Self, Error> {
        let vf = IgbVf::open(bdf)?;
        let pci = vf.pci().clone();
        let alloc = Arc::new(Mutex::new(IovaAllocator::new(&pci.iova_ranges()?)));
        let mapper: Arc<dyn DmaMapper> = pci;
        let dma = |source| Error::Dma {
            bdf: bdf.to_string(),
            source,
        };
        let rx = RxRing::new(0, options.ring_size, &mapper, &alloc).map_err(dma)?;
        let tx = TxRing::new(0, options.ring_size, &mapper, &alloc).map_err(dma)?;
        let irq = if options.interrupts {
            let make = || EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd);
            Some(Interrupts {
                rx: make()?,
                tx: make()?,
                mailbox: make()?,
            })
        } else {
            None
        };
        let guest = GuestMappings::new(bdf, mapper.clone(), alloc.clone());
        let mut port = IgbVfPort {
            vf,
            rx,
            tx,
            options,
            stats: PortStats::default(),
            irq,
            name: bdf.to_string(),
            cancelled_tx: 0,
            cancelled_rx: 0,
            resets: 0,
            link: LinkState::Down,
            broken: false,
            guest,
            mapper,
            alloc,
        };
        port.start_queues()?;
        port.link = port.link_state();
        Ok(port)
    }

    /// Programs the queues and interrupts of a freshly reset VF.
    fn start_queues(&mut self) -> Result<(), Error> {
        let bdf = self.name.clone();
        let station = self.vf.mac().0;
        let (control, pci) = self.vf.control();
        // Frames larger than the default 1522 need the PF's long-packet enable; a refusal
        // leaves the default, which still carries standard frames.
        let _ = control.set_max_frame(pci.bar0(), self.options.max_frame);
        let regs = pci.bar0();
        if !self.rx.start(regs, station) {
            return Err(Error::QueueEnable { bdf, queue: "rx" });
        }
        if !self.tx.start(regs) {
            return Err(Error::QueueEnable { bdf, queue: "tx" });
        }
        if let Some(irq) = &self.irq {
            pci.enable_msix(&[&irq.rx, &irq.tx, &irq.mailbox])?;
            pci.set_bus_master(true);
            // VTIVAR: queue 0's rx cause in bits 7:0, its tx cause in bits 15:8; the mailbox
            // cause in VTIVAR_MISC bits 7:0 (datasheet §8.28.8-9).
            regs.write32(
                VTIVAR,
                (VECTOR_RX | IVAR_VALID) | ((VECTOR_TX | IVAR_VALID) << 8),
            );
            regs.write32(VTIVAR_MISC, VECTOR_MAILBOX | IVAR_VALID);
            // Auto-clear the causes when the message is sent (QEMU igb: reading VTEICR does
            // not clear them) and auto-mask the vector until the handler re-arms it.
            regs.write32(VTEIAC, ALL_VECTORS);
            regs.write32(VTEIAM, ALL_VECTORS);
            regs.write32(VTEIMS, ALL_VECTORS);
        } else {
            regs.write32(VTEIMC, ALL_VECTORS);
        }
        Ok(())
    }

    /// DMA memory the VF can reach, at an IOVA outside the rings' and the guest's, for frames
    /// the caller sends by IOVA.
    pub fn dma_region(&self, len: usize) -> Result<DmaRegion, region::Error> {
        DmaRegion::new(len, self.mapper.clone(), self.alloc.clone())
    }

    /// The VF's MAC address.
    pub fn station_mac(&self) -> Mac {
        self.vf.mac()
    }

    /// Asks the PF for MAC `mac` (`--mac`); the rx filter follows.
    pub fn set_mac(&mut self, mac: Mac) -> Result<(), Error> {
        self.vf.set_mac(mac)?;
        // Restarting rx tells the ring the new station address; the PF moved the filter.
        self.start_queues()
    }

    /// The VF's hardware counters.
    pub fn hw_stats(&self) -> super::vf::HwStats {
        self.vf.hw_stats()
    }

    /// Queue 0's rx head, rx tail and RXDCTL, for diagnostics.
    pub fn rx_queue_registers(&self) -> (u32, u32, u32) {
        let regs = self.vf.pci().bar0();
        (
            regs.read32(super::regs::rdh(0)),
            regs.read32(super::regs::rdt(0)),
            regs.read32(super::regs::rxdctl(0)),
        )
    }

    /// Times the VF was re-initialised after a PF event.
    pub fn resets(&self) -> u64 {
        self.resets
    }

    /// Checks for a PF-initiated change and re-initialises the VF if there was one: a reset or
    /// control message in the mailbox, or unicast frames for an address other than the VF's
    /// (the PF gave the VF a new MAC; the reset handshake tells which). Returns whether it
    /// did. Frames in flight are reported through `tx_cancelled`.
    pub fn service_pf(&mut self) -> Result<bool, Error> {
        let (control, pci) = self.vf.control();
        let mailbox = control.check_pf(pci.bar0());
        let moved = self.rx.take_foreign_unicast() > 0;
        if mailbox == PfEvent::None && !moved && !self.broken {
            return Ok(false);
        }
        self.broken = true;
        self.cancelled_tx += self.tx.abandon();
        self.cancelled_rx += self.rx.abandon_posted();
        self.vf.reset()?;
        self.start_queues()?;
        self.broken = false;
        self.resets += 1;
        Ok(true)
    }

    /// Quiesces the VF: interrupts masked, both queues disabled, MSI-X off, bus mastering off.
    /// Afterwards the VF touches no memory; frames in flight are reported through
    /// `tx_cancelled`. The port stays stopped until the VF is reset (`service_pf` after a PF
    /// event, or a new open).
    pub fn stop(&mut self) {
        let pci = self.vf.pci().clone();
        let regs = pci.bar0();
        regs.write32(VTEIMC, ALL_VECTORS);
        let quiet = self.rx.stop(regs) & self.tx.stop(regs);
        if !quiet {
            crate::rl_warn!("VF {}: a queue did not report disabled", self.name);
        }
        self.cancelled_tx += self.tx.abandon();
        if self.irq.is_some() {
            let _ = pci.disable_msix();
        }
        pci.set_bus_master(false);
    }
}

impl Drop for IgbVfPort {
    /// The rings' memory and the guest's are unmapped from the IOMMU right after this: the VF
    /// must be quiet first, or its next DMA faults.
    fn drop(&mut self) {
        self.stop();
        self.guest.clear();
    }
}

impl Port for IgbVfPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn offloads(&self) -> Offloads {
        Offloads {
            csum: true,
            ..Offloads::default()
        }
    }

    fn set_rx_offloads(&mut self, _accepted: Offloads) -> io::Result<()> {
        // Frames from the wire carry complete checksums; nothing to hand the guest partially.
        Ok(())
    }

    fn rx_burst(&mut self, burst: &mut RxBurst) -> usize {
        debug_assert!(burst.frame_capacity() >= RX_BUF_LEN.min(burst.frame_capacity()));
        self.rx
            .receive(self.vf.pci().bar0(), burst, &mut self.stats)
    }

    fn tx_burst(&mut self, burst: &TxBurst) -> usize {
        self.tx
            .transmit(self.vf.pci().bar0(), burst, &mut self.stats)
    }

    fn rx_direct_buffer_len(&self) -> Option<usize> {
        Some(RX_BUF_LEN)
    }

    fn set_rx_direct(&mut self, direct: bool) -> bool {
        let mode = if direct {
            RxBuffers::Posted
        } else {
            RxBuffers::Own
        };
        self.rx.set_mode(self.vf.pci().bar0(), mode)
    }

    fn rx_post(&mut self, iovas: &[u64]) -> usize {
        self.rx.post(self.vf.pci().bar0(), iovas)
    }

    fn rx_filled(&mut self, lens: &mut [u32]) -> usize {
        self.rx.filled(lens, &mut self.stats)
    }

    fn rx_unpost(&mut self) -> usize {
        self.rx.unpost(self.vf.pci().bar0())
    }

    fn rx_cancelled(&mut self) -> usize {
        std::mem::take(&mut self.cancelled_rx)
    }

    fn tx_completed(&mut self) -> usize {
        self.tx.reclaim()
    }

    fn tx_cancelled(&mut self) -> usize {
        std::mem::take(&mut self.cancelled_tx)
    }

    fn cancel_tx(&mut self) {
        if self.tx.in_flight() == 0 {
            return;
        }
        let regs = self.vf.pci().bar0();
        if !self.tx.stop(regs) {
            crate::rl_warn!("VF {}: the tx queue did not report disabled", self.name);
        }
        self.cancelled_tx += self.tx.abandon();
        if !self.tx.start(regs) {
            // Sending resumes after the next PF reset at the latest.
            self.broken = true;
        }
    }

    fn set_guest_memory(
        &mut self,
        regions: &[GuestRegion],
        owner: MemoryOwner,
    ) -> Result<(), GuestMemoryError> {
        let shrinks = self.guest.regions().iter().any(|r| !regions.contains(r));
        if shrinks {
            // A frame in flight may point into a region that goes away.
            self.cancel_tx();
        }
        self.guest.update(regions, owner)
    }

    fn service(&mut self) -> PortEvents {
        let mac = self.vf.mac();
        let was_broken = self.broken;
        let reset = match self.service_pf() {
            Ok(reset) => reset,
            Err(e) if !was_broken => {
                crate::rl_warn!(
                    "VF {}: re-initialisation after a PF event failed (the PF may be down); retrying every second: {e}",
                    self.name
                );
                false
            }
            Err(e) => {
                tracing::debug!("VF {}: re-initialisation failed again: {e}", self.name);
                false
            }
        };
        if was_broken && !self.broken {
            tracing::info!("VF {}: re-initialised after the PF came back", self.name);
        }
        let link = self.link_state();
        let link_changed = link != self.link;
        self.link = link;
        PortEvents {
            reset,
            link_changed,
            mac_changed: self.vf.mac() != mac,
        }
    }

    fn rearm(&mut self, fd: PortFd) {
        let Some(irq) = &self.irq else {
            return;
        };
        let (eventfd, vector) = match fd {
            PortFd::Rx => (&irq.rx, VECTOR_RX),
            PortFd::TxDone => (&irq.tx, VECTOR_TX),
            PortFd::Control => (&irq.mailbox, VECTOR_MAILBOX),
        };
        // Empties the counter (EAGAIN when already empty): the fd is level-triggered in epoll.
        let _ = eventfd.read();
        self.vf.pci().bar0().write32(VTEIMS, 1 << vector);
    }

    fn mac(&self) -> Option<[u8; 6]> {
        Some(self.vf.mac().0)
    }

    fn link_state(&self) -> LinkState {
        if !self.broken && self.vf.link_up() {
            LinkState::Up
        } else {
            LinkState::Down
        }
    }

    fn stats(&self) -> PortStats {
        self.stats
    }

    fn rx_ready_fd(&self) -> Option<RawFd> {
        self.irq.as_ref().map(|i| i.rx.as_raw_fd())
    }

    fn tx_done_fd(&self) -> Option<RawFd> {
        self.irq.as_ref().map(|i| i.tx.as_raw_fd())
    }

    fn control_fd(&self) -> Option<RawFd> {
        self.irq.as_ref().map(|i| i.mailbox.as_raw_fd())
    }

    fn watchdog_interval(&self) -> Option<Duration> {
        Some(WATCHDOG_INTERVAL)
    }
}
