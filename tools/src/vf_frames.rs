//! Numbered test frames that `vf-tool send` and `vu-frontend send` transmit and host-side tests
//! rebuild to compare byte for byte.
//!
//! Two kinds: [`test_frame`] is destination, source, ethertype 0x88b5 (IEEE local
//! experimental), a 32-bit sequence number, then a pattern derived from it. [`udp_test_frame`]
//! is a UDP/IPv4 datagram with correct IPv4 and UDP checksums (RFC 791, RFC 768), for checksum
//! offload tests: [`udp_partial_csum`] turns it into what a `VIRTIO_NET_HDR_F_NEEDS_CSUM` sender
//! hands over, and [`complete_partial_csum`] does what the device then must do.

/// Ethertype of the test frames.
pub const TEST_ETHERTYPE: u16 = 0x88b5;
/// Where the big-endian sequence number sits in a test frame.
pub const SEQ_OFFSET: usize = 14;

/// The test frame number `seq` of `size` bytes (at least 18).
pub fn test_frame(dst: [u8; 6], src: [u8; 6], size: usize, seq: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(size);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    let pattern = seq.to_le_bytes();
    while f.len() < size {
        f.push(pattern[f.len() % 4] ^ f.len().to_le_bytes()[0]);
    }
    f
}

/// The sequence number of a test frame, if it is one.
pub fn test_frame_seq(frame: &[u8]) -> Option<u32> {
    if frame.len() < 18 || frame[12..14] != TEST_ETHERTYPE.to_be_bytes() {
        return None;
    }
    Some(u32::from_be_bytes(
        frame[SEQ_OFFSET..SEQ_OFFSET + 4].try_into().ok()?,
    ))
}

/// Bytes of an Ethernet header without VLAN tag.
pub const ETH_HLEN: usize = 14;
/// Ethertype of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// Bytes of an IPv4 header without options (IHL = 5).
pub const IPV4_HLEN: usize = 20;
/// IPv4 protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// Bytes of a UDP header.
pub const UDP_HLEN: usize = 8;
/// IPv4 source of UDP test frames (TEST-NET-1, RFC 5737: never routed).
pub const UDP_SRC_IP: [u8; 4] = [192, 0, 2, 1];
/// IPv4 destination of UDP test frames (TEST-NET-1).
pub const UDP_DST_IP: [u8; 4] = [192, 0, 2, 2];
/// UDP source port of UDP test frames.
pub const UDP_SRC_PORT: u16 = 40000;
/// UDP destination port of UDP test frames.
pub const UDP_DST_PORT: u16 = 40001;
/// Where checksumming starts for a UDP test frame: the UDP header (virtio `csum_start`).
pub const UDP_CSUM_START: usize = ETH_HLEN + IPV4_HLEN;
/// Where the UDP checksum sits from [`UDP_CSUM_START`] (virtio `csum_offset`).
pub const UDP_CSUM_OFFSET: usize = 6;
/// Where the big-endian sequence number sits in a UDP test frame: first payload bytes.
pub const UDP_SEQ_OFFSET: usize = UDP_CSUM_START + UDP_HLEN;
/// Smallest UDP test frame: the Ethernet minimum without FCS.
pub const UDP_FRAME_MIN: usize = 60;
/// Largest UDP test frame: the IPv4 total length field is 16 bits.
pub const UDP_FRAME_MAX: usize = ETH_HLEN + u16::MAX as usize;

/// Offset of the IPv4 header checksum in a frame.
const IPV4_CSUM_AT: usize = ETH_HLEN + 10;
/// Offset of the UDP checksum in a UDP test frame.
const UDP_CSUM_AT: usize = UDP_CSUM_START + UDP_CSUM_OFFSET;

