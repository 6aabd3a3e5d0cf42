//! The VM's drives: opens each configured image into the engine of its virtio-blk
//! device (raw, or qcow2 with an overlay), and seals overlays for live snapshots.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use devices::bus::lock;
use devices::virtio::block::{Block, BlockConfig, BlockError};

use crate::config::{DriveConfig, Overlay};
use crate::sandbox::{DriveSnapshots, Sealed, SnapshotError};

#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error("drive {id}: {path}: qcow2 images and overlays need the qcow2 engine, which this build does not have yet")]
    NoQcow2 { id: String, path: PathBuf },
}

/// A drive of the running VM.
struct Drive {
    id: String,
    /// Set once the device is on the bus.
    block: Option<Arc<Mutex<Block>>>,
}

/// Every drive of the VM, in device order.
pub struct Drives {
    drives: Vec<Drive>,
}

impl Drives {
    /// Opens every drive's image (and overlay); returns the devices to put on the bus.
    pub fn open(configs: &[DriveConfig]) -> Result<(Self, Vec<Block>), DriveError> {
        let mut drives = Vec::with_capacity(configs.len());
        let mut blocks = Vec::with_capacity(configs.len());
        for config in configs {
            if config.overlay != Overlay::None {
                return Err(DriveError::NoQcow2 {
                    id: config.id.clone(),
                    path: config.path.clone(),
                });
            }
            blocks.push(Block::new(&BlockConfig {
                path: config.path.clone(),
                read_only: config.read_only,
                id: config.id.clone(),
            })?);
            drives.push(Drive {
                id: config.id.clone(),
                block: None,
            });
        }
        Ok((Self { drives }, blocks))
    }

    /// Records the devices as they went on the bus (same order as `open` returned them).
    pub fn attach(&mut self, blocks: &[Arc<Mutex<Block>>]) {
        for (drive, block) in self.drives.iter_mut().zip(blocks) {
            drive.block = Some(block.clone());
        }
    }

    /// Flushes every drive (the VM has stopped).
    pub fn flush_all(&self) {
        for drive in &self.drives {
            if let Some(block) = &drive.block {
                if let Err(e) = lock(block).flush() {
                    log::error!("flushing drive {} failed: {e}", drive.id);
                }
            }
        }
    }
}

impl DriveSnapshots for Drives {
    fn seal(&self, id: &str, _path: &Path) -> Result<Sealed, SnapshotError> {
        if !self.drives.iter().any(|d| d.id == id) {
            return Err(SnapshotError::Refused(format!(
                "the VM has no drive {id:?}"
            )));
        }
        Err(SnapshotError::Refused(format!(
            "drive {id:?} has no qcow2 overlay to seal"
        )))
    }
}
