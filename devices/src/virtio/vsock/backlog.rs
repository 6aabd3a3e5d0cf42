//! Guest bytes on their way to a host stream. They go from guest memory straight to the
//! stream (write(2) from the guest's buffer, one copy); only what a full stream refuses is
//! copied into the backlog, whose size the credit we advertise bounds.

use std::io::{self, Write};

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, WriteVolatile};

use super::packet::into_io_error;

#[derive(Debug, Default)]
pub struct Backlog {
    /// `buf[off..]` is waiting.
    buf: Vec<u8>,
    off: usize,
}

impl Backlog {
    pub fn len(&self) -> usize {
        self.buf.len() - self.off
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes `payload` to `stream` behind anything already waiting and keeps what the
    /// stream does not take. Returns the bytes that reached the stream; an error means the
    /// stream is broken (the caller resets the connection).
    pub fn write_from_guest<W: WriteVolatile>(
        &mut self,
        stream: &mut W,
        payload: &[(GuestAddress, u32)],
        mem: &GuestMemoryMmap,
    ) -> io::Result<usize> {
        let mut written = 0;
        for &(addr, len) in payload {
            let len = len as usize;
            let n = if self.is_empty() {
                write_guest(stream, addr, len, mem)?
            } else {
                0
            };
            written += n;
            if n < len {
                let old = self.buf.len();
                self.buf.resize(old + len - n, 0);
                // The range was checked against guest memory when the packet was parsed.
                mem.read_slice(&mut self.buf[old..], addr.unchecked_add(n as u64))
                    .map_err(io::Error::other)?;
            }
        }
        Ok(written)
    }

    /// Writes waiting bytes until the stream is full; returns how many it took.
    pub fn flush<W: Write>(&mut self, stream: &mut W) -> io::Result<usize> {
        let mut written = 0;
        while self.off < self.buf.len() {
            match stream.write(&self.buf[self.off..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.off += n;
                    written += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.off == self.buf.len() {
            self.buf.clear();
            self.off = 0;
        } else if self.off >= self.buf.len() / 2 {
            // Keep the buffer from creeping: what is left is at most half of it.
            self.buf.drain(..self.off);
            self.off = 0;
        }
        Ok(written)
    }
}

/// Writes guest memory to the stream until done or the stream is full.
fn write_guest<W: WriteVolatile>(
    stream: &mut W,
    addr: GuestAddress,
    len: usize,
    mem: &GuestMemoryMmap,
) -> io::Result<usize> {
    let mut total = 0;
    for slice in mem.get_slices(addr, len) {
        let slice = slice.map_err(io::Error::other)?;
        let mut done = 0;
        while done < slice.len() {
            let rest = slice.offset(done).map_err(into_io_error)?;
            match stream.write_volatile(&rest).map_err(into_io_error) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total + done),
                Err(e) => return Err(e),
            }
        }
        total += done;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::vsock::test_utils::FakeStream;

    fn mem_with(data: &[(u64, &[u8])]) -> GuestMemoryMmap {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        for &(at, bytes) in data {
            mem.write_slice(bytes, GuestAddress(at)).unwrap();
        }
        mem
    }

    #[test]
    fn a_stream_with_room_takes_everything_directly() {
        let mem = mem_with(&[(0x1000, b"hello "), (0x2000, b"world")]);
        let mut s = FakeStream::with_room(100);
        let mut b = Backlog::default();
        let payload = [(GuestAddress(0x1000), 6), (GuestAddress(0x2000), 5)];
        assert_eq!(b.write_from_guest(&mut s, &payload, &mem).unwrap(), 11);
        assert!(b.is_empty());
        assert_eq!(s.written, b"hello world");
    }

    #[test]
    fn what_a_full_stream_refuses_waits_in_order() {
        let mem = mem_with(&[(0x1000, b"abcdef"), (0x2000, b"ghij")]);
        let mut s = FakeStream::with_room(4);
        let mut b = Backlog::default();
        let payload = [(GuestAddress(0x1000), 6), (GuestAddress(0x2000), 4)];
        assert_eq!(b.write_from_guest(&mut s, &payload, &mem).unwrap(), 4);
        assert_eq!(b.len(), 6);
        // Later data queues behind the backlog even if the stream has room again.
        s.room = 3;
        assert_eq!(b.write_from_guest(&mut s, &payload[1..], &mem).unwrap(), 0);
        assert_eq!(b.len(), 10);
        assert_eq!(b.flush(&mut s).unwrap(), 3);
        assert_eq!(b.len(), 7);
        s.room = 100;
        assert_eq!(b.flush(&mut s).unwrap(), 7);
        assert!(b.is_empty());
        assert_eq!(s.written, b"abcdefghijghij");
        assert_eq!(b.flush(&mut s).unwrap(), 0);
    }

    #[test]
    fn broken_streams_report_errors() {
        let mem = mem_with(&[(0x1000, b"x")]);
        let mut s = FakeStream::with_room(0);
        let mut b = Backlog::default();
        let payload = [(GuestAddress(0x1000), 1)];
        assert_eq!(b.write_from_guest(&mut s, &payload, &mem).unwrap(), 0);
        s.broken = true;
        assert!(b.flush(&mut s).is_err());
        assert!(
            b.write_from_guest(&mut s, &payload, &mem).is_ok(),
            "queued behind"
        );
        let mut fresh = Backlog::default();
        assert!(fresh.write_from_guest(&mut s, &payload, &mem).is_err());
    }
}
