//! `vu-frontend`: a vhost-user virtio-net front-end on the command line, standing in for QEMU
//! and a guest driver in front of the vhost-vf daemon (on a host, or inside the lab guest).
//! Output is one `key=value` event per line on stdout as it happens; errors go to stderr and
//! the exit code is 1.
//!
//!   vu-frontend send SOCKET --dst MAC --count N [--src MAC] [--size 60] [--csum]
//!   vu-frontend recv SOCKET --count N [--buf-size 4096] [--timeout 60] [--print] [--no-mrg]
//!   vu-frontend malicious SOCKET --dst MAC --count N   # bad tx chains, then good frames
//!   vu-frontend memchange SOCKET --dst MAC --count N   # ADD/REM_MEM_REG under traffic
//!   vu-frontend stop SOCKET --dst MAC --count N        # GET_VRING_BASE with frames in flight
//!   vu-frontend rate SOCKET --dst MAC [--size 60] --duration SECS
//!   vu-frontend watch-config SOCKET [--duration 30]    # config-change notifications
//!
//! Every subcommand first prints `connected features=0x.. protocol_features=0x..` (what was
//! acknowledged). `watch-config` then prints `backend-channel inode=N` (the socket it gave the
//! back-end with SET_BACKEND_REQ_FD, as `/proc/PID/fd` names it: `socket:[N]`), the config space
//! as `config mac=MAC status=N link=up|down`, and for each CONFIG_CHANGE_MSG on the back-end
//! channel `config-change` and a fresh `config` line; any other back-end request shows as
//! `backend-request request=N size=N` (answered as unsupported); `done` when the time is up.
//! Frames sent are `vhost_vf_tools::vf_frames` test frames, so that the far side can rebuild
//! them byte for byte.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use vhost_vf_tools::frontend::{
    self, BackendEvent, FrontendOptions, GuestAddress, GuestRam, HDR_LEN, NetFrontend, NetHdr,
    PAGE_SIZE, QueueId, REGION_STRIDE, RawDesc, RxFrame, TxBuffer, TxSlot, feature, format_mac,
    linear, parse_mac,
};
use vhost_vf_tools::vf_frames::{
    ETH_HLEN, SEQ_OFFSET, UDP_CSUM_OFFSET, UDP_CSUM_START, test_frame, udp_partial_csum,
    udp_test_frame,
};
use vhost_vf_tools::vhost::vhost_user::VhostUserProtocolFeatures;
use vhost_vf_tools::virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
};
use vhost_vf_tools::virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

