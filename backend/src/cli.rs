//! Command line, following the vhost-user back-end conventions (QEMU docs/interop/vhost-user.rst,
//! "Back-end program conventions"): `--socket-path`, `--print-capabilities`, and a JSON answer
//! for the latter.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::Parser;

/// vhost-user virtio-net back-end: serves a VM's virtqueues over a unix socket and forwards its
/// packets into a port: an SR-IOV VF (--vf) or a TAP device (the default).
#[derive(Debug, Parser)]
#[command(name = "vhost-vf", version)]
pub struct Cli {
    /// The vhost-user socket: listened on, or connected to with --client.
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "print_capabilities"
    )]
    pub socket_path: Option<PathBuf>,

    /// Connect to a front-end that listens (QEMU `server=on`) instead of listening, and
    /// reconnect with back-off when it goes away.
    #[arg(long)]
    pub client: bool,

    /// Forward into this TAP interface (created if missing). Default: named after the socket
    /// file (`/run/vm1.sock` gives `vm1`).
    #[arg(long, value_name = "IFNAME")]
    pub tap: Option<String>,

    /// Forward into this SR-IOV VF (Intel 82576/I350 "igbvf"), driven from userspace through
    /// VFIO: its PCI address, bound to vfio-pci (see docs/vf-setup.md).
    #[arg(long, value_name = "BDF", conflicts_with = "tap")]
    pub vf: Option<String>,

    /// MAC address the guest is given in the config space. Default: the VF's MAC with --vf
    /// (with --mac the PF is asked to give the VF this one); with a TAP, a locally
    /// administered address derived from the socket path, stable across restarts.
    #[arg(long)]
    pub mac: Option<MacAddr>,

    /// MTU given to the guest and set on the port; longer tx frames without GSO are dropped.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u16).range(68..))]
    pub mtu: u16,

    /// Largest virtqueue size the front-end may use (a power of two).
    #[arg(long, default_value_t = 1024, value_parser = parse_queue_size)]
    pub queue_size: u16,

    /// Log level: error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    pub log_level: tracing::Level,

    /// Print the back-end's capabilities as JSON and exit.
    #[arg(long)]
    pub print_capabilities: bool,
}

/// The capabilities JSON of QEMU's vhost-user.json convention for a net back-end.
pub const CAPABILITIES_JSON: &str = "{\n  \"type\": \"net\"\n}";

fn parse_queue_size(s: &str) -> Result<u16, String> {
    let n: u16 = s.parse().map_err(|e| format!("{e}"))?;
    if n.is_power_of_two() && n >= 2 {
        Ok(n)
    } else {
        Err(format!("{n} is not a power of two between 2 and 32768"))
    }
}

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts
                .next()
                .ok_or("expected six hex bytes like 52:54:00:12:34:56")?;
            if part.len() != 2 {
                return Err(format!("{part:?} is not a two-digit hex byte"));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| format!("{part:?} is not hex"))?;
        }
        if parts.next().is_some() {
            return Err("expected six hex bytes like 52:54:00:12:34:56".into());
        }
        if bytes[0] & 1 != 0 {
            return Err(format!("{s} is a multicast address"));
        }
        Ok(MacAddr(bytes))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl MacAddr {
    /// A locally administered unicast address derived from `seed` (FNV-1a), so a port keeps
    /// its MAC across daemon restarts.
    pub fn derived_from(seed: &[u8]) -> Self {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in seed {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        let h = hash.to_le_bytes();
        MacAddr([0x02, h[0], h[1], h[2], h[3], h[4]])
    }
}

/// The default TAP name for a socket: the file stem, restricted to characters interface names
/// take and to IFNAMSIZ - 1 bytes.
pub fn tap_name_for_socket(socket: &Path) -> String {
    let stem = socket
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(libc::IFNAMSIZ - 1)
        .collect();
    if name.is_empty() {
        "vhost-vf0".to_string()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_and_prints() {
        let mac: MacAddr = "52:54:00:AB:cd:01".parse().unwrap();
        assert_eq!(mac.0, [0x52, 0x54, 0, 0xab, 0xcd, 1]);
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:01");
    }

    #[test]
    fn bad_macs_are_refused() {
        for bad in [
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "5:54:00:ab:cd:01",
            "zz:54:00:ab:cd:01",
            "01:00:5e:00:00:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn derived_mac_is_local_unicast_and_stable() {
        let a = MacAddr::derived_from(b"/run/vm1.sock");
        assert_eq!(a.0[0], 0x02);
        assert_eq!(a, MacAddr::derived_from(b"/run/vm1.sock"));
        assert_ne!(a, MacAddr::derived_from(b"/run/vm2.sock"));
    }

    #[test]
    fn tap_name_comes_from_the_socket_stem() {
        assert_eq!(tap_name_for_socket(Path::new("/run/vm1.sock")), "vm1");
        assert_eq!(tap_name_for_socket(Path::new("/tmp/a b:c.sock")), "a-b-c");
        assert_eq!(
            tap_name_for_socket(Path::new("/x/very-long-socket-name.sock")),
            "very-long-socke"
        );
        assert_eq!(tap_name_for_socket(Path::new("/")), "vhost-vf0");
    }

    #[test]
    fn queue_size_must_be_a_power_of_two() {
        assert_eq!(parse_queue_size("256"), Ok(256));
        assert!(parse_queue_size("300").is_err());
        assert!(parse_queue_size("0").is_err());
    }

    #[test]
    fn a_vf_and_a_tap_cannot_both_be_the_port() {
        let both = Cli::try_parse_from([
            "vhost-vf",
            "--socket-path",
            "/tmp/s",
            "--vf",
            "0000:01:10.0",
            "--tap",
            "t0",
        ]);
        assert!(both.is_err());
        let vf = Cli::try_parse_from([
            "vhost-vf",
            "--socket-path",
            "/tmp/s",
            "--vf",
            "0000:01:10.0",
        ])
        .unwrap();
        assert_eq!(vf.vf.as_deref(), Some("0000:01:10.0"));
    }

    #[test]
    fn cli_requires_a_socket_unless_printing_capabilities() {
        assert!(Cli::try_parse_from(["vhost-vf"]).is_err());
        assert!(Cli::try_parse_from(["vhost-vf", "--print-capabilities"]).is_ok());
        let cli =
            Cli::try_parse_from(["vhost-vf", "--socket-path", "/tmp/s", "--mtu", "9000"]).unwrap();
        assert_eq!(cli.mtu, 9000);
        assert!(
            Cli::try_parse_from(["vhost-vf", "--socket-path", "/tmp/s", "--mtu", "10"]).is_err()
        );
    }
}
