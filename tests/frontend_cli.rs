//! `vu-frontend` against the real daemon: each subcommand runs as a child process in front of a
//! `vhost-vf` whose TAP sits in a private namespace, and whatever crosses the TAP is checked byte
//! for byte against the frames `vhost_vf_tools::vf_frames` rebuilds.
//!
//! The TAP side is watched with an `AF_PACKET` socket opened before the child starts, with a
//! large receive buffer and read while the child runs, so that no burst overflows it. Needs
//! root: skipped otherwise, failed under `CI=true`.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use vhost_vf_tests::{
    DaemonLab, LAB_GUEST_MAC, PacketSocket, ProcessGroup, wait_until, workspace_bin,
};
use vhost_vf_tools::frontend::{HDR_LEN, format_mac, parse_mac};
use vhost_vf_tools::vf_frames::{
    ETHERTYPE_IPV4, SEQ_OFFSET, TEST_ETHERTYPE, UDP_CSUM_OFFSET, UDP_CSUM_START, UDP_DST_IP,
    UDP_DST_PORT, UDP_SEQ_OFFSET, complete_partial_csum, test_frame, test_frame_seq,
    udp_checksums_ok, udp_partial_csum, udp_test_frame, udp_test_frame_seq,
};
use vhost_vf_tools::virtio_bindings::virtio_net::VIRTIO_NET_HDR_F_NEEDS_CSUM;

/// The guest's MAC: the daemon's config space gives it, and `vu-frontend` sends from it.
const GUEST_MAC: [u8; 6] = LAB_GUEST_MAC;
/// The far end of the TAP.
const PEER_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
/// Longest a subcommand may take.
const RUN: Duration = Duration::from_secs(60);
/// Deadline for anything that should happen promptly.
const WAIT: Duration = Duration::from_secs(10);
/// Receive buffer of the TAP sockets: thousands of small frames.
const RCVBUF: usize = 16 << 20;
/// Bytes of the `virtio_net_hdr` a `PACKET_VNET_HDR` socket puts before each frame.
const PACKET_VNET_HDR_LEN: usize = 10;

/// A `vu-frontend` child whose stdout lines arrive on a channel as it prints them.
struct FrontendRun {
    group: ProcessGroup,
    lines: mpsc::Receiver<String>,
    /// Every line read so far, in order.
    seen: Vec<String>,
    stderr: std::path::PathBuf,
}

/// How a `vu-frontend` run ended.
struct Finished {
    code: Option<i32>,
    lines: Vec<String>,
    stderr: String,
}

impl FrontendRun {
    /// Starts `vu-frontend SUBCOMMAND SOCKET ARGS...` against `lab`'s daemon.
    fn start(lab: &DaemonLab, subcommand: &str, args: &[&str]) -> Self {
        let stderr = lab.dir.join(format!("vu-frontend-{subcommand}.err"));
        let mut cmd = std::process::Command::new(workspace_bin("vu-frontend"));
        cmd.arg(subcommand)
            .arg(&lab.sock)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("create the stderr file"));
        let mut group = ProcessGroup::spawn("vu-frontend", cmd);
        let stdout = group.child_mut().stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        FrontendRun {
            group,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Waits up to `timeout` for a line that satisfies `want`; returns it.
    fn wait_line(&mut self, timeout: Duration, want: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if want(&line) {
                return Some(line);
            }
        }
    }

    /// Waits up to `timeout` for the child to exit and collects all its output.
    fn finish(mut self, timeout: Duration) -> Finished {
        let code = self.group.wait_exit(timeout);
        // The reader thread ends at EOF, which closes the channel.
        while let Ok(line) = self.lines.recv_timeout(WAIT) {
            self.seen.push(line);
        }
        Finished {
            code,
            lines: self.seen,
            stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        }
    }
}

impl Finished {
    /// Fails the test unless the run exited 0.
    fn assert_success(&self) {
        assert_eq!(
            self.code,
            Some(0),
            "vu-frontend failed; stdout:\n{}\nstderr:\n{}",
            self.lines.join("\n"),
            self.stderr
        );
    }

    /// The lines starting with `prefix`.
    fn lines_starting(&self, prefix: &str) -> Vec<&str> {
        self.lines
            .iter()
            .map(String::as_str)
            .filter(|l| l.starts_with(prefix))
            .collect()
    }