#[derive(Parser)]
#[command(
    name = "vu-frontend",
    version,
    about = "A vhost-user virtio-net front-end for tests and benchmarks (stands in for QEMU and a guest)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send numbered test frames, many in flight, and wait until every one is used.
    Send {
        /// The back-end's vhost-user socket.
        socket: PathBuf,
        /// Destination MAC.
        #[arg(long)]
        dst: Mac,
        /// Source MAC. Default: the config space's MAC if the back-end offers
        /// VIRTIO_NET_F_MAC, else 02:00:00:00:00:01.
        #[arg(long)]
        src: Option<Mac>,
        /// Frames to send.
        #[arg(long)]
        count: u32,
        /// Frame length in bytes, without FCS.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u16).range(60..))]
        size: u16,
        /// Send UDP/IPv4 frames whose checksum the device must finish
        /// (VIRTIO_NET_HDR_F_NEEDS_CSUM); needs VIRTIO_NET_F_CSUM.
        #[arg(long)]
        csum: bool,
        /// Send each frame as a chain of three descriptors (header, Ethernet header, the
        /// rest), one frame at a time.
        #[arg(long, conflicts_with = "csum")]
        split: bool,
    },
    /// Post rx buffers and receive frames.
    Recv {
        /// The back-end's vhost-user socket.
        socket: PathBuf,
        /// Frames to receive.
        #[arg(long)]
        count: u64,
        /// Bytes of each rx buffer.
        #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(64..=65536))]
        buf_size: u32,
        /// Seconds to wait for all frames.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Print each frame: `frame len= dst= src= buffers= data=HEX`.
        #[arg(long)]
        print: bool,
        /// Do not negotiate VIRTIO_NET_F_MRG_RXBUF: every frame must fit one buffer.
        #[arg(long)]
        no_mrg: bool,
    },
    /// Push malformed tx chains one at a time and check each comes back used with length 0,
    /// then send good frames as `send` does.
    Malicious {
        /// The back-end's vhost-user socket.
        socket: PathBuf,
        /// Destination MAC of the good frames.
        #[arg(long)]
        dst: Mac,
        /// Good frames to send after the bad chains.
        #[arg(long)]
        count: u32,
    },
    /// Send frames while moving the tx buffers from one added memory region to another
    /// (ADD_MEM_REG), then remove the first (REM_MEM_REG) once no chain uses it.
    Memchange {
        /// The back-end's vhost-user socket.
        socket: PathBuf,
        /// Destination MAC.
        #[arg(long)]
        dst: Mac,
        /// Frames to send in all.
        #[arg(long)]
        count: u32,
    },
    /// Queue numbered frames (at most a ring's worth), kick, and stop the tx ring at once with
    /// GET_VRING_BASE, as QEMU does when a VM stops: prints `queued=N base=B used=U`. A
    /// back-end that finishes or gives back what is in flight answers B = U.
    Stop {
        /// The back-end's vhost-user socket.
        socket: PathBuf,
        /// Destination MAC.
        #[arg(long)]
        dst: Mac,
        /// Frames to queue.
        #[arg(long)]
        count: u32,
    },
    /// Send as fast as possible for a while and report the rate.
    Rate {
        /// The back-end's vhost-user socket.
        socket: PathBuf,
        /// Destination MAC.
        #[arg(long)]
        dst: Mac,
        /// Frame length in bytes, without FCS.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u16).range(60..))]
        size: u16,
        /// Seconds to send for.
        #[arg(long)]
        duration: u64,
    },
    /// Set up the back-end channel (SET_BACKEND_REQ_FD), print the config space, and print it
    /// again on each config-change notification the back-end sends, for a while.
    WatchConfig {
        /// The back-end's vhost-user socket.
        socket: PathBuf,
        /// Seconds to watch for.
        #[arg(long, default_value_t = 30)]
        duration: u64,
    },
}

/// A MAC address argument, `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, Debug)]
struct Mac([u8; 6]);

impl FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_mac(s)
            .map(Mac)
            .ok_or_else(|| format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))
    }
}

/// Why a subcommand failed.
#[derive(Debug, thiserror::Error)]
enum CliError {
    /// The vhost-user session could not be set up.
    #[error("cannot set up a virtio-net device over {path}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: frontend::Error,
    },
    /// `--csum` without VIRTIO_NET_F_CSUM on offer.
    #[error(
        "--csum needs VIRTIO_NET_F_CSUM, which the back-end does not offer (offered {offered:#x}): its port cannot finish partial checksums"
    )]
    CsumNotOffered {
        /// Feature bits offered.
        offered: u64,
    },
    /// A protocol feature the subcommand needs was not negotiated.
    #[error(
        "the back-end does not offer VHOST_USER_PROTOCOL_F_{name} (negotiated {negotiated:#x}), which {why}"
    )]
    ProtocolFeatureMissing {
        /// The feature, as the spec names it after the prefix.
        name: &'static str,
        /// Why the subcommand needs it.
        why: &'static str,
        /// Protocol features negotiated.
        negotiated: u64,
    },
    /// GET_MAX_MEM_SLOTS leaves no room for the regions the test adds.
    #[error("the back-end takes {max} memory regions, the memory-change test needs {needed}")]
    TooFewMemSlots {
        /// GET_MAX_MEM_SLOTS.
        max: u64,
        /// Regions needed at once.
        needed: u64,
    },
    /// A front-end operation failed.
    #[error("{what} failed")]
    Frontend {
        /// The operation.
        what: &'static str,
        /// The cause.
        #[source]
        source: frontend::Error,
    },
    /// A bad chain could not be pushed, or did not come back.
    #[error("bad tx chain {case}")]
    BadChain {
        /// The case name.
        case: &'static str,
        /// The cause.
        #[source]
        source: frontend::Error,
    },
    /// Bad chains came back with a used length other than 0.
    #[error("bad tx chains came back with a non-zero used length: {cases:?}")]
    BadChainsUsed {
        /// Names of the failing cases.
        cases: Vec<&'static str>,
    },
    /// `recv` timed out.
    #[error("only {got} of {count} frames arrived within {timeout:?}")]
    TooFewFrames {
        /// Frames received.
        got: u64,
        /// Frames expected.
        count: u64,
        /// The deadline.
        timeout: Duration,
    },
}

