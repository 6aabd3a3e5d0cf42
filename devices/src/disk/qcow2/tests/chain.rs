//! Backing chains: depth limit, cycles, sizes, missing files, relative names, locks,
//! lower layers left untouched, and the snapshot sequence (seal, overlay on the open
//! chain).

use super::model::check_extents;
use super::*;
use crate::disk::{image_info, open_image, ImageError, MAX_LAYERS};

const SIZE: u64 = 1 << 20;

/// A raw base and `n` qcow2 layers over it, each writing its own stretch; returns the
/// top's path and the disk as the top shows it.
fn chain(dir: &Path, n: usize) -> (PathBuf, Vec<u8>) {
    let mut model = pattern(0, 0, SIZE as usize);
    std::fs::write(dir.join("l0.raw"), &model).unwrap();
    let mut below = ("l0.raw".to_string(), ImageFormat::Raw);
    let mut top = dir.join("l0.raw");
    for i in 1..=n {
        let name = format!("l{i}.qcow2");
        let bits = [9, 12, 16][i % 3];
        top = new_image(dir, &name, SIZE, bits, Some((&below.0, below.1)));
        let img = Qcow2Image::open(&top, true).unwrap();
        let offset = (i as u64 * 20_000) % (SIZE - 70_000);
        let data = pattern(i as u64, offset, 40_000 + i);
        write(&img, offset, &data);
        model[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
        img.write_zeroes(offset + 50_000, 4096 * (i as u64 % 3), true)
            .unwrap();
        let end = offset as usize + 50_000;
        model[end..end + 4096 * (i % 3)].fill(0);
        img.flush().unwrap();
        below = (name, ImageFormat::Qcow2);
    }
    (top, model)
}

fn error(r: Result<crate::disk::DiskImage, ImageError>) -> String {
    match r {
        Ok(_) => panic!("opened"),
        Err(e) => {
            let s = e.to_string();
            assert!(!s.contains('\n'), "{s}");
            s
        }
    }
}

#[test]
fn chains_up_to_the_limit_open_and_read_through_every_layer() {
    let dir = tempfile::tempdir().unwrap();
    let (top, model) = chain(dir.path(), MAX_LAYERS - 1);
    let img = open_image(&top, true).unwrap();
    assert_eq!(read(&img, 0, SIZE as usize), model);
    // Again: now every granule's layer is cached.
    assert_eq!(read(&img, 0, SIZE as usize), model);
    check_extents(&img, &model);
    assert_eq!(image_info(&top).unwrap().len(), MAX_LAYERS);

    let deeper = new_image(
        dir.path(),
        "deeper.qcow2",
        SIZE,
        16,
        Some((
            top.file_name().unwrap().to_str().unwrap(),
            ImageFormat::Qcow2,
        )),
    );
    drop(img);
    let err = error(open_image(&deeper, false));
    assert!(
        err.contains("vmm image flatten") && err.contains("deeper.qcow2"),
        "{err}"
    );
}

/// L2 lookups made so far in every qcow2 layer below the top.
fn lower_lookups(img: &Qcow2Image) -> u64 {
    let mut layer = img.backing().cloned();
    let mut n = 0;
    while let Some(l) = layer {
        if let crate::disk::layer::LayerKind::Qcow2(q) = l.kind() {
            n += q.meta().unwrap().lookups;
        }
        layer = l.backing().cloned();
    }
    n
}

/// Once the chain's owners are cached, a read costs a lookup in the top and one in the
/// layer that holds the data, however deep the chain.
#[test]
fn reads_through_a_deep_chain_cost_two_lookups() {
    let dir = tempfile::tempdir().unwrap();
    let (top, model) = chain(dir.path(), MAX_LAYERS - 1);
    let img = Qcow2Image::open(&top, false).unwrap();
    assert_eq!(read(&img, 0, SIZE as usize), model);
    let before = lower_lookups(&img);
    let reads = SIZE / 4096;
    for i in 0..reads {
        assert_eq!(
            read(&img, i * 4096, 4096),
            model[i as usize * 4096..][..4096]
        );
    }
    let lower = lower_lookups(&img) - before;
    assert!(
        lower <= reads,
        "{lower} lookups below the top for {reads} reads"
    );
}

#[test]
fn lower_layers_are_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let (top, _) = chain(dir.path(), 3);
    let before: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            std::fs::read(dir.path().join(if i == 0 {
                "l0.raw".into()
            } else {
                format!("l{i}.qcow2")
            }))
            .unwrap()
        })
        .collect();
    let img = open_image(&top, true).unwrap();
    let mut rng = Rng::new(5);
    for _ in 0..200 {
        let off = rng.below(SIZE - 70_000);
        write(
            &img,
            off,
            &pattern(off, off, 1 + rng.below(70_000) as usize),
        );
        img.discard(rng.below(SIZE / 2), rng.below(SIZE / 2))
            .unwrap();
    }
    img.flush().unwrap();
    drop(img);
    assert_clean(&top);
    for (i, bytes) in before.iter().enumerate() {
        let name = if i == 0 {
            "l0.raw".into()
        } else {
            format!("l{i}.qcow2")
        };
        assert_eq!(
            &std::fs::read(dir.path().join(name)).unwrap(),
            bytes,
            "layer {i}"
        );
    }
    assert_consistent(&top);
}

