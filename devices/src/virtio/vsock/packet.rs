//! The vsock packet header and the two shapes of descriptor chain that carry packets: a tx
//! chain (guest → device: header then payload, all device-readable) and an rx buffer
//! (device → guest: room for a header and a payload, all device-writable). Everything here
//! is guest-controlled, so directions, lengths and addresses are checked before use, and a
//! header may straddle descriptors.

use std::io;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, ReadVolatile,
    VolatileMemoryError,
};

use super::{HEADER_LEN, MAX_PAYLOAD};
use crate::virtio::segments::{checked_segments, pieces, total_len, SegmentError};

/// `struct virtio_vsock_hdr`, decoded (the wire format is packed little endian).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketHeader {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub socket_type: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl PacketHeader {
    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Self {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap_or_default());
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            socket_type: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.socket_type.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// An answer to this packet: addresses swapped, no payload, no credit information.
    pub fn reply(&self, op: u16) -> Self {
        Self {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            socket_type: super::VSOCK_TYPE_STREAM,
            op,
            ..Self::default()
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("tx descriptor is device-writable")]
    DeviceWritable,
    #[error("rx descriptor is not device-writable")]
    DeviceReadable,
    #[error("descriptor chain holds {0} bytes, less than a header")]
    ShortChain(u64),
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    OutOfMemory { addr: u64, len: u32 },
    #[error("payload of {0} bytes is larger than the {MAX_PAYLOAD}-byte limit")]
    PayloadTooLong(u32),
    #[error("payload of {len} bytes, but the chain holds only {available} after the header")]
    PayloadBeyondChain { len: u32, available: u64 },
    #[error("guest memory access failed at {0:#x}")]
    Memory(u64),
}

impl From<SegmentError> for PacketError {
    fn from(e: SegmentError) -> Self {
        match e {
            SegmentError::DeviceWritable => Self::DeviceWritable,
            SegmentError::DeviceReadable => Self::DeviceReadable,
            SegmentError::OutOfMemory { addr, len } => Self::OutOfMemory { addr, len },
        }
    }
}

/// A packet from the guest. The payload is a list of guest ranges already checked to lie
/// in memory; its total length is `hdr.len`.
#[derive(Debug, Default)]
pub struct TxPacket {
    hdr: PacketHeader,
    header_ok: bool,
    payload: Vec<(GuestAddress, u32)>,
    /// The whole chain; kept to reuse its allocation.
    segs: Vec<(GuestAddress, u32)>,
}

impl TxPacket {
    pub fn hdr(&self) -> &PacketHeader {
        &self.hdr
    }

    pub fn payload(&self) -> &[(GuestAddress, u32)] {
        &self.payload
    }

    /// Whether `hdr()` was read, even if the packet as a whole was refused (the caller can
    /// still reset the connection it names).
    pub fn header_ok(&self) -> bool {
        self.header_ok
    }

    /// Parses a whole tx chain into `self`, reusing its buffers.
    pub fn parse(
        &mut self,
        descs: &[Descriptor],
        mem: &GuestMemoryMmap,
    ) -> Result<(), PacketError> {
        self.header_ok = false;
        self.payload.clear();
        checked_segments(descs, mem, false, &mut self.segs)?;
        let segs = &self.segs;
        let mut raw = [0u8; HEADER_LEN];
        let mut filled = 0;
        for (addr, len) in pieces(segs, 0, HEADER_LEN) {
            mem.read_slice(&mut raw[filled..filled + len], addr)
                .map_err(|_| PacketError::Memory(addr.raw_value()))?;
            filled += len;
        }
        if filled < HEADER_LEN {
            return Err(PacketError::ShortChain(filled as u64));
        }
        self.hdr = PacketHeader::from_bytes(&raw);
        self.header_ok = true;

        let len = self.hdr.len;
        if len > MAX_PAYLOAD {
            return Err(PacketError::PayloadTooLong(len));
        }
        let available = total_len(segs) - HEADER_LEN as u64;
        if u64::from(len) > available {
            return Err(PacketError::PayloadBeyondChain { len, available });
        }
        self.payload
            .extend(pieces(segs, HEADER_LEN, len as usize).map(|(addr, n)| (addr, n as u32)));
        Ok(())
    }
}

