//! The daemon against a real vhost-user front-end (the driver in `vhost_vf_tools::frontend`):
//! frames both ways between the guest rings and a TAP in a private namespace, the config space,
//! malicious descriptor chains, and front-ends coming and going.
//!
//! Each test owns a namespace, a temp dir and a daemon process group, all removed on drop. The
//! TAP side is observed with an `AF_PACKET` socket inside the namespace; only frames with
//! [`ETHERTYPE`] count, so kernel chatter on the TAP never matters. Needs root: skipped
//! otherwise, failed under `CI=true`.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use vhost_vf_tests::{DaemonLab, LAB_GUEST_MAC, PacketSocket};
use vhost_vf_tools::frontend::{
    Desc, FrontendOptions, GuestAddress, HDR_LEN, MemoryLayout, NetFrontend, NetHdr, QueueId,
    RawDesc, RxFrame, feature, format_mac, linear, test_frame,
};
use vhost_vf_tools::virtio_bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
};
use vhost_vf_tools::virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
};

/// IEEE 802 "local experimental" ethertype: nothing else on the TAP uses it.
const ETHERTYPE: u16 = 0x88b5;
/// The guest's MAC, given to the daemon with `--mac`.
const GUEST_MAC: [u8; 6] = LAB_GUEST_MAC;
/// Source MAC of frames injected on the TAP.
const PEER_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
/// Deadline for anything the daemon should do promptly.
const WAIT: Duration = Duration::from_secs(5);

/// The daemon lab of the harness, shared with the `vu-frontend` tests.
type Lab = DaemonLab;

/// Connecting this crate's front-end to a lab's daemon.
trait ConnectFrontend {
    /// Connects a front-end, then waits for the TAP to be up.
    fn connect(&self, opts: &FrontendOptions) -> NetFrontend;
}

impl ConnectFrontend for Lab {
    fn connect(&self, opts: &FrontendOptions) -> NetFrontend {
        let fe = NetFrontend::connect(&self.sock, opts)
            .unwrap_or_else(|e| panic!("front-end set-up failed: {}", chain(&e)));
        self.wait_tap_up();
        fe
    }
}

/// An error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn opts(mrg: bool, event_idx: bool) -> FrontendOptions {
    FrontendOptions::default()
        .with_feature(VIRTIO_NET_F_MRG_RXBUF, mrg)
        .with_feature(VIRTIO_RING_F_EVENT_IDX, event_idx)
}

/// A frame the guest sends (source = guest MAC).
fn guest_frame(len: usize, seed: u8) -> Vec<u8> {
    test_frame(PEER_MAC, GUEST_MAC, ETHERTYPE, len, seed)
}

/// A frame the TAP side sends to the guest.
fn peer_frame(len: usize, seed: u8) -> Vec<u8> {
    test_frame(GUEST_MAC, PEER_MAC, ETHERTYPE, len, seed)
}

fn is_from(f: &[u8], src: [u8; 6]) -> bool {
    f.len() >= 14 && f[6..12] == src && f[12..14] == ETHERTYPE.to_be_bytes()
}

/// Where two frames first differ, for messages.
fn diff(want: &[u8], got: &[u8]) -> String {
    let at = want.iter().zip(got).position(|(a, b)| a != b);
    format!(
        "want {} bytes, got {} bytes, first difference at {:?}",
        want.len(),
        got.len(),
        at
    )
}

/// Waits for `want` on the TAP; returns the other guest frames seen before it.
fn expect_on_tap(sock: &PacketSocket, want: &[u8]) -> Vec<Vec<u8>> {
    let caught = sock
        .recv_until(WAIT, |f| is_from(f, GUEST_MAC), |f| f == want)
        .expect("read the TAP");
    assert!(
        caught.wanted.is_some(),
        "a {}-byte guest frame never reached the TAP byte-exact; guest frames seen instead: {:?}",
        want.len(),
        caught
            .others
            .iter()
            .map(|f| diff(want, f))
            .collect::<Vec<_>>()
    );
    caught.others
}

