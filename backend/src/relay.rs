//! A relay on the vhost-user control channel, between the front-end's connection and the
//! `vhost` crate's request handler, that reorders one message the crate would die on.
//!
//! QEMU's virtio-net sends `SET_VRING_ENABLE` when the device resets (`peer_attach`), which is
//! before `SET_FEATURES`, and does not send it again when the device starts (QEMU 10 was seen
//! doing so in the lab). vhost 0.18 refuses the message until PROTOCOL_FEATURES is acked and
//! drops the connection, and QEMU falls back to userspace virtio. So the relay acknowledges an
//! early `SET_VRING_ENABLE` itself (when asked to), keeps the last one per ring, and delivers
//! those right after the `SET_FEATURES` that acks PROTOCOL_FEATURES, as QEMU meant them.
//! Everything else, file descriptors included, passes through unchanged, one whole message at a
//! time; the relay keeps a duplicate of the back-end channel `SET_BACKEND_REQ_FD` carries, for
//! config-change notifications ([`ConfigNotifier`]). Control path only: the data path never
//! touches this socket.

use std::collections::BTreeMap;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread;

use tracing::{debug, trace};
use vhost::vhost_user::message::{
    FrontendReq, MAX_ATTACHED_FD_ENTRIES, MAX_MSG_SIZE, VhostUserHeaderFlag,
    VhostUserVirtioFeatures,
};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::config_notify::ConfigNotifier;

/// vhost-user message header: request, flags, payload size (u32 each, little-endian).
const HEADER_LEN: usize = 12;

/// One message read off a socket.
struct Message {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Message {
    fn request(&self) -> u32 {
        u32_at(&self.bytes, 0)
    }

    fn flags(&self) -> u32 {
        u32_at(&self.bytes, 4)
    }

    fn payload(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..]
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Starts relaying between `frontend` and `backend` on two threads. When either side closes,
/// both are shut down, which ends the vhost-user connection as if the front-end had gone.
pub fn spawn(
    frontend: UnixStream,
    backend: UnixStream,
    notifier: Arc<ConfigNotifier>,
) -> io::Result<()> {
    let to_frontend = Arc::new(Mutex::new(frontend.try_clone()?));
    let backend_rx = backend.try_clone()?;
    let frontend_tx = Arc::clone(&to_frontend);
    thread::Builder::new()
        .name("relay-requests".to_string())
        .spawn(move || {
            if let Err(e) = forward_requests(&frontend, &backend, &to_frontend, &notifier) {
                debug!("front-end side of the relay ended: {e}");
            }
            let _ = frontend.shutdown(Shutdown::Both);
            let _ = backend.shutdown(Shutdown::Both);
        })?;
    thread::Builder::new()
        .name("relay-replies".to_string())
        .spawn(move || {
            let result = (|| -> io::Result<()> {
                while let Some(msg) = read_message(&backend_rx)? {
                    let frontend = frontend_tx.lock().unwrap_or_else(|e| e.into_inner());
                    write_message(&frontend, &msg)?;
                }
                Ok(())
            })();
            if let Err(e) = result {
                debug!("back-end side of the relay ended: {e}");
            }
            let _ = backend_rx.shutdown(Shutdown::Both);
            let frontend = frontend_tx.lock().unwrap_or_else(|e| e.into_inner());
            let _ = frontend.shutdown(Shutdown::Both);
        })?;
    Ok(())
}

fn forward_requests(
    frontend: &UnixStream,
    backend: &UnixStream,
    to_frontend: &Mutex<UnixStream>,
    notifier: &ConfigNotifier,
) -> io::Result<()> {
    let mut protocol_features_acked = false;
    // Early SET_VRING_ENABLE messages by ring index, the last one for each ring.
    let mut deferred: BTreeMap<u32, Message> = BTreeMap::new();
    while let Some(mut msg) = read_message(frontend)? {
        let request = msg.request();
        trace!(
            request,
            flags = msg.flags(),
            size = msg.payload().len(),
            "front-end request"
        );
        if request == FrontendReq::SET_FEATURES as u32 && msg.payload().len() >= 8 {
            let features = u64::from_le_bytes(msg.payload()[..8].try_into().expect("8 bytes"));
            protocol_features_acked =
                features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        }
        if request == FrontendReq::SET_BACKEND_REQ_FD as u32
            && let [channel] = msg.fds.as_slice()
        {
            notifier.set_channel(UnixStream::from(channel.try_clone()?));
        }
        if request == FrontendReq::SET_VRING_ENABLE as u32
            && !protocol_features_acked
            && msg.payload().len() >= 8
        {
            debug!("deferring SET_VRING_ENABLE sent before SET_FEATURES");
            let need_reply = VhostUserHeaderFlag::NEED_REPLY.bits();
            if msg.flags() & need_reply != 0 {
                let frontend = to_frontend.lock().unwrap_or_else(|e| e.into_inner());
                write_message(&frontend, &ack(request))?;
                // Answered here: the handler must not answer it again.
                let flags = msg.flags() & !need_reply;
                msg.bytes[4..8].copy_from_slice(&flags.to_le_bytes());
            }
            deferred.insert(u32_at(msg.payload(), 0), msg);
            continue;
        }
        write_message(backend, &msg)?;
        if protocol_features_acked {
            for (_, enable) in std::mem::take(&mut deferred) {
                write_message(backend, &enable)?;
            }
        }
    }
    Ok(())
}

/// A REPLY_ACK success reply to `request` (vhost-user spec, "REPLY_ACK").
fn ack(request: u32) -> Message {
    let flags = 0x1 | VhostUserHeaderFlag::REPLY.bits();
    let mut bytes = Vec::with_capacity(HEADER_LEN + 8);
    bytes.extend_from_slice(&request.to_le_bytes());
    bytes.extend_from_slice(&flags.to_le_bytes());
    bytes.extend_from_slice(&8u32.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    Message {
        bytes,
        fds: Vec::new(),
    }
}

/// Reads one whole message; `None` at a clean end of stream (between messages).
fn read_message(sock: &UnixStream) -> io::Result<Option<Message>> {
    let mut msg = Message {
        bytes: vec![0u8; HEADER_LEN],
        fds: Vec::new(),
    };
    if !recv_exact(sock, &mut msg.bytes, &mut msg.fds)? {
        return Ok(None);
    }
    let size = u32_at(&msg.bytes, 8) as usize;
    if size > MAX_MSG_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("vhost-user message of {size} bytes exceeds {MAX_MSG_SIZE}"),
        ));
    }
    msg.bytes.resize(HEADER_LEN + size, 0);
    if size > 0 && !recv_exact(sock, &mut msg.bytes[HEADER_LEN..], &mut msg.fds)? {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some(msg))
}

