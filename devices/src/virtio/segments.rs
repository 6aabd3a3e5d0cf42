//! A descriptor chain as a list of guest ranges, checked for direction and memory before
//! any byte is touched, and the pieces of such a list that cover a byte range (headers may
//! straddle descriptors).

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Why a chain's descriptors cannot be used as they are.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SegmentError {
    #[error("a descriptor the device should read is device-writable")]
    DeviceWritable,
    #[error("a descriptor the device should write is not device-writable")]
    DeviceReadable,
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    OutOfMemory { addr: u64, len: u32 },
}

/// Every descriptor of the chain as (address, length) into `segs` (empty ones left out),
/// all of them device-writable if `device_writes`, all device-readable otherwise, and all
/// in guest memory.
pub fn checked_segments(
    descs: &[Descriptor],
    mem: &GuestMemoryMmap,
    device_writes: bool,
    segs: &mut Vec<(GuestAddress, u32)>,
) -> Result<(), SegmentError> {
    segs.clear();
    for d in descs {
        match (d.is_write_only(), device_writes) {
            (true, false) => return Err(SegmentError::DeviceWritable),
            (false, true) => return Err(SegmentError::DeviceReadable),
            _ => {}
        }
        if !mem.check_range(d.addr(), d.len() as usize) {
            return Err(SegmentError::OutOfMemory {
                addr: d.addr().raw_value(),
                len: d.len(),
            });
        }
        if d.len() > 0 {
            segs.push((d.addr(), d.len()));
        }
    }
    Ok(())
}

pub fn total_len(segs: &[(GuestAddress, u32)]) -> u64 {
    segs.iter().map(|&(_, len)| u64::from(len)).sum()
}

/// The pieces of `segs` covering `count` bytes after the first `skip` (fewer if the
/// segments end first).
pub fn pieces(
    segs: &[(GuestAddress, u32)],
    mut skip: usize,
    mut count: usize,
) -> impl Iterator<Item = (GuestAddress, usize)> + '_ {
    segs.iter().filter_map(move |&(addr, len)| {
        let len = len as usize;
        if skip >= len {
            skip -= len;
            return None;
        }
        let start = skip;
        skip = 0;
        let n = (len - start).min(count);
        count -= n;
        // `start` < `len` and the range was checked against guest memory.
        (n > 0).then(|| (addr.unchecked_add(start as u64), n))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_skip_and_straddle() {
        let segs = [(GuestAddress(0x100), 4), (GuestAddress(0x200), 10)];
        let got: Vec<_> = pieces(&segs, 2, 5).collect();
        assert_eq!(
            got,
            vec![(GuestAddress(0x102), 2), (GuestAddress(0x200), 3)]
        );
        assert_eq!(pieces(&segs, 14, 5).count(), 0);
        assert_eq!(pieces(&segs, 0, 100).map(|(_, n)| n).sum::<usize>(), 14);
        assert_eq!(total_len(&segs), 14);
    }
}