/// Receives frames in the guest until one from the peer comes; other frames are skipped.
fn recv_from_peer(fe: &mut NetFrontend) -> RxFrame {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = fe
            .recv_frame(left)
            .unwrap_or_else(|e| panic!("no frame from the TAP reached the guest: {}", chain(&e)));
        if is_from(&f.frame, PEER_MAC) {
            return f;
        }
    }
}

/// Sends `frame` with the given split and checks it arrives byte-exact on the TAP.
fn send_and_expect(fe: &mut NetFrontend, sock: &PacketSocket, frame: &[u8], segments: &[usize]) {
    fe.send_split(&NetHdr::default(), frame, segments)
        .unwrap_or_else(|e| panic!("send: {}", chain(&e)));
    let others = expect_on_tap(sock, frame);
    assert!(
        others.is_empty(),
        "unexpected guest frames before it: {}",
        others.len()
    );
    fe.wait_tx_idle(WAIT)
        .unwrap_or_else(|e| panic!("tx chains not returned: {}", chain(&e)));
}

/// Injects `frame` on the TAP and checks the guest receives it byte-exact.
fn inject_and_expect(fe: &mut NetFrontend, sock: &PacketSocket, frame: &[u8]) -> RxFrame {
    sock.send(frame).expect("send on the TAP");
    let got = recv_from_peer(fe);
    assert!(
        got.frame == frame,
        "rx frame differs: {}",
        diff(frame, &got.frame)
    );
    assert_eq!(
        got.hdr.gso_type,
        u8::try_from(VIRTIO_NET_HDR_GSO_NONE).expect("GSO types fit a byte"),
        "a plain frame came with GSO"
    );
    got
}

fn tx_reaches_the_tap(opts: &FrontendOptions) {
    let Some(mut lab) = Lab::start(&[]) else {
        return;
    };
    let mut fe = lab.connect(opts);
    let sock = lab.tap_socket();
    for (seed, len) in [(1, 60), (2, 1000), (3, 1514)] {
        send_and_expect(&mut fe, &sock, &guest_frame(len, seed), &[]);
    }
    // Three descriptors: the header alone, then the frame in two parts.
    let f = guest_frame(1000, 4);
    send_and_expect(&mut fe, &sock, &f, &[HDR_LEN, 300, f.len() - 300]);
    // Three descriptors with the header cut across the first two (VERSION_1: any layout).
    let f = guest_frame(1000, 5);
    send_and_expect(&mut fe, &sock, &f, &[8, 300, HDR_LEN + f.len() - 308]);
    lab.assert_running();
}

#[test]
fn guest_frames_reach_the_tap_byte_exact() {
    tx_reaches_the_tap(&opts(true, false));
}

#[test]
fn guest_frames_reach_the_tap_with_event_idx_and_two_memory_regions() {
    let mut o = opts(true, true);
    o.memory = MemoryLayout {
        size: 64 << 20,
        regions: 2,
    };
    tx_reaches_the_tap(&o);
}

#[test]
fn tap_frames_reach_the_guest_in_mergeable_buffers() {
    let Some(mut lab) = Lab::start(&[]) else {
        return;
    };
    let mut o = opts(true, true);
    o.memory.regions = 2;
    let mut fe = lab.connect(&o);
    assert!(fe.has_feature(VIRTIO_NET_F_MRG_RXBUF));
    let sock = lab.tap_socket();
    fe.post_rx_buffers(64, 512).unwrap();
    for (seed, len) in [(11, 60), (12, 1000), (13, 1514)] {
        let got = inject_and_expect(&mut fe, &sock, &peer_frame(len, seed));
        assert_eq!(usize::from(got.hdr.num_buffers), got.buffers);
        let least = (HDR_LEN + len).div_ceil(512);
        assert!(
            got.buffers >= least,
            "{len}-byte frame in {} buffers of 512 B, needs {least}",
            got.buffers
        );
    }
    lab.assert_running();
}

