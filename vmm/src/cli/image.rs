//! `vmm image`: what an image's chain holds, a standalone copy of it, and removing a layer
//! that no running sandbox uses.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use devices::disk::{
    image_info, lock_image, open_image, qcow2, DiskEngine, ExtentKind, ImageFormat, LayerInfo,
    Qcow2Image,
};
use vm_memory::VolatileSlice;

/// Bytes copied per read when flattening.
const COPY_CHUNK: u64 = 1 << 20;
/// Clusters of flattened qcow2 images: QEMU's default.
const FLAT_CLUSTER_BITS: u32 = 16;

/// `vmm image info`: the chain, top first.
pub fn info(path: &Path, json: bool) -> anyhow::Result<String> {
    let layers = image_info(path)?;
    if json {
        let layers: Vec<_> = layers.iter().map(layer_json).collect();
        return Ok(serde_json::json!({ "layers": layers }).to_string() + "\n");
    }
    let top = &layers[0];
    let mut out = format!(
        "{}: {}, virtual size {} ({} bytes), {} layer{}\n",
        path.display(),
        top.format.name(),
        human(top.virtual_size),
        top.virtual_size,
        layers.len(),
        if layers.len() == 1 { "" } else { "s" }
    );
    for (depth, layer) in layers.iter().enumerate() {
        out.push_str(&format!(
            "  {depth:>2}  {:<5}  {:>10} allocated{}  {}\n",
            layer.format.name(),
            human(layer.allocated_bytes),
            layer
                .cluster_size
                .map(|c| format!(", {} clusters", human(c)))
                .unwrap_or_default(),
            layer.path.display()
        ));
    }
    Ok(out)
}

fn layer_json(layer: &LayerInfo) -> serde_json::Value {
    serde_json::json!({
        "path": layer.path,
        "format": layer.format.name(),
        "virtual_size": layer.virtual_size,
        "cluster_size": layer.cluster_size,
        "allocated_bytes": layer.allocated_bytes,
        "backing": layer.backing,
    })
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `vmm image flatten`: every byte of `path`'s chain in one new image `out` (which must
/// not exist). Zero runs are skipped, so both formats come out sparse.
pub fn flatten(path: &Path, out: &Path, format: ImageFormat) -> anyhow::Result<String> {
    let source = open_image(path, false)?;
    let size = source.size();
    let sink: Box<dyn Sink> = match format {
        ImageFormat::Raw => {
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(out)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
            file.set_len(size)?;
            Box::new(RawSink(file))
        }
        ImageFormat::Qcow2 => {
            qcow2::create(out, size, FLAT_CLUSTER_BITS, None)?;
            Box::new(QcowSink(Qcow2Image::open(out, true)?))
        }
    };
    let mut buf = vec![0u8; COPY_CHUNK as usize];
    let mut offset = 0;
    let mut copied = 0;
    while offset < size {
        let extent = source.extent(offset)?;
        let len = extent.len.clamp(1, size - offset);
        if extent.kind == ExtentKind::Data {
            let mut at = offset;
            while at < offset + len {
                let n = (offset + len - at).min(COPY_CHUNK) as usize;
                source.read_at(&VolatileSlice::from(&mut buf[..n]), at)?;
                sink.write(&mut buf[..n], at)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
                at += n as u64;
            }
            copied += len;
        }
        offset += len;
    }
    sink.finish()
        .map_err(|e| anyhow::anyhow!("cannot sync {}: {e}", out.display()))?;
    Ok(format!(
        "{}: {} ({} bytes), {} of data\n",
        out.display(),
        format.name(),
        size,
        human(copied)
    ))
}

trait Sink {
    fn write(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    fn finish(&self) -> std::io::Result<()>;
}

struct RawSink(File);

impl Sink for RawSink {
    fn write(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn finish(&self) -> std::io::Result<()> {
        self.0.sync_all()
    }
}

struct QcowSink(Qcow2Image);

impl Sink for QcowSink {
    fn write(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.write_at(&VolatileSlice::from(buf), offset)
    }
    fn finish(&self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// `vmm image rm`: removes an image file unless a running sandbox has it open (as its
/// overlay or as a layer below one): their locks refuse ours.
pub fn remove(path: &Path) -> anyhow::Result<()> {
    let file =
        File::open(path).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    lock_image(&file, false).map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            anyhow::anyhow!(
                "{} is in use by a running sandbox: not removed",
                path.display()
            )
        } else {
            anyhow::anyhow!("cannot lock {}: {e}", path.display())
        }
    })?;
    std::fs::remove_file(path).map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", path.display()))
}
