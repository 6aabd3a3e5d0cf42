//! QEMU both ways: images that qemu-img and qemu-io made and wrote read here as
//! `qemu-img convert` flattens them; chains agree with `qemu-img info --backing-chain`.
//! (Images we write pass `qemu-img check` and `compare` in `model` and `crash`.)

use super::model::check_extents;
use super::*;
use crate::disk::{image_info, open_image, DiskImage};

/// What qemu-img itself reads from an image: the flattened raw bytes.
fn flatten_with_qemu(path: &Path) -> Vec<u8> {
    let out = path.with_extension("flat");
    qemu_img_ok(&[
        "convert",
        "-O",
        "raw",
        path.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(out).unwrap();
    bytes
}

/// Writes of every kind through qemu-io: data, partial clusters, zero clusters with and
/// without their storage, discards.
const QEMU_WRITES: &[&str] = &[
    "write -P 0x11 0 64k",
    "write -P 0x22 1M 4k",
    "write -P 0x33 1000448 512",
    "write -P 0x44 2M 256k",
    "write -z 2M 128k",
    "write -z -u 2304k 64k",
    "write -P 0x55 3M 128k",
    "discard 3M 64k",
    "write -P 0x66 4193792 512",
];

fn assert_reads_like_qemu(path: &Path) {
    let want = flatten_with_qemu(path);
    let img = match open_image(path, false).unwrap() {
        DiskImage::Qcow2(q) => q,
        DiskImage::Raw(_) => panic!("{} detected as raw", path.display()),
    };
    assert_eq!(img.size(), want.len() as u64);
    let got = read(&img, 0, want.len());
    if got != want {
        let i = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
        panic!(
            "{}: byte {i:#x} reads {:#x}, qemu reads {:#x}",
            path.display(),
            got[i],
            want[i]
        );
    }
    check_extents(&img, &want);
}

#[test]
fn images_qemu_wrote_read_the_same_for_every_cluster_size() {
    let dir = tempfile::tempdir().unwrap();
    for cluster in ["512", "4096", "65536", "2M"] {
        let path = dir.path().join(format!("q{cluster}.qcow2"));
        qemu_create(&path, &format!("cluster_size={cluster}"), None, "4M");
        qemu_io(&path, QEMU_WRITES);
        assert_reads_like_qemu(&path);
    }
}

#[test]
fn version_2_images_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.qcow2");
    qemu_create(&path, "compat=0.10,cluster_size=4096", None, "4M");
    qemu_io(
        &path,
        &[
            "write -P 0x11 0 64k",
            "write -P 0x22 1M 4k",
            "write -P 0x33 3M 1k",
        ],
    );
    assert_reads_like_qemu(&path);
}

/// Turns the backing format extension into an unknown one: the extension is ignored
/// and the backing format detected by magic.
fn forget_backing_format(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes
        .windows(4)
        .position(|w| w == [0xe2, 0x79, 0x2a, 0xca])
        .expect("a backing format extension");
    bytes[at..at + 4].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn qemu_overlays_on_raw_and_qcow2_bases_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name);
    std::fs::write(d("base.raw"), pattern(1, 0, 4 << 20)).unwrap();
    let base_q = d("base.qcow2");
    qemu_create(&base_q, "cluster_size=4096", None, "4M");
    qemu_io(&base_q, &["write -P 0x77 0 3M", "write -z 1M 64k"]);
    for (base, format, cluster, detect) in [
        ("base.raw", "raw", "65536", false),
        ("base.qcow2", "qcow2", "512", false),
        ("base.raw", "raw", "4096", true),
        ("base.qcow2", "qcow2", "65536", true),
    ] {
        let top = d(&format!("top-{format}-{cluster}-{detect}.qcow2"));
        let opt = format!("cluster_size={cluster}");
        qemu_create(&top, &opt, Some((base, format)), "");
        // Partial-cluster writes: QEMU copies the rest from the base.
        qemu_io(&top, QEMU_WRITES);
        if detect {
            forget_backing_format(&top);
        }
        assert_reads_like_qemu(&top);
    }
}

/// A three-layer chain: raw base, a qcow2 QEMU made, our overlay (relative names).
#[test]
fn image_info_agrees_with_qemu_img_info_backing_chain() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let base = dir.path().join("base.raw");
    std::fs::write(&base, pattern(3, 0, 2 << 20)).unwrap();
    let mid = dir.path().join("sub/mid.qcow2");
    qemu_create(&mid, "cluster_size=4096", Some(("../base.raw", "raw")), "");
    qemu_io(&mid, &["write -P 0x12 0 40k", "write -z 64k 64k"]);
    let top = new_image(
        dir.path(),
        "top.qcow2",
        2 << 20,
        16,
        Some(("sub/mid.qcow2", ImageFormat::Qcow2)),
    );
    {
        let img = Qcow2Image::open(&top, true).unwrap();
        write(&img, 65536 * 3, &[9u8; 65536 * 2]);
        img.flush().unwrap();
    }
    let ours = image_info(&top).unwrap();
    let json = qemu_img_ok(&[
        "info",
        "--backing-chain",
        "--output=json",
        top.to_str().unwrap(),
    ]);
    let theirs: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(ours.len(), 3);
    assert_eq!(theirs.len(), 3);
    for (o, t) in ours.iter().zip(&theirs) {
        assert_eq!(o.path.to_str().unwrap(), t["filename"].as_str().unwrap());
        assert_eq!(o.format.name(), t["format"].as_str().unwrap());
        assert_eq!(o.virtual_size, t["virtual-size"].as_u64().unwrap());
        assert_eq!(o.cluster_size, t["cluster-size"].as_u64());
        assert_eq!(o.backing.as_deref(), t["backing-filename"].as_str());
    }
    // Data clusters: what `qemu-img check` counts as allocated.
    for o in ours.iter().filter(|o| o.format == ImageFormat::Qcow2) {
        let p = o.path.to_str().unwrap();
        let check = qemu_img_ok(&["check", "--output=json", p]);
        let check: serde_json::Value = serde_json::from_str(&check).unwrap();
        let clusters = check["allocated-clusters"].as_u64().unwrap();
        assert_eq!(o.allocated_bytes, clusters * o.cluster_size.unwrap(), "{p}");
    }
    assert_eq!(
        ours[2].allocated_bytes,
        std::fs::metadata(&base)
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.blocks() * 512
            })
            .unwrap()
    );
}