#[test]
fn tap_frames_reach_the_guest_in_whole_frame_buffers_without_mrg_rxbuf() {
    let Some(mut lab) = Lab::start(&[]) else {
        return;
    };
    let mut fe = lab.connect(&opts(false, false));
    assert!(!fe.has_feature(VIRTIO_NET_F_MRG_RXBUF));
    let sock = lab.tap_socket();
    fe.post_rx_buffers(64, 2048).unwrap();
    for (seed, len) in [(21, 60), (22, 1000), (23, 1514)] {
        let got = inject_and_expect(&mut fe, &sock, &peer_frame(len, seed));
        assert_eq!(got.buffers, 1);
        // virtio 1.2 §5.1.6.4.1: without MRG_RXBUF the device MUST set num_buffers to 1.
        assert_eq!(got.hdr.num_buffers, 1, "num_buffers without MRG_RXBUF");
    }
    lab.assert_running();
}

#[test]
fn config_space_has_the_given_mac_and_mtu() {
    let Some(mut lab) = Lab::start(&["--mtu", "1400"]) else {
        return;
    };
    let o = opts(true, false)
        .with_feature(VIRTIO_NET_F_MAC, true)
        .with_feature(VIRTIO_NET_F_MTU, true);
    let mut fe = lab.connect(&o);
    let cfg = fe
        .get_config()
        .unwrap_or_else(|e| panic!("GET_CONFIG: {}", chain(&e)));
    assert_eq!(format_mac(cfg.mac), format_mac(GUEST_MAC));
    assert_eq!(cfg.mtu, 1400);
    lab.assert_running();
}

/// A bad chain the test builds in guest memory, given the frame it should carry.
type BuildBad = fn(&mut NetFrontend, &[u8]) -> Vec<RawDesc>;

/// Pushes the bad chain on tx; checks it comes back with length 0 and reaches nothing, and that
/// a good frame then still goes through on the same connection.
fn bad_tx_chain_is_dropped(
    extra: &[&str],
    opts: &FrontendOptions,
    frame_len: usize,
    build: BuildBad,
) {
    let Some(mut lab) = Lab::start(extra) else {
        return;
    };
    let mut fe = lab.connect(opts);
    let sock = lab.tap_socket();
    let bad = guest_frame(frame_len, 0xbd);
    let chain_descs = build(&mut fe, &bad);
    let head = fe
        .push_raw(QueueId::Tx, &chain_descs)
        .unwrap_or_else(|e| panic!("push the bad chain: {}", chain(&e)));
    let len = fe
        .wait_raw_used(QueueId::Tx, head, WAIT)
        .unwrap_or_else(|e| {
            panic!(
                "the bad chain was not returned to the used ring: {}",
                chain(&e)
            )
        });
    assert_eq!(len, 0, "used length of a dropped tx chain");
    lab.assert_running();

    let good = guest_frame(100, 0x60);
    fe.send(&good)
        .unwrap_or_else(|e| panic!("send after the bad chain: {}", chain(&e)));
    let others = expect_on_tap(&sock, &good);
    assert!(
        others.is_empty(),
        "the bad chain was forwarded to the TAP: {:?}",
        others.iter().map(|f| diff(&bad, f)).collect::<Vec<_>>()
    );
    fe.wait_tx_idle(WAIT)
        .unwrap_or_else(|e| panic!("tx chains not returned: {}", chain(&e)));
    lab.assert_running();
}

/// The 12-byte zero header in guest memory.
fn hdr_in_guest(fe: &mut NetFrontend) -> u64 {
    packet_in_guest(fe, &[])
}

/// `frame` in guest memory.
fn bytes_in_guest(fe: &mut NetFrontend, bytes: &[u8]) -> u64 {
    fe.alloc_guest(bytes.len() as u64, bytes)
        .expect("guest memory has room for test buffers")
        .0
}

/// Header and frame in one buffer.
fn packet_in_guest(fe: &mut NetFrontend, frame: &[u8]) -> u64 {
    fe.packet_in_guest(&NetHdr::default(), frame)
        .expect("guest memory has room for test buffers")
        .0
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).expect("test lengths fit 32 bits")
}

#[test]
fn tx_descriptor_outside_guest_memory_is_dropped() {
    bad_tx_chain_is_dropped(&[], &opts(true, false), 200, |fe, frame| {
        let h = hdr_in_guest(fe);
        linear(vec![
            RawDesc::readable(h, len32(HDR_LEN)),
            RawDesc::readable(1 << 40, len32(frame.len())),
        ])
    });
}