/// A device-writable buffer the guest posted on the rx queue.
#[derive(Debug, Default)]
pub struct RxBuffer {
    segs: Vec<(GuestAddress, u32)>,
    capacity: usize,
}

impl RxBuffer {
    /// Parses a whole rx chain into `self`, reusing its buffers.
    pub fn parse(
        &mut self,
        descs: &[Descriptor],
        mem: &GuestMemoryMmap,
    ) -> Result<(), PacketError> {
        self.capacity = 0;
        checked_segments(descs, mem, true, &mut self.segs)?;
        let total = total_len(&self.segs);
        if total < HEADER_LEN as u64 {
            return Err(PacketError::ShortChain(total));
        }
        self.capacity = (total - HEADER_LEN as u64).min(u64::from(MAX_PAYLOAD)) as usize;
        Ok(())
    }

    /// Payload bytes this buffer can carry (at most `MAX_PAYLOAD`).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn write_header(
        &self,
        hdr: &PacketHeader,
        mem: &GuestMemoryMmap,
    ) -> Result<(), PacketError> {
        let raw = hdr.to_bytes();
        let mut done = 0;
        for (addr, len) in pieces(&self.segs, 0, HEADER_LEN) {
            mem.write_slice(&raw[done..done + len], addr)
                .map_err(|_| PacketError::Memory(addr.raw_value()))?;
            done += len;
        }
        Ok(())
    }

    /// Reads up to `max` payload bytes from `src` straight into guest memory (one copy:
    /// read(2) into the guest's buffer). Stops at the first short read; returns 0 at end of
    /// stream, and an error only when nothing was read.
    pub fn read_payload_from<R: ReadVolatile>(
        &self,
        mem: &GuestMemoryMmap,
        src: &mut R,
        max: usize,
    ) -> io::Result<usize> {
        let mut total = 0;
        for (addr, len) in pieces(&self.segs, HEADER_LEN, max.min(self.capacity)) {
            for slice in mem.get_slices(addr, len) {
                let mut slice = slice.map_err(io::Error::other)?;
                let want = slice.len();
                match src.read_volatile(&mut slice) {
                    Ok(n) => {
                        total += n;
                        if n < want {
                            return Ok(total);
                        }
                    }
                    Err(_) if total > 0 => return Ok(total),
                    Err(e) => return Err(into_io_error(e)),
                }
            }
        }
        Ok(total)
    }
}

