//! The virtio-net device as vhost-user-backend sees it: features, config space, memory table,
//! and the dispatch of worker events to the [`Forwarder`].
//!
//! One `NetBackend` lives as long as its port and serves one front-end at a time; between
//! front-ends it is [`reset`](NetBackend::reset) to its initial state.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use vf_dataplane::{LinkState, error_unlimited, warn_unlimited};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::VhostUserBackend;
use virtio_bindings::virtio_net::VIRTIO_NET_S_LINK_UP;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use crate::config_notify::ConfigNotifier;
use crate::features::{self, Negotiated};
use crate::stats::NetStats;
use crate::worker::{Forwarder, NUM_QUEUES, Vring, WorkerEpoll};

/// Static device settings given on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// MAC address in the config space.
    pub mac: [u8; 6],
    /// MTU in the config space, and the tx frame limit.
    pub mtu: u16,
    /// Largest queue size the front-end may set.
    pub max_queue_size: u16,
}

/// Length of the config space fields we serve: mac, status, max_virtqueue_pairs, mtu
/// (virtio 1.2 §5.1.4).
const CONFIG_SPACE_LEN: usize = 12;

/// The vhost-user virtio-net device.
pub struct NetBackend {
    config: DeviceConfig,
    offered: u64,
    forwarder: Mutex<Forwarder>,
    notifier: Arc<ConfigNotifier>,
}

impl NetBackend {
    /// A device for `forwarder`'s port.
    pub fn new(config: DeviceConfig, mut forwarder: Forwarder) -> Self {
        let offered = features::offered(forwarder.port().offloads());
        let notifier = Arc::new(ConfigNotifier::default());
        forwarder.set_config_notifier(notifier.clone());
        NetBackend {
            config,
            offered,
            forwarder: Mutex::new(forwarder),
            notifier,
        }
    }

    /// Where config-change notifications go; the relay gives it each connection's back-end
    /// channel.
    pub fn config_notifier(&self) -> Arc<ConfigNotifier> {
        self.notifier.clone()
    }

    fn forwarder(&self) -> MutexGuard<'_, Forwarder> {
        // A panic while holding the lock would already have ended the worker; the state is
        // still consistent enough to reset, so take it rather than poison the daemon.
        self.forwarder.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands the worker's epoll set to the forwarder for a new front-end connection.
    pub fn attach_worker(&self, epoll: WorkerEpoll) -> Result<(), crate::worker::Error> {
        self.forwarder().attach(epoll)
    }

    /// Returns the device to its state before any front-end, and hands the counters of the
    /// connection that ended to `report` while no other reset can run: a reset racing the
    /// daemon's exit reports each connection's counters once, in order.
    pub fn reset(&self, report: impl FnOnce(NetStats)) {
        self.notifier.clear();
        let mut forwarder = self.forwarder();
        let stats = forwarder.stats();
        forwarder.reset();
        report(stats);
    }

    /// The config space bytes.
    fn config_space(&self) -> [u8; CONFIG_SPACE_LEN] {
        let status: u16 = match self.forwarder().port().link_state() {
            LinkState::Up => u16::try_from(VIRTIO_NET_S_LINK_UP).expect("status bit 0"),
            LinkState::Down => 0,
        };
        // A VF's MAC can change under the daemon (set from the PF); the guest sees the current one.
        let mac = self.forwarder().port().mac().unwrap_or(self.config.mac);
        let mut space = [0u8; CONFIG_SPACE_LEN];
        space[0..6].copy_from_slice(&mac);
        space[6..8].copy_from_slice(&status.to_le_bytes());
        space[8..10].copy_from_slice(&1u16.to_le_bytes());
        space[10..12].copy_from_slice(&self.config.mtu.to_le_bytes());
        space
    }
}

impl VhostUserBackend for NetBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.config.max_queue_size)
    }

    fn features(&self) -> u64 {
        self.offered
    }

    fn acked_features(&self, acked: u64) {
        let negotiated = Negotiated::new(acked, self.config.mtu);
        if let Err(e) = self.forwarder().set_negotiated(negotiated) {
            warn_unlimited!("cannot set the port's offloads for the acked features: {e}");
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        features::protocol()
    }

    fn reset_device(&self) {
        self.reset(|_| {});
    }

    fn set_event_idx(&self, _enabled: bool) {
        // vhost-user-backend sets EVENT_IDX on the queues themselves.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let space = self.config_space();
        let start = (offset as usize).min(CONFIG_SPACE_LEN);
        let end = start.saturating_add(size as usize).min(CONFIG_SPACE_LEN);
        let mut bytes = space[start..end].to_vec();
        // Fields past ours (speed, duplex, RSS) read as zero.
        bytes.resize(size as usize, 0);
        bytes
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.forwarder().set_memory(&mem).map_err(|e| {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            error_unlimited!("memory table refused: {message}");
            io::Error::other(message)
        })
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        let index = usize::try_from(queue_index).map_err(io::Error::other)?;
        self.forwarder().stop_queue(index).map_err(io::Error::other)
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Each connection builds new worker threads and asks for a fresh exit event; dropping
        // the daemon fires it and joins them.
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        self.forwarder()
            .handle_event(device_event, vrings)
            .map_err(io::Error::other)
    }
}

impl NetBackend {
    /// The device wrapped for vhost-user-backend, which wants a cloneable handle.
    pub fn into_shared(self) -> Arc<Self> {
        Arc::new(self)
    }
}