#[test]
fn tx_descriptor_straddling_the_end_of_guest_memory_is_dropped() {
    bad_tx_chain_is_dropped(&[], &opts(true, false), 200, |fe, frame| {
        let h = hdr_in_guest(fe);
        let end = fe.ram().end().0;
        linear(vec![
            RawDesc::readable(h, len32(HDR_LEN)),
            RawDesc::readable(end - 64, len32(frame.len())),
        ])
    });
}

#[test]
fn tx_looping_chain_is_dropped() {
    bad_tx_chain_is_dropped(&[], &opts(true, false), 200, |fe, frame| {
        let h = hdr_in_guest(fe);
        let f = bytes_in_guest(fe, frame);
        vec![
            RawDesc::readable(h, len32(HDR_LEN)).then(1),
            RawDesc::readable(f, len32(frame.len())).then(0),
        ]
    });
}

/// Queue size of the chain-length test: an indirect table of `SMALL_QUEUE + 1` entries.
const SMALL_QUEUE: u16 = 64;

/// An indirect table: the header, then `frame` in `pieces` equal parts; returns the chain
/// descriptor pointing at it.
fn indirect_chain(fe: &mut NetFrontend, frame: &[u8], pieces: usize) -> Vec<RawDesc> {
    let h = hdr_in_guest(fe);
    let f = bytes_in_guest(fe, frame);
    indirect_table(fe, h, f, frame.len(), pieces, 0)
}

/// An indirect table of `pieces + 1` entries, each with `extra_flags`: `HDR_LEN` bytes at `h`,
/// then `len` bytes at `f` in `pieces` equal parts; returns the chain descriptor pointing at it.
fn indirect_table(
    fe: &mut NetFrontend,
    h: u64,
    f: u64,
    len: usize,
    pieces: usize,
    extra_flags: u16,
) -> Vec<RawDesc> {
    assert_eq!(len % pieces, 0);
    let piece = len / pieces;
    let next = u16::try_from(VRING_DESC_F_NEXT).expect("flags fit 16 bits");
    let mut table = Vec::new();
    for i in 0..=pieces {
        let (addr, len) = if i == 0 {
            (h, HDR_LEN)
        } else {
            (f + ((i - 1) * piece) as u64, piece)
        };
        let last = i == pieces;
        let d = Desc {
            addr,
            len: len32(len),
            flags: extra_flags | if last { 0 } else { next },
            next: if last {
                0
            } else {
                u16::try_from(i + 1).expect("table index fits 16 bits")
            },
        };
        table.extend_from_slice(&d.to_bytes());
    }
    let t = bytes_in_guest(fe, &table);
    vec![RawDesc {
        flags: u16::try_from(VRING_DESC_F_INDIRECT).expect("flags fit 16 bits"),
        ..RawDesc::readable(t, len32(table.len()))
    }]
}

#[test]
fn tx_chain_longer_than_the_queue_is_dropped() {
    let mut o = opts(true, false).with_feature(VIRTIO_RING_F_INDIRECT_DESC, true);
    o.queue_size = SMALL_QUEUE;
    // Control: a short indirect chain goes through, so the drop below is about the length.
    if let Some(lab) = Lab::start(&[]) {
        let mut fe = lab.connect(&o);
        let sock = lab.tap_socket();
        let ok = guest_frame(256, 0x1d);
        let c = indirect_chain(&mut fe, &ok, 4);
        let head = fe.push_raw(QueueId::Tx, &c).unwrap();
        let others = expect_on_tap(&sock, &ok);
        assert!(others.is_empty());
        assert_eq!(fe.wait_raw_used(QueueId::Tx, head, WAIT).unwrap(), 0);
    }
    // Header + 64 pieces = 65 descriptors in one chain, on a queue of 64.
    bad_tx_chain_is_dropped(&[], &o, 64 * 4, |fe, frame| {
        indirect_chain(fe, frame, usize::from(SMALL_QUEUE))
    });
}

