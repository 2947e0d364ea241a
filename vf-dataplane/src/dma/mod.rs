//! DMA memory: the IOVA space the daemon's own regions come from.

pub mod iova;
pub mod region;
pub mod ring_mem;
