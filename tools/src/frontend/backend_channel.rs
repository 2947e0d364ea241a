//! The back-end channel of the session (vhost-user "Back-end communication",
//! VHOST_USER_PROTOCOL_F_BACKEND_REQ): a socket pair whose one end goes to the back-end with
//! SET_BACKEND_REQ_FD and whose other end the driver reads for the back-end's requests. Of
//! those, this driver acts on `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG` (read the config space
//! again); any other is answered as unsupported.
//!
//! Invariant: the channel is read one whole message at a time (the 12-byte header, then exactly
//! `size` payload bytes), so it never falls out of step; and a request that sets NEED_REPLY is
//! answered before it is reported, so a back-end blocked on the answer is free again by the
//! time the caller talks to it on the main socket (GET_CONFIG).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vhost::vhost_user::message::{BackendReq, MAX_MSG_SIZE, VhostUserHeaderFlag};
use vhost::vhost_user::{Frontend, VhostUserFrontend};

use super::Error;

/// The protocol version, in bits 0-1 of every message's flags (vhost-user "Header").
const VERSION_1: u32 = 0x1;

/// Bytes of the u64 payload of a REPLY_ACK answer.
const REPLY_LEN: usize = size_of::<u64>();

/// Payload of an answer that reports success (vhost-user "REPLY_ACK": zero on success).
const REPLY_SUCCESS: u64 = 0;

/// Payload of an answer that reports failure (any non-zero value; QEMU sends 1).
const REPLY_FAILURE: u64 = 1;

/// Shortest wait a socket timeout takes: `set_read_timeout` refuses zero.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// A vhost-user message header. The vhost crate lays it out in host byte order
/// (`VhostUserMsgHeader`: "All numbers are in the machine native byte order"); the two sides
/// of a vhost-user socket share a host, so so does this driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsgHeader {
    /// The request code (`BackendReq` on this channel).
    pub request: u32,
    /// Version in bits 0-1, then `VhostUserHeaderFlag` bits (REPLY, NEED_REPLY).
    pub flags: u32,
    /// Payload bytes after the header.
    pub size: u32,
}

impl MsgHeader {
    /// Bytes of a header on the wire: request, flags, payload size, a u32 each.
    pub const LEN: usize = 12;

    /// Decodes a header from its wire bytes.
    pub fn from_bytes(b: [u8; Self::LEN]) -> Self {
        let word = |at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        MsgHeader {
            request: word(0),
            flags: word(4),
            size: word(8),
        }
    }

    /// The header's wire bytes.
    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&self.request.to_ne_bytes());
        b[4..8].copy_from_slice(&self.flags.to_ne_bytes());
        b[8..12].copy_from_slice(&self.size.to_ne_bytes());
        b
    }

    /// The protocol version in the flags.
    pub fn version(self) -> u32 {
        self.flags & VhostUserHeaderFlag::VERSION.bits()
    }

    /// Whether the sender waits for an answer (NEED_REPLY).
    pub fn need_reply(self) -> bool {
        self.flags & VhostUserHeaderFlag::NEED_REPLY.bits() != 0
    }

    /// Whether the message is itself an answer (REPLY).
    pub fn is_reply(self) -> bool {
        self.flags & VhostUserHeaderFlag::REPLY.bits() != 0
    }
}

/// A request the back-end sent on the channel, already answered if it asked for an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendEvent {
    /// `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG`: the device config space changed, read it again
    /// (GET_CONFIG). Answered with success when it set NEED_REPLY.
    ConfigChange,
    /// A request this driver does not serve; its payload was skipped, and it was answered with
    /// failure when it set NEED_REPLY.
    Unsupported {
        /// The request code.
        request: u32,
        /// Its payload bytes.
        size: u32,
    },
}

/// The driver's end of the back-end channel. Dropping it closes the channel.
#[derive(Debug)]
pub struct BackendChannel {
    stream: UnixStream,
    /// How long the rest of a message, or an answer, may take once a message has begun.
    timeout: Duration,
    /// Inode of the socket end given to the back-end, when this driver gave it.
    given_inode: Option<u64>,
}

