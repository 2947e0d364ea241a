//! The VF side of the 82576 PF/VF mailbox (datasheet §7.10.2.9): 16 dwords of shared memory
//! (`VMBMEM`) and a control register (`V2PMAILBOX`) whose PFSTS, PFACK and RSTD bits clear on
//! read.
//!
//! Invariant: every read of `V2PMAILBOX` goes through [`Mailbox::read_v2p`], which keeps the
//! read-to-clear bits it saw in a software shadow until someone consumes them, so no read loses
//! an event (the shape of igbvf's `e1000_read_v2p_mailbox`).

use std::thread;
use std::time::Duration;

use super::regs::{
    V2PMAILBOX, V2PMAILBOX_ACK, V2PMAILBOX_PFACK, V2PMAILBOX_PFSTS, V2PMAILBOX_R2C_BITS,
    V2PMAILBOX_REQ, V2PMAILBOX_RSTD, V2PMAILBOX_RSTI, V2PMAILBOX_VFU, VMBMEM, VMBMEM_DWORDS,
};
use crate::nic::regs_io::RegisterAccess;

/// VF asks the PF to reset it; the reply carries the VF's MAC address.
pub const VF_RESET: u32 = 0x01;
/// VF asks the PF to set its MAC address.
pub const VF_SET_MAC_ADDR: u32 = 0x02;
/// VF asks the PF for multicast hash filters (count in MSGINFO).
pub const VF_SET_MULTICAST: u32 = 0x03;
/// VF asks the PF to add (MSGINFO = 1) or remove a VLAN filter.
pub const VF_SET_VLAN: u32 = 0x04;
/// VF asks the PF for a maximum frame size (long packet enable).
pub const VF_SET_LPE: u32 = 0x05;
/// PF control message: the PF is telling the VF something (link change, reset).
pub const PF_CONTROL_MSG: u32 = 0x0100;
/// Reply flag: the request was done.
pub const VT_MSGTYPE_ACK: u32 = 0x8000_0000;
/// Reply flag: the request was refused.
pub const VT_MSGTYPE_NACK: u32 = 0x4000_0000;
/// Reply flag: the PF accepts requests (clear to send).
pub const VT_MSGTYPE_CTS: u32 = 0x2000_0000;
/// Position of the per-message info byte.
pub const VT_MSGINFO_SHIFT: u32 = 16;
/// Mask of the message type (without flags and info).
pub const VT_MSGTYPE_MASK: u32 = 0xFFFF;

/// Polls before a mailbox wait gives up: with [`POLL_INTERVAL`], about a second, as igbvf.
pub const POLLS: u32 = 2000;
/// Pause between mailbox polls.
pub const POLL_INTERVAL: Duration = Duration::from_micros(500);

/// Mailbox failures.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The PF holds the mailbox memory.
    #[error("the PF holds the mailbox")]
    Busy,
    /// The PF did not answer in time.
    #[error("the PF did not {what} within about a second (is the PF driver loaded and the PF up?)")]
    Timeout {
        /// What we waited for.
        what: &'static str,
    },
    /// The PF refused the request.
    #[error(
        "the PF refused request {request:#x} (for a MAC change, is the VF trusted or the MAC set from the PF?)"
    )]
    Nack {
        /// The request's message type.
        request: u32,
    },
    /// The reply was not for our request.
    #[error("the PF answered {reply:#x} to request {request:#x}")]
    UnexpectedReply {
        /// The request's message type.
        request: u32,
        /// The reply's first dword.
        reply: u32,
    },
    /// A message longer than the mailbox memory.
    #[error("mailbox messages are at most {VMBMEM_DWORDS} dwords")]
    TooLong,
}

/// The VF's mailbox state: the shadow of read-to-clear bits and the polling budget.
#[derive(Debug)]
pub struct Mailbox {
    shadow: u32,
    polls: u32,
    interval: Duration,
}

