//! Pre-flight checks of a PCI device before VFIO opens it, from sysfs, so that each way set-up
//! can fail gets an error that says what is wrong and what to run.
//!
//! The sysfs root is a parameter so the checks run against a fake tree in unit tests.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::nic::igbvf::{PCI_DEVICE_ID_82576_PF, PCI_DEVICE_ID_82576_VF, PCI_VENDOR_ID_INTEL};

/// The real sysfs.
pub const SYSFS: &str = "/sys";

/// Why a device cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address is not a PCI address.
    #[error("{0:?} is not a PCI address like 0000:01:10.0")]
    BadAddress(String),
    /// No such device.
    #[error(
        "no PCI device {bdf} (see `lspci -D`; VFs appear after `echo N > /sys/bus/pci/devices/PF/sriov_numvfs`)"
    )]
    NoSuchDevice {
        /// The address asked for.
        bdf: String,
    },
    /// The device is an 82576 PF, not a VF.
    #[error(
        "{bdf} is an Intel 82576 physical function (8086:10c9); give one of its VFs: ls -l /sys/bus/pci/devices/{bdf}/virtfn*"
    )]
    PhysicalFunction {
        /// The address asked for.
        bdf: String,
    },
    /// Not a device this driver knows.
    #[error("{bdf} is {vendor:04x}:{device:04x}, not an Intel 82576 VF (8086:10ca)")]
    UnsupportedDevice {
        /// The address asked for.
        bdf: String,
        /// PCI vendor ID.
        vendor: u16,
        /// PCI device ID.
        device: u16,
    },
    /// The device is in no IOMMU group: the IOMMU is off.
    #[error(
        "{bdf} has no IOMMU group: enable the IOMMU (kernel command line intel_iommu=on iommu=pt, or amd_iommu=on) and VT-d/AMD-Vi in firmware"
    )]
    NoIommu {
        /// The address asked for.
        bdf: String,
    },
    /// The device is bound to another driver, or to none.
    #[error(
        "{bdf} is bound to {driver}, not vfio-pci: echo vfio-pci > /sys/bus/pci/devices/{bdf}/driver_override; echo {bdf} > /sys/bus/pci/devices/{bdf}/driver/unbind; echo {bdf} > /sys/bus/pci/drivers_probe"
    )]
    WrongDriver {
        /// The address asked for.
        bdf: String,
        /// The driver it is bound to ("no driver" when unbound).
        driver: String,
    },
    /// Another device in the IOMMU group is bound to a host driver.
    #[error(
        "VFIO group {group} ({bdf}) is not viable: {offenders} must be unbound or bound to vfio-pci (see /sys/kernel/iommu_groups/{group}/devices)"
    )]
    GroupNotViable {
        /// The address asked for.
        bdf: String,
        /// The IOMMU group number.
        group: u32,
        /// The other devices and their drivers.
        offenders: String,
    },
    /// Reading sysfs failed.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// What the checks found out about a usable device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// The device's sysfs directory.
    pub sysfs_path: PathBuf,
    /// Its IOMMU group.
    pub group: u32,
}

/// Checks that `bdf` is an 82576 VF on vfio-pci in a viable IOMMU group.
pub fn check_vf(sysfs: &Path, bdf: &str) -> Result<Checked, Error> {
    if !is_bdf(bdf) {
        return Err(Error::BadAddress(bdf.to_string()));
    }
    let dev = sysfs.join("bus/pci/devices").join(bdf);
    if !dev.exists() {
        return Err(Error::NoSuchDevice {
            bdf: bdf.to_string(),
        });
    }
    let vendor = read_hex(&dev.join("vendor"))?;
    let device = read_hex(&dev.join("device"))?;
    match (vendor, device) {
        (PCI_VENDOR_ID_INTEL, PCI_DEVICE_ID_82576_VF) => {}
        (PCI_VENDOR_ID_INTEL, PCI_DEVICE_ID_82576_PF) => {
            return Err(Error::PhysicalFunction {
                bdf: bdf.to_string(),
            });
        }
        _ => {
            return Err(Error::UnsupportedDevice {
                bdf: bdf.to_string(),
                vendor,
                device,
            });
        }
    }
    let Some(group) = link_name(&dev.join("iommu_group")).and_then(|g| g.parse().ok()) else {
        return Err(Error::NoIommu {
            bdf: bdf.to_string(),
        });
    };
    let driver = driver_of(&dev);
    if driver.as_deref() != Some("vfio-pci") {
        return Err(Error::WrongDriver {
            bdf: bdf.to_string(),
            driver: driver.unwrap_or_else(|| "no driver".to_string()),
        });
    }
    let members = sysfs.join(format!("kernel/iommu_groups/{group}/devices"));
    let entries = fs::read_dir(&members).map_err(|source| Error::Read {
        path: members.clone(),
        source,
    })?;
    let offenders: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let other = e.file_name().to_string_lossy().into_owned();
            match driver_of(&e.path()) {
                Some(d) if d != "vfio-pci" && d != "pci-stub" => Some(format!("{other} ({d})")),
                _ => None,
            }
        })
        .collect();
    if !offenders.is_empty() {
        return Err(Error::GroupNotViable {
            bdf: bdf.to_string(),
            group,
            offenders: offenders.join(", "),
        });
    }
    Ok(Checked {
        sysfs_path: dev,
        group,
    })
}

