//! Why an image cannot be opened, created or sealed: every message names the file.

use std::io;
use std::path::PathBuf;

/// An error about one image file of a disk (the top or a backing layer), in one line.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot open disk image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk image {path} is in use by another drive or VM{}",
        if source.kind() == io::ErrorKind::WouldBlock { "" } else { " (or it cannot be locked)" })]
    Locked {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read or write disk image {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create disk image {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create disk image {path}: {reason}")]
    BadCreate { path: PathBuf, reason: String },
    /// A header or table that no valid image has.
    #[error("disk image {path} is damaged: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// A valid image that uses something this engine refuses rather than mishandles.
    #[error("disk image {path} cannot be used: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("backing file {backing} of disk image {path} cannot be opened")]
    MissingBacking {
        path: PathBuf,
        backing: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the backing chain of disk image {path} has more than {limit} layers; flatten the image with `vmm image flatten`")]
    ChainTooDeep { path: PathBuf, limit: usize },
    #[error("the backing chain of disk image {path} loops: {backing} is already part of it")]
    Cycle { path: PathBuf, backing: PathBuf },
    #[error(
        "disk image {path} is {size} bytes but its backing file {backing} is {backing_size} bytes"
    )]
    SizeMismatch {
        path: PathBuf,
        size: u64,
        backing: PathBuf,
        backing_size: u64,
    },
    #[error("disk image {path} names {named} as its backing file, not the open layer {layer}")]
    BackingMismatch {
        path: PathBuf,
        named: PathBuf,
        layer: PathBuf,
    },
    #[error("disk image {path} is not open for writing")]
    ReadOnly { path: PathBuf },
}

impl ImageError {
    pub(crate) fn corrupt(path: &std::path::Path, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported(path: &std::path::Path, reason: impl Into<String>) -> Self {
        Self::Unsupported {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
