//! Counters of what the forwarding loop did, owned by the worker and reported when a front-end
//! goes away. Counters, not logs, tell what the data path did.

use std::fmt;

/// Per-device forwarding counters (one queue pair).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_packets: u64,
    /// Bytes delivered to the guest, without the virtio-net header.
    pub rx_bytes: u64,
    /// Rx chains refused (outside guest memory, loops, read-only, zero length).
    pub rx_bad_chain: u64,
    /// Frames dropped because the guest's buffers cannot hold them.
    pub rx_frame_too_big: u64,
    /// Times the guest had no rx buffer and the port was left to hold frames.
    pub rx_no_avail_buffer: u64,
    /// Bad frames the device wrote into a guest buffer (direct rx), returned with length 0.
    pub rx_errors: u64,
    /// Frames taken from the guest and handed to the port.
    pub tx_packets: u64,
    /// Bytes handed to the port, without the virtio-net header.
    pub tx_bytes: u64,
    /// Tx chains refused (outside guest memory, loops, write-only, zero length, no header).
    pub tx_bad_chain: u64,
    /// Tx frames longer than the MTU allows without segmentation offload.
    pub tx_oversize: u64,
    /// Tx frames asking for an offload that was not negotiated.
    pub tx_bad_offload: u64,
    /// Tx frames the port had no room for.
    pub tx_port_full: u64,
}

impl fmt::Display for NetStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rx_packets={} rx_bytes={} rx_bad_chain={} rx_frame_too_big={} rx_no_avail_buffer={} \
             rx_errors={} tx_packets={} tx_bytes={} tx_bad_chain={} tx_oversize={} tx_bad_offload={} \
             tx_port_full={}",
            self.rx_packets,
            self.rx_bytes,
            self.rx_bad_chain,
            self.rx_frame_too_big,
            self.rx_no_avail_buffer,
            self.rx_errors,
            self.tx_packets,
            self.tx_bytes,
            self.tx_bad_chain,
            self.tx_oversize,
            self.tx_bad_offload,
            self.tx_port_full
        )
    }
}
