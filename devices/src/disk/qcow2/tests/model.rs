//! Random sequences of operations against a flat in-memory model of the disk, for
//! several cluster sizes, without a backing file and on raw and qcow2 ones, reopening
//! the image now and then. Seeds are fixed: a failure names its case and operation.

use super::*;
use crate::disk::ExtentKind;

#[derive(Debug, Clone)]
pub enum Op {
    Write { offset: u64, len: u64, seed: u64 },
    Read { offset: u64, len: u64 },
    Discard { offset: u64, len: u64 },
    Zeroes { offset: u64, len: u64, unmap: bool },
    Flush,
    Reopen,
    Extents,
}

impl Op {
    /// The bytes the operation may change.
    pub fn range(&self) -> Option<(u64, u64)> {
        match *self {
            Op::Write { offset, len, .. }
            | Op::Discard { offset, len }
            | Op::Zeroes { offset, len, .. } => Some((offset, len)),
            _ => None,
        }
    }
}

/// A request range: cluster-aligned, sector-aligned or any byte, up to three clusters.
fn range(rng: &mut Rng, size: u64, cluster: u64) -> (u64, u64) {
    let max = (3 * cluster).clamp(4096, 256 << 10);
    let mut len = match rng.below(4) {
        0 => (1 + rng.below(8)) * 512,
        1 => (1 + rng.below(3)) * cluster,
        2 => 1 + rng.below(max),
        _ => (1 + rng.below(max / 512)) * 512,
    };
    let offset = match rng.below(3) {
        0 => rng.below(size / cluster) * cluster,
        1 => rng.below(size / 512) * 512,
        _ => rng.below(size),
    };
    len = len.min(size - offset).max(1);
    (offset, len)
}

/// One random operation; `reads` false leaves out reads, extents and reopens.
pub fn random_op(rng: &mut Rng, size: u64, cluster: u64, reads: bool) -> Op {
    let (offset, len) = range(rng, size, cluster);
    match rng.below(100) {
        0..=44 => Op::Write {
            offset,
            len,
            seed: rng.next(),
        },
        45..=54 => Op::Discard { offset, len },
        55..=64 => Op::Zeroes {
            offset,
            len,
            unmap: rng.below(2) == 0,
        },
        65..=69 => Op::Flush,
        70..=71 if reads => Op::Reopen,
        72..=75 if reads => Op::Extents,
        _ if reads => Op::Read { offset, len },
        _ => Op::Write {
            offset,
            len,
            seed: rng.next(),
        },
    }
}

/// Applies `op` to the engine and the model. Reads and extents are checked here.
pub fn apply(op: &Op, img: &Qcow2Image, model: &mut [u8]) {
    match *op {
        Op::Write { offset, len, seed } => {
            let data = pattern(seed, offset, len as usize);
            write(img, offset, &data);
            model[offset as usize..(offset + len) as usize].copy_from_slice(&data);
        }
        Op::Discard { offset, len } => {
            img.discard(offset, len).unwrap();
            model[offset as usize..(offset + len) as usize].fill(0);
        }
        Op::Zeroes { offset, len, unmap } => {
            img.write_zeroes(offset, len, unmap).unwrap();
            model[offset as usize..(offset + len) as usize].fill(0);
        }
        Op::Flush => img.flush().unwrap(),
        Op::Read { offset, len } => {
            let got = read(img, offset, len as usize);
            let want = &model[offset as usize..(offset + len) as usize];
            if got != want {
                let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
                panic!("{op:?}: first difference at byte {at}");
            }
        }
        Op::Extents => check_extents(img, model),
        Op::Reopen => unreachable!("the caller reopens"),
    }
}

