//! Turning a descriptor chain into a checked request. Everything here is guest-controlled:
//! directions, lengths and addresses are validated before any I/O happens.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{DEVICE_ID_LEN, SECTOR_SIZE};

const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;
const VIRTIO_BLK_T_DISCARD: u32 = 11;
const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// Size of `struct virtio_blk_outhdr`.
const HEADER_LEN: u32 = 16;
/// Size of `struct virtio_blk_discard_write_zeroes`.
pub const SEGMENT_LEN: u32 = 16;
/// Data descriptors one request may carry (Linux uses at most `seg_max`).
pub const MAX_DATA_DESCRIPTORS: usize = 256;
/// Largest data descriptor we advertise (`size_max`).
pub const MAX_SEGMENT_BYTES: u32 = 4 << 20;
/// A request's data, at most: `seg_max` x `size_max` (1 GiB), so that the bytes written
/// plus the status byte always fit the used element's 32-bit length, however the driver
/// aliases its descriptors.
pub const MAX_REQUEST_BYTES: u64 = MAX_DATA_DESCRIPTORS as u64 * MAX_SEGMENT_BYTES as u64;
/// Discard ranges one request may carry (`max_discard_seg`).
pub const MAX_DISCARD_RANGES: usize = 32;
/// Largest discard range, in sectors (`max_discard_sectors`: 4 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 23;
/// Write-zeroes ranges one request may carry (`max_write_zeroes_seg`; Linux sends one).
pub const MAX_WRITE_ZEROES_RANGES: usize = 1;
/// Largest write-zeroes range, in sectors (`max_write_zeroes_sectors`: 64 MiB). On a host
/// filesystem that can neither punch holes nor zero ranges, the device thread writes the
/// zeroes itself; this bounds how long that takes.
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 17;
/// The only flag of a discard / write-zeroes range.
const RANGE_FLAG_UNMAP: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Read,
    Write,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Unsupported(u32),
}

impl RequestKind {
    fn from_type(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => Self::Read,
            VIRTIO_BLK_T_OUT => Self::Write,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            VIRTIO_BLK_T_DISCARD => Self::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => Self::WriteZeroes,
            other => Self::Unsupported(other),
        }
    }

    /// Whether the data descriptors are written by the device.
    fn device_writes_data(self) -> bool {
        matches!(self, Self::Read | Self::GetId)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct OutHeader {
    request_type: u32,
    reserved: u32,
    sector: u64,
}
// SAFETY: plain old data with no padding (4 + 4 + 8 bytes, naturally aligned).
unsafe impl ByteValued for OutHeader {}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct RawRange {
    sector: u64,
    num_sectors: u32,
    flags: u32,
}
// SAFETY: plain old data with no padding (8 + 4 + 4 bytes, naturally aligned).
unsafe impl ByteValued for RawRange {}

/// A range of a discard or write-zeroes request, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub offset: u64,
    pub len: u64,
    /// Write zeroes only: the device may deallocate the range.
    pub unmap: bool,
}

/// A parsed request. Data segments are guest ranges already checked to lie in memory.
#[derive(Debug, Default)]
pub struct Request {
    pub kind: Option<RequestKind>,
    /// Byte offset on the disk.
    pub offset: u64,
    pub data: Vec<(GuestAddress, u32)>,
    pub data_len: u64,
    pub ranges: Vec<ByteRange>,
    pub status: Option<GuestAddress>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("descriptor chain has {0} descriptors, needs a header and a status")]
    TooShort(usize),
    #[error("descriptor chain is longer than {MAX_DATA_DESCRIPTORS} data descriptors")]
    TooLong,
    #[error("status descriptor is not device-writable or is empty")]
    BadStatusDescriptor,
    #[error("header descriptor is device-writable or shorter than {HEADER_LEN} bytes")]
    BadHeaderDescriptor,
    #[error("header at {0:#x} is not in guest memory")]
    HeaderUnreadable(u64),
    #[error("data descriptor has the wrong direction for this request")]
    WrongDirection,
    #[error("data descriptor {addr:#x}+{len:#x} is outside guest memory")]
    OutOfMemory { addr: u64, len: u32 },
    #[error("data length {0} is not a whole number of sectors")]
    UnalignedLength(u64),
    #[error("request covers bytes {offset:#x}+{len:#x}, beyond the disk's {capacity:#x}")]
    BeyondCapacity {
        offset: u64,
        len: u64,
        capacity: u64,
    },
    #[error("request type does not carry data, yet data descriptors were given")]
    UnexpectedData,
    #[error("discard/write-zeroes payload is malformed")]
    BadRanges,
    #[error("request carries more than {MAX_REQUEST_BYTES} bytes of data")]
    TooLarge,
    #[error("discard/write-zeroes range of {sectors} sectors exceeds the advertised {max}")]
    RangeTooLarge { sectors: u32, max: u32 },
    #[error("discard/write-zeroes range has flags {0:#x} the request type does not allow")]
    UnsupportedFlags(u32),
}

