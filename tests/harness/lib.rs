//! Shared harness for the integration tests: where the binaries are, when a test may skip,
//! network namespaces the test owns, child processes killed as a group, waiting on conditions
//! with deadlines instead of sleeps, and a `vhost-vf` daemon with its TAP in a namespace.
//!
//! Invariant: everything a test creates (namespaces, temp dirs, processes) is owned by a guard
//! whose `Drop` removes it, so a failing assertion still cleans up.

pub mod qemu;
pub mod vf_lab;

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// True when running under CI (`CI=true`), where no test may skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Returns `true` when the test may go on. Otherwise prints why it skips and returns `false`;
/// under CI a missing requirement is a failure, never a skip.
pub fn require(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    assert!(!in_ci(), "CI=true but the test needs {what}");
    eprintln!("SKIPPED: this test needs {what}");
    false
}

/// Whether the process runs as root (netns, TAP devices and QEMU tests need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether a program is on PATH.
pub fn have_program(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits one level below the workspace root")
        .to_path_buf()
}

/// Path of a binary built from this workspace (`cargo build --workspace --bins` puts them in
/// the same profile directory as the test executable). `VHOST_VF_BIN_DIR` overrides.
pub fn workspace_bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("VHOST_VF_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-exe>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --workspace --bins` before the tests",
        bin.display()
    );
    bin
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

