//! Programs and libraries around the vhost-vf daemon.
//!
//! [`frontend`] is a minimal vhost-user virtio-net driver (the part of QEMU plus a guest that a
//! back-end sees), used by the integration tests and the traffic tools (`vu-frontend`);
//! [`vf_frames`] builds the numbered test frames the tools send and the tests rebuild.

pub mod frontend;
pub mod vf_frames;

/// The crates in [`frontend`]'s API (protocol feature flags, feature bit numbers), so that
/// users need no dependency of their own.
pub use {vhost, virtio_bindings};
