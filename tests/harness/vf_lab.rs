//! The SR-IOV lab: QEMU's `igb` (82576 PF with VFs) behind an emulated Intel IOMMU, under TCG,
//! with its network on a TAP in a namespace the test owns. The guest (`tools/lab/vf/`) creates
//! two VFs, binds VF0 to vfio-pci and runs one scenario script, reporting `VFLAB:` lines on the
//! serial console; the host side captures and injects frames on the TAP.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::{
    NetNs, PacketSocket, ProcessGroup, TempDir, have_program, require, wait_until, workspace_bin,
    workspace_root,
};

/// VF0's MAC, set from the PF by the guest.
pub const VF0_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xaa, 0x00, 0x10];
/// Boot, VF creation and a scenario under TCG: 30-80 s.
pub const LAB_TIMEOUT: Duration = Duration::from_secs(240);
/// Lab guests run one at a time: each is a 1 GiB TCG VM on a two-core machine.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LAB: Mutex<()> = Mutex::new(());
    LAB.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a guest kernel prints when a TCG vCPU stopped being scheduled: the guest itself is
/// wedged, whatever the scenario did.
const GUEST_STALLS: [&str; 2] = ["rcu: INFO: rcu_preempt detected stalls", "soft lockup"];

/// Boots the lab with `scenario` (see [`VfLab::boot`]) and runs the test `body` against it,
/// one lab at a time; skips as `boot` does. If `body` fails and the guest kernel reported a
/// stalled vCPU, the whole run is repeated once on a fresh boot, saying so: under TCG on a
/// loaded two-core host a vCPU thread now and then stops being scheduled for seconds, and the
/// guest's timers and the emulated NIC stop with it. Every assertion holds on the repeat.
pub fn run_lab(scenario: &str, append: &str, body: impl Fn(&VfLab)) {
    let _one = one_at_a_time();
    for attempt in 1..=2 {
        let Some(lab) = VfLab::boot(scenario, append) else {
            return;
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&lab)));
        let Err(panic) = outcome else {
            return;
        };
        let console = fs::read_to_string(lab.dir.join("console.log")).unwrap_or_default();
        let stalled = GUEST_STALLS.iter().any(|s| console.contains(s));
        if attempt == 2 || !stalled {
            std::panic::resume_unwind(panic);
        }
        eprintln!("the lab guest stalled (TCG vCPU not scheduled); running {scenario} once more");
    }
}

/// The project's programs the lab guest carries.
const LAB_BINARIES: [&str; 3] = ["vf-tool", "vhost-vf", "vu-frontend"];

/// A booted lab guest; QEMU is killed on drop, then the namespace and directory go.
pub struct VfLab {
    _qemu: ProcessGroup,
    ns: NetNs,
    dir: TempDir,
    tap: String,
    host_mac: [u8; 6],
}