/// The UDP/IPv4 test frame number `seq` of `size` bytes (clamped to
/// [`UDP_FRAME_MIN`]..=[`UDP_FRAME_MAX`]): from [`UDP_SRC_IP`]:[`UDP_SRC_PORT`] to
/// [`UDP_DST_IP`]:[`UDP_DST_PORT`], IPv4 identification = the low 16 bits of `seq`, DF set,
/// TTL 64; the payload starts with the big-endian `seq` at [`UDP_SEQ_OFFSET`], then a pattern
/// derived from it. Both checksums are final and correct.
pub fn udp_test_frame(dst: [u8; 6], src: [u8; 6], size: usize, seq: u32) -> Vec<u8> {
    let size = size.clamp(UDP_FRAME_MIN, UDP_FRAME_MAX);
    let ip_len = u16::try_from(size - ETH_HLEN).expect("clamped to the IPv4 total length");
    let udp_len = ip_len - u16::try_from(IPV4_HLEN).expect("20 fits");
    let seq_bytes = seq.to_be_bytes();
    let mut f = Vec::with_capacity(size);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    // IPv4 (RFC 791 §3.1): version 4, IHL 5; TOS 0; total length; identification; DF, offset 0;
    // TTL 64; protocol; checksum (filled below); addresses.
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&seq_bytes[2..4]);
    f.extend_from_slice(&[0x40, 0, 64, IPPROTO_UDP, 0, 0]);
    f.extend_from_slice(&UDP_SRC_IP);
    f.extend_from_slice(&UDP_DST_IP);
    // UDP (RFC 768): ports, length, checksum (filled below).
    f.extend_from_slice(&UDP_SRC_PORT.to_be_bytes());
    f.extend_from_slice(&UDP_DST_PORT.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&seq_bytes);
    let pattern = seq.to_le_bytes();
    while f.len() < size {
        f.push(pattern[f.len() % 4] ^ f.len().to_le_bytes()[0]);
    }
    let ip_csum = !fold(sum16(&f[ETH_HLEN..UDP_CSUM_START]));
    f[IPV4_CSUM_AT..IPV4_CSUM_AT + 2].copy_from_slice(&ip_csum.to_be_bytes());
    let udp_csum = !fold(udp_pseudo_sum(&f) + sum16(&f[UDP_CSUM_START..]));
    // RFC 768: a computed 0 is sent as all ones; 0 means "no checksum".
    let udp_csum = if udp_csum == 0 { 0xffff } else { udp_csum };
    f[UDP_CSUM_AT..UDP_CSUM_AT + 2].copy_from_slice(&udp_csum.to_be_bytes());
    f
}

/// The sequence number of a UDP test frame, if `frame` is one (IPv4 without options, UDP
/// between the test ports).
pub fn udp_test_frame_seq(frame: &[u8]) -> Option<u32> {
    let is_test_frame = frame.len() >= UDP_FRAME_MIN
        && frame[12..14] == ETHERTYPE_IPV4.to_be_bytes()
        && frame[ETH_HLEN] == 0x45
        && frame[ETH_HLEN + 9] == IPPROTO_UDP
        && frame[UDP_CSUM_START..UDP_CSUM_START + 2] == UDP_SRC_PORT.to_be_bytes()
        && frame[UDP_CSUM_START + 2..UDP_CSUM_START + 4] == UDP_DST_PORT.to_be_bytes();
    if !is_test_frame {
        return None;
    }
    Some(u32::from_be_bytes(
        frame[UDP_SEQ_OFFSET..UDP_SEQ_OFFSET + 4].try_into().ok()?,
    ))
}

/// Replaces the UDP checksum of a UDP/IPv4 frame (IPv4 without options) with the folded,
/// *not* inverted, sum of its pseudo-header: what Linux leaves there for `CHECKSUM_PARTIAL`
/// (`udp4_hwcsum` stores `~csum_tcpudp_magic(..., 0)`), so that a device finishing the job needs
/// only sum from `csum_start` to the end and store the complement (virtio 1.2 §5.1.6.2).
/// Frames too short to hold a UDP header are left alone.
pub fn udp_partial_csum(frame: &mut [u8]) {
    if frame.len() < UDP_CSUM_START + UDP_HLEN {
        return;
    }
    frame[UDP_CSUM_AT..UDP_CSUM_AT + 2].copy_from_slice(&[0, 0]);
    let pseudo = fold(udp_pseudo_sum(frame));
    frame[UDP_CSUM_AT..UDP_CSUM_AT + 2].copy_from_slice(&pseudo.to_be_bytes());
}

