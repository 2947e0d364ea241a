//! The virtio-net header (virtio 1.2 §5.1.6, `struct virtio_net_hdr_v1`), which is also the
//! vnet header Linux TAP devices speak with `IFF_VNET_HDR`. Ports carry offload requests
//! (checksum, segmentation) in it so they cross the daemon unchanged.
//!
//! The layout is the little-endian wire format; this crate targets little-endian hosts, where a
//! TAP's native-endian vnet header is the same bytes.

use virtio_bindings::virtio_net::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE};

/// `struct virtio_net_hdr_v1`: 12 bytes, used whenever VERSION_1 or MRG_RXBUF is negotiated.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Length of the headers to replicate for each segment.
    pub hdr_len: u16,
    /// Segment payload size for GSO.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum goes.
    pub csum_offset: u16,
    /// Number of rx buffers a mergeable frame spans; 0 on tx.
    pub num_buffers: u16,
}

/// Size of the v1 header.
pub const VIRTIO_NET_HDR_V1_LEN: usize = 12;
/// Size of the legacy header without `num_buffers` (no VERSION_1, no MRG_RXBUF).
pub const VIRTIO_NET_HDR_LEGACY_LEN: usize = 10;

const _: () = assert!(std::mem::size_of::<VirtioNetHdr>() == VIRTIO_NET_HDR_V1_LEN);

impl VirtioNetHdr {
    /// Parses the first `len` bytes (10 or 12) of a header.
    pub fn from_bytes(bytes: &[u8; VIRTIO_NET_HDR_V1_LEN]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        VirtioNetHdr {
            flags: bytes[0],
            gso_type: bytes[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        }
    }

    /// The header's wire bytes.
    pub fn to_bytes(&self) -> [u8; VIRTIO_NET_HDR_V1_LEN] {
        let mut b = [0u8; VIRTIO_NET_HDR_V1_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    /// Whether the sender asked for segmentation offload.
    pub fn is_gso(&self) -> bool {
        u32::from(self.gso_type) != VIRTIO_NET_HDR_GSO_NONE
    }

    /// Whether the sender left the checksum for the device to fill in.
    pub fn needs_csum(&self) -> bool {
        u32::from(self.flags) & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_through_wire_bytes() {
        let hdr = VirtioNetHdr {
            flags: 1,
            gso_type: 3,
            hdr_len: 0x1234,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 2,
        };
        let bytes = hdr.to_bytes();
        assert_eq!(&bytes[2..4], &[0x34, 0x12], "fields are little-endian");
        assert_eq!(VirtioNetHdr::from_bytes(&bytes), hdr);
        assert!(hdr.needs_csum());
        assert!(hdr.is_gso());
        assert!(!VirtioNetHdr::default().is_gso());
    }

    #[test]
    fn field_offsets_match_the_virtio_bindings_layout() {
        use std::mem::offset_of;

        use virtio_bindings::virtio_net::virtio_net_hdr_v1 as Binding;
        assert_eq!(std::mem::size_of::<Binding>(), VIRTIO_NET_HDR_V1_LEN);
        assert_eq!(
            offset_of!(VirtioNetHdr, hdr_len),
            offset_of!(Binding, hdr_len)
        );
        assert_eq!(
            offset_of!(VirtioNetHdr, gso_size),
            offset_of!(Binding, gso_size)
        );
        assert_eq!(
            offset_of!(VirtioNetHdr, csum_start),
            offset_of!(Binding, __bindgen_anon_1)
        );
        assert_eq!(
            offset_of!(VirtioNetHdr, num_buffers),
            offset_of!(Binding, num_buffers)
        );
    }
}
