//! The trait between the queues and the host side: a TAP with IFF_VNET_HDR, or a fake in
//! tests. A frame is always the 12-byte virtio-net header followed by an Ethernet frame,
//! and it moves straight between the backend and guest memory.

use std::io;
use std::os::fd::RawFd;

use vm_memory::{GuestAddress, GuestMemoryMmap};

/// A host-side frame endpoint: `Tap`, or a fake in tests.
pub trait NetBackend: Send {
    /// Reads the next frame into the guest ranges `bufs`, in order, then into `spill`
    /// for what does not fit; returns the frame's length (more than the ranges hold when
    /// it spilled). `WouldBlock` when no frame is waiting.
    fn read_frame(
        &mut self,
        mem: &GuestMemoryMmap,
        bufs: &[(GuestAddress, u32)],
        spill: &mut [u8],
    ) -> io::Result<usize>;

    /// Writes one frame gathered from the guest ranges `bufs`. `WouldBlock` when the
    /// backend cannot take it now: the caller keeps the frame and retries when `fd()`
    /// is writable. Any other error means the frame was refused (and is dropped).
    fn write_frame(
        &mut self,
        mem: &GuestMemoryMmap,
        bufs: &[(GuestAddress, u32)],
    ) -> io::Result<()>;

    /// What the device thread watches, edge-triggered, for EPOLLIN (a frame arrived) and
    /// EPOLLOUT (room to write again).
    fn fd(&self) -> RawFd;

    /// The TUN_F_* offloads the backend can turn on.
    fn supported_offloads(&self) -> u32;

    /// Turns on exactly `offloads` (TUN_F_*): frames read afterwards may carry them.
    fn set_offloads(&mut self, offloads: u32) -> io::Result<()>;
}
