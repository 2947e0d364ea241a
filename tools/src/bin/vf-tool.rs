//! `vf-tool`: check and exercise an Intel 82576 VF from userspace through VFIO, with the same
//! driver the daemon uses. For lab tests and for users checking their set-up. Output is
//! `key=value` lines.
//!
//!   vf-tool info 0000:01:10.0                         # MAC, link, counters
//!   vf-tool send 0000:01:10.0 --dst MAC --count 100   # test frames out of the VF
//!   vf-tool recv 0000:01:10.0 --count 100 --timeout 10 [--print]
//!   vf-tool echo 0000:01:10.0 --count 100             # send each frame back to its sender
//!   vf-tool send 0000:01:10.0 --dst MAC --duration 5  # for rate measurements

use std::os::fd::BorrowedFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use vf_dataplane::nic::igbvf::device::IgbVf;
use vf_dataplane::nic::igbvf::port::{IgbVfPort, VfPortOptions};
use vf_dataplane::port::{BURST_SIZE, TxSegment};
use vf_dataplane::{LinkState, Port, PortFd, RxBurst, TxBurst, VirtioNetHdr};
use vhost_vf_tools::frontend::{format_mac, parse_mac};
use vhost_vf_tools::vf_frames::{SEQ_OFFSET, test_frame};

#[derive(Parser)]
#[command(
    name = "vf-tool",
    version,
    about = "Check and exercise an 82576 VF through VFIO"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open the VF, reset it through the PF and print its MAC, link and counters.
    Info {
        /// PCI address of the VF, e.g. 0000:01:10.0.
        bdf: String,
    },
    /// Send numbered test frames (ethertype 0x88b5, source = the VF's MAC).
    Send {
        /// PCI address of the VF.
        bdf: String,
        /// Destination MAC.
        #[arg(long)]
        dst: String,
        /// Frames to send.
        #[arg(long, default_value_t = 100)]
        count: u32,
        /// Send for this many seconds instead of `--count` frames, and report the rate.
        #[arg(long, conflicts_with = "count")]
        duration: Option<u64>,
        /// Frame length without FCS (60-1514).
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u16).range(60..=1514))]
        size: u16,
        /// Poll instead of using MSI-X interrupts.
        #[arg(long)]
        poll: bool,
    },
    /// Receive frames and count (or print) them.
    Recv {
        /// PCI address of the VF.
        bdf: String,
        /// Stop after this many frames.
        #[arg(long, default_value_t = 100)]
        count: u64,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
        /// Print each frame in hex.
        #[arg(long)]
        print: bool,
        /// Poll instead of using MSI-X interrupts.
        #[arg(long)]
        poll: bool,
    },
    /// Send every frame received back to its sender, from the VF's current MAC (which follows
    /// a MAC the PF sets while the tool runs).
    Echo {
        /// PCI address of the VF.
        bdf: String,
        /// Stop after this many frames.
        #[arg(long, default_value_t = 100)]
        count: u64,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut message = format!("vf-tool: {e}");
            let mut source = e.source();
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Info { bdf } => info(&bdf),
        Command::Send {
            bdf,
            dst,
            count,
            duration,
            size,
            poll,
        } => {
            let dst = parse_mac(&dst).ok_or_else(|| format!("{dst:?} is not a MAC address"))?;
            let amount = match duration {
                Some(secs) => Amount::For(Duration::from_secs(secs)),
                None => Amount::Frames(count),
            };
            send(&bdf, dst, amount, usize::from(size), poll)
        }
        Command::Recv {
            bdf,
            count,
            timeout,
            print,
            poll,
        } => recv(&bdf, count, Duration::from_secs(timeout), print, poll),
        Command::Echo {
            bdf,
            count,
            timeout,
        } => echo(&bdf, count, Duration::from_secs(timeout)),
    }
}

