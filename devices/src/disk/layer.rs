//! A read-only layer of a backing chain: a raw file or a qcow2 file with the layers
//! below it. Layers never change once open, so each remembers, per guest granule, which
//! layer of its chain holds the data: a read costs one lookup in that layer, however deep
//! the chain.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use vm_memory::VolatileSlice;

use super::qcow2::engine::{Qcow2File, Run};
use super::storage::{fill_zeroes, to_io};
use super::{DiskEngine, Extent, ImageFormat, RawFile};

/// (st_dev, st_ino): how chains recognise a file opened twice.
pub(crate) type FileId = (u64, u64);

pub(crate) enum LayerKind {
    Raw(RawFile),
    Qcow2(Arc<Qcow2File>),
}

/// One read-only image of a chain (see the module doc).
pub struct Layer {
    path: PathBuf,
    kind: LayerKind,
    id: FileId,
    /// For raw files: st_blocks * 512.
    raw_allocated: u64,
    /// Every layer below this one, nearest first.
    lower: Vec<Arc<Layer>>,
    owners: Owners,
}

/// The owner cache: per granule (the smallest cluster size in the chain) 0 for not yet
/// known, `ZERO` for zeroes, else 2 + the depth of the layer holding the data.
struct Owners {
    /// log2 of the granule; None when every layer is raw (this layer owns everything).
    granule_bits: Option<u32>,
    chunks: Box<[OnceLock<Box<[AtomicU8]>>]>,
}

const UNKNOWN: u8 = 0;
const ZERO: u8 = 1;
const CHUNK_BITS: u32 = 16;
/// Granules past 2^32 (2 TiB of 512-byte granules) are looked up every time: a huge
/// virtual size must not cost memory up front.
const MAX_CHUNKS: u64 = 1 << 16;

/// Who serves a granule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Zero,
    /// The layer this far down (0: this one).
    Depth(u8),
}

impl Owners {
    fn new(size: u64, granule_bits: Option<u32>) -> Self {
        let chunks = granule_bits.map_or(0, |g| size.div_ceil(1 << g).div_ceil(1 << CHUNK_BITS));
        let chunks = chunks.min(MAX_CHUNKS);
        Self {
            granule_bits,
            chunks: (0..chunks).map(|_| OnceLock::new()).collect(),
        }
    }

    fn slot(&self, offset: u64) -> Option<&AtomicU8> {
        let granule = offset >> self.granule_bits?;
        let chunk = self
            .chunks
            .get((granule >> CHUNK_BITS) as usize)?
            .get_or_init(|| {
                (0..1 << CHUNK_BITS)
                    .map(|_| AtomicU8::new(UNKNOWN))
                    .collect()
            });
        chunk.get((granule & ((1 << CHUNK_BITS) - 1)) as usize)
    }
}

impl Layer {
    pub(crate) fn raw(path: &Path, file: RawFile, id: FileId, allocated: u64) -> Arc<Self> {
        let size = file.size();
        Arc::new(Self {
            path: path.to_path_buf(),
            kind: LayerKind::Raw(file),
            id,
            raw_allocated: allocated,
            lower: Vec::new(),
            owners: Owners::new(size, None),
        })
    }

    pub(crate) fn qcow2(file: Arc<Qcow2File>, id: FileId) -> Arc<Self> {
        let mut lower = Vec::new();
        let mut granule_bits = file.geo.cluster_bits;
        if let Some(backing) = &file.backing {
            lower.push(backing.clone());
            lower.extend(backing.lower.iter().cloned());
            if let Some(g) = backing.owners.granule_bits {
                granule_bits = granule_bits.min(g);
            }
        }
        Arc::new(Self {
            path: file.path.clone(),
            owners: Owners::new(file.geo.size, Some(granule_bits)),
            kind: LayerKind::Qcow2(file),
            id,
            raw_allocated: 0,
            lower,
        })
    }

    /// Opens the image at `path` (raw or qcow2, detected) and its chain as a read-only
    /// layer, with shared locks: the base for new overlays ([`super::Qcow2Image::open_on`]).
    pub fn open(path: &Path) -> Result<Arc<Self>, super::ImageError> {
        super::chain::open_layer(path)
    }

