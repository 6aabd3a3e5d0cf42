//! Tests of the qcow2 engine: a reference model under random operations (`model`),
//! crashes after every write (`crash`), QEMU's tools both ways (`interop`), damaged and
//! unsupported images (`corrupt`), backing chains and snapshots (`chain`).
//!
//! QEMU's `qemu-img` and `qemu-io` are test oracles: a test that needs them fails when
//! they are missing (`make deps` installs qemu-utils).

mod chain;
mod corrupt;
mod crash;
mod interop;
mod model;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use vm_memory::VolatileSlice;

use super::engine::Qcow2File;
use super::header::Header;
use super::Qcow2Image;
use crate::disk::layer::Layer;
use crate::disk::storage::mem::MemStorage;
use crate::disk::{DiskEngine, ImageError, ImageFormat};

/// A deterministic xorshift64* generator: the same seed, the same test.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn tool(name: &str, args: &[&str]) -> Output {
    crate::disk::storage::test_spawn::output(Command::new(name).args(args)).unwrap_or_else(|e| {
        panic!("{name} is required for these tests (make deps installs qemu-utils): {e}")
    })
}

pub fn qemu_img(args: &[&str]) -> Output {
    tool("qemu-img", args)
}

/// qemu-img that must succeed; returns stdout.
pub fn qemu_img_ok(args: &[&str]) -> String {
    let out = qemu_img(args);
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// qemu-io commands on a qcow2 image, which must succeed.
pub fn qemu_io(path: &Path, commands: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in commands {
        args.extend(["-c", c]);
    }
    let path = path.to_str().unwrap();
    args.push(path);
    let out = tool("qemu-io", &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !stdout.contains("error") && !stdout.contains("failed"),
        "qemu-io {commands:?}: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qemu-img create -f qcow2` with `-o options` (if any), on `backing` (name, format)
/// if any, of `size` (or the backing file's).
pub fn qemu_create(path: &Path, options: &str, backing: Option<(&str, &str)>, size: &str) {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !options.is_empty() {
        args.extend(["-o", options]);
    }
    if let Some((name, format)) = backing {
        args.extend(["-b", name, "-F", format]);
    }
    args.push(path.to_str().unwrap());
    if !size.is_empty() {
        args.push(size);
    }
    qemu_img_ok(&args);
}

/// `qemu-img compare`: the qcow2 image at `path` holds exactly `want`.
pub fn assert_same_as(path: &Path, want: &[u8]) {
    let flat = path.with_extension("expected.raw");
    std::fs::write(&flat, want).unwrap();
    let (p, f) = (path.to_str().unwrap(), flat.to_str().unwrap());
    qemu_img_ok(&["compare", "-f", "qcow2", "-F", "raw", p, f]);
    std::fs::remove_file(flat).unwrap();
}

/// `qemu-img check`: no error and no leak.
pub fn assert_clean(path: &Path) {
    let out = qemu_img(&["check", "-f", "qcow2", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "qemu-img check {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `qemu-img check`: clean, or leaked clusters only (exit 3 with no error).
pub fn assert_consistent(path: &Path) {
    let out = qemu_img(&["check", "-f", "qcow2", path.to_str().unwrap()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let leaks_only = out.status.code() == Some(3)
        && text.contains("leaked clusters")
        && !text.contains("ERROR")
        && !text.contains("corruption");
    assert!(
        out.status.code() == Some(0) || leaks_only,
        "qemu-img check {}: {text}",
        path.display()
    );
}

pub fn read(e: &dyn DiskEngine, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xeeu8; len];
    e.read_at(&VolatileSlice::from(&mut buf[..]), offset)
        .unwrap_or_else(|err| panic!("read {len} at {offset:#x}: {err}"));
    buf
}

pub fn write(e: &dyn DiskEngine, offset: u64, data: &[u8]) {
    let mut buf = data.to_vec();
    e.write_at(&VolatileSlice::from(&mut buf[..]), offset)
        .unwrap_or_else(|err| panic!("write {} at {offset:#x}: {err}", data.len()));
}

/// A new image from our `create`, in `dir`.
pub fn new_image(
    dir: &Path,
    name: &str,
    size: u64,
    cluster_bits: u32,
    backing: Option<(&str, ImageFormat)>,
) -> PathBuf {
    let path = dir.join(name);
    super::create(&path, size, cluster_bits, backing).unwrap();
    path
}

/// An engine over an image held in memory (its writes logged), on `backing`.
pub fn open_mem(
    mem: &MemStorage,
    writable: bool,
    backing: Option<Arc<Layer>>,
) -> Result<Qcow2Image, ImageError> {
    let path = Path::new("mem.qcow2");
    let header = Header::read(mem, path)?;
    let file = Qcow2File::open(
        path,
        Box::new(mem.clone()),
        header,
        writable,
        backing,
        None,
        (0, 0),
    )?;
    Ok(Qcow2Image::from_open(file))
}

/// A pattern that differs per offset and per `seed`.
pub fn pattern(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let x = (offset + i).wrapping_mul(31) ^ seed.wrapping_mul(0x9e37);
            (x ^ (x >> 8)) as u8 | 1
        })
        .collect()
}

#[test]
fn writes_read_back_after_reopen_and_qemu_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let path = new_image(dir.path(), "a.qcow2", 4 << 20, 16, None);
    let mut expect = vec![0u8; 4 << 20];
    {
        let img = Qcow2Image::open(&path, true).unwrap();
        for (off, len) in [
            (0, 512),
            (4096, 65536),
            (100_000, 300_000),
            ((4 << 20) - 512, 512),
        ] {
            let data = pattern(off, off, len);
            write(&img, off, &data);
            expect[off as usize..off as usize + len].copy_from_slice(&data);
        }
        img.write_zeroes(131072, 65536, true).unwrap();
        expect[131072..196608].fill(0);
        assert_eq!(read(&img, 0, 4 << 20), expect);
        img.flush().unwrap();
    }
    let img = Qcow2Image::open(&path, false).unwrap();
    assert_eq!(read(&img, 0, 4 << 20), expect);
    assert_clean(&path);
    assert_same_as(&path, &expect);
}
