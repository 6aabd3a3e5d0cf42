//! Queue processing for virtio-blk: pop a chain, parse, execute on the engine, complete.
//! No file descriptors here, so it runs against a mock queue in tests.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryMmap};

use super::request::{ParseError, Request, RequestKind, MAX_DATA_DESCRIPTORS};
use super::{DiskEngine, DEVICE_ID_LEN, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use crate::virtio::{collect_chain, notifications_off, notifications_on, pop_chain, QueueBroken};

/// A header, the data descriptors and a status byte.
const MAX_CHAIN: usize = MAX_DATA_DESCRIPTORS + 2;

/// The active state of a block device's single request queue.
pub struct BlockHandler {
    mem: GuestMemoryMmap,
    queue: Queue,
    /// Reused for every chain: no allocation per request on the hot path.
    descs: Vec<Descriptor>,
    request: Request,
}

/// Device facts a request needs besides the engine.
pub struct DiskInfo<'a> {
    pub id: &'a [u8; DEVICE_ID_LEN],
    pub read_only: bool,
}

impl BlockHandler {
    pub fn new(mem: GuestMemoryMmap, queue: Queue) -> Self {
        Self {
            mem,
            queue,
            descs: Vec::new(),
            request: Request::default(),
        }
    }

    /// Completes every available chain; returns whether the driver must be interrupted.
    /// A broken avail ring is an error: the caller drops the queue.
    pub fn process_queue(
        &mut self,
        engine: &dyn DiskEngine,
        disk: &DiskInfo,
    ) -> Result<bool, QueueBroken> {
        loop {
            notifications_off(&mut self.queue, &self.mem, "virtio-blk");
            while let Some(chain) = pop_chain(&mut self.queue, &self.mem)? {
                let head = chain.head_index();
                let used_len = match collect_chain(chain, &mut self.descs, MAX_CHAIN) {
                    Ok(()) => self.complete_chain(engine, disk),
                    Err(e) => {
                        // No status byte to answer with: the chain was not read to its end.
                        log::debug!("virtio-blk: {e}; returned unanswered");
                        0
                    }
                };
                if let Err(e) = self.queue.add_used(&self.mem, head, used_len) {
                    log::warn!("virtio-blk: cannot return descriptor {head}: {e}");
                }
            }
            if !notifications_on(&mut self.queue, &self.mem, "virtio-blk") {
                break;
            }
        }
        Ok(self.queue.needs_notification(&self.mem).unwrap_or(true))
    }

    /// Runs the chain in `self.descs`; returns the bytes written to guest memory.
    fn complete_chain(&mut self, engine: &dyn DiskEngine, disk: &DiskInfo) -> u32 {
        let parsed = self.request.parse(&self.descs, &self.mem, engine.size());
        let (status, data_written) = match parsed {
            Ok(()) => self.execute(engine, disk),
            Err(ParseError::BadStatusDescriptor) => {
                log::debug!("virtio-blk: chain without a status byte dropped");
                return 0;
            }
            Err(e) if e.is_unsupported() => {
                log::debug!("virtio-blk: unsupported request: {e}");
                (VIRTIO_BLK_S_UNSUPP, 0)
            }
            Err(e) => {
                log::debug!("virtio-blk: malformed request: {e}");
                (VIRTIO_BLK_S_IOERR, 0)
            }
        };
        let Some(status_addr) = self.request.status else {
            return 0;
        };
        if self.mem.write_obj(status, status_addr).is_err() {
            return 0;
        }
        // The parser bounds a request's data far below u32::MAX.
        data_written.saturating_add(1)
    }

