//! The product end to end: `vhost-vf --vf` inside the SR-IOV lab guest serves a vhost-user
//! front-end in the same guest (`vu-frontend`, on the `vhost` crate's front-end, and DPDK
//! testpmd's `net_virtio_user`) and moves its frames through VF0 to a TAP in the test's
//! namespace, and back. Needs root, QEMU and DPDK: skipped otherwise, failed under `CI=true`.

use std::thread;
use std::time::Duration;

use vhost_vf_tests::vf_lab::{LAB_TIMEOUT, VF0_MAC, VfLab, format_mac, hex_field, run_lab};
use vhost_vf_tools::vf_frames::{
    test_frame, test_frame_seq, udp_checksums_ok, udp_test_frame, udp_test_frame_seq,
};

/// Frames from the VF (the front-end's frames leave with the VF's MAC).
fn from_vf(frame: &[u8]) -> bool {
    frame.len() >= 12 && frame[6..12] == VF0_MAC
}

/// The number after `key` in a report line.
fn number_after(line: &str, key: &str) -> Option<u64> {
    line.split(key)
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())?
        .parse()
        .ok()
}

/// The daemon exited cleanly on SIGTERM after the scenario.
fn assert_daemon_exited_cleanly(lab: &VfLab) {
    assert!(
        lab.lines().iter().any(|l| l == "daemon-exit 0"),
        "vhost-vf did not exit cleanly\n{}",
        lab.logs()
    );
}

#[test]
fn frontend_frames_leave_the_vf_byte_exact_with_checksums_completed_and_split_chains_joined() {
    run_lab("relay-tx", "", |lab| {
        let seen = lab.collect_until_done(from_vf);
        let host = lab.host_mac();
        for (run, count) in [("plain", 200), ("csum", 200), ("split", 100)] {
            assert!(
                lab.lines()
                    .iter()
                    .any(|l| *l == format!("{run} sent={count}")),
                "vu-frontend ({run}) did not send {count} frames\n{}",
                lab.logs()
            );
        }
        let plain: Vec<&Vec<u8>> = seen
            .iter()
            .filter(|f| test_frame_seq(f).is_some())
            .collect();
        let udp: Vec<&Vec<u8>> = seen
            .iter()
            .filter(|f| udp_test_frame_seq(f).is_some())
            .collect();
        // The single-descriptor run, then the split one; each numbers its frames from 0.
        assert_eq!(plain.len(), 300, "plain frames on the wire\n{}", lab.logs());
        assert_eq!(
            udp.len(),
            200,
            "checksummed frames on the wire\n{}",
            lab.logs()
        );
        let numbers = (0u32..200).chain(0..100);
        for ((i, frame), seq) in plain.iter().enumerate().zip(numbers) {
            assert_eq!(
                *frame,
                &test_frame(host, VF0_MAC, 60, seq),
                "plain frame {i} (number {seq})"
            );
        }
        for (seq, frame) in (0u32..).zip(udp) {
            assert!(udp_checksums_ok(frame), "UDP frame {seq}: bad checksum");
            assert_eq!(
                frame,
                &udp_test_frame(host, VF0_MAC, 60, seq),
                "UDP frame {seq}"
            );
        }
        assert_daemon_exited_cleanly(lab);
    });
}

#[test]
fn wire_frames_reach_the_frontend_byte_exact_by_copy_and_zero_copy() {
    run_lab("relay-rx", "", |lab| {
        let host = lab.host_mac();
        for mode in ["copy", "direct"] {
            assert!(
                lab.wait_line(LAB_TIMEOUT, |l| *l == format!("{mode} ready")),
                "vu-frontend recv ({mode}) did not start\n{}",
                lab.logs()
            );
            let prefix = format!("{mode} frame ");
            let (got, _) = lab.inject_until(
                |seq| test_frame(VF0_MAC, host, 60, seq),
                |lab| lab.lines_after(&prefix).len() >= 50,
            );
            assert!(
                got && lab.wait_line(Duration::from_secs(30), |l| *l
                    == format!("{mode} received=50")),
                "the front-end ({mode}) did not receive 50 frames\n{}",
                lab.logs()
            );
            let mut last = None;
            for line in lab.lines_after(&prefix) {
                let bytes = hex_field(&line, "data=").expect("frame data");
                let seq = test_frame_seq(&bytes).expect("a test frame");
                assert_eq!(
                    bytes,
                    test_frame(VF0_MAC, host, 60, seq),
                    "{mode} frame {seq}"
                );
                assert!(
                    last < Some(seq),
                    "{mode} frame {seq} after {last:?}: out of order"
                );
                last = Some(seq);
            }
        }
        assert!(
            lab.wait_done(),
            "the scenario did not finish\n{}",
            lab.logs()
        );
        // The daemon says how each connection received: the first copied, the second did not.
        let daemon = lab.lines_after("daemon ");
        let copies = daemon.iter().position(|l| l.contains("rx copies"));
        let zero_copy = daemon.iter().position(|l| l.contains("rx is zero-copy"));
        assert!(
            copies.is_some() && zero_copy.is_some() && copies < zero_copy,
            "rx modes in the daemon's log\n{}",
            lab.logs()
        );
        assert_daemon_exited_cleanly(lab);
    });
}

