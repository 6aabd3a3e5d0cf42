//! Bad configurations fail before any VM runs: exit 1 and one line on stderr that
//! names the file or key at fault.

use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::time::Duration;

use vmm_tests::{Outcome, Vmm, TINY_ELF};

fn vmm(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Outcome {
    Vmm::raw(args.iter().map(|a| OsString::from(a.as_ref())))
        .timeout(Duration::from_secs(10))
        .run()
}

fn assert_config_error(out: &Outcome, needle: &str) {
    out.assert_code(1).assert_stderr_mentions(needle);
    assert_eq!(
        out.stderr.trim().lines().count(),
        1,
        "want one line on stderr\n{out}"
    );
    assert!(out.stdout.is_empty(), "no guest should have run\n{out}");
}

#[test]
fn missing_kernel_file() {
    let out = vmm(&[&"run", &"--kernel", &"/nonexistent/vmlinux-missing"]);
    assert_config_error(&out, "/nonexistent/vmlinux-missing");
}

#[test]
fn no_kernel_given() {
    let out = vmm(&[&"run", &"--memory-mib", &"128"]);
    assert_config_error(&out, "kernel");
}

#[test]
fn garbage_kernel_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage-kernel");
    let junk: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(&path, junk).unwrap();
    let out = vmm(&[&"run", &"--kernel", &path, &"--memory-mib", &"128"]);
    assert_config_error(&out, &path.display().to_string());
}

#[test]
fn missing_rootfs() {
    let out = vmm(&[
        &"run",
        &"--kernel",
        &TINY_ELF,
        &"--rootfs",
        &"/nonexistent/root.ext4",
    ]);
    assert_config_error(&out, "/nonexistent/root.ext4");
}

#[test]
fn missing_drive() {
    let out = vmm(&[
        &"run",
        &"--kernel",
        &TINY_ELF,
        &"--drive",
        &"/nonexistent/data.img",
    ]);
    assert_config_error(&out, "/nonexistent/data.img");
}

#[test]
fn zero_memory() {
    let out = vmm(&[&"run", &"--kernel", &TINY_ELF, &"--memory-mib", &"0"]);
    assert_config_error(&out, "memory");
}

#[test]
fn zero_cpus() {
    let out = vmm(&[&"run", &"--kernel", &TINY_ELF, &"--cpus", &"0"]);
    assert_config_error(&out, "cpus");
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("vm.toml");
    fs::write(&path, text).unwrap();
    path
}

#[test]
fn unknown_key_in_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!("kernel = {TINY_ELF:?}\nbogus_knob = 1\n"),
    );
    let out = vmm(&[&"run", &"--config", &cfg]);
    assert_config_error(&out, "bogus_knob");
}

#[test]
fn nonexistent_config_file() {
    let out = vmm(&[&"run", &"--config", &"/nonexistent/vm.toml"]);
    assert_config_error(&out, "/nonexistent/vm.toml");
}

#[test]
fn config_file_boots_a_guest() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("kernel = {TINY_ELF:?}\nmemory_mib = 128\nappend = \"test=boot\"\n");
    let cfg = write_config(dir.path(), &text);
    let out = Vmm::raw([OsString::from("run"), "--config".into(), cfg.into()]).run();
    let g = out.assert_passed();
    assert!(g.expect_info("cmdline").ends_with(" test=boot"), "{out}");
    assert_eq!(g.info_num("e820_entries"), 3);
}

/// A wrong command line exits 64 (EX_USAGE) whatever the subcommand: 1 and 2 mean setup
/// error and guest crash, and a client command's own codes are the process's.
#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    for args in [
        &["run", "--no-such-flag"][..],
        &["run", "--cpus", "many"],
        &["exec", "--api-sock"],
        &["status"],
        &["no-such-command"],
        &[],
    ] {
        let out = Vmm::raw(args).timeout(Duration::from_secs(10)).run();
        out.assert_code(64);
        assert!(!out.stderr.is_empty(), "{args:?}: clap explains\n{out}");
    }
    for args in [&["--help"][..], &["--version"], &["run", "--help"]] {
        let out = Vmm::raw(args).timeout(Duration::from_secs(10)).run();
        out.assert_code(0);
    }
}

