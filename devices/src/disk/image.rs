//! Opening a disk image of either format, and what `vmm image info` shows of its layers.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vm_memory::VolatileSlice;

use super::chain::{ChainOpener, Top};
use super::layer::{Layer, LayerKind};
use super::qcow2::Qcow2Image;
use super::{DiskEngine, Extent, ImageError, RawFile};

/// The container format of an image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl ImageFormat {
    /// The name QEMU uses (`-f`, the backing format extension).
    pub fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
        }
    }
}

/// qcow2 if the file starts with the qcow2 magic (`QFI\xfb`), else raw.
///
/// A raw image that a guest wrote could start with that magic and name any host file as
/// its backing file: for raw images a guest has written, give the format explicitly
/// ([`open_image_as`]) instead of detecting it.
pub fn detect_format(file: &File) -> io::Result<ImageFormat> {
    let mut magic = [0u8; 4];
    let mut done = 0;
    while done < magic.len() {
        match file.read_at(&mut magic[done..], done as u64) {
            Ok(0) => return Ok(ImageFormat::Raw),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(if magic == super::qcow2::header::MAGIC {
        ImageFormat::Qcow2
    } else {
        ImageFormat::Raw
    })
}

/// An open disk image: what a drive's engine is.
pub enum DiskImage {
    Raw(RawFile),
    Qcow2(Qcow2Image),
}

impl DiskImage {
    pub fn format(&self) -> ImageFormat {
        match self {
            Self::Raw(_) => ImageFormat::Raw,
            Self::Qcow2(_) => ImageFormat::Qcow2,
        }
    }

    /// The qcow2 image, for sealing it in a snapshot.
    pub fn as_qcow2(&self) -> Option<&Qcow2Image> {
        match self {
            Self::Qcow2(q) => Some(q),
            Self::Raw(_) => None,
        }
    }
}

/// Opens a raw or qcow2 image (detected by its magic) with its whole backing chain,
/// locked: exclusively if `writable`, shared otherwise and for every backing layer.
pub fn open_image(path: &Path, writable: bool) -> Result<DiskImage, ImageError> {
    open_chain(path, writable, None)
}

/// [`open_image`] with the top's format given rather than detected.
pub fn open_image_as(
    path: &Path,
    format: ImageFormat,
    writable: bool,
) -> Result<DiskImage, ImageError> {
    open_chain(path, writable, Some(format))
}

fn open_chain(
    path: &Path,
    writable: bool,
    format: Option<ImageFormat>,
) -> Result<DiskImage, ImageError> {
    Ok(match ChainOpener::open(path, writable, true, format)? {
        Top::Raw { file, .. } => DiskImage::Raw(file),
        Top::Qcow2(file) => DiskImage::Qcow2(Qcow2Image::from_open(*file)),
    })
}

/// One layer of an image, as `vmm image info` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// The file, with a relative backing name resolved against its parent's folder.
    pub path: PathBuf,
    pub format: ImageFormat,
    pub virtual_size: u64,
    /// qcow2 only.
    pub cluster_size: Option<u64>,
    /// Bytes this layer itself stores: its data clusters (qcow2), or the file's
    /// allocated blocks (raw).
    pub allocated_bytes: u64,
    /// The backing file's name as written in the image.
    pub backing: Option<String>,
}

/// Every layer of the image at `path`, top first. Takes no locks (it only reads), so
/// it works on images a running VM has open.
pub fn image_info(path: &Path) -> Result<Vec<LayerInfo>, ImageError> {
    let (top, mut below) = match ChainOpener::open(path, false, false, None)? {
        Top::Raw { file, allocated } => {
            let info = LayerInfo {
                path: path.to_path_buf(),
                format: ImageFormat::Raw,
                virtual_size: file.size(),
                cluster_size: None,
                allocated_bytes: allocated,
                backing: None,
            };
            return Ok(vec![info]);
        }
        Top::Qcow2(file) => (qcow2_info(&file.facts()), file.backing.clone()),
    };
    let mut infos = vec![top];
    while let Some(layer) = below {
        infos.push(layer_info(&layer));
        below = layer.backing().cloned();
    }
    Ok(infos)
}

/// (path, size, cluster size, allocated bytes, backing name) of a qcow2 file.
pub(crate) type Qcow2Facts = (PathBuf, u64, u64, u64, Option<String>);

fn qcow2_info(facts: &Qcow2Facts) -> LayerInfo {
    let (path, size, cluster, allocated, backing) = facts.clone();
    LayerInfo {
        path,
        format: ImageFormat::Qcow2,
        virtual_size: size,
        cluster_size: Some(cluster),
        allocated_bytes: allocated,
        backing,
    }
}

fn layer_info(layer: &Arc<Layer>) -> LayerInfo {
    match layer.kind() {
        LayerKind::Qcow2(q) => qcow2_info(&q.facts()),
        LayerKind::Raw(r) => LayerInfo {
            path: layer.path().to_path_buf(),
            format: ImageFormat::Raw,
            virtual_size: r.size(),
            cluster_size: None,
            allocated_bytes: layer.allocated_bytes(),
            backing: None,
        },
    }
}

impl DiskEngine for DiskImage {
    fn size(&self) -> u64 {
        match self {
            Self::Raw(e) => e.size(),
            Self::Qcow2(e) => e.size(),
        }
    }

    fn read_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> io::Result<()> {
        match self {
            Self::Raw(e) => e.read_at(buf, offset),
            Self::Qcow2(e) => e.read_at(buf, offset),
        }
    }

    fn write_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> io::Result<()> {
        match self {
            Self::Raw(e) => e.write_at(buf, offset),
            Self::Qcow2(e) => e.write_at(buf, offset),
        }
    }

    fn flush(&self) -> io::Result<()> {
        match self {
            Self::Raw(e) => e.flush(),
            Self::Qcow2(e) => e.flush(),
        }
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        match self {
            Self::Raw(e) => e.discard(offset, len),
            Self::Qcow2(e) => e.discard(offset, len),
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        match self {
            Self::Raw(e) => e.write_zeroes(offset, len, unmap),
            Self::Qcow2(e) => e.write_zeroes(offset, len, unmap),
        }
    }

    fn extent(&self, offset: u64) -> io::Result<Extent> {
        match self {
            Self::Raw(e) => e.extent(offset),
            Self::Qcow2(e) => e.extent(offset),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn formats_are_detected_by_magic_and_raw_images_open_as_raw() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        std::fs::write(&raw, vec![0x5a; 1 << 20]).unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"QF").unwrap();
        let q = dir.path().join("disk.qcow2");
        super::super::qcow2::create(&q, 1 << 20, 16, None).unwrap();
        let detect = |p: &Path| detect_format(&File::open(p).unwrap()).unwrap();
        assert_eq!(detect(&raw), ImageFormat::Raw);
        assert_eq!(detect(&empty), ImageFormat::Raw);
        assert_eq!(detect(&q), ImageFormat::Qcow2);

        let img = open_image(&raw, true).unwrap();
        assert_eq!((img.format(), img.size()), (ImageFormat::Raw, 1 << 20));
        assert!(img.as_qcow2().is_none());
        let info = image_info(&raw).unwrap();
        let blocks = std::fs::metadata(&raw).unwrap().blocks() * 512;
        assert_eq!(info.len(), 1);
        assert_eq!(info[0].allocated_bytes, blocks);
        assert_eq!(info[0].cluster_size, None);
        // Given, the format is not detected: a qcow2 file read as raw bytes.
        let as_raw = open_image_as(&q, ImageFormat::Raw, false).unwrap();
        assert_eq!(as_raw.format(), ImageFormat::Raw);
        let img = open_image(&q, false).unwrap();
        assert_eq!(img.as_qcow2().map(|q| q.cluster_size()), Some(65536));
    }

    #[test]
    fn create_refuses_bad_arguments_and_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("disk.qcow2");
        let create = super::super::qcow2::create;
        let err = |r: Result<(), ImageError>| r.unwrap_err().to_string();
        assert!(err(create(&q, 1 << 20, 8, None)).contains("cluster_bits"));
        assert!(err(create(&q, 1000, 16, None)).contains("multiple of 512"));
        assert!(err(create(&q, 1 << 50, 9, None)).contains("too large"));
        let long = "b".repeat(600);
        assert!(
            err(create(&q, 1 << 20, 9, Some((&long, ImageFormat::Raw)))).contains("first cluster")
        );
        create(&q, 1 << 20, 16, None).unwrap();
        let e = err(create(&q, 1 << 20, 16, None));
        assert!(
            e.contains("cannot create") && e.contains("disk.qcow2"),
            "{e}"
        );
    }
}
