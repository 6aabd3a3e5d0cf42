//! A TAP in memory for tests: frames queued for the guest, frames the guest sent captured,
//! writes that would block or are refused on demand. Clones share one state, so a test
//! keeps a handle on the fake it gave the device.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::backend::NetBackend;

#[derive(Debug, Default)]
pub struct FakeState {
    /// Frames (header included) the device will read, in order.
    pub to_guest: VecDeque<Vec<u8>>,
    /// Frames (header included) the device wrote.
    pub sent: Vec<Vec<u8>>,
    /// This many writes fail with EAGAIN first.
    pub block_writes: usize,
    /// This many writes fail with EINVAL first (after any blocked ones).
    pub refuse_writes: usize,
    /// Calls of `read_frame`.
    pub reads: usize,
    /// Offloads the fake accepts, and the ones last set.
    pub supported: u32,
    pub offloads: u32,
    /// `set_offloads` fails.
    pub refuse_offloads: bool,
}

#[derive(Debug, Clone)]
pub struct FakeTap {
    state: Arc<Mutex<FakeState>>,
    /// What the device watches: written on each queued frame (an edge for EPOLLIN);
    /// always writable.
    evt: Arc<EventFd>,
}

impl FakeTap {
    pub fn new(supported: u32) -> Self {
        Self {
            state: Arc::new(Mutex::new(FakeState {
                supported,
                ..FakeState::default()
            })),
            evt: Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    /// Queues a frame for the guest and makes the fd readable, as a frame arriving does.
    pub fn push(&self, frame: Vec<u8>) {
        self.state().to_guest.push_back(frame);
        self.evt.write(1).unwrap();
    }

    pub fn sent(&self) -> Vec<Vec<u8>> {
        self.state().sent.clone()
    }
}

impl NetBackend for FakeTap {
    fn read_frame(
        &mut self,
        mem: &GuestMemoryMmap,
        bufs: &[(GuestAddress, u32)],
        spill: &mut [u8],
    ) -> io::Result<usize> {
        let mut s = self.state();
        s.reads += 1;
        let frame = s.to_guest.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
        let mut rest = &frame[..];
        for &(addr, len) in bufs {
            let n = rest.len().min(len as usize);
            mem.write_slice(&rest[..n], addr)
                .map_err(io::Error::other)?;
            rest = &rest[n..];
        }
        // Like a TAP: what fits in neither is cut off.
        let n = rest.len().min(spill.len());
        spill[..n].copy_from_slice(&rest[..n]);
        Ok(frame.len() - rest.len() + n)
    }

    fn write_frame(
        &mut self,
        mem: &GuestMemoryMmap,
        bufs: &[(GuestAddress, u32)],
    ) -> io::Result<()> {
        let mut s = self.state();
        if s.block_writes > 0 {
            s.block_writes -= 1;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if s.refuse_writes > 0 {
            s.refuse_writes -= 1;
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut frame = Vec::new();
        for &(addr, len) in bufs {
            let mut piece = vec![0; len as usize];
            mem.read_slice(&mut piece, addr).map_err(io::Error::other)?;
            frame.extend(piece);
        }
        s.sent.push(frame);
        Ok(())
    }

    fn fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }

    fn supported_offloads(&self) -> u32 {
        self.state().supported
    }

    fn set_offloads(&mut self, offloads: u32) -> io::Result<()> {
        let mut s = self.state();
        if s.refuse_offloads || offloads & !s.supported != 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        s.offloads = offloads;
        Ok(())
    }
}
