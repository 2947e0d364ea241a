//! The userspace igbvf driver on a real VFIO VF: QEMU's emulated 82576 (`igb`) behind an
//! emulated Intel IOMMU, VF0 bound to vfio-pci inside the guest and driven by `vf-tool`, the
//! wire side a TAP in a namespace the test owns. Needs root and QEMU: skipped otherwise,
//! failed under `CI=true`.

use std::time::{Duration, Instant};

use vhost_vf_tests::PacketSocket;
use vhost_vf_tests::vf_lab::{LAB_TIMEOUT, VF0_MAC, VfLab, format_mac, hex_field, run_lab};
use vhost_vf_tools::vf_frames::{test_frame, test_frame_seq};

/// Frames `vf-tool send` sends per run, and the runs (interrupt mode, poll mode).
const SENT_PER_RUN: u32 = 200;

#[test]
fn vf_frames_reach_the_host_byte_exact_with_the_vf_mac() {
    run_lab("send", "", |lab| {
        let seen = lab.collect_until_done(|f| f.len() >= 12 && f[6..12] == VF0_MAC);
        let lines = lab.lines();
        for mode in ["irq", "poll"] {
            assert!(
                lines
                    .iter()
                    .any(|l| *l == format!("{mode} sent={SENT_PER_RUN}")),
                "vf-tool ({mode}) did not send all frames\n{}",
                lab.logs()
            );
        }
        assert_eq!(
            seen.len(),
            2 * SENT_PER_RUN as usize,
            "frames from the VF's MAC on the host\n{}",
            lab.logs()
        );
        // Each run numbers its frames from 0; every frame must be exactly what was sent.
        for (i, frame) in seen.iter().enumerate() {
            let seq = test_frame_seq(frame).expect("a test frame");
            let want = test_frame(lab.host_mac(), VF0_MAC, 60, seq);
            assert_eq!(frame, &want, "frame {i} (seq {seq}) differs");
            assert_eq!(
                seq,
                u32::try_from(i).unwrap() % SENT_PER_RUN,
                "frames out of order"
            );
        }
    });
}

#[test]
fn frames_to_the_vf_mac_reach_it_and_frames_to_others_do_not() {
    run_lab("recv", "", |lab| {
        let other = [0x52, 0x54, 0x00, 0xaa, 0x00, 0x99];
        let vf_mac = format_mac(VF0_MAC);
        for mode in ["irq", "poll"] {
            assert!(
                lab.wait_line(LAB_TIMEOUT, |l| *l == format!("{mode} ready")),
                "vf-tool recv ({mode}) did not start\n{}",
                lab.logs()
            );
            // Every other frame is for another MAC: none of those may reach the VF.
            let prefix = format!("{mode} frame ");
            let (got, _) = lab.inject_until(
                |seq| {
                    if seq % 2 == 0 {
                        test_frame(VF0_MAC, lab.host_mac(), 60, seq)
                    } else {
                        test_frame(other, lab.host_mac(), 60, seq)
                    }
                },
                |lab| lab.lines_after(&prefix).len() >= 50,
            );
            assert!(
                got && lab.wait_line(Duration::from_secs(30), |l| *l
                    == format!("{mode} received=50")),
                "the VF ({mode}) did not receive 50 frames\n{}",
                lab.logs()
            );
            for line in lab.lines_after(&prefix) {
                assert!(
                    line.contains(&format!("dst={vf_mac} ")),
                    "a frame for another MAC reached the VF: {line}"
                );
                let bytes = hex_field(&line, "data=").expect("frame data");
                let seq = test_frame_seq(&bytes).expect("a test frame");
                assert_eq!(
                    bytes,
                    test_frame(VF0_MAC, lab.host_mac(), 60, seq),
                    "frame {seq} differs"
                );
            }
        }
        assert!(
            lab.wait_done(),
            "the scenario did not finish\n{}",
            lab.logs()
        );
    });
}

