//! The forwarding loop of one device: tx kicks drain the tx queue into the port, port readiness
//! and rx kicks fill the guest's rx buffers. It runs on vhost-user-backend's worker thread,
//! called from `handle_event` with the device lock held for the whole wake-up (never per
//! packet).
//!
//! Invariant: the port's rx fd is registered with the worker's epoll only while the guest has
//! rx buffers. When the guest runs out, the fd is removed and rx notifications are armed, so the
//! port keeps its frames and the worker sleeps until the guest's next rx kick.
//!
//! Tx chains go back to the guest in the order they came, once the port has finished with them
//! ([`InFlight`]); a port that reads them by DMA (a VF) tells when through its tx-done fd. The
//! worker reads guest memory only through the snapshot given with the memory table, which is
//! the one the port's IOMMU maps: a region the front-end adds is not used before it is mapped.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{debug, info};
use vf_dataplane::port::MAX_RX_FRAME;
use vf_dataplane::{
    BURST_SIZE, GuestMemoryError, GuestRegion, Port, PortEvents, PortFd, RxBurst, TxBurst, rl_warn,
};
use vhost_user_backend::{VringEpollHandler, VringRwLock, VringState, VringT};
use virtio_queue::{Queue, QueueT};
use vm_memory::{
    GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use crate::chain;
use crate::config_notify::ConfigNotifier;
use crate::device::NetBackend;
use crate::features::Negotiated;
use crate::rx::{self, Delivery, RxScratch};
use crate::rx_direct::{self, DirectRx, Qualified, Refill};
use crate::stats::NetStats;
use crate::tx::{self, TxDrop};
use crate::tx_flight::{InFlight, Taken};

/// The receive queue's index.
pub const RX_QUEUE: usize = 0;
/// The transmit queue's index.
pub const TX_QUEUE: usize = 1;
/// Queues of the device: one pair.
pub const NUM_QUEUES: usize = 2;
/// Epoll token of the port's rx fd. vhost-user-backend keeps tokens `0..=NUM_QUEUES` for the
/// queues and its exit event.
pub const PORT_RX_EVENT: u16 = 3;
const _: () = assert!(PORT_RX_EVENT as usize == NUM_QUEUES + 1);
/// Epoll token of the port's tx-done fd (frames finished by DMA).
pub const PORT_TX_DONE_EVENT: u16 = 4;
/// Epoll token of the port's control fd (the VF's mailbox).
pub const PORT_CONTROL_EVENT: u16 = 5;
/// Epoll token of the port's watchdog timer.
pub const PORT_WATCHDOG_EVENT: u16 = 6;
/// How long stopping the tx queue waits for the port to finish the frames it has, before
/// giving the rest back to the avail ring unsent.
const TX_DRAIN_TIMEOUT: Duration = Duration::from_millis(100);
/// Rx bursts per wake-up before the worker returns to epoll, so tx is not starved.
const RX_BURSTS_PER_WAKEUP: usize = 8;

/// Guest memory as vhost-user-backend hands it over.
type Memory = GuestMemoryAtomic<GuestMemoryMmap>;
/// The vring type the worker gets from vhost-user-backend.
pub type Vring = VringRwLock<Memory>;
/// The worker's epoll handler, used to add and remove the port's rx fd.
pub type WorkerEpoll = Arc<VringEpollHandler<Arc<NetBackend>>>;

/// Errors that end the worker thread: the queue or the epoll set is unusable.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a virtqueue failed (its rings left guest memory).
    #[error("virtqueue access failed")]
    Queue(#[from] virtio_queue::Error),
    /// Signalling the guest failed.
    #[error("cannot signal the guest")]
    Signal(#[source] io::Error),
    /// Adding or removing the port's fd from epoll failed.
    #[error("cannot change the epoll registration of the port")]
    Epoll(#[source] io::Error),
}

/// Why a memory table cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The port's device cannot reach the guest's memory as laid out.
    #[error("the port cannot reach guest memory")]
    Port(#[from] GuestMemoryError),
    /// Resuming the tx queue after the change failed.
    #[error(transparent)]
    Queue(#[from] Error),
}

/// State of the forwarding loop, owned by the device and locked once per wake-up.
pub struct Forwarder {
    port: Box<dyn Port>,
    /// The memory table as the port's device sees it (see the module doc).
    mem: Option<Arc<GuestMemoryMmap>>,
    negotiated: Negotiated,
    tx_burst: TxBurst,
    in_flight: InFlight,
    rx_burst: RxBurst,
    rx_scratch: RxScratch,
    rx_mode: RxMode,
    direct: DirectRx,
    stats: NetStats,
    epoll: Option<WorkerEpoll>,
    port_rx_registered: bool,
    /// The connection's vrings, kept from the first worker event for the control path
    /// (stopping a queue, a memory table change), which vhost-user-backend does not give them.
    vrings: Option<Vec<Vring>>,
    /// Whether each queue's used index was resumed from guest memory on this connection.
    used_resumed: [bool; NUM_QUEUES],
    /// Signals each queue owes the guest (see [`signal_guest`]).
    signal_owed: [Owed; NUM_QUEUES],
    notifier: Option<Arc<ConfigNotifier>>,
    /// Runs the port's `service` now and then, while a front-end is attached.
    watchdog: Option<TimerFd>,
}

impl Forwarder {
    /// A forwarder for `port` and queues of up to `max_queue_size` entries, with its bursts
    /// allocated once here.
    pub fn new(port: Box<dyn Port>, mtu: u16, max_queue_size: u16) -> Self {
        Forwarder {
            port,
            mem: None,
            negotiated: Negotiated::new(0, mtu),
            tx_burst: TxBurst::new(),
            in_flight: InFlight::with_capacity(usize::from(max_queue_size)),
            rx_burst: RxBurst::new(MAX_RX_FRAME),
            rx_scratch: RxScratch::new(),
            rx_mode: RxMode::Undecided,
            direct: DirectRx::with_capacity(usize::from(max_queue_size)),
            stats: NetStats::default(),
            epoll: None,
            port_rx_registered: false,
            vrings: None,
            used_resumed: [false; NUM_QUEUES],
            signal_owed: [Owed::default(); NUM_QUEUES],
            notifier: None,
            watchdog: None,
        }
    }

    /// Sends config-change notifications (the port's link or MAC changed) through `notifier`.
    pub fn set_config_notifier(&mut self, notifier: Arc<ConfigNotifier>) {
        self.notifier = Some(notifier);
    }

    /// The port.
    pub fn port(&self) -> &dyn Port {
        self.port.as_ref()
    }

    /// Counters since the last reset.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Applies the features the front-end acked: header layout, limits and the offloads the
    /// port may hand to the guest.
    pub fn set_negotiated(&mut self, negotiated: Negotiated) -> io::Result<()> {
        self.negotiated = negotiated;
        self.port.set_rx_offloads(negotiated.guest_offloads())
    }

    /// Uses the memory table in `mem` from now on: the port's device is given the regions
    /// first (a VF maps them into its IOMMU domain), then the worker reads chains through this
    /// snapshot. Tx chains the port gave back while regions went away are taken again.
    pub fn set_memory(
        &mut self,
        mem: &GuestMemoryAtomic<GuestMemoryMmap>,
    ) -> Result<(), MemoryError> {
        let snapshot = mem.memory().into_inner();
        let regions: Vec<GuestRegion> = snapshot
            .iter()
            .map(|r| GuestRegion {
                gpa: r.start_addr().0,
                len: r.len(),
                host_addr: r.as_ptr() as u64,
            })
            .collect();
        let owner: vf_dataplane::MemoryOwner = snapshot.clone();
        // Guest buffers the port holds may lie in a region that goes away.
        self.stop_direct_rx()?;
        let mapped = self.port.set_guest_memory(&regions, owner);
        if mapped.is_ok() {
            self.mem = Some(snapshot);
        }
        // Frames cancelled for the change go back to the avail ring (or, if the change was
        // refused, they are sent again from the memory the port still maps); rx buffers are
        // posted again.
        if let Some(vrings) = self.vrings.clone() {
            self.process_tx(&vrings[TX_QUEUE])?;
            self.process_rx(&vrings[RX_QUEUE])?;
        }
        Ok(mapped?)
    }

    /// Attaches the worker's epoll set and starts listening to the port.
    pub fn attach(&mut self, epoll: WorkerEpoll) -> Result<(), Error> {
        for (fd, token) in [
            (self.port.tx_done_fd(), PORT_TX_DONE_EVENT),
            (self.port.control_fd(), PORT_CONTROL_EVENT),
        ] {
            if let Some(fd) = fd {
                register(&epoll, fd, token, true)?;
            }
        }
        if let Some(interval) = self.port.watchdog_interval() {
            let mut timer = TimerFd::new().map_err(|e| Error::Epoll(e.into()))?;
            timer
                .reset(interval, Some(interval))
                .map_err(|e| Error::Epoll(e.into()))?;
            register(&epoll, timer.as_raw_fd(), PORT_WATCHDOG_EVENT, true)?;
            self.watchdog = Some(timer);
        }
        self.epoll = Some(epoll);
        self.listen_to_port(true)
    }

    /// Stops queue `index` for GET_VRING_BASE: the tx frames the port still has are finished
    /// (and returned to the guest) or, after 100 ms, given back to the avail ring
    /// unsent, so the avail index the front-end is told resumes without loss or duplication.
    pub fn stop_queue(&mut self, index: usize) -> Result<(), Error> {
        if index == RX_QUEUE {
            return self.stop_direct_rx();
        }
        if index != TX_QUEUE || self.in_flight.is_empty() {
            return Ok(());
        }
        let (Some(vrings), Some(mem)) = (self.vrings.clone(), self.mem.clone()) else {
            return Ok(());
        };
        let mut state = vrings[TX_QUEUE].get_mut();
        let queue = state.get_queue_mut();
        let deadline = Instant::now() + TX_DRAIN_TIMEOUT;
        self.complete_tx(&mem, queue)?;
        while !self.in_flight.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
            self.complete_tx(&mem, queue)?;
        }
        if !self.in_flight.is_empty() {
            self.port.cancel_tx();
            self.complete_tx(&mem, queue)?;
        }
        signal_guest(&mut state, &mut self.signal_owed[TX_QUEUE], true)
    }

    /// Takes the guest's rx buffers back from the port, if it holds any (GET_VRING_BASE, a
    /// memory table change): what it filled is delivered, the rest returns to the avail ring,
    /// and rx decides again on the next buffer.
    fn stop_direct_rx(&mut self) -> Result<(), Error> {
        if self.rx_mode != RxMode::Direct {
            return Ok(());
        }
        let (Some(vrings), Some(mem)) = (self.vrings.clone(), self.mem.clone()) else {
            return Ok(());
        };
        let mut state = vrings[RX_QUEUE].get_mut();
        let used = self.leave_direct_rx(&mem, state.get_queue_mut())?;
        self.rx_mode = RxMode::Undecided;
        signal_guest(&mut state, &mut self.signal_owed[RX_QUEUE], used)
    }

    /// Returns to the state before any front-end: the port's device stopped from reading guest
    /// memory and its guest mappings gone, nothing pending, counters zeroed, the port still
    /// open but no longer watched.
    pub fn reset(&mut self) {
        if let Err(e) = self.listen_to_port(false) {
            debug!("removing the port from epoll at reset: {e}");
        }
        if let Some(epoll) = self.epoll.take() {
            for (fd, token) in [
                (self.port.tx_done_fd(), PORT_TX_DONE_EVENT),
                (self.port.control_fd(), PORT_CONTROL_EVENT),
            ] {
                if let Some(fd) = fd {
                    let _ = register(&epoll, fd, token, false);
                }
            }
            if let Some(timer) = self.watchdog.as_ref() {
                let _ = register(&epoll, timer.as_raw_fd(), PORT_WATCHDOG_EVENT, false);
            }
        }
        self.watchdog = None;
        self.port.cancel_tx();
        let _ = self.port.tx_completed();
        let _ = self.port.tx_cancelled();
        if self.rx_mode == RxMode::Direct {
            // The front-end is gone: the buffers are simply dropped, before their memory is.
            self.port.rx_unpost();
            while self.port.rx_filled(&mut [0; BURST_SIZE]) > 0 {}
            let _ = self.port.rx_cancelled();
            self.port.set_rx_direct(false);
        }
        self.direct.clear();
        self.rx_mode = RxMode::Undecided;
        if let Err(e) = self.port.set_guest_memory(&[], Arc::new(())) {
            debug!("unmapping guest memory at reset: {e}");
        }
        self.in_flight.clear();
        self.vrings = None;
        self.mem = None;
        while self.rx_burst.pending() > 0 {
            self.rx_burst.consume();
        }
        self.stats = NetStats::default();
        self.used_resumed = [false; NUM_QUEUES];
        self.signal_owed = [Owed::default(); NUM_QUEUES];
        let mtu = self.negotiated.mtu;
        if let Err(e) = self.set_negotiated(Negotiated::new(0, mtu)) {
            debug!("clearing the port's offloads at reset: {e}");
        }
    }

    /// Handles one epoll event of the worker.
    pub fn handle_event(&mut self, event: u16, vrings: &[Vring]) -> Result<(), Error> {
        if self.vrings.is_none() {
            self.vrings = Some(vrings.to_vec());
        }
        for (vring, owed) in vrings.iter().zip(self.signal_owed.iter_mut()) {
            signal_if_owed(&vring.get_ref(), owed, false)?;
        }
        match usize::from(event) {
            RX_QUEUE => {
                // The guest posted rx buffers: the port may be read again.
                self.listen_to_port(true)?;
                self.process_rx(&vrings[RX_QUEUE])
            }
            TX_QUEUE => self.process_tx(&vrings[TX_QUEUE]),
            _ if event == PORT_RX_EVENT => {
                self.port.rearm(PortFd::Rx);
                self.process_rx(&vrings[RX_QUEUE])
            }
            _ if event == PORT_TX_DONE_EVENT => {
                self.port.rearm(PortFd::TxDone);
                self.process_tx(&vrings[TX_QUEUE])
            }
            _ if event == PORT_CONTROL_EVENT => {
                self.port.rearm(PortFd::Control);
                self.service_port(vrings)
            }
            _ if event == PORT_WATCHDOG_EVENT => {
                if let Some(timer) = self.watchdog.as_mut() {
                    // Readable, so this does not block; the count of expiries is of no use.
                    let _ = timer.wait();
                }
                self.service_port(vrings)
            }
            _ => {
                rl_warn!(event, "unexpected epoll event");
                Ok(())
            }
        }
    }

    /// Lets the port handle device events, then moves what they freed: tx frames a reset
    /// cancelled are sent again, rx starts over.
    fn service_port(&mut self, vrings: &[Vring]) -> Result<(), Error> {
        let events = self.port.service();
        debug!(?events, "port serviced");
        if events == PortEvents::default() {
            return Ok(());
        }
        info!(
            port = self.port.name(),
            reset = events.reset,
            link = ?self.port.link_state(),
            mac = ?self.port.mac(),
            "port changed"
        );
        if (events.link_changed || events.mac_changed)
            && let Some(notifier) = &self.notifier
            && let Err(e) = notifier.notify()
        {
            rl_warn!("cannot tell the front-end the config space changed: {e}");
        }
        self.process_tx(&vrings[TX_QUEUE])?;
        self.process_rx(&vrings[RX_QUEUE])
    }

    fn listen_to_port(&mut self, on: bool) -> Result<(), Error> {
        if on == self.port_rx_registered {
            return Ok(());
        }
        let (Some(epoll), Some(fd)) = (self.epoll.as_ref(), self.port.rx_ready_fd()) else {
            return Ok(());
        };
        register(epoll, fd, PORT_RX_EVENT, on)?;
        self.port_rx_registered = on;
        Ok(())
    }

    fn process_tx(&mut self, vring: &Vring) -> Result<(), Error> {
        let Some(mem) = self.mem.clone() else {
            return Ok(());
        };
        let mut state = vring.get_mut();
        if !state.get_queue().ready() || !state.is_enabled() {
            return Ok(());
        }
        resume_used_index(
            state.get_queue_mut(),
            &mem,
            &mut self.used_resumed[TX_QUEUE],
        )?;
        let mut used = self.complete_tx(&mem, state.get_queue_mut())?;
        // virtio-queue's README: drain, then re-enable notifications and drain again if the
        // guest added chains in between, so no kick is lost. A full port ends the round: its
        // tx-done fd brings the worker back when there is room.
        'rounds: loop {
            state.disable_notification()?;
            loop {
                let (taken, port_full) = self.tx_one_burst(&mem, state.get_queue_mut())?;
                used |= self.complete_tx(&mem, state.get_queue_mut())?;
                signal_guest(&mut state, &mut self.signal_owed[TX_QUEUE], used)?;
                used = false;
                if port_full {
                    break 'rounds;
                }
                if taken == 0 {
                    break;
                }
            }
            if !state.enable_notification()? {
                break;
            }
        }
        signal_guest(&mut state, &mut self.signal_owed[TX_QUEUE], used)
    }

    /// Takes up to one burst of tx chains from the guest and hands their frames to the port.
    /// Returns how many chains it took and whether the port ran out of room (the frames it
    /// did not take went back to the avail ring).
    fn tx_one_burst(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
    ) -> Result<(usize, bool), Error> {
        self.tx_burst.clear();
        let limits = self.negotiated.tx_limits();
        let queue_size = queue.size();
        let mut taken = 0;
        while !self.tx_burst.is_full() && self.in_flight.len() < usize::from(queue_size) {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            taken += 1;
            match tx::chain_to_frame(chain, mem, queue_size, &limits, &mut self.tx_burst) {
                Ok(()) => {
                    let (_, _, len) = self.tx_burst.frame(self.tx_burst.len() - 1);
                    self.in_flight.push(Taken {
                        head,
                        len: u32::try_from(len).unwrap_or(u32::MAX),
                        in_port: true,
                    });
                }
                Err(drop) => {
                    self.count_tx_drop(drop);
                    self.in_flight.push(Taken {
                        head,
                        len: 0,
                        in_port: false,
                    });
                }
            }
        }
        let frames = self.tx_burst.len();
        if frames == 0 {
            return Ok((taken, false));
        }
        let sent = self.port.tx_burst(&self.tx_burst);
        if sent == frames {
            return Ok((taken, false));
        }
        if self.port.tx_done_fd().is_some() {
            // The device says when it has room again: until then the frames it did not take
            // wait in the avail ring, not in the daemon.
            let back = self.in_flight.take_back_newest(frames - sent);
            chain::give_back(queue, back);
            return Ok((taken - back, true));
        }
        // A copying port that cannot take more now (a TAP's queue is full) has no way to say
        // when it can: those frames are dropped and counted.
        self.in_flight.drop_newest(frames - sent);
        self.stats.tx_port_full += (frames - sent) as u64;
        Ok((taken, false))
    }

    /// Returns to the used ring, in order, the chains the port has finished with, and hands
    /// back to the avail ring those it gave back unsent. Returns whether it used any.
    fn complete_tx(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue) -> Result<bool, Error> {
        let completed = self.port.tx_completed();
        let stats = &mut self.stats;
        let mut used = false;
        self.in_flight.complete(completed, |taken| {
            if taken.in_port {
                stats.tx_packets += 1;
                stats.tx_bytes += u64::from(taken.len);
            }
            used = true;
            queue.add_used(mem, taken.head, 0)
        })?;
        let cancelled = self.port.tx_cancelled();
        if cancelled > 0 {
            let back = self.in_flight.take_back_newest(cancelled);
            chain::give_back(queue, back);
        }
        Ok(used)
    }

    fn count_tx_drop(&mut self, drop: TxDrop) {
        match drop {
            TxDrop::BadChain(fault) => {
                self.stats.tx_bad_chain += 1;
                rl_warn!(?fault, "dropped a malformed tx descriptor chain");
            }
            TxDrop::TooShort => {
                self.stats.tx_bad_chain += 1;
                rl_warn!("dropped a tx chain too short for a header and an Ethernet frame");
            }
            TxDrop::Oversize => {
                self.stats.tx_oversize += 1;
                rl_warn!(
                    mtu = self.negotiated.mtu,
                    "dropped a tx frame larger than the MTU"
                );
            }
            TxDrop::UnnegotiatedGso => {
                self.stats.tx_bad_offload += 1;
                rl_warn!("dropped a tx frame asking for segmentation offload not negotiated");
            }
        }
    }

    fn process_rx(&mut self, vring: &Vring) -> Result<(), Error> {
        let Some(mem) = self.mem.clone() else {
            return self.listen_to_port(false);
        };
        let mut state = vring.get_mut();
        if !state.get_queue().ready() || !state.is_enabled() {
            // Not started yet: leave frames in the port until the queue is enabled, which
            // vhost-user-backend reports as an rx queue event.
            drop(state);
            return self.listen_to_port(false);
        }
        resume_used_index(
            state.get_queue_mut(),
            &mem,
            &mut self.used_resumed[RX_QUEUE],
        )?;
        if self.rx_mode == RxMode::Undecided {
            self.rx_mode = self.choose_rx_mode(&mem, state.get_queue_mut())?;
        }
        let (used, starved) = match self.rx_mode {
            RxMode::Direct => self.rx_direct(&mem, state.get_queue_mut())?,
            RxMode::Copy => self.rx_copy(&mem, state.get_queue_mut())?,
            RxMode::Undecided => (false, false),
        };
        signal_guest(&mut state, &mut self.signal_owed[RX_QUEUE], used)?;
        drop(state);
        if starved {
            self.listen_to_port(false)?;
        }
        Ok(())
    }

    /// Decides, on the guest's first rx buffer of the connection, whether the port receives
    /// straight into the guest's buffers (they are large enough) or into its own, copied out.
    /// Stays undecided while the guest has posted nothing.
    fn choose_rx_mode(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
    ) -> Result<RxMode, Error> {
        let Some(frame_len) = self.port.rx_direct_buffer_len() else {
            return Ok(RxMode::Copy);
        };
        let hdr_len = self.negotiated.hdr_len();
        loop {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                if arm_rx_kick(queue, mem)? {
                    continue;
                }
                return Ok(RxMode::Undecided);
            };
            let head = chain.head_index();
            match rx_direct::qualify(chain, mem, queue.size(), hdr_len, frame_len) {
                Qualified::Bad(fault) => {
                    self.stats.rx_bad_chain += 1;
                    rl_warn!(?fault, "returned a malformed rx descriptor chain unused");
                    queue.add_used(mem, head, 0)?;
                }
                Qualified::TooSmall => {
                    chain::give_back(queue, 1);
                    info!(frame_len, "guest rx buffers are small: rx copies");
                    return Ok(RxMode::Copy);
                }
                Qualified::Buffer(_) => {
                    chain::give_back(queue, 1);
                    if self.port.set_rx_direct(true) {
                        info!(frame_len, "guest rx buffers are large: rx is zero-copy");
                        return Ok(RxMode::Direct);
                    }
                    return Ok(RxMode::Copy);
                }
            }
        }
    }

    /// Direct rx: returns the buffers the port filled, posts new ones, and falls back to
    /// copying when the guest posts a buffer too small. Returns whether it used chains, and
    /// whether rx is starved (never: the port holds no frames for the guest in this mode).
    fn rx_direct(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
    ) -> Result<(bool, bool), Error> {
        let layout = self.negotiated.rx_layout();
        let mut used =
            self.direct
                .complete(self.port.as_mut(), queue, mem, layout, &mut self.stats)?;
        loop {
            let stats = &mut self.stats;
            let refill =
                self.direct
                    .refill(self.port.as_mut(), queue, mem, layout.hdr_len, |fault| {
                        stats.rx_bad_chain += 1;
                        rl_warn!(?fault, "returned a malformed rx descriptor chain unused");
                    })?;
            match refill {
                Refill::NeedsCopy => {
                    used |= self.leave_direct_rx(mem, queue)?;
                    self.rx_mode = RxMode::Copy;
                    self.listen_to_port(true)?;
                    let (copied, starved) = self.rx_copy(mem, queue)?;
                    return Ok((used | copied, starved));
                }
                // The guest is asked to kick when it posts more; if it did meanwhile, post.
                Refill::Posted(_) => {
                    if !arm_rx_kick(queue, mem)? {
                        return Ok((used, false));
                    }
                }
            }
        }
    }

    /// Takes every posted guest buffer back from the port (the filled ones are delivered,
    /// the rest return to the avail ring) and puts the port back on its own buffers.
    fn leave_direct_rx(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue) -> Result<bool, Error> {
        let layout = self.negotiated.rx_layout();
        let used =
            self.direct
                .take_back(self.port.as_mut(), queue, mem, layout, &mut self.stats)?;
        if !self.port.set_rx_direct(false) {
            rl_warn!(
                port = self.port.name(),
                "the port did not return to its own rx buffers"
            );
        }
        Ok(used)
    }

    /// Copy rx: frames from the port's own buffers into the guest's. Returns whether it used
    /// chains, and whether the guest ran out of buffers (the port keeps its frames).
    fn rx_copy(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue) -> Result<(bool, bool), Error> {
        let layout = self.negotiated.rx_layout();
        let mut delivered = false;
        for _ in 0..RX_BURSTS_PER_WAKEUP {
            if self.rx_burst.pending() == 0 && self.port.rx_burst(&mut self.rx_burst) == 0 {
                break;
            }
            while let Some((hdr, frame)) = self.rx_burst.peek() {
                let frame_len = frame.len();
                let stats = &mut self.stats;
                let outcome = rx::deliver_frame(
                    queue,
                    mem,
                    layout,
                    hdr,
                    frame,
                    &mut self.rx_scratch,
                    |fault| {
                        stats.rx_bad_chain += 1;
                        rl_warn!(?fault, "returned a malformed rx descriptor chain unused");
                    },
                )?;
                match outcome {
                    Delivery::Delivered(_) => {
                        self.stats.rx_packets += 1;
                        self.stats.rx_bytes += frame_len as u64;
                        delivered = true;
                        self.rx_burst.consume();
                    }
                    Delivery::TooBig => {
                        self.stats.rx_frame_too_big += 1;
                        rl_warn!(
                            frame_len,
                            "dropped an rx frame the guest's buffers cannot hold"
                        );
                        self.rx_burst.consume();
                    }
                    Delivery::NoBuffers => {
                        if arm_rx_kick(queue, mem)? {
                            continue;
                        }
                        self.stats.rx_no_avail_buffer += 1;
                        return Ok((delivered, true));
                    }
                }
            }
        }
        Ok((delivered, false))
    }
}

/// How rx fills the guest's buffers on this connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RxMode {
    /// The guest has posted no buffer yet.
    Undecided,
    /// Frames are copied from the port's own buffers.
    Copy,
    /// The port writes frames straight into the guest's buffers.
    Direct,
}