/// Wraps a front-end error with the operation it failed.
fn ctx(what: &'static str) -> impl FnOnce(frontend::Error) -> CliError {
    move |source| CliError::Frontend { what, source }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut message = format!("vu-frontend: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message.push_str(": ");
                message.push_str(&cause.to_string());
                source = cause.source();
            }
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Send {
            socket,
            dst,
            src,
            count,
            size,
            csum,
            split,
        } => send(&socket, dst.0, src, count, usize::from(size), csum, split),
        Command::Recv {
            socket,
            count,
            buf_size,
            timeout,
            print,
            no_mrg,
        } => recv(
            &socket,
            count,
            buf_size,
            Duration::from_secs(timeout),
            print,
            !no_mrg,
        ),
        Command::Malicious { socket, dst, count } => malicious(&socket, dst.0, count),
        Command::Memchange { socket, dst, count } => memchange(&socket, dst.0, count),
        Command::Stop { socket, dst, count } => stop(&socket, dst.0, count),
        Command::Rate {
            socket,
            dst,
            size,
            duration,
        } => rate(
            &socket,
            dst.0,
            usize::from(size),
            Duration::from_secs(duration),
        ),
        Command::WatchConfig { socket, duration } => {
            watch_config(&socket, Duration::from_secs(duration))
        }
    }
}

/// Source MAC when neither `--src` nor the config space gives one (locally administered).
const DEFAULT_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// Feature bits taken whenever offered, as a Linux guest takes them: EVENT_IDX changes how
/// both sides notify, MAC gives the default source address.
const OPTIONAL_FEATURES: u64 = feature(VIRTIO_RING_F_EVENT_IDX) | feature(VIRTIO_NET_F_MAC);

/// The set-up every subcommand starts from, with tx slots that hold `frame_len`-byte frames.
fn options(frame_len: usize) -> FrontendOptions {
    let defaults = FrontendOptions::default();
    let packet = u32::try_from((HDR_LEN + frame_len).next_multiple_of(64))
        .expect("frame lengths are u16 values");
    FrontendOptions {
        optional_features: OPTIONAL_FEATURES,
        tx_slot_size: defaults.tx_slot_size.max(packet),
        ..defaults
    }
}

