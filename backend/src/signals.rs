//! Clean exit on SIGTERM and SIGINT: the socket file we created is removed and the process
//! exits 0. The signals are blocked in every thread and taken synchronously by one thread, so
//! no handler runs in the middle of the data path.

use std::io;
use std::path::PathBuf;
use std::thread;

use tracing::info;

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it fully below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame.
    unsafe { libc::sigemptyset(&mut set) };
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: `set` was initialised by sigemptyset; the signal numbers are valid.
        unsafe { libc::sigaddset(&mut set, signal) };
    }
    set
}

/// Blocks SIGTERM and SIGINT in the calling thread, and so in every thread it spawns later.
/// Call before spawning any thread.
pub fn block_termination() -> io::Result<()> {
    let set = termination_set();
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Starts the thread that waits for SIGTERM/SIGINT, runs `before_exit` (the device's last
/// words: quiesce the port, report counters), removes `socket_to_remove` (the socket we listen
/// on, if any) and exits the process with status 0.
pub fn exit_on_termination(
    socket_to_remove: Option<PathBuf>,
    before_exit: impl FnOnce() + Send + 'static,
) -> io::Result<()> {
    thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || {
            let set = termination_set();
            let mut signal: libc::c_int = 0;
            loop {
                // SAFETY: `set` is initialised and `signal` is a valid out-pointer.
                let rc = unsafe { libc::sigwait(&set, &mut signal) };
                if rc == 0 {
                    break;
                }
            }
            info!(signal, "terminating");
            before_exit();
            if let Some(path) = socket_to_remove {
                let _ = std::fs::remove_file(path);
            }
            std::process::exit(0);
        })
        .map(|_| ())
}
