//! A Linux TAP device as a [`Port`]: `/dev/net/tun` opened non-blocking with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, so each frame carries the 12-byte virtio-net header and
//! checksum/segmentation offloads pass between guest and kernel untouched.
//!
//! The kernel copies on every read and write, so each frame costs one syscall: TAP is the
//! portable port, not the fast one.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::net_hdr::VIRTIO_NET_HDR_V1_LEN;
use crate::port::{LinkState, MAX_TX_SEGMENTS, Offloads, Port, PortStats, RxBurst, TxBurst};

const TUN_DEVICE: &str = "/dev/net/tun";

/// Errors opening or configuring a TAP device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The interface name is empty, too long or not ASCII printable.
    #[error("invalid TAP interface name {0:?}: 1 to 15 printable ASCII characters")]
    InvalidName(String),
    /// `/dev/net/tun` could not be opened.
    #[error(
        "cannot open {TUN_DEVICE} (is the tun module loaded, and are we allowed CAP_NET_ADMIN?)"
    )]
    OpenTun(#[source] io::Error),
    /// `TUNSETIFF` failed: the name is taken by a non-TAP device, or we lack permission.
    #[error("cannot create or attach TAP {name} (TUNSETIFF)")]
    SetIff {
        /// Interface name.
        name: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A TAP configuration ioctl failed.
    #[error("cannot configure TAP {name}: {what}")]
    Configure {
        /// Interface name.
        name: String,
        /// Which setting.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// A TAP interface opened with a virtio-net header on every frame.
pub struct TapPort {
    tun: File,
    name: String,
    /// An `AF_INET` datagram socket: the handle for interface ioctls (flags, MTU).
    ctl: OwnedFd,
    stats: PortStats,
    /// Frames written since the last `tx_completed`: the kernel copied them on write.
    unreported_tx: usize,
}

impl TapPort {
    /// Creates the TAP `name` (or attaches to an existing persistent one), sets the MTU and
    /// brings the interface up. A TAP this call creates gets the address `mac_if_created`:
    /// given the same one each time, a restarted daemon's TAP keeps the address its peers have
    /// in their neighbour caches. An existing TAP keeps its own.
    pub fn open(name: &str, mtu: u16, mac_if_created: [u8; 6]) -> Result<Self, Error> {
        if name.is_empty()
            || name.len() >= libc::IFNAMSIZ
            || !name.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
        {
            return Err(Error::InvalidName(name.to_string()));
        }
        let existed = interface_exists(name);
        let tun = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(Error::OpenTun)?;

        let mut ifr = ifreq_for(name);
        ifr.ifr_ifru.ifru_flags = ifr_flags(libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
        // SAFETY: TUNSETIFF reads and writes one `ifreq`, which `ifr` is, on a tun fd we own.
        let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if rc < 0 {
            return Err(Error::SetIff {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: the kernel NUL-terminates the name it wrote back into `ifr_name`.
        let actual = unsafe { CStr::from_ptr(ifr.ifr_name.as_ptr()) }
            .to_string_lossy()
            .into_owned();

        // SAFETY: socket(2) with constant arguments; the result is checked below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(configure_error(&actual, "control socket"));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let ctl = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };

        let port = TapPort {
            tun,
            name: actual,
            ctl,
            stats: PortStats::default(),
            unreported_tx: 0,
        };
        port.tun_ioctl_int(
            libc::TUNSETVNETHDRSZ,
            libc::c_int::try_from(VIRTIO_NET_HDR_V1_LEN).expect("12 fits an int"),
            "vnet header size",
        )?;
        port.set_offload_flags(0)?;
        port.set_mtu(mtu)?;
        if !existed {
            port.set_mac(mac_if_created)?;
        }
        port.set_up()?;
        Ok(port)
    }

    /// Gives the interface the Ethernet address `mac` (before it is up).
    fn set_mac(&self, mac: [u8; 6]) -> Result<(), Error> {
        let mut ifr = ifreq_for(&self.name);
        // SAFETY: `ifru_hwaddr` is a plain `sockaddr`; the union is zeroed, and these are its
        // family and first six data bytes, as SIOCSIFHWADDR reads them.
        let hwaddr = unsafe { &mut ifr.ifr_ifru.ifru_hwaddr };
        hwaddr.sa_family = libc::ARPHRD_ETHER;
        for (dst, src) in hwaddr.sa_data.iter_mut().zip(mac) {
            *dst = src as libc::c_char;
        }
        self.ctl_ioctl(libc::SIOCSIFHWADDR, &mut ifr, "MAC address")
    }

    fn tun_ioctl_int(
        &self,
        request: libc::Ioctl,
        mut value: libc::c_int,
        what: &'static str,
    ) -> Result<(), Error> {
        // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which `value` is.
        let rc = unsafe { libc::ioctl(self.tun.as_raw_fd(), request, &mut value) };
        if rc < 0 {
            return Err(configure_error(&self.name, what));
        }
        Ok(())
    }

    fn set_offload_flags(&self, flags: libc::c_uint) -> Result<(), Error> {
        // SAFETY: TUNSETOFFLOAD takes its flags by value, not through a pointer.
        let rc = unsafe { libc::ioctl(self.tun.as_raw_fd(), libc::TUNSETOFFLOAD, flags) };
        if rc < 0 {
            return Err(configure_error(&self.name, "offloads (TUNSETOFFLOAD)"));
        }
        Ok(())
    }

    fn set_mtu(&self, mtu: u16) -> Result<(), Error> {
        let mut ifr = ifreq_for(&self.name);
        ifr.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
        self.ctl_ioctl(libc::SIOCSIFMTU, &mut ifr, "MTU")
    }

    fn interface_flags(&self) -> Result<libc::c_short, Error> {
        let mut ifr = ifreq_for(&self.name);
        self.ctl_ioctl(libc::SIOCGIFFLAGS, &mut ifr, "read flags")?;
        // SAFETY: SIOCGIFFLAGS filled the `ifru_flags` member of the union.
        Ok(unsafe { ifr.ifr_ifru.ifru_flags })
    }

    fn set_up(&self) -> Result<(), Error> {
        let mut ifr = ifreq_for(&self.name);
        ifr.ifr_ifru.ifru_flags = self.interface_flags()? | ifr_flags(libc::IFF_UP);
        self.ctl_ioctl(libc::SIOCSIFFLAGS, &mut ifr, "bring up")
    }

    fn ctl_ioctl(
        &self,
        request: libc::c_ulong,
        ifr: &mut libc::ifreq,
        what: &'static str,
    ) -> Result<(), Error> {
        // SAFETY: the SIOC[GS]IF* requests read/write one `ifreq`, which `ifr` points to.
        let rc = unsafe { libc::ioctl(self.ctl.as_raw_fd(), request as libc::Ioctl, ifr) };
        if rc < 0 {
            return Err(configure_error(&self.name, what));
        }
        Ok(())
    }
}

fn configure_error(name: &str, what: &'static str) -> Error {
    Error::Configure {
        name: name.to_string(),
        what,
        source: io::Error::last_os_error(),
    }
}

/// `IFF_*` values as the 16-bit `ifr_flags` field holds them.
fn ifr_flags(flags: libc::c_int) -> libc::c_short {
    libc::c_short::try_from(flags).expect("the IFF_* flags used here fit in 16 bits")
}

/// Whether an interface called `name` exists in this network namespace.
fn interface_exists(name: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: `name` is a NUL-terminated string that lives across the call.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

fn ifreq_for(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is plain old data (bytes and integers); all-zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr
}

impl Port for TapPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn offloads(&self) -> Offloads {
        // The kernel completes partial checksums and segments GSO frames written to a TAP.
        Offloads {
            csum: true,
            tso4: true,
            tso6: true,
            tso_ecn: true,
        }
    }

    fn set_rx_offloads(&mut self, accepted: Offloads) -> io::Result<()> {
        let mut flags = 0;
        if accepted.csum {
            flags |= libc::TUN_F_CSUM;
            // The kernel only hands over GSO frames to a reader that also takes partial csums.
            if accepted.tso4 {
                flags |= libc::TUN_F_TSO4;
            }
            if accepted.tso6 {
                flags |= libc::TUN_F_TSO6;
            }
            if accepted.tso_ecn {
                flags |= libc::TUN_F_TSO_ECN;
            }
        }
        self.set_offload_flags(flags).map_err(io::Error::other)
    }

    fn rx_burst(&mut self, burst: &mut RxBurst) -> usize {
        let mut received = 0;
        while let Some((hdr, buf)) = burst.free_slot() {
            let iov = [
                libc::iovec {
                    iov_base: hdr.as_mut_ptr().cast(),
                    iov_len: hdr.len(),
                },
                libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                },
            ];
            // SAFETY: both iovecs describe live, exclusively borrowed buffers of the given
            // lengths; the kernel writes at most that much.
            let n = unsafe { libc::readv(self.tun.as_raw_fd(), iov.as_ptr(), 2) };
            let Ok(n) = usize::try_from(n) else {
                // EAGAIN: drained. Any other error ends this burst; epoll reports it again.
                break;
            };
            if n < VIRTIO_NET_HDR_V1_LEN {
                self.stats.rx_errors += 1;
                continue;
            }
            let len = n - VIRTIO_NET_HDR_V1_LEN;
            burst.commit_slot(len);
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += len as u64;
            received += 1;
        }
        received
    }

    fn tx_burst(&mut self, burst: &TxBurst) -> usize {
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_TX_SEGMENTS + 1];
        for i in 0..burst.len() {
            let (hdr, segments, len) = burst.frame(i);
            let hdr_bytes = hdr.to_bytes();
            iov[0] = libc::iovec {
                iov_base: hdr_bytes.as_ptr().cast_mut().cast(),
                iov_len: hdr_bytes.len(),
            };
            for (slot, seg) in iov[1..].iter_mut().zip(segments) {
                *slot = libc::iovec {
                    iov_base: seg.addr as *mut libc::c_void,
                    iov_len: seg.len as usize,
                };
            }
            let count = libc::c_int::try_from(segments.len() + 1)
                .expect("at most MAX_TX_SEGMENTS + 1 iovecs");
            // SAFETY: `iov[..count]` is initialised. writev only reads the buffers: a segment
            // address that is not mapped makes the kernel fail with EFAULT, it cannot corrupt
            // our memory. The caller validated segments against guest memory before this.
            let n = unsafe { libc::writev(self.tun.as_raw_fd(), iov.as_ptr(), count) };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock {
                    self.unreported_tx += i;
                    return i;
                }
                self.stats.tx_errors += 1;
                continue;
            }
            self.stats.tx_packets += 1;
            self.stats.tx_bytes += len as u64;
        }
        self.unreported_tx += burst.len();
        burst.len()
    }

    fn tx_completed(&mut self) -> usize {
        std::mem::take(&mut self.unreported_tx)
    }

    fn link_state(&self) -> LinkState {
        let running = ifr_flags(libc::IFF_UP | libc::IFF_RUNNING);
        match self.interface_flags() {
            Ok(flags) if flags & running == running => LinkState::Up,
            _ => LinkState::Down,
        }
    }

    fn stats(&self) -> PortStats {
        self.stats
    }

    fn rx_ready_fd(&self) -> Option<RawFd> {
        Some(self.tun.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_names_are_refused_before_any_syscall() {
        for bad in ["", "sixteen-chars-xx", "a/b", "sp ace"] {
            assert!(
                matches!(
                    TapPort::open(bad, 1500, [2, 0, 0, 0, 0, 1]),
                    Err(Error::InvalidName(_))
                ),
                "{bad}"
            );
        }
    }
}
