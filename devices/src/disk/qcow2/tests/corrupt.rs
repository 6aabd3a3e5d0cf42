//! Damaged and unsupported images: each is refused at open with one line that names the
//! file and says what is wrong; random damage never panics.

use super::*;
use crate::disk::{open_image, open_image_as, ImageFormat};

fn be64(b: &[u8], at: u64) -> u64 {
    u64::from_be_bytes(b[at as usize..at as usize + 8].try_into().unwrap())
}

fn put64(b: &mut [u8], at: u64, v: u64) {
    b[at as usize..at as usize + 8].copy_from_slice(&v.to_be_bytes());
}

fn put32(b: &mut [u8], at: u64, v: u32) {
    b[at as usize..at as usize + 4].copy_from_slice(&v.to_be_bytes());
}

/// A valid 8 MiB image, 4 KiB clusters, with data in three L2 tables.
fn good_image(dir: &Path) -> Vec<u8> {
    let path = new_image(dir, "good.qcow2", 8 << 20, 12, None);
    {
        let img = Qcow2Image::open(&path, true).unwrap();
        for off in [0, 3 << 20, 6 << 20] {
            write(&img, off, &pattern(off, off, 12288));
        }
        img.flush().unwrap();
    }
    std::fs::read(path).unwrap()
}

/// Where the tables of `good_image` are.
struct Facts {
    l1: u64,
    l2: u64,
    reftable: u64,
    data: u64,
}

fn facts(b: &[u8]) -> Facts {
    let l1 = be64(b, 40);
    let l2 = be64(b, l1) & 0x00ff_ffff_ffff_fe00;
    Facts {
        l1,
        l2,
        reftable: be64(b, 48),
        data: be64(b, l2) & 0x00ff_ffff_ffff_fe00,
    }
}

type Damage = fn(&mut Vec<u8>, &Facts);

/// (what, damage, a word the error must contain).
const DAMAGE: &[(&str, Damage, &str)] = &[
    ("empty file", |b, _| b.truncate(0), "truncated"),
    ("truncated header", |b, _| b.truncate(50), "truncated"),
    ("truncated v3 header", |b, _| b.truncate(90), "truncated"),
    ("bad magic", |b, _| b[3] = 0, "not a qcow2"),
    ("version 4", |b, _| put32(b, 4, 4), "version 4"),
    ("cluster_bits 8", |b, _| put32(b, 20, 8), "cluster_bits"),
    ("cluster_bits 40", |b, _| put32(b, 20, 40), "cluster_bits"),
    (
        "header length 100",
        |b, _| put32(b, 100, 100),
        "header length",
    ),
    (
        "header length past the cluster",
        |b, _| put32(b, 100, 8192),
        "header length",
    ),
    (
        "huge virtual size",
        |b, _| put64(b, 24, u64::MAX),
        "virtual size",
    ),
    (
        "L1 too small for the size",
        |b, _| put64(b, 24, 64 << 30),
        "L1 table has",
    ),
    ("huge L1", |b, _| put32(b, 36, 1 << 30), "L1 table"),
    (
        "L1 unaligned",
        |b, f| put64(b, 40, f.l1 + 8),
        "L1 table offset",
    ),
    (
        "L1 past the end",
        |b, _| put64(b, 40, 1 << 40),
        "L1 table offset",
    ),
    (
        "no refcount table",
        |b, _| put64(b, 48, 0),
        "refcount table offset",
    ),
    (
        "refcount table unaligned",
        |b, f| put64(b, 48, f.reftable + 16),
        "refcount table offset",
    ),
    (
        "refcount table of 0 clusters",
        |b, _| put32(b, 56, 0),
        "refcount table size",
    ),
    (
        "huge refcount table",
        |b, _| put32(b, 56, u32::MAX),
        "refcount table size",
    ),
    ("refcount_order 7", |b, _| put32(b, 96, 7), "refcount_order"),
    (
        "backing name outside the cluster",
        |b, _| {
            put64(b, 8, 4000);
            put32(b, 16, 200);
        },
        "backing file name",
    ),
    (
        "backing name too long",
        |b, _| {
            put64(b, 8, 200);
            put32(b, 16, 2000);
        },
        "backing file name",
    ),
    (
        "extension past the cluster",
        |b, _| {
            put32(b, 112, 0x1234);
            put32(b, 116, 8000);
        },
        "extensions",
    ),
    (
        "L1 entry past the end",
        |b, f| put64(b, f.l1, (1 << 40) | (1 << 63)),
        "past the end",
    ),
    (
        "L1 entry unaligned",
        |b, f| put64(b, f.l1, f.l2 + 512),
        "L1 entry 0",
    ),
    (
        "L1 entry with reserved bits",
        |b, f| put64(b, f.l1, f.l2 | 1),
        "L1 entry 0",
    ),
    (
        "L1 entry on the refcount table",
        |b, f| put64(b, f.l1, f.reftable | (1 << 63)),
        "overlap",
    ),
    (
        "two L1 entries on one table",
        |b, f| {
            let l2 = be64(b, f.l1);
            put64(b, f.l1 + 8, l2);
        },
        "overlap",
    ),
    (
        "L2 entry with reserved bits",
        |b, f| put64(b, f.l2, f.data | 2),
        "reserved",
    ),
    (
        "L2 entry unaligned",
        |b, f| put64(b, f.l2, f.data + 512),
        "unaligned",
    ),
    (
        "L2 entry past the end",
        |b, f| put64(b, f.l2, (1 << 40) | (1 << 63)),
        "past the end",
    ),
    (
        "L2 entry on the L1 table",
        |b, f| put64(b, f.l2, f.l1 | (1 << 63)),
        "overlaps",
    ),
    (
        "L2 entry compressed",
        |b, f| put64(b, f.l2, f.data | (1 << 62)),
        "compressed",
    ),
    (
        "refcount block unaligned",
        |b, f| {
            let e = be64(b, f.reftable);
            put64(b, f.reftable, e + 512);
        },
        "refcount block",
    ),
    (
        "refcount block past the end",
        |b, f| put64(b, f.reftable, 1 << 40),
        "refcount block",
    ),
    (
        "table cut off by the end",
        |b, f| b.truncate(f.l2 as usize + 100),
        "past the end",
    ),
    ("dirty", |b, _| b[79] |= 1, "qemu-img check -r all"),
    ("marked corrupt", |b, _| b[79] |= 2, "qemu-img check -r all"),
    ("unknown incompatible feature", |b, _| b[78] |= 2, "bit 9"),
    ("zstd without its bit", |b, _| b[104] = 1, "zstd"),
];