/// `DDDD:BB:DD.F` in hex.
fn is_bdf(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

fn read_hex(path: &Path) -> Result<u16, Error> {
    let text = fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let t = text.trim();
    u16::from_str_radix(t.strip_prefix("0x").unwrap_or(t), 16).map_err(|e| Error::Read {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, e),
    })
}

/// The last component of the symlink at `link`.
fn link_name(link: &Path) -> Option<String> {
    fs::read_link(link)
        .ok()?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

fn driver_of(dev: &Path) -> Option<String> {
    link_name(&dev.join("driver"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A fake sysfs with one device.
    struct FakeSysfs(PathBuf);

    impl FakeSysfs {
        fn new(tag: &str) -> Self {
            let root =
                std::env::temp_dir().join(format!("vhvf-sysfs-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(root.join("bus/pci/devices")).unwrap();
            fs::create_dir_all(root.join("bus/pci/drivers/vfio-pci")).unwrap();
            fs::create_dir_all(root.join("bus/pci/drivers/igbvf")).unwrap();
            FakeSysfs(root)
        }

        fn device(&self, bdf: &str, id: (&str, &str), group: Option<u32>, driver: Option<&str>) {
            let dev = self.0.join("bus/pci/devices").join(bdf);
            fs::create_dir_all(&dev).unwrap();
            fs::write(dev.join("vendor"), format!("{}\n", id.0)).unwrap();
            fs::write(dev.join("device"), format!("{}\n", id.1)).unwrap();
            if let Some(g) = group {
                let gdir = self.0.join(format!("kernel/iommu_groups/{g}/devices"));
                fs::create_dir_all(&gdir).unwrap();
                symlink(&dev, gdir.join(bdf)).unwrap();
                symlink(
                    self.0.join(format!("kernel/iommu_groups/{g}")),
                    dev.join("iommu_group"),
                )
                .unwrap();
            }
            if let Some(d) = driver {
                symlink(self.0.join("bus/pci/drivers").join(d), dev.join("driver")).unwrap();
            }
        }
    }

    impl Drop for FakeSysfs {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const VF: (&str, &str) = ("0x8086", "0x10ca");

    #[test]
    fn vf_on_vfio_pci_in_its_own_group_passes() {
        let sys = FakeSysfs::new("ok");
        sys.device("0000:01:10.0", VF, Some(12), Some("vfio-pci"));
        let checked = check_vf(&sys.0, "0000:01:10.0").unwrap();
        assert_eq!(checked.group, 12);
    }

    #[test]
    fn each_bad_set_up_gets_its_own_error() {
        let sys = FakeSysfs::new("bad");
        sys.device("0000:01:00.0", ("0x8086", "0x10c9"), Some(3), Some("igbvf"));
        sys.device(
            "0000:02:00.0",
            ("0x8086", "0x1533"),
            Some(4),
            Some("vfio-pci"),
        );
        sys.device("0000:01:10.0", VF, None, Some("vfio-pci"));
        sys.device("0000:01:10.2", VF, Some(7), Some("igbvf"));
        sys.device("0000:01:10.4", VF, Some(8), None);
        let err = |bdf| check_vf(&sys.0, bdf).unwrap_err();
        assert!(matches!(err("01:10.0"), Error::BadAddress(_)));
        assert!(matches!(err("0000:09:00.0"), Error::NoSuchDevice { .. }));
        assert!(matches!(
            err("0000:01:00.0"),
            Error::PhysicalFunction { .. }
        ));
        assert!(matches!(
            err("0000:02:00.0"),
            Error::UnsupportedDevice { device: 0x1533, .. }
        ));
        assert!(matches!(err("0000:01:10.0"), Error::NoIommu { .. }));
        assert!(
            matches!(err("0000:01:10.2"), Error::WrongDriver { ref driver, .. } if driver == "igbvf")
        );
        assert!(
            matches!(err("0000:01:10.4"), Error::WrongDriver { ref driver, .. } if driver == "no driver")
        );
        let msg = err("0000:01:10.2").to_string();
        assert!(
            msg.contains("driver_override"),
            "the error says what to run: {msg}"
        );
    }

    #[test]
    fn a_group_shared_with_a_host_driver_is_not_viable() {
        let sys = FakeSysfs::new("group");
        sys.device("0000:01:10.0", VF, Some(5), Some("vfio-pci"));
        sys.device("0000:01:10.1", VF, Some(5), Some("igbvf"));
        let err = check_vf(&sys.0, "0000:01:10.0").unwrap_err();
        assert!(
            matches!(err, Error::GroupNotViable { group: 5, ref offenders, .. } if offenders.contains("0000:01:10.1 (igbvf)"))
        );
    }
}
