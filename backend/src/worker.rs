//! The forwarding loop of one device: tx kicks drain the tx queue into the port, port readiness
//! and rx kicks fill the guest's rx buffers. It runs on vhost-user-backend's worker thread,
//! called from `handle_event` with the device lock held for the whole wake-up (never per
//! packet).
//!
//! Invariant: the port's rx fd is registered with the worker's epoll only while the guest has
//! rx buffers. When the guest runs out, the fd is removed and rx notifications are armed, so the
//! port keeps its frames and the worker sleeps until the guest's next rx kick.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::debug;
use vf_dataplane::port::MAX_RX_FRAME;
use vf_dataplane::{BURST_SIZE, Port, RxBurst, TxBurst, rl_warn};
use vhost_user_backend::{VringEpollHandler, VringRwLock, VringT};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::device::NetBackend;
use crate::features::Negotiated;
use crate::rx::{self, Delivery, RxScratch};
use crate::stats::NetStats;
use crate::tx::{self, TxDrop};

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
/// Rx bursts per wake-up before the worker returns to epoll, so tx is not starved.
const RX_BURSTS_PER_WAKEUP: usize = 8;

/// The vring type the worker gets from vhost-user-backend.
pub type Vring = VringRwLock<GuestMemoryAtomic<GuestMemoryMmap>>;
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

/// State of the forwarding loop, owned by the device and locked once per wake-up.
pub struct Forwarder {
    port: Box<dyn Port>,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    negotiated: Negotiated,
    tx_burst: TxBurst,
    tx_heads: Vec<u16>,
    rx_burst: RxBurst,
    rx_scratch: RxScratch,
    stats: NetStats,
    epoll: Option<WorkerEpoll>,
    port_rx_registered: bool,
    /// Whether each queue's used index was resumed from guest memory on this connection.
    used_resumed: [bool; NUM_QUEUES],
}

impl Forwarder {
    /// A forwarder for `port`, with its bursts allocated once here.
    pub fn new(port: Box<dyn Port>, mtu: u16) -> Self {
        Forwarder {
            port,
            mem: None,
            negotiated: Negotiated::new(0, mtu),
            tx_burst: TxBurst::new(),
            tx_heads: Vec::with_capacity(BURST_SIZE),
            rx_burst: RxBurst::new(MAX_RX_FRAME),
            rx_scratch: RxScratch::new(),
            stats: NetStats::default(),
            epoll: None,
            port_rx_registered: false,
            used_resumed: [false; NUM_QUEUES],
        }
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

    /// Uses `mem` for guest memory from now on.
    pub fn set_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) {
        self.mem = Some(mem);
    }

    /// Attaches the worker's epoll set and starts listening to the port.
    pub fn attach(&mut self, epoll: WorkerEpoll) -> Result<(), Error> {
        self.epoll = Some(epoll);
        self.listen_to_port(true)
    }

    /// Returns to the state before any front-end: no memory, no features, nothing pending,
    /// counters zeroed, the port still open but no longer watched.
    pub fn reset(&mut self) {
        if let Err(e) = self.listen_to_port(false) {
            debug!("removing the port from epoll at reset: {e}");
        }
        self.epoll = None;
        self.mem = None;
        while self.rx_burst.pending() > 0 {
            self.rx_burst.consume();
        }
        self.stats = NetStats::default();
        self.used_resumed = [false; NUM_QUEUES];
        let mtu = self.negotiated.mtu;
        if let Err(e) = self.set_negotiated(Negotiated::new(0, mtu)) {
            debug!("clearing the port's offloads at reset: {e}");
        }
    }

    /// Handles one epoll event of the worker.
    pub fn handle_event(&mut self, event: u16, vrings: &[Vring]) -> Result<(), Error> {
        match usize::from(event) {
            RX_QUEUE => {
                // The guest posted rx buffers: the port may be read again.
                self.listen_to_port(true)?;
                self.process_rx(&vrings[RX_QUEUE])
            }
            TX_QUEUE => self.process_tx(&vrings[TX_QUEUE]),
            _ if event == PORT_RX_EVENT => self.process_rx(&vrings[RX_QUEUE]),
            _ => {
                rl_warn!(event, "unexpected epoll event");
                Ok(())
            }
        }
    }

