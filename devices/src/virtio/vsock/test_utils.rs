//! Test doubles: guest memory, the split-virtqueue driver (re-exported: it wraps around
//! the rings the way a real driver does, so tests can run thousands of packets through a
//! small queue), and a fake host stream.

use std::collections::VecDeque;
use std::io::{self, Write};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    GuestAddress, GuestMemoryMmap, ReadVolatile, VolatileMemoryError, VolatileSlice, WriteVolatile,
};

use super::connection::HostStream;
pub use crate::virtio::test_ring::TestRing as TestDriver;

/// 64 MiB of guest memory; queues live in the first MiB, buffers above it.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
}

/// A host stream that takes `room` bytes before it would block and reads from `input`.
#[derive(Debug, Default)]
pub struct FakeStream {
    pub written: Vec<u8>,
    pub room: usize,
    pub input: VecDeque<u8>,
    /// Reads return end-of-stream once `input` is empty (instead of EAGAIN).
    pub eof: bool,
    /// Writes fail with EPIPE.
    pub broken: bool,
}

impl FakeStream {
    pub fn with_room(room: usize) -> Self {
        Self {
            room,
            ..Self::default()
        }
    }

    fn take(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let n = data.len().min(self.room);
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.room -= n;
        self.written.extend_from_slice(&data[..n]);
        Ok(n)
    }
}

impl Write for FakeStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.take(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl WriteVolatile for FakeStream {
    fn write_volatile<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let mut data = vec![0; buf.len()];
        buf.copy_to(&mut data[..]);
        self.take(&data).map_err(VolatileMemoryError::IOError)
    }
}

impl ReadVolatile for FakeStream {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        if self.input.is_empty() {
            return if self.eof {
                Ok(0)
            } else {
                Err(VolatileMemoryError::IOError(
                    io::ErrorKind::WouldBlock.into(),
                ))
            };
        }
        let n = buf.len().min(self.input.len());
        let data: Vec<u8> = self.input.drain(..n).collect();
        buf.copy_from(&data[..]);
        Ok(n)
    }
}

impl HostStream for FakeStream {
    fn shutdown_write(&self) -> io::Result<()> {
        Ok(())
    }
}