impl ParseError {
    /// Answered with UNSUPP rather than IOERR (virtio 1.2, 5.2.6.2).
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Self::UnsupportedFlags(_))
    }
}

impl Request {
    /// Parses `descs` (a whole chain, in order) into `self`, reusing its buffers.
    /// On error, `self.status` is still set when the chain has a usable status byte, so the
    /// caller can answer with IOERR.
    pub fn parse(
        &mut self,
        descs: &[Descriptor],
        mem: &GuestMemoryMmap,
        capacity: u64,
    ) -> Result<(), ParseError> {
        self.kind = None;
        self.offset = 0;
        self.data.clear();
        self.data_len = 0;
        self.ranges.clear();
        self.status = None;

        let (header, rest) = descs.split_first().ok_or(ParseError::TooShort(0))?;
        let (status, data) = rest.split_last().ok_or(ParseError::TooShort(1))?;
        if status.is_write_only() && status.len() >= 1 && mem.check_range(status.addr(), 1) {
            self.status = Some(status.addr());
        } else {
            return Err(ParseError::BadStatusDescriptor);
        }
        if data.len() > MAX_DATA_DESCRIPTORS {
            return Err(ParseError::TooLong);
        }
        if header.is_write_only() || header.len() < HEADER_LEN {
            return Err(ParseError::BadHeaderDescriptor);
        }
        let hdr: OutHeader = mem
            .read_obj(header.addr())
            .map_err(|_| ParseError::HeaderUnreadable(header.addr().raw_value()))?;
        let kind = RequestKind::from_type(hdr.request_type);
        self.kind = Some(kind);
        if let RequestKind::Unsupported(_) = kind {
            return Ok(());
        }

        for d in data {
            if d.is_write_only() != kind.device_writes_data() {
                return Err(ParseError::WrongDirection);
            }
            if !mem.check_range(d.addr(), d.len() as usize) {
                return Err(ParseError::OutOfMemory {
                    addr: d.addr().raw_value(),
                    len: d.len(),
                });
            }
            self.data.push((d.addr(), d.len()));
            self.data_len += u64::from(d.len());
            if self.data_len > MAX_REQUEST_BYTES {
                return Err(ParseError::TooLarge);
            }
        }

        match kind {
            RequestKind::Read | RequestKind::Write => {
                if !self.data_len.is_multiple_of(SECTOR_SIZE) {
                    return Err(ParseError::UnalignedLength(self.data_len));
                }
                self.offset = sector_offset(hdr.sector)?;
                check_capacity(self.offset, self.data_len, capacity)?;
            }
            RequestKind::Flush => {
                if !self.data.is_empty() {
                    return Err(ParseError::UnexpectedData);
                }
            }
            RequestKind::GetId => {
                if self.data_len < DEVICE_ID_LEN as u64 {
                    // Linux always gives 20 bytes; a shorter buffer gets a truncated ID.
                    log::debug!("virtio-blk: GET_ID buffer of {} bytes", self.data_len);
                }
            }
            RequestKind::Discard | RequestKind::WriteZeroes => {
                self.parse_ranges(kind, mem, capacity)?;
            }
            RequestKind::Unsupported(_) => {}
        }
        Ok(())
    }