#[test]
fn cycles_sizes_and_missing_files_are_refused_naming_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // a -> b -> a, and a self loop.
    new_image(
        d,
        "a.qcow2",
        SIZE,
        16,
        Some(("b.qcow2", ImageFormat::Qcow2)),
    );
    new_image(
        d,
        "b.qcow2",
        SIZE,
        16,
        Some(("a.qcow2", ImageFormat::Qcow2)),
    );
    new_image(
        d,
        "self.qcow2",
        SIZE,
        16,
        Some(("./self.qcow2", ImageFormat::Qcow2)),
    );
    for name in ["a.qcow2", "self.qcow2"] {
        let err = error(open_image(&d.join(name), false));
        assert!(err.contains("loops") && err.contains(name), "{err}");
    }
    std::fs::write(d.join("small.raw"), vec![0u8; 4096]).unwrap();
    new_image(
        d,
        "big.qcow2",
        SIZE,
        16,
        Some(("small.raw", ImageFormat::Raw)),
    );
    let err = error(open_image(&d.join("big.qcow2"), true));
    assert!(
        err.contains("big.qcow2") && err.contains("small.raw") && err.contains("4096"),
        "{err}"
    );
    new_image(
        d,
        "orphan.qcow2",
        SIZE,
        16,
        Some(("gone.raw", ImageFormat::Raw)),
    );
    let err = error(open_image(&d.join("orphan.qcow2"), true));
    assert!(
        err.contains("orphan.qcow2") && err.contains("gone.raw"),
        "{err}"
    );
    new_image(
        d,
        "nbd.qcow2",
        SIZE,
        16,
        Some(("nbd:localhost:10809", ImageFormat::Raw)),
    );
    let err = error(open_image(&d.join("nbd.qcow2"), true));
    assert!(err.contains("not a local file"), "{err}");
}

#[test]
fn relative_backing_names_resolve_against_the_naming_images_folder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("a")).unwrap();
    std::fs::create_dir_all(d.join("b")).unwrap();
    std::fs::write(d.join("b/base.raw"), pattern(4, 0, SIZE as usize)).unwrap();
    new_image(
        &d.join("b"),
        "mid.qcow2",
        SIZE,
        12,
        Some(("base.raw", ImageFormat::Raw)),
    );
    let top = new_image(
        &d.join("a"),
        "top.qcow2",
        SIZE,
        16,
        Some(("../b/mid.qcow2", ImageFormat::Qcow2)),
    );
    let img = open_image(&top, false).unwrap();
    assert_eq!(read(&img, 0, SIZE as usize), pattern(4, 0, SIZE as usize));
    let info = image_info(&top).unwrap();
    assert_eq!(info[1].path, d.join("a/../b/mid.qcow2"));
    assert_eq!(info[2].path, d.join("a/../b/base.raw"));
    assert_eq!(info[1].backing.as_deref(), Some("base.raw"));
}