/// Connects and reports what was negotiated.
fn connect(socket: &Path, opts: &FrontendOptions) -> Result<NetFrontend, CliError> {
    let fe = NetFrontend::connect(socket, opts).map_err(|source| CliError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    println!(
        "connected features={:#x} protocol_features={:#x}",
        fe.acked_features(),
        fe.protocol_features().bits()
    );
    Ok(fe)
}

/// Fails unless protocol feature `flag` was negotiated.
fn require_protocol(
    fe: &NetFrontend,
    flag: VhostUserProtocolFeatures,
    name: &'static str,
    why: &'static str,
) -> Result<(), CliError> {
    if fe.protocol_features().contains(flag) {
        return Ok(());
    }
    Err(CliError::ProtocolFeatureMissing {
        name,
        why,
        negotiated: fe.protocol_features().bits(),
    })
}

/// `given`, else the config space's MAC when the device has one, else [`DEFAULT_SRC`].
fn source_mac(fe: &mut NetFrontend, given: Option<Mac>) -> Result<[u8; 6], CliError> {
    if let Some(Mac(mac)) = given {
        return Ok(mac);
    }
    let readable = fe.has_feature(VIRTIO_NET_F_MAC)
        && fe
            .protocol_features()
            .contains(VhostUserProtocolFeatures::CONFIG);
    if !readable {
        return Ok(DEFAULT_SRC);
    }
    let config = fe
        .get_config()
        .map_err(ctx("reading the device MAC (GET_CONFIG)"))?;
    Ok(config.mac)
}

/// Descriptors that must be free before the next batch is queued: a quarter of the ring, so
/// that a kick carries many frames while the device still has plenty to work on.
fn refill_batch(fe: &NetFrontend) -> usize {
    (usize::from(fe.queue(QueueId::Tx).ring().size()) / 4).max(1)
}

/// Sends frames 0..`count`, `write` putting frame `seq` (header first) into the slot it is
/// given; keeps the ring full, kicks once per batch, and returns once every chain is used.
fn pump(
    fe: &mut NetFrontend,
    count: u32,
    timeout: Duration,
    mut write: impl FnMut(&GuestRam, TxSlot, u32) -> Result<TxBuffer, frontend::Error>,
) -> Result<(), frontend::Error> {
    let batch = refill_batch(fe);
    let mut seq = 0;
    while seq < count {
        while seq < count && fe.tx_free() > 0 {
            fe.tx_queue(|ram, slot| write(ram, slot, seq))?;
            seq += 1;
        }
        fe.tx_kick()?;
        fe.wait_tx_free(batch, timeout)?;
    }
    fe.wait_tx_idle(timeout)
}

/// Sends `count` numbered [`test_frame`]s from `src` to `dst`.
fn send_test_frames(
    fe: &mut NetFrontend,
    dst: [u8; 6],
    src: [u8; 6],
    count: u32,
    size: usize,
    timeout: Duration,
) -> Result<(), CliError> {
    let hdr = NetHdr::default();
    pump(fe, count, timeout, |ram, slot, seq| {
        slot.write_packet(ram, &hdr, &test_frame(dst, src, size, seq))
    })
    .map_err(ctx("sending the test frames"))
}

fn stop(socket: &Path, dst: [u8; 6], count: u32) -> Result<(), CliError> {
    let opts = options(60);
    let mut fe = connect(socket, &opts)?;
    let src = source_mac(&mut fe, None)?;
    let hdr = NetHdr::default();
    let mut queued = 0;
    while queued < count && fe.tx_free() > 0 {
        fe.tx_queue(|ram, slot| slot.write_packet(ram, &hdr, &test_frame(dst, src, 60, queued)))
            .map_err(ctx("queueing a test frame"))?;
        queued += 1;
    }
    fe.tx_kick().map_err(ctx("kicking the tx queue"))?;
    let base = fe
        .get_vring_base(QueueId::Tx)
        .map_err(ctx("stopping the tx queue"))?;
    let used = fe
        .queue(QueueId::Tx)
        .ring()
        .used_idx(fe.ram())
        .map_err(ctx("reading the used index"))?;
    println!("queued={queued} base={base} used={used}");
    Ok(())
}

fn send(
    socket: &Path,
    dst: [u8; 6],
    src: Option<Mac>,
    count: u32,
    size: usize,
    csum: bool,
    split: bool,
) -> Result<(), CliError> {
    let mut opts = options(size);
    if csum {
        opts.optional_features |= feature(VIRTIO_NET_F_CSUM);
    }
    let mut fe = connect(socket, &opts)?;
    if csum && !fe.has_feature(VIRTIO_NET_F_CSUM) {
        return Err(CliError::CsumNotOffered {
            offered: fe.offered_features(),
        });
    }
    let src = source_mac(&mut fe, src)?;
    if csum {
        let hdr = NetHdr {
            flags: u8::try_from(VIRTIO_NET_HDR_F_NEEDS_CSUM).expect("header flags are one byte"),
            csum_start: u16::try_from(UDP_CSUM_START).expect("34 fits"),
            csum_offset: u16::try_from(UDP_CSUM_OFFSET).expect("6 fits"),
            ..NetHdr::default()
        };
        pump(&mut fe, count, opts.timeout, |ram, slot, seq| {
            // What Linux hands a NEEDS_CSUM device: the pseudo-header sum in the UDP checksum.
            let mut frame = udp_test_frame(dst, src, size, seq);
            udp_partial_csum(&mut frame);
            slot.write_packet(ram, &hdr, &frame)
        })
        .map_err(ctx("sending the UDP test frames"))?;
    } else if split {
        let segments = [HDR_LEN, ETH_HLEN, size - ETH_HLEN];
        for seq in 0..count {
            fe.send_split(
                &NetHdr::default(),
                &test_frame(dst, src, size, seq),
                &segments,
            )
            .map_err(ctx("sending a split test frame"))?;
        }
        fe.wait_tx_idle(opts.timeout)
            .map_err(ctx("waiting for the split frames"))?;
    } else {
        send_test_frames(&mut fe, dst, src, count, size, opts.timeout)?;
    }
    println!("sent={count}");
    Ok(())
}

fn recv(
    socket: &Path,
    count: u64,
    buf_size: u32,
    timeout: Duration,
    print: bool,
    mrg: bool,
) -> Result<(), CliError> {
    let mut opts = options(0).with_feature(VIRTIO_NET_F_MRG_RXBUF, mrg);
    opts.rx_slot_size = opts.rx_slot_size.max(buf_size);
    let mut fe = connect(socket, &opts)?;
    let free = fe.queue(QueueId::Rx).ring().free_count();
    fe.post_rx_buffers(free, buf_size)
        .map_err(ctx("posting rx buffers"))?;
    println!("ready");
    let deadline = Instant::now() + timeout;
    let mut got = 0;
    while got < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match fe.recv_frame(left) {
            Ok(rx) => {
                if print {
                    println!("{}", frame_line(&rx));
                }
                got += 1;
            }
            Err(frontend::Error::Timeout { .. }) => break,
            Err(source) => return Err(ctx("receiving a frame")(source)),
        }
    }
    println!("received={got}");
    if got < count {
        return Err(CliError::TooFewFrames {
            got,
            count,
            timeout,
        });
    }
    Ok(())
}