    /// The one line starting with `prefix`.
    fn line(&self, prefix: &str) -> &str {
        let found = self.lines_starting(prefix);
        assert_eq!(
            found.len(),
            1,
            "want one `{prefix}` line in:\n{}",
            self.lines.join("\n")
        );
        found[0]
    }
}

/// The value of `key=` in a `key=value` line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// The value of `key=` as a number; fails the test if it is missing.
fn number(line: &str, key: &str) -> u64 {
    field(line, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {key}= in {line:?}"))
}

/// A TAP socket with a receive buffer for bursts.
fn tap_socket(lab: &DaemonLab) -> PacketSocket {
    let sock = lab.tap_socket();
    sock.set_recv_buffer(RCVBUF).expect("SO_RCVBUFFORCE");
    sock
}

/// How long the TAP must stay quiet after the child exited before no more frames are expected.
const QUIET: Duration = Duration::from_millis(500);

/// Frames from the guest with `ethertype`, as the TAP carries them, until `n` came, `timeout`
/// passed, or `run` has exited and the TAP stayed quiet for [`QUIET`] (frames keep the `skip`
/// bytes the socket puts before each).
fn guest_frames(
    sock: &PacketSocket,
    run: &mut FrontendRun,
    ethertype: u16,
    skip: usize,
    n: usize,
    timeout: Duration,
) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut frames = Vec::new();
    while frames.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let exited = !run.group.is_running();
        let Some(f) = sock.recv(left.min(QUIET)).expect("read the TAP") else {
            if exited {
                break;
            }
            continue;
        };
        let eth = &f[skip.min(f.len())..];
        if eth.len() >= 14 && eth[6..12] == GUEST_MAC && eth[12..14] == ethertype.to_be_bytes() {
            frames.push(f);
        }
    }
    frames
}

/// Where two frames first differ, for messages.
fn diff(want: &[u8], got: &[u8]) -> String {
    let at = want.iter().zip(got).position(|(a, b)| a != b);
    format!(
        "want {} bytes, got {} bytes, first difference at {at:?}",
        want.len(),
        got.len()
    )
}

/// Checks `frames` are exactly `test_frame(PEER_MAC, GUEST_MAC, size, 0..n)`, in order.
fn assert_test_frames_in_order(frames: &[Vec<u8>], n: usize, size: usize) {
    assert_eq!(
        frames.len(),
        n,
        "guest frames on the TAP (sequence numbers of the last: {:?})",
        frames
            .iter()
            .rev()
            .take(3)
            .map(|f| test_frame_seq(f))
            .collect::<Vec<_>>()
    );
    for (seq, got) in frames.iter().enumerate() {
        let seq = u32::try_from(seq).expect("test counts fit 32 bits");
        let want = test_frame(PEER_MAC, GUEST_MAC, size, seq);
        assert!(
            *got == want,
            "frame {seq} (seq on the wire {:?}): {}",
            test_frame_seq(got),
            diff(&want, got)
        );
    }
}

/// Runs `vu-frontend send` with `args` and checks `n` frames of `size` bytes reach the TAP
/// byte-exact, in order, from the config space's MAC.
fn send_reaches_the_tap(lab: &mut DaemonLab, n: usize, size: usize, args: &[&str]) {
    let sock = tap_socket(lab);
    let count = n.to_string();
    let size_arg = size.to_string();
    let mut all = vec!["--dst", "52:54:00:ab:cd:ef", "--count", &count];
    all.extend_from_slice(&["--size", &size_arg]);
    all.extend_from_slice(args);
    let mut run = FrontendRun::start(lab, "send", &all);
    let frames = guest_frames(&sock, &mut run, TEST_ETHERTYPE, 0, n, RUN);
    let done = run.finish(RUN);
    done.assert_success();
    assert_eq!(number(done.line("sent="), "sent"), n as u64);
    assert_test_frames_in_order(&frames, n, size);
    lab.assert_running();
}