#[test]
fn tx_zero_length_descriptor_is_dropped() {
    bad_tx_chain_is_dropped(&[], &opts(true, false), 200, |fe, frame| {
        let h = hdr_in_guest(fe);
        let f = bytes_in_guest(fe, frame);
        linear(vec![
            RawDesc::readable(h, len32(HDR_LEN)),
            RawDesc::readable(f, 0),
            RawDesc::readable(f, len32(frame.len())),
        ])
    });
}

#[test]
fn tx_write_only_descriptor_is_dropped() {
    bad_tx_chain_is_dropped(&[], &opts(true, false), 200, |fe, frame| {
        let p = packet_in_guest(fe, frame);
        vec![RawDesc::writable(p, len32(HDR_LEN + frame.len()))]
    });
}

#[test]
fn tx_chain_with_a_write_only_frame_part_is_dropped() {
    bad_tx_chain_is_dropped(&[], &opts(true, false), 200, |fe, frame| {
        let h = hdr_in_guest(fe);
        let f = bytes_in_guest(fe, frame);
        linear(vec![
            RawDesc::readable(h, len32(HDR_LEN)),
            RawDesc::writable(f, len32(frame.len())),
        ])
    });
}

#[test]
fn tx_frame_longer_than_the_mtu_is_dropped() {
    // 3000 bytes, no GSO in the header, MTU 1500.
    bad_tx_chain_is_dropped(&["--mtu", "1500"], &opts(true, false), 3000, |fe, frame| {
        let p = packet_in_guest(fe, frame);
        vec![RawDesc::readable(p, len32(HDR_LEN + frame.len()))]
    });
}

/// One frame each way on a fresh connection.
fn traffic_both_ways(lab: &Lab, sock: &PacketSocket, seed: u8) -> NetFrontend {
    let mut fe = lab.connect(&opts(true, true));
    fe.post_rx_buffers(32, 2048)
        .unwrap_or_else(|e| panic!("post rx buffers: {}", chain(&e)));
    send_and_expect(&mut fe, sock, &guest_frame(500, seed), &[]);
    inject_and_expect(&mut fe, sock, &peer_frame(500, seed));
    fe
}

#[test]
fn a_new_front_end_is_served_after_each_disconnect() {
    let Some(mut lab) = Lab::start(&[]) else {
        return;
    };
    let sock = lab.tap_socket();
    // A clean stop first (GET_VRING_BASE on both rings, as QEMU does), then an abrupt one.
    let fe = traffic_both_ways(&lab, &sock, 31);
    let (rx_base, tx_base) = fe
        .close()
        .unwrap_or_else(|e| panic!("GET_VRING_BASE: {}", chain(&e)));
    assert_eq!(tx_base, 1, "tx ring consumed one chain");
    assert!(rx_base >= 1, "rx ring consumed at least one buffer");
    lab.assert_running();

    let fe = traffic_both_ways(&lab, &sock, 32);
    drop(fe);
    lab.assert_running();

    let _fe = traffic_both_ways(&lab, &sock, 33);
    lab.assert_running();
}

#[test]
fn features_offered_include_the_contract() {
    let Some(mut lab) = Lab::start(&[]) else {
        return;
    };
    let fe = lab.connect(&opts(true, true));
    let offered = fe.offered_features();
    for bit in [
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MTU,
    ] {
        assert!(offered & feature(bit) != 0, "feature bit {bit} not offered");
    }
    lab.assert_running();
}

#[test]
fn sigterm_with_a_front_end_connected_exits_0_and_removes_the_socket() {
    let Some(mut lab) = Lab::start(&[]) else {
        return;
    };
    let sock = lab.tap_socket();
    let _fe = traffic_both_ways(&lab, &sock, 41);
    lab.daemon.signal(libc::SIGTERM);
    assert_eq!(
        lab.daemon.wait_exit(WAIT),
        Some(0),
        "exit status after SIGTERM"
    );
    assert!(!lab.sock.exists(), "the socket file is still there");
}

