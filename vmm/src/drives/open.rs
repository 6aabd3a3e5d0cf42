//! From a drive's configuration to its engine: the image as it is, or a qcow2 overlay on
//! it (created when missing, resumed when present, or temporary).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use devices::disk::{open_image, qcow2, DiskEngine, DiskImage, ImageError, Qcow2Image};

use super::probed_raw::ProbedRaw;
use super::{DriveError, Top};
use crate::config::{DriveConfig, Overlay};

/// Clusters of new overlays: QEMU's default, 64 KiB.
const OVERLAY_CLUSTER_BITS: u32 = 16;
/// The file name of a temporary overlay in its directory.
const TEMP_OVERLAY: &str = "overlay.qcow2";

pub(super) struct Opened {
    pub engine: Arc<dyn DiskEngine>,
    pub top: Option<Top>,
}

/// Directories of temporary overlays, removed when the VM ends. Removed file by file:
/// at that point the main thread's seccomp filter allows unlink, not the directory walk
/// a recursive removal needs.
#[derive(Default)]
pub struct TempOverlays {
    dirs: Vec<PathBuf>,
}

impl TempOverlays {
    fn create(&mut self, id: &str) -> Result<PathBuf, DriveError> {
        let base = std::env::temp_dir();
        let dir = tempfile::Builder::new()
            .prefix(&format!("vmm-overlay-{id}-"))
            .tempdir_in(&base)
            .map_err(|source| DriveError::TempDir {
                id: id.to_string(),
                dir: base,
                source,
            })?
            .keep();
        self.dirs.push(dir.clone());
        Ok(dir.join(TEMP_OVERLAY))
    }

    pub fn remove(&self) {
        for dir in &self.dirs {
            let _ = std::fs::remove_file(dir.join(TEMP_OVERLAY));
            if let Err(e) = std::fs::remove_dir(dir) {
                log::warn!("cannot remove the temporary overlay {}: {e}", dir.display());
            }
        }
    }
}

pub(super) fn open_drive(
    config: &DriveConfig,
    temp: &mut TempOverlays,
) -> Result<Opened, DriveError> {
    let image_err = |source| DriveError::Image {
        id: config.id.clone(),
        source,
    };
    let overlay = match &config.overlay {
        Overlay::None => {
            let image = open_image(&config.path, !config.read_only).map_err(image_err)?;
            return Ok(match image {
                DiskImage::Raw(raw) if !config.read_only => Opened {
                    engine: Arc::new(ProbedRaw::new(raw)),
                    top: None,
                },
                DiskImage::Raw(raw) => Opened {
                    engine: Arc::new(raw),
                    top: None,
                },
                DiskImage::Qcow2(q) => writable_top(q, &config.path, config.read_only),
            });
        }
        Overlay::At(path) => path.clone(),
        Overlay::Temporary => temp.create(&config.id)?,
    };
    if overlay.exists() {
        let image = Qcow2Image::open(&overlay, true).map_err(image_err)?;
        check_resumed(config, &overlay, &image)?;
        return Ok(writable_top(image, &overlay, false));
    }
    // The base's size and format, then the overlay on it (which opens the base again,
    // shared, with the rest of its chain).
    let (size, format) = {
        let base = open_image(&config.path, false).map_err(image_err)?;
        (base.size(), base.format())
    };
    let name = absolute(&config.path).map_err(|source| {
        image_err(ImageError::Open {
            path: config.path.clone(),
            source,
        })
    })?;
    qcow2::create(
        &overlay,
        size,
        OVERLAY_CLUSTER_BITS,
        Some((&name.to_string_lossy(), format)),
    )
    .map_err(image_err)?;
    let image = Qcow2Image::open(&overlay, true).map_err(image_err)?;
    Ok(writable_top(image, &overlay, false))
}

fn writable_top(image: Qcow2Image, path: &Path, read_only: bool) -> Opened {
    let image = Arc::new(image);
    Opened {
        engine: image.clone(),
        top: (!read_only).then(|| Top {
            image,
            path: path.to_path_buf(),
        }),
    }
}

/// A resumed overlay must sit on the configured base (somewhere down its chain), and be
/// the only name of its file: a second one is a snapshot that was cut short, whose file
/// must not be written.
fn check_resumed(
    config: &DriveConfig,
    overlay: &Path,
    image: &Qcow2Image,
) -> Result<(), DriveError> {
    let links = std::fs::metadata(overlay).map(|m| m.nlink()).unwrap_or(1);
    if links > 1 {
        return Err(DriveError::OverlayLinked {
            id: config.id.clone(),
            overlay: overlay.to_path_buf(),
            links,
        });
    }
    let base = std::fs::metadata(&config.path)
        .map(|m| (m.dev(), m.ino()))
        .ok();
    let mut chain = Vec::new();
    let mut layer = image.backing();
    while let Some(l) = layer {
        let id = std::fs::metadata(l.path()).map(|m| (m.dev(), m.ino())).ok();
        if id.is_some() && id == base {
            return Ok(());
        }
        chain.push(l.path().display().to_string());
        layer = l.backing();
    }
    Err(DriveError::OverlayElsewhere {
        id: config.id.clone(),
        overlay: overlay.to_path_buf(),
        base: config.path.clone(),
        chain: if chain.is_empty() {
            "nothing".into()
        } else {
            chain.join(" <- ")
        },
    })
}

/// Overlays name their backing file by its absolute path, so that a snapshot can live in
/// another directory than the overlay it was sealed from.
pub(super) fn absolute(path: &Path) -> std::io::Result<PathBuf> {
    std::path::absolute(path)
}
