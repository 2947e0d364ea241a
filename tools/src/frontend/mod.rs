//! A minimal virtio-net *driver* that talks to a vhost-user back-end, standing in for QEMU and a
//! guest in tests and benchmarks.
//!
//! It owns guest memory (a memfd it maps itself and shares with SET_MEM_TABLE), two split
//! virtqueues (rx = 0, tx = 1) whose rings and buffers live in that memory, and the vhost-user
//! session from `vhost::vhost_user::Frontend`. Frames go out with [`NetFrontend::send`], come in
//! with [`NetFrontend::recv_frame`]; [`NetFrontend::push_raw`] puts arbitrary, even malicious,
//! descriptor chains on a queue. Traffic generators queue many frames and kick once per batch
//! with [`NetFrontend::tx_queue`] and [`NetFrontend::tx_kick`]; memory regions come and go with
//! [`NetFrontend::add_mem_region`] and [`NetFrontend::remove_mem_region`]. With
//! VHOST_USER_PROTOCOL_F_BACKEND_REQ the session also sets up the back-end channel, whose
//! requests (config-change notifications) [`BackendChannel::next_event`] reads.
//!
//! Invariant: the driver side of each ring follows virtio 1.2 §2.7 (index publication ordering,
//! EVENT_IDX requests), and every device action it observes (a used id, a used length, a
//! header) is checked before it is trusted, so a back-end bug surfaces as an [`Error`].

mod backend_channel;
mod burst;
mod memory;
mod net;
mod queue;
mod session;
mod traffic;
mod vring;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use backend_channel::{BackendChannel, BackendEvent, MsgHeader};
pub use burst::{TxBuffer, TxSlot};
pub use memory::{GuestRam, MemoryLayout, PAGE_SIZE, REGION_STRIDE};
pub use net::{CONFIG_LEN, HDR_LEN, NetConfig, NetHdr, feature, format_mac, parse_mac, test_frame};
pub use queue::{Owner, RxUsed, Virtqueue};
pub use session::{FrontendOptions, NetFrontend, QueueId};
pub use traffic::{Link, RawDesc, RxFrame, linear};
pub use vm_memory::GuestAddress;
pub use vring::{Desc, RingAddrs, SplitRing, UsedElem};

