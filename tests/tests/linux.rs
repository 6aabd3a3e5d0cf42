//! Tier 3: a real Linux guest (build/vmlinux + build/rootfs.ext4) booted to user space.
//! Runs where `vmm doctor` says Linux guests boot; elsewhere it is skipped with the
//! doctor's reason on one line.

use std::process::Command;
use std::time::Duration;

use vmm_tests::sandbox::{repo_file, skip_tier3};
use vmm_tests::Vmm;

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Commands typed into /bin/sh as PID 1 on the serial console. The kernel's own messages
/// are silenced first: one ("grep (59) used greatest stack depth") once landed inside
/// the MemTotal line.
const SCRIPT: &str = "\
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo 1 > /proc/sys/kernel/printk
echo NPROC=$(nproc)
grep MemTotal /proc/meminfo
truncate -s 64M /tmp/loop.img && mkfs.ext4 -q -F /tmp/loop.img && mkdir -p /mnt/loop && mount -o loop /tmp/loop.img /mnt/loop && echo LOOP=$(findmnt -n -o FSTYPE /mnt/loop)
echo tier3-synced-data > /synced.txt && sync && echo SYNCED-$((40+2))
";

#[test]
fn tier3_linux_boots_to_user_space_with_smp_memory_loop_mounts_and_durable_writes() {
    if skip_tier3("linux_boots_to_user_space") {
        return;
    }
    let (kernel, rootfs) = (repo_file("build/vmlinux"), repo_file("build/rootfs.ext4"));
    assert!(
        kernel.is_file() && rootfs.is_file(),
        "tier 3 needs build/vmlinux and build/rootfs.ext4: run `make kernel rootfs`"
    );
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("rootfs.ext4");
    let copied = Command::new("cp")
        .args([
            "--sparse=always".as_ref(),
            rootfs.as_os_str(),
            disk.as_os_str(),
        ])
        .status()
        .unwrap();
    assert!(copied.success());

    let mut vm = Vmm::raw(["run"])
        .flag("--kernel", &kernel)
        .flag("--rootfs", &disk)
        .flag("--cpus", "2")
        .flag("--memory-mib", "1024")
        .flag("--append", "init=/bin/sh")
        .timeout(BOOT_TIMEOUT)
        .spawn();
    // dash's root prompt at the start of a line: the shell is reading the console.
    vm.wait_for_stdout("\n# ", BOOT_TIMEOUT);
    vm.write_stdin(SCRIPT.as_bytes());
    // The tty echoes what we type; only the shell's own output reads "SYNCED-42".
    vm.wait_for_stdout("SYNCED-42", BOOT_TIMEOUT);
    let console = vm.stdout_text();
    // The data was synced: a SIGKILL of the VMM must not lose it.
    vm.signal(libc::SIGKILL);
    let _ = vm.wait_timeout(Duration::from_secs(10));

    assert!(console.contains("NPROC=2"), "{console}");
    let mem_kib: u64 = console
        .lines()
        // The shell's prompt may precede the line ("# MemTotal: ...").
        .find_map(|l| l.split_once("MemTotal:").map(|(_, v)| v))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in:\n{console}"));
    assert!(
        mem_kib > 900 * 1024 && mem_kib <= 1024 * 1024,
        "MemTotal {mem_kib} kB of 1024 MiB"
    );
    assert!(console.contains("LOOP=ext4"), "{console}");
    let cat = Command::new("debugfs")
        .args(["-R", "cat /synced.txt"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&cat.stdout).contains("tier3-synced-data"),
        "synced file missing from the disk after kill -9"
    );
}