#[test]
fn send_frames_reach_the_tap_byte_exact_and_in_order() {
    let Some(mut lab) = DaemonLab::start(&[]) else {
        return;
    };
    // More frames than the 256-entry ring: descriptors are reused many times over.
    send_reaches_the_tap(&mut lab, 1000, 60, &[]);
    send_reaches_the_tap(&mut lab, 100, 1514, &[]);
    // An explicit source that happens to equal the config space's: the same frames.
    send_reaches_the_tap(&mut lab, 10, 200, &["--src", &format_mac(GUEST_MAC)]);
}

/// The MAC of `ifname` inside `lab`'s namespace.
fn link_mac(lab: &DaemonLab, ifname: &str) -> [u8; 6] {
    let out = lab.ns.ip(&["-o", "link", "show", ifname]);
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .and_then(parse_mac)
        .unwrap_or_else(|| panic!("no MAC in {out:?}"))
}

/// `--csum` frames leave the daemon as the guest wrote them, with the checksum request
/// (`VIRTIO_NET_HDR_F_NEEDS_CSUM`, `csum_start`, `csum_offset`) passed to the kernel in the
/// TAP's virtio-net header.
///
/// What happens there, and so what is asserted: the TAP driver turns the request into a
/// `CHECKSUM_PARTIAL` skb, and nothing on the receive path fills the checksum in. A plain packet
/// socket would see the partial checksum (the pseudo-header sum); a `PACKET_VNET_HDR` socket sees
/// the same bytes plus the request, so the test checks the request arrived intact, the bytes are
/// the partial frame, and finishing the request as a NIC or `skb_checksum_help` would yields the
/// byte-exact frame with a correct UDP checksum. Local delivery trusts `CHECKSUM_PARTIAL` without
/// computing anything, so the UDP socket below proves the kernel took every datagram (IPv4 header
/// checksum checked, payload intact), not the checksum: that is the packet socket's part.
#[test]
fn send_csum_frames_carry_the_checksum_request_to_the_kernel() {
    let Some(mut lab) = DaemonLab::start(&[]) else {
        return;
    };
    const N: usize = 50;
    const SIZE: usize = 300;
    let tap_ip = Ipv4Addr::from(UDP_DST_IP);
    lab.ns
        .ip(&["addr", "add", &format!("{tap_ip}/24"), "dev", &lab.tap]);
    let tap_mac = link_mac(&lab, &lab.tap);
    let udp = lab
        .ns
        .within(move || UdpSocket::bind((tap_ip, UDP_DST_PORT)))
        .expect("bind a UDP socket in the namespace");
    udp.set_read_timeout(Some(WAIT)).expect("SO_RCVTIMEO");
    let sock = tap_socket(&lab);
    sock.enable_vnet_hdr().expect("PACKET_VNET_HDR");

    let dst = format_mac(tap_mac);
    let mut run = FrontendRun::start(
        &lab,
        "send",
        &["--dst", &dst, "--count", "50", "--size", "300", "--csum"],
    );
    let captured = guest_frames(&sock, &mut run, ETHERTYPE_IPV4, PACKET_VNET_HDR_LEN, N, RUN);
    let done = run.finish(RUN);
    done.assert_success();
    assert_eq!(number(done.line("sent="), "sent"), N as u64);
    let connected = done.line("connected ");
    let acked = u64::from_str_radix(
        field(connected, "features")
            .and_then(|f| f.strip_prefix("0x"))
            .expect("features=0x.."),
        16,
    )
    .expect("hex features");
    assert_ne!(acked & 1, 0, "VIRTIO_NET_F_CSUM (bit 0) not negotiated");

    assert_eq!(captured.len(), N, "UDP frames from the guest on the TAP");
    let needs_csum = u8::try_from(VIRTIO_NET_HDR_F_NEEDS_CSUM).expect("one-byte flag");
    for (seq, got) in captured.iter().enumerate() {
        let seq = u32::try_from(seq).expect("small count");
        let (vnet, frame) = got.split_at(PACKET_VNET_HDR_LEN);
        let csum_start = u16::from_le_bytes([vnet[6], vnet[7]]);
        let csum_offset = u16::from_le_bytes([vnet[8], vnet[9]]);
        assert_eq!(
            (vnet[0] & needs_csum, csum_start, csum_offset),
            (needs_csum, 34, 6),
            "frame {seq}: checksum request as the kernel holds it"
        );
        let final_frame = udp_test_frame(tap_mac, GUEST_MAC, SIZE, seq);
        let mut partial = final_frame.clone();
        udp_partial_csum(&mut partial);
        assert!(
            frame == partial.as_slice(),
            "frame {seq} is not the partial frame: {}",
            diff(&partial, frame)
        );
        let mut completed = frame.to_vec();
        assert!(complete_partial_csum(
            &mut completed,
            usize::from(csum_start),
            usize::from(csum_offset)
        ));
        assert_eq!((csum_start, csum_offset), (34, 6));
        assert_eq!(
            (UDP_CSUM_START, UDP_CSUM_OFFSET),
            (34, 6),
            "the tool's constants"
        );
        assert!(udp_checksums_ok(&completed), "frame {seq}: bad checksum");
        assert!(
            completed == final_frame,
            "frame {seq}: {}",
            diff(&final_frame, &completed)
        );
    }

    let mut buf = [0u8; 2048];
    for seq in 0..N {
        let (n, from) = udp
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {seq} never reached the UDP socket: {e}"));
        let seq = u32::try_from(seq).expect("small count");
        let want = udp_test_frame(tap_mac, GUEST_MAC, SIZE, seq);
        assert_eq!(from.port(), 40000);
        assert_eq!(udp_test_frame_seq(&want), Some(seq));
        assert!(
            buf[..n] == want[UDP_SEQ_OFFSET..],
            "datagram {seq}: {}",
            diff(&want[UDP_SEQ_OFFSET..], &buf[..n])
        );
    }
    lab.assert_running();
}