impl Default for Mailbox {
    fn default() -> Self {
        Self::new(POLLS, POLL_INTERVAL)
    }
}

impl Mailbox {
    /// A mailbox that waits at most `polls` times `interval` for the PF.
    pub fn new(polls: u32, interval: Duration) -> Self {
        Mailbox {
            shadow: 0,
            polls,
            interval,
        }
    }

    /// Reads `V2PMAILBOX`, remembering the read-to-clear bits it returns.
    pub fn read_v2p(&mut self, regs: &impl RegisterAccess) -> u32 {
        let value = regs.read32(V2PMAILBOX) | self.shadow;
        self.shadow |= value & V2PMAILBOX_R2C_BITS;
        value
    }

    /// Whether any bit of `mask` is set now or was seen since last consumed; consumes them.
    fn take(&mut self, regs: &impl RegisterAccess, mask: u32) -> bool {
        let seen = self.read_v2p(regs) & mask != 0;
        self.shadow &= !mask;
        seen
    }

    /// Whether the PF posted a message (consumes the indication).
    pub fn check_for_msg(&mut self, regs: &impl RegisterAccess) -> bool {
        self.take(regs, V2PMAILBOX_PFSTS)
    }

    /// Whether the PF acknowledged our last message (consumes the indication).
    pub fn check_for_ack(&mut self, regs: &impl RegisterAccess) -> bool {
        self.take(regs, V2PMAILBOX_PFACK)
    }

    /// Whether the PF indicated a reset in progress or done (consumes the indication).
    pub fn check_for_reset(&mut self, regs: &impl RegisterAccess) -> bool {
        self.take(regs, V2PMAILBOX_RSTI | V2PMAILBOX_RSTD)
    }

    /// Polls until a take of `mask` gives `until`, within the budget.
    fn poll(
        &mut self,
        regs: &impl RegisterAccess,
        mask: u32,
        until: bool,
        what: &'static str,
    ) -> Result<(), Error> {
        for _ in 0..self.polls {
            if self.take(regs, mask) == until {
                return Ok(());
            }
            thread::sleep(self.interval);
        }
        Err(Error::Timeout { what })
    }

    /// Waits until the PF's reset indications stop (after `VTCTRL.RST`).
    pub fn wait_reset_done(&mut self, regs: &impl RegisterAccess) -> Result<(), Error> {
        self.poll(
            regs,
            V2PMAILBOX_RSTI | V2PMAILBOX_RSTD,
            false,
            "finish the VF reset",
        )
    }

    fn lock(&mut self, regs: &impl RegisterAccess) -> Result<(), Error> {
        regs.write32(V2PMAILBOX, V2PMAILBOX_VFU);
        if self.read_v2p(regs) & V2PMAILBOX_VFU != 0 {
            Ok(())
        } else {
            Err(Error::Busy)
        }
    }

    /// Copies `msg` into the mailbox and tells the PF (does not wait for its ACK).
    pub fn write(&mut self, regs: &impl RegisterAccess, msg: &[u32]) -> Result<(), Error> {
        if msg.len() > VMBMEM_DWORDS {
            return Err(Error::TooLong);
        }
        self.lock(regs)?;
        // Stale ACK or message indications would be taken for answers to this message.
        self.check_for_ack(regs);
        self.check_for_msg(regs);
        for (i, word) in (0u32..).zip(msg) {
            regs.write32(VMBMEM + 4 * i, *word);
        }
        regs.write32(V2PMAILBOX, V2PMAILBOX_REQ);
        Ok(())
    }

    /// Copies the PF's message into `buf`, acknowledges it and releases the mailbox.
    pub fn read(&mut self, regs: &impl RegisterAccess, buf: &mut [u32]) -> Result<(), Error> {
        if buf.len() > VMBMEM_DWORDS {
            return Err(Error::TooLong);
        }
        self.lock(regs)?;
        for (i, word) in (0u32..).zip(buf.iter_mut()) {
            *word = regs.read32(VMBMEM + 4 * i);
        }
        regs.write32(V2PMAILBOX, V2PMAILBOX_ACK);
        Ok(())
    }