#[test]
fn tx_chain_shorter_than_the_header_is_dropped() {
    bad_tx_chain_is_dropped(&[], &opts(true, false), 200, |fe, _frame| {
        let h = hdr_in_guest(fe);
        vec![RawDesc::readable(h, 6)]
    });
}

#[test]
fn tx_gso_frame_without_negotiated_tso_is_dropped() {
    // HOST_TSO4 is not acknowledged, yet the header asks for TCPv4 segmentation.
    bad_tx_chain_is_dropped(&[], &opts(true, false), 3000, |fe, frame| {
        let hdr = NetHdr {
            gso_type: u8::try_from(VIRTIO_NET_HDR_GSO_TCPV4).expect("GSO types fit a byte"),
            gso_size: 1448,
            hdr_len: 54,
            ..NetHdr::default()
        };
        let mut b = hdr.to_bytes().to_vec();
        b.extend_from_slice(frame);
        let p = bytes_in_guest(fe, &b);
        vec![RawDesc::readable(p, len32(b.len()))]
    });
}

/// A bad chain the test builds on the rx queue; returns it and the guest range to check
/// untouched afterwards.
type BuildBadRx = fn(&mut NetFrontend) -> (Vec<RawDesc>, Option<(u64, usize)>);

/// Byte the untouched ranges are filled with.
const CANARY: u8 = 0xa5;

/// Offers a bad rx chain before good buffers; checks the next frame lands intact in a good
/// buffer, the bad chain comes back with length 0, and its memory was not written.
fn bad_rx_chain_is_returned_unused(opts: &FrontendOptions, build: BuildBadRx) {
    let Some(mut lab) = Lab::start(&[]) else {
        return;
    };
    let mut fe = lab.connect(opts);
    let sock = lab.tap_socket();
    let (bad, canary) = build(&mut fe);
    let head = fe
        .push_raw(QueueId::Rx, &bad)
        .unwrap_or_else(|e| panic!("push the bad chain: {}", chain(&e)));
    fe.post_rx_buffers(8, 2048)
        .unwrap_or_else(|e| panic!("post rx buffers: {}", chain(&e)));
    let first = peer_frame(300, 0x51);
    sock.send(&first).expect("send on the TAP");
    let len = fe
        .wait_raw_used(QueueId::Rx, head, WAIT)
        .unwrap_or_else(|e| panic!("the bad rx chain was not returned: {}", chain(&e)));
    assert_eq!(len, 0, "the daemon wrote into an rx chain it had to refuse");
    let got = recv_from_peer(&mut fe);
    assert!(
        got.frame == first,
        "rx frame differs: {}",
        diff(&first, &got.frame)
    );
    if let Some((addr, n)) = canary {
        let mut back = vec![0u8; n];
        fe.ram()
            .read(GuestAddress(addr), &mut back)
            .expect("read back guest memory");
        assert!(
            back.iter().all(|b| *b == CANARY),
            "the daemon wrote into a buffer it had to refuse"
        );
    }
    inject_and_expect(&mut fe, &sock, &peer_frame(300, 0x52));
    lab.assert_running();
}

/// `n` canary bytes in guest memory.
fn canary_in_guest(fe: &mut NetFrontend, n: usize) -> u64 {
    bytes_in_guest(fe, &vec![CANARY; n])
}

#[test]
fn rx_read_only_buffer_is_returned_unused_and_unwritten() {
    bad_rx_chain_is_returned_unused(&opts(true, false), |fe| {
        let a = canary_in_guest(fe, 2048);
        (vec![RawDesc::readable(a, 2048)], Some((a, 2048)))
    });
}

#[test]
fn rx_buffer_outside_guest_memory_is_returned_unused() {
    bad_rx_chain_is_returned_unused(&opts(true, false), |_fe| {
        (vec![RawDesc::writable(1 << 40, 2048)], None)
    });
}

#[test]
fn rx_zero_length_buffer_is_returned_unused() {
    bad_rx_chain_is_returned_unused(&opts(true, false), |fe| {
        let a = canary_in_guest(fe, 2048);
        (
            linear(vec![RawDesc::writable(a, 0), RawDesc::writable(a, 2048)]),
            Some((a, 2048)),
        )
    });
}

