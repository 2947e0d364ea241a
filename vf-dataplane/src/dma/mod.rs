//! DMA memory: the IOVA space the daemon's own regions come from, and guest memory mapped
//! into it at IOVA = guest physical address.

pub mod guest;
pub mod iova;
pub mod region;
pub mod ring_mem;
