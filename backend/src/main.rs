//! The `vhost-vf` daemon.

use std::process::ExitCode;

use std::path::Path;

use clap::Parser;
use tracing::info;
use vf_dataplane::nic::igbvf::device::Mac;
use vf_dataplane::nic::igbvf::port::{IgbVfPort, VfPortOptions};
use vf_dataplane::nic::igbvf::ring::RX_BUF_LEN;
use vf_dataplane::tap::TapPort;
use vf_dataplane::{Port, error_unlimited};
use vhost_vf::cli::{CAPABILITIES_JSON, Cli, MacAddr, tap_name_for_socket};
use vhost_vf::daemon::{self, Mode};
use vhost_vf::device::{DeviceConfig, NetBackend};
use vhost_vf::signals;
use vhost_vf::tx::{ETH_HLEN, VLAN_HLEN};
use vhost_vf::worker::Forwarder;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_capabilities {
        println!("{CAPABILITIES_JSON}");
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_max_level(cli.log_level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut message = e.to_string();
            let mut source = e.source();
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            error_unlimited!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// Opens the port the command line asks for and settles the guest's MAC.
fn open_port(
    cli: &Cli,
    socket: &Path,
) -> Result<(Box<dyn Port>, MacAddr), Box<dyn std::error::Error>> {
    if let Some(bdf) = &cli.vf {
        let max_frame = usize::from(cli.mtu) + ETH_HLEN + VLAN_HLEN;
        if max_frame > RX_BUF_LEN {
            return Err(format!(
                "--mtu {} is too large for the VF port: its rx buffers hold {RX_BUF_LEN}-byte frames (MTU {} at most)",
                cli.mtu,
                RX_BUF_LEN - ETH_HLEN - VLAN_HLEN
            )
            .into());
        }
        let options = VfPortOptions {
            max_frame: u16::try_from(max_frame)?,
            ..VfPortOptions::default()
        };
        let mut port = IgbVfPort::open(bdf, options)?;
        if let Some(mac) = cli.mac {
            port.set_mac(Mac(mac.0))?;
        }
        let mac = MacAddr(port.station_mac().0);
        return Ok((Box::new(port), mac));
    }
    let tap_name = cli
        .tap
        .clone()
        .unwrap_or_else(|| tap_name_for_socket(socket));
    // The TAP's own address, stable across restarts (the guest's ARP cache holds it).
    let tap_mac = MacAddr::derived_from(format!("vhost-vf tap {tap_name}").as_bytes());
    let port = TapPort::open(&tap_name, cli.mtu, tap_mac.0)?;
    let mac = cli
        .mac
        .unwrap_or_else(|| MacAddr::derived_from(socket.as_os_str().as_encoded_bytes()));
    Ok((Box::new(port), mac))
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let socket = cli
        .socket_path
        .clone()
        .expect("clap requires --socket-path unless --print-capabilities");
    signals::block_termination()?;

    let (port, mac) = open_port(&cli, &socket)?;
    info!(port = port.name(), %mac, mtu = cli.mtu, "port ready");

    let config = DeviceConfig {
        mac: mac.0,
        mtu: cli.mtu,
        max_queue_size: cli.queue_size,
    };
    let backend =
        NetBackend::new(config, Forwarder::new(port, cli.mtu, cli.queue_size)).into_shared();

    let mode = if cli.client {
        Mode::Client(socket)
    } else {
        Mode::Server(socket)
    };
    let created_socket = match &mode {
        Mode::Server(path) => Some(path.clone()),
        Mode::Client(_) => None,
    };
    let device = backend.clone();
    signals::exit_on_termination(created_socket, move || {
        device.reset(|stats| info!(%stats, "counters of the connection at exit"));
    })?;
    daemon::run(backend, mode)?;
    Ok(())
}