/// `frame len=L dst=MAC src=MAC buffers=NUM_BUFFERS data=HEX`, the addresses `-` when the frame
/// is too short to hold them.
fn frame_line(rx: &RxFrame) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let f = &rx.frame;
    let mac = |at: usize| {
        f.get(at..at + 6)
            .and_then(|b| <[u8; 6]>::try_from(b).ok())
            .map_or_else(|| "-".to_string(), format_mac)
    };
    let mut line = format!(
        "frame len={} dst={} src={} buffers={} data=",
        f.len(),
        mac(0),
        mac(6),
        rx.hdr.num_buffers
    );
    line.reserve(2 * f.len());
    for b in f {
        line.push(char::from(HEX[usize::from(b >> 4)]));
        line.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    line
}

/// Where the bad chains point.
mod bad {
    /// The top MiB of a 48-bit IOVA space: where a back-end may keep its own DMA memory (rings,
    /// bounce buffers) outside every guest region, so a guest must never reach it.
    pub const IOMMU_TOP: u64 = (1 << 48) - (1 << 20);
    /// With [`WRAP_LEN`], a range that wraps around 2^64 to end at 0x1000, inside guest
    /// memory: a bounds check done in wrapping arithmetic would let it through.
    pub const WRAP_ADDR: u64 = 0u64.wrapping_sub(0x1000);
    /// See [`WRAP_ADDR`].
    pub const WRAP_LEN: u32 = 0x2000;
    /// A length far beyond guest memory, for a buffer that starts inside it.
    pub const HUGE_LEN: u32 = 0xffff_fff0;
    /// Alignment of the "above every region" address: clear of the last region.
    pub const ABOVE_ALIGN: u64 = 1 << 30;
    /// Sequence number of the frame the bad chains carry: never one of the good frames.
    pub const SEQ: u32 = u32::MAX;
}

