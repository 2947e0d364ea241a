//! `vf-tool`: check and exercise an Intel 82576 VF from userspace through VFIO, with the same
//! driver the daemon uses. For lab tests and for users checking their set-up.
//!
//!   vf-tool info 0000:01:10.0      # MAC, link, statistics (key=value lines)

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vf_dataplane::nic::igbvf::device::IgbVf;

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
}

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

fn run(command: Command) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Command::Info { bdf } => {
            let vf = IgbVf::open(&bdf)?;
            let stats = vf.hw_stats();
            println!("bdf={bdf}");
            println!("group={}", vf.pci().group());
            println!("mac={}", vf.mac());
            println!("link={}", if vf.link_up() { "up" } else { "down" });
            println!("msix_vectors={}", vf.pci().msix_vectors());
            println!(
                "rx_packets={} tx_packets={} rx_bytes={} tx_bytes={} rx_multicast={}",
                stats.rx_packets,
                stats.tx_packets,
                stats.rx_bytes,
                stats.tx_bytes,
                stats.rx_multicast
            );
            Ok(())
        }
    }
}