/// How much `send` sends.
#[derive(Clone, Copy)]
enum Amount {
    /// Exactly this many frames, each built whole (byte-exact checks on the far side).
    Frames(u32),
    /// As many as fit in this time; frames are built once and only renumbered.
    For(Duration),
}

fn info(bdf: &str) -> Result<()> {
    let vf = IgbVf::open(bdf)?;
    let stats = vf.hw_stats();
    println!("bdf={bdf}");
    println!("group={}", vf.pci().group());
    println!("mac={}", vf.mac());
    println!("link={}", if vf.link_up() { "up" } else { "down" });
    println!("msix_vectors={}", vf.pci().msix_vectors());
    println!(
        "rx_packets={} tx_packets={} rx_bytes={} tx_bytes={} rx_multicast={}",
        stats.rx_packets, stats.tx_packets, stats.rx_bytes, stats.tx_bytes, stats.rx_multicast
    );
    Ok(())
}

/// Opens the port and waits (up to 20 s) for link: the PF drops frames while its link is
/// down, which after boot lasts until autonegotiation completes.
fn open(bdf: &str, poll: bool) -> Result<IgbVfPort> {
    let port = IgbVfPort::open(
        bdf,
        VfPortOptions {
            interrupts: !poll,
            ..VfPortOptions::default()
        },
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while port.link_state() != LinkState::Up && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let link = if port.link_state() == LinkState::Up {
        "up"
    } else {
        "down"
    };
    println!("mac={} link={link}", port.station_mac());
    Ok(port)
}

fn send(bdf: &str, dst: [u8; 6], amount: Amount, size: usize, poll: bool) -> Result<()> {
    let mut port = open(bdf, poll)?;
    let src = port.station_mac().0;
    // One frame slot per burst entry, reused once the VF reports the frame done.
    let slot = size.next_multiple_of(64);
    let mut frames = port.dma_region(slot * BURST_SIZE)?;
    for i in 0..BURST_SIZE {
        frames.write_bytes(i * slot, &test_frame(dst, src, size, 0));
    }
    let mut burst = TxBurst::new();
    let (mut sent, mut done) = (0u32, 0u32);
    let burst_size = u32::try_from(BURST_SIZE)?;
    let (limit, deadline) = match amount {
        Amount::Frames(count) => (count, Duration::from_secs(30)),
        Amount::For(time) => (u32::MAX, time),
    };
    let started = Instant::now();
    println!("started");
    while done < limit && started.elapsed() < deadline {
        // Fill the slots whose frames are done, then send them as one burst.
        let free = burst_size.min(limit - sent).min(burst_size - (sent - done));
        burst.clear();
        for k in 0..free {
            let seq = sent + k;
            let at = (seq as usize % BURST_SIZE) * slot;
            match amount {
                Amount::Frames(_) => frames.write_bytes(at, &test_frame(dst, src, size, seq)),
                Amount::For(_) => frames.write_bytes(at + SEQ_OFFSET, &seq.to_be_bytes()),
            }
            burst.start_frame();
            burst.add_segment(TxSegment {
                addr: 0,
                len: u32::try_from(size)?,
                iova: frames.iova() + at as u64,
            });
            burst.commit_frame(VirtioNetHdr::default());
        }
        sent += u32::try_from(port.tx_burst(&burst))?;
        done += u32::try_from(port.tx_completed())?;
        // Frames a PF reset cancelled are the newest; their slots still hold them, so they go
        // again under the same numbers.
        sent -= u32::try_from(port.tx_cancelled())?;
        if port.service_pf()? {
            println!("pf_reset mac={}", port.station_mac());
        }
    }
    let elapsed = started.elapsed();
    println!("sent={done}");
    let stats = port.stats();
    println!(
        "tx_packets={} tx_bytes={} elapsed_ms={} pps={:.0}",
        stats.tx_packets,
        stats.tx_bytes,
        elapsed.as_millis(),
        f64::from(done) / elapsed.as_secs_f64()
    );
    if let Amount::Frames(count) = amount
        && done < count
    {
        return Err(format!("only {done} of {count} frames completed in 30 s").into());
    }
    Ok(())
}

fn recv(bdf: &str, count: u64, timeout: Duration, print: bool, poll: bool) -> Result<()> {
    let mut port = open(bdf, poll)?;
    let mut burst = RxBurst::new(2048);
    let mut got = 0u64;
    let deadline = Instant::now() + timeout;
    println!("ready");
    while got < count && Instant::now() < deadline {
        if port.rx_burst(&mut burst) == 0 {
            if port.service_pf()? {
                println!("pf_reset mac={}", port.station_mac());
            }
            match port.rx_ready_fd() {
                // Interrupt mode: sleep until the rx vector fires (or 100 ms pass, to look at
                // the mailbox and the deadline).
                Some(fd) => {
                    wait_readable(fd, 100)?;
                    port.rearm(PortFd::Rx);
                }
                None => std::hint::spin_loop(),
            }
            continue;
        }
        while let Some((_, frame)) = burst.peek() {
            if print {
                let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
                println!(
                    "frame len={} dst={} src={} data={hex}",
                    frame.len(),
                    format_mac(frame[..6].try_into()?),
                    format_mac(frame[6..12].try_into()?)
                );
            }
            got += 1;
            burst.consume();
        }
    }
    println!("received={got}");
    let stats = port.stats();
    println!(
        "rx_packets={} rx_errors={}",
        stats.rx_packets, stats.rx_errors
    );
    let hw = port.hw_stats();
    let (rdh, rdt, rxdctl) = port.rx_queue_registers();
    println!(
        "hw_rx_packets={} rdh={rdh} rdt={rdt} rxdctl={rxdctl:#x}",
        hw.rx_packets
    );
    Ok(())
}

fn echo(bdf: &str, count: u64, timeout: Duration) -> Result<()> {
    let mut port = open(bdf, false)?;
    let mut rx = RxBurst::new(2048);
    let mut tx = TxBurst::new();
    // Replies are built in DMA memory, one slot per burst entry; a burst is sent only once the
    // last one completed, so no slot is rewritten while the VF may still read it.
    let slot = 2048;
    let mut replies = port.dma_region(slot * BURST_SIZE)?;
    let mut echoed = 0u64;
    let deadline = Instant::now() + timeout;
    println!("ready");
    while echoed < count && Instant::now() < deadline {
        let received = port.rx_burst(&mut rx);
        // Before answering: frames for a new address mean the PF moved the VF, and the
        // replies must come from the address it moved to.
        if port.service_pf()? {
            println!("pf_reset mac={}", port.station_mac());
        }
        if received == 0 {
            std::hint::spin_loop();
            continue;
        }
        let own = port.station_mac();
        tx.clear();
        let mut k = 0;
        while let Some((_, frame)) = rx.peek() {
            let at = k * slot;
            replies.write_bytes(at, &frame[6..12]);
            replies.write_bytes(at + 6, &own.0);
            replies.write_bytes(at + 12, &frame[12..]);
            println!(
                "echo len={} to={} from={own}",
                frame.len(),
                format_mac(frame[6..12].try_into()?)
            );
            tx.start_frame();
            tx.add_segment(TxSegment {
                addr: 0,
                len: u32::try_from(frame.len())?,
                iova: replies.iova() + at as u64,
            });
            tx.commit_frame(VirtioNetHdr::default());
            rx.consume();
            k += 1;
        }
        let mut pending = port.tx_burst(&tx);
        echoed += pending as u64;
        while pending > 0 && Instant::now() < deadline {
            let finished = port.tx_completed() + port.tx_cancelled();
            pending -= finished.min(pending);
        }
    }
    println!("echoed={echoed}");
    Ok(())
}

fn wait_readable(fd: std::os::fd::RawFd, ms: i32) -> Result<()> {
    // SAFETY: the port owns `fd` and outlives this call.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&borrowed),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd that lives across the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}
