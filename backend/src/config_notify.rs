//! Config-change notifications to the front-end (vhost-user `CONFIG_CHANGE_MSG` on the back-end
//! channel): the VF's link or MAC changed, so the guest should read the config space again.
//!
//! vhost 0.18 hands the back-end channel to the device as a `Backend` that cannot send this
//! message, so the relay keeps a duplicate of the channel's socket when `SET_BACKEND_REQ_FD`
//! passes, and this module writes the one message the device needs on it. The crate's
//! `Backend` is never used to send, so this is the socket's only writer.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use vhost::vhost_user::message::BackendReq;

/// vhost-user header flags: protocol version 1, no reply wanted.
const VERSION_1: u32 = 0x1;

/// The back-end channel of the current connection, if the front-end gave one.
#[derive(Debug, Default)]
pub struct ConfigNotifier {
    channel: Mutex<Option<UnixStream>>,
}

impl ConfigNotifier {
    /// Uses `channel` (the connection's back-end channel) from now on.
    pub fn set_channel(&self, channel: UnixStream) {
        *self.lock() = Some(channel);
    }

    /// Forgets the channel (the connection ended).
    pub fn clear(&self) {
        *self.lock() = None;
    }

    /// Tells the front-end the config space changed. Returns `false` when there is no channel
    /// (the front-end did not negotiate BACKEND_REQ), which is not an error: it reads the
    /// config space when it wants to.
    pub fn notify(&self) -> io::Result<bool> {
        let mut guard = self.lock();
        let Some(channel) = guard.as_mut() else {
            return Ok(false);
        };
        let request: u32 = BackendReq::CONFIG_CHANGE_MSG.into();
        let mut header = [0u8; 12];
        header[0..4].copy_from_slice(&request.to_le_bytes());
        header[4..8].copy_from_slice(&VERSION_1.to_le_bytes());
        // Payload size 0: the message carries nothing.
        channel.write_all(&header)?;
        Ok(true)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<UnixStream>> {
        self.channel.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn notification_is_a_bare_config_change_header() {
        let notifier = ConfigNotifier::default();
        assert!(!notifier.notify().unwrap(), "no channel yet");
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        notifier.set_channel(ours);
        assert!(notifier.notify().unwrap());
        let mut header = [0u8; 12];
        theirs.read_exact(&mut header).unwrap();
        assert_eq!(
            header,
            [2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
            "CONFIG_CHANGE_MSG, version 1, no payload"
        );
        notifier.clear();
        assert!(!notifier.notify().unwrap());
    }
}
