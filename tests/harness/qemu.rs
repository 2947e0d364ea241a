//! QEMU guests for the integration tests: the lab guest built by `tools/lab/build-guest.sh`,
//! booted under TCG with `-netdev vhost-user`, its serial console in a file the test reads.
//!
//! The guest reports with `VHVF:` lines (see `tools/lab/guest-init`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{ProcessGroup, have_program, require, wait_until, workspace_root};

/// Where the lab guest's kernel and initramfs are.
pub struct GuestImage {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
}

/// Builds (or finds in the cache) the lab guest; `None` when the test must skip (not root, no
/// QEMU), which under CI is a failure.
pub fn guest_image() -> Option<GuestImage> {
    if !require("root", crate::is_root())
        || !require("qemu-system-x86_64", have_program("qemu-system-x86_64"))
    {
        return None;
    }
    let script = workspace_root().join("tools/lab/build-guest.sh");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(out.status.success(), "{} failed", script.display());
    let dir = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .trim(),
    );
    Some(GuestImage {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.gz"),
    })
}

/// How QEMU's chardev reaches the vhost-user socket.
pub enum Chardev {
    /// QEMU connects, reconnecting every second when the back-end goes away.
    ClientReconnect,
    /// QEMU listens (`server=on,wait=off`); the back-end connects with `--client`.
    Server,
}

/// A running guest; killed with its process group on drop.
pub struct Guest {
    // Declared first so QEMU dies before the console file's directory goes.
    _qemu: ProcessGroup,
    console: PathBuf,
}

impl Guest {
    /// Boots `image` with its virtio-net device on vhost-user socket `socket`, guest MAC `mac`,
    /// and `append` added to the kernel command line. The console goes to `dir/console.log`.
    pub fn boot(
        image: &GuestImage,
        socket: &Path,
        chardev: Chardev,
        mac: &str,
        append: &str,
        dir: &Path,
    ) -> Guest {
        let console = dir.join("console.log");
        let chardev_opts = match chardev {
            Chardev::ClientReconnect => {
                format!("socket,id=c0,path={},reconnect-ms=1000", socket.display())
            }
            Chardev::Server => format!("socket,id=c0,path={},server=on,wait=off", socket.display()),
        };
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-accel", "tcg", "-machine", "q35", "-cpu", "max", "-smp", "1", "-m", "512M",
        ])
        .args(["-object", "memory-backend-memfd,id=mem,size=512M,share=on"])
        .args(["-machine", "memory-backend=mem"])
        .args(["-chardev", &chardev_opts])
        .args(["-netdev", "vhost-user,id=n0,chardev=c0"])
        .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac}")])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        .args(["-append", &format!("console=ttyS0 panic=-1 quiet {append}")])
        .args([
            "-display",
            "none",
            "-nodefaults",
            "-no-reboot",
            "-monitor",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("qemu.err")).expect("create qemu.err"));
        Guest {
            _qemu: ProcessGroup::spawn("qemu", cmd),
            console,
        }
    }

    /// The guest's `VHVF:` lines so far, without the prefix.
    pub fn reports(&self) -> Vec<String> {
        fs::read_to_string(&self.console)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                l.trim_end_matches('\r')
                    .strip_prefix("VHVF:")
                    .map(str::to_string)
            })
            .collect()
    }

    /// Waits until some report satisfies `pred`.
    pub fn wait_report(&self, timeout: Duration, mut pred: impl FnMut(&str) -> bool) -> bool {
        wait_until(timeout, || self.reports().iter().any(|l| pred(l)))
    }

    /// Sequence numbers of the ping replies the guest reported.
    pub fn ping_replies(&self) -> Vec<u32> {
        self.reports()
            .iter()
            .filter(|l| l.starts_with("PING ") && l.contains("bytes from"))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("seq="))
                    .and_then(|s| s.parse().ok())
            })
            .collect()
    }

    /// The whole console, for failure messages.
    pub fn console(&self) -> String {
        fs::read_to_string(&self.console).unwrap_or_default()
    }
}
