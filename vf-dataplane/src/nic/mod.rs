//! NIC drivers that run in userspace over VFIO. Each driver splits like Linux's: register
//! names and bits (`regs`), descriptor formats (`desc`), the PF mailbox (`mbx`), device control
//! (`vf`), rings.

pub mod igbvf;
pub mod regs_io;
