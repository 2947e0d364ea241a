//! Advanced rx and tx descriptors of the 82576 (datasheet §7.1.5 and §7.2.3), as the NIC reads
//! and writes them in ring memory: 16 bytes each, little-endian.
//!
//! Software writes the "read" format; the NIC overwrites the same 16 bytes with the
//! "write-back" format and sets DD last. So software writes descriptors, then a release fence,
//! then the tail; and reads DD, then an acquire fence, then the other write-back fields.

/// Size of every descriptor in bytes.
pub const DESC_LEN: usize = 16;

/// `RXD.STATUS.DD`: the NIC is done with this rx descriptor.
pub const RXD_STAT_DD: u32 = 1 << 0;
/// `RXD.STATUS.EOP`: last descriptor of a frame.
pub const RXD_STAT_EOP: u32 = 1 << 1;
/// Rx write-back error bits that mean the frame is bad (CE, SE, SEQ, CXE, RXE).
pub const RXDEXT_ERR_FRAME_ERR_MASK: u32 =
    0x0100_0000 | 0x0200_0000 | 0x0400_0000 | 0x1000_0000 | 0x8000_0000;

/// `TXD.DTYP`: advanced context descriptor.
pub const ADVTXD_DTYP_CTXT: u32 = 0x0020_0000;
/// `TXD.DTYP`: advanced data descriptor.
pub const ADVTXD_DTYP_DATA: u32 = 0x0030_0000;
/// `TXD.DCMD.EOP`: last descriptor of the frame.
pub const ADVTXD_DCMD_EOP: u32 = 0x0100_0000;
/// `TXD.DCMD.IFCS`: insert the Ethernet FCS.
pub const ADVTXD_DCMD_IFCS: u32 = 0x0200_0000;
/// `TXD.DCMD.RS`: report status (write DD back).
pub const ADVTXD_DCMD_RS: u32 = 0x0800_0000;
/// `TXD.DCMD.DEXT`: extended (advanced) descriptor.
pub const ADVTXD_DCMD_DEXT: u32 = 0x2000_0000;
/// `TXD.PAYLEN` position in `olinfo_status`.
pub const ADVTXD_PAYLEN_SHIFT: u32 = 14;
/// `TXD.POPTS.TXSM` in `olinfo_status`: insert the L4 checksum.
pub const ADVTXD_POPTS_TXSM: u32 = 0x2 << 8;
/// `TXD.POPTS.IXSM` in `olinfo_status`: insert the IPv4 header checksum.
pub const ADVTXD_POPTS_IXSM: u32 = 0x1 << 8;
/// `TXD.STA.DD` in the write-back `status`.
pub const ADVTXD_STAT_DD: u32 = 1 << 0;
/// Largest context descriptor `IPLEN` (9 bits).
pub const ADVTXD_IPLEN_MAX: u32 = 0x1FF;
/// Context descriptor `MACLEN` position in `vlan_macip_lens`.
pub const ADVTXD_MACLEN_SHIFT: u32 = 9;
/// Context descriptor `TUCMD.IPV4`.
pub const ADVTXD_TUCMD_IPV4: u32 = 0x0000_0400;
/// Context descriptor `TUCMD.L4T` = TCP.
pub const ADVTXD_TUCMD_L4T_TCP: u32 = 0x0000_0800;
/// Context descriptor `TUCMD.L4T` = SCTP (UDP is 0).
pub const ADVTXD_TUCMD_L4T_SCTP: u32 = 0x0000_1000;

/// Advanced receive descriptor. Read format: `addr_lo_hi[0]` is the packet buffer address,
/// `addr_lo_hi[1]` the header buffer (unused in one-buffer mode). Write-back format: dword 2 is
/// `status_error`, dword 3 holds `length` (low 16 bits) and `vlan`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdvRxDesc {
    /// Raw little-endian dwords.
    pub dw: [u32; 4],
}

const _: () = assert!(std::mem::size_of::<AdvRxDesc>() == DESC_LEN);

impl AdvRxDesc {
    /// A descriptor giving the NIC the buffer at `iova` (read format; DD is clear).
    pub fn read_format(iova: u64) -> Self {
        let [lo, hi] = split_u64(iova);
        AdvRxDesc {
            dw: [lo.to_le(), hi.to_le(), 0, 0],
        }
    }

    /// `status_error` of the write-back format.
    pub fn status_error(&self) -> u32 {
        u32::from_le(self.dw[2])
    }

    /// Frame bytes the NIC wrote into the buffer.
    pub fn length(&self) -> u16 {
        (u32::from_le(self.dw[3]) & 0xFFFF) as u16
    }

    /// Whether the NIC wrote this descriptor back.
    pub fn is_done(&self) -> bool {
        self.status_error() & RXD_STAT_DD != 0
    }
}

/// Advanced transmit data descriptor (read format) and its write-back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdvTxDesc {
    /// Buffer address (little-endian).
    pub buffer_addr: u64,
    /// `DTALEN | DTYP | DCMD` (little-endian).
    pub cmd_type_len: u32,
    /// `STA | IDX | POPTS | PAYLEN` (little-endian); DD is written back in its low bit.
    pub olinfo_status: u32,
}

const _: () = assert!(std::mem::size_of::<AdvTxDesc>() == DESC_LEN);

impl AdvTxDesc {
    /// A data descriptor for `len` bytes at `iova`. `first` carries the frame's `paylen` and
    /// checksum options; `last` asks for EOP and a status write-back (RS).
    pub fn data(iova: u64, len: u16, paylen: u32, popts: u32, last: bool) -> Self {
        let mut cmd = ADVTXD_DTYP_DATA | ADVTXD_DCMD_DEXT | ADVTXD_DCMD_IFCS | u32::from(len);
        if last {
            cmd |= ADVTXD_DCMD_EOP | ADVTXD_DCMD_RS;
        }
        AdvTxDesc {
            buffer_addr: iova.to_le(),
            cmd_type_len: cmd.to_le(),
            olinfo_status: ((paylen << ADVTXD_PAYLEN_SHIFT) | popts).to_le(),
        }
    }

