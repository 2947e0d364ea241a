//! A PCI function opened through VFIO (container/group API): its BAR0, bus mastering, MSI-X
//! onto eventfds, function reset, and DMA mappings in its IOMMU domain.
//!
//! Invariant: a `VfioPci` holds its container and device for its whole life; dropping it
//! closes the device, which the kernel resets and removes from the IOMMU domain.

use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{
    VFIO_IOMMU_INFO_CAPS, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, VFIO_PCI_BAR0_REGION_INDEX,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, vfio_iommu_type1_info,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioError};
use vmm_sys_util::eventfd::EventFd;

use super::bar::Bar0;
use super::sysfs::{self, SYSFS};

/// PCI config space: the command register, and its bus-master enable bit (PCI 3.0 §6.2.2).
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MASTER: u16 = 0x4;

mod ioctl {
    //! `VFIO_IOMMU_GET_INFO` (`_IO(VFIO_TYPE, VFIO_BASE + 12)`, linux/vfio.h), which
    //! vfio-ioctls does not expose.
    #![allow(missing_docs)]
    vmm_sys_util::ioctl_io_nr!(VFIO_IOMMU_GET_INFO, 0x3B, 100 + 12);
}
use ioctl::VFIO_IOMMU_GET_INFO;

/// Failures opening or driving a VFIO device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device failed a pre-flight check.
    #[error(transparent)]
    Check(#[from] sysfs::Error),
    /// `/dev/vfio/*` could not be opened for lack of permission.
    #[error(
        "permission denied opening {path}: run as root, or give the user access to /dev/vfio/vfio and the group node (and raise RLIMIT_MEMLOCK)"
    )]
    PermissionDenied {
        /// The node.
        path: String,
    },
    /// A VFIO operation failed.
    #[error("VFIO {what} failed for {bdf}")]
    Vfio {
        /// The device.
        bdf: String,
        /// What was attempted.
        what: &'static str,
        /// Cause.
        #[source]
        source: VfioError,
    },
    /// Mapping BAR0 failed.
    #[error("cannot map BAR0 of {bdf}")]
    MapBar {
        /// The device.
        bdf: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Querying the IOMMU failed.
    #[error("cannot query the IOMMU of {bdf} (VFIO_IOMMU_GET_INFO)")]
    IommuInfo {
        /// The device.
        bdf: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// An opened PCI function.
pub struct VfioPci {
    bdf: String,
    group: u32,
    bar0: Bar0,
    device: VfioDevice,
    container: Arc<VfioContainer>,
}

impl VfioPci {
    /// Opens `bdf` after the sysfs checks, maps BAR0 and enables bus mastering.
    pub fn open(bdf: &str) -> Result<Self, Error> {
        Self::open_in(Path::new(SYSFS), bdf)
    }

    /// As [`open`](Self::open), with sysfs at `sysfs`.
    pub fn open_in(sysfs_root: &Path, bdf: &str) -> Result<Self, Error> {
        let checked = sysfs::check_vf(sysfs_root, bdf)?;
        let vfio = |what| {
            let bdf = bdf.to_string();
            move |source| match source {
                VfioError::OpenContainer(ref e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    Error::PermissionDenied {
                        path: "/dev/vfio/vfio".to_string(),
                    }
                }
                VfioError::OpenGroup(ref e, ref path)
                    if e.kind() == io::ErrorKind::PermissionDenied =>
                {
                    Error::PermissionDenied { path: path.clone() }
                }
                source => Error::Vfio { bdf, what, source },
            }
        };
        let container = Arc::new(VfioContainer::new(None).map_err(vfio("container set-up"))?);
        let device = VfioDevice::new(&checked.sysfs_path, container.clone(), false)
            .map_err(vfio("device open"))?;
        let offset = device.get_region_offset(VFIO_PCI_BAR0_REGION_INDEX);
        let size = device.get_region_size(VFIO_PCI_BAR0_REGION_INDEX);
        let len = usize::try_from(size).unwrap_or(0);
        // SAFETY: the fd belongs to `device`, which lives through this call; Bar0 keeps only
        // the mapping, which stays valid after the fd is closed.
        let device_fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(device.as_raw_fd()) };
        let bar0 = Bar0::map(device_fd, offset, len).map_err(|source| Error::MapBar {
            bdf: bdf.to_string(),
            source,
        })?;
        let pci = VfioPci {
            bdf: bdf.to_string(),
            group: checked.group,
            bar0,
            device,
            container,
        };
        pci.set_bus_master(true);
        Ok(pci)
    }

    /// The PCI address.
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// The IOMMU group.
    pub fn group(&self) -> u32 {
        self.group
    }

    /// The device's registers.
    pub fn bar0(&self) -> &Bar0 {
        &self.bar0
    }

    /// Sets or clears bus-master enable, without which the function cannot DMA.
    pub fn set_bus_master(&self, on: bool) {
        let mut cmd = [0u8; 2];
        self.device
            .region_read(VFIO_PCI_CONFIG_REGION_INDEX, &mut cmd, PCI_COMMAND);
        let mut value = u16::from_le_bytes(cmd);
        if on {
            value |= PCI_COMMAND_MASTER;
        } else {
            value &= !PCI_COMMAND_MASTER;
        }
        self.device.region_write(
            VFIO_PCI_CONFIG_REGION_INDEX,
            &value.to_le_bytes(),
            PCI_COMMAND,
        );
    }

    /// Function-level reset through VFIO, then bus mastering again.
    pub fn reset(&self) {
        self.device.reset();
        self.set_bus_master(true);
    }

    /// Number of MSI-X vectors the function has.
    pub fn msix_vectors(&self) -> u32 {
        self.device
            .get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX)
            .map_or(0, |irq| irq.count)
    }

    /// Routes MSI-X vectors `0..fds.len()` to `fds`.
    pub fn enable_msix(&self, fds: &[&EventFd]) -> Result<(), Error> {
        self.device
            .enable_msix(fds.to_vec())
            .map_err(|source| Error::Vfio {
                bdf: self.bdf.clone(),
                what: "MSI-X enable",
                source,
            })
    }

    /// Stops MSI-X delivery.
    pub fn disable_msix(&self) -> Result<(), Error> {
        self.device.disable_msix().map_err(|source| Error::Vfio {
            bdf: self.bdf.clone(),
            what: "MSI-X disable",
            source,
        })
    }

    /// Maps `len` bytes at host address `vaddr` into the device's IOMMU domain at `iova`.
    ///
    /// # Safety
    /// `vaddr..vaddr + len` must stay mapped in this process until [`dma_unmap`] of the same
    /// range, and the caller must accept that the device may read and write it at any time
    /// until then.
    ///
    /// [`dma_unmap`]: Self::dma_unmap
    pub unsafe fn dma_map(&self, iova: u64, len: usize, vaddr: *mut u8) -> Result<(), Error> {
        // SAFETY: the caller upholds the mapping's lifetime (this function's contract).
        unsafe { self.container.vfio_dma_map(iova, len, vaddr) }.map_err(|source| Error::Vfio {
            bdf: self.bdf.clone(),
            what: "DMA map",
            source,
        })
    }

    /// Removes a mapping made by [`dma_map`](Self::dma_map).
    pub fn dma_unmap(&self, iova: u64, len: usize) -> Result<(), Error> {
        self.container
            .vfio_dma_unmap(iova, len)
            .map_err(|source| Error::Vfio {
                bdf: self.bdf.clone(),
                what: "DMA unmap",
                source,
            })
    }

    /// The IOVA ranges the IOMMU accepts (VFIO_IOMMU_GET_INFO's IOVA range capability); the
    /// whole 48-bit space when the kernel does not report them.
    pub fn iova_ranges(&self) -> Result<Vec<Range<u64>>, Error> {
        let err = |source| Error::IommuInfo {
            bdf: self.bdf.clone(),
            source,
        };
        let header = std::mem::size_of::<vfio_iommu_type1_info>();
        let mut buf = vec![0u8; header];
        for _ in 0..2 {
            let argsz =
                u32::try_from(buf.len()).map_err(|_| err(io::ErrorKind::InvalidData.into()))?;
            buf[..4].copy_from_slice(&argsz.to_le_bytes());
            // SAFETY: VFIO_IOMMU_GET_INFO writes at most `argsz` bytes into `buf`, which is
            // that long; the container fd is ours.
            let rc = unsafe {
                libc::ioctl(
                    self.container.as_raw_fd(),
                    VFIO_IOMMU_GET_INFO(),
                    buf.as_mut_ptr(),
                )
            };
            if rc < 0 {
                return Err(err(io::Error::last_os_error()));
            }
            let wanted = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if wanted <= buf.len() {
                break;
            }
            buf.resize(wanted, 0);
        }
        Ok(parse_iova_ranges(&buf).unwrap_or_else(|| std::iter::once(0..1 << 48).collect()))
    }

    /// The device's sysfs directory, for messages.
    pub fn sysfs_path(&self) -> PathBuf {
        Path::new(SYSFS).join("bus/pci/devices").join(&self.bdf)
    }
}