    fn parse_ranges(
        &mut self,
        kind: RequestKind,
        mem: &GuestMemoryMmap,
        capacity: u64,
    ) -> Result<(), ParseError> {
        let (max_ranges, max_sectors, allowed_flags) = if kind == RequestKind::Discard {
            (MAX_DISCARD_RANGES, MAX_DISCARD_SECTORS, 0)
        } else {
            (
                MAX_WRITE_ZEROES_RANGES,
                MAX_WRITE_ZEROES_SECTORS,
                RANGE_FLAG_UNMAP,
            )
        };
        if self.data_len == 0 || !self.data_len.is_multiple_of(u64::from(SEGMENT_LEN)) {
            return Err(ParseError::BadRanges);
        }
        for &(addr, len) in &self.data {
            if len % SEGMENT_LEN != 0 {
                return Err(ParseError::BadRanges);
            }
            for i in 0..u64::from(len / SEGMENT_LEN) {
                if self.ranges.len() == max_ranges {
                    return Err(ParseError::BadRanges);
                }
                let at = addr
                    .checked_add(i * u64::from(SEGMENT_LEN))
                    .ok_or(ParseError::BadRanges)?;
                let raw: RawRange = mem.read_obj(at).map_err(|_| ParseError::BadRanges)?;
                if raw.flags & !allowed_flags != 0 {
                    return Err(ParseError::UnsupportedFlags(raw.flags));
                }
                if raw.num_sectors > max_sectors {
                    return Err(ParseError::RangeTooLarge {
                        sectors: raw.num_sectors,
                        max: max_sectors,
                    });
                }
                let offset = sector_offset(raw.sector)?;
                let len = u64::from(raw.num_sectors) * SECTOR_SIZE;
                check_capacity(offset, len, capacity)?;
                self.ranges.push(ByteRange {
                    offset,
                    len,
                    unmap: raw.flags & RANGE_FLAG_UNMAP != 0,
                });
            }
        }
        Ok(())
    }
}

fn sector_offset(sector: u64) -> Result<u64, ParseError> {
    sector
        .checked_mul(SECTOR_SIZE)
        .ok_or(ParseError::BeyondCapacity {
            offset: u64::MAX,
            len: 0,
            capacity: 0,
        })
}