#[test]
fn bad_set_ups_fail_with_clear_errors() {
    run_lab("errors", "", |lab| {
        assert!(
            lab.wait_done(),
            "the scenario did not finish\n{}",
            lab.logs()
        );
        let lines = lab.lines();
        let error = |prefix: &str| {
            lines
                .iter()
                .find(|l| l.starts_with(&format!("error {prefix}")))
                .cloned()
                .unwrap_or_default()
        };
        assert!(
            !lines.iter().any(|l| l.starts_with("unexpected-success")),
            "{}",
            lab.logs()
        );
        assert!(
            error("0000:09:00.0").contains("no PCI device"),
            "{}",
            lab.logs()
        );
        let ready = lines
            .iter()
            .find(|l| l.starts_with("READY"))
            .expect("READY line");
        let field = |name: &str| {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .unwrap_or_default()
                .to_string()
        };
        let (vf1, pf) = (field("vf1"), field("pf"));
        assert!(
            error(&vf1).contains("not vfio-pci") && error(&vf1).contains("driver_override"),
            "{}",
            lab.logs()
        );
        assert!(error(&pf).contains("physical function"), "{}", lab.logs());
        assert!(
            lines
                .iter()
                .any(|l| *l == format!("info mac={}", format_mac(VF0_MAC))),
            "the working VF did not report its MAC from the PF\n{}",
            lab.logs()
        );
    });
}

#[test]
fn a_killed_driver_leaves_the_vf_ready_for_the_next_open() {
    run_lab("reopen", "", |lab| {
        let seen = lab.collect_until_done(|f| f.len() >= 12 && f[6..12] == VF0_MAC);
        let lines = lab.lines();
        assert!(
            lines.iter().any(|l| l == "killed"),
            "the first sender was not killed\n{}",
            lab.logs()
        );
        assert!(
            lines.iter().any(|l| *l == "after sent=100"),
            "the re-opened VF did not send\n{}",
            lab.logs()
        );
        assert!(
            seen.len() > 100,
            "the killed sender sent nothing ({} frames in all)\n{}",
            seen.len(),
            lab.logs()
        );
        // The second run's frames come last, whole and in order.
        let after = &seen[seen.len() - 100..];
        for (seq, frame) in (0u32..).zip(after) {
            assert_eq!(
                frame,
                &test_frame(lab.host_mac(), VF0_MAC, 60, seq),
                "frame {seq} after the re-open"
            );
        }
    });
}

/// Injects test frames numbered from `first` to `dst` in rounds until `want` of them came
/// back, each from `dst` and the same frame with the addresses swapped. Echoes of frames from
/// earlier calls (numbered below `first`) are passed over. Returns how many came back.
fn echo_round_trips(
    lab: &VfLab,
    socket: &PacketSocket,
    dst: [u8; 6],
    first: u32,
    want: usize,
) -> usize {
    let host = lab.host_mac();
    let mut seq = first;
    let mut echoed = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    while echoed < want && Instant::now() < deadline {
        for _ in 0..5 {
            socket
                .send(&test_frame(dst, host, 60, seq))
                .expect("inject");
            seq += 1;
        }
        let round = Instant::now() + Duration::from_millis(500);
        while let Some(frame) = socket
            .recv(round.saturating_duration_since(Instant::now()))
            .expect("read the TAP")
        {
            // Pass over what we sent, the guest PF's own chatter and earlier echoes.
            let Some(n) = test_frame_seq(&frame).filter(|&n| n >= first) else {
                continue;
            };
            if frame[6..12] == host {
                continue;
            }
            assert_eq!(frame[6..12], dst, "echo of frame {n} from the wrong MAC");
            assert_eq!(frame, test_frame(host, dst, 60, n), "echo of frame {n}");
            echoed += 1;
        }
    }
    echoed
}

#[test]
fn a_mac_set_from_the_pf_is_noticed_and_the_vf_carries_on() {
    const NEW_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xaa, 0x00, 0x20];
    run_lab(
        "macchange",
        &format!("vflab.new_mac={}", format_mac(NEW_MAC)),
        |lab| {
            let socket = PacketSocket::open(lab.ns(), lab.tap()).expect("packet socket on the TAP");
            assert!(
                lab.wait_line(LAB_TIMEOUT, |l| l == "echo ready"),
                "vf-tool echo did not start\n{}",
                lab.logs()
            );
            let before = echo_round_trips(lab, &socket, VF0_MAC, 0, 10);
            assert!(
                before >= 10,
                "{before} echoes from the first MAC\n{}",
                lab.logs()
            );
            assert!(
                lab.wait_line(Duration::from_secs(60), |l| l.starts_with("mac-changed")),
                "the PF did not change the MAC\n{}",
                lab.logs()
            );
            let after = echo_round_trips(lab, &socket, NEW_MAC, 1_000_000, 10);
            assert!(
                after >= 10,
                "{after} echoes from the MAC the PF set\n{}",
                lab.logs()
            );
            assert!(
                lab.lines()
                    .iter()
                    .any(|l| *l == format!("echo pf_reset mac={}", format_mac(NEW_MAC))),
                "the driver did not re-initialise with the new MAC\n{}",
                lab.logs()
            );
        },
    );
}