/// Does what a device does for `VIRTIO_NET_HDR_F_NEEDS_CSUM` (virtio 1.2 §5.1.6.2): sums the
/// frame from `csum_start` to its end and stores the complement at `csum_start + csum_offset`;
/// a result of 0 is stored as 0xffff, as Linux's `skb_checksum_help` does (`CSUM_MANGLED_0`).
/// Returns `false`, changing nothing, when the checksum field lies outside the frame.
pub fn complete_partial_csum(frame: &mut [u8], csum_start: usize, csum_offset: usize) -> bool {
    let Some(at) = csum_start.checked_add(csum_offset) else {
        return false;
    };
    if at.checked_add(2).is_none_or(|end| end > frame.len()) {
        return false;
    }
    let csum = !fold(sum16(&frame[csum_start..]));
    let csum = if csum == 0 { 0xffff } else { csum };
    frame[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    true
}

/// Whether a UDP/IPv4 frame (IPv4 without options) carries a correct IPv4 header checksum and a
/// present (non-zero), correct UDP checksum over the pseudo-header, header and payload.
pub fn udp_checksums_ok(frame: &[u8]) -> bool {
    if frame.len() < UDP_CSUM_START + UDP_HLEN || frame[ETH_HLEN] != 0x45 {
        return false;
    }
    let udp_len = usize::from(u16::from_be_bytes([
        frame[UDP_CSUM_START + 4],
        frame[UDP_CSUM_START + 5],
    ]));
    if UDP_CSUM_START + udp_len != frame.len() || frame[UDP_CSUM_AT..UDP_CSUM_AT + 2] == [0, 0] {
        return false;
    }
    // A correct checksum makes the one's-complement sum over the covered bytes all ones.
    fold(sum16(&frame[ETH_HLEN..UDP_CSUM_START])) == 0xffff
        && fold(udp_pseudo_sum(frame) + sum16(&frame[UDP_CSUM_START..])) == 0xffff
}

/// The sum of the UDP pseudo-header (RFC 768): addresses, zero, protocol, UDP length, as read
/// from an IPv4 frame without options.
fn udp_pseudo_sum(frame: &[u8]) -> u64 {
    let addresses = &frame[ETH_HLEN + 12..UDP_CSUM_START];
    let udp_len = &frame[UDP_CSUM_START + 4..UDP_CSUM_START + 6];
    sum16(addresses) + u64::from(IPPROTO_UDP) + sum16(udp_len)
}

/// The sum of `bytes` as big-endian 16-bit words, an odd last byte padded with zero (RFC 1071).
/// Not folded: a u64 cannot overflow for any frame size.
fn sum16(bytes: &[u8]) -> u64 {
    bytes
        .chunks(2)
        .map(|pair| u64::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum()
}

/// Folds the carries of a one's-complement sum back into 16 bits (RFC 1071 §4.1).
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    u16::try_from(sum).expect("folded below 2^16")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_their_sequence_number_and_differ() {
        let a = test_frame([1; 6], [2; 6], 60, 7);
        assert_eq!(a.len(), 60);
        assert_eq!(test_frame_seq(&a), Some(7));
        assert_ne!(a, test_frame([1; 6], [2; 6], 60, 8));
        assert_eq!(test_frame_seq(&a[..10]), None);
    }

    /// A 60-byte UDP test frame, seq 1, written out by hand. The checksums were added up by
    /// hand (RFC 1071), not with the code under test:
    ///
    /// IPv4 words: 4500 + 002e + 0001 + 4000 + 4011 + c000 + 0201 + c000 + 0202 = 0x2_4943,
    /// folded 0x4945, complement 0xb6ba.
    ///
    /// UDP pseudo-header: c000 + 0201 + c000 + 0202 + 0011 + 001a = 0x1_842e, folded 0x842f
    /// (the partial checksum). Header: 9c40 + 9c41 + 001a = 0x1_389b. Payload: 0000 + 0001 +
    /// 2e2f + 3131 + 3233 + 3535 + 3637 + 3939 + 3a3b = 0x1_7074. Total 0x4_2d3d, folded 0x2d41,
    /// complement 0xd2be.
    #[rustfmt::skip]
    const HAND_MADE_UDP_FRAME: [u8; 60] = [
        // Ethernet: dst, src, IPv4.
        1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0x08, 0x00,
        // IPv4: 45 00, length 46, id 1, DF, TTL 64, UDP, checksum, 192.0.2.1 > 192.0.2.2.
        0x45, 0x00, 0x00, 0x2e, 0x00, 0x01, 0x40, 0x00, 0x40, 0x11, 0xb6, 0xba,
        192, 0, 2, 1, 192, 0, 2, 2,
        // UDP: 40000 > 40001, length 26, checksum.
        0x9c, 0x40, 0x9c, 0x41, 0x00, 0x1a, 0xd2, 0xbe,
        // seq 1, then byte i = [1, 0, 0, 0][i % 4] ^ i.
        0, 0, 0, 1, 0x2e, 0x2f, 0x31, 0x31, 0x32, 0x33, 0x35, 0x35, 0x36, 0x37, 0x39, 0x39,
        0x3a, 0x3b,
    ];

    #[test]
    fn udp_frame_matches_the_hand_made_one() {
        let f = udp_test_frame([1; 6], [2; 6], 60, 1);
        assert_eq!(f, HAND_MADE_UDP_FRAME);
        assert!(udp_checksums_ok(&f));
        assert_eq!(udp_test_frame_seq(&f), Some(1));
    }

    #[test]
    fn partial_checksum_is_the_folded_pseudo_header_sum_and_completes_back() {
        let mut f = udp_test_frame([1; 6], [2; 6], 60, 1);
        udp_partial_csum(&mut f);
        assert_eq!(&f[40..42], &[0x84, 0x2f]);
        assert!(!udp_checksums_ok(&f));
        assert!(complete_partial_csum(
            &mut f,
            UDP_CSUM_START,
            UDP_CSUM_OFFSET
        ));
        assert_eq!(f, HAND_MADE_UDP_FRAME);
    }

    #[test]
    fn udp_frames_of_every_size_and_seq_have_correct_checksums() {
        for size in [0, 59, 60, 61, 100, 1000, 1514, 9000] {
            for seq in [0, 1, 0xffff, 0x1234_5678, u32::MAX] {
                let f = udp_test_frame([0xff; 6], [2, 0, 0, 0, 0, 1], size, seq);
                assert_eq!(f.len(), size.max(UDP_FRAME_MIN));
                assert!(udp_checksums_ok(&f), "size {size} seq {seq:#x}");
                assert_eq!(udp_test_frame_seq(&f), Some(seq));
                let mut partial = f.clone();
                udp_partial_csum(&mut partial);
                assert!(complete_partial_csum(
                    &mut partial,
                    UDP_CSUM_START,
                    UDP_CSUM_OFFSET
                ));
                assert_eq!(partial, f, "size {size} seq {seq:#x}");
            }
        }
    }

    #[test]
    fn checksum_verifier_notices_a_flipped_bit_and_a_missing_checksum() {
        let good = udp_test_frame([1; 6], [2; 6], 200, 9);
        for at in [ETH_HLEN + 3, UDP_CSUM_START + 1, 150, 199] {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            assert!(!udp_checksums_ok(&bad), "flip at {at}");
        }
        let mut none = good.clone();
        none[UDP_CSUM_AT..UDP_CSUM_AT + 2].copy_from_slice(&[0, 0]);
        assert!(!udp_checksums_ok(&none));
        assert!(!udp_checksums_ok(&good[..100]));
    }

    #[test]
    fn non_udp_frames_have_no_udp_sequence_number() {
        assert_eq!(udp_test_frame_seq(&test_frame([1; 6], [2; 6], 60, 7)), None);
        let mut other_port = udp_test_frame([1; 6], [2; 6], 60, 7);
        other_port[UDP_CSUM_START + 3] ^= 1;
        assert_eq!(udp_test_frame_seq(&other_port), None);
        assert_eq!(udp_test_frame_seq(&HAND_MADE_UDP_FRAME[..59]), None);
    }

    #[test]
    fn completion_refuses_a_checksum_field_past_the_end() {
        let mut f = vec![0u8; 40];
        assert!(!complete_partial_csum(&mut f, 34, 6));
        assert!(!complete_partial_csum(&mut f, usize::MAX, 6));
        assert_eq!(f, vec![0u8; 40]);
    }
}