/// Runs `vu-frontend recv` with `args`, injects frames of `sizes` on the TAP once it is
/// ready, and checks every `frame` line against them; returns the `buffers=` of each.
fn recv_gets_tap_frames(lab: &mut DaemonLab, sizes: &[usize], args: &[&str]) -> Vec<u64> {
    let sock = lab.tap_socket();
    let count = sizes.len().to_string();
    let mut all = vec!["--count", &count, "--print", "--timeout", "30"];
    all.extend_from_slice(args);
    let mut run = FrontendRun::start(lab, "recv", &all);
    assert!(
        run.wait_line(WAIT, |l| l == "ready").is_some(),
        "vu-frontend recv never printed `ready`: {:?}",
        run.seen
    );
    let frames: Vec<Vec<u8>> = sizes
        .iter()
        .zip(0u32..)
        .map(|(&size, seq)| test_frame(GUEST_MAC, PEER_MAC, size, seq))
        .collect();
    for f in &frames {
        sock.send(f).expect("send on the TAP");
    }
    let done = run.finish(RUN);
    done.assert_success();
    assert_eq!(
        number(done.line("received="), "received"),
        frames.len() as u64
    );
    let lines = done.lines_starting("frame ");
    assert_eq!(lines.len(), frames.len(), "frame lines");
    let mut buffers = Vec::new();
    for (want, line) in frames.iter().zip(&lines) {
        let hex: String = want.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(number(line, "len"), want.len() as u64, "{line}");
        assert_eq!(field(line, "dst"), Some(format_mac(GUEST_MAC).as_str()));
        assert_eq!(field(line, "src"), Some(format_mac(PEER_MAC).as_str()));
        assert!(
            field(line, "data") == Some(hex.as_str()),
            "frame {:?} differs from the one injected",
            test_frame_seq(want)
        );
        buffers.push(number(line, "buffers"));
    }
    lab.assert_running();
    buffers
}

/// Frame sizes the rx tests inject: small to full-size.
const RX_SIZES: [usize; 8] = [60, 61, 128, 500, 511, 1000, 1400, 1514];

#[test]
fn recv_gets_tap_frames_in_mergeable_buffers() {
    let Some(mut lab) = DaemonLab::start(&[]) else {
        return;
    };
    let mut sizes = RX_SIZES.to_vec();
    sizes.extend(RX_SIZES);
    let buffers = recv_gets_tap_frames(&mut lab, &sizes, &["--buf-size", "512"]);
    for (size, n) in sizes.iter().zip(&buffers) {
        let least = (HDR_LEN + size).div_ceil(512) as u64;
        assert!(
            *n >= least,
            "a {size}-byte frame in {n} buffers of 512 B, needs {least}"
        );
    }
}