#[test]
fn rx_looping_chain_is_returned_unused() {
    bad_rx_chain_is_returned_unused(&opts(true, false), |fe| {
        let a = canary_in_guest(fe, 2048);
        (
            vec![
                RawDesc::writable(a, 8).then(1),
                RawDesc::writable(a + 8, 2040).then(0),
            ],
            None,
        )
    });
}

#[test]
fn bursts_each_way_with_event_idx_lose_nothing() {
    let Some(mut lab) = Lab::start(&[]) else {
        return;
    };
    let mut fe = lab.connect(&opts(true, true));
    let sock = lab.tap_socket();
    fe.post_rx_buffers(128, 2048)
        .unwrap_or_else(|e| panic!("post rx buffers: {}", chain(&e)));
    for burst in 0u8..8 {
        let frames: Vec<Vec<u8>> = (0u8..32)
            .map(|i| guest_frame(60 + 37 * usize::from(i), burst * 32 + i))
            .collect();
        for f in &frames {
            fe.send(f).unwrap_or_else(|e| panic!("send: {}", chain(&e)));
        }
        for f in &frames {
            let others = expect_on_tap(&sock, f);
            assert!(others.is_empty(), "burst {burst}: frames lost or reordered");
        }
    }
    fe.wait_tx_idle(WAIT)
        .unwrap_or_else(|e| panic!("tx chains not returned: {}", chain(&e)));
    for burst in 0u8..8 {
        let frames: Vec<Vec<u8>> = (0u8..32)
            .map(|i| peer_frame(60 + 37 * usize::from(i), burst * 32 + i))
            .collect();
        for f in &frames {
            sock.send(f).expect("send on the TAP");
        }
        for f in &frames {
            let got = recv_from_peer(&mut fe);
            assert!(got.frame == *f, "burst {burst}: {}", diff(f, &got.frame));
        }
    }
    lab.assert_running();
}

#[test]
fn rx_chain_longer_than_the_queue_is_returned_unused() {
    let mut o = opts(true, false).with_feature(VIRTIO_RING_F_INDIRECT_DESC, true);
    o.queue_size = SMALL_QUEUE;
    bad_rx_chain_is_returned_unused(&o, |fe| {
        // 1 + 64 writable entries of 32 bytes on a queue of 64.
        let pieces = usize::from(SMALL_QUEUE);
        let n = HDR_LEN + 32 * pieces;
        let a = canary_in_guest(fe, n);
        let write = u16::try_from(VRING_DESC_F_WRITE).expect("flags fit 16 bits");
        let chain = indirect_table(fe, a, a + HDR_LEN as u64, 32 * pieces, pieces, write);
        (chain, Some((a, n)))
    });
}

/// CPU time (user + system, all threads) the process `pid` has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let after = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| fields[n - 3].parse::<u64>().expect("numeric stat field");
    field(14) + field(15)
}

#[test]
fn without_rx_buffers_the_port_keeps_frames_and_the_daemon_sleeps() {
    let Some(mut lab) = Lab::start(&[]) else {
        return;
    };
    let mut fe = lab.connect(&opts(true, true));
    let sock = lab.tap_socket();
    // The guest has posted no rx buffer yet: these frames must wait in the port.
    let frames: Vec<Vec<u8>> = (0..20).map(|seed| peer_frame(200, seed)).collect();
    for f in &frames {
        sock.send(f).expect("send on the TAP");
    }
    // A measured window, not a wait: a worker that polls the port would burn it all
    // (about 200 ticks at the usual 100 Hz).
    let before = cpu_ticks(lab.daemon.pid());
    thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks(lab.daemon.pid()) - before;
    assert!(
        spent < 20,
        "the daemon used {spent} clock ticks in 2 s with frames waiting and no rx buffer: it spins"
    );
    fe.post_rx_buffers(64, 2048).unwrap();
    for want in &frames {
        let got = recv_from_peer(&mut fe);
        assert!(
            got.frame == *want,
            "kept frame differs: {}",
            diff(want, &got.frame)
        );
    }
    lab.assert_running();
}
