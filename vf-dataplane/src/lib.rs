//! Everything below the virtqueues: the [`Port`] abstraction that moves bursts of frames, and its
//! implementations. No vhost-user knowledge lives here; the daemon in `backend/` drives ports
//! through this API only.
//!
//! - [`port`]: the `Port` trait, the caller-owned [`RxBurst`]/[`TxBurst`], offloads and counters.
//! - [`tap`]: a Linux TAP device with `IFF_VNET_HDR`, so offload metadata crosses unchanged.
//! - [`null`]: a port that swallows tx and never receives, for benchmarks of the vhost side.
//! - [`net_hdr`]: the virtio-net header the ports exchange offload metadata in.
//! - [`ratelimit`]: rate-limited logging for data-path code.

pub mod dma;
pub mod net_hdr;
pub mod nic;
pub mod null;
pub mod port;
pub mod ratelimit;
pub mod tap;
pub mod vfio;

pub use net_hdr::VirtioNetHdr;
pub use port::{
    BURST_SIZE, GuestMemoryError, GuestRegion, LinkState, MAX_TX_SEGMENTS, MemoryOwner, Offloads,
    Port, PortEvents, PortFd, PortStats, RxBurst, TxBurst, TxSegment,
};
