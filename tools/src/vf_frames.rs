//! Numbered test frames that `vf-tool send` transmits and host-side tests rebuild to compare
//! byte for byte: destination, source, ethertype 0x88b5 (IEEE local experimental), a 32-bit
//! sequence number, then a pattern derived from it.

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
}
