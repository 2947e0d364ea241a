//! The vhost-user session of the driver: connect, negotiate features and protocol features,
//! share the memory table, set up and enable the rx and tx vrings, read the config space, and
//! add or remove memory regions while running (VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS).
//!
//! Invariant: messages go in the order QEMU sends them when it starts a virtio-net device
//! (SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES, SET_BACKEND_REQ_FD with BACKEND_REQ,
//! SET_FEATURES, SET_MEM_TABLE, then per ring NUM, BASE, ADDR, KICK, CALL, and SET_VRING_ENABLE
//! last), so a back-end that works with QEMU sees nothing unusual before the data path starts.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::GuestAddress;

use super::Error;
use super::backend_channel::BackendChannel;
use super::memory::{GuestRam, MemoryLayout};
use super::net::{CONFIG_LEN, NetConfig, feature};
use super::queue::Virtqueue;

/// `VHOST_USER_F_PROTOCOL_FEATURES`: bit 30 of the virtio feature word in vhost-user.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// The two queues of a single-pair virtio-net device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueId {
    /// Queue 0: the device writes received frames into driver buffers.
    Rx,
    /// Queue 1: the driver hands frames to the device.
    Tx,
}

impl QueueId {
    /// The vhost-user queue index.
    pub fn index(self) -> usize {
        match self {
            QueueId::Rx => 0,
            QueueId::Tx => 1,
        }
    }
}

/// How the driver sets itself up.
#[derive(Clone, Debug)]
pub struct FrontendOptions {
    /// Guest memory shape.
    pub memory: MemoryLayout,
    /// Entries of each queue (a power of two).
    pub queue_size: u16,
    /// Virtio feature bits to acknowledge; all must be offered. `VHOST_USER_F_PROTOCOL_FEATURES`
    /// is added whenever the back-end offers it.
    pub features: u64,
    /// Virtio feature bits to acknowledge when offered, as a driver takes what it can use.
    pub optional_features: u64,
    /// Protocol features to acknowledge among those offered. With BACKEND_REQ negotiated the
    /// session sets up the back-end channel (SET_BACKEND_REQ_FD), which the caller must then
    /// read ([`NetFrontend::take_backend_channel`]): a back-end that wants answers waits on it.
    pub protocol_features: VhostUserProtocolFeatures,
    /// Bytes of the buffer slot behind each tx descriptor.
    pub tx_slot_size: u32,
    /// Bytes of the buffer slot behind each rx descriptor (the most an rx buffer can have).
    pub rx_slot_size: u32,
    /// How long to retry connecting while the socket is missing or refuses, and how long to
    /// wait for each reply: a back-end that stops answering fails the request, never hangs it.
    pub timeout: Duration,
}

impl Default for FrontendOptions {
    fn default() -> Self {
        FrontendOptions {
            memory: MemoryLayout::default(),
            queue_size: 256,
            features: feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_NET_F_MRG_RXBUF),
            optional_features: 0,
            protocol_features: VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIG,
            tx_slot_size: 4096,
            rx_slot_size: 4096,
            timeout: Duration::from_secs(10),
        }
    }
}

impl FrontendOptions {
    /// Turns feature bit `bit` on or off.
    pub fn with_feature(mut self, bit: u32, on: bool) -> Self {
        if on {
            self.features |= feature(bit);
        } else {
            self.features &= !feature(bit);
        }
        self
    }
}

/// A connected, running virtio-net driver. Dropping it closes the socket: the back-end sees an
/// abrupt disconnect, as when QEMU dies; [`NetFrontend::close`] stops the rings first, as QEMU
/// does on a clean stop.
pub struct NetFrontend {
    // Field order is drop order: the socket closes before the memory is unmapped.
    pub(super) vu: Frontend,
    backend_channel: Option<BackendChannel>,
    pub(super) queues: [Virtqueue; 2],
    pub(super) ram: GuestRam,
    pub(super) timeout: Duration,
    offered: u64,
    acked: u64,
    protocol: VhostUserProtocolFeatures,
}

