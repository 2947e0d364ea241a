//! The tx chains taken from the guest and not yet returned: the in-order bookkeeping between the
//! avail ring, a port that finishes frames later (a VF reading them by DMA), and the used ring.
//!
//! Invariant: entries are in avail-ring order, and a chain goes to the used ring only when every
//! chain before it has. Chains the port never got (refused as malformed, dropped) wait their
//! turn like the others. Chains the port gives back unsent are the newest port entries, so
//! handing them back to the avail ring is a rewind of the avail position by the entries from
//! the first of them on.

use std::collections::VecDeque;

/// One chain taken from the avail ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Taken {
    /// The chain's head descriptor.
    pub head: u16,
    /// Frame bytes handed to the port (0 for a chain that was not).
    pub len: u32,
    /// Whether the port has the frame and will report it complete.
    pub in_port: bool,
}

/// The chains in flight, oldest first.
#[derive(Debug)]
pub struct InFlight {
    entries: VecDeque<Taken>,
}

impl InFlight {
    /// Room for `capacity` chains (the largest queue size) without reallocating.
    pub fn with_capacity(capacity: usize) -> Self {
        InFlight {
            entries: VecDeque::with_capacity(capacity),
        }
    }

    /// Chains in flight.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no chain is in flight.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records a chain just taken from the avail ring.
    pub fn push(&mut self, taken: Taken) {
        self.entries.push_back(taken);
    }

    /// Returns the chains that are finished now that the port completed `completed` more
    /// frames: each oldest entry that the port had and completed, or never had. Calls `done`
    /// for each, oldest first, and stops at the first port frame still in flight.
    pub fn complete<E>(
        &mut self,
        mut completed: usize,
        mut done: impl FnMut(Taken) -> Result<(), E>,
    ) -> Result<(), E> {
        while let Some(&front) = self.entries.front() {
            if front.in_port {
                if completed == 0 {
                    break;
                }
                completed -= 1;
            }
            done(front)?;
            self.entries.pop_front();
        }
        debug_assert_eq!(completed, 0, "the port completed frames it was never given");
        Ok(())
    }

    /// Gives back the `frames` newest port frames and every chain taken after them, for the
    /// caller to rewind the avail position by the returned count.
    pub fn take_back_newest(&mut self, frames: usize) -> usize {
        if frames == 0 {
            return 0;
        }
        let mut seen = 0;
        let mut cut = self.entries.len();
        while cut > 0 {
            cut -= 1;
            if self.entries[cut].in_port {
                seen += 1;
                if seen == frames {
                    break;
                }
            }
        }
        debug_assert_eq!(seen, frames, "the port gave back frames it was never given");
        let removed = self.entries.len() - cut;
        self.entries.truncate(cut);
        removed
    }

    /// Marks the `frames` newest port frames as never given to the port (it refused them and
    /// will not report them): they complete in turn, unsent.
    pub fn drop_newest(&mut self, frames: usize) {
        let mut left = frames;
        for taken in self.entries.iter_mut().rev() {
            if left == 0 {
                break;
            }
            if taken.in_port {
                taken.in_port = false;
                taken.len = 0;
                left -= 1;
            }
        }
    }

    /// Forgets everything (the connection ended).
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(head: u16) -> Taken {
        Taken {
            head,
            len: 60,
            in_port: true,
        }
    }

    fn refused(head: u16) -> Taken {
        Taken {
            head,
            len: 0,
            in_port: false,
        }
    }

    fn completed(flight: &mut InFlight, n: usize) -> Vec<u16> {
        let mut heads = Vec::new();
        flight
            .complete::<()>(n, |t| {
                heads.push(t.head);
                Ok(())
            })
            .unwrap();
        heads
    }

    #[test]
    fn refused_chains_wait_behind_frames_still_in_the_port() {
        let mut flight = InFlight::with_capacity(8);
        for t in [port(0), refused(1), port(2), refused(3)] {
            flight.push(t);
        }
        assert_eq!(completed(&mut flight, 0), Vec::<u16>::new());
        assert_eq!(completed(&mut flight, 1), [0, 1]);
        assert_eq!(completed(&mut flight, 1), [2, 3]);
        assert!(flight.is_empty());
    }

    #[test]
    fn frames_a_copying_port_refused_complete_unsent_in_turn() {
        let mut flight = InFlight::with_capacity(8);
        for t in [port(0), port(1), port(2)] {
            flight.push(t);
        }
        flight.drop_newest(2);
        assert_eq!(completed(&mut flight, 1), [0, 1, 2]);
    }

    #[test]
    fn a_refused_chain_at_the_front_goes_at_once() {
        let mut flight = InFlight::with_capacity(8);
        flight.push(refused(7));
        flight.push(port(8));
        assert_eq!(completed(&mut flight, 0), [7]);
        assert_eq!(flight.len(), 1);
    }

    #[test]
    fn frames_given_back_take_the_chains_after_them_along() {
        let mut flight = InFlight::with_capacity(8);
        for t in [port(0), port(1), refused(2), port(3), refused(4)] {
            flight.push(t);
        }
        // The port sent frame 0 and gives back 1 and 3.
        assert_eq!(
            flight.take_back_newest(2),
            4,
            "chains 1, 2, 3 and 4 go back"
        );
        assert_eq!(completed(&mut flight, 1), [0]);
        assert!(flight.is_empty());
        assert_eq!(flight.take_back_newest(0), 0);
    }
}