/// Signals the guest about new used entries (`used`) if it asked for it (EVENT_IDX) or a signal
/// is owed. A front-end may start a queue (kick fd) before it gives its final call fd, as QEMU
/// does when it reconnects (first a masked notifier, then the guest's): virtio-queue counts a
/// signal sent nowhere, or to a notifier about to be replaced, as delivered, and with EVENT_IDX
/// a guest that was never woken never asks again. So a signal that found no call fd is owed, and
/// the first event after the call fd changes signals once more.
fn signal_guest(state: &mut VringState<Memory>, owed: &mut Owed, used: bool) -> Result<(), Error> {
    let wanted = used && state.needs_notification()?;
    signal_if_owed(state, owed, wanted)
}

/// Signals the guest if `wanted` or owed (see [`signal_guest`]); needs only a shared look at
/// the vring, so the worker can settle debts on every wake-up under the read lock.
fn signal_if_owed(state: &VringState<Memory>, owed: &mut Owed, wanted: bool) -> Result<(), Error> {
    let Some(call) = state.get_call().as_ref().map(AsRawFd::as_raw_fd) else {
        owed.signal |= wanted;
        return Ok(());
    };
    // A new call fd may come after signals went to the old one; the guest gets one more.
    let new_call = owed.call != Some(call);
    if !(wanted || owed.signal || new_call) {
        return Ok(());
    }
    *owed = Owed {
        signal: false,
        call: Some(call),
    };
    state.signal_used_queue().map_err(Error::Signal)
}

