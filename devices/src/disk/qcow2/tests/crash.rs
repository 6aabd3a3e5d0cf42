//! Crash consistency. A workload runs on an image in memory that logs every write and
//! sync; the image as a crash after the Nth write left it (and, for half the points,
//! with any subset of the writes since the last sync lost, as a disk cache may lose
//! them) must pass `qemu-img check` (leaked clusters allowed), open here, and read back
//! every byte written before the last completed flush.

use std::collections::BTreeSet;

use super::model::{apply as apply_op, make_backing, random_op, top_in_memory, Below, Op};
use super::*;
use crate::disk::storage::mem::{apply, LogOp};

/// The model as of a completed flush.
struct Flushed {
    log_end: usize,
    next_op: usize,
    model: Vec<u8>,
}

struct Workload {
    dir: tempfile::TempDir,
    initial: Vec<u8>,
    backing: Option<Arc<Layer>>,
    base: Vec<u8>,
    ops: Vec<Op>,
}

fn log_len(mem: &MemStorage) -> usize {
    mem.0.lock().unwrap().log.len()
}

/// Runs the workload, then checks the image at up to `samples` crash points (every
/// sync, every write that moves the refcount table, and random others). Returns the
/// image as the workload left it.
fn crash_test(w: Workload, samples: usize, seed: u64) -> Vec<u8> {
    let mem = MemStorage::new(w.initial.clone());
    let img = open_mem(&mem, true, w.backing.clone()).unwrap();
    let mut model = w.base.clone();
    let mut flushed = vec![Flushed {
        log_end: 0,
        next_op: 0,
        model: model.clone(),
    }];
    let mut starts = Vec::new();
    for (i, op) in w.ops.iter().enumerate() {
        starts.push(log_len(&mem));
        apply_op(op, &img, &mut model);
        if let Op::Flush = op {
            flushed.push(Flushed {
                log_end: log_len(&mem),
                next_op: i + 1,
                model: model.clone(),
            });
        }
    }
    drop(img);
    let log = mem.0.lock().unwrap().log.clone();

    let mut rng = Rng::new(seed);
    let mut points = BTreeSet::new();
    // Right after a header write that moves the refcount table: also checked with only
    // that write surviving since the last sync.
    let mut moves = BTreeSet::new();
    for (i, op) in log.iter().enumerate() {
        match op {
            LogOp::Sync => {
                points.insert(i);
            }
            LogOp::Write(48, b) if b.len() == 12 => {
                moves.insert(i + 1);
            }
            LogOp::Write(..) => {}
        }
    }
    let mut points: Vec<usize> = points.into_iter().collect();
    if points.len() > samples / 2 {
        let step = points.len().div_ceil(samples / 2);
        points = points.into_iter().step_by(step).collect();
    }
    for _ in 0..samples / 2 {
        points.push(rng.below(log.len() as u64 + 1) as usize);
    }
    points.push(log.len());
    points.extend(&moves);
    points.sort_unstable();
    points.dedup();

    let path = w.dir.path().join("crashed.qcow2");
    let mut image = w.initial.clone();
    let mut synced = w.initial.clone();
    let mut last_sync = 0;
    let mut applied = 0;
    for &n in &points {
        while applied < n {
            apply(&mut image, &log[applied]);
            if let LogOp::Sync = log[applied] {
                for op in &log[last_sync..applied] {
                    apply(&mut synced, op);
                }
                last_sync = applied + 1;
            }
            applied += 1;
        }
        let check = |bytes: &[u8], what: &str| {
            std::fs::write(&path, bytes).unwrap();
            let run = std::panic::AssertUnwindSafe(|| {
                assert_consistent(&path);
                verify(bytes, &w, &flushed, &starts, n);
            });
            if let Err(e) = std::panic::catch_unwind(run) {
                eprintln!("crash after write {n} of {} ({what})", log.len());
                std::panic::resume_unwind(e);
            }
        };
        check(&image, "in order");
        if rng.below(2) == 0 && last_sync < n {
            let mut lossy = synced.clone();
            for op in &log[last_sync..n] {
                if rng.below(2) == 0 {
                    apply(&mut lossy, op);
                }
            }
            check(&lossy, "writes since the last sync partly lost");
        }
        if moves.contains(&n) && last_sync < n - 1 {
            let mut lossy = synced.clone();
            apply(&mut lossy, &log[n - 1]);
            check(&lossy, "only the header write since the last sync kept");
        }
    }
    image
}