#[test]
fn malicious_chains_never_reach_the_vf_and_good_traffic_follows() {
    run_lab("relay-malicious", "", |lab| {
        let seen = lab.collect_until_done(from_vf);
        let cases = lab.lines_after("mal case=");
        assert!(
            cases.len() >= 6,
            "not every malicious case ran\n{}",
            lab.logs()
        );
        for case in &cases {
            assert!(
                case.ends_with("used_len=0"),
                "a malicious chain came back used: {case}\n{}",
                lab.logs()
            );
        }
        assert!(
            lab.lines().iter().any(|l| l == "mal sent=100"),
            "good frames after the malicious ones were not all sent\n{}",
            lab.logs()
        );
        // Only the good frames reached the wire, each once, in order.
        assert_eq!(seen.len(), 100, "frames from the VF\n{}", lab.logs());
        for (seq, frame) in (0u32..).zip(&seen) {
            assert_eq!(
                frame,
                &test_frame(lab.host_mac(), VF0_MAC, 60, seq),
                "frame {seq}"
            );
        }
        // Counters are reported at disconnect and at exit, each connection's once.
        let refused: u64 = lab
            .lines_after("daemon ")
            .iter()
            .filter_map(|l| number_after(l, "tx_bad_chain="))
            .sum();
        assert!(
            refused >= cases.len() as u64,
            "{refused} chains counted as bad for {} cases\n{}",
            cases.len(),
            lab.logs()
        );
        assert_daemon_exited_cleanly(lab);
    });
}

#[test]
fn a_memory_table_change_under_traffic_loses_nothing_acknowledged() {
    run_lab("relay-memchange", "", |lab| {
        let seen = lab.collect_until_done(from_vf);
        let lines = lab.lines();
        for what in ["mem added region", "mem removed region"] {
            assert!(
                lines.iter().any(|l| l.starts_with(what)),
                "no '{what}'\n{}",
                lab.logs()
            );
        }
        assert!(
            lines.iter().any(|l| l == "mem sent=600"),
            "not every frame was acknowledged\n{}",
            lab.logs()
        );
        assert_eq!(seen.len(), 600, "frames on the wire\n{}", lab.logs());
        for (seq, frame) in (0u32..).zip(&seen) {
            assert_eq!(
                frame,
                &test_frame(lab.host_mac(), VF0_MAC, 60, seq),
                "frame {seq}"
            );
        }
        assert_daemon_exited_cleanly(lab);
    });
}

#[test]
fn dpdk_virtio_user_drives_the_relay_both_ways() {
    /// Frames the host injects while testpmd receives.
    const INJECTED: u64 = 200;
    run_lab("relay-dpdk", "", |lab| {
        let host = lab.host_mac();
        let seen = thread::scope(|scope| {
            let injector = scope.spawn(|| {
                if !lab.wait_line(LAB_TIMEOUT, |l| l == "rx ready") {
                    return false;
                }
                let socket = vhost_vf_tests::PacketSocket::open(lab.ns(), lab.tap())
                    .expect("inject on the TAP");
                for seq in 0..INJECTED {
                    let seq = u32::try_from(seq).expect("small");
                    socket
                        .send(&test_frame(VF0_MAC, host, 60, seq))
                        .expect("inject");
                    thread::sleep(Duration::from_millis(20));
                }
                true
            });
            let seen = lab.collect_until_done(|f| from_vf(f) && f[..6] == host);
            assert!(
                injector.join().expect("the injector thread"),
                "testpmd rxonly did not start\n{}",
                lab.logs()
            );
            seen
        });
        let sent = lab
            .lines_after("tx ")
            .iter()
            .find_map(|l| number_after(l, "TX-packets:"))
            .expect("testpmd's txonly counters");
        assert!(sent > 0, "testpmd sent nothing\n{}", lab.logs());
        assert_eq!(
            seen.len() as u64,
            sent,
            "every frame testpmd sent reaches the wire\n{}",
            lab.logs()
        );
        let received = lab
            .lines_after("rx ")
            .iter()
            .find_map(|l| number_after(l, "RX-packets:"))
            .expect("testpmd's rxonly counters");
        assert_eq!(
            received,
            INJECTED,
            "frames testpmd received\n{}",
            lab.logs()
        );
        assert_daemon_exited_cleanly(lab);
    });
}