static UNIQUE: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call, usable in interface and netns names
/// (`prefix` should be at most 6 characters so the result fits IFNAMSIZ).
pub fn unique_name(prefix: &str) -> String {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh directory under the system temp dir.
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(unique_name(&format!("vhvf-{tag}-")));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs a command to completion and fails the test with its output if it fails.
pub fn run(program: impl AsRef<OsStr>, args: &[&str]) -> String {
    let program = program.as_ref();
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program:?}: {e}"));
    assert!(
        out.status.success(),
        "{program:?} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace created for one test and deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace with loopback up.
    pub fn new() -> Self {
        let name = unique_name("vhvf");
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        NetNs { name }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NS ARGS...` and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Reads `/sys/class/net/IF/statistics/COUNTER` as seen inside the namespace.
    pub fn if_counter(&self, ifname: &str, counter: &str) -> u64 {
        let path = format!("/sys/class/net/{ifname}/statistics/{counter}");
        let out = self.command("cat").arg(&path).output().expect("run cat");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// Runs `f` on a short-lived thread that entered the namespace, and returns its result.
    /// Sockets `f` creates belong to the namespace for good and work from any thread.
    pub fn within<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let ns_path = PathBuf::from("/var/run/netns").join(&self.name);
        thread::spawn(move || {
            enter_netns(&ns_path)?;
            f()
        })
        .join()
        .map_err(|_| io::Error::other("the thread in the namespace panicked"))?
    }

    /// Whether interface `ifname` exists inside the namespace.
    pub fn has_link(&self, ifname: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", ifname])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Default for NetNs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|out| {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: kill(2) on a pid the kernel listed as inside our own namespace.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A child process started in its own process group; the whole group is killed on drop.
pub struct ProcessGroup {
    child: Child,
    label: String,
}

impl ProcessGroup {
    /// Spawns `cmd` as the leader of a new process group.
    pub fn spawn(label: &str, mut cmd: Command) -> Self {
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label}: {e}"));
        ProcessGroup {
            child,
            label: label.to_string(),
        }
    }

    /// The leader's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the whole group.
    pub fn signal(&self, signal: i32) {
        let pgid = i32::try_from(self.child.id()).expect("pid fits i32");
        // SAFETY: kill(2) on the process group we created; a gone group only returns ESRCH.
        unsafe { libc::kill(-pgid, signal) };
    }

    /// Whether the leader is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the leader to exit and returns its exit code
    /// (`None` if it is still running or died from a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.code(),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => return None,
            }
        }
    }

    /// Kills the group and reaps the leader.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// The label given at spawn, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Mutable access to the child (to take its stdout, say).
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Error type alias used by harness helpers that may fail softly.
pub type Result<T> = io::Result<T>;

/// A raw `AF_PACKET` socket bound to one interface inside a network namespace: it sees every
/// frame the interface receives or sends (`ETH_P_ALL`) and sends frames out of it as they are.
///
/// The socket is created on a short-lived thread that entered the namespace with `setns`; a
/// socket keeps the namespace it was created in, so it works from any thread afterwards.
pub struct PacketSocket {
    fd: std::os::fd::OwnedFd,
}

impl PacketSocket {
    /// Opens a packet socket on interface `ifname` of namespace `ns`.
    pub fn open(ns: &NetNs, ifname: &str) -> io::Result<Self> {
        let ns_path = PathBuf::from("/var/run/netns").join(ns.name());
        let ifname = std::ffi::CString::new(ifname).map_err(io::Error::other)?;
        thread::spawn(move || open_packet_socket_in(&ns_path, &ifname))
            .join()
            .map_err(|_| io::Error::other("the setns thread panicked"))?
            .map(|fd| PacketSocket { fd })
    }

    /// Makes every frame received from now on start with a 10-byte `virtio_net_hdr` that
    /// describes its offload state (`PACKET_VNET_HDR`, packet(7)): a frame whose checksum is
    /// still to be completed (`CHECKSUM_PARTIAL`) has `VIRTIO_NET_HDR_F_NEEDS_CSUM` and its
    /// `csum_start`/`csum_offset` there.
    pub fn enable_vnet_hdr(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        let len = u32::try_from(std::mem::size_of::<libc::c_int>()).expect("an int is 4 bytes");
        // SAFETY: `on` is an int that lives across the call, `len` its size; the fd is owned
        // by self.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_VNET_HDR,
                std::ptr::from_ref(&on).cast(),
                len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sets the receive buffer to `bytes` even past `rmem_max` (`SO_RCVBUFFORCE`, needs
    /// CAP_NET_ADMIN), so that a fast burst is kept until the test reads it.
    pub fn set_recv_buffer(&self, bytes: usize) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let size = libc::c_int::try_from(bytes).map_err(io::Error::other)?;
        let len = u32::try_from(std::mem::size_of::<libc::c_int>()).expect("an int is 4 bytes");
        // SAFETY: `size` is an int that lives across the call, `len` its size; the fd is owned
        // by self.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                std::ptr::from_ref(&size).cast(),
                len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends one frame (Ethernet header included) out of the interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: `frame` is a live slice of `frame.len()` readable bytes; the fd is owned by self.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        match usize::try_from(n) {
            Ok(n) if n == frame.len() => Ok(()),
            Ok(n) => Err(io::Error::other(format!(
                "short send: {n} of {}",
                frame.len()
            ))),
            Err(_) => Err(io::Error::last_os_error()),
        }
    }

    /// Receives the next frame, waiting up to `timeout`; `Ok(None)` when none came.
    pub fn recv(&self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `pfd` is one valid pollfd that lives across the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready < 0 {
            return Err(io::Error::last_os_error());
        }
        if ready == 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; 65536];
        // SAFETY: `buf` has `buf.len()` writable bytes; the fd is owned by self.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        buf.truncate(n);
        Ok(Some(buf))
    }

    /// Receives frames until one satisfies `wanted` or `timeout` passes. Returns that frame
    /// (if any) and every other frame seen on the way for which `keep` holds.
    pub fn recv_until(
        &self,
        timeout: Duration,
        mut keep: impl FnMut(&[u8]) -> bool,
        mut wanted: impl FnMut(&[u8]) -> bool,
    ) -> io::Result<Caught> {
        let deadline = Instant::now() + timeout;
        let mut caught = Caught::default();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(caught);
            }
            match self.recv(left)? {
                Some(f) if wanted(&f) => {
                    caught.wanted = Some(f);
                    return Ok(caught);
                }
                Some(f) if keep(&f) => caught.others.push(f),
                Some(_) => {}
                None => return Ok(caught),
            }
        }
    }
}

/// What [`PacketSocket::recv_until`] saw.
#[derive(Debug, Default)]
pub struct Caught {
    /// The frame that was waited for, if it came in time.
    pub wanted: Option<Vec<u8>>,
    /// The frames kept on the way, in arrival order.
    pub others: Vec<Vec<u8>>,
}

/// Body of [`PacketSocket::open`], run on a thread of its own: that thread's network namespace
/// changes for good.
fn open_packet_socket_in(
    ns_path: &Path,
    ifname: &std::ffi::CStr,
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    enter_netns(ns_path)?;
    // SAFETY: `ifname` is a NUL-terminated string that lives across the call.
    let ifindex = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    let proto = u16::try_from(libc::ETH_P_ALL)
        .expect("ETH_P_ALL fits 16 bits")
        .to_be();
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just returned by socket(2) and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain old data for which all-zero bytes are a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = u16::try_from(libc::AF_PACKET).expect("AF_PACKET fits 16 bits");
    addr.sll_protocol = proto;
    addr.sll_ifindex = i32::try_from(ifindex).map_err(io::Error::other)?;
    let len = u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).expect("small struct");
    // SAFETY: `addr` is a valid sockaddr_ll of `len` bytes that lives across the call.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Moves the calling thread into the network namespace at `ns_path`, for good: call it only on
/// a thread that exists for the work to be done there.
fn enter_netns(ns_path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let ns = File::open(ns_path)?;
    // SAFETY: setns on a namespace file we hold open; it affects only the calling thread, whose
    // callers promise it exists only for work inside the namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The MAC address a [`DaemonLab`] daemon gives the guest in its config space (`--mac`).
pub const LAB_GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// A `vhost-vf` daemon serving a socket in a temp dir, its TAP in a namespace of its own; the
/// daemon's log is printed when a test fails while it runs.
pub struct DaemonLab {
    // Field order is drop order: the daemon dies before its namespace and directory go.
    /// The daemon (`--log-level debug`, output in [`DaemonLab::log`]).
    pub daemon: ProcessGroup,
    /// The namespace the daemon and its TAP live in.
    pub ns: NetNs,
    /// The temp dir holding the socket and the log.
    pub dir: TempDir,
    /// The vhost-user socket.
    pub sock: PathBuf,
    /// The TAP interface's name.
    pub tap: String,
    /// The daemon's stdout and stderr.
    pub log: PathBuf,
}

impl DaemonLab {
    /// Starts `vhost-vf --socket-path DIR/vu.sock --tap NAME --mac LAB_GUEST_MAC EXTRA...` in a
    /// new namespace without IPv6 and waits for its socket; `None` when the test must skip (not
    /// root).
    pub fn start(extra: &[&str]) -> Option<Self> {
        if !require("root", is_root()) {
            return None;
        }
        let ns = NetNs::new();
        // No IPv6 on the TAP: fewer frames on both paths.
        let sysctl = ns
            .command("sysctl")
            .args(["-qw", "net.ipv6.conf.default.disable_ipv6=1"])
            .status()
            .expect("run sysctl");
        assert!(sysctl.success(), "sysctl in the namespace failed");
        let dir = TempDir::new("fe");
        let sock = dir.join("vu.sock");
        let tap = unique_name("vft");
        let log = dir.join("daemon.log");
        let out = File::create(&log).expect("create the daemon log");
        let err = out.try_clone().expect("dup the daemon log");
        let mac = LAB_GUEST_MAC
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        let mut cmd = ns.command(workspace_bin("vhost-vf"));
        cmd.arg("--socket-path")
            .arg(&sock)
            .args(["--tap", &tap, "--mac", &mac])
            .args(["--log-level", "debug"])
            .args(extra)
            .stdout(out)
            .stderr(err);
        let daemon = ProcessGroup::spawn("vhost-vf", cmd);
        let mut lab = DaemonLab {
            daemon,
            ns,
            dir,
            sock,
            tap,
            log,
        };
        let up = wait_until(Duration::from_secs(10), || lab.sock.exists());
        assert!(up, "the daemon never created {}", lab.sock.display());
        assert!(lab.daemon.is_running(), "the daemon exited at start");
        Some(lab)
    }

    /// Waits (5 s) for the TAP to exist and be up, and fails the test otherwise.
    pub fn wait_tap_up(&self) {
        let up = wait_until(Duration::from_secs(5), || {
            self.ns.has_link(&self.tap)
                && self
                    .ns
                    .ip(&["-o", "link", "show", &self.tap])
                    .contains(",UP")
        });
        assert!(up, "TAP {} is not up", self.tap);
    }

    /// A packet socket on the TAP.
    pub fn tap_socket(&self) -> PacketSocket {
        PacketSocket::open(&self.ns, &self.tap).expect("open AF_PACKET on the TAP")
    }

    /// Fails the test if the daemon died.
    pub fn assert_running(&mut self) {
        assert!(
            self.daemon.is_running(),
            "the daemon exited: {:?}",
            self.daemon.wait_exit(Duration::ZERO)
        );
    }
}

impl Drop for DaemonLab {
    fn drop(&mut self) {
        if thread::panicking() {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!(
                "--- vhost-vf log ({}) ---\n{log}--- end ---",
                self.log.display()
            );
        }
    }
}
