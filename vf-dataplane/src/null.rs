//! A port that counts and discards every tx frame and never receives: it isolates the cost of
//! the vhost side in benchmarks and profiles.

use std::io;
use std::os::fd::RawFd;

use crate::port::{LinkState, Offloads, Port, PortStats, RxBurst, TxBurst};

/// The discarding port.
#[derive(Debug, Default)]
pub struct NullPort {
    stats: PortStats,
    unreported_tx: usize,
}

impl NullPort {
    /// A new null port.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Port for NullPort {
    fn name(&self) -> &str {
        "null"
    }

    fn offloads(&self) -> Offloads {
        Offloads::default()
    }

    fn set_rx_offloads(&mut self, _accepted: Offloads) -> io::Result<()> {
        Ok(())
    }

    fn rx_burst(&mut self, _burst: &mut RxBurst) -> usize {
        0
    }

    fn tx_burst(&mut self, burst: &TxBurst) -> usize {
        for i in 0..burst.len() {
            self.stats.tx_packets += 1;
            self.stats.tx_bytes += burst.frame(i).2 as u64;
        }
        self.unreported_tx += burst.len();
        burst.len()
    }

    fn tx_completed(&mut self) -> usize {
        std::mem::take(&mut self.unreported_tx)
    }

    fn link_state(&self) -> LinkState {
        LinkState::Up
    }

    fn stats(&self) -> PortStats {
        self.stats
    }

    fn rx_ready_fd(&self) -> Option<RawFd> {
        None
    }
}
