//! The virtio-net device: configuration, features, activation, and the event-manager glue
//! that runs its queues and its TAP on the device thread (the `QueueWorker` half;
//! `VirtioFront` is the transport's).

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::QueueT;
use vmm_sys_util::epoll::EventSet;

use super::backend::NetBackend;
use super::features::{offered_features, tap_offloads, VIRTIO_NET_S_LINK_UP};
use super::handler::{NetHandler, Outcome, Round};
use super::tap::{Tap, TapError};
use super::{RX_QUEUE, TX_QUEUE};
use crate::virtio::{
    ActivateError, Activation, DeviceBase, QueueBroken, QueueWorker, VIRTIO_RING_F_EVENT_IDX,
};

const VIRTIO_ID_NET: u32 = 1;
const QUEUE_SIZES: [u16; 2] = [256, 256];
/// Event-manager data tag of the TAP (the queues are tagged with their index).
const TAP_EVENT: u32 = 2;
/// `struct virtio_net_config` up to and including `mtu`.
const CONFIG_LEN: usize = 12;

/// Where the device's frames go.
#[derive(Debug)]
pub enum TapSource {
    /// A TAP by name: opened, or created if it does not exist (needs CAP_NET_ADMIN).
    Name(String),
    /// A TAP the caller opened (e.g. before dropping privileges).
    Open(Tap),
}

impl From<&str> for TapSource {
    fn from(name: &str) -> Self {
        Self::Name(name.to_string())
    }
}

impl From<Tap> for TapSource {
    fn from(tap: Tap) -> Self {
        Self::Open(tap)
    }
}

/// A net device's configuration.
#[derive(Debug)]
pub struct NetConfig {
    /// The TAP, by name or already open.
    pub tap: TapSource,
    /// The guest's MAC address (unicast, not all zeroes).
    pub mac: [u8; 6],
    /// The MTU the guest is told to use (VIRTIO_NET_F_MTU, 68..=65535); `None` leaves
    /// it to the guest (1500 for Linux). The host side of the TAP should match it.
    pub mtu: Option<u16>,
}

/// Why a net device cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TAP cannot be opened or set up.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// A guest MAC must be a unicast address.
    #[error("MAC address {} is multicast or all zeroes", format_mac(.0))]
    InvalidMac([u8; 6]),
    /// Linux refuses an MTU below 68 (IPv4's minimum).
    #[error("MTU {0} is outside 68..=65535")]
    InvalidMtu(u16),
    /// The queue or interrupt eventfds.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}

