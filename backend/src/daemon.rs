//! Serving front-ends, one after another, for as long as the daemon runs.
//!
//! The daemon owns the front-end's connection (it listens on `--socket-path`, or connects to it
//! with `--client`, retrying with back-off) and hands it to the vhost-user machinery through the
//! [`relay`] over a private socket in the abstract namespace. Each connection
//! gets a fresh `VhostUserDaemon` (fresh vrings and worker thread) over the same device and
//! port; when the front-end goes away the device is reset and the next one is awaited: a VM
//! going away never takes the daemon down.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
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
use crate::relay;

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
        source: io::Error,
    },
    /// Something other than a socket is in the way of the socket path.
    #[error("{path} exists and is not a socket: refusing to replace it")]
    PathTaken {
        /// Socket path.
        path: PathBuf,
    },
    /// The private socket between the relay and the vhost-user handler could not be made.
    #[error("cannot create the internal vhost-user socket")]
    Internal(#[source] io::Error),
    /// The vhost-user daemon machinery could not be set up (threads, epoll). The crate's
    /// error type implements only `Display`, so it is carried as the message.
    #[error("cannot set up the vhost-user device: {0}")]
    Setup(DaemonError),
}

/// Serves front-ends until the process is stopped. Returns only on set-up errors.
pub fn run(backend: Arc<NetBackend>, mode: Mode) -> Result<(), Error> {
    let outer = match &mode {
        Mode::Server(path) => Some(listen(path)?),
        Mode::Client(_) => None,
    };
    let inner_addr = SocketAddr::from_abstract_name(
        format!(
            "vhost-vf-{}-{:p}",
            std::process::id(),
            Arc::as_ptr(&backend)
        )
        .as_bytes(),
    )
    .map_err(Error::Internal)?;
    let mut inner = Listener::from(UnixListener::bind_addr(&inner_addr).map_err(Error::Internal)?);
    match &mode {
        Mode::Server(path) => info!(socket = %path.display(), "listening for a front-end"),
        Mode::Client(path) => info!(socket = %path.display(), "connecting to the front-end"),
    }
    loop {
        let frontend = match (&mode, outer.as_ref()) {
            (Mode::Server(_), Some(listener)) => accept(listener),
            (Mode::Client(path), _) => connect(path),
            (Mode::Server(_), None) => unreachable!("server mode always has a listener"),
        };
        let Some(frontend) = frontend else { continue };
        serve_one(&backend, frontend, &inner_addr, &mut inner)?;
    }
}

/// Serves one front-end connection until it ends, then resets the device.
fn serve_one(
    backend: &Arc<NetBackend>,
    frontend: UnixStream,
    inner_addr: &SocketAddr,
    inner: &mut Listener,
) -> Result<(), Error> {
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

    let relayed = UnixStream::connect_addr(inner_addr)
        .and_then(|to_handler| relay::spawn(frontend, to_handler, backend.config_notifier()));
    let connected = match relayed {
        Ok(()) => match daemon.start(inner) {
            Ok(()) => true,
            Err(e) => {
                warn_unlimited!("starting the vhost-user handler failed: {e}");
                false
            }
        },
        Err(e) => {
            warn_unlimited!("cannot relay the front-end connection: {e}");
            false
        }
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
    backend.reset(|stats| {
        if connected {
            info!(%stats, "front-end disconnected; waiting for the next one");
        }
    });
    // Dropping the daemon stops and joins its worker thread.
    drop(daemon);
    Ok(())
}

/// Binds the front-end socket, replacing a stale socket file but nothing else.
fn listen(path: &Path) -> Result<UnixListener, Error> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(Error::PathTaken {
                path: path.to_path_buf(),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).map_err(|source| Error::Listen {
        path: path.to_path_buf(),
        source,
    })
}

fn accept(listener: &UnixListener) -> Option<UnixStream> {
    match listener.accept() {
        Ok((stream, _)) => Some(stream),
        Err(e) => {
            warn_unlimited!("accepting a front-end failed: {e}");
            thread::sleep(RETRY_MIN);
            None
        }
    }
}

fn connect(path: &Path) -> Option<UnixStream> {
    let mut wait = RETRY_MIN;
    let mut reported = false;
    loop {
        match UnixStream::connect(path) {
            Ok(stream) => return Some(stream),
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
