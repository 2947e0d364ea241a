//! 82576 VF register offsets (BAR0) and bit fields.
//!
//! Offsets are those a VF sees in its own BAR0 (datasheet §8.28, "Virtual Function Register
//! Descriptions"); the Linux name is given where it differs (`E1000_*` in igbvf regs.h).
//! Per-queue registers are `const fn` of the queue: the layout changes from queue 4 on.

#![allow(missing_docs)] // Each constant is named after the datasheet register or bit it is.

/// Device control (`VTCTRL`, Linux `E1000_CTRL`).
pub const VTCTRL: u32 = 0x0000;
/// Device status (`VTSTATUS`, Linux `E1000_STATUS`); also read to flush posted writes.
pub const VTSTATUS: u32 = 0x0008;
/// Extended interrupt cause set (`VTEICS`, Linux `E1000_EICS`).
pub const VTEICS: u32 = 0x1520;
/// Extended interrupt mask set/read (`VTEIMS`, Linux `E1000_EIMS`).
pub const VTEIMS: u32 = 0x1524;
/// Extended interrupt mask clear (`VTEIMC`, Linux `E1000_EIMC`).
pub const VTEIMC: u32 = 0x1528;
/// Extended interrupt auto-clear (`VTEIAC`, Linux `E1000_EIAC`).
pub const VTEIAC: u32 = 0x152C;
/// Extended interrupt auto-mask (`VTEIAM`, Linux `E1000_EIAM`).
pub const VTEIAM: u32 = 0x1530;
/// Extended interrupt cause read (`VTEICR`, Linux `E1000_EICR`).
pub const VTEICR: u32 = 0x1580;
/// Interrupt vector allocation for queue causes (`VTIVAR`, Linux `E1000_IVAR0`).
pub const VTIVAR: u32 = 0x1700;
/// Interrupt vector allocation for the mailbox/other cause (`VTIVAR_MISC`).
pub const VTIVAR_MISC: u32 = 0x1740;
/// Interrupt throttling of vector `n` (`VTEITR`, Linux `E1000_EITR`).
pub const fn vteitr(n: u32) -> u32 {
    0x1680 + 4 * n
}

/// VF-to-PF mailbox control (`V2PMAILBOX`, Linux `E1000_V2PMAILBOX(0)`).
pub const V2PMAILBOX: u32 = 0x0C40;
/// Mailbox memory, 16 dwords (`VMBMEM`, Linux `E1000_VMBMEM(0)`).
pub const VMBMEM: u32 = 0x0800;
/// Dwords in the mailbox memory.
pub const VMBMEM_DWORDS: usize = 16;

// Statistics (datasheet §8.28.5). They count from VF creation, never clear, and wrap at 32 bits.
/// Good packets received.
pub const VFGPRC: u32 = 0x0F10;
/// Good packets transmitted.
pub const VFGPTC: u32 = 0x0F14;
/// Good octets received.
pub const VFGORC: u32 = 0x0F18;
/// Good octets transmitted.
pub const VFGOTC: u32 = 0x0F34;
/// Multicast packets received.
pub const VFMPRC: u32 = 0x0F3C;

const fn queue_reg(q: u32, low: u32, high: u32) -> u32 {
    if q < 4 {
        low + q * 0x100
    } else {
        high + q * 0x40
    }
}

/// Rx descriptor ring base, low 32 bits (`RDBAL`).
pub const fn rdbal(q: u32) -> u32 {
    queue_reg(q, 0x2800, 0xC000)
}
/// Rx descriptor ring base, high 32 bits (`RDBAH`).
pub const fn rdbah(q: u32) -> u32 {
    queue_reg(q, 0x2804, 0xC004)
}
/// Rx descriptor ring length in bytes (`RDLEN`).
pub const fn rdlen(q: u32) -> u32 {
    queue_reg(q, 0x2808, 0xC008)
}
/// Split and replication receive control (`SRRCTL`).
pub const fn srrctl(q: u32) -> u32 {
    queue_reg(q, 0x280C, 0xC00C)
}
/// Rx descriptor head (`RDH`).
pub const fn rdh(q: u32) -> u32 {
    queue_reg(q, 0x2810, 0xC010)
}
/// Rx descriptor tail (`RDT`).
pub const fn rdt(q: u32) -> u32 {
    queue_reg(q, 0x2818, 0xC018)
}
/// Rx descriptor control (`RXDCTL`).
pub const fn rxdctl(q: u32) -> u32 {
    queue_reg(q, 0x2828, 0xC028)
}
/// Tx descriptor ring base, low 32 bits (`TDBAL`).
pub const fn tdbal(q: u32) -> u32 {
    queue_reg(q, 0x3800, 0xE000)
}
/// Tx descriptor ring base, high 32 bits (`TDBAH`).
pub const fn tdbah(q: u32) -> u32 {
    queue_reg(q, 0x3804, 0xE004)
}
/// Tx descriptor ring length in bytes (`TDLEN`).
pub const fn tdlen(q: u32) -> u32 {
    queue_reg(q, 0x3808, 0xE008)
}
/// Tx descriptor head (`TDH`).
pub const fn tdh(q: u32) -> u32 {
    queue_reg(q, 0x3810, 0xE010)
}
/// Tx descriptor tail (`TDT`).
pub const fn tdt(q: u32) -> u32 {
    queue_reg(q, 0x3818, 0xE018)
}
/// Tx descriptor control (`TXDCTL`).
pub const fn txdctl(q: u32) -> u32 {
    queue_reg(q, 0x3828, 0xE028)
}