impl VfLab {
    /// Builds the lab guest (cached) with the project's binaries (`vf-tool`, `vhost-vf`,
    /// `vu-frontend`) and DPDK's testpmd inside, and boots it with `scenario`; `None` when the
    /// test must skip (not root, no QEMU, no testpmd), a failure under CI. `append` goes on the
    /// kernel command line (scenario parameters, `vflab.NAME=VALUE`).
    pub fn boot(scenario: &str, append: &str) -> Option<VfLab> {
        if !require("root", crate::is_root())
            || !require("qemu-system-x86_64", have_program("qemu-system-x86_64"))
            || !require("dpdk-testpmd", have_program("dpdk-testpmd"))
        {
            return None;
        }
        let script = workspace_root().join("tools/lab/vf/build.sh");
        let out = Command::new(&script)
            .arg("--dpdk")
            .args(LAB_BINARIES.iter().map(|name| workspace_bin(name)))
            .stderr(Stdio::inherit())
            .output()
            .expect("run tools/lab/vf/build.sh");
        assert!(out.status.success(), "tools/lab/vf/build.sh failed");
        let guest = PathBuf::from(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or("")
                .trim(),
        );

        let ns = NetNs::new();
        let tap = "vflab0".to_string();
        ns.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
        // Only the test's frames on the TAP: no IPv6 autoconfiguration.
        let _ = ns
            .command("sysctl")
            .args(["-qw", &format!("net.ipv6.conf.{tap}.disable_ipv6=1")])
            .status();
        ns.ip(&["link", "set", &tap, "up"]);
        let mac_text = ns
            .command("cat")
            .arg(format!("/sys/class/net/{tap}/address"))
            .output()
            .expect("read the TAP's MAC");
        let host_mac =
            parse_mac(String::from_utf8_lossy(&mac_text.stdout).trim()).expect("TAP MAC");

        let dir = TempDir::new("vflab");
        let console = dir.join("console.log");
        let mut qemu = ns.command(workspace_root().join("tools/lab/vf/boot.sh"));
        qemu.arg(&guest)
            .arg(&tap)
            .arg(&console)
            .arg(format!("vflab.scenario={scenario}"))
            .arg(format!("vflab.host_mac={}", format_mac(host_mac)))
            .args(append.split_whitespace())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("qemu.err")).expect("create qemu.err"));
        let qemu = ProcessGroup::spawn("qemu (vf lab)", qemu);
        Some(VfLab {
            _qemu: qemu,
            ns,
            dir,
            tap,
            host_mac,
        })
    }

    /// The `VFLAB:` lines so far, without the prefix.
    pub fn lines(&self) -> Vec<String> {
        fs::read_to_string(self.dir.join("console.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                l.trim_end_matches('\r')
                    .strip_prefix("VFLAB:")
                    .map(str::to_string)
            })
            .collect()
    }

    /// Waits until some line satisfies `pred`.
    pub fn wait_line(&self, timeout: Duration, mut pred: impl FnMut(&str) -> bool) -> bool {
        wait_until(timeout, || self.lines().iter().any(|l| pred(l)))
    }

    /// Waits for the scenario to finish.
    pub fn wait_done(&self) -> bool {
        self.wait_line(LAB_TIMEOUT, |l| l == "DONE")
    }

    /// Collects the frames on the TAP that `keep` selects until the scenario is done (or
    /// [`LAB_TIMEOUT`] passes), in the order they came.
    pub fn collect_until_done(&self, mut keep: impl FnMut(&[u8]) -> bool) -> Vec<Vec<u8>> {
        let capture = PacketSocket::open(&self.ns, &self.tap).expect("capture on the TAP");
        let mut kept = Vec::new();
        let deadline = Instant::now() + LAB_TIMEOUT;
        while Instant::now() < deadline && !self.lines().iter().any(|l| l == "DONE") {
            while let Some(frame) = capture
                .recv(Duration::from_millis(200))
                .expect("read the TAP")
            {
                if keep(&frame) {
                    kept.push(frame);
                }
            }
        }
        kept
    }

    /// Injects `frame(0)`, `frame(1)`, ... on the TAP in rounds of ten, half a second apart,
    /// until `enough` holds or a minute passes: the emulated PF loses frames while its link
    /// comes up, so a receiver is fed until it has what it waits for. Returns whether `enough`
    /// held, and how many frames were injected.
    pub fn inject_until(
        &self,
        mut frame: impl FnMut(u32) -> Vec<u8>,
        mut enough: impl FnMut(&VfLab) -> bool,
    ) -> (bool, u32) {
        let inject = PacketSocket::open(&self.ns, &self.tap).expect("inject on the TAP");
        let mut seq = 0u32;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if enough(self) {
                return (true, seq);
            }
            for _ in 0..10 {
                inject.send(&frame(seq)).expect("inject a frame");
                seq += 1;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        (enough(self), seq)
    }

    /// The lines that start with `prefix`, without it.
    pub fn lines_after(&self, prefix: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter_map(|l| l.strip_prefix(prefix).map(str::to_string))
            .collect()
    }

    /// The namespace holding the TAP.
    pub fn ns(&self) -> &NetNs {
        &self.ns
    }

    /// The TAP QEMU's igb is attached to.
    pub fn tap(&self) -> &str {
        &self.tap
    }

    /// The TAP's MAC (the host side of the wire).
    pub fn host_mac(&self) -> [u8; 6] {
        self.host_mac
    }

    /// Console and QEMU's stderr, for failure messages.
    pub fn logs(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        let console = read("console.log");
        let tail: Vec<&str> = console.lines().rev().take(60).collect();
        format!(
            "--- console (last 60 lines)\n{}\n--- qemu stderr\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            read("qemu.err")
        )
    }
}

/// The bytes of a `data=HEX` field in a report line.
pub fn hex_field(line: &str, field: &str) -> Option<Vec<u8>> {
    let hex = line.split(field).nth(1)?.split_whitespace().next()?;
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// `aa:bb:cc:dd:ee:ff` to bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Bytes to `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}