/// Errors of the front-end. Device misbehaviour (`UnknownUsedId`, `UsedLenTooLarge`,
/// `ShortRxBuffer`, `BadNumBuffers`) is reported as such, distinct from local failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The memory layout cannot be built.
    #[error(
        "invalid guest memory layout: {size} bytes in {regions} region(s); want 1 or 2 regions of whole pages"
    )]
    InvalidLayout {
        /// Requested total size.
        size: u64,
        /// Requested region count.
        regions: u8,
    },
    /// memfd_create or dup failed.
    #[error("cannot create the guest memory memfd")]
    Memfd(#[source] io::Error),
    /// ftruncate of the memfd failed.
    #[error("cannot size the guest memory memfd to {size} bytes")]
    MemfdSize {
        /// Requested size.
        size: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// vm-memory could not map the memfd.
    #[error("cannot map guest memory")]
    MapMemory(#[source] vm_memory::mmap::FromRangesError),
    /// A run-time region must be whole pages at a page-aligned address, below 2^64.
    #[error(
        "cannot add a region of {size:#x} bytes at {addr:#x}: want whole pages at a page-aligned address"
    )]
    InvalidRegion {
        /// Requested guest address.
        addr: u64,
        /// Requested size.
        size: u64,
    },
    /// vm-memory refused the new region (it overlaps one already there).
    #[error("cannot add a region of {size:#x} bytes at {addr:#x} to guest memory")]
    AddRegion {
        /// Requested guest address.
        addr: u64,
        /// Requested size.
        size: u64,
        /// The cause.
        #[source]
        source: vm_memory::GuestRegionCollectionError,
    },
    /// Only regions added at run time can be removed: the first ones hold the rings.
    #[error("no region added at run time starts at {addr:#x}")]
    NotAnAddedRegion {
        /// Guest address given.
        addr: u64,
    },
    /// The bump allocator is exhausted.
    #[error("guest memory has no room left for {len} bytes: use a larger MemoryLayout::size")]
    OutOfGuestMemory {
        /// Requested bytes.
        len: u64,
    },
    /// A guest memory access failed.
    #[error("guest memory access at {addr:#x} failed")]
    GuestMemory {
        /// Guest address.
        addr: u64,
        /// The cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// A region cannot be described for SET_MEM_TABLE.
    #[error("guest memory region at {addr:#x} cannot be shared")]
    RegionInfo {
        /// Region start.
        addr: u64,
        /// The cause.
        #[source]
        source: vhost::Error,
    },
    /// The queue size is not a power of two up to 32768.
    #[error("queue size {size} is not a power of two between 1 and 32768")]
    InvalidQueueSize {
        /// Requested size.
        size: u16,
    },
    /// An eventfd or epoll operation failed.
    #[error("eventfd or epoll operation failed")]
    EventFd(#[source] io::Error),
    /// Connecting to the back-end's socket failed.
    #[error("cannot connect to the vhost-user back-end at {path}: is the daemon listening?")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A vhost-user request failed or was refused.
    #[error("vhost-user {request} failed")]
    Request {
        /// Message name as the spec spells it.
        request: &'static str,
        /// The cause.
        #[source]
        source: vhost::Error,
    },
    /// The caller asked for features the back-end does not offer.
    #[error("the back-end does not offer feature bits {missing:#x} (offered {offered:#x})")]
    FeatureNotOffered {
        /// Requested bits that are missing.
        missing: u64,
        /// What the back-end offered.
        offered: u64,
    },
    /// Not enough free descriptors.
    #[error("queue {queue}: a chain of {needed} descriptors does not fit, {free} free")]
    QueueFull {
        /// Queue index.
        queue: usize,
        /// Descriptors needed.
        needed: usize,
        /// Descriptors free.
        free: usize,
    },
    /// A chain was to be headed by a descriptor that is out of range or heads another chain.
    #[error("queue {queue}: descriptor {head} cannot head a new chain: out of range or in use")]
    HeadNotIdle {
        /// Queue index.
        queue: usize,
        /// The descriptor.
        head: u16,
    },
    /// A chain with no descriptor.
    #[error("a descriptor chain needs at least one descriptor")]
    EmptyChain,
    /// Tx segment lengths do not describe the header and frame.
    #[error(
        "tx segments {segments:?} must be non-zero, each at most {slot} bytes, and sum to {total}"
    )]
    InvalidSegments {
        /// Requested segment lengths.
        segments: Vec<usize>,
        /// Bytes of header plus frame.
        total: usize,
        /// Slot size.
        slot: u32,
    },
    /// A raw chain links to a descriptor it does not have.
    #[error("raw chain of {len} descriptors links to entry {link}")]
    InvalidRawLink {
        /// Chain length.
        len: usize,
        /// The bad link.
        link: usize,
    },
    /// A tx packet larger than its slot.
    #[error(
        "a {len}-byte tx packet does not fit the {slot}-byte slots: raise FrontendOptions::tx_slot_size"
    )]
    TxFrameTooLarge {
        /// Bytes of header plus frame.
        len: usize,
        /// Slot size.
        slot: u32,
    },
    /// An rx buffer larger than its slot.
    #[error(
        "rx buffers of {size} bytes exceed the {slot}-byte slots: raise FrontendOptions::rx_slot_size"
    )]
    BufferTooLarge {
        /// Requested size.
        size: u32,
        /// Slot size.
        slot: u32,
    },
    /// Nothing happened before the deadline.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// How long.
        timeout: Duration,
    },
    /// The device returned a used id that is not in flight.
    #[error("device error: queue {queue} returned used id {id}, which is not in flight")]
    UnknownUsedId {
        /// Queue index.
        queue: usize,
        /// The id.
        id: u32,
    },
    /// The device claims to have written more than the buffer holds.
    #[error("device error: queue {queue} used id {id} has len {len} > buffer size {size}")]
    UsedLenTooLarge {
        /// Queue index.
        queue: usize,
        /// The id.
        id: u32,
        /// Reported length.
        len: u32,
        /// Buffer size.
        size: u32,
    },
    /// The first buffer of a received frame is shorter than the header.
    #[error("device error: rx buffer holds {len} bytes, less than the {HDR_LEN}-byte header")]
    ShortRxBuffer {
        /// Reported length.
        len: u32,
    },
    /// num_buffers is 0, or more than the queue could hold.
    #[error("device error: rx header has num_buffers = {num_buffers}")]
    BadNumBuffers {
        /// The value.
        num_buffers: u16,
    },
    /// Creating, reading or writing the back-end channel failed.
    #[error("back-end channel I/O failed")]
    BackendChannel(#[source] io::Error),
    /// The back-end closed its end of the back-end channel.
    #[error(
        "the back-end closed the back-end channel (SET_BACKEND_REQ_FD): it can send no more config-change notifications"
    )]
    BackendChannelClosed,
    /// The back-end sent a message the vhost-user spec does not allow on its channel.
    #[error(
        "device error: back-end channel message (request {request}, flags {flags:#x}, size {size}) {why}"
    )]
    BadBackendMessage {
        /// Request code.
        request: u32,
        /// Header flags.
        flags: u32,
        /// Payload size.
        size: u32,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The config space reply is too short.
    #[error("config space reply has {len} bytes, fewer than {CONFIG_LEN}")]
    ShortConfig {
        /// Reply length.
        len: usize,
    },
}