    /// Returns the status and the number of data bytes written to guest memory.
    fn execute(&mut self, engine: &dyn DiskEngine, disk: &DiskInfo) -> (u8, u32) {
        let req = &self.request;
        let Some(kind) = req.kind else {
            return (VIRTIO_BLK_S_IOERR, 0);
        };
        let writes_disk = matches!(
            kind,
            RequestKind::Write | RequestKind::Discard | RequestKind::WriteZeroes
        );
        if writes_disk && disk.read_only {
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        let result = match kind {
            RequestKind::Read => self
                .transfer(engine, true)
                .map(|()| u32::try_from(req.data_len).unwrap_or(u32::MAX)),
            RequestKind::Write => self.transfer(engine, false).map(|()| 0),
            RequestKind::Flush => engine.flush().map(|()| 0),
            RequestKind::GetId => Ok(self.write_id(disk.id)),
            RequestKind::Discard => req
                .ranges
                .iter()
                .try_for_each(|r| engine.discard(r.offset, r.len))
                .map(|()| 0),
            RequestKind::WriteZeroes => req
                .ranges
                .iter()
                .try_for_each(|r| engine.write_zeroes(r.offset, r.len, r.unmap))
                .map(|()| 0),
            RequestKind::Unsupported(t) => {
                log::debug!("virtio-blk: unsupported request type {t}");
                return (VIRTIO_BLK_S_UNSUPP, 0);
            }
        };
        match result {
            Ok(written) => (VIRTIO_BLK_S_OK, written),
            Err(e) => {
                log::warn!("virtio-blk: {kind:?} at {:#x} failed: {e}", req.offset);
                (VIRTIO_BLK_S_IOERR, 0)
            }
        }
    }

    fn transfer(&self, engine: &dyn DiskEngine, read: bool) -> std::io::Result<()> {
        let mut offset = self.request.offset;
        for &(addr, len) in &self.request.data {
            let slice = self
                .mem
                .get_slice(addr, len as usize)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            if read {
                engine.read_at(&slice, offset)?;
            } else {
                engine.write_at(&slice, offset)?;
            }
            offset += u64::from(len);
        }
        Ok(())
    }

    fn write_id(&self, id: &[u8; DEVICE_ID_LEN]) -> u32 {
        let mut written = 0;
        for &(addr, len) in &self.request.data {
            let n = (len as usize).min(DEVICE_ID_LEN - written);
            if n == 0
                || self
                    .mem
                    .write_slice(&id[written..written + n], addr)
                    .is_err()
            {
                break;
            }
            written += n;
        }
        written as u32
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::virtio::block::{RawFile, VIRTIO_BLK_S_UNSUPP};
    use std::io::Write;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    pub const QUEUE_LEN: u16 = 32;
    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;

    /// A driver's view of one request: (addr, len, device-writable) per descriptor.
    pub type Chain = Vec<(u64, u32, bool)>;

    pub fn guest_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
    }

    /// Writes `chains` into the mock queue's tables and publishes them.
    pub fn post(queue: &MockSplitQueue<GuestMemoryMmap>, chains: &[Chain], first_desc: u16) {
        let mut raw = Vec::new();
        let mut index = first_desc;
        for chain in chains {
            for (i, &(addr, len, write)) in chain.iter().enumerate() {
                let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
                let last = i + 1 == chain.len();
                if !last {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                let d = Descriptor::new(addr, len, flags, if last { 0 } else { index + 1 });
                raw.push(RawDescriptor::from(d));
                index += 1;
            }
        }
        queue.add_desc_chains(&raw, first_desc).unwrap();
    }

    pub fn header(mem: &GuestMemoryMmap, at: u64, request_type: u32, sector: u64) {
        mem.write_obj(request_type, GuestAddress(at)).unwrap();
        mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
    }

    struct Setup {
        mem: GuestMemoryMmap,
        file: tempfile::NamedTempFile,
    }

    fn setup() -> Setup {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let content: Vec<u8> = (0..64 * 1024u32).map(|i| (i / 512) as u8).collect();
        file.write_all(&content).unwrap();
        Setup {
            mem: guest_memory(),
            file,
        }
    }

    fn run(s: &Setup, chains: &[Chain], read_only: bool) -> Vec<(u32, u32)> {
        let queue = MockSplitQueue::create(&s.mem, GuestAddress(0), QUEUE_LEN);
        post(&queue, chains, 0);
        let mut handler = BlockHandler::new(s.mem.clone(), queue.create_queue().unwrap());
        let engine = RawFile::new(s.file.reopen().unwrap()).unwrap();
        let id = *b"test-disk\0\0\0\0\0\0\0\0\0\0\0";
        let notify = handler
            .process_queue(&engine, &DiskInfo { id: &id, read_only })
            .unwrap();
        assert!(notify);
        let used = queue.used();
        assert_eq!(used.idx().load(), chains.len() as u16);
        (0..chains.len())
            .map(|i| {
                let e = used.ring().ref_at(i).unwrap().load();
                (e.id(), e.len())
            })
            .collect()
    }

    fn status(s: &Setup, i: u64) -> u8 {
        s.mem.read_obj(GuestAddress(STATUS + i)).unwrap()
    }

    #[test]
    fn reads_writes_and_flushes_reach_the_file() {
        let s = setup();
        header(&s.mem, HDR, 0, 3); // read sector 3
        header(&s.mem, HDR + 16, 1, 5); // write sector 5
        s.mem
            .write_slice(&[0xee; 512], GuestAddress(DATA + 0x1000))
            .unwrap();
        header(&s.mem, HDR + 32, 4, 0); // flush
        let used = run(
            &s,
            &[
                vec![(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)],
                vec![
                    (HDR + 16, 16, false),
                    (DATA + 0x1000, 512, false),
                    (STATUS + 1, 1, true),
                ],
                vec![(HDR + 32, 16, false), (STATUS + 2, 1, true)],
            ],
            false,
        );
        assert_eq!(used, vec![(0, 1025), (3, 1), (6, 1)]);
        assert_eq!((status(&s, 0), status(&s, 1), status(&s, 2)), (0, 0, 0));
        let mut buf = [0u8; 1024];
        s.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        assert!(buf[..512].iter().all(|&b| b == 3) && buf[512..].iter().all(|&b| b == 4));
        let on_disk = std::fs::read(s.file.path()).unwrap();
        assert!(on_disk[5 * 512..6 * 512].iter().all(|&b| b == 0xee));
    }

    #[test]
    fn read_only_disks_refuse_writes_and_get_id_answers() {
        let s = setup();
        header(&s.mem, HDR, 1, 0);
        header(&s.mem, HDR + 16, 8, 0);
        header(&s.mem, HDR + 32, 99, 0);
        let used = run(
            &s,
            &[
                vec![(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)],
                vec![
                    (HDR + 16, 16, false),
                    (DATA + 0x1000, 20, true),
                    (STATUS + 1, 1, true),
                ],
                vec![(HDR + 32, 16, false), (STATUS + 2, 1, true)],
            ],
            true,
        );
        assert_eq!(status(&s, 0), VIRTIO_BLK_S_IOERR);
        assert_eq!(status(&s, 1), VIRTIO_BLK_S_OK);
        assert_eq!(status(&s, 2), VIRTIO_BLK_S_UNSUPP);
        assert_eq!(used[1].1, 21);
        let mut id = [0u8; 9];
        s.mem
            .read_slice(&mut id, GuestAddress(DATA + 0x1000))
            .unwrap();
        assert_eq!(&id, b"test-disk");
        assert_eq!(
            std::fs::read(s.file.path()).unwrap()[0],
            0,
            "disk untouched"
        );
    }

    #[test]
    fn malformed_chains_complete_with_errors_and_the_queue_keeps_going() {
        let s = setup();
        header(&s.mem, HDR, 0, 0);
        let used = run(
            &s,
            &[
                // data outside guest memory
                vec![
                    (HDR, 16, false),
                    (0xF000_0000_0000, 512, true),
                    (STATUS, 1, true),
                ],
                // wrong direction
                vec![(HDR, 16, false), (DATA, 512, false), (STATUS + 1, 1, true)],
                // short header
                vec![(HDR, 8, false), (DATA, 512, true), (STATUS + 2, 1, true)],
                // huge length
                vec![
                    (HDR, 16, false),
                    (DATA, 0x7fff_f000, true),
                    (STATUS + 3, 1, true),
                ],
                // status not writable: nothing to answer with
                vec![(HDR, 16, false), (DATA, 512, true), (STATUS + 4, 1, false)],
                // and a good one after all that
                vec![(HDR, 16, false), (DATA, 512, true), (STATUS + 5, 1, true)],
            ],
            false,
        );
        for i in 0..4 {
            assert_eq!(status(&s, i), VIRTIO_BLK_S_IOERR, "chain {i}");
            assert_eq!(used[i as usize].1, 1);
        }
        assert_eq!(used[4].1, 0);
        assert_eq!(status(&s, 5), VIRTIO_BLK_S_OK);
        assert_eq!(used[5].1, 513);
    }
}
