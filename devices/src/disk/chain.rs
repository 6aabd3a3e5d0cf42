//! Opening an image with its whole backing chain: names resolved as QEMU does (relative
//! to the directory of the image that names them), formats from the backing format
//! extension or else the magic, at most `MAX_LAYERS` layers, no file twice, every layer
//! the top's size. The writable top gets an exclusive flock, every other layer a shared
//! one; lower layers are opened read-only.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::layer::{FileId, Layer};
use super::qcow2::engine::Qcow2File;
use super::qcow2::header::Header;
use super::storage::{lock_image, FileStorage};
use super::{detect_format, DiskEngine, ImageError, ImageFormat, RawFile};

/// The deepest chain we open, top included: deeper ones must be flattened.
pub const MAX_LAYERS: usize = 16;

/// The top image of a chain, opened.
pub(crate) enum Top {
    Raw { file: RawFile, allocated: u64 },
    Qcow2(Box<Qcow2File>),
}

pub(crate) struct ChainOpener<'a> {
    top: &'a Path,
    lock: bool,
    seen: Vec<FileId>,
}

fn open_file(path: &Path, writable: bool) -> Result<File, ImageError> {
    OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
        .map_err(|source| ImageError::Open {
            path: path.to_path_buf(),
            source,
        })
}

fn file_id(file: &File, path: &Path) -> Result<(FileId, u64), ImageError> {
    let m = file.metadata().map_err(|e| ImageError::io(path, e))?;
    Ok(((m.dev(), m.ino()), m.blocks() * 512))
}

