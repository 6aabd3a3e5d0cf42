//! virtio-net (virtio 1.2, section 5.1) on a TAP: one rx and one tx queue, no control
//! queue, no multiqueue. Frames pass between guest memory and the TAP with their 12-byte
//! virtio-net header unchanged (the TAP's IFF_VNET_HDR header), so checksum and
//! segmentation offloads cost the device nothing: the host kernel does the work, or the
//! guest's, whichever the negotiated features say.
//!
//! Layers: `features` (what we offer, what the TAP must do for what the guest took),
//! `tx` and `rx` (the two queues, no fds), `handler` (both queues behind one interrupt
//! decision), `backend` (the trait a TAP or a test fake implements), `tap` (the real
//! one: /dev/net/tun and its ioctls), `device` (configuration, activation, event-manager
//! glue).

mod backend;
mod device;
mod features;
mod handler;
mod log_limit;
mod rx;
mod tap;
mod tx;

#[cfg(test)]
mod fake_tap;
#[cfg(test)]
mod tests;

pub use backend::NetBackend;
pub use device::{Net, NetConfig, NetError, TapSource};
pub use features::*;
pub use handler::{NetHandler, Outcome, Round};
pub use tap::{Tap, TapError};

/// `struct virtio_net_hdr_v1`, in front of every frame both ways (also with
/// VIRTIO_NET_F_MRG_RXBUF: VERSION_1 always has `num_buffers`).
pub const NET_HDR_LEN: usize = 12;
/// Largest header + frame in either direction: a 64 KiB GSO packet with its Ethernet
/// header (virtio 1.2, 5.1.6.3.1: "buffers of at least 65562 bytes").
pub const MAX_FRAME_LEN: usize = 65562;

/// Index of the receive queue (device to guest).
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue (guest to device).
pub const TX_QUEUE: usize = 1;