/// The crashed image opens and holds the last flushed model, except where operations
/// that had started by the crash wrote.
fn verify(bytes: &[u8], w: &Workload, flushed: &[Flushed], starts: &[usize], n: usize) {
    let f = flushed.iter().rev().find(|f| f.log_end <= n).unwrap();
    let mut skip: Vec<(u64, u64)> = w.ops[f.next_op..]
        .iter()
        .zip(&starts[f.next_op..])
        .filter(|(_, &start)| start < n)
        .filter_map(|(op, _)| op.range())
        .collect();
    skip.sort_unstable();
    let img = open_mem(&MemStorage::new(bytes.to_vec()), false, w.backing.clone())
        .unwrap_or_else(|e| panic!("the crashed image does not open: {e}"));
    let got = read(&img, 0, f.model.len());
    let mut at = 0u64;
    for (offset, len) in skip.into_iter().chain([(f.model.len() as u64, 0)]) {
        if offset > at {
            let (a, b) = (at as usize, offset as usize);
            if got[a..b] != f.model[a..b] {
                let i = a + got[a..b]
                    .iter()
                    .zip(&f.model[a..b])
                    .position(|(x, y)| x != y)
                    .unwrap();
                panic!(
                    "flushed byte {i:#x} reads {:#x}, not {:#x}",
                    got[i], f.model[i]
                );
            }
        }
        at = at.max(offset + len);
    }
}

fn random_workload(cluster_bits: u32, below: Below, seed: u64, ops: usize) -> Workload {
    let dir = tempfile::tempdir().unwrap();
    let size = 1 << 20;
    let (backing, base) = make_backing(dir.path(), below, size, seed);
    let initial = top_in_memory(dir.path(), size, cluster_bits, &backing);
    let mut rng = Rng::new(seed);
    let ops = (0..ops)
        .map(|_| random_op(&mut rng, size, 1 << cluster_bits, false))
        .collect();
    Workload {
        backing: backing.map(|(p, _)| Layer::open(&p).unwrap()),
        dir,
        initial,
        base,
        ops,
    }
}

#[test]
fn a_crash_after_any_write_leaves_a_consistent_image_512b_clusters() {
    crash_test(random_workload(9, Below::Nothing, 11, 200), 120, 11);
}

#[test]
fn a_crash_after_any_write_leaves_a_consistent_image_64k_clusters_on_qcow2() {
    crash_test(random_workload(16, Below::Qcow2, 12, 200), 120, 12);
}

#[test]
fn a_crash_after_any_write_leaves_a_consistent_image_4k_clusters_on_raw() {
    crash_test(random_workload(12, Below::Raw, 14, 200), 80, 14);
}

/// 512-byte clusters with 64-bit refcounts: the refcount table's first cluster covers
/// 2 MiB of file, so 3 MiB of writes move it (twice), crashes included.
#[test]
fn a_crash_while_the_refcount_table_grows_leaves_a_consistent_image() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.qcow2");
    qemu_create(&path, "cluster_size=512,refcount_bits=64", None, "4M");
    let initial = std::fs::read(&path).unwrap();
    let mut ops = Vec::new();
    for i in 0..48u64 {
        ops.push(Op::Write {
            offset: i * 65536,
            len: 65536,
            seed: i,
        });
        if i % 12 == 11 {
            ops.push(Op::Discard {
                offset: i * 65536 - 8192,
                len: 4096,
            });
            ops.push(Op::Flush);
        }
    }
    let w = Workload {
        dir,
        initial,
        backing: None,
        base: vec![0; 4 << 20],
        ops,
    };
    let image = crash_test(w, 120, 13);
    let clusters = u32::from_be_bytes(image[56..60].try_into().unwrap());
    assert!(clusters > 1, "the refcount table did not grow");
}
