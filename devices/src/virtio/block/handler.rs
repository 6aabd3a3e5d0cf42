//! Queue processing for virtio-blk: pop a chain, parse, execute on the engine, complete.
//! No file descriptors here, so it runs against a mock queue in tests.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryMmap};

use super::request::{ParseError, Request, RequestKind};
use super::{DiskEngine, DEVICE_ID_LEN, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};

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
    pub fn process_queue(&mut self, engine: &mut dyn DiskEngine, disk: &DiskInfo) -> bool {
        loop {
            if let Err(e) = self.queue.disable_notification(&self.mem) {
                log::warn!("virtio-blk: cannot disable notifications: {e}");
            }
            while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
                let head = chain.head_index();
                self.descs.clear();
                self.descs.extend(chain);
                let used_len = self.complete_chain(engine, disk);
                if let Err(e) = self.queue.add_used(&self.mem, head, used_len) {
                    log::warn!("virtio-blk: cannot return descriptor {head}: {e}");
                }
            }
            match self.queue.enable_notification(&self.mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    log::warn!("virtio-blk: cannot enable notifications: {e}");
                    break;
                }
            }
        }
        self.queue.needs_notification(&self.mem).unwrap_or(true)
    }

    /// Runs the chain in `self.descs`; returns the bytes written to guest memory.
    fn complete_chain(&mut self, engine: &mut dyn DiskEngine, disk: &DiskInfo) -> u32 {
        let parsed = self.request.parse(&self.descs, &self.mem, engine.size());
        let (status, data_written) = match parsed {
            Ok(()) => self.execute(engine, disk),
            Err(ParseError::BadStatusDescriptor) => {
                log::debug!("virtio-blk: chain without a status byte dropped");
                return 0;
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
        data_written + 1
    }

    /// Returns the status and the number of data bytes written to guest memory.
    fn execute(&mut self, engine: &mut dyn DiskEngine, disk: &DiskInfo) -> (u8, u32) {
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
                .try_for_each(|r| engine.write_zeroes(r.offset, r.len))
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

    fn transfer(&self, engine: &mut dyn DiskEngine, read: bool) -> std::io::Result<()> {
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