/// A malformed tx chain, named as `case=` prints it.
struct BadCase {
    name: &'static str,
    chain: Vec<RawDesc>,
}

/// The bad chains, carrying `frame` where they point into guest memory at all.
fn bad_cases(fe: &mut NetFrontend, frame: &[u8]) -> Result<Vec<BadCase>, frontend::Error> {
    let hdr = NetHdr::default();
    let packet = fe.packet_in_guest(&hdr, frame)?.0;
    let header_alone = fe.packet_in_guest(&hdr, &[])?.0;
    let packet_len = u32::try_from(HDR_LEN + frame.len()).expect("a 60-byte frame");
    let frame_len = u32::try_from(frame.len()).expect("a 60-byte frame");
    let hdr_len = u32::try_from(HDR_LEN).expect("12 fits");
    let above = fe.ram().end().0.next_multiple_of(bad::ABOVE_ALIGN);
    let case = |name, chain| BadCase { name, chain };
    Ok(vec![
        case("outside_memory", vec![RawDesc::readable(above, packet_len)]),
        case(
            "iommu_top",
            vec![RawDesc::readable(bad::IOMMU_TOP, packet_len)],
        ),
        case(
            "wrapping_address",
            vec![RawDesc::readable(bad::WRAP_ADDR, bad::WRAP_LEN)],
        ),
        case(
            "huge_length",
            vec![RawDesc::readable(packet, bad::HUGE_LEN)],
        ),
        case(
            "second_outside",
            linear(vec![
                RawDesc::readable(header_alone, hdr_len),
                RawDesc::readable(above, frame_len),
            ]),
        ),
        case("write_only", vec![RawDesc::writable(packet, packet_len)]),
    ])
}

fn malicious(socket: &Path, dst: [u8; 6], count: u32) -> Result<(), CliError> {
    const SIZE: usize = 60;
    let opts = options(SIZE);
    let mut fe = connect(socket, &opts)?;
    let src = source_mac(&mut fe, None)?;
    let cases = bad_cases(&mut fe, &test_frame(dst, src, SIZE, bad::SEQ))
        .map_err(ctx("placing the bad chains' buffers in guest memory"))?;
    let mut accepted = Vec::new();
    for BadCase { name, chain } in cases {
        let bad_chain = |source| CliError::BadChain { case: name, source };
        // One at a time: each used length is then the back-end's verdict on that chain alone.
        let head = fe.push_raw(QueueId::Tx, &chain).map_err(bad_chain)?;
        let used_len = fe
            .wait_raw_used(QueueId::Tx, head, opts.timeout)
            .map_err(bad_chain)?;
        println!("case={name} used_len={used_len}");
        if used_len != 0 {
            accepted.push(name);
        }
    }
    send_test_frames(&mut fe, dst, src, count, SIZE, opts.timeout)?;
    println!("sent={count}");
    if !accepted.is_empty() {
        return Err(CliError::BadChainsUsed { cases: accepted });
    }
    Ok(())
}

/// Where `memchange` stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MemPhase {
    /// Tx buffers in region A.
    InA,
    /// Region B added, new buffers there; chains submitted before `mark` may still use A.
    Draining {
        /// [`NetFrontend::tx_submitted`] when B took over.
        mark: u64,
    },
    /// Region A removed, buffers in B.
    InB,
}