/// A queue's debt of signals to the guest (see [`signal_guest`]).
#[derive(Clone, Copy, Debug, Default)]
struct Owed {
    /// A signal could not be sent (no call fd yet).
    signal: bool,
    /// The call fd the last signal went to.
    call: Option<RawFd>,
}

/// Adds (`on`) or removes a port fd from the worker's epoll set.
fn register(epoll: &WorkerEpoll, fd: RawFd, token: u16, on: bool) -> Result<(), Error> {
    let token = u64::from(token);
    if on {
        epoll.register_listener(fd, EventSet::IN, token)
    } else {
        epoll.unregister_listener(fd, EventSet::IN, token)
    }
    .map_err(Error::Epoll)
}

/// On a connection's first use of a queue, continues the used ring where the previous back-end
/// left it. vhost-user's SET_VRING_BASE restores only the avail position; a front-end
/// reconnecting after a back-end crash sets it to the used index (QEMU restores
/// `last_avail_idx` from the ring), so the used index the guest last saw, which is in guest
/// memory, is where ours continues. Starting from 0 instead makes the guest ignore every
/// completion until the index wraps.
fn resume_used_index(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    resumed: &mut bool,
) -> Result<(), Error> {
    if !*resumed {
        let used = queue.used_idx(mem, Ordering::Acquire)?;
        queue.set_next_used(used.0);
        *resumed = true;
    }
    Ok(())
}