fn format_mac(mac: &[u8; 6]) -> String {
    let hex: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

/// A virtio-net device on a TAP: the `QueueWorker` (and event-manager subscriber) that
/// the VMM splits with `VirtioFront::new` and adds like blk and vsock.
pub struct Net {
    base: DeviceBase,
    backend: Box<dyn NetBackend>,
    handler: Option<NetHandler>,
    /// The TAP refused a frame (EAGAIN): tx resumes when it is writable.
    tx_waiting: bool,
    /// The TAP reported an error or hang-up (logged once).
    tap_trouble: bool,
    /// TUN offloads for the driver that just activated the device, set on the device
    /// thread before it reads a frame (activation runs on a vCPU thread, whose seccomp
    /// filter has no TAP ioctls).
    pending_offloads: Option<u32>,
}

impl Net {
    /// Opens the TAP (unless it comes open) and builds the device.
    pub fn new(config: NetConfig) -> Result<Self, NetError> {
        let tap = match config.tap {
            TapSource::Name(name) => Tap::open(&name)?,
            TapSource::Open(tap) => tap,
        };
        Self::with_backend(Box::new(tap), config.mac, config.mtu)
    }

    /// A device over any backend (a TAP, a test fake).
    pub fn with_backend(
        backend: Box<dyn NetBackend>,
        mac: [u8; 6],
        mtu: Option<u16>,
    ) -> Result<Self, NetError> {
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(NetError::InvalidMac(mac));
        }
        if let Some(m) = mtu.filter(|&m| m < 68) {
            return Err(NetError::InvalidMtu(m));
        }
        let features = offered_features(backend.supported_offloads(), mtu.is_some());
        let base = DeviceBase::new(
            "virtio-net",
            VIRTIO_ID_NET,
            &QUEUE_SIZES,
            features,
            &config_space(mac, mtu),
        )
        .map_err(NetError::EventFd)?;
        Ok(Self {
            base,
            backend,
            handler: None,
            tx_waiting: false,
            tap_trouble: false,
            pending_offloads: None,
        })
    }

    /// Gives the TAP the offloads of a new driver; a TAP that refuses them would hand the
    /// guest frames it cannot take, so the device gives up on the driver instead.
    fn apply_offloads(&mut self) {
        let Some(offloads) = self.pending_offloads.take() else {
            return;
        };
        if let Err(e) = self.backend.set_offloads(offloads) {
            log::warn!(
                "virtio-net: the TAP refused offloads {offloads:#x}: {e}; the device needs a reset"
            );
            self.handler = None;
            self.base.interrupt().set_needs_reset();
        }
    }

    fn process_tx(&mut self, ops: &mut EventOps) {
        let Some(handler) = self.handler.as_mut() else {
            return;
        };
        let result = handler.process_tx(self.backend.as_mut());
        self.tx_waiting = matches!(
            result,
            Ok(Outcome {
                round: Round::Waiting,
                ..
            })
        );
        if self.tx_waiting {
            // Re-arming polls the TAP now: a TAP that is already writable again reports
            // EPOLLOUT at once, one that is not will when it is (an edge we would miss
            // if nobody polled it while it was full).
            self.watch_tap(ops, true);
        }
        self.completed(result, TX_QUEUE);
    }

    fn process_rx(&mut self) {
        let Some(handler) = self.handler.as_mut() else {
            return;
        };
        let result = handler.process_rx(self.backend.as_mut());
        self.completed(result, RX_QUEUE);
    }

    /// Interrupts the driver if it asked; comes back later to a queue that used up its
    /// budget; gives up on the queues when one broke.
    fn completed(&mut self, result: Result<Outcome, QueueBroken>, queue: usize) {
        if let Ok(Outcome {
            round: Round::Budget,
            ..
        }) = result
        {
            self.base.kick(queue);
        }
        if !self.base.completed(result.map(|o| o.interrupt)) {
            self.handler = None;
            self.tx_waiting = false;
        }
    }

    /// Watches the TAP, edge-triggered: a frame arriving and room to write again each
    /// wake the device thread once.
    fn watch_tap(&self, ops: &mut EventOps, rearm: bool) {
        let set = EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED;
        let events = Events::with_data_raw(self.backend.fd(), TAP_EVENT, set);
        let result = if rearm {
            ops.modify(events)
        } else {
            ops.add(events)
        };
        if let Err(e) = result {
            log::error!("virtio-net: cannot watch the TAP: {e:?}");
        }
    }
}

fn config_space(mac: [u8; 6], mtu: Option<u16>) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    c[0..6].copy_from_slice(&mac);
    c[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
    c[8..10].copy_from_slice(&1u16.to_le_bytes()); // max_virtqueue_pairs
    c[10..12].copy_from_slice(&mtu.unwrap_or(0).to_le_bytes());
    c
}

impl QueueWorker for Net {
    fn base(&self) -> &DeviceBase {
        &self.base
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Activation {
            mem,
            queues,
            acked_features,
        } = activation;
        let n = queues.len();
        let mut queues = queues.into_iter();
        let (Some(mut rx), Some(mut tx)) = (queues.next(), queues.next()) else {
            return Err(ActivateError::QueueNotReady(n));
        };
        let event_idx = acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        rx.set_event_idx(event_idx);
        tx.set_event_idx(event_idx);
        // Before any frame is read (the front's kicks bring the device thread here
        // first): the TAP hands us only what the guest takes.
        self.pending_offloads = Some(tap_offloads(acked_features));
        self.handler = Some(NetHandler::new(mem, rx, tx, acked_features));
        self.tx_waiting = false;
        Ok(())
    }

    fn reset(&mut self) {
        self.handler = None;
        self.tx_waiting = false;
        self.pending_offloads = None;
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        self.base.watch_queues(ops);
        self.watch_tap(ops, false);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.apply_offloads();
        match self.base.notified_queue(&events) {
            Some(RX_QUEUE) => self.process_rx(),
            Some(TX_QUEUE) => self.process_tx(ops),
            Some(_) => {}
            None if events.data() == TAP_EVENT => {
                let set = events.event_set();
                // Edge-triggered: this comes once per change of the TAP, not in a loop;
                // reads and writes say what is wrong.
                if set.intersects(EventSet::ERROR | EventSet::HANG_UP) && !self.tap_trouble {
                    log::warn!("virtio-net: the TAP reports an error or hang-up");
                    self.tap_trouble = true;
                }
                if set.contains(EventSet::IN) {
                    self.process_rx();
                }
                if set.contains(EventSet::OUT) && self.tx_waiting {
                    self.process_tx(ops);
                }
            }
            None => log::warn!("virtio-net: unexpected event tag {}", events.data()),
        }
    }
}
