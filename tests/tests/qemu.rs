//! Cross-checks of the guests themselves on QEMU's microvm machine (a reference
//! PVH loader and virtio-mmio implementation), so a failing VMM test can be told
//! apart from a guest bug.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vmm_tests::disk::{self, fnv1a, pattern, pattern_disk, SECTOR};
use vmm_tests::{GuestOutput, Vmm, TINY_PVH64_ELF, TINY_PVH_ELF};

/// QEMU is a test dependency (`make deps` installs qemu-system-x86), not optional.
fn qemu() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("qemu-system-x86_64"))
                .find(|p| p.is_file())
        })
        .expect("qemu-system-x86_64 not found: run `make deps` (apt-get install qemu-system-x86)")
}

fn microvm(qemu: &Path, kernel: &str, extra: &[&str]) -> Vmm {
    let mut args = vmm_tests::qemu_microvm_args(kernel);
    args.extend_from_slice(extra);
    Vmm::program(qemu, args).timeout(Duration::from_secs(30))
}

#[test]
fn pvh_guest_boots_with_a_command_line() {
    let q = qemu();
    let out = microvm(&q, TINY_PVH_ELF, &["-append", "test=pvh hello"]).run();
    let g = out.assert_passed();
    assert!(g.has_ok("pvh"), "{out}");
    assert_eq!(g.info("cmdline"), Some("test=pvh hello"));
}

#[test]
fn pvh_guest_boots_without_a_command_line() {
    let q = qemu();
    let out = microvm(&q, TINY_PVH_ELF, &[]).run();
    assert!(out.assert_passed().has_ok("pvh"), "{out}");
}

#[test]
fn guest_64_bit_code_runs_in_long_mode() {
    let q = qemu();
    let out = microvm(&q, TINY_PVH64_ELF, &["-append", "test=boot"]).run();
    let g = out.assert_passed();
    assert_eq!(g.info_num("efer") & 0x500, 0x500, "{out}");
    assert_eq!(g.info("cmdline"), Some("test=boot"));
}

#[test]
fn blk_driver_against_qemu_virtio_blk() {
    let q = qemu();
    let dir = tempfile::tempdir().unwrap();
    let rw = pattern_disk(dir.path(), "rw.img", 64);
    let drive = format!("id=d0,file={},format=raw,if=none", rw.display());
    // QEMU's device never completes a chain with a short header (it marks itself
    // broken), so the guest reports a timeout there: only check what precedes it.
    let out = microvm(
        &q,
        TINY_PVH64_ELF,
        &[
            "-append",
            "test=blk",
            "-drive",
            &drive,
            "-device",
            "virtio-blk-device,drive=d0,serial=qemu-disk",
        ],
    )
    .run();
    out.assert_code(0);
    let g: &GuestOutput = &out.guest;
    let v = |k: &str| {
        g.info_all("blk0")
            .into_iter()
            .find_map(|l| l.strip_prefix(&format!("{k} ")).map(str::to_owned))
            .unwrap_or_else(|| panic!("no `info blk0 {k}`\n{out}"))
    };
    assert_eq!(v("id"), "qemu-disk");
    assert_eq!(v("capacity"), "64");
    assert_eq!(v("read_status"), "0");
    assert_eq!(v("read_fnv"), format!("0x{:x}", fnv1a(&pattern(0, 1024))));
    assert_eq!(v("write_status"), "0");
    assert_eq!(v("unsupported_status"), "2");
    assert_eq!(v("requests"), v("irqs"));
    let data = std::fs::read(&rw).unwrap();
    assert!(data[2 * SECTOR as usize..3 * SECTOR as usize] == disk::write_pattern()[..]);
}