    /// Whether the NIC reported this descriptor done.
    pub fn is_done(&self) -> bool {
        u32::from_le(self.olinfo_status) & ADVTXD_STAT_DD != 0
    }
}

/// Advanced transmit context descriptor: header lengths and offload commands for the data
/// descriptors that follow (datasheet §7.2.3.2.3).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdvTxContextDesc {
    /// `IPLEN | MACLEN << 9 | VLAN << 16`.
    pub vlan_macip_lens: u32,
    /// Reserved for the 82576 (IPsec on later parts).
    pub seqnum_seed: u32,
    /// `TUCMD | DTYP_CTXT | DEXT`.
    pub type_tucmd_mlhl: u32,
    /// `IDX << 4 | L4LEN << 8 | MSS << 16`.
    pub mss_l4len_idx: u32,
}

const _: () = assert!(std::mem::size_of::<AdvTxContextDesc>() == DESC_LEN);

impl AdvTxContextDesc {
    /// A context for checksum offload: `mac_len` bytes of L2 header, `ip_len` of L3 header,
    /// and the L4 type/IPv4 flags in `tucmd`.
    pub fn checksum(mac_len: u32, ip_len: u32, tucmd: u32) -> Self {
        AdvTxContextDesc {
            vlan_macip_lens: ((mac_len << ADVTXD_MACLEN_SHIFT) | ip_len).to_le(),
            seqnum_seed: 0,
            type_tucmd_mlhl: (tucmd | ADVTXD_DTYP_CTXT | ADVTXD_DCMD_DEXT).to_le(),
            mss_l4len_idx: 0,
        }
    }

    /// The same 16 bytes as a tx ring slot: context and data descriptors share the ring, told
    /// apart by DTYP.
    pub fn into_ring_slot(self) -> AdvTxDesc {
        // Each field already holds its little-endian bytes; dwords 0 and 1 are the slot's
        // first eight bytes, low dword first.
        let low = u64::from(u32::from_le(self.vlan_macip_lens))
            | (u64::from(u32::from_le(self.seqnum_seed)) << 32);
        AdvTxDesc {
            buffer_addr: low.to_le(),
            cmd_type_len: self.type_tucmd_mlhl,
            olinfo_status: self.mss_l4len_idx,
        }
    }
}

/// Splits a 64-bit address into its low and high dwords (for descriptors and `*DBAL`/`*DBAH`).
pub const fn split_u64(v: u64) -> [u32; 2] {
    [(v & 0xFFFF_FFFF) as u32, (v >> 32) as u32]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rx_descriptor_carries_the_buffer_address_little_endian() {
        let d = AdvRxDesc::read_format(0x1234_5678_9abc_def0);
        assert_eq!(u32::from_le(d.dw[0]), 0x9abc_def0);
        assert_eq!(u32::from_le(d.dw[1]), 0x1234_5678);
        assert!(!d.is_done());
    }

    #[test]
    fn rx_write_back_exposes_status_and_length() {
        let d = AdvRxDesc {
            dw: [
                0,
                0,
                (RXD_STAT_DD | RXD_STAT_EOP).to_le(),
                (0x0042_05ea_u32).to_le(),
            ],
        };
        assert!(d.is_done());
        assert_eq!(d.length(), 0x05ea);
    }

    #[test]
    fn tx_last_descriptor_asks_for_eop_and_status() {
        let d = AdvTxDesc::data(0x1000, 60, 60, ADVTXD_POPTS_TXSM, true);
        let cmd = u32::from_le(d.cmd_type_len);
        assert_eq!(cmd & 0xFFFF, 60);
        assert_eq!(cmd & ADVTXD_DTYP_DATA, ADVTXD_DTYP_DATA);
        assert_ne!(cmd & ADVTXD_DCMD_EOP, 0);
        assert_ne!(cmd & ADVTXD_DCMD_RS, 0);
        assert_eq!(u32::from_le(d.olinfo_status) >> ADVTXD_PAYLEN_SHIFT, 60);
        let middle = AdvTxDesc::data(0x1000, 60, 0, 0, false);
        assert_eq!(u32::from_le(middle.cmd_type_len) & ADVTXD_DCMD_EOP, 0);
    }

    #[test]
    fn context_descriptor_occupies_a_ring_slot_byte_for_byte() {
        let c = AdvTxContextDesc::checksum(14, 20, ADVTXD_TUCMD_L4T_TCP);
        let slot = c.into_ring_slot();
        // SAFETY: both types are 16-byte plain old data (checked above); reading their bytes
        // is sound.
        let as_bytes = |p: *const u8| unsafe { std::slice::from_raw_parts(p, DESC_LEN) }.to_vec();
        assert_eq!(
            as_bytes((&raw const c).cast()),
            as_bytes((&raw const slot).cast())
        );
    }

    #[test]
    fn context_descriptor_packs_header_lengths() {
        let c = AdvTxContextDesc::checksum(14, 20, ADVTXD_TUCMD_IPV4 | ADVTXD_TUCMD_L4T_TCP);
        assert_eq!(u32::from_le(c.vlan_macip_lens), (14 << 9) | 20);
        assert_eq!(
            u32::from_le(c.type_tucmd_mlhl),
            0x400 | 0x800 | ADVTXD_DTYP_CTXT | ADVTXD_DCMD_DEXT
        );
    }
}
