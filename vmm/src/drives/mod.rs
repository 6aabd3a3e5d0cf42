//! The VM's drives: opens each configured image into the engine of its virtio-blk
//! device (raw, or qcow2 with its backing chain, with or without an overlay), and seals
//! overlays for live snapshots.

mod open;
mod probed_raw;
pub mod seal;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::bus::lock;
use devices::disk::{ImageError, Qcow2Image};
use devices::virtio::block::{Block, BlockError};

use crate::config::DriveConfig;
use crate::sandbox::{DriveSnapshots, Sealed, SnapshotError};
pub use open::TempOverlays;

#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("drive {id}: {source}")]
    Image {
        id: String,
        #[source]
        source: ImageError,
    },
    #[error("drive {id}: {source}")]
    Block {
        id: String,
        #[source]
        source: BlockError,
    },
    #[error("drive {id}: overlay {overlay} is backed by {chain}, not by {base}")]
    OverlayElsewhere {
        id: String,
        overlay: PathBuf,
        base: PathBuf,
        chain: String,
    },
    #[error("drive {id}: overlay {overlay} has {links} names (a snapshot of it was cut short?): rename or remove the others first")]
    OverlayLinked {
        id: String,
        overlay: PathBuf,
        links: u64,
    },
    #[error("drive {id}: cannot make a temporary overlay in {dir}")]
    TempDir {
        id: String,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The writable qcow2 image on top of a drive, which a live snapshot seals.
struct Top {
    image: Arc<Qcow2Image>,
    path: PathBuf,
}

/// A drive of the running VM.
struct Drive {
    id: String,
    /// Set once the device is on the bus.
    block: Option<Arc<Mutex<Block>>>,
    /// None for raw drives and read-only ones.
    top: Mutex<Option<Top>>,
}

/// Every drive of the VM, in device order.
pub struct Drives {
    drives: Vec<Drive>,
    temp: TempOverlays,
}

impl Drives {
    /// Opens every drive's image (and overlay); returns the devices to put on the bus.
    pub fn open(configs: &[DriveConfig]) -> Result<(Self, Vec<Block>), DriveError> {
        let mut temp = TempOverlays::default();
        let mut drives = Vec::with_capacity(configs.len());
        let mut blocks = Vec::with_capacity(configs.len());
        for config in configs {
            let opened = open::open_drive(config, &mut temp)?;
            let block = Block::with_engine(opened.engine, config.read_only, &config.id).map_err(
                |source| DriveError::Block {
                    id: config.id.clone(),
                    source,
                },
            )?;
            blocks.push(block);
            drives.push(Drive {
                id: config.id.clone(),
                block: None,
                top: Mutex::new(opened.top),
            });
        }
        Ok((Self { drives, temp }, blocks))
    }

    /// Records the devices as they went on the bus (same order as `open` returned them).
    pub fn attach(&mut self, blocks: &[Arc<Mutex<Block>>]) {
        for (drive, block) in self.drives.iter_mut().zip(blocks) {
            drive.block = Some(block.clone());
        }
    }

    /// Flushes every drive (the VM has stopped) and removes temporary overlays.
    pub fn close(&self) {
        for drive in &self.drives {
            if let Some(block) = &drive.block {
                if let Err(e) = lock(block).flush() {
                    log::error!("flushing drive {} failed: {e}", drive.id);
                }
            }
        }
        self.temp.remove();
    }

    fn drive(&self, id: &str) -> Result<&Drive, SnapshotError> {
        self.drives
            .iter()
            .find(|d| d.id == id)
            .ok_or_else(|| SnapshotError::Refused(format!("the VM has no drive {id:?}")))
    }
}

impl DriveSnapshots for Drives {
    fn seal(&self, id: &str, path: &Path) -> Result<Sealed, SnapshotError> {
        let drive = self.drive(id)?;
        let (Some(block), mut top) = (&drive.block, lock(&drive.top)) else {
            return Err(SnapshotError::Refused(format!(
                "drive {id:?} is not running"
            )));
        };
        let Some(current) = top.as_ref() else {
            return Err(SnapshotError::Refused(format!(
                "drive {id:?} has no writable qcow2 overlay to seal (a raw or read-only \
                 drive): start it with an overlay"
            )));
        };
        let plan = seal::Plan::new(&current.image, &current.path, path)?;
        let mut device = lock(block);
        // The device thread is between two requests while we hold the device: nothing is
        // in flight, and the guest's next request goes to the new overlay.
        let held = Instant::now();
        let next = plan.switch(&current.image)?;
        let next = Arc::new(next);
        let replaced = device.replace_engine(next.clone());
        let io_pause = held.elapsed();
        drop(device);
        replaced.map_err(|e| SnapshotError::Failed(e.to_string()))?;
        *top = Some(Top {
            image: next,
            path: current.path.clone(),
        });
        drop(top);
        plan.finish().map(|size| Sealed {
            path: plan.snapshot().to_path_buf(),
            size,
            io_pause,
        })
    }
}
