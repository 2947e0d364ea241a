//! The daemon serving a real QEMU guest (TCG, `-netdev vhost-user`), with its TAP in a private
//! namespace: the guest pings the namespace; the daemon is killed and restarted under a running
//! guest (QEMU reconnects) and pings resume; and the daemon connects to a QEMU that listens
//! (`--client`). Needs root and QEMU: skipped otherwise, failed under `CI=true`.
//!
//! QEMU guests run one at a time: two TCG guests on a two-core machine would starve each other.

use std::fs::File;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use vhost_vf_tests::qemu::{Chardev, Guest, guest_image};
use vhost_vf_tests::{NetNs, ProcessGroup, TempDir, unique_name, wait_until, workspace_bin};

/// One guest at a time.
static QEMU: Mutex<()> = Mutex::new(());

const GUEST_MAC: &str = "52:54:00:12:34:56";
const HOST_IP: &str = "10.99.0.1";
const GUEST_CMDLINE: &str = "vhvf.ip=10.99.0.2/24 vhvf.peer=10.99.0.1";
/// Boot under TCG takes 5-15 s; replies then come every half second.
const BOOT_AND_PING: Duration = Duration::from_secs(90);

/// Starts the daemon inside `ns` with `args`; its log goes to `dir/NAME.log`.
fn daemon(ns: &NetNs, dir: &TempDir, name: &str, args: &[&str]) -> ProcessGroup {
    let mut cmd = ns.command(workspace_bin("vhost-vf"));
    cmd.args(args)
        .stderr(File::create(dir.join(format!("{name}.log"))).expect("daemon log"));
    ProcessGroup::spawn(name, cmd)
}

/// Waits for the daemon's TAP and gives it the host address (a restarted daemon makes a new
/// TAP, so this runs after every start).
fn address_tap(ns: &NetNs, tap: &str) {
    assert!(
        wait_until(Duration::from_secs(10), || ns.has_link(tap)),
        "the daemon did not create TAP {tap}"
    );
    ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", tap]);
}

fn logs(dir: &TempDir, guest: &Guest) -> String {
    let mut out = format!("--- guest console\n{}\n", guest.console());
    for name in ["daemon-1", "daemon-2", "qemu"] {
        let file = if name == "qemu" {
            dir.join("qemu.err")
        } else {
            dir.join(format!("{name}.log"))
        };
        out += &format!(
            "--- {name}\n{}\n",
            std::fs::read_to_string(file).unwrap_or_default()
        );
    }
    out
}

fn socket_exists(path: &Path) -> bool {
    path.exists()
}

#[test]
fn guest_pings_through_the_daemon_and_resumes_after_a_daemon_restart() {
    let Some(image) = guest_image() else { return };
    let _one = QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let ns = NetNs::new();
    let dir = TempDir::new("qemu");
    let sock = dir.join("vu.sock");
    let sock_arg = sock.to_str().unwrap().to_string();
    let tap = unique_name("vq");
    let args = [
        "--socket-path",
        sock_arg.as_str(),
        "--tap",
        tap.as_str(),
        "--mac",
        GUEST_MAC,
    ];

    let mut first = daemon(&ns, &dir, "daemon-1", &args);
    assert!(
        wait_until(Duration::from_secs(10), || socket_exists(&sock)),
        "no socket"
    );
    address_tap(&ns, &tap);
    let guest = Guest::boot(
        &image,
        &sock,
        Chardev::ClientReconnect,
        GUEST_MAC,
        &format!("{GUEST_CMDLINE} vhvf.mode=pingloop vhvf.dur=150"),
        dir.path(),
    );
    assert!(
        wait_until(BOOT_AND_PING, || guest.ping_replies().len() >= 3),
        "the guest got no ping replies through the daemon\n{}",
        logs(&dir, &guest)
    );

    first.kill();
    // The kernel unregisters the dead daemon's TAP a moment after the process is gone; until
    // then the address below would go to the old TAP and be lost with it.
    assert!(
        wait_until(Duration::from_secs(10), || !ns.has_link(&tap)),
        "the killed daemon's TAP {tap} did not go away"
    );
    let before = guest.ping_replies().into_iter().max().unwrap_or(0);
    let _second = daemon(&ns, &dir, "daemon-2", &args);
    address_tap(&ns, &tap);
    assert!(
        wait_until(BOOT_AND_PING, || guest
            .ping_replies()
            .iter()
            .any(|&seq| seq > before + 1)),
        "pings did not resume after the daemon restarted (last reply before: seq={before})\n{}",
        logs(&dir, &guest)
    );
}

#[test]
fn daemon_in_client_mode_serves_a_qemu_that_listens() {
    let Some(image) = guest_image() else { return };
    let _one = QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let ns = NetNs::new();
    let dir = TempDir::new("qemu-client");
    let sock = dir.join("vu.sock");
    let sock_arg = sock.to_str().unwrap().to_string();
    let tap = unique_name("vq");

    let guest = Guest::boot(
        &image,
        &sock,
        Chardev::Server,
        GUEST_MAC,
        &format!("{GUEST_CMDLINE} vhvf.mode=pingloop vhvf.dur=120"),
        dir.path(),
    );
    assert!(
        wait_until(Duration::from_secs(30), || socket_exists(&sock)),
        "QEMU did not create its socket\n{}",
        logs(&dir, &guest)
    );
    let _daemon = daemon(
        &ns,
        &dir,
        "daemon-1",
        &[
            "--client",
            "--socket-path",
            &sock_arg,
            "--tap",
            &tap,
            "--mac",
            GUEST_MAC,
        ],
    );
    address_tap(&ns, &tap);
    assert!(
        wait_until(BOOT_AND_PING, || guest.ping_replies().len() >= 3),
        "the guest got no ping replies with the daemon in client mode\n{}",
        logs(&dir, &guest)
    );
}
