//! Control of one VF through its registers and the PF mailbox: reset, MAC, multicast, VLAN,
//! maximum frame size, link, statistics. No rings here (see the port).

use super::mbx::{
    self, Mailbox, PF_CONTROL_MSG, VF_RESET, VF_SET_LPE, VF_SET_MAC_ADDR, VF_SET_MULTICAST,
    VF_SET_VLAN, VT_MSGINFO_SHIFT, VT_MSGTYPE_CTS,
};
use super::regs::{
    VFGORC, VFGOTC, VFGPRC, VFGPTC, VFMPRC, VTCTRL, VTCTRL_RST, VTSTATUS, VTSTATUS_LU,
};
use crate::nic::regs_io::RegisterAccess;

/// Multicast hashes one VF_SET_MULTICAST message carries (30 16-bit words after the header).
pub const MAX_MULTICAST_HASHES: usize = 30;

/// The VF statistics registers (datasheet §8.28.5), read raw: they never clear and wrap at 32
/// bits, so callers keep a base and subtract.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwStats {
    /// Good packets received (`VFGPRC`).
    pub rx_packets: u32,
    /// Good packets transmitted (`VFGPTC`).
    pub tx_packets: u32,
    /// Good octets received (`VFGORC`).
    pub rx_bytes: u32,
    /// Good octets transmitted (`VFGOTC`).
    pub tx_bytes: u32,
    /// Multicast packets received (`VFMPRC`).
    pub rx_multicast: u32,
}

/// The VF's control state.
#[derive(Debug, Default)]
pub struct VfControl {
    mbx: Mailbox,
    perm_mac: [u8; 6],
}

/// What a mailbox check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PfEvent {
    /// Nothing new.
    None,
    /// The PF reset the VF or sent a control message (link change, MAC change): the VF must be
    /// re-initialised.
    ResetRequired,
}

impl VfControl {
    /// Control state using `mbx` for the PF conversation.
    pub fn new(mbx: Mailbox) -> Self {
        VfControl {
            mbx,
            perm_mac: [0; 6],
        }
    }

    /// The MAC address the PF gave at the last reset.
    pub fn permanent_mac(&self) -> [u8; 6] {
        self.perm_mac
    }

    /// Resets the VF (datasheet §7.10.2.5 / igbvf `e1000_reset_hw_vf`): `VTCTRL.RST`, wait out
    /// the PF's reset indication, post VF_RESET, and take the MAC from the PF's ACK.
    pub fn reset(&mut self, regs: &impl RegisterAccess) -> Result<[u8; 6], mbx::Error> {
        let ctrl = regs.read32(VTCTRL);
        regs.write32(VTCTRL, ctrl | VTCTRL_RST);
        self.mbx.wait_reset_done(regs)?;
        let mut reply = [0u32; 3];
        self.mbx.request(regs, &[VF_RESET], &mut reply)?;
        let a = reply[1].to_le_bytes();
        let b = reply[2].to_le_bytes();
        self.perm_mac = [a[0], a[1], a[2], a[3], b[0], b[1]];
        Ok(self.perm_mac)
    }

    /// Asks the PF to use `mac` for this VF. The PF refuses when an administrator set the VF's
    /// MAC from the PF side, unless the VF is trusted.
    pub fn set_mac(&mut self, regs: &impl RegisterAccess, mac: [u8; 6]) -> Result<(), mbx::Error> {
        let msg = [
            VF_SET_MAC_ADDR,
            u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]),
            u32::from_le_bytes([mac[4], mac[5], 0, 0]),
        ];
        let mut reply = [0u32; 3];
        self.mbx.request(regs, &msg, &mut reply)
    }

    /// Sets the multicast filter to `addrs` (at most [`MAX_MULTICAST_HASHES`] are used).
    pub fn set_multicast(
        &mut self,
        regs: &impl RegisterAccess,
        addrs: &[[u8; 6]],
    ) -> Result<(), mbx::Error> {
        let count = addrs.len().min(MAX_MULTICAST_HASHES);
        let mut msg = [0u32; 16];
        msg[0] = VF_SET_MULTICAST | (u32::try_from(count).expect("at most 30") << VT_MSGINFO_SHIFT);
        for (i, addr) in addrs.iter().take(count).enumerate() {
            let hash = multicast_hash(addr);
            let word = 1 + i / 2;
            msg[word] |= u32::from(hash) << (16 * (i % 2));
        }
        let mut reply = [0u32; 1];
        self.mbx.request(regs, &msg, &mut reply)
    }

    /// Adds (`add`) or removes VLAN filter `vid`.
    pub fn set_vlan(
        &mut self,
        regs: &impl RegisterAccess,
        vid: u16,
        add: bool,
    ) -> Result<(), mbx::Error> {
        let msg = [
            VF_SET_VLAN | (u32::from(add) << VT_MSGINFO_SHIFT),
            u32::from(vid),
        ];
        let mut reply = [0u32; 2];
        self.mbx.request(regs, &msg, &mut reply)
    }

    /// Asks the PF to accept frames up to `max_frame` bytes (long packet enable).
    pub fn set_max_frame(
        &mut self,
        regs: &impl RegisterAccess,
        max_frame: u16,
    ) -> Result<(), mbx::Error> {
        let mut reply = [0u32; 2];
        self.mbx
            .request(regs, &[VF_SET_LPE, u32::from(max_frame)], &mut reply)
    }

    /// Whether the PF reports link (`VTSTATUS.LU`).
    pub fn link_up(&self, regs: &impl RegisterAccess) -> bool {
        regs.read32(VTSTATUS) & VTSTATUS_LU != 0
    }

    /// Looks at the mailbox for a PF-initiated reset or control message (link loss, a MAC set
    /// from the PF): either means the VF must be re-initialised.
    pub fn check_pf(&mut self, regs: &impl RegisterAccess) -> PfEvent {
        if self.mbx.check_for_reset(regs) {
            return PfEvent::ResetRequired;
        }
        if self.mbx.check_for_msg(regs) {
            let mut msg = [0u32; 1];
            if self.mbx.read(regs, &mut msg).is_ok()
                && msg[0] & !VT_MSGTYPE_CTS & PF_CONTROL_MSG != 0
            {
                return PfEvent::ResetRequired;
            }
        }
        PfEvent::None
    }

    /// Reads the statistics registers.
    pub fn hw_stats(&self, regs: &impl RegisterAccess) -> HwStats {
        HwStats {
            rx_packets: regs.read32(VFGPRC),
            tx_packets: regs.read32(VFGPTC),
            rx_bytes: regs.read32(VFGORC),
            tx_bytes: regs.read32(VFGOTC),
            rx_multicast: regs.read32(VFMPRC),
        }
    }
}