/// Extents tile the disk, and a Zero extent reads as zeroes.
pub fn check_extents(img: &dyn DiskEngine, model: &[u8]) {
    let mut at = 0;
    while at < img.size() {
        let e = img.extent(at).unwrap();
        assert!(e.len >= 1 && at + e.len <= img.size(), "{e:?} at {at}");
        if e.kind == ExtentKind::Zero {
            let r = &model[at as usize..(at + e.len) as usize];
            assert!(
                r.iter().all(|&b| b == 0),
                "zero extent {e:?} at {at} holds data"
            );
        }
        at += e.len;
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Below {
    Nothing,
    Raw,
    Qcow2,
}

/// Makes the backing file (random content, holes and zero clusters) in `dir`; returns
/// its layer and the disk the top starts from.
pub fn make_backing(
    dir: &Path,
    below: Below,
    size: u64,
    seed: u64,
) -> (Option<(PathBuf, ImageFormat)>, Vec<u8>) {
    let mut content = vec![0u8; size as usize];
    let mut rng = Rng::new(seed);
    // Data in some 16 KiB stretches, zeroes elsewhere.
    for chunk in (0..size).step_by(16 << 10) {
        if rng.below(3) != 0 {
            let len = (16 << 10).min(size - chunk) as usize;
            content[chunk as usize..chunk as usize + len].copy_from_slice(&pattern(
                seed + chunk,
                chunk,
                len,
            ));
        }
    }
    match below {
        Below::Nothing => (None, vec![0; size as usize]),
        Below::Raw => {
            let path = dir.join("base.raw");
            std::fs::write(&path, &content).unwrap();
            (Some((path, ImageFormat::Raw)), content)
        }
        Below::Qcow2 => {
            // 4 KiB clusters: a granule size unlike the top's.
            let path = new_image(dir, "base.qcow2", size, 12, None);
            let img = Qcow2Image::open(&path, true).unwrap();
            for chunk in (0..size).step_by(16 << 10) {
                let len = (16 << 10).min(size - chunk) as usize;
                let part = &content[chunk as usize..chunk as usize + len];
                if part.iter().any(|&b| b != 0) {
                    write(&img, chunk, part);
                } else if rng.below(2) == 0 {
                    img.write_zeroes(chunk, len as u64, false).unwrap();
                }
            }
            img.flush().unwrap();
            (Some((path, ImageFormat::Qcow2)), content)
        }
    }
}

/// A top image in memory on `backing`, from our `create`.
pub fn top_in_memory(
    dir: &Path,
    size: u64,
    cluster_bits: u32,
    backing: &Option<(PathBuf, ImageFormat)>,
) -> Vec<u8> {
    let name = format!("top-{cluster_bits}.qcow2");
    let b = backing.as_ref().map(|(p, f)| (p.to_str().unwrap(), *f));
    let path = new_image(dir, &name, size, cluster_bits, b);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    bytes
}

fn run_case(cluster_bits: u32, below: Below, seed: u64, ops: usize) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = 1u64 << cluster_bits;
    // Not a multiple of the larger cluster sizes: the last cluster is partial.
    let size = (1 << 20) + 3 * 512;
    let (backing, mut model) = make_backing(dir.path(), below, size, seed);
    let layer = backing.as_ref().map(|(p, _)| Layer::open(p).unwrap());
    let mem = MemStorage::new(top_in_memory(dir.path(), size, cluster_bits, &backing));
    let mut img = open_mem(&mem, true, layer.clone()).unwrap();
    let mut rng = Rng::new(seed);
    for i in 0..ops {
        let op = random_op(&mut rng, size, cluster, true);
        if let Op::Reopen = op {
            if rng.below(2) == 0 {
                img.flush().unwrap();
            }
            // Dropping writes the metadata back: the next open sees it.
            drop(img);
            img = open_mem(&mem, true, layer.clone()).unwrap();
            continue;
        }
        let run = std::panic::AssertUnwindSafe(|| apply(&op, &img, &mut model));
        if let Err(e) = std::panic::catch_unwind(run) {
            eprintln!("case {cluster_bits} {below:?} seed {seed}: operation {i} {op:?}");
            std::panic::resume_unwind(e);
        }
    }
    assert_eq!(read(&img, 0, size as usize), model);
    img.flush().unwrap();
    drop(img);

    // QEMU's view of the same image.
    let path = dir.path().join("top.qcow2");
    std::fs::write(&path, &mem.0.lock().unwrap().data).unwrap();
    assert_clean(&path);
    assert_same_as(&path, &model);
}

#[test]
fn random_operations_match_the_model_512b_clusters() {
    run_case(9, Below::Nothing, 1, 1500);
    run_case(9, Below::Raw, 2, 1000);
    run_case(9, Below::Qcow2, 3, 1000);
}

#[test]
fn random_operations_match_the_model_4k_clusters() {
    run_case(12, Below::Nothing, 4, 1500);
    run_case(12, Below::Raw, 5, 1000);
    run_case(12, Below::Qcow2, 6, 1000);
}

#[test]
fn random_operations_match_the_model_64k_clusters() {
    run_case(16, Below::Nothing, 7, 1500);
    run_case(16, Below::Raw, 8, 1000);
    run_case(16, Below::Qcow2, 9, 1000);
}

/// The engine is shared by threads (`&self`): four of them on disjoint quarters of the
/// disk, each with its own model, on a raw backing file.
#[test]
fn concurrent_requests_on_disjoint_ranges_match_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let size = 1 << 20;
    let (backing, base) = make_backing(dir.path(), Below::Raw, size, 21);
    let layer = backing.as_ref().map(|(p, _)| Layer::open(p).unwrap());
    let mem = MemStorage::new(top_in_memory(dir.path(), size, 12, &backing));
    let img = open_mem(&mem, true, layer).unwrap();
    let quarter = size / 4;
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (img, base) = (&img, &base);
            s.spawn(move || {
                let start = t * quarter;
                // The whole disk, of which this thread owns one quarter.
                let mut model = base.clone();
                let mut rng = Rng::new(100 + t);
                for _ in 0..300 {
                    let op = match random_op(&mut rng, quarter, 4096, false) {
                        Op::Write { offset, len, seed } => Op::Write {
                            offset: offset + start,
                            len,
                            seed,
                        },
                        Op::Discard { offset, len } => Op::Discard {
                            offset: offset + start,
                            len,
                        },
                        Op::Zeroes { offset, len, unmap } => Op::Zeroes {
                            offset: offset + start,
                            len,
                            unmap,
                        },
                        other => other,
                    };
                    apply(&op, img, &mut model);
                }
                let mine = start as usize..(start + quarter) as usize;
                assert_eq!(read(img, start, quarter as usize), model[mine]);
            });
        }
    });
    img.flush().unwrap();
}