/// `--ready-fd` must name a descriptor this process was given: an unopened number could
/// later be one of the VMM's own (KVM, an eventfd), which the readiness line would hit
/// and then close.
#[test]
fn a_ready_fd_that_is_not_open_or_is_stdio_is_refused() {
    for (fd, needle) in [
        ("77", "not an open file descriptor"),
        ("1", "stdin, stdout"),
    ] {
        let out = vmm(&[
            &"run",
            &"--kernel",
            &TINY_ELF,
            &"--api-sock",
            &"/tmp/x.sock",
            &"--ready-fd",
            &fd,
        ]);
        assert_config_error(&out, needle);
    }
}

/// Files that would hang or mislead the VMM are refused up front: a FIFO (opening it waits
/// for a writer forever), a character device (/dev/zero has no end), a directory.
#[test]
fn fifos_and_devices_are_not_kernels_initrds_or_disks() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for (flag, path, needle) in [
        ("--kernel", fifo.as_path(), "is a FIFO"),
        ("--initrd", fifo.as_path(), "is a FIFO"),
        ("--rootfs", fifo.as_path(), "is a FIFO"),
        ("--drive", fifo.as_path(), "is a FIFO"),
        ("--initrd", Path::new("/dev/zero"), "is a character device"),
        ("--drive", Path::new("/dev/zero"), "is a character device"),
        ("--initrd", Path::new("/"), "is a directory"),
    ] {
        let out = if flag == "--kernel" {
            vmm(&[&"run", &flag, &path])
        } else {
            vmm(&[&"run", &"--kernel", &TINY_ELF, &flag, &path])
        };
        assert_config_error(&out, needle);
    }
}

/// An ELF64 kernel for another architecture is refused, not booted.
#[test]
fn an_elf_for_another_machine_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vmlinux-arm64");
    let mut elf = fs::read(TINY_ELF).unwrap();
    elf[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    fs::write(&path, elf).unwrap();
    let out = vmm(&[&"run", &"--kernel", &path]);
    assert_config_error(&out, "machine 183");
}

/// A NUL would silently cut the kernel command line.
#[test]
fn a_nul_in_append_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!("kernel = {TINY_ELF:?}\nappend = \"test=boot\\u0000 secret\"\n"),
    );
    let out = vmm(&[&"run", &"--config", &cfg]);
    assert_config_error(&out, "NUL");
}

/// A writable image belongs to one drive of one VM: the same file twice, or a second VM
/// on it, is refused (flock); read-only images may be shared.
#[test]
fn a_writable_image_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    fs::write(&img, vec![0u8; 64 * 512]).unwrap();
    let ro = format!("{},ro", img.display());
    let out = vmm(&[
        &"run",
        &"--kernel",
        &TINY_ELF,
        &"--rootfs",
        &img,
        &"--drive",
        &img,
    ]);
    assert_config_error(&out, "in use");
    let out = vmm(&[
        &"run",
        &"--kernel",
        &TINY_ELF,
        &"--rootfs",
        &img,
        &"--drive",
        &ro,
    ]);
    assert_config_error(&out, "in use");
    let shared = Vmm::guest(TINY_ELF, "blk").drive(&ro).drive(&ro).run();
    shared.assert_passed();
    // A second VMM while the first one holds the image.
    let mut first = Vmm::guest(TINY_ELF, "hang").drive(&img).spawn();
    first.wait_for_stdout("info ready", Duration::from_secs(20));
    let second = vmm(&[&"run", &"--kernel", &TINY_ELF, &"--drive", &img]);
    first.signal(libc::SIGTERM);
    first.wait_timeout(Duration::from_secs(10));
    assert_config_error(&second, "in use");
}