fn memchange(socket: &Path, dst: [u8; 6], count: u32) -> Result<(), CliError> {
    /// Frame length.
    const SIZE: usize = 60;
    /// Guest bytes per tx buffer in an added region: buffer `d` belongs to descriptor `d`.
    const STRIDE: u32 = 2048;
    let mut opts = options(SIZE);
    opts.protocol_features |= VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
    let mut fe = connect(socket, &opts)?;
    require_protocol(
        &fe,
        VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
        "CONFIGURE_MEM_SLOTS",
        "ADD_MEM_REG and REM_MEM_REG need",
    )?;
    require_protocol(
        &fe,
        VhostUserProtocolFeatures::REPLY_ACK,
        "REPLY_ACK",
        "tells when the back-end has mapped a new region, so chains may point into it",
    )?;
    let max = fe
        .max_mem_slots()
        .map_err(ctx("asking for the memory slots (GET_MAX_MEM_SLOTS)"))?;
    println!("max_mem_slots={max}");
    let base_regions = fe.ram().region_infos().map_err(ctx("listing regions"))?;
    // The first regions, A, and B (added before A goes).
    let needed = base_regions.len() as u64 + 2;
    if max < needed {
        return Err(CliError::TooFewMemSlots { max, needed });
    }
    let src = source_mac(&mut fe, None)?;

    let ring = fe.queue(QueueId::Tx).ring().size();
    let region_size = (u64::from(ring) * u64::from(STRIDE)).next_multiple_of(PAGE_SIZE);
    let region_a = GuestAddress(fe.ram().end().0.next_multiple_of(REGION_STRIDE));
    let region_b = GuestAddress(region_a.0 + REGION_STRIDE);
    fe.add_mem_region(region_a, region_size)
        .map_err(ctx("adding region A (ADD_MEM_REG)"))?;
    println!("added region gpa={:#x} size={region_size}", region_a.0);

    // A third of the frames from A, the rest from B, with A removed as soon as none of its
    // chains is in flight while B's keep going.
    let switch_at = count / 3;
    let batch = refill_batch(&fe);
    let hdr = NetHdr::default();
    let mut phase = MemPhase::InA;
    let mut seq = 0;
    loop {
        let (region, limit) = match phase {
            MemPhase::InA => (region_a, switch_at),
            MemPhase::Draining { .. } | MemPhase::InB => (region_b, count),
        };
        while seq < limit && fe.tx_free() > 0 {
            fe.tx_queue(|ram, slot| {
                let buffer = TxSlot {
                    addr: GuestAddress(region.0 + u64::from(slot.desc) * u64::from(STRIDE)),
                    size: STRIDE,
                    ..slot
                };
                buffer.write_packet(ram, &hdr, &test_frame(dst, src, SIZE, seq))
            })
            .map_err(ctx("queueing a frame"))?;
            seq += 1;
        }
        fe.tx_kick().map_err(ctx("kicking tx"))?;
        match phase {
            MemPhase::InA if seq == switch_at => {
                // Chains in A are still in flight here: the back-end takes B under traffic.
                fe.add_mem_region(region_b, region_size)
                    .map_err(ctx("adding region B (ADD_MEM_REG)"))?;
                println!("added region gpa={:#x} size={region_size}", region_b.0);
                phase = MemPhase::Draining {
                    mark: fe.tx_submitted(),
                };
            }
            MemPhase::Draining { mark }
                if fe.tx_oldest_in_flight().is_none_or(|oldest| oldest >= mark) =>
            {
                fe.remove_mem_region(region_a)
                    .map_err(ctx("removing region A (REM_MEM_REG)"))?;
                println!("removed region gpa={:#x}", region_a.0);
                phase = MemPhase::InB;
            }
            _ => {}
        }
        if phase == MemPhase::InB && seq == count {
            break;
        }
        // With nothing left to queue, wait for the ring to empty rather than spin on kicks.
        let min = if seq < limit {
            batch
        } else {
            usize::from(ring)
        };
        fe.wait_tx_free(min, opts.timeout)
            .map_err(ctx("waiting for tx completions"))?;
    }
    fe.wait_tx_idle(opts.timeout)
        .map_err(ctx("waiting for the last tx completions"))?;
    println!("sent={count}");
    Ok(())
}