fn locked(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Locked {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a backing name points: absolute as is, relative to the naming image's folder.
pub(crate) fn resolve(parent: &Path, name: &str) -> Result<PathBuf, ImageError> {
    // QEMU's rule: a ':' before any '/' names a protocol (nbd:, json:, ...).
    if name
        .find([':', '/'])
        .is_some_and(|i| name.as_bytes()[i] == b':')
    {
        return Err(ImageError::unsupported(
            parent,
            format!("its backing file {name:?} is not a local file"),
        ));
    }
    let name = Path::new(name);
    Ok(if name.is_absolute() {
        name.to_path_buf()
    } else {
        parent.parent().unwrap_or(Path::new("")).join(name)
    })
}

fn backing_format(parent: &Path, format: Option<&str>) -> Result<Option<ImageFormat>, ImageError> {
    match format {
        None => Ok(None),
        Some("raw") => Ok(Some(ImageFormat::Raw)),
        Some("qcow2") => Ok(Some(ImageFormat::Qcow2)),
        Some(other) => Err(ImageError::unsupported(
            parent,
            format!("its backing file has format {other:?}; only raw and qcow2 are supported"),
        )),
    }
}

impl<'a> ChainOpener<'a> {
    /// Opens `path` and everything below it. `lock: false` is for inspection only.
    pub(crate) fn open(
        path: &'a Path,
        writable: bool,
        lock: bool,
        format: Option<ImageFormat>,
    ) -> Result<Top, ImageError> {
        let file = open_file(path, writable)?;
        let (id, allocated) = file_id(&file, path)?;
        if lock {
            lock_image(&file, !writable).map_err(locked(path))?;
        }
        let format = match format {
            Some(f) => f,
            None => detect_format(&file).map_err(|e| ImageError::io(path, e))?,
        };
        let mut opener = ChainOpener {
            top: path,
            lock,
            seen: vec![id],
        };
        match format {
            ImageFormat::Raw => Ok(Top::Raw {
                file: RawFile::new(file).map_err(|e| ImageError::io(path, e))?,
                allocated,
            }),
            ImageFormat::Qcow2 => Ok(Top::Qcow2(Box::new(
                opener.qcow2(path, file, id, writable, 0)?,
            ))),
        }
    }

    fn qcow2(
        &mut self,
        path: &Path,
        file: File,
        id: FileId,
        writable: bool,
        depth: usize,
    ) -> Result<Qcow2File, ImageError> {
        let lock = match writable {
            true => Some(file.try_clone().map_err(|e| ImageError::io(path, e))?),
            false => None,
        };
        let storage = Box::new(FileStorage(file));
        let h = Header::read(&*storage, path)?;
        let backing = match &h.backing {
            Some(name) => {
                let format = backing_format(path, h.backing_format.as_deref())?;
                Some(self.backing(path, name, format, depth + 1, h.size)?)
            }
            None => None,
        };
        Qcow2File::open(path, storage, h, writable, backing, lock, id)
    }

    /// Opens layer number `depth` (the top is 0), named `name` by `parent`.
    fn backing(
        &mut self,
        parent: &Path,
        name: &str,
        format: Option<ImageFormat>,
        depth: usize,
        size: u64,
    ) -> Result<Arc<Layer>, ImageError> {
        if depth >= MAX_LAYERS {
            return Err(ImageError::ChainTooDeep {
                path: self.top.to_path_buf(),
                limit: MAX_LAYERS,
            });
        }
        let path = resolve(parent, name)?;
        let file = File::open(&path).map_err(|source| ImageError::MissingBacking {
            path: parent.to_path_buf(),
            backing: path.clone(),
            source,
        })?;
        let layer = self.layer(&path, file, format, depth)?;
        if layer.size() != size {
            return Err(ImageError::SizeMismatch {
                path: parent.to_path_buf(),
                size,
                backing: path,
                backing_size: layer.size(),
            });
        }
        Ok(layer)
    }

    /// Opens layer number `depth` read-only from `file`, with what is below it.
    fn layer(
        &mut self,
        path: &Path,
        file: File,
        format: Option<ImageFormat>,
        depth: usize,
    ) -> Result<Arc<Layer>, ImageError> {
        let (id, allocated) = file_id(&file, path)?;
        if self.seen.contains(&id) {
            return Err(ImageError::Cycle {
                path: self.top.to_path_buf(),
                backing: path.to_path_buf(),
            });
        }
        self.seen.push(id);
        if self.lock {
            lock_image(&file, true).map_err(locked(path))?;
        }
        let format = match format {
            Some(f) => f,
            None => detect_format(&file).map_err(|e| ImageError::io(path, e))?,
        };
        Ok(match format {
            ImageFormat::Raw => {
                let raw = RawFile::new(file).map_err(|e| ImageError::io(path, e))?;
                Layer::raw(path, raw, id, allocated)
            }
            ImageFormat::Qcow2 => {
                let q = self.qcow2(path, file, id, false, depth)?;
                Layer::qcow2(Arc::new(q), id)
            }
        })
    }
}

/// Opens the image at `path` with its chain as one read-only layer (shared locks).
pub(crate) fn open_layer(path: &Path) -> Result<Arc<Layer>, ImageError> {
    let file = open_file(path, false)?;
    let mut opener = ChainOpener {
        top: path,
        lock: true,
        seen: Vec::new(),
    };
    opener.layer(path, file, None, 0)
}

/// Opens the new overlay at `path` (created naming `backing`'s file as its backing file)
/// on top of the already open `backing` chain, writable.
pub(crate) fn open_on(path: &Path, backing: Arc<Layer>) -> Result<Qcow2File, ImageError> {
    let file = open_file(path, true)?;
    let (id, _) = file_id(&file, path)?;
    if backing.contains(id) {
        return Err(ImageError::Cycle {
            path: path.to_path_buf(),
            backing: path.to_path_buf(),
        });
    }
    lock_image(&file, false).map_err(locked(path))?;
    let lock = Some(file.try_clone().map_err(|e| ImageError::io(path, e))?);
    let storage = Box::new(FileStorage(file));
    let h = Header::read(&*storage, path)?;
    let mismatch = |named: PathBuf| ImageError::BackingMismatch {
        path: path.to_path_buf(),
        named,
        layer: backing.path().to_path_buf(),
    };
    let name = h
        .backing
        .as_deref()
        .ok_or_else(|| mismatch(PathBuf::from("nothing")))?;
    let named = resolve(path, name)?;
    let named_id = std::fs::metadata(&named).map(|m| (m.dev(), m.ino()));
    if named_id.ok() != Some(backing.id()) {
        return Err(mismatch(named));
    }
    if let Some(format) = backing_format(path, h.backing_format.as_deref())? {
        if format != backing.format() {
            return Err(mismatch(named));
        }
    }
    if backing.depth() + 1 > MAX_LAYERS {
        return Err(ImageError::ChainTooDeep {
            path: path.to_path_buf(),
            limit: MAX_LAYERS,
        });
    }
    if backing.size() != h.size {
        return Err(ImageError::SizeMismatch {
            path: path.to_path_buf(),
            size: h.size,
            backing: backing.path().to_path_buf(),
            backing_size: backing.size(),
        });
    }
    Qcow2File::open(path, storage, h, true, Some(backing), lock, id)
}