impl BackendChannel {
    /// Reads the back-end's requests from `stream` (the end the back-end does not hold), with
    /// `timeout` for the rest of a message once its first bytes came and for each answer.
    pub fn new(stream: UnixStream, timeout: Duration) -> Result<Self, Error> {
        let timeout = timeout.max(MIN_TIMEOUT);
        stream
            .set_write_timeout(Some(timeout))
            .map_err(Error::BackendChannel)?;
        Ok(BackendChannel {
            stream,
            timeout,
            given_inode: None,
        })
    }

    /// Creates the channel and hands one end to the back-end with SET_BACKEND_REQ_FD (the
    /// session must have negotiated BACKEND_REQ). Only the back-end keeps that end, so when it
    /// lets go of it, reads here see the end of the stream.
    pub(super) fn open(vu: &mut Frontend, timeout: Duration) -> Result<Self, Error> {
        let (ours, theirs) = UnixStream::pair().map_err(Error::BackendChannel)?;
        let theirs = File::from(OwnedFd::from(theirs));
        let inode = theirs.metadata().map_err(Error::BackendChannel)?.ino();
        vu.set_backend_request_fd(&theirs)
            .map_err(|source| Error::Request {
                request: "SET_BACKEND_REQ_FD",
                source,
            })?;
        drop(theirs);
        let mut channel = BackendChannel::new(ours, timeout)?;
        channel.given_inode = Some(inode);
        Ok(channel)
    }

    /// The inode of the socket end given to the back-end (as `/proc/PID/fd` shows it,
    /// `socket:[INODE]`), when this driver created the channel.
    pub fn given_inode(&self) -> Option<u64> {
        self.given_inode
    }

    /// Waits up to `wait` for the next request, reads all of it, answers it if it set
    /// NEED_REPLY, and returns it; `None` if none began within `wait`. A malformed message is a
    /// [`Error::BadBackendMessage`]; the back-end closing its end is
    /// [`Error::BackendChannelClosed`].
    pub fn next_event(&mut self, wait: Duration) -> Result<Option<BackendEvent>, Error> {
        let mut bytes = [0u8; MsgHeader::LEN];
        let Some(got) = self.read_start(&mut bytes, wait)? else {
            return Ok(None);
        };
        self.read_rest(&mut bytes[got..])?;
        let header = MsgHeader::from_bytes(bytes);
        let bad = |why| Error::BadBackendMessage {
            request: header.request,
            flags: header.flags,
            size: header.size,
            why,
        };
        if header.version() != VERSION_1 {
            return Err(bad("has a protocol version other than 1"));
        }
        if header.is_reply() {
            return Err(bad("is marked as a reply, but the front-end asked nothing"));
        }
        let size = usize::try_from(header.size).unwrap_or(usize::MAX);
        if size > MAX_MSG_SIZE {
            return Err(bad(
                "has a payload larger than a vhost-user message may carry",
            ));
        }
        // Skipped, never interpreted: only its length matters, to stay in step.
        let mut payload = vec![0u8; size];
        self.read_rest(&mut payload)?;

        let (event, status) = match BackendReq::try_from(header.request) {
            Ok(BackendReq::CONFIG_CHANGE_MSG) if size != 0 => {
                return Err(bad("is a CONFIG_CHANGE_MSG with a payload, which has none"));
            }
            Ok(BackendReq::CONFIG_CHANGE_MSG) => (BackendEvent::ConfigChange, REPLY_SUCCESS),
            _ => (
                BackendEvent::Unsupported {
                    request: header.request,
                    size: header.size,
                },
                REPLY_FAILURE,
            ),
        };
        if header.need_reply() {
            self.answer(header.request, status)?;
        }
        Ok(Some(event))
    }

    /// Reads the first bytes of a message into `buf`, waiting up to `wait`; returns how many
    /// came, or `None` if none did.
    fn read_start(&mut self, buf: &mut [u8], wait: Duration) -> Result<Option<usize>, Error> {
        if wait.is_zero() {
            return Ok(None);
        }
        self.stream
            .set_read_timeout(Some(wait.max(MIN_TIMEOUT)))
            .map_err(Error::BackendChannel)?;
        match self.stream.read(buf) {
            Ok(0) => Err(Error::BackendChannelClosed),
            Ok(n) => Ok(Some(n)),
            // A timeout or a signal consumed nothing: the caller looks again if time is left.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(Error::BackendChannel(e)),
        }
    }