/// `VTCTRL.RST`: VF queue and interrupt reset.
pub const VTCTRL_RST: u32 = 1 << 26;
/// `VTSTATUS.FD`: full duplex.
pub const VTSTATUS_FD: u32 = 1 << 0;
/// `VTSTATUS.LU`: link up.
pub const VTSTATUS_LU: u32 = 1 << 1;
/// `VTSTATUS` speed field: 1000 Mb/s.
pub const VTSTATUS_SPEED_1000: u32 = 1 << 7;
/// `VTSTATUS` speed field: 100 Mb/s.
pub const VTSTATUS_SPEED_100: u32 = 1 << 6;

/// `V2PMAILBOX.REQ`: the VF posted a message for the PF.
pub const V2PMAILBOX_REQ: u32 = 1 << 0;
/// `V2PMAILBOX.ACK`: the VF received the PF's message.
pub const V2PMAILBOX_ACK: u32 = 1 << 1;
/// `V2PMAILBOX.VFU`: the VF owns the mailbox memory.
pub const V2PMAILBOX_VFU: u32 = 1 << 2;
/// `V2PMAILBOX.PFU`: the PF owns the mailbox memory.
pub const V2PMAILBOX_PFU: u32 = 1 << 3;
/// `V2PMAILBOX.PFSTS`: the PF wrote a message (read to clear).
pub const V2PMAILBOX_PFSTS: u32 = 1 << 4;
/// `V2PMAILBOX.PFACK`: the PF acknowledged our message (read to clear).
pub const V2PMAILBOX_PFACK: u32 = 1 << 5;
/// `V2PMAILBOX.RSTI`: the PF is resetting the VF.
pub const V2PMAILBOX_RSTI: u32 = 1 << 6;
/// `V2PMAILBOX.RSTD`: the PF finished resetting the VF (read to clear).
pub const V2PMAILBOX_RSTD: u32 = 1 << 7;
/// The read-to-clear bits of `V2PMAILBOX`.
pub const V2PMAILBOX_R2C_BITS: u32 = V2PMAILBOX_PFSTS | V2PMAILBOX_PFACK | V2PMAILBOX_RSTD;

/// `SRRCTL.BSIZEPACKET` unit: 1 KiB.
pub const SRRCTL_BSIZEPKT_SHIFT: u32 = 10;
/// `SRRCTL.DESCTYPE`: advanced descriptors, one buffer.
pub const SRRCTL_DESCTYPE_ADV_ONEBUF: u32 = 0x0200_0000;
/// `SRRCTL.DROP_EN`: drop frames when no descriptor is available instead of stalling.
pub const SRRCTL_DROP_EN: u32 = 0x8000_0000;
/// `RXDCTL.ENABLE` / `TXDCTL.ENABLE`.
pub const XDCTL_QUEUE_ENABLE: u32 = 0x0200_0000;

/// `VTIVAR` / `VTIVAR_MISC` entry valid bit.
pub const IVAR_VALID: u32 = 0x80;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_registers_follow_the_datasheet_layout_below_and_from_queue_4() {
        // Queues 0-3 are 0x100 apart from 0x2800 (rx) / 0x3800 (tx).
        assert_eq!(rdbal(0), 0x2800);
        assert_eq!(rdt(1), 0x2918);
        assert_eq!(srrctl(3), 0x2B0C);
        assert_eq!(tdt(0), 0x3818);
        assert_eq!(txdctl(2), 0x3A28);
        // From queue 4 on they sit in the 0xC000 / 0xE000 blocks, 0x40 apart.
        assert_eq!(rdbal(4), 0xC100);
        assert_eq!(rdt(5), 0xC158);
        assert_eq!(tdh(4), 0xE110);
        assert_eq!(tdlen(7), 0xE1C8);
    }

    #[test]
    fn read_to_clear_bits_are_pfsts_pfack_rstd() {
        assert_eq!(V2PMAILBOX_R2C_BITS, 0xB0);
        assert_eq!(VTCTRL_RST, 0x0400_0000);
    }
}
