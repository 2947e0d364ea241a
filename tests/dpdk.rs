//! A front-end nobody here wrote: DPDK's `dpdk-testpmd` with `net_virtio_user` connects to the
//! daemon. In txonly mode its frames reach the TAP; in rxonly mode frames injected on the TAP
//! reach it. Needs root and dpdk-testpmd: skipped otherwise, failed under `CI=true`.
//!
//! testpmd runs without hugepages (`--no-huge -m 1024`), prints port statistics every second,
//! and prints them once more when stopped with SIGINT; the tests read its final RX count.

use std::fs::{self, File};
use std::path::Path;
use std::time::Duration;

use vhost_vf_tests::{
    NetNs, PacketSocket, ProcessGroup, TempDir, have_program, is_root, require, unique_name,
    wait_until, workspace_bin,
};

/// One testpmd at a time: each busy-polls a core, and the machine has two.
static TESTPMD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Frames each test moves.
const FRAMES: u64 = 2000;
const WAIT: Duration = Duration::from_secs(30);

struct Setup {
    // Drop order: testpmd and the daemon go before the namespace and the directory.
    _one: std::sync::MutexGuard<'static, ()>,
    daemon: ProcessGroup,
    ns: NetNs,
    dir: TempDir,
    tap: String,
}

impl Setup {
    fn start() -> Option<Setup> {
        if !require("root", is_root()) || !require("dpdk-testpmd", have_program("dpdk-testpmd")) {
            return None;
        }
        let one = TESTPMD.lock().unwrap_or_else(|e| e.into_inner());
        let ns = NetNs::new();
        let dir = TempDir::new("dpdk");
        let tap = unique_name("vd");
        let sock = dir.join("vu.sock");
        let mut cmd = ns.command(workspace_bin("vhost-vf"));
        cmd.args([
            "--socket-path",
            sock.to_str().expect("temp paths are UTF-8"),
            "--tap",
            &tap,
        ])
        .stderr(File::create(dir.join("daemon.log")).expect("create daemon.log"));
        let daemon = ProcessGroup::spawn("vhost-vf", cmd);
        assert!(
            wait_until(WAIT, || sock.exists()),
            "the daemon made no socket"
        );
        assert!(
            wait_until(WAIT, || ns.has_link(&tap)),
            "the daemon made no TAP"
        );
        // Only our frames on the TAP: no IPv6 autoconfiguration chatter.
        ns.command("sysctl")
            .args(["-qw", &format!("net.ipv6.conf.{tap}.disable_ipv6=1")])
            .status()
            .expect("run sysctl");
        Some(Setup {
            _one: one,
            daemon,
            ns,
            dir,
            tap,
        })
    }

    /// Starts testpmd as the vhost-user front-end in `mode` (txonly, rxonly).
    fn testpmd(&self, mode: &str) -> ProcessGroup {
        let sock = self.dir.join("vu.sock");
        let mut cmd = std::process::Command::new("dpdk-testpmd");
        cmd.args(["-l", "0,1", "--no-pci", "--no-huge", "-m", "1024"])
            .args(["--file-prefix", &unique_name("tp")])
            .args([
                "--vdev",
                &format!("net_virtio_user0,path={},queues=1", sock.display()),
            ])
            .args([
                "--",
                &format!("--forward-mode={mode}"),
                "--txpkts=64",
                "--stats-period=1",
            ])
            .stdout(File::create(self.dir.join("testpmd.log")).expect("create testpmd.log"))
            .stderr(File::create(self.dir.join("testpmd.err")).expect("create testpmd.err"));
        ProcessGroup::spawn("dpdk-testpmd", cmd)
    }

    fn testpmd_log(&self) -> String {
        fs::read_to_string(self.dir.join("testpmd.log")).unwrap_or_default()
    }

    fn logs(&self) -> String {
        let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
        format!(
            "--- daemon\n{}\n--- testpmd stderr\n{}\n--- testpmd (tail)\n{}",
            read(&self.dir.join("daemon.log")),
            read(&self.dir.join("testpmd.err")),
            self.testpmd_log()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        )
    }

    /// testpmd is forwarding once it has printed port statistics.
    fn wait_forwarding(&self) {
        assert!(
            wait_until(WAIT, || self.testpmd_log().contains("RX-packets")),
            "testpmd did not start forwarding\n{}",
            self.logs()
        );
    }
}

/// The largest `RX-packets:` value testpmd printed (its counters only grow).
fn testpmd_rx_packets(log: &str) -> u64 {
    log.split("RX-packets:")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

#[test]
fn testpmd_txonly_frames_reach_the_tap() {
    let Some(setup) = Setup::start() else { return };
    let capture = PacketSocket::open(&setup.ns, &setup.tap).unwrap();
    let before = setup.ns.if_counter(&setup.tap, "rx_packets");
    let mut testpmd = setup.testpmd("txonly");
    setup.wait_forwarding();
    assert!(
        wait_until(WAIT, || setup.ns.if_counter(&setup.tap, "rx_packets")
            >= before + FRAMES),
        "fewer than {FRAMES} frames reached the TAP\n{}",
        setup.logs()
    );
    // The frames are testpmd's: 64-byte IPv4/UDP.
    let caught = capture
        .recv_until(
            WAIT,
            |_| false,
            |f| f.len() == 64 && f[12..14] == [0x08, 0x00] && f[23] == 17,
        )
        .unwrap();
    assert!(
        caught.wanted.is_some(),
        "no 64-byte IPv4/UDP frame seen on the TAP\n{}",
        setup.logs()
    );
    testpmd.signal(libc::SIGINT);
    assert!(
        testpmd.wait_exit(WAIT).is_some(),
        "testpmd did not stop on SIGINT"
    );
    drop(setup.daemon);
}

#[test]
fn tap_frames_reach_testpmd_in_rxonly_mode() {
    let Some(setup) = Setup::start() else { return };
    let mut testpmd = setup.testpmd("rxonly");
    setup.wait_forwarding();
    let inject = PacketSocket::open(&setup.ns, &setup.tap).unwrap();
    let mut frame = vec![0u8; 60];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x42]);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    for i in 0..FRAMES {
        frame[14..22].copy_from_slice(&i.to_be_bytes());
        inject.send(&frame).unwrap();
        if i % 64 == 63 {
            // Pace the burst so the kernel's TAP queue (1000 frames) never overflows.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert!(
        wait_until(WAIT, || testpmd_rx_packets(&setup.testpmd_log()) >= FRAMES),
        "testpmd received {} of {FRAMES} injected frames\n{}",
        testpmd_rx_packets(&setup.testpmd_log()),
        setup.logs()
    );
    testpmd.signal(libc::SIGINT);
    assert!(
        testpmd.wait_exit(WAIT).is_some(),
        "testpmd did not stop on SIGINT"
    );
}

#[test]
fn testpmd_stats_are_parsed() {
    let log = "  RX-packets: 12  RX-missed: 0\n  RX-packets: 2000          RX-missed: 0";
    assert_eq!(testpmd_rx_packets(log), 2000);
}