/// Fills `buf`, collecting any file descriptors that arrive with it. Returns `false` if the
/// stream ended before the first byte.
fn recv_exact(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        let rest = &mut buf[got..];
        let mut iov = [libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: rest.len(),
        }];
        let mut raw: [RawFd; MAX_ATTACHED_FD_ENTRIES] = [-1; MAX_ATTACHED_FD_ENTRIES];
        // SAFETY: the iovec describes `rest`, a live, exclusively borrowed byte buffer, into
        // which any bytes may be written.
        let (n, nfds) = unsafe { sock.recv_with_fds(&mut iov, &mut raw) }
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        for &fd in &raw[..nfds] {
            // SAFETY: recvmsg just installed these descriptors in our table; nothing else owns
            // them.
            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    Ok(true)
}

fn write_message(sock: &UnixStream, msg: &Message) -> io::Result<()> {
    let raw: Vec<RawFd> = msg.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let mut sent = 0;
    while sent < msg.bytes.len() {
        // Descriptors travel with the first byte only.
        let fds: &[RawFd] = if sent == 0 { &raw } else { &[] };
        let n = sock
            .send_with_fds(&[&msg.bytes[sent..]], fds)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        sent += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::Read;

    use super::*;

    fn message(request: FrontendReq, flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(request as u32).to_le_bytes());
        b.extend_from_slice(&(0x1 | flags).to_le_bytes());
        b.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
        b.extend_from_slice(payload);
        b
    }

    fn relay() -> (UnixStream, UnixStream) {
        let (frontend, relay_front) = UnixStream::pair().unwrap();
        let (relay_back, backend) = UnixStream::pair().unwrap();
        spawn(relay_front, relay_back, Arc::default()).unwrap();
        (frontend, backend)
    }

    #[test]
    fn early_vring_enable_is_acked_and_delivered_after_set_features() {
        let (frontend, backend) = relay();
        let enable = message(
            FrontendReq::SET_VRING_ENABLE,
            VhostUserHeaderFlag::NEED_REPLY.bits(),
            &[0, 0, 0, 0, 1, 0, 0, 0],
        );
        let features = message(FrontendReq::SET_FEATURES, 0, &(1u64 << 30).to_le_bytes());
        let enable_later = message(FrontendReq::SET_VRING_ENABLE, 0, &[0, 0, 0, 0, 1, 0, 0, 0]);
        write_message(
            &frontend,
            &Message {
                bytes: enable,
                fds: vec![],
            },
        )
        .unwrap();
        let reply = read_message(&frontend).unwrap().unwrap();
        assert_eq!(reply.request(), FrontendReq::SET_VRING_ENABLE as u32);
        assert_ne!(reply.flags() & VhostUserHeaderFlag::REPLY.bits(), 0);
        assert_eq!(reply.payload(), &[0; 8]);
        write_message(
            &frontend,
            &Message {
                bytes: features.clone(),
                fds: vec![],
            },
        )
        .unwrap();
        write_message(
            &frontend,
            &Message {
                bytes: enable_later.clone(),
                fds: vec![],
            },
        )
        .unwrap();
        assert_eq!(read_message(&backend).unwrap().unwrap().bytes, features);
        assert_eq!(read_message(&backend).unwrap().unwrap().bytes, enable_later);
    }

    #[test]
    fn file_descriptors_cross_with_their_message() {
        let (frontend, backend) = relay();
        let file = File::open("/proc/self/stat").unwrap();
        let kick = message(FrontendReq::SET_VRING_KICK, 0, &0u64.to_le_bytes());
        frontend
            .send_with_fds(&[&kick[..]], &[file.as_raw_fd()])
            .unwrap();
        let got = read_message(&backend).unwrap().unwrap();
        assert_eq!(got.bytes, kick);
        assert_eq!(got.fds.len(), 1);
        let mut passed = File::from(got.fds.into_iter().next().unwrap());
        let mut text = String::new();
        passed.read_to_string(&mut text).unwrap();
        assert!(!text.is_empty());
    }

    #[test]
    fn closing_the_frontend_closes_the_backend_side() {
        let (frontend, backend) = relay();
        drop(frontend);
        assert!(read_message(&backend).unwrap().is_none());
    }
}