pub(crate) fn into_io_error(e: VolatileMemoryError) -> io::Error {
    match e {
        VolatileMemoryError::IOError(e) => e,
        other => io::Error::other(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::vsock::{VSOCK_OP_RST, VSOCK_OP_RW, VSOCK_TYPE_STREAM};
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn readable(addr: u64, len: u32) -> Descriptor {
        Descriptor::new(addr, len, 0, 0)
    }

    fn writable(addr: u64, len: u32) -> Descriptor {
        Descriptor::new(addr, len, VRING_DESC_F_WRITE as u16, 0)
    }

    fn sample(len: u32) -> PacketHeader {
        PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1234_5678,
            dst_port: 1024,
            len,
            socket_type: VSOCK_TYPE_STREAM,
            op: VSOCK_OP_RW,
            flags: 0,
            buf_alloc: 0x4_0000,
            fwd_cnt: 0xdead_beef,
        }
    }

    #[test]
    fn header_layout_matches_the_spec() {
        let bytes = sample(7).to_bytes();
        assert_eq!(&bytes[0..8], &3u64.to_le_bytes());
        assert_eq!(&bytes[8..16], &2u64.to_le_bytes());
        assert_eq!(&bytes[16..20], &0x1234_5678u32.to_le_bytes());
        assert_eq!(&bytes[24..28], &7u32.to_le_bytes());
        assert_eq!(&bytes[28..30], &1u16.to_le_bytes());
        assert_eq!(&bytes[30..32], &5u16.to_le_bytes());
        assert_eq!(&bytes[40..44], &0xdead_beefu32.to_le_bytes());
        assert_eq!(PacketHeader::from_bytes(&bytes), sample(7));
        let r = sample(7).reply(VSOCK_OP_RST);
        assert_eq!(
            (r.src_cid, r.dst_cid, r.src_port, r.dst_port),
            (2, 3, 1024, 0x1234_5678)
        );
        assert_eq!((r.len, r.op, r.buf_alloc), (0, VSOCK_OP_RST, 0));
    }

    #[test]
    fn tx_header_and_payload_in_any_layout() {
        let m = mem();
        let raw = sample(10).to_bytes();
        // Header in its own descriptor, payload split over two.
        m.write_slice(&raw, GuestAddress(0x1000)).unwrap();
        let mut pkt = TxPacket::default();
        pkt.parse(
            &[
                readable(0x1000, 44),
                readable(0x2000, 4),
                readable(0x3000, 100),
            ],
            &m,
        )
        .unwrap();
        assert_eq!(pkt.hdr(), &sample(10));
        assert_eq!(
            pkt.payload(),
            &[(GuestAddress(0x2000), 4), (GuestAddress(0x3000), 6)]
        );
        // Header straddling two descriptors, payload right after it in the second.
        m.write_slice(&raw[..20], GuestAddress(0x4000)).unwrap();
        m.write_slice(&raw[20..], GuestAddress(0x5000)).unwrap();
        pkt.parse(&[readable(0x4000, 20), readable(0x5000, 100)], &m)
            .unwrap();
        assert_eq!(pkt.hdr(), &sample(10));
        assert_eq!(pkt.payload(), &[(GuestAddress(0x5000 + 24), 10)]);
    }

    #[test]
    fn malformed_tx_chains_are_refused() {
        let m = mem();
        m.write_slice(&sample(10).to_bytes(), GuestAddress(0x1000))
            .unwrap();
        let mut pkt = TxPacket::default();
        let mut parse = |descs: &[Descriptor]| {
            let r = pkt.parse(descs, &m);
            (r, pkt.header_ok())
        };
        assert_eq!(
            parse(&[readable(0x1000, 40)]),
            (Err(PacketError::ShortChain(40)), false)
        );
        assert_eq!(
            parse(&[writable(0x1000, 44), readable(0x2000, 10)]),
            (Err(PacketError::DeviceWritable), false)
        );
        assert_eq!(
            parse(&[readable(0x1000, 44), readable(0xF000_0000, 10)]),
            (
                Err(PacketError::OutOfMemory {
                    addr: 0xF000_0000,
                    len: 10
                }),
                false
            )
        );
        assert_eq!(
            parse(&[readable(0x1000, 44), readable(0x2000, 9)]),
            (
                Err(PacketError::PayloadBeyondChain {
                    len: 10,
                    available: 9
                }),
                true
            )
        );
        m.write_slice(&sample(MAX_PAYLOAD + 1).to_bytes(), GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            parse(&[readable(0x1000, 44), readable(0x2000, 0x2_0000)]),
            (Err(PacketError::PayloadTooLong(MAX_PAYLOAD + 1)), true)
        );
    }

    #[test]
    fn rx_buffers_take_a_header_and_payload_from_a_reader() {
        let m = mem();
        let mut buf = RxBuffer::default();
        buf.parse(&[writable(0x1000, 30), writable(0x2000, 64)], &m)
            .unwrap();
        assert_eq!(buf.capacity(), 50);
        buf.write_header(&sample(3), &m).unwrap();
        let mut src: &[u8] = b"hello";
        assert_eq!(buf.read_payload_from(&m, &mut src, 3).unwrap(), 3);
        let mut raw = [0u8; HEADER_LEN];
        m.read_slice(&mut raw[..30], GuestAddress(0x1000)).unwrap();
        m.read_slice(&mut raw[30..], GuestAddress(0x2000)).unwrap();
        assert_eq!(PacketHeader::from_bytes(&raw), sample(3));
        let mut payload = [0u8; 3];
        m.read_slice(&mut payload, GuestAddress(0x2000 + 14))
            .unwrap();
        assert_eq!(&payload, b"hel");
        let mut empty: &[u8] = b"";
        assert_eq!(buf.read_payload_from(&m, &mut empty, 50).unwrap(), 0);

        assert_eq!(
            buf.parse(&[writable(0x1000, 43)], &m),
            Err(PacketError::ShortChain(43))
        );
        assert_eq!(
            buf.parse(&[readable(0x1000, 100)], &m),
            Err(PacketError::DeviceReadable)
        );
        assert!(matches!(
            buf.parse(&[writable(0xF_FFF0, 100)], &m),
            Err(PacketError::OutOfMemory { .. })
        ));
    }
}
