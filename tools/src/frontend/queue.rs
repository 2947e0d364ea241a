//! One virtqueue of the emulated driver: its split ring, kick and call eventfds, a buffer slot
//! per descriptor, and the record of which chains are in flight and who made them.
//!
//! Invariant: every head the driver made available is marked in flight until the device returns
//! it in the used ring; a used id that is not in flight is a device error and is reported, never
//! ignored. The bookkeeping is one entry per descriptor index, reused across chains, so that a
//! single-descriptor chain costs no allocation (the batched tx path of `burst` relies on it).

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vhost::VringConfigData;
use vhost::vhost_user::message::VhostUserVringAddrFlags;
use vm_memory::GuestAddress;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::Error;
use super::memory::{GuestRam, PAGE_SIZE};
use super::vring::SplitRing;

/// Longest single sleep on the call eventfd: a missed notification costs at most this much,
/// since the used index is polled again after each sleep.
const POLL_SLICE: Duration = Duration::from_millis(50);

/// Who made a chain, which says what its completion means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// A frame sent with `send`.
    Tx,
    /// An rx buffer of `size` bytes in the head descriptor's slot.
    Rx {
        /// Bytes offered to the device.
        size: u32,
    },
    /// A chain pushed raw by the caller.
    Raw,
}

/// What the chain headed by a descriptor index is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HeadState {
    /// Heads no chain the driver made available.
    Idle,
    /// Made available by the driver, not yet returned by the device.
    InFlight(Owner),
    /// A returned rx buffer whose bytes the caller has not consumed yet.
    RxHeld,
}

/// Bookkeeping of the chain headed by one descriptor index.
#[derive(Debug)]
struct Head {
    state: HeadState,
    /// The chain's descriptors, head first. The vector is kept when the chain completes, so
    /// that the next single-descriptor chain on this head reuses its capacity.
    descs: Vec<u16>,
    /// The chain's submission number on this queue (0 for the first chain made available).
    submitted: u64,
}

/// A completed rx buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxUsed {
    /// Head descriptor (its slot holds the bytes).
    pub head: u16,
    /// Bytes the device wrote.
    pub len: u32,
    /// Bytes the buffer had.
    pub size: u32,
}

/// A virtqueue with its notification eventfds and in-flight bookkeeping.
pub struct Virtqueue {
    index: usize,
    ring: SplitRing,
    kick: EventFd,
    call: EventFd,
    epoll: Epoll,
    event_idx: bool,
    slots: GuestAddress,
    slot_size: u32,
    /// Indexed by head descriptor.
    heads: Vec<Head>,
    /// Chains made available so far: the next chain's submission number.
    submitted: u64,
    tx_in_flight: usize,
    rx_posted: usize,
    raw_done: HashMap<u16, u32>,
    rx_done: VecDeque<RxUsed>,
    tx_done: u64,
}

impl Virtqueue {
    /// Allocates the ring and one `slot_size` buffer per descriptor, and the eventfds.
    pub fn new(
        ram: &mut GuestRam,
        index: usize,
        size: u16,
        slot_size: u32,
        event_idx: bool,
    ) -> Result<Self, Error> {
        let ring = SplitRing::new(ram, size)?;
        let slots = ram.alloc(u64::from(size) * u64::from(slot_size), PAGE_SIZE)?;
        let kick = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        let call = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        let epoll = Epoll::new().map_err(Error::EventFd)?;
        epoll
            .ctl(
                ControlOperation::Add,
                call.as_raw_fd(),
                EpollEvent::new(EventSet::IN, 0),
            )
            .map_err(Error::EventFd)?;
        Ok(Virtqueue {
            index,
            ring,
            kick,
            call,
            epoll,
            event_idx,
            slots,
            slot_size,
            heads: (0..size)
                .map(|_| Head {
                    state: HeadState::Idle,
                    descs: Vec::new(),
                    submitted: 0,
                })
                .collect(),
            submitted: 0,
            tx_in_flight: 0,
            rx_posted: 0,
            raw_done: HashMap::new(),
            rx_done: VecDeque::with_capacity(usize::from(size)),
            tx_done: 0,
        })
    }