#[test]
fn locks_keep_a_second_writer_out() {
    let dir = tempfile::tempdir().unwrap();
    let (top, _) = chain(dir.path(), 2);
    let img = open_image(&top, true).unwrap();
    let err = error(open_image(&top, true));
    assert!(err.contains("in use by another drive or VM"), "{err}");
    error(open_image(&top, false));
    // The layers below are shared: readers welcome, writers not.
    open_image(&dir.path().join("l1.qcow2"), false).unwrap();
    let err = error(open_image(&dir.path().join("l0.raw"), true));
    assert!(err.contains("l0.raw") && err.contains("in use"), "{err}");
    // Inspection takes no lock.
    assert_eq!(image_info(&top).unwrap().len(), 3);
    drop(img);
    open_image(&top, true).unwrap();
}

/// The live snapshot: seal the open top, continue on a new overlay over the open chain.
#[test]
fn sealing_the_top_and_continuing_on_a_new_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let (top, mut model) = chain(dir.path(), 2);
    let img = Qcow2Image::open(&top, true).unwrap();
    write(&img, 1000, &[0xa1; 70_000]);
    model[1000..71_000].fill(0xa1);

    let sealed = img.seal().unwrap();
    assert!(!img.is_writable());
    let mut buf = [0u8; 512];
    let err = img
        .write_at(&VolatileSlice::from(&mut buf[..]), 0)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert!(matches!(img.seal(), Err(ImageError::ReadOnly { .. })));
    // Shared now: readers may open the sealed file, writers may not.
    open_image(&top, false).unwrap();
    error(open_image(&top, true));

    let overlay = new_image(
        dir.path(),
        "snap1.qcow2",
        SIZE,
        16,
        Some(("l2.qcow2", ImageFormat::Qcow2)),
    );
    let next = Qcow2Image::open_on(&overlay, sealed.clone()).unwrap();
    write(&next, 500_000, &[0xb2; 5000]);
    model[500_000..505_000].fill(0xb2);
    assert_eq!(read(&next, 0, SIZE as usize), model);
    assert_eq!(read(&*sealed, 1000, 4), [0xa1; 4]);
    next.flush().unwrap();

    // An overlay that names another file, or a chain too deep, is refused.
    let stranger = new_image(
        dir.path(),
        "stranger.qcow2",
        SIZE,
        16,
        Some(("l1.qcow2", ImageFormat::Qcow2)),
    );
    let err = Qcow2Image::open_on(&stranger, sealed.clone())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("stranger.qcow2") && err.contains("l2.qcow2"),
        "{err}"
    );

    drop((img, next));
    assert_clean(&top);
    assert_clean(&overlay);
    let info = image_info(&overlay).unwrap();
    assert_eq!(info.len(), 4);
    assert_same_as(&overlay, &model);
}

#[test]
fn sealed_chains_stop_at_the_depth_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (top, _) = chain(dir.path(), MAX_LAYERS - 2);
    let img = Qcow2Image::open(&top, true).unwrap();
    let name = top.file_name().unwrap().to_str().unwrap().to_string();
    let sealed = img.seal().unwrap();
    let last = new_image(
        dir.path(),
        "last.qcow2",
        SIZE,
        16,
        Some((&name, ImageFormat::Qcow2)),
    );
    let last = Qcow2Image::open_on(&last, sealed).unwrap();
    let sealed = last.seal().unwrap();
    assert_eq!(sealed.depth(), MAX_LAYERS);
    let over = new_image(
        dir.path(),
        "over.qcow2",
        SIZE,
        16,
        Some(("last.qcow2", ImageFormat::Qcow2)),
    );
    let err = Qcow2Image::open_on(&over, sealed)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("vmm image flatten"), "{err}");
}
