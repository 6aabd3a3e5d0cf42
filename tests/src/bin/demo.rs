//! `make demo`: where this host can boot Linux, boot build/vmlinux + build/rootfs.ext4
//! with 2 vCPUs and 4096 MiB and print, from inside, the kernel version, nproc, MemTotal
//! and the mounts. Elsewhere, print `vmm doctor`'s verdict and run the tiny-guest
//! self-check through the same vmm binary, saying plainly which of the two it did.

use std::path::Path;
use std::process::{Command, ExitCode};

use vmm_tests::disk::pattern_disk;
use vmm_tests::{vmm_bin, Vmm, TINY_ELF};

/// Runs inside the Linux guest as init, then resets the VM through sysrq (reboot=k).
const GUEST_SCRIPT: &str = "mount -t proc proc /proc; mount -t sysfs sys /sys; \
echo; echo kernel: $(uname -r); echo nproc: $(nproc); grep MemTotal /proc/meminfo; \
echo mounts:; cat /proc/mounts; echo b > /proc/sysrq-trigger";

fn doctor(json: bool) -> String {
    let mut cmd = Command::new(vmm_bin());
    cmd.arg("doctor");
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("vmm doctor runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn linux_demo(root: &Path) -> bool {
    let (kernel, rootfs) = (root.join("build/vmlinux"), root.join("build/rootfs.ext4"));
    if !kernel.is_file() || !rootfs.is_file() {
        eprintln!("demo: build/vmlinux or build/rootfs.ext4 missing: run `make kernel rootfs`");
        return false;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let disk = dir.path().join("rootfs.ext4");
    let copied = Command::new("cp")
        .arg("--sparse=always")
        .args([&rootfs, &disk])
        .status();
    if !matches!(copied, Ok(s) if s.success()) {
        eprintln!("demo: cannot copy the rootfs");
        return false;
    }
    println!("== Linux guest: build/vmlinux + a copy of build/rootfs.ext4, 2 vCPUs, 4096 MiB ==");
    let status = Command::new(vmm_bin())
        .arg("run")
        .arg("--kernel")
        .arg(&kernel)
        .arg("--rootfs")
        .arg(&disk)
        .args(["--cpus", "2", "--memory-mib", "4096", "--append"])
        .arg(format!("quiet init=/bin/sh -- -c \"{GUEST_SCRIPT}\""))
        .status();
    matches!(status, Ok(s) if s.success())
}

fn tiny_guest_demo() -> bool {
    println!("== Tiny-guest self-check (tier 1): our test guest booted by the real vmm, 2 vCPUs, 4096 MiB ==");
    let boot = Vmm::guest(TINY_ELF, "boot")
        .memory_mib(4096)
        .flag("--cpus", "2")
        .run();
    let g = boot.assert_passed();
    for key in ["cr0", "efer", "cmdline", "cpus"] {
        if let Some(v) = g.info(key) {
            println!("  {key:<8} {v}");
        }
    }
    for line in g.info_all("e820") {
        println!("  e820     {line}");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let disk = pattern_disk(dir.path(), "disk.img", 2048);
    let blk = Vmm::guest(TINY_ELF, "blk").flag("--rootfs", &disk).run();
    let g = blk.assert_passed();
    let shown = [
        "id ",
        "capacity ",
        "read_status ",
        "write_status ",
        "flush_status ",
    ];
    for line in g.info_all("blk0") {
        if shown.iter().any(|k| line.starts_with(k)) {
            println!("  virtio-blk {line}");
        }
    }
    println!("self-check passed: long mode, e820 with the MMIO hole, MP table, virtio-blk I/O");
    true
}

fn main() -> ExitCode {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let report = doctor(true);
    let ok = if report.contains("\"linux_guests_boot\":true") {
        linux_demo(&root)
    } else {
        println!("== This host cannot boot Linux guests; `vmm doctor` says: ==");
        for line in doctor(false).lines() {
            println!("  {line}");
        }
        println!();
        tiny_guest_demo()
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