    /// The vhost-user queue index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The ring.
    pub fn ring(&self) -> &SplitRing {
        &self.ring
    }

    /// The ring, mutably.
    pub fn ring_mut(&mut self) -> &mut SplitRing {
        &mut self.ring
    }

    /// The eventfd the driver writes to notify the device (SET_VRING_KICK).
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    /// The eventfd the device writes to notify the driver (SET_VRING_CALL).
    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }

    /// Bytes of each descriptor's buffer slot.
    pub fn slot_size(&self) -> u32 {
        self.slot_size
    }

    /// Guest address of descriptor `desc`'s buffer slot.
    pub fn slot_addr(&self, desc: u16) -> GuestAddress {
        GuestAddress(self.slots.0 + u64::from(desc) * u64::from(self.slot_size))
    }

    /// The SET_VRING_ADDR payload: ring addresses as this process sees them.
    pub fn config_data(&self, ram: &GuestRam) -> Result<VringConfigData, Error> {
        let a = self.ring.addrs();
        Ok(VringConfigData {
            queue_max_size: self.ring.size(),
            queue_size: self.ring.size(),
            flags: VhostUserVringAddrFlags::empty().bits(),
            desc_table_addr: ram.host_addr(a.desc)?,
            used_ring_addr: ram.host_addr(a.used)?,
            avail_ring_addr: ram.host_addr(a.avail)?,
            log_addr: None,
        })
    }

    /// Takes `n` free descriptors, reaping completions first if needed.
    pub fn alloc(&mut self, ram: &GuestRam, n: usize) -> Result<Vec<u16>, Error> {
        if self.ring.free_count() < n {
            self.reap(ram)?;
        }
        self.ring.alloc(n).ok_or(Error::QueueFull {
            queue: self.index,
            needed: n,
            free: self.ring.free_count(),
        })
    }

    /// Takes `n` free descriptors, waiting up to `timeout` for the device to return chains.
    pub fn alloc_within(
        &mut self,
        ram: &GuestRam,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<u16>, Error> {
        let size = usize::from(self.ring.size());
        if n <= size && self.ring.free_count() < n {
            self.wait_until(ram, Instant::now() + timeout, |q, _| {
                Ok(q.ring.free_count() >= n)
            })?;
        }
        self.alloc(ram, n)
    }

    /// Puts the chain whose descriptors (head first) are already written into the avail ring;
    /// the device sees it after [`Self::publish_and_kick`].
    pub fn push(&mut self, ram: &GuestRam, descs: Vec<u16>, owner: Owner) -> Result<u16, Error> {
        let head = *descs.first().ok_or(Error::EmptyChain)?;
        self.make_available(ram, head, owner)?;
        self.heads[usize::from(head)].descs = descs;
        Ok(head)
    }

    /// [`Self::push`] for a chain of the one, already written, descriptor `desc`, without
    /// allocating.
    pub fn push_single(&mut self, ram: &GuestRam, desc: u16, owner: Owner) -> Result<u16, Error> {
        self.make_available(ram, desc, owner)?;
        let descs = &mut self.heads[usize::from(desc)].descs;
        descs.clear();
        descs.push(desc);
        Ok(desc)
    }

    /// Writes `head` into the avail ring and marks its chain in flight.
    fn make_available(&mut self, ram: &GuestRam, head: u16, owner: Owner) -> Result<(), Error> {
        let queue = self.index;
        let entry = self
            .heads
            .get_mut(usize::from(head))
            .filter(|h| h.state == HeadState::Idle)
            .ok_or(Error::HeadNotIdle { queue, head })?;
        self.ring.push_avail(ram, head)?;
        entry.state = HeadState::InFlight(owner);
        entry.submitted = self.submitted;
        self.submitted += 1;
        match owner {
            Owner::Tx => self.tx_in_flight += 1,
            Owner::Rx { .. } => self.rx_posted += 1,
            Owner::Raw => {}
        }
        Ok(())
    }

    /// Publishes the avail index and kicks the device.
    pub fn publish_and_kick(&self, ram: &GuestRam) -> Result<(), Error> {
        self.ring.publish(ram)?;
        // Always kick: with EVENT_IDX a kick the device did not ask for is allowed (§2.7.10),
        // and it keeps this driver independent of the device's avail_event.
        self.kick.write(1).map_err(Error::EventFd)
    }

    /// Consumes every used element the device published.
    pub fn reap(&mut self, ram: &GuestRam) -> Result<(), Error> {
        while let Some(elem) = self.ring.pop_used(ram)? {
            let in_flight = u16::try_from(elem.id).ok().and_then(|head| {
                match self.heads.get(usize::from(head))?.state {
                    HeadState::InFlight(owner) => Some((head, owner)),
                    HeadState::Idle | HeadState::RxHeld => None,
                }
            });
            let Some((head, owner)) = in_flight else {
                return Err(Error::UnknownUsedId {
                    queue: self.index,
                    id: elem.id,
                });
            };
            let entry = &mut self.heads[usize::from(head)];
            match owner {
                Owner::Tx => {
                    self.ring.release(&entry.descs);
                    entry.state = HeadState::Idle;
                    self.tx_in_flight -= 1;
                    self.tx_done += 1;
                }
                Owner::Raw => {
                    self.ring.release(&entry.descs);
                    entry.state = HeadState::Idle;
                    self.raw_done.insert(head, elem.len);
                }
                Owner::Rx { size } => {
                    if elem.len > size {
                        return Err(Error::UsedLenTooLarge {
                            queue: self.index,
                            id: elem.id,
                            len: elem.len,
                            size,
                        });
                    }
                    // Descriptors go back when the caller consumed the bytes.
                    entry.state = HeadState::RxHeld;
                    self.rx_posted -= 1;
                    self.rx_done.push_back(RxUsed {
                        head,
                        len: elem.len,
                        size,
                    });
                }
            }
        }
        Ok(())
    }

    /// Completed rx buffers, oldest first, not yet consumed.
    pub fn rx_done(&self) -> &VecDeque<RxUsed> {
        &self.rx_done
    }

    /// Takes the oldest completed rx buffer; its descriptors return to the free list.
    pub fn take_rx(&mut self) -> Option<RxUsed> {
        let used = self.rx_done.pop_front()?;
        let entry = &mut self.heads[usize::from(used.head)];
        if entry.state == HeadState::RxHeld {
            self.ring.release(&entry.descs);
            entry.state = HeadState::Idle;
        }
        Some(used)
    }

    /// Takes the used length of raw chain `head` once the device returned it.
    pub fn take_raw(&mut self, head: u16) -> Option<u32> {
        self.raw_done.remove(&head)
    }

    /// Whether raw chain `head` was returned and not yet taken.
    pub fn raw_done_contains(&self, head: u16) -> bool {
        self.raw_done.contains_key(&head)
    }

    /// Tx chains made available and not yet returned.
    pub fn tx_in_flight(&self) -> usize {
        self.tx_in_flight
    }

    /// Rx buffers offered to the device and not yet returned.
    pub fn rx_posted(&self) -> usize {
        self.rx_posted
    }

    /// The submission number the next chain made available on this queue gets (chains of
    /// every owner count, starting from 0).
    pub fn submitted(&self) -> u64 {
        self.submitted
    }

    /// The submission number of the oldest tx chain still in flight, `None` if none is: every
    /// tx chain submitted before number `n` has been returned once this is `None` or `>= n`.
    /// Looks at every head: for waiting on a condition, not for a per-frame path.
    pub fn oldest_tx_in_flight(&self) -> Option<u64> {
        self.heads
            .iter()
            .filter(|h| h.state == HeadState::InFlight(Owner::Tx))
            .map(|h| h.submitted)
            .min()
    }

    /// Tx chains the device has returned since the start.
    pub fn tx_done(&self) -> u64 {
        self.tx_done
    }

    /// Reaps and evaluates `cond` until it holds or `deadline` passes (then `Ok(false)`),
    /// sleeping on the call eventfd in between.
    pub fn wait_until(
        &mut self,
        ram: &GuestRam,
        deadline: Instant,
        mut cond: impl FnMut(&Self, &GuestRam) -> Result<bool, Error>,
    ) -> Result<bool, Error> {
        loop {
            self.reap(ram)?;
            if cond(self, ram)? {
                return Ok(true);
            }
            if self.event_idx {
                // Ask for a call on the next used entry, then look again so that an entry
                // added before the request was seen is not waited for in vain.
                self.ring.request_notification(ram)?;
                self.reap(ram)?;
                if cond(self, ram)? {
                    return Ok(true);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            self.sleep_on_call(POLL_SLICE.min(deadline - now))?;
        }
    }

    fn sleep_on_call(&self, timeout: Duration) -> Result<(), Error> {
        let ms = i32::try_from(timeout.as_millis().max(1)).unwrap_or(i32::MAX);
        let mut events = [EpollEvent::default()];
        match self.epoll.wait(ms, &mut events) {
            Ok(0) => Ok(()),
            Ok(_) => match self.call.read() {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
                Err(e) => Err(Error::EventFd(e)),
            },
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(Error::EventFd(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::memory::MemoryLayout;

    fn setup() -> (GuestRam, Virtqueue) {
        let mut ram = GuestRam::new(MemoryLayout {
            size: 1 << 20,
            regions: 1,
        })
        .unwrap();
        let q = Virtqueue::new(&mut ram, 1, 8, 256, false).unwrap();
        (ram, q)
    }

    /// Plays the device: returns `id` with `len` as used element number `n`.
    fn device_use(ram: &GuestRam, q: &Virtqueue, n: u16, id: u32, len: u32) {
        let a = q.ring().addrs();
        let slot = u64::from(n % q.ring().size());
        let mut elem = id.to_le_bytes().to_vec();
        elem.extend_from_slice(&len.to_le_bytes());
        ram.write(GuestAddress(a.used.0 + 4 + 8 * slot), &elem)
            .unwrap();
        ram.write(GuestAddress(a.used.0 + 2), &(n + 1).to_le_bytes())
            .unwrap();
    }

    #[test]
    fn tx_completion_frees_the_whole_chain() {
        let (ram, mut q) = setup();
        let descs = q.alloc(&ram, 3).unwrap();
        let head = q.push(&ram, descs, Owner::Tx).unwrap();
        q.publish_and_kick(&ram).unwrap();
        assert_eq!(q.kick_fd().read().unwrap(), 1);
        assert_eq!(q.tx_in_flight(), 1);
        device_use(&ram, &q, 0, u32::from(head), 0);
        q.reap(&ram).unwrap();
        assert_eq!(q.tx_in_flight(), 0);
        assert_eq!(q.tx_done(), 1);
        assert_eq!(q.ring().free_count(), 8);
    }

    #[test]
    fn used_id_not_in_flight_is_a_device_error() {
        let (ram, mut q) = setup();
        device_use(&ram, &q, 0, 5, 0);
        assert!(matches!(
            q.reap(&ram),
            Err(Error::UnknownUsedId { queue: 1, id: 5 })
        ));
    }

    #[test]
    fn rx_used_len_beyond_the_buffer_is_a_device_error() {
        let (ram, mut q) = setup();
        let descs = q.alloc(&ram, 1).unwrap();
        let head = q.push(&ram, descs, Owner::Rx { size: 100 }).unwrap();
        device_use(&ram, &q, 0, u32::from(head), 101);
        assert!(matches!(
            q.reap(&ram),
            Err(Error::UsedLenTooLarge { len: 101, .. })
        ));
    }

    #[test]
    fn rx_buffer_is_held_until_taken_and_raw_completion_is_kept() {
        let (ram, mut q) = setup();
        let rx = q.alloc(&ram, 1).unwrap();
        let rx_head = q.push(&ram, rx, Owner::Rx { size: 100 }).unwrap();
        let raw = q.alloc(&ram, 2).unwrap();
        let raw_head = q.push(&ram, raw, Owner::Raw).unwrap();
        assert_eq!(q.rx_posted(), 1);
        device_use(&ram, &q, 0, u32::from(raw_head), 0);
        device_use(&ram, &q, 1, u32::from(rx_head), 60);
        q.reap(&ram).unwrap();
        assert_eq!(q.rx_posted(), 0);
        assert_eq!(q.ring().free_count(), 7);
        assert_eq!(q.take_raw(raw_head), Some(0));
        assert_eq!(q.take_raw(raw_head), None);
        let used = q.take_rx().unwrap();
        assert_eq!((used.head, used.len, used.size), (rx_head, 60, 100));
        assert_eq!(q.ring().free_count(), 8);
    }

    #[test]
    fn wait_until_times_out_without_device_activity() {
        let (ram, mut q) = setup();
        let start = Instant::now();
        let held = q
            .wait_until(&ram, start + Duration::from_millis(120), |q, _| {
                Ok(q.tx_done() > 0)
            })
            .unwrap();
        assert!(!held);
        assert!(start.elapsed() >= Duration::from_millis(120));
    }

    #[test]
    fn full_ring_waits_for_completions_then_reports_queue_full() {
        let (ram, mut q) = setup();
        let all = q.alloc(&ram, 8).unwrap();
        let head = q.push(&ram, all, Owner::Tx).unwrap();
        assert!(matches!(
            q.alloc_within(&ram, 1, Duration::from_millis(60)),
            Err(Error::QueueFull {
                needed: 1,
                free: 0,
                ..
            })
        ));
        device_use(&ram, &q, 0, u32::from(head), 0);
        assert_eq!(q.alloc_within(&ram, 8, Duration::ZERO).unwrap().len(), 8);
    }

    #[test]
    fn oldest_tx_in_flight_follows_completions_in_any_order() {
        let (ram, mut q) = setup();
        let heads: Vec<u16> = (0..3)
            .map(|_| {
                let d = q.ring_mut().alloc_one().unwrap();
                q.push_single(&ram, d, Owner::Tx).unwrap()
            })
            .collect();
        assert_eq!(q.submitted(), 3);
        assert_eq!(q.oldest_tx_in_flight(), Some(0));
        // The device returns the second chain first: the first is still the oldest.
        device_use(&ram, &q, 0, u32::from(heads[1]), 0);
        q.reap(&ram).unwrap();
        assert_eq!(q.oldest_tx_in_flight(), Some(0));
        device_use(&ram, &q, 1, u32::from(heads[0]), 0);
        q.reap(&ram).unwrap();
        assert_eq!(q.oldest_tx_in_flight(), Some(2));
        device_use(&ram, &q, 2, u32::from(heads[2]), 0);
        q.reap(&ram).unwrap();
        assert_eq!(q.oldest_tx_in_flight(), None);
        assert_eq!((q.tx_in_flight(), q.tx_done()), (0, 3));
        assert_eq!(q.ring().free_count(), 8);
    }

    #[test]
    fn a_head_already_in_flight_cannot_head_another_chain() {
        let (ram, mut q) = setup();
        let d = q.ring_mut().alloc_one().unwrap();
        q.push_single(&ram, d, Owner::Tx).unwrap();
        assert!(matches!(
            q.push_single(&ram, d, Owner::Tx),
            Err(Error::HeadNotIdle { queue: 1, head }) if head == d
        ));
        assert!(matches!(
            q.push_single(&ram, 8, Owner::Tx),
            Err(Error::HeadNotIdle { head: 8, .. })
        ));
        assert_eq!(q.tx_in_flight(), 1);
    }

    #[test]
    fn slots_do_not_overlap() {
        let (_ram, q) = setup();
        assert_eq!(q.slot_addr(1).0 - q.slot_addr(0).0, 256);
    }
}