#[test]
fn recv_without_mrg_rxbuf_gets_each_frame_in_one_buffer() {
    let Some(mut lab) = DaemonLab::start(&[]) else {
        return;
    };
    let buffers = recv_gets_tap_frames(&mut lab, &RX_SIZES, &["--no-mrg", "--buf-size", "2048"]);
    assert!(buffers.iter().all(|n| *n == 1), "num_buffers: {buffers:?}");
}

#[test]
fn recv_fails_when_too_few_frames_arrive() {
    let Some(mut lab) = DaemonLab::start(&[]) else {
        return;
    };
    let run = FrontendRun::start(&lab, "recv", &["--count", "5", "--timeout", "1"]);
    let done = run.finish(RUN);
    assert_eq!(done.code, Some(1), "exit code; stderr: {}", done.stderr);
    assert_eq!(number(done.line("received="), "received"), 0);
    assert!(
        done.stderr.contains("only 0 of 5 frames"),
        "stderr: {}",
        done.stderr
    );
    lab.assert_running();
}

#[test]
fn malicious_chains_come_back_empty_and_good_frames_still_pass() {
    let Some(mut lab) = DaemonLab::start(&[]) else {
        return;
    };
    const N: usize = 50;
    let sock = tap_socket(&lab);
    let mut run = FrontendRun::start(
        &lab,
        "malicious",
        &["--dst", &format_mac(PEER_MAC), "--count", "50"],
    );
    // Everything from the guest until the good frames are through: a bad chain forwarded
    // would show up among them.
    let frames = guest_frames(&sock, &mut run, TEST_ETHERTYPE, 0, N, RUN);
    let late = guest_frames(&sock, &mut run, TEST_ETHERTYPE, 0, 1, QUIET);
    let done = run.finish(RUN);
    done.assert_success();
    let cases: Vec<(&str, u64)> = done
        .lines_starting("case=")
        .into_iter()
        .map(|l| (field(l, "case").expect("case="), number(l, "used_len")))
        .collect();
    assert_eq!(
        cases,
        [
            ("outside_memory", 0),
            ("iommu_top", 0),
            ("wrapping_address", 0),
            ("huge_length", 0),
            ("second_outside", 0),
            ("write_only", 0),
        ]
    );
    assert_eq!(number(done.line("sent="), "sent"), N as u64);
    assert_test_frames_in_order(&frames, N, 60);
    assert!(late.is_empty(), "more guest frames than the good ones");
    lab.assert_running();
}

#[test]
fn memchange_moves_tx_buffers_between_regions_and_loses_nothing() {
    let Some(mut lab) = DaemonLab::start(&[]) else {
        return;
    };
    const N: usize = 3000;
    let sock = tap_socket(&lab);
    let mut run = FrontendRun::start(
        &lab,
        "memchange",
        &["--dst", &format_mac(PEER_MAC), "--count", "3000"],
    );
    let frames = guest_frames(&sock, &mut run, TEST_ETHERTYPE, 0, N, RUN);
    let done = run.finish(RUN);
    done.assert_success();
    let added = done.lines_starting("added region ");
    assert_eq!(added.len(), 2, "{:?}", done.lines);
    let region_a = field(added[0], "gpa").expect("gpa=");
    assert_ne!(field(added[1], "gpa"), Some(region_a));
    let removed = done.line("removed region ");
    assert_eq!(field(removed, "gpa"), Some(region_a), "region A goes");
    // In that order: B comes while A is in use, A goes only after.
    let order: Vec<&str> = done
        .lines
        .iter()
        .map(String::as_str)
        .filter(|l| l.starts_with("added") || l.starts_with("removed"))
        .collect();
    assert_eq!(order, [added[0], added[1], removed]);
    assert_eq!(number(done.line("sent="), "sent"), N as u64);
    assert_test_frames_in_order(&frames, N, 60);
    lab.assert_running();
}

