//! virtio-blk request parsing and execution: a guest's descriptor table, avail ring and
//! memory contents, taken by the real `BlockHandler` (pop, parse, execute on a raw disk
//! image in memory, complete), and the same descriptors parsed as one chain by
//! `Request::parse`.
//!
//! Input: flags (bit 0 read-only disk, bit 1 EVENT_IDX, bit 2 raw avail index), memory
//! writes below the rings (u8 count; u32 address, u16 length, bytes), descriptors (u8 count; 16 bytes each
//! in the wire format), avail heads (u8 count; u16 each), [u16 avail index].

#![no_main]

use devices::virtio::block::{
    BlockHandler, DiskInfo, RawFile, Request, RequestKind, DEVICE_ID_LEN,
};
use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_fuzz::{guest_memory, memfd_disk, Reader, Ring};

const MEM: u64 = 1 << 20;
/// The rings sit at the top of guest memory; requests use what is below.
const RING_BASE: u64 = 0xf_0000;
const QUEUE_SIZE: u16 = 32;
const DISK: u64 = 64 << 10;
/// The split ring's descriptor flag (virtio 1.x, 2.7.5.3).
const VRING_DESC_F_INDIRECT: u16 = 4;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let flags = r.u8();
    let mem = guest_memory(MEM);
    let mut ring = Ring::new(&mem, RING_BASE, QUEUE_SIZE);

    // Memory contents below the rings (the ring API writes those).
    for _ in 0..r.u8() % 32 {
        let at = u64::from(r.u32()) % RING_BASE;
        let bytes = r.long_bytes(4096);
        let _ = mem.write_slice(bytes, GuestAddress(at));
    }
    let n = usize::from(r.u8()) % (usize::from(QUEUE_SIZE) + 1);
    let descs: Vec<Descriptor> = (0..n)
        .map(|_| Descriptor::new(r.u64(), r.u32(), r.u16(), r.u16()))
        .collect();
    for (i, d) in descs.iter().enumerate() {
        ring.write_desc(i as u16, d.addr().0, d.len(), d.flags(), d.next());
    }
    for _ in 0..r.u8() % (QUEUE_SIZE as u8 + 1) {
        ring.push_avail(r.u16());
    }
    if flags & 4 != 0 {
        ring.set_avail_idx(r.u16());
    }

    // The table, in order, as one chain: whatever the directions and lengths.
    let mut req = Request::default();
    if req.parse(&descs, &mem, DISK).is_ok() {
        for &(addr, len) in &req.data {
            assert!(mem.check_range(addr, len as usize), "data outside memory");
        }
        if matches!(req.kind, Some(RequestKind::Read | RequestKind::Write)) {
            assert!(req.offset + req.data_len <= DISK, "request beyond the disk");
        }
        for range in &req.ranges {
            assert!(range.offset + range.len <= DISK, "range beyond the disk");
        }
    }

    // The queue, as the device thread runs it.
    let mut queue = ring.queue();
    queue.set_event_idx(flags & 2 != 0);
    let mut handler = BlockHandler::new(mem.clone(), queue);
    let engine = RawFile::new(memfd_disk(DISK)).expect("memfd disk");
    let id = *b"fuzz-disk\0\0\0\0\0\0\0\0\0\0\0";
    const _: () = assert!(DEVICE_ID_LEN == 20);
    let disk = DiskInfo {
        id: &id,
        read_only: flags & 1 != 0,
    };
    let _ = handler.process_queue(&engine, &disk);
    // A guest may aim device-writable buffers at its own rings; then the used entries
    // hold what the device wrote there (disk data, the device ID), not lengths. Buffers
    // of an indirect table (in fuzzed memory) may do the same.
    let ring_end = RING_BASE + Ring::footprint(QUEUE_SIZE);
    let rings_overwritten = descs.iter().any(|d| {
        let (start, len) = (d.addr().0, u64::from(d.len()));
        d.flags() & VRING_DESC_F_INDIRECT != 0
            || (start < ring_end && start.saturating_add(len) > RING_BASE)
    });
    for (_, len) in ring.used() {
        // Data written plus the status byte: bounded by the request size limit.
        assert!(rings_overwritten || len <= (1 << 30) + 1, "used length {len}");
    }
});