fn check_capacity(offset: u64, len: u64, capacity: u64) -> Result<(), ParseError> {
    match offset.checked_add(len) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(ParseError::BeyondCapacity {
            offset,
            len,
            capacity,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;

    const CAPACITY: u64 = 1 << 20;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn header(mem: &GuestMemoryMmap, at: u64, request_type: u32, sector: u64) -> Descriptor {
        let hdr = OutHeader {
            request_type,
            reserved: 0,
            sector,
        };
        mem.write_obj(hdr, GuestAddress(at)).unwrap();
        Descriptor::new(at, HEADER_LEN, 0, 0)
    }

    fn readable(addr: u64, len: u32) -> Descriptor {
        Descriptor::new(addr, len, 0, 0)
    }

    fn writable(addr: u64, len: u32) -> Descriptor {
        Descriptor::new(addr, len, VRING_DESC_F_WRITE as u16, 0)
    }

    fn parse(descs: &[Descriptor], mem: &GuestMemoryMmap) -> (Request, Result<(), ParseError>) {
        let mut req = Request::default();
        let res = req.parse(descs, mem, CAPACITY);
        (req, res)
    }

    #[test]
    fn read_request_is_parsed() {
        let m = mem();
        let descs = [
            header(&m, 0x1000, VIRTIO_BLK_T_IN, 3),
            writable(0x2000, 512),
            writable(0x3000, 1024),
            writable(0x4000, 1),
        ];
        let (req, res) = parse(&descs, &m);
        res.unwrap();
        assert_eq!(req.kind, Some(RequestKind::Read));
        assert_eq!(req.offset, 3 * 512);
        assert_eq!(req.data_len, 1536);
        assert_eq!(req.status, Some(GuestAddress(0x4000)));
    }

    #[test]
    fn wrong_direction_is_refused_but_status_is_known() {
        let m = mem();
        let descs = [
            header(&m, 0x1000, VIRTIO_BLK_T_IN, 0),
            readable(0x2000, 512),
            writable(0x4000, 1),
        ];
        let (req, res) = parse(&descs, &m);
        assert_eq!(res, Err(ParseError::WrongDirection));
        assert_eq!(req.status, Some(GuestAddress(0x4000)));
    }

    #[test]
    fn out_of_memory_and_huge_lengths_are_refused() {
        let m = mem();
        let hdr = header(&m, 0x1000, VIRTIO_BLK_T_IN, 0);
        let (_, res) = parse(
            &[hdr, writable(0xF000_0000_0000, 512), writable(0x4000, 1)],
            &m,
        );
        assert!(matches!(res, Err(ParseError::OutOfMemory { .. })));
        let (_, res) = parse(
            &[hdr, writable(0x2000, 0x7fff_f000), writable(0x4000, 1)],
            &m,
        );
        assert!(matches!(res, Err(ParseError::OutOfMemory { .. })));
    }

    #[test]
    fn short_header_and_bad_status_are_refused() {
        let m = mem();
        let mut hdr = header(&m, 0x1000, VIRTIO_BLK_T_IN, 0);
        hdr.set_len(8);
        let (_, res) = parse(&[hdr, writable(0x2000, 512), writable(0x4000, 1)], &m);
        assert_eq!(res, Err(ParseError::BadHeaderDescriptor));
        let hdr = header(&m, 0x1000, VIRTIO_BLK_T_IN, 0);
        let (req, res) = parse(&[hdr, writable(0x2000, 512), readable(0x4000, 1)], &m);
        assert_eq!(res, Err(ParseError::BadStatusDescriptor));
        assert_eq!(req.status, None);
        assert_eq!(parse(&[hdr], &m).1, Err(ParseError::TooShort(1)));
    }

    #[test]
    fn capacity_and_alignment_are_enforced() {
        let m = mem();
        let hdr = header(&m, 0x1000, VIRTIO_BLK_T_OUT, CAPACITY / 512);
        let (_, res) = parse(&[hdr, readable(0x2000, 512), writable(0x4000, 1)], &m);
        assert!(matches!(res, Err(ParseError::BeyondCapacity { .. })));
        let hdr = header(&m, 0x1000, VIRTIO_BLK_T_OUT, u64::MAX / 256);
        let (_, res) = parse(&[hdr, readable(0x2000, 512), writable(0x4000, 1)], &m);
        assert!(matches!(res, Err(ParseError::BeyondCapacity { .. })));
        let hdr = header(&m, 0x1000, VIRTIO_BLK_T_OUT, 0);
        let (_, res) = parse(&[hdr, readable(0x2000, 100), writable(0x4000, 1)], &m);
        assert_eq!(res, Err(ParseError::UnalignedLength(100)));
    }

    #[test]
    fn discard_ranges_are_read_and_checked() {
        let m = mem();
        let ranges = [
            RawRange {
                sector: 8,
                num_sectors: 16,
                flags: 0,
            },
            RawRange {
                sector: 100,
                num_sectors: 1,
                flags: 0,
            },
        ];
        m.write_obj(ranges[0], GuestAddress(0x2000)).unwrap();
        m.write_obj(ranges[1], GuestAddress(0x2010)).unwrap();
        let hdr = header(&m, 0x1000, VIRTIO_BLK_T_DISCARD, 0);
        let (req, res) = parse(&[hdr, readable(0x2000, 32), writable(0x4000, 1)], &m);
        res.unwrap();
        assert_eq!(
            req.ranges,
            vec![
                ByteRange {
                    offset: 4096,
                    len: 8192,
                    unmap: false
                },
                ByteRange {
                    offset: 51200,
                    len: 512,
                    unmap: false
                }
            ]
        );
        let (_, res) = parse(&[hdr, readable(0x2000, 20), writable(0x4000, 1)], &m);
        assert_eq!(res, Err(ParseError::BadRanges));
    }

    #[test]
    fn flush_with_data_and_unknown_types() {
        let m = mem();
        let hdr = header(&m, 0x1000, VIRTIO_BLK_T_FLUSH, 0);
        let (_, res) = parse(&[hdr, readable(0x2000, 512), writable(0x4000, 1)], &m);
        assert_eq!(res, Err(ParseError::UnexpectedData));
        let hdr = header(&m, 0x1000, 77, 0);
        let (req, res) = parse(&[hdr, writable(0x4000, 1)], &m);
        res.unwrap();
        assert_eq!(req.kind, Some(RequestKind::Unsupported(77)));
    }

    /// Many descriptors that all point at the same page: 2 x 4 GiB - 2 bytes of "data",
    /// which used to overflow the used length.
    #[test]
    fn aliased_descriptors_cannot_add_up_past_the_request_limit() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000_1000)]).unwrap();
        let hdr = header(&m, 0x1000, VIRTIO_BLK_T_IN, 0);
        let huge = writable(0x1000, 0xffff_fe00);
        let (_, res) = parse(&[hdr, huge, huge, writable(0x4000, 1)], &m);
        assert_eq!(res, Err(ParseError::TooLarge));
        let fits = writable(0x1000, MAX_SEGMENT_BYTES);
        let descs: Vec<_> = std::iter::once(hdr)
            .chain(std::iter::repeat_n(fits, 2))
            .chain([writable(0x4000, 1)])
            .collect();
        let mut req = Request::default();
        req.parse(&descs, &m, u64::MAX / 2).unwrap();
        assert_eq!(req.data_len, 2 * u64::from(MAX_SEGMENT_BYTES));
    }

    fn range_request(
        m: &GuestMemoryMmap,
        kind: u32,
        ranges: &[RawRange],
    ) -> (Request, Result<(), ParseError>) {
        for (i, r) in ranges.iter().enumerate() {
            m.write_obj(*r, GuestAddress(0x2000 + 16 * i as u64))
                .unwrap();
        }
        let hdr = header(m, 0x1000, kind, 0);
        let len = 16 * ranges.len() as u32;
        parse(&[hdr, readable(0x2000, len), writable(0x8000, 1)], m)
    }

    fn range(num_sectors: u32, flags: u32) -> RawRange {
        RawRange {
            sector: 0,
            num_sectors,
            flags,
        }
    }

    #[test]
    fn discard_and_write_zeroes_keep_to_the_advertised_limits_and_flags() {
        let m = mem();
        use ParseError::*;
        let cases: [(u32, Vec<RawRange>, Result<(), ParseError>); 8] = [
            (VIRTIO_BLK_T_DISCARD, vec![range(8, 0); 32], Ok(())),
            (VIRTIO_BLK_T_DISCARD, vec![range(8, 0); 33], Err(BadRanges)),
            (
                VIRTIO_BLK_T_DISCARD,
                vec![range(8, 1)],
                Err(UnsupportedFlags(1)),
            ),
            (VIRTIO_BLK_T_WRITE_ZEROES, vec![range(8, 1)], Ok(())),
            (
                VIRTIO_BLK_T_WRITE_ZEROES,
                vec![range(8, 4)],
                Err(UnsupportedFlags(4)),
            ),
            (
                VIRTIO_BLK_T_WRITE_ZEROES,
                vec![range(8, 0); 2],
                Err(BadRanges),
            ),
            (
                VIRTIO_BLK_T_WRITE_ZEROES,
                vec![range(MAX_WRITE_ZEROES_SECTORS + 1, 0)],
                Err(RangeTooLarge {
                    sectors: MAX_WRITE_ZEROES_SECTORS + 1,
                    max: MAX_WRITE_ZEROES_SECTORS,
                }),
            ),
            (
                VIRTIO_BLK_T_DISCARD,
                vec![range(MAX_DISCARD_SECTORS + 1, 0)],
                Err(RangeTooLarge {
                    sectors: MAX_DISCARD_SECTORS + 1,
                    max: MAX_DISCARD_SECTORS,
                }),
            ),
        ];
        for (kind, ranges, want) in cases {
            let (_, got) = range_request(&m, kind, &ranges);
            assert_eq!(got, want, "type {kind}, {} ranges", ranges.len());
        }
        let (req, res) = range_request(&m, VIRTIO_BLK_T_WRITE_ZEROES, &[range(8, 1)]);
        res.unwrap();
        assert!(req.ranges[0].unmap);
        assert!(UnsupportedFlags(4).is_unsupported() && !BadRanges.is_unsupported());
    }
}
