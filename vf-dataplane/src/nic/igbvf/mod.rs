//! Intel 82576 Virtual Function ("igbvf", PCI 8086:10ca), driven from userspace.
//!
//! Facts come from the 82576 datasheet (§7.10 virtualization, §8 registers) as mirrored by
//! Linux's igbvf (regs.h, defines.h, mbx.h, vf.h); names keep the datasheet's spelling.

pub mod desc;
pub mod device;
pub mod mbx;
pub mod port;
pub mod regs;
pub mod ring;
pub mod vf;

/// PCI vendor ID of Intel.
pub const PCI_VENDOR_ID_INTEL: u16 = 0x8086;
/// PCI device ID of the 82576 VF.
pub const PCI_DEVICE_ID_82576_VF: u16 = 0x10ca;
/// PCI device ID of the 82576 PF, refused with a clear error when given instead of a VF.
pub const PCI_DEVICE_ID_82576_PF: u16 = 0x10c9;
