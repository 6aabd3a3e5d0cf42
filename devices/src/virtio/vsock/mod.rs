//! virtio-vsock (virtio 1.2, section 5.10) in user space, with the Unix-socket "hybrid
//! vsock" backend of Firecracker and Cloud Hypervisor:
//! - host-initiated: a client connects to `uds_path`, writes `CONNECT <port>\n` and reads
//!   `OK <host_port>\n` once the guest accepted;
//! - guest-initiated: a guest connection to host port P is forwarded to `<uds_path>_P`,
//!   and reset if nobody listens there.
//!
//! Layers: `packet` (headers and descriptor chains), `handler` (queues, no fds),
//! `connection` (one stream's state machine) with `credit` (flow control) and `backlog`
//! (guest data the host has not taken yet), `muxer` (the sockets, routing and round-robin
//! scheduling), `uds` (socket plumbing), `device` (transport and event-manager glue).

mod backlog;
mod connection;
mod credit;
mod device;
mod handler;
mod muxer;
mod packet;
mod uds;

#[cfg(test)]
mod test_utils;
#[cfg(test)]
mod tests;

pub use device::{Vsock, VsockConfig, VsockError};
pub use handler::{VsockBackend, VsockHandler};
/// The Unix-socket backend and the `CONNECT` line reader, public so that fuzz targets
/// drive them without a device thread.
pub use muxer::{Muxer, MuxerError};
pub use packet::{PacketError, PacketHeader, RxBuffer, TxPacket};
pub use uds::{parse_connect_line, LineStatus, PendingClient, CONNECT_LINE_MAX};

/// The host's context ID; the guest's comes from the configuration.
pub const HOST_CID: u64 = 2;
/// Size of `struct virtio_vsock_hdr` on the wire.
pub const HEADER_LEN: usize = 44;
/// Largest payload we accept from, or send to, the guest in one packet.
pub const MAX_PAYLOAD: u32 = 64 * 1024;

pub const VSOCK_TYPE_STREAM: u16 = 1;

pub const VSOCK_OP_REQUEST: u16 = 1;
pub const VSOCK_OP_RESPONSE: u16 = 2;
pub const VSOCK_OP_RST: u16 = 3;
pub const VSOCK_OP_SHUTDOWN: u16 = 4;
pub const VSOCK_OP_RW: u16 = 5;
pub const VSOCK_OP_CREDIT_UPDATE: u16 = 6;
pub const VSOCK_OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive / send no more data.
pub const VSOCK_FLAGS_SHUTDOWN_RCV: u32 = 1;
pub const VSOCK_FLAGS_SHUTDOWN_SEND: u32 = 2;