#[test]
fn rate_sends_renumbered_frames_and_reports_the_rate() {
    let Some(mut lab) = DaemonLab::start(&[]) else {
        return;
    };
    let sock = tap_socket(&lab);
    let mut run = FrontendRun::start(
        &lab,
        "rate",
        &["--dst", &format_mac(PEER_MAC), "--duration", "1"],
    );
    assert!(run.wait_line(WAIT, |l| l == "started").is_some());
    // The first frames, while the socket keeps up: frame 0 with only the number changed.
    let first = guest_frames(&sock, &mut run, TEST_ETHERTYPE, 0, 100, WAIT);
    let done = run.finish(RUN);
    done.assert_success();
    let report = done.line("sent=");
    let sent = number(report, "sent");
    let elapsed_ms = number(report, "elapsed_ms");
    let pps = number(report, "pps");
    assert!(sent >= 100, "{report}");
    assert!(elapsed_ms >= 1000, "{report}");
    let expected_pps = sent * 1000 / elapsed_ms;
    assert!(
        pps.abs_diff(expected_pps) <= expected_pps / 100 + 1,
        "{report}"
    );
    assert_eq!(first.len(), 100, "frames seen on the TAP");
    let template = test_frame(PEER_MAC, GUEST_MAC, 60, 0);
    for (seq, got) in first.iter().enumerate() {
        let seq = u32::try_from(seq).expect("small count");
        let mut want = template.clone();
        want[SEQ_OFFSET..SEQ_OFFSET + 4].copy_from_slice(&seq.to_be_bytes());
        assert!(*got == want, "frame {seq}: {}", diff(&want, got));
    }
    lab.assert_running();
}

/// The descriptors of process `pid` open on the socket with inode `inode`.
fn fds_on_socket(pid: u32, inode: u64) -> Vec<RawFd> {
    let want = format!("socket:[{inode}]");
    let dir = format!("/proc/{pid}/fd");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("list {dir}: {e}"))
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            (target.as_os_str() == want.as_str())
                .then(|| entry.file_name().to_str()?.parse().ok())
                .flatten()
        })
        .collect()
}

/// A duplicate of descriptor `target` of process `pid` (pidfd_getfd(2): Linux 5.6, and the
/// right to ptrace `pid`, which root has).
fn dup_from_process(pid: u32, target: RawFd) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).expect("pids fit pid_t");
    // SAFETY: pidfd_open takes a pid and flags, no memory; it returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    let pidfd = RawFd::try_from(pidfd).expect("descriptors fit c_int");
    // SAFETY: pidfd_open just installed this descriptor in our table; nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // SAFETY: pidfd_getfd takes two descriptors and flags, no memory; it returns a new
    // descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).expect("descriptors fit c_int");
    // SAFETY: pidfd_getfd just installed this descriptor in our table; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The daemon's end of the back-end channel whose socket has inode `inode`: a duplicate of the
/// descriptor the daemon holds (the relay's, kept for config-change notifications).
fn daemon_channel_end(lab: &DaemonLab, inode: u64) -> UnixStream {
    let pid = lab.daemon.pid();
    let fds = fds_on_socket(pid, inode);
    let &[fd, ..] = fds.as_slice() else {
        panic!(
            "the daemon (pid {pid}) holds no descriptor of the back-end channel socket:[{inode}]"
        );
    };
    let dup = dup_from_process(pid, fd)
        .unwrap_or_else(|e| panic!("pidfd_getfd of the daemon's fd {fd}: {e}"));
    let dup = File::from(dup);
    // The descriptor number could have been reused between /proc and pidfd_getfd.
    let got = dup.metadata().expect("fstat the duplicate").ino();
    assert_eq!(got, inode, "the daemon's fd {fd} changed under the test");
    let stream = UnixStream::from(OwnedFd::from(dup));
    stream.set_read_timeout(Some(WAIT)).expect("SO_RCVTIMEO");
    stream
}