    fn listen_to_port(&mut self, on: bool) -> Result<(), Error> {
        if on == self.port_rx_registered {
            return Ok(());
        }
        let (Some(epoll), Some(fd)) = (self.epoll.as_ref(), self.port.rx_ready_fd()) else {
            return Ok(());
        };
        let token = u64::from(PORT_RX_EVENT);
        if on {
            epoll.register_listener(fd, EventSet::IN, token)
        } else {
            epoll.unregister_listener(fd, EventSet::IN, token)
        }
        .map_err(Error::Epoll)?;
        self.port_rx_registered = on;
        Ok(())
    }

    fn process_tx(&mut self, vring: &Vring) -> Result<(), Error> {
        let Some(atomic) = self.mem.as_ref() else {
            return Ok(());
        };
        let mem = atomic.memory();
        let mut state = vring.get_mut();
        if !state.get_queue().ready() || !state.is_enabled() {
            return Ok(());
        }
        resume_used_index(
            state.get_queue_mut(),
            &mem,
            &mut self.used_resumed[TX_QUEUE],
        )?;
        // virtio-queue's README: drain, then re-enable notifications and drain again if the
        // guest added chains in between, so no kick is lost.
        loop {
            state.disable_notification()?;
            while self.tx_one_burst(&mem, state.get_queue_mut())? > 0 {
                if state.needs_notification()? {
                    state.signal_used_queue().map_err(Error::Signal)?;
                }
            }
            if !state.enable_notification()? {
                break;
            }
        }
        Ok(())
    }

    /// Moves up to one burst of tx chains into the port; returns how many chains it consumed.
    fn tx_one_burst(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue) -> Result<usize, Error> {
        self.tx_burst.clear();
        self.tx_heads.clear();
        let limits = self.negotiated.tx_limits();
        let queue_size = queue.size();
        while self.tx_heads.len() < BURST_SIZE {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            self.tx_heads.push(chain.head_index());
            if let Err(drop) =
                tx::chain_to_frame(chain, mem, queue_size, &limits, &mut self.tx_burst)
            {
                self.count_tx_drop(drop);
            }
        }
        if self.tx_heads.is_empty() {
            return Ok(0);
        }
        let sent = self.port.tx_burst(&self.tx_burst);
        // Ports that read guest memory after returning (a VF by DMA) need the used ring to
        // follow `tx_completed`; until the VF port is wired here (issue 4) only copying ports
        // are used, and they finish every frame inside `tx_burst`.
        let completed = self.port.tx_completed();
        debug_assert_eq!(
            completed, sent,
            "a copying port finishes frames in tx_burst"
        );
        for i in 0..sent {
            self.stats.tx_bytes += self.tx_burst.frame(i).2 as u64;
        }
        self.stats.tx_packets += sent as u64;
        self.stats.tx_port_full += (self.tx_burst.len() - sent) as u64;
        // The port copied (TAP) or refused every frame: all chains go back to the guest now,
        // in the order they came.
        for &head in &self.tx_heads {
            queue.add_used(mem, head, 0)?;
        }
        Ok(self.tx_heads.len())
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
        let Some(atomic) = self.mem.as_ref() else {
            return self.listen_to_port(false);
        };
        let mem = atomic.memory();
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
        let layout = self.negotiated.rx_layout();
        let mut delivered = false;
        let mut starved = false;
        'bursts: for _ in 0..RX_BURSTS_PER_WAKEUP {
            if self.rx_burst.pending() == 0 && self.port.rx_burst(&mut self.rx_burst) == 0 {
                break;
            }
            while let Some((hdr, frame)) = self.rx_burst.peek() {
                let frame_len = frame.len();
                let stats = &mut self.stats;
                let outcome = rx::deliver_frame(
                    state.get_queue_mut(),
                    &mem,
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
                        if arm_rx_kick(state.get_queue_mut(), &mem)? {
                            continue;
                        }
                        self.stats.rx_no_avail_buffer += 1;
                        starved = true;
                        break 'bursts;
                    }
                }
            }
        }
        if delivered && state.needs_notification()? {
            state.signal_used_queue().map_err(Error::Signal)?;
        }
        drop(state);
        if starved {
            self.listen_to_port(false)?;
        }
        Ok(())
    }
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
