//! Serving front-ends, one after another, for as long as the daemon runs.
//!
//! Each connection gets a fresh `VhostUserDaemon` (and so fresh vrings and worker threads) over
//! the same device and port. When the front-end goes away the device is reset and the next one
//! is awaited: a VM going away never takes the daemon down. In client mode the daemon connects
//! to the front-end's socket and retries with back-off.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tracing::info;
use vf_dataplane::warn_unlimited;
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{Error as DaemonError, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::device::NetBackend;

/// First and longest wait between connection attempts in client mode, and after a failed
/// accept in server mode.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Who connects to whom.
#[derive(Clone, Debug)]
pub enum Mode {
    /// We listen on the socket (QEMU is the client).
    Server(PathBuf),
    /// We connect to the socket (QEMU has `server=on`).
    Client(PathBuf),
}

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be created.
    #[error("cannot listen on {path}")]
    Listen {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: VhostUserError,
    },
    /// The vhost-user daemon machinery could not be set up (threads, epoll). The crate's
    /// error type implements only `Display`, so it is carried as the message.
    #[error("cannot set up the vhost-user device: {0}")]
    Setup(DaemonError),
}

/// Serves front-ends until the process is stopped. Returns only on set-up errors.
pub fn run(backend: Arc<NetBackend>, mode: Mode) -> Result<(), Error> {
    let mut listener = match &mode {
        Mode::Server(path) => Some(Listener::new(path, true).map_err(|source| Error::Listen {
            path: path.clone(),
            source,
        })?),
        Mode::Client(_) => None,
    };
    match &mode {
        Mode::Server(path) => info!(socket = %path.display(), "listening for a front-end"),
        Mode::Client(path) => info!(socket = %path.display(), "connecting to the front-end"),
    }
    loop {
        let mut daemon = VhostUserDaemon::new(
            "vhost-vf".to_string(),
            backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(Error::Setup)?;
        let handler = daemon
            .get_epoll_handlers()
            .into_iter()
            .next()
            .expect("vhost-user-backend makes one worker per queues_per_thread entry");
        if let Err(e) = backend.attach_worker(handler) {
            warn_unlimited!("cannot watch the port: {e}");
        }

        let connected = match (&mode, listener.as_mut()) {
            (Mode::Server(_), Some(listener)) => accept(&mut daemon, listener),
            (Mode::Client(path), _) => connect(&mut daemon, path),
            (Mode::Server(_), None) => unreachable!("server mode always has a listener"),
        };
        if connected {
            info!("front-end connected");
            match daemon.wait() {
                Ok(())
                | Err(DaemonError::HandleRequest(VhostUserError::Disconnected))
                | Err(DaemonError::HandleRequest(VhostUserError::PartialMessage)) => {}
                Err(e) => warn_unlimited!("front-end connection ended: {e}"),
            }
        }
        let stats = backend.reset();
        if connected {
            info!(%stats, "front-end disconnected; waiting for the next one");
        }
        // Dropping the daemon stops and joins its worker thread.
        drop(daemon);
    }
}

fn accept(daemon: &mut VhostUserDaemon<Arc<NetBackend>>, listener: &mut Listener) -> bool {
    match daemon.start(listener) {
        Ok(()) => true,
        Err(e) => {
            warn_unlimited!("accepting a front-end failed: {e}");
            thread::sleep(RETRY_MIN);
            false
        }
    }
}

fn connect(daemon: &mut VhostUserDaemon<Arc<NetBackend>>, path: &Path) -> bool {
    let mut wait = RETRY_MIN;
    let mut reported = false;
    let Some(path_str) = path.to_str() else {
        warn_unlimited!(socket = %path.display(), "socket path is not UTF-8");
        thread::sleep(RETRY_MAX);
        return false;
    };
    loop {
        match daemon.start_client(path_str) {
            Ok(()) => return true,
            Err(e) => {
                if !reported {
                    info!(socket = %path.display(), "front-end not reachable yet ({e}); retrying");
                    reported = true;
                }
                thread::sleep(wait);
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    }
}