    /// The file's path, as the chain named it (relative names resolved).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> ImageFormat {
        match self.kind {
            LayerKind::Raw(_) => ImageFormat::Raw,
            LayerKind::Qcow2(_) => ImageFormat::Qcow2,
        }
    }

    /// The layer below this one.
    pub fn backing(&self) -> Option<&Arc<Layer>> {
        self.lower.first()
    }

    /// Layers in the chain from this one down (1 for a base).
    pub fn depth(&self) -> usize {
        1 + self.lower.len()
    }

    pub(crate) fn id(&self) -> FileId {
        self.id
    }

    pub(crate) fn kind(&self) -> &LayerKind {
        &self.kind
    }

    /// Whether `id` is this file or one below it.
    pub(crate) fn contains(&self, id: FileId) -> bool {
        self.id == id || self.lower.iter().any(|l| l.id == id)
    }

    /// Bytes stored in this layer alone (data clusters for qcow2, st_blocks for raw).
    pub(crate) fn allocated_bytes(&self) -> u64 {
        match &self.kind {
            LayerKind::Raw(_) => self.raw_allocated,
            LayerKind::Qcow2(q) => q.allocated_bytes(),
        }
    }

    fn owner(&self, offset: u64) -> io::Result<Owner> {
        let LayerKind::Qcow2(q) = &self.kind else {
            return Ok(Owner::Depth(0));
        };
        let slot = self.owners.slot(offset);
        match slot.map_or(UNKNOWN, |s| s.load(Ordering::Relaxed)) {
            UNKNOWN => {}
            ZERO => return Ok(Owner::Zero),
            v => return Ok(Owner::Depth(v - 2)),
        }
        let owner = match q.owner(offset)? {
            Run::Data(_) => Owner::Depth(0),
            Run::Below => match self.lower.first() {
                Some(b) => match b.owner(offset)? {
                    Owner::Depth(d) => Owner::Depth(d + 1),
                    Owner::Zero => Owner::Zero,
                },
                None => Owner::Zero,
            },
            Run::Zero | Run::Slow => Owner::Zero,
        };
        if let Some(slot) = slot {
            let v = match owner {
                Owner::Zero => ZERO,
                Owner::Depth(d) => d + 2,
            };
            slot.store(v, Ordering::Relaxed);
        }
        Ok(owner)
    }

    /// Reads bytes this layer itself holds.
    fn read_own(&self, buf: &VolatileSlice<'_>, offset: u64) -> io::Result<()> {
        match &self.kind {
            LayerKind::Raw(r) => r.read_at(buf, offset),
            LayerKind::Qcow2(q) => q.read_at(buf, offset),
        }
    }
}

impl DiskEngine for Layer {
    fn size(&self) -> u64 {
        match &self.kind {
            LayerKind::Raw(r) => r.size(),
            LayerKind::Qcow2(q) => q.geo.size,
        }
    }

    /// Runs of granules with one owner, each read from that layer directly.
    fn read_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> io::Result<()> {
        let Some(bits) = self.owners.granule_bits else {
            return self.read_own(buf, offset);
        };
        let len = buf.len() as u64;
        let granule = 1u64 << bits;
        let mut done = 0;
        while done < len {
            let pos = offset + done;
            let owner = self.owner(pos)?;
            let mut n = (granule - (pos & (granule - 1))).min(len - done);
            while done + n < len && self.owner(pos + n)? == owner {
                n = (n + granule).min(len - done);
            }
            let part = buf.subslice(done as usize, n as usize).map_err(to_io)?;
            match owner {
                Owner::Zero => fill_zeroes(&part),
                Owner::Depth(0) => self.read_own(&part, pos)?,
                Owner::Depth(d) => match self.lower.get(usize::from(d) - 1) {
                    Some(layer) => layer.read_own(&part, pos)?,
                    None => return Err(io::Error::other("layer cache out of range")),
                },
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, _: &VolatileSlice<'_>, _: u64) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EROFS))
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn discard(&self, _: u64, _: u64) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EROFS))
    }

    fn write_zeroes(&self, _: u64, _: u64, _: bool) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EROFS))
    }

    fn extent(&self, offset: u64) -> io::Result<Extent> {
        match &self.kind {
            LayerKind::Raw(r) => r.extent(offset),
            LayerKind::Qcow2(q) => q.extent(offset),
        }
    }
}