/// The 12-bit multicast table hash the 82576 uses with its default filter type (datasheet
/// §8.10.15, MO = 00): bits 47:36 of the destination address.
pub fn multicast_hash(addr: &[u8; 6]) -> u16 {
    ((u16::from(addr[4]) >> 4) | (u16::from(addr[5]) << 4)) & 0x0FFF
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::nic::igbvf::mbx::VT_MSGTYPE_MASK;
    use crate::nic::igbvf::mbx::fake_pf::FakePf;

    fn control() -> VfControl {
        VfControl::new(Mailbox::new(5, Duration::ZERO))
    }

    #[test]
    fn reset_takes_the_mac_from_the_pf() {
        let pf = FakePf::new([0x52, 0x54, 0, 0xaa, 0, 0x10]);
        let mut vf = control();
        assert_eq!(vf.reset(&pf).unwrap(), [0x52, 0x54, 0, 0xaa, 0, 0x10]);
        assert_eq!(vf.permanent_mac(), [0x52, 0x54, 0, 0xaa, 0, 0x10]);
    }

    #[test]
    fn set_mac_sends_the_address_in_two_dwords() {
        let pf = FakePf::new([2, 0, 0, 0, 0, 1]);
        let mut vf = control();
        vf.set_mac(&pf, [0x52, 0x54, 0, 1, 2, 3]).unwrap();
        assert_eq!(pf.0.borrow().mac, [0x52, 0x54, 0, 1, 2, 3]);
    }

    #[test]
    fn refused_mac_change_is_reported() {
        let pf = FakePf::new([2, 0, 0, 0, 0, 1]);
        pf.0.borrow_mut().refuse_mac = true;
        let err = control()
            .set_mac(&pf, [0x52, 0x54, 0, 1, 2, 3])
            .unwrap_err();
        assert!(matches!(err, mbx::Error::Nack { .. }));
    }

    #[test]
    fn multicast_message_packs_hashes_two_per_dword() {
        let pf = FakePf::new([2, 0, 0, 0, 0, 1]);
        let addrs = [[1, 0, 0x5e, 0, 0x10, 0x01], [0x33, 0x33, 0, 0, 0x20, 0x02]];
        control().set_multicast(&pf, &addrs).unwrap();
        let sent = pf.0.borrow().received[0].clone();
        assert_eq!(sent[0] & VT_MSGTYPE_MASK, VF_SET_MULTICAST);
        assert_eq!(sent[0] >> VT_MSGINFO_SHIFT, 2);
        assert_eq!(sent[1] & 0xFFFF, u32::from(multicast_hash(&addrs[0])));
        assert_eq!(sent[1] >> 16, u32::from(multicast_hash(&addrs[1])));
    }

    #[test]
    fn multicast_hash_takes_address_bits_47_to_36() {
        assert_eq!(multicast_hash(&[0, 0, 0, 0, 0xA0, 0xBC]), 0xBCA);
    }

    #[test]
    fn pf_reset_indication_requires_reinit() {
        let pf = FakePf::new([2, 0, 0, 0, 0, 1]);
        let mut vf = control();
        assert_eq!(vf.check_pf(&pf), PfEvent::None);
        pf.0.borrow_mut().bits |= crate::nic::igbvf::regs::V2PMAILBOX_RSTD;
        assert_eq!(vf.check_pf(&pf), PfEvent::ResetRequired);
    }

    #[test]
    fn link_follows_vtstatus() {
        let pf = FakePf::new([2, 0, 0, 0, 0, 1]);
        let vf = control();
        assert!(vf.link_up(&pf));
        pf.0.borrow_mut().status = 0;
        assert!(!vf.link_up(&pf));
    }
}
