//! VFIO: opening a PCI device for userspace DMA and MMIO. `sysfs` checks the device before the
//! kernel is asked, so each failure says what to fix.

pub mod bar;
pub mod device;
pub mod sysfs;