/// Asks the guest to kick the rx queue when it next adds a buffer, and tells whether it added
/// one while we were deciding (then the caller retries instead of sleeping).
///
/// With EVENT_IDX, virtio-queue's `enable_notification` sets `avail_event` to our next
/// position; when buffers are already posted but too few for a mergeable frame, that position
/// is behind the guest's index and the guest would never kick (virtio 1.2 §2.7.10). So the
/// event is set at the guest's current index instead.
fn arm_rx_kick(queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, Error> {
    let avail = queue.avail_idx(mem, Ordering::Acquire)?;
    let next = queue.next_avail();
    queue.set_next_avail(avail.0);
    let enabled = queue.enable_notification(mem);
    queue.set_next_avail(next);
    enabled?;
    Ok(queue.avail_idx(mem, Ordering::Acquire)? != avail)
}

#[cfg(test)]
mod tests {
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    use super::*;

    /// A vring with no call fd yet, and an eventfd to give it as one.
    fn vring_and_call() -> (Vring, vmm_sys_util::eventfd::EventFd) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        let vring = Vring::new(GuestMemoryAtomic::new(mem), 16).unwrap();
        let call =
            vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        (vring, call)
    }

    fn give_call(vring: &Vring, call: &vmm_sys_util::eventfd::EventFd) {
        let fd = std::os::fd::IntoRawFd::into_raw_fd(call.try_clone().unwrap());
        // SAFETY: `fd` is a fresh duplicate that nothing else owns; the File takes it over.
        let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        vring.set_call(Some(file));
    }

    #[test]
    fn regression_a_signal_with_no_call_fd_is_owed_and_sent_once_there_is_one() {
        let (vring, call) = vring_and_call();
        let mut owed = Owed::default();
        signal_guest(&mut vring.get_mut(), &mut owed, true).unwrap();
        assert!(owed.signal, "nowhere to signal: owed");
        give_call(&vring, &call);
        signal_guest(&mut vring.get_mut(), &mut owed, false).unwrap();
        assert_eq!(call.read().unwrap(), 1, "the owed signal arrives");
        signal_guest(&mut vring.get_mut(), &mut owed, false).unwrap();
        assert!(call.read().is_err(), "and only once");
    }

    #[test]
    fn regression_a_new_call_fd_gets_a_signal() {
        let (vring, first) = vring_and_call();
        let mut owed = Owed::default();
        give_call(&vring, &first);
        signal_guest(&mut vring.get_mut(), &mut owed, false).unwrap();
        let _ = first.read();
        let second =
            vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        give_call(&vring, &second);
        signal_guest(&mut vring.get_mut(), &mut owed, false).unwrap();
        assert_eq!(second.read().unwrap(), 1);
        assert!(first.read().is_err(), "not the old notifier");
    }

    #[test]
    fn regression_used_index_resumes_where_the_previous_back_end_left_it() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        // A back-end before us completed 5 chains; the front-end restored avail to match.
        vq.used().idx().store(5);
        let mut queue: Queue = vq.create_queue().unwrap();
        queue.set_next_avail(5);
        let mut resumed = false;
        resume_used_index(&mut queue, &mem, &mut resumed).unwrap();
        assert!(resumed);
        assert_eq!(queue.next_used(), 5);
        queue.add_used(&mem, 0, 0).unwrap();
        assert_eq!(
            vq.used().idx().load(),
            6,
            "the guest sees the index move forward"
        );
    }
}