/// Connects to `path`, retrying while it is missing or refuses, with `timeout` on each read
/// and write.
fn connect_stream(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    let stream = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) && Instant::now() < deadline =>
            {
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

fn req(request: &'static str) -> impl FnOnce(vhost::Error) -> Error {
    move |source| Error::Request { request, source }
}

impl NetFrontend {
    /// Connects to the back-end listening on `path` and brings both queues up.
    pub fn connect(path: impl AsRef<Path>, opts: &FrontendOptions) -> Result<Self, Error> {
        let path = path.as_ref();
        let stream = connect_stream(path, opts.timeout).map_err(|source| Error::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let mut vu = Frontend::from_stream(stream, 2);
        vu.set_owner().map_err(req("SET_OWNER"))?;

        let offered = vu.get_features().map_err(req("GET_FEATURES"))?;
        let missing = opts.features & !offered;
        if missing != 0 {
            return Err(Error::FeatureNotOffered { missing, offered });
        }
        let mut acked = opts.features | (opts.optional_features & offered);
        let mut protocol = VhostUserProtocolFeatures::empty();
        let mut backend_channel = None;
        if offered & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            acked |= VHOST_USER_F_PROTOCOL_FEATURES;
            let offered_protocol = vu
                .get_protocol_features()
                .map_err(req("GET_PROTOCOL_FEATURES"))?;
            protocol = offered_protocol & opts.protocol_features;
            vu.set_protocol_features(protocol)
                .map_err(req("SET_PROTOCOL_FEATURES"))?;
            if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Every later request asks for an ack, so a refusal surfaces at its request.
                vu.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if protocol.contains(VhostUserProtocolFeatures::BACKEND_REQ) {
                // Where QEMU sets it up (vhost_user_backend_init): right after the protocol
                // features, before SET_FEATURES.
                backend_channel = Some(BackendChannel::open(&mut vu, opts.timeout)?);
            }
        }
        vu.set_features(acked).map_err(req("SET_FEATURES"))?;

        let mut ram = GuestRam::new(opts.memory)?;
        let regions: Vec<VhostUserMemoryRegionInfo> = ram.region_infos()?;
        vu.set_mem_table(&regions).map_err(req("SET_MEM_TABLE"))?;

        let event_idx = acked & feature(VIRTIO_RING_F_EVENT_IDX) != 0;
        let rx = Virtqueue::new(&mut ram, 0, opts.queue_size, opts.rx_slot_size, event_idx)?;
        let tx = Virtqueue::new(&mut ram, 1, opts.queue_size, opts.tx_slot_size, event_idx)?;
        for q in [&rx, &tx] {
            let i = q.index();
            vu.set_vring_num(i, q.ring().size())
                .map_err(req("SET_VRING_NUM"))?;
            vu.set_vring_base(i, 0).map_err(req("SET_VRING_BASE"))?;
            vu.set_vring_addr(i, &q.config_data(&ram)?)
                .map_err(req("SET_VRING_ADDR"))?;
            vu.set_vring_kick(i, q.kick_fd())
                .map_err(req("SET_VRING_KICK"))?;
            vu.set_vring_call(i, q.call_fd())
                .map_err(req("SET_VRING_CALL"))?;
        }
        if acked & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            // With protocol features the rings start disabled (vhost-user "Ring states").
            for q in [&rx, &tx] {
                vu.set_vring_enable(q.index(), true)
                    .map_err(req("SET_VRING_ENABLE"))?;
            }
        }
        Ok(NetFrontend {
            vu,
            backend_channel,
            queues: [rx, tx],
            ram,
            timeout: opts.timeout,
            offered,
            acked,
            protocol,
        })
    }

    /// Feature bits the back-end offered (VHOST_USER_F_PROTOCOL_FEATURES among them).
    pub fn offered_features(&self) -> u64 {
        self.offered
    }

    /// Feature bits acknowledged (SET_FEATURES).
    pub fn acked_features(&self) -> u64 {
        self.acked
    }

    /// Whether feature bit `bit` was acknowledged.
    pub fn has_feature(&self, bit: u32) -> bool {
        self.acked & feature(bit) != 0
    }

    /// Protocol features acknowledged.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// The back-end channel, set up at connect when BACKEND_REQ was negotiated, for the caller
    /// to read from now on; `None` without BACKEND_REQ or once taken. Dropping it closes the
    /// channel.
    pub fn take_backend_channel(&mut self) -> Option<BackendChannel> {
        self.backend_channel.take()
    }

    /// The guest memory, to build raw chains and indirect tables in.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// The guest memory, mutably (to allocate from it).
    pub fn ram_mut(&mut self) -> &mut GuestRam {
        &mut self.ram
    }

    /// Queue `q`.
    pub fn queue(&self, q: QueueId) -> &Virtqueue {
        &self.queues[q.index()]
    }

    /// GET_CONFIG of `size` bytes at `offset` of the device config space.
    pub fn get_config_bytes(&mut self, offset: u32, size: u32) -> Result<Vec<u8>, Error> {
        let buf = vec![0u8; usize::try_from(size).unwrap_or(usize::MAX)];
        let (_, payload) = self
            .vu
            .get_config(offset, size, VhostUserConfigFlags::empty(), &buf)
            .map_err(req("GET_CONFIG"))?;
        Ok(payload)
    }

    /// GET_CONFIG of the virtio-net config space up to `mtu`.
    pub fn get_config(&mut self) -> Result<NetConfig, Error> {
        let len = u32::try_from(CONFIG_LEN).expect("the config prefix is 12 bytes");
        NetConfig::parse(&self.get_config_bytes(0, len)?)
    }

    /// GET_VRING_BASE: stops queue `q` and returns the device's next avail index for it. The
    /// queue carries no more traffic on this connection.
    pub fn get_vring_base(&mut self, q: QueueId) -> Result<u32, Error> {
        self.vu
            .get_vring_base(q.index())
            .map_err(req("GET_VRING_BASE"))
    }

    /// GET_MAX_MEM_SLOTS: how many memory regions the back-end can hold at once.
    pub fn max_mem_slots(&mut self) -> Result<u64, Error> {
        self.vu
            .get_max_mem_slots()
            .map_err(req("GET_MAX_MEM_SLOTS"))
    }

    /// Maps a new guest memory region of `size` bytes at `addr` (see [`GuestRam::add_region`])
    /// and shares it with ADD_MEM_REG. With REPLY_ACK negotiated the back-end has mapped it
    /// when this returns, so chains may point into it at once; without, the caller cannot know.
    pub fn add_mem_region(&mut self, addr: GuestAddress, size: u64) -> Result<(), Error> {
        let info = self.ram.add_region(addr, size)?;
        if let Err(source) = self.vu.add_mem_region(&info) {
            // Keep both sides' tables equal: the back-end does not know the region.
            self.ram.remove_region(addr)?;
            return Err(Error::Request {
                request: "ADD_MEM_REG",
                source,
            });
        }
        Ok(())
    }

    /// Removes the region added at `addr` with REM_MEM_REG, then unmaps it here. The caller
    /// must have seen every chain that pointed into it returned in the used ring first.
    pub fn remove_mem_region(&mut self, addr: GuestAddress) -> Result<(), Error> {
        let info = self.ram.added_region_info(addr)?;
        self.vu
            .remove_mem_region(&info)
            .map_err(req("REM_MEM_REG"))?;
        // Only now: the back-end may have touched the region until it acknowledged.
        self.ram.remove_region(addr)
    }

    /// Stops both queues with GET_VRING_BASE, as QEMU does when it stops the device, and
    /// disconnects. Returns the two bases (rx, tx).
    pub fn close(mut self) -> Result<(u32, u32), Error> {
        let rx = self.get_vring_base(QueueId::Rx)?;
        let tx = self.get_vring_base(QueueId::Tx)?;
        Ok((rx, tx))
    }
}
