//! vhost-vf: a vhost-user virtio-net back-end that forwards a VM's packets into a port.
//!
//! - [`device`]: the `VhostUserBackend` implementation (features, config space, memory).
//! - [`worker`]: the forwarding loop run on vhost-user-backend's worker thread.
//! - [`tx`] / [`rx`]: virtqueue chains to and from port bursts; [`chain`] validates chains;
//!   [`rx_direct`] posts the guest's rx buffers to a port that receives into them;
//!   [`tx_flight`] keeps tx chains in order until the port has finished with them.
//! - [`features`]: offered and negotiated feature bits.
//! - [`daemon`]: serving one front-end after another, as server or client.
//! - [`config_notify`]: config-change notifications (link, MAC) to the front-end.
//! - [`cli`], [`signals`], [`stats`].

pub mod chain;
pub mod cli;
pub mod config_notify;
pub mod daemon;
pub mod device;
pub mod features;
pub mod relay;
pub mod rx;
pub mod rx_direct;
pub mod signals;
pub mod stats;
pub mod tx;
pub mod tx_flight;
pub mod worker;