fn rate(socket: &Path, dst: [u8; 6], size: usize, duration: Duration) -> Result<(), CliError> {
    /// Where the sequence number sits in a slot: after the virtio-net header.
    const SEQ_AT: u64 = (HDR_LEN + SEQ_OFFSET) as u64;
    let opts = options(size);
    let mut fe = connect(socket, &opts)?;
    let src = source_mac(&mut fe, None)?;
    // Every slot holds the frame from the start; per frame only its sequence number changes
    // (the pattern stays that of frame 0).
    let template = test_frame(dst, src, size, 0);
    let hdr = NetHdr::default();
    let tx = fe.queue(QueueId::Tx);
    for desc in 0..tx.ring().size() {
        let slot = TxSlot {
            desc,
            addr: tx.slot_addr(desc),
            size: tx.slot_size(),
        };
        slot.write_packet(fe.ram(), &hdr, &template)
            .map_err(ctx("preparing the frames"))?;
    }
    let len = u32::try_from(HDR_LEN + size).expect("frame lengths are u16 values");
    let batch = refill_batch(&fe);
    let mut seq: u32 = 0;
    println!("started");
    let started = Instant::now();
    let deadline = started + duration;
    loop {
        while fe.tx_free() > 0 {
            fe.tx_queue(|ram, slot| {
                ram.write(GuestAddress(slot.addr.0 + SEQ_AT), &seq.to_be_bytes())?;
                Ok(TxBuffer {
                    addr: slot.addr,
                    len,
                })
            })
            .map_err(ctx("queueing a frame"))?;
            seq = seq.wrapping_add(1);
        }
        fe.tx_kick().map_err(ctx("kicking tx"))?;
        // The clock is read once per batch, not per frame.
        if Instant::now() >= deadline {
            break;
        }
        fe.wait_tx_free(batch, opts.timeout)
            .map_err(ctx("waiting for tx completions"))?;
    }
    fe.wait_tx_idle(opts.timeout)
        .map_err(ctx("waiting for the last tx completions"))?;
    let elapsed = started.elapsed();
    let sent = fe.tx_completed();
    println!(
        "sent={sent} elapsed_ms={} pps={:.0}",
        elapsed.as_millis(),
        sent as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

/// GET_CONFIG, printed as `config mac=MAC status=N link=up|down`.
fn print_config(fe: &mut NetFrontend) -> Result<(), CliError> {
    let config = fe
        .get_config()
        .map_err(ctx("reading the config space (GET_CONFIG)"))?;
    println!("config {config}");
    Ok(())
}

fn watch_config(socket: &Path, duration: Duration) -> Result<(), CliError> {
    let mut opts = options(0);
    // STATUS makes the config space's `status` (the link) valid.
    opts.optional_features |= feature(VIRTIO_NET_F_STATUS);
    opts.protocol_features |=
        VhostUserProtocolFeatures::BACKEND_REQ | VhostUserProtocolFeatures::CONFIG;
    let mut fe = connect(socket, &opts)?;
    require_protocol(
        &fe,
        VhostUserProtocolFeatures::BACKEND_REQ,
        "BACKEND_REQ",
        "carries config-change notifications (the back-end channel, SET_BACKEND_REQ_FD)",
    )?;
    require_protocol(
        &fe,
        VhostUserProtocolFeatures::CONFIG,
        "CONFIG",
        "GET_CONFIG and config-change notifications need",
    )?;
    let mut channel = fe
        .take_backend_channel()
        .expect("connect sets up the back-end channel whenever BACKEND_REQ is negotiated");
    if let Some(inode) = channel.given_inode() {
        println!("backend-channel inode={inode}");
    }
    print_config(&mut fe)?;
    let deadline = Instant::now() + duration;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        // A request that wants an answer has had it by now: GET_CONFIG cannot meet a
        // back-end blocked on the channel.
        match channel
            .next_event(left)
            .map_err(ctx("reading the back-end channel"))?
        {
            None => {}
            Some(BackendEvent::ConfigChange) => {
                println!("config-change");
                print_config(&mut fe)?;
            }
            Some(BackendEvent::Unsupported { request, size }) => {
                println!("backend-request request={request} size={size}");
            }
        }
    }
    println!("done");
    Ok(())
}
