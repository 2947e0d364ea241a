//! An 82576 VF opened through VFIO and brought to a known state: interrupts masked, reset
//! through the PF (which hands over the MAC), ready for rings.

use std::fmt;
use std::sync::Arc;

use super::mbx::{self, Mailbox};
use super::regs::{VTEIMC, VTSTATUS};
use super::vf::{HwStats, VfControl};
use crate::nic::regs_io::RegisterAccess;
use crate::vfio::device::{self, VfioPci};

/// Errors opening or resetting a VF.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// VFIO could not open the device.
    #[error(transparent)]
    Vfio(#[from] device::Error),
    /// The PF refused (or did not answer) a MAC change.
    #[error(
        "the PF did not accept MAC {mac} for VF {bdf}: set it from the PF (ip link set PF vf N mac {mac}), or let the VF change it (ip link set PF vf N trust on)"
    )]
    SetMac {
        /// The VF.
        bdf: String,
        /// The MAC asked for.
        mac: Mac,
        /// Cause.
        #[source]
        source: mbx::Error,
    },
    /// The PF did not complete the reset handshake.
    #[error("reset of VF {bdf} through the PF mailbox failed")]
    Reset {
        /// The VF.
        bdf: String,
        /// Cause.
        #[source]
        source: mbx::Error,
    },
}

/// A MAC address, printed the usual way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// An opened, reset VF.
pub struct IgbVf {
    pci: Arc<VfioPci>,
    control: VfControl,
    mac: Mac,
}

/// Every interrupt cause of a VF: three MSI-X vectors.
const ALL_VECTORS: u32 = 0x7;

impl IgbVf {
    /// Opens the VF at `bdf` and resets it; the PF's answer gives the MAC.
    pub fn open(bdf: &str) -> Result<Self, Error> {
        let pci = Arc::new(VfioPci::open(bdf)?);
        let mut vf = IgbVf {
            pci,
            control: VfControl::new(Mailbox::default()),
            mac: Mac([0; 6]),
        };
        vf.reset()?;
        Ok(vf)
    }

    /// Masks interrupts and resets the VF through the PF; refreshes the MAC.
    pub fn reset(&mut self) -> Result<(), Error> {
        let regs = self.pci.bar0();
        regs.write32(VTEIMC, ALL_VECTORS);
        let mac = self.control.reset(regs).map_err(|source| Error::Reset {
            bdf: self.pci.bdf().to_string(),
            source,
        })?;
        self.mac = Mac(mac);
        // Reading status flushes the posted writes above.
        let _ = regs.read32(VTSTATUS);
        Ok(())
    }

    /// The VF's MAC address, as the PF gave it.
    pub fn mac(&self) -> Mac {
        self.mac
    }

    /// Whether the PF reports link.
    pub fn link_up(&self) -> bool {
        self.control.link_up(self.pci.bar0())
    }

    /// The statistics registers.
    pub fn hw_stats(&self) -> HwStats {
        self.control.hw_stats(self.pci.bar0())
    }

    /// The VFIO device.
    pub fn pci(&self) -> &Arc<VfioPci> {
        &self.pci
    }

    /// Asks the PF to give the VF `mac` (VF_SET_MAC_ADDR); the PF refuses when an
    /// administrator set the VF's MAC from the PF side and the VF is not trusted.
    pub fn set_mac(&mut self, mac: Mac) -> Result<(), Error> {
        self.control
            .set_mac(self.pci.bar0(), mac.0)
            .map_err(|source| Error::SetMac {
                bdf: self.pci.bdf().to_string(),
                mac,
                source,
            })?;
        self.mac = mac;
        Ok(())
    }

    /// Control of the VF through the PF mailbox.
    pub fn control(&mut self) -> (&mut VfControl, &VfioPci) {
        (&mut self.control, &self.pci)
    }
}