    /// Fills `buf` with the rest of a message that has begun.
    fn read_rest(&mut self, buf: &mut [u8]) -> Result<(), Error> {
        if buf.is_empty() {
            return Ok(());
        }
        self.stream
            .set_read_timeout(Some(self.timeout))
            .map_err(Error::BackendChannel)?;
        self.stream.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => Error::BackendChannelClosed,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout {
                what: "the rest of a back-end channel message",
                timeout: self.timeout,
            },
            _ => Error::BackendChannel(e),
        })
    }

    /// Answers `request` with the u64 `status` (vhost-user "REPLY_ACK": the request code, flags
    /// version 1 and REPLY, an 8-byte payload).
    fn answer(&mut self, request: u32, status: u64) -> Result<(), Error> {
        let header = MsgHeader {
            request,
            flags: VERSION_1 | VhostUserHeaderFlag::REPLY.bits(),
            size: u32::try_from(REPLY_LEN).expect("8 fits"),
        };
        let mut msg = [0u8; MsgHeader::LEN + REPLY_LEN];
        msg[..MsgHeader::LEN].copy_from_slice(&header.to_bytes());
        msg[MsgHeader::LEN..].copy_from_slice(&status.to_ne_bytes());
        self.stream.write_all(&msg).map_err(Error::BackendChannel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG_CHANGE: u32 = 2;
    const NEED_REPLY: u32 = 0x8;
    const WAIT: Duration = Duration::from_secs(5);

    /// The driver's channel and the back-end's end.
    fn pair() -> (BackendChannel, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        theirs.set_read_timeout(Some(WAIT)).unwrap();
        (BackendChannel::new(ours, WAIT).unwrap(), theirs)
    }

    fn header(request: u32, flags: u32, size: u32) -> [u8; MsgHeader::LEN] {
        MsgHeader {
            request,
            flags,
            size,
        }
        .to_bytes()
    }

    /// Reads one answer off the back-end's end: its header and u64 payload.
    fn read_answer(theirs: &mut UnixStream) -> (MsgHeader, u64) {
        let mut b = [0u8; MsgHeader::LEN + 8];
        theirs.read_exact(&mut b).unwrap();
        let h = MsgHeader::from_bytes(b[..MsgHeader::LEN].try_into().unwrap());
        (
            h,
            u64::from_ne_bytes(b[MsgHeader::LEN..].try_into().unwrap()),
        )
    }

    /// Whether anything is waiting on the back-end's end.
    fn nothing_pending(theirs: &UnixStream) -> bool {
        theirs.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let r = (&*theirs).read(&mut b);
        theirs.set_nonblocking(false).unwrap();
        matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    #[test]
    fn header_round_trips_and_decodes_the_flags() {
        let h = MsgHeader {
            request: CONFIG_CHANGE,
            flags: 0x1 | NEED_REPLY,
            size: 0,
        };
        assert_eq!(MsgHeader::from_bytes(h.to_bytes()), h);
        assert_eq!(h.version(), 1);
        assert!(h.need_reply());
        assert!(!h.is_reply());
        let answer = MsgHeader { flags: 0x5, ..h };
        assert!(answer.is_reply());
        assert!(!answer.need_reply());
    }

    #[test]
    fn daemon_notification_bytes_decode_as_a_bare_config_change() {
        // What the daemon's notifier writes (little-endian words, as every host we run on is).
        let daemon = [2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            MsgHeader::from_bytes(daemon),
            MsgHeader {
                request: CONFIG_CHANGE,
                flags: 1,
                size: 0
            }
        );
    }

    #[test]
    fn bare_config_change_is_reported_and_not_answered() {
        let (mut channel, mut theirs) = pair();
        theirs.write_all(&header(CONFIG_CHANGE, 0x1, 0)).unwrap();
        assert_eq!(
            channel.next_event(WAIT).unwrap(),
            Some(BackendEvent::ConfigChange)
        );
        assert!(nothing_pending(&theirs), "no answer without NEED_REPLY");
    }

    #[test]
    fn config_change_with_need_reply_is_answered_with_success() {
        let (mut channel, mut theirs) = pair();
        theirs
            .write_all(&header(CONFIG_CHANGE, 0x1 | NEED_REPLY, 0))
            .unwrap();
        assert_eq!(
            channel.next_event(WAIT).unwrap(),
            Some(BackendEvent::ConfigChange)
        );
        let (h, status) = read_answer(&mut theirs);
        assert_eq!(
            h,
            MsgHeader {
                request: CONFIG_CHANGE,
                flags: 0x1 | 0x4,
                size: 8
            }
        );
        assert_eq!(status, 0);
    }

    #[test]
    fn header_split_across_writes_is_reassembled() {
        let (mut channel, mut theirs) = pair();
        let h = header(CONFIG_CHANGE, 0x1, 0);
        theirs.write_all(&h[..5]).unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            theirs.write_all(&h[5..]).unwrap();
            theirs
        });
        assert_eq!(
            channel.next_event(WAIT).unwrap(),
            Some(BackendEvent::ConfigChange)
        );
        writer.join().unwrap();
    }

    #[test]
    fn unsupported_request_is_skipped_answered_with_failure_and_the_next_one_read() {
        let (mut channel, mut theirs) = pair();
        let mut msg = header(CONFIG_CHANGE + 40, 0x1 | NEED_REPLY, 3).to_vec();
        msg.extend_from_slice(&[2, 0, 0]);
        msg.extend_from_slice(&header(CONFIG_CHANGE, 0x1, 0));
        theirs.write_all(&msg).unwrap();
        assert_eq!(
            channel.next_event(WAIT).unwrap(),
            Some(BackendEvent::Unsupported {
                request: CONFIG_CHANGE + 40,
                size: 3
            })
        );
        let (h, status) = read_answer(&mut theirs);
        assert_eq!((h.request, h.flags, h.size), (CONFIG_CHANGE + 40, 0x5, 8));
        assert_ne!(status, 0);
        assert_eq!(
            channel.next_event(WAIT).unwrap(),
            Some(BackendEvent::ConfigChange),
            "the payload was skipped whole"
        );
    }

    #[test]
    fn nothing_within_the_wait_is_none() {
        let (mut channel, _theirs) = pair();
        assert_eq!(channel.next_event(Duration::from_millis(20)).unwrap(), None);
        assert_eq!(channel.next_event(Duration::ZERO).unwrap(), None);
    }

    #[test]
    fn closed_channel_is_an_error() {
        let (mut channel, theirs) = pair();
        drop(theirs);
        assert!(matches!(
            channel.next_event(WAIT),
            Err(Error::BackendChannelClosed)
        ));
    }

    #[test]
    fn message_cut_short_is_a_closed_channel() {
        let (mut channel, mut theirs) = pair();
        theirs
            .write_all(&header(CONFIG_CHANGE, 0x1, 0)[..6])
            .unwrap();
        drop(theirs);
        assert!(matches!(
            channel.next_event(WAIT),
            Err(Error::BackendChannelClosed)
        ));
    }

    #[test]
    fn malformed_messages_are_device_errors() {
        for (h, why) in [
            (header(CONFIG_CHANGE, 0x2, 0), "version"),
            (header(CONFIG_CHANGE, 0x1 | 0x4, 0), "reply"),
            (header(CONFIG_CHANGE, 0x1, 4), "payload"),
            (header(CONFIG_CHANGE + 40, 0x1, 0x10000), "larger"),
        ] {
            let (mut channel, mut theirs) = pair();
            theirs.write_all(&h).unwrap();
            // The payload a CONFIG_CHANGE_MSG must not have.
            theirs.write_all(&[0; 4]).unwrap();
            match channel.next_event(WAIT) {
                Err(e @ Error::BadBackendMessage { .. }) => {
                    assert!(e.to_string().contains(why), "{e}");
                }
                other => panic!("{why}: {other:?}"),
            }
        }
    }
}