impl crate::dma::region::DmaMapper for VfioPci {
    unsafe fn map(&self, iova: u64, len: usize, vaddr: *mut u8) -> io::Result<()> {
        // SAFETY: the caller keeps the range mapped until `unmap` (DmaMapper's contract, the
        // same as `dma_map`'s).
        unsafe { self.dma_map(iova, len, vaddr) }.map_err(io::Error::other)
    }

    fn unmap(&self, iova: u64, len: usize) -> io::Result<()> {
        self.dma_unmap(iova, len).map_err(io::Error::other)
    }
}

/// Finds the IOVA range capability in a `vfio_iommu_type1_info` buffer and returns its
/// ranges as half-open ranges (the kernel reports inclusive ends). `None` if absent.
pub fn parse_iova_ranges(buf: &[u8]) -> Option<Vec<Range<u64>>> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(buf.get(at..at + 4)?.try_into().ok()?))
    };
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(buf.get(at..at + 8)?.try_into().ok()?))
    };
    let flags = u32_at(4)?;
    if flags & VFIO_IOMMU_INFO_CAPS == 0 {
        return None;
    }
    let mut at = u32_at(16)? as usize;
    let mut hops = 0;
    while at != 0 && hops < 64 {
        let id = u16::from_le_bytes(buf.get(at..at + 2)?.try_into().ok()?);
        let next = u32_at(at + 4)? as usize;
        if u32::from(id) == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE {
            let count = u32_at(at + 8)? as usize;
            let mut ranges = Vec::with_capacity(count);
            for i in 0..count {
                let entry = at + 16 + i * 16;
                let start = u64_at(entry)?;
                let end = u64_at(entry + 8)?;
                ranges.push(start..end.saturating_add(1));
            }
            return Some(ranges);
        }
        at = next;
        hops += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iova_ranges_are_read_from_the_capability_chain() {
        // Header (24 bytes), then a migration cap (id 2) pointing on to the IOVA cap (id 1).
        let mut buf = vec![0u8; 24 + 16 + 16 + 32];
        buf[4..8].copy_from_slice(&VFIO_IOMMU_INFO_CAPS.to_le_bytes());
        buf[16..20].copy_from_slice(&24u32.to_le_bytes());
        buf[24..26].copy_from_slice(&2u16.to_le_bytes());
        buf[28..32].copy_from_slice(&40u32.to_le_bytes());
        buf[40..42].copy_from_slice(&1u16.to_le_bytes());
        buf[48..52].copy_from_slice(&2u32.to_le_bytes());
        buf[56..64].copy_from_slice(&0u64.to_le_bytes());
        buf[64..72].copy_from_slice(&0xFEDF_FFFFu64.to_le_bytes());
        buf[72..80].copy_from_slice(&0xFEF0_0000u64.to_le_bytes());
        buf[80..88].copy_from_slice(&0xFFFF_FFFF_FFFFu64.to_le_bytes());
        assert_eq!(
            parse_iova_ranges(&buf),
            Some(vec![0..0xFEE0_0000, 0xFEF0_0000..0x1_0000_0000_0000])
        );
    }

    #[test]
    fn no_capabilities_means_no_reported_ranges() {
        assert_eq!(parse_iova_ranges(&[0u8; 24]), None);
    }
}