#[test]
fn the_vf_link_drives_the_config_space_with_a_notification() {
    run_lab("relay-link", "", |lab| {
        assert!(
            lab.wait_done(),
            "the scenario did not finish\n{}",
            lab.logs()
        );
        let watch = lab.lines_after("watch ");
        let configs: Vec<&String> = watch.iter().filter(|l| l.starts_with("config ")).collect();
        let changes = watch.iter().filter(|l| *l == "config-change").count();
        assert_eq!(
            changes,
            2,
            "a notification for the PF going down and one for it coming back\n{}",
            lab.logs()
        );
        let links: Vec<bool> = configs.iter().map(|l| l.ends_with("link=up")).collect();
        assert_eq!(
            links,
            [true, false, true],
            "link up, down with the PF, up again\n{}",
            lab.logs()
        );
        assert_daemon_exited_cleanly(lab);
    });
}

#[test]
fn stopping_a_ring_mid_traffic_returns_an_index_that_loses_and_repeats_nothing() {
    run_lab("relay-stop", "", |lab| {
        let seen = lab.collect_until_done(from_vf);
        let stop = lab
            .lines_after("stop queued=")
            .pop()
            .unwrap_or_else(|| panic!("vu-frontend stop did not report\n{}", lab.logs()));
        let field = |key: &str| number_after(&stop, key).expect("a stop report field");
        let (base, used) = (field("base="), field("used="));
        assert_eq!(
            base,
            used,
            "the index returned must count exactly the chains used\n{}",
            lab.logs()
        );
        assert!(
            lab.lines().iter().any(|l| l == "after sent=50"),
            "the next front-end could not send\n{}",
            lab.logs()
        );
        let base = usize::try_from(base).expect("small");
        assert_eq!(
            seen.len(),
            base + 50,
            "the frames before the index, then the next front-end's\n{}",
            lab.logs()
        );
        let host = lab.host_mac();
        let expected = (0..base)
            .chain(0..50)
            .map(|seq| test_frame(host, VF0_MAC, 60, u32::try_from(seq).expect("small")));
        for (i, (frame, want)) in seen.iter().zip(expected).enumerate() {
            assert_eq!(frame, &want, "frame {i} on the wire");
        }
        assert_daemon_exited_cleanly(lab);
    });
}

#[test]
fn a_mac_asked_for_is_refused_with_a_reason_then_taken_once_the_vf_is_trusted() {
    const NEW_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xbb, 0x00, 0x01];
    run_lab(
        "relay-mac",
        &format!("vflab.new_mac={}", format_mac(NEW_MAC)),
        |lab| {
            let seen = lab.collect_until_done(|f| f.len() >= 12 && f[6..12] == NEW_MAC);
            let lines = lab.lines();
            assert!(
                !lines.iter().any(|l| l == "unexpected-start"),
                "the PF should have refused the MAC of an untrusted VF\n{}",
                lab.logs()
            );
            let refused = lab.lines_after("refused ").join("\n");
            assert!(
                refused.contains("did not accept MAC 52:54:00:bb:00:01")
                    && refused.contains("trust on"),
                "the refusal does not say what to do\n{}",
                lab.logs()
            );
            assert!(
                lines.iter().any(|l| l == "sent sent=20"),
                "the trusted VF did not send\n{}",
                lab.logs()
            );
            assert_eq!(seen.len(), 20, "frames from the new MAC\n{}", lab.logs());
            for (seq, frame) in (0u32..).zip(&seen) {
                assert_eq!(
                    frame,
                    &test_frame(lab.host_mac(), NEW_MAC, 60, seq),
                    "frame {seq}"
                );
            }
            assert_daemon_exited_cleanly(lab);
        },
    );
}