/// The error of every open of `path`, checked to be one line naming the file.
fn refusal(path: &Path, writable: bool) -> String {
    let err = match open_image_as(path, ImageFormat::Qcow2, writable) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(path.to_str().unwrap()), "{err}");
    assert!(!err.contains('\n'), "{err}");
    err
}

#[test]
fn damaged_headers_and_tables_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = good_image(dir.path());
    let f = facts(&good);
    let mut wrong = Vec::new();
    for (i, (what, damage, word)) in DAMAGE.iter().enumerate() {
        let mut bytes = good.clone();
        damage(&mut bytes, &f);
        let path = dir.path().join(format!("bad-{i}.qcow2"));
        std::fs::write(&path, &bytes).unwrap();
        for writable in [false, true] {
            let err = refusal(&path, writable);
            if !err.contains(word) {
                wrong.push(format!("{what}: {err}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn random_damage_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let good = good_image(dir.path());
    let f = facts(&good);
    let path = dir.path().join("fuzzed.qcow2");
    let mut rng = Rng::new(99);
    let hot = [0, f.l1, f.reftable, f.l2];
    for _ in 0..300 {
        let mut bytes = good.clone();
        for _ in 0..1 + rng.below(4) {
            let base = hot[rng.below(hot.len() as u64) as usize];
            let at = (base + rng.below(256)) as usize;
            bytes[at] ^= 1 << rng.below(8);
        }
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(img) = open_image_as(&path, ImageFormat::Qcow2, true) {
            let mut buf = vec![0u8; 1 << 20];
            for off in (0..img.size()).step_by(1 << 20) {
                let _ = img.read_at(&VolatileSlice::from(&mut buf[..]), off);
            }
            let _ = img.write_at(&VolatileSlice::from(&mut buf[..4096]), 1 << 20);
            let _ = img.write_zeroes(0, 8192, true);
            let _ = img.extent(0);
            let _ = img.flush();
        }
    }
}

#[test]
fn unsupported_features_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name);
    let (data, comp, luks) = (d("data.raw"), d("comp.qcow2"), d("luks.qcow2"));
    std::fs::write(&data, vec![7u8; 1 << 20]).unwrap();
    let ext = format!("data_file={}", d("ext.raw").display());
    qemu_create(&d("zstd.qcow2"), "compression_type=zstd", None, "1M");
    qemu_create(&d("ext.qcow2"), &ext, None, "1M");
    qemu_create(&d("l2.qcow2"), "extended_l2=on", None, "1M");
    let [data, comp, luks] = [&data, &comp, &luks].map(|p| p.to_str().unwrap());
    qemu_img_ok(&["convert", "-c", "-O", "qcow2", data, comp]);
    let secret = "secret,id=sec0,data=abc";
    let luks_opt = "encrypt.format=luks,encrypt.key-secret=sec0";
    let create = [
        "create", "-q", "--object", secret, "-f", "qcow2", "-o", luks_opt,
    ];
    qemu_img_ok(&[&create[..], &[luks, "1M"]].concat());
    for (name, word) in [
        ("zstd.qcow2", "zstd"),
        ("ext.qcow2", "external data file"),
        ("l2.qcow2", "extended L2"),
        ("comp.qcow2", "compressed clusters"),
        ("luks.qcow2", "encrypted"),
    ] {
        for writable in [false, true] {
            let err = refusal(&d(name), writable);
            assert!(err.contains(word), "{name}: {err}");
        }
    }
}

/// Version 2 and internal snapshots: read, but not written.
#[test]
fn v2_images_and_internal_snapshots_open_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let v2 = dir.path().join("v2.qcow2");
    let snap = dir.path().join("snap.qcow2");
    qemu_create(&v2, "compat=0.10", None, "1M");
    qemu_create(&snap, "", None, "1M");
    qemu_io(&snap, &["write -P 0x42 0 64k"]);
    qemu_img_ok(&["snapshot", "-c", "s1", snap.to_str().unwrap()]);
    qemu_io(&snap, &["write -P 0x43 0 4k"]);
    for (path, word) in [(&v2, "version 2"), (&snap, "internal snapshots")] {
        let err = refusal(path, true);
        assert!(err.contains(word), "{err}");
        let img = open_image(path, false).unwrap();
        read(&img, 0, 1 << 20);
    }
    let img = open_image(&snap, false).unwrap();
    assert_eq!(read(&img, 0, 8), [0x43; 8]);
    assert_eq!(read(&img, 4096, 8), [0x42; 8]);
}