    /// Sends `msg` and waits for the PF's ACK.
    pub fn write_posted(&mut self, regs: &impl RegisterAccess, msg: &[u32]) -> Result<(), Error> {
        self.write(regs, msg)?;
        self.poll(regs, V2PMAILBOX_PFACK, true, "acknowledge our message")
    }

    /// Waits for a PF message and reads it into `buf`.
    pub fn read_posted(
        &mut self,
        regs: &impl RegisterAccess,
        buf: &mut [u32],
    ) -> Result<(), Error> {
        self.poll(regs, V2PMAILBOX_PFSTS, true, "answer")?;
        self.read(regs, buf)
    }

    /// Sends request `msg` and reads the PF's reply into `reply`; fails on NACK or on a reply
    /// to another request.
    pub fn request(
        &mut self,
        regs: &impl RegisterAccess,
        msg: &[u32],
        reply: &mut [u32],
    ) -> Result<(), Error> {
        let request = msg.first().copied().unwrap_or(0) & VT_MSGTYPE_MASK;
        self.write_posted(regs, msg)?;
        self.read_posted(regs, reply)?;
        let answer = reply.first().copied().unwrap_or(0);
        if answer & VT_MSGTYPE_MASK != request {
            return Err(Error::UnexpectedReply {
                request,
                reply: answer,
            });
        }
        if answer & VT_MSGTYPE_NACK != 0 {
            return Err(Error::Nack { request });
        }
        if answer & VT_MSGTYPE_ACK == 0 {
            return Err(Error::UnexpectedReply {
                request,
                reply: answer,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod fake_pf {
    //! A tiny model of the PF side of the mailbox, enough to drive the VF protocol in tests.

    use std::cell::RefCell;

    use super::*;
    use crate::nic::igbvf::regs::{V2PMAILBOX_PFU, VTCTRL, VTCTRL_RST, VTSTATUS, VTSTATUS_LU};

    #[derive(Default)]
    pub struct State {
        /// PF-side bits of V2PMAILBOX (PFSTS, PFACK, RSTI, RSTD, PFU).
        pub bits: u32,
        pub vfu: bool,
        pub vmbmem: [u32; VMBMEM_DWORDS],
        pub mac: [u8; 6],
        pub refuse_mac: bool,
        pub silent: bool,
        pub received: Vec<Vec<u32>>,
        pub status: u32,
    }

    /// The fake PF. Reads of V2PMAILBOX clear PFSTS, PFACK and RSTD, as on the device.
    pub struct FakePf(pub RefCell<State>);

    impl FakePf {
        pub fn new(mac: [u8; 6]) -> Self {
            FakePf(RefCell::new(State {
                mac,
                status: VTSTATUS_LU,
                ..Default::default()
            }))
        }

        fn answer(s: &mut State, msg: &[u32]) {
            let kind = msg[0] & VT_MSGTYPE_MASK;
            let mut reply = [0u32; 3];
            reply[0] = kind | VT_MSGTYPE_CTS;
            match kind {
                VF_RESET => {
                    reply[0] = VF_RESET | VT_MSGTYPE_ACK;
                    let m = s.mac;
                    reply[1] = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
                    reply[2] = u32::from_le_bytes([m[4], m[5], 0, 0]);
                }
                VF_SET_MAC_ADDR if s.refuse_mac => reply[0] |= VT_MSGTYPE_NACK,
                VF_SET_MAC_ADDR => {
                    let a = msg[1].to_le_bytes();
                    let b = msg[2].to_le_bytes();
                    s.mac = [a[0], a[1], a[2], a[3], b[0], b[1]];
                    reply[0] |= VT_MSGTYPE_ACK;
                }
                _ => reply[0] |= VT_MSGTYPE_ACK,
            }
            s.vmbmem[..3].copy_from_slice(&reply);
            s.bits |= V2PMAILBOX_PFSTS;
        }
    }

    impl RegisterAccess for FakePf {
        fn read32(&self, offset: u32) -> u32 {
            let mut s = self.0.borrow_mut();
            match offset {
                V2PMAILBOX => {
                    let v = s.bits | if s.vfu { V2PMAILBOX_VFU } else { 0 };
                    s.bits &= !V2PMAILBOX_R2C_BITS;
                    v
                }
                VTSTATUS => s.status,
                o if (VMBMEM..VMBMEM + 64).contains(&o) => s.vmbmem[((o - VMBMEM) / 4) as usize],
                _ => 0,
            }
        }

        fn write32(&self, offset: u32, value: u32) {
            let mut s = self.0.borrow_mut();
            match offset {
                V2PMAILBOX => {
                    if value & V2PMAILBOX_VFU != 0 && s.bits & V2PMAILBOX_PFU == 0 {
                        s.vfu = true;
                    }
                    if value & V2PMAILBOX_REQ != 0 {
                        s.vfu = false;
                        let msg = s.vmbmem.to_vec();
                        s.received.push(msg.clone());
                        if !s.silent {
                            s.bits |= V2PMAILBOX_PFACK;
                            Self::answer(&mut s, &msg);
                        }
                    }
                    if value & V2PMAILBOX_ACK != 0 {
                        s.vfu = false;
                    }
                }
                VTCTRL if value & VTCTRL_RST != 0 => s.bits |= V2PMAILBOX_RSTD,
                o if (VMBMEM..VMBMEM + 64).contains(&o) => {
                    s.vmbmem[((o - VMBMEM) / 4) as usize] = value;
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake_pf::FakePf;
    use super::*;

    fn quick() -> Mailbox {
        Mailbox::new(5, Duration::ZERO)
    }

    #[test]
    fn request_gets_the_pf_reply() {
        let pf = FakePf::new([2, 0, 0, 0, 0, 1]);
        let mut reply = [0u32; 3];
        quick().request(&pf, &[VF_RESET], &mut reply).unwrap();
        assert_eq!(reply[0], VF_RESET | VT_MSGTYPE_ACK);
        assert_eq!(pf.0.borrow().received.len(), 1);
    }

    #[test]
    fn nacked_request_is_an_error() {
        let pf = FakePf::new([2, 0, 0, 0, 0, 1]);
        pf.0.borrow_mut().refuse_mac = true;
        let mut reply = [0u32; 3];
        let err = quick().request(&pf, &[VF_SET_MAC_ADDR, 0, 0], &mut reply);
        assert_eq!(
            err,
            Err(Error::Nack {
                request: VF_SET_MAC_ADDR
            })
        );
    }

    #[test]
    fn silent_pf_times_out() {
        let pf = FakePf::new([2, 0, 0, 0, 0, 1]);
        pf.0.borrow_mut().silent = true;
        let mut reply = [0u32; 1];
        assert!(matches!(
            quick().request(&pf, &[VF_SET_LPE, 1518], &mut reply),
            Err(Error::Timeout { .. })
        ));
    }

    #[test]
    fn read_to_clear_bits_survive_in_the_shadow() {
        let pf = FakePf::new([2, 0, 0, 0, 0, 1]);
        pf.0.borrow_mut().bits = V2PMAILBOX_PFSTS | V2PMAILBOX_RSTD;
        let mut mbx = quick();
        // A read for one purpose must not lose the other event.
        assert!(mbx.check_for_msg(&pf));
        assert!(
            mbx.check_for_reset(&pf),
            "RSTD was read together with PFSTS"
        );
        assert!(!mbx.check_for_reset(&pf));
    }

    #[test]
    fn messages_longer_than_the_mailbox_are_refused() {
        let pf = FakePf::new([2, 0, 0, 0, 0, 1]);
        assert_eq!(quick().write(&pf, &[0; 17]), Err(Error::TooLong));
    }
}