/// `watch-config` negotiates BACKEND_REQ and CONFIG, prints the daemon's config space (its
/// MAC, the TAP's link up), and prints it again for each config-change notification that comes
/// through the back-end channel the daemon keeps.
///
/// The TAP port never changes link or MAC by itself, so the daemon sends no notification here
/// (that is the lab's part, with a VF). Instead the test writes on the daemon's own end of the
/// channel, a duplicate of the descriptor the relay kept from SET_BACKEND_REQ_FD, the very
/// bytes the daemon's notifier writes (`backend/src/config_notify.rs`), then the same request
/// with NEED_REPLY, whose answer comes back on that end. So the socket the daemon holds is the
/// one `vu-frontend` reads, and `vu-frontend`, which fails if the channel closes, sees it open
/// throughout; once the front-end is gone, the daemon lets go of it.
#[test]
fn watch_config_prints_the_config_again_on_each_change_through_the_daemons_channel() {
    /// CONFIG_CHANGE_MSG, version 1, no payload: what the daemon's notifier writes.
    const BARE_CONFIG_CHANGE: [u8; 12] = [2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
    /// The same with NEED_REPLY (flags 0x8).
    const CONFIG_CHANGE_NEED_REPLY: [u8; 12] = [2, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0];
    /// The answer: CONFIG_CHANGE_MSG, version 1 with REPLY (0x4), 8 bytes, u64 0 (success).
    const SUCCESS_REPLY: [u8; 20] = [2, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    let Some(mut lab) = DaemonLab::start(&[]) else {
        return;
    };
    lab.wait_tap_up();
    let mut run = FrontendRun::start(&lab, "watch-config", &["--duration", "3"]);
    let config = run.wait_line(WAIT, |l| l.starts_with("config "));
    let channel = run
        .seen
        .iter()
        .find(|l| l.starts_with("backend-channel "))
        .cloned();
    let (Some(config), Some(channel)) = (config, channel) else {
        panic!("no `backend-channel` and `config` lines: {:?}", run.seen);
    };
    let inode = number(&channel, "inode");
    // `config` comes after GET_CONFIG's reply, so the daemon has handled SET_BACKEND_REQ_FD.
    let mut daemon_end = daemon_channel_end(&lab, inode);

    let expect_change = |run: &mut FrontendRun, what: &str| {
        assert!(
            run.wait_line(WAIT, |l| l == "config-change").is_some(),
            "no `config-change` after {what}: {:?}",
            run.seen
        );
        let again = run.wait_line(WAIT, |l| l.starts_with("config "));
        assert_eq!(again.as_deref(), Some(config.as_str()), "after {what}");
    };
    daemon_end
        .write_all(&BARE_CONFIG_CHANGE)
        .expect("write on the daemon's channel end");
    expect_change(&mut run, "a bare CONFIG_CHANGE_MSG");
    daemon_end
        .write_all(&CONFIG_CHANGE_NEED_REPLY)
        .expect("write on the daemon's channel end");
    let mut reply = [0u8; 20];
    daemon_end
        .read_exact(&mut reply)
        .expect("vu-frontend answers a CONFIG_CHANGE_MSG with NEED_REPLY");
    assert_eq!(reply, SUCCESS_REPLY);
    expect_change(&mut run, "a CONFIG_CHANGE_MSG with NEED_REPLY");
    drop(daemon_end);

    let done = run.finish(RUN);
    done.assert_success();
    assert_eq!(field(&config, "mac"), Some(format_mac(GUEST_MAC).as_str()));
    assert_eq!(field(&config, "link"), Some("up"), "{config}");
    assert_eq!(
        number(&config, "status") & 1,
        1,
        "VIRTIO_NET_S_LINK_UP: {config}"
    );
    let events: Vec<&str> = done
        .lines
        .iter()
        .map(String::as_str)
        .filter(|l| !l.starts_with("connected "))
        .collect();
    let (channel, config) = (channel.as_str(), config.as_str());
    assert_eq!(
        events,
        [
            channel,
            config,
            "config-change",
            config,
            "config-change",
            config,
            "done"
        ]
    );
    let connected = done.line("connected ");
    let protocol = u64::from_str_radix(
        field(connected, "protocol_features")
            .and_then(|f| f.strip_prefix("0x"))
            .expect("protocol_features=0x.."),
        16,
    )
    .expect("hex protocol features");
    // VHOST_USER_PROTOCOL_F_BACKEND_REQ is bit 5, CONFIG bit 9.
    let wanted = (1 << 5) | (1 << 9);
    assert_eq!(protocol & wanted, wanted, "{connected}");

    // The connection is gone: the daemon lets go of the channel with it.
    let released = wait_until(WAIT, || fds_on_socket(lab.daemon.pid(), inode).is_empty());
    assert!(
        released,
        "the daemon still holds the back-end channel socket:[{inode}] after the front-end left"
    );
    lab.assert_running();
}
