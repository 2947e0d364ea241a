//! virtio-net feature bits: what the device offers for a port, and what the acked set means for
//! the data path (header length, mergeable buffers, frame limits, offloads).

use vf_dataplane::Offloads;
use vf_dataplane::net_hdr::{VIRTIO_NET_HDR_LEGACY_LEN, VIRTIO_NET_HDR_V1_LEN};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use crate::rx::RxLayout;
use crate::tx::{ETH_HLEN, TxLimits, VLAN_HLEN};

const fn bit(feature: u32) -> u64 {
    1 << feature
}

/// Features every port gets.
const BASE_FEATURES: u64 = bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_RING_F_EVENT_IDX)
    | bit(VIRTIO_RING_F_INDIRECT_DESC)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_MTU)
    | bit(VIRTIO_NET_F_STATUS);

/// The features offered for a port with `offloads`: offloads only where the port performs them
/// (virtio 1.2 §5.1.3.1: HOST_TSO* needs CSUM, GUEST_TSO* needs GUEST_CSUM).
pub fn offered(offloads: Offloads) -> u64 {
    let mut features = BASE_FEATURES | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    if offloads.csum {
        features |= bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_GUEST_CSUM);
        if offloads.tso4 {
            features |= bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_GUEST_TSO4);
        }
        if offloads.tso6 {
            features |= bit(VIRTIO_NET_F_HOST_TSO6) | bit(VIRTIO_NET_F_GUEST_TSO6);
        }
        if offloads.tso_ecn && (offloads.tso4 || offloads.tso6) {
            features |= bit(VIRTIO_NET_F_HOST_ECN) | bit(VIRTIO_NET_F_GUEST_ECN);
        }
    }
    features
}

/// vhost-user protocol features the device offers.
pub fn protocol() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
}

/// The acked features and what follows from them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Feature bits the front-end acked.
    pub acked: u64,
    /// The device MTU.
    pub mtu: u16,
}

impl Negotiated {
    /// The acked set `acked` on a device with `mtu`.
    pub fn new(acked: u64, mtu: u16) -> Self {
        Negotiated { acked, mtu }
    }

    fn has(&self, feature: u32) -> bool {
        self.acked & bit(feature) != 0
    }

    /// virtio-net header length (virtio 1.2 §5.1.6: `num_buffers` is there with VERSION_1 or
    /// MRG_RXBUF).
    pub fn hdr_len(&self) -> usize {
        if self.has(VIRTIO_F_VERSION_1) || self.has(VIRTIO_NET_F_MRG_RXBUF) {
            VIRTIO_NET_HDR_V1_LEN
        } else {
            VIRTIO_NET_HDR_LEGACY_LEN
        }
    }

    /// How rx frames are laid out in guest buffers.
    pub fn rx_layout(&self) -> RxLayout {
        RxLayout {
            hdr_len: self.hdr_len(),
            mergeable: self.has(VIRTIO_NET_F_MRG_RXBUF),
        }
    }

    /// What a tx chain may hold.
    pub fn tx_limits(&self) -> TxLimits {
        TxLimits {
            hdr_len: self.hdr_len(),
            max_frame: usize::from(self.mtu) + ETH_HLEN + VLAN_HLEN,
            gso_allowed: self.has(VIRTIO_NET_F_HOST_TSO4) || self.has(VIRTIO_NET_F_HOST_TSO6),
        }
    }

    /// Offloaded frames the guest accepts on rx.
    pub fn guest_offloads(&self) -> Offloads {
        Offloads {
            csum: self.has(VIRTIO_NET_F_GUEST_CSUM),
            tso4: self.has(VIRTIO_NET_F_GUEST_TSO4),
            tso6: self.has(VIRTIO_NET_F_GUEST_TSO6),
            tso_ecn: self.has(VIRTIO_NET_F_GUEST_ECN),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offloads_are_offered_only_when_the_port_has_them() {
        let none = offered(Offloads::default());
        assert_eq!(none & bit(VIRTIO_NET_F_CSUM), 0);
        assert_eq!(none & bit(VIRTIO_NET_F_HOST_TSO4), 0);
        assert_ne!(none & bit(VIRTIO_NET_F_MRG_RXBUF), 0);
        let all = offered(Offloads {
            csum: true,
            tso4: true,
            tso6: true,
            tso_ecn: true,
        });
        for f in [
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_HOST_ECN,
        ] {
            assert_ne!(all & bit(f), 0, "feature {f}");
        }
        let tso_without_csum = offered(Offloads {
            tso4: true,
            ..Default::default()
        });
        assert_eq!(tso_without_csum & bit(VIRTIO_NET_F_HOST_TSO4), 0);
    }

    #[test]
    fn header_is_legacy_only_without_version_1_and_mrg() {
        assert_eq!(Negotiated::new(0, 1500).hdr_len(), 10);
        assert_eq!(Negotiated::new(bit(VIRTIO_F_VERSION_1), 1500).hdr_len(), 12);
        assert_eq!(
            Negotiated::new(bit(VIRTIO_NET_F_MRG_RXBUF), 1500).hdr_len(),
            12
        );
    }

    #[test]
    fn tx_limit_is_mtu_plus_ethernet_and_vlan() {
        assert_eq!(Negotiated::new(0, 1500).tx_limits().max_frame, 1518);
        assert!(!Negotiated::new(0, 1500).tx_limits().gso_allowed);
    }
}
