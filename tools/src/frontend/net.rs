//! virtio-net pieces the driver needs (virtio 1.2 §5.1): the 12-byte `virtio_net_hdr_v1`, the
//! device config space, feature bits, and test frames.
//!
//! Invariant: byte layouts come from `virtio-bindings` (sizes and field offsets), values are
//! little-endian as VIRTIO_F_VERSION_1 requires.

use std::fmt;
use std::mem::{offset_of, size_of};

use virtio_bindings::virtio_net::{VIRTIO_NET_S_LINK_UP, virtio_net_config, virtio_net_hdr_v1};

use super::Error;

/// The 12-byte `virtio_net_hdr_v1` that precedes every frame once VERSION_1 is negotiated,
/// and its size: the same type the device side uses.
pub use vf_dataplane::VirtioNetHdr as NetHdr;
pub use vf_dataplane::net_hdr::VIRTIO_NET_HDR_V1_LEN as HDR_LEN;

const _: () = assert!(HDR_LEN == size_of::<virtio_net_hdr_v1>());

/// The feature bit `bit` as a mask.
pub const fn feature(bit: u32) -> u64 {
    1 << bit
}

fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// The fields of the virtio-net config space this driver reads (§5.1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// `mac` (valid with VIRTIO_NET_F_MAC).
    pub mac: [u8; 6],
    /// `status` (valid with VIRTIO_NET_F_STATUS): `VIRTIO_NET_S_*`.
    pub status: u16,
    /// `max_virtqueue_pairs` (valid with VIRTIO_NET_F_MQ).
    pub max_virtqueue_pairs: u16,
    /// `mtu` (valid with VIRTIO_NET_F_MTU).
    pub mtu: u16,
}

/// Bytes of config space up to and including `mtu`.
pub const CONFIG_LEN: usize = offset_of!(virtio_net_config, mtu) + 2;

impl NetConfig {
    /// Parses the first [`CONFIG_LEN`] bytes of the config space.
    pub fn parse(b: &[u8]) -> Result<Self, Error> {
        if b.len() < CONFIG_LEN {
            return Err(Error::ShortConfig { len: b.len() });
        }
        let at = offset_of!(virtio_net_config, mac);
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&b[at..at + 6]);
        Ok(NetConfig {
            mac,
            status: get16(b, offset_of!(virtio_net_config, status)),
            max_virtqueue_pairs: get16(b, offset_of!(virtio_net_config, max_virtqueue_pairs)),
            mtu: get16(b, offset_of!(virtio_net_config, mtu)),
        })
    }

    /// Whether `status` says the link is up (`VIRTIO_NET_S_LINK_UP`).
    pub fn link_up(&self) -> bool {
        u32::from(self.status) & VIRTIO_NET_S_LINK_UP != 0
    }
}

/// `mac=aa:bb:cc:dd:ee:ff status=N link=up|down`, the fields a config-change can move.
impl fmt::Display for NetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let link = if self.link_up() { "up" } else { "down" };
        write!(
            f,
            "mac={} status={} link={link}",
            format_mac(self.mac),
            self.status
        )
    }
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// An Ethernet frame of `len` bytes (at least 14): destination, source, `ethertype`, then a
/// payload whose bytes depend on `seed` and their position, so that a reordered, truncated or
/// shifted copy never compares equal.
pub fn test_frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, len: usize, seed: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(len.max(14));
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    let mut x = u32::from(seed).wrapping_mul(0x9e37_79b9) | 1;
    while f.len() < len {
        // xorshift32: cheap, and different for every seed.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        f.push(x.to_le_bytes()[0]);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_mac_status_pairs_and_mtu() {
        let b = [2, 0, 0, 0, 0, 7, 1, 0, 1, 0, 0xdc, 0x05, 0xff];
        let c = NetConfig::parse(&b).unwrap();
        assert_eq!(c.mac, [2, 0, 0, 0, 0, 7]);
        assert_eq!(c.status, 1);
        assert_eq!(c.max_virtqueue_pairs, 1);
        assert_eq!(c.mtu, 1500);
        assert!(NetConfig::parse(&b[..11]).is_err());
    }

    #[test]
    fn config_displays_mac_status_and_link() {
        let mut c = NetConfig {
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            status: 1,
            max_virtqueue_pairs: 1,
            mtu: 1500,
        };
        assert!(c.link_up());
        assert_eq!(c.to_string(), "mac=52:54:00:12:34:56 status=1 link=up");
        // VIRTIO_NET_S_ANNOUNCE alone: the link is down.
        c.status = 2;
        assert!(!c.link_up());
        assert_eq!(c.to_string(), "mac=52:54:00:12:34:56 status=2 link=down");
        c.status = 3;
        assert_eq!(c.to_string(), "mac=52:54:00:12:34:56 status=3 link=up");
    }

    #[test]
    fn mac_round_trips_and_rejects_garbage() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0xab];
        assert_eq!(format_mac(mac), "52:54:00:12:34:ab");
        assert_eq!(parse_mac("52:54:00:12:34:ab"), Some(mac));
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:ab:00"), None);
        assert_eq!(parse_mac("52:54:00:12:34:zz"), None);
    }

    #[test]
    fn test_frames_differ_by_seed_and_keep_their_header() {
        let a = test_frame([0xff; 6], [2; 6], 0x88b5, 60, 1);
        let b = test_frame([0xff; 6], [2; 6], 0x88b5, 60, 2);
        assert_eq!(a.len(), 60);
        assert_eq!(&a[12..14], &[0x88, 0xb5]);
        assert_ne!(a, b);
        assert_eq!(a, test_frame([0xff; 6], [2; 6], 0x88b5, 60, 1));
    }
}
