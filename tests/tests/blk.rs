//! virtio-blk through the guest's polling virtio-mmio driver (test=blk): reads,
//! writes, flush, read-only drives, discard / write-zeroes, device IDs and
//! malformed descriptor chains, checked against the host files.

use std::fs;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use vmm_tests::abi;
use vmm_tests::disk::{self, fnv1a, pattern, pattern_disk, SECTOR};
use vmm_tests::{GuestOutput, Outcome, Vmm, TINY_ELF};

const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;
const F_VERSION_1: u64 = 1 << 32;

const S_OK: u64 = 0;
const S_IOERR: u64 = 1;
const S_UNSUPP: u64 = 2;

const DISK_SECTORS: u64 = 64;

/// The standard scenario: blk0 writable (default id), blk1 read-only with an id.
struct Scenario {
    out: Outcome,
    rw_after: Vec<u8>,
    ro_after: Vec<u8>,
}

fn scenario() -> &'static Scenario {
    static RUN: OnceLock<Scenario> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let rw = pattern_disk(dir.path(), "rw.img", DISK_SECTORS);
        let ro = pattern_disk(dir.path(), "ro.img", DISK_SECTORS);
        let mut ro_spec = ro.clone().into_os_string();
        ro_spec.push(",ro,id=golden-image");
        let out = Vmm::guest(TINY_ELF, "blk").drive(&rw).drive(ro_spec).run();
        Scenario {
            rw_after: fs::read(&rw).unwrap(),
            ro_after: fs::read(&ro).unwrap(),
            out,
        }
    })
}

fn guest() -> &'static GuestOutput {
    scenario().out.assert_passed()
}

/// `info blkN <key> <value>` is parsed as key `blkN`, value `<key> <value>`.
fn blk_value<'a>(g: &'a GuestOutput, dev: u32, key: &str) -> &'a str {
    let prefix = format!("{key} ");
    g.info_all(&format!("blk{dev}"))
        .into_iter()
        .find_map(|v| v.strip_prefix(&prefix).or((v == key).then_some("")))
        .unwrap_or_else(|| panic!("no `info blk{dev} {key}` line\n{}", g.raw))
}

fn blk_num(g: &GuestOutput, dev: u32, key: &str) -> u64 {
    let v = blk_value(g, dev, key);
    vmm_tests::parse_num(v).unwrap_or_else(|| panic!("`info blk{dev} {key} {v}` is not a number"))
}

#[test]
fn scenario_completes_without_guest_failures() {
    let g = guest();
    assert_eq!(g.info_num("blk_devices"), 2);
}

#[test]
fn devices_sit_at_their_slots() {
    let g = guest();
    for dev in 0..2 {
        assert_eq!(blk_num(g, dev, "base"), abi::virtio_slot(dev.into()).0);
    }
}

#[test]
fn writable_drive_features() {
    let f = blk_num(guest(), 0, "features");
    for (bit, name) in [
        (F_VERSION_1, "VERSION_1"),
        (F_FLUSH, "FLUSH"),
        (F_DISCARD, "DISCARD"),
        (F_WRITE_ZEROES, "WRITE_ZEROES"),
    ] {
        assert_ne!(f & bit, 0, "{name} not offered: {f:#x}");
    }
    assert_eq!(f & F_RO, 0, "RO offered on a writable drive: {f:#x}");
}

#[test]
fn read_only_drive_features() {
    let f = blk_num(guest(), 1, "features");
    assert_ne!(f & F_RO, 0, "RO not offered: {f:#x}");
    assert_eq!(
        f & (F_DISCARD | F_WRITE_ZEROES),
        0,
        "discard offered on ro: {f:#x}"
    );
}

#[test]
fn driver_ok_without_device_error() {
    let g = guest();
    for dev in 0..2 {
        // ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK, no NEEDS_RESET / FAILED.
        assert_eq!(blk_num(g, dev, "status"), 0xf, "blk{dev}");
        assert!(blk_num(g, dev, "queue_num_max") >= 8, "blk{dev}");
    }
}

#[test]
fn capacity_is_file_size_in_sectors() {
    assert_eq!(blk_num(guest(), 0, "capacity"), DISK_SECTORS);
    assert_eq!(blk_num(guest(), 1, "capacity"), DISK_SECTORS);
}

#[test]
fn device_ids_default_and_custom() {
    let g = guest();
    assert_eq!(blk_num(g, 0, "id_status"), S_OK);
    assert_eq!(blk_value(g, 0, "id"), "drive1");
    assert_eq!(blk_value(g, 1, "id"), "golden-image");
}

#[test]
fn reads_match_the_host_file() {
    let g = guest();
    let first = pattern(0, 1024);
    let hex: String = first[..16].iter().map(|b| format!("{b:02x}")).collect();
    for dev in 0..2 {
        assert_eq!(blk_num(g, dev, "read_status"), S_OK, "blk{dev}");
        assert_eq!(blk_value(g, dev, "sector0"), hex, "blk{dev}");
        assert_eq!(
            blk_num(g, dev, "read_fnv"),
            u64::from(fnv1a(&first)),
            "blk{dev}"
        );
    }
}

#[test]
fn write_and_flush_succeed_and_read_back() {
    let g = guest();
    assert_eq!(blk_num(g, 0, "write_status"), S_OK);
    assert_eq!(blk_num(g, 0, "flush_status"), S_OK);
    assert_eq!(blk_num(g, 0, "readback_status"), S_OK);
    assert_eq!(
        blk_num(g, 0, "readback_fnv"),
        u64::from(fnv1a(&disk::write_pattern()))
    );
}

#[test]
fn write_reaches_the_host_file_and_nothing_else_changes() {
    let s = scenario();
    s.out.assert_passed();
    let mut want = pattern(0, DISK_SECTORS * SECTOR);
    want[1024..1536].copy_from_slice(&disk::write_pattern());
    assert!(
        s.rw_after == want,
        "host file differs from sector 2 = write pattern"
    );
}

#[test]
fn write_to_read_only_drive_fails_and_file_is_unchanged() {
    let s = scenario();
    let g = s.out.assert_passed();
    assert_eq!(blk_num(g, 1, "write_status"), S_IOERR);
    assert!(
        s.ro_after == pattern(0, DISK_SECTORS * SECTOR),
        "read-only file changed"
    );
}

#[test]
fn unknown_request_type_is_unsupported() {
    for dev in 0..2 {
        assert_eq!(
            blk_num(guest(), dev, "unsupported_status"),
            S_UNSUPP,
            "blk{dev}"
        );
    }
}

fn assert_malformed_answered(kind: &str) {
    let g = guest();
    for dev in 0..2 {
        let v = blk_value(g, dev, &format!("malformed_{kind}"));
        let status = v.split_whitespace().nth(1).and_then(vmm_tests::parse_num);
        assert!(
            matches!(status, Some(s) if s != S_OK),
            "blk{dev} malformed {kind}: {v} (want an error status or none written)"
        );
    }
}

#[test]
fn malformed_data_address_outside_ram_is_answered() {
    assert_malformed_answered("bad_addr");
}

#[test]
fn malformed_wrong_data_direction_is_answered() {
    assert_malformed_answered("wrong_dir");
}

#[test]
fn malformed_short_header_is_answered() {
    assert_malformed_answered("short_header");
}

#[test]
fn malformed_huge_length_is_answered() {
    assert_malformed_answered("huge_len");
}

#[test]
fn device_still_works_after_malformed_chains() {
    let g = guest();
    for dev in 0..2 {
        assert_eq!(blk_num(g, dev, "after_malformed_status"), S_OK, "blk{dev}");
        assert_eq!(
            blk_num(g, dev, "after_malformed_fnv"),
            blk_num(g, dev, "read_fnv"),
            "blk{dev}"
        );
    }
}

#[test]
fn every_completion_raises_the_used_buffer_interrupt() {
    let g = guest();
    for dev in 0..2 {
        let requests = blk_num(g, dev, "requests");
        assert!(requests >= 10, "blk{dev}: {requests} requests");
        assert_eq!(blk_num(g, dev, "irqs"), requests, "blk{dev}");
    }
}

/// A 4 MiB fully allocated drive; `op=2048,4096` clears its middle 2 MiB.
fn clear_range(op: &str) -> (GuestOutput, u64, u64, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = pattern_disk(dir.path(), "big.img", 8192);
    let before = disk::allocated_bytes(&path);
    assert!(before >= 4 << 20, "test file not allocated: {before}");
    let out = Vmm::guest(TINY_ELF, "blk")
        .append(&format!("{op}=2048,4096"))
        .drive(&path)
        .run();
    let g = out.assert_passed().clone();
    let after = disk::allocated_bytes(&path);
    (g, before, after, path, dir)
}

fn assert_range_zero_rest_intact(path: &Path) {
    let (start, len) = (2048 * SECTOR, 4096 * SECTOR);
    let data = fs::read(path).unwrap();
    assert_eq!(data.len() as u64, 8192 * SECTOR, "file size changed");
    assert!(
        data[start as usize..(start + len) as usize]
            .iter()
            .all(|&b| b == 0),
        "range not zero"
    );
    let mut want = pattern(0, start);
    want[1024..1536].copy_from_slice(&disk::write_pattern());
    assert!(
        data[..start as usize] == want[..],
        "data before the range changed"
    );
    let end = (start + len) as usize;
    assert!(
        data[end..] == pattern(start + len, 2048 * SECTOR)[..],
        "data after the range changed"
    );
}

#[test]
fn discard_punches_a_hole() {
    let (g, before, after, path, _dir) = clear_range("discard");
    assert_eq!(blk_num(&g, 0, "discard_status"), S_OK);
    assert!(
        after + (2 << 20) <= before,
        "st_blocks did not drop by 2 MiB: {before} -> {after} bytes"
    );
    assert_range_zero_rest_intact(&path);
}

#[test]
fn write_zeroes_zeroes_and_punches_a_hole() {
    let (g, before, after, path, _dir) = clear_range("write_zeroes");
    assert_eq!(blk_num(&g, 0, "write_zeroes_status"), S_OK);
    assert!(
        after + (2 << 20) <= before,
        "st_blocks did not drop by 2 MiB: {before} -> {after} bytes"
    );
    assert_range_zero_rest_intact(&path);
}

#[test]
fn capacity_of_an_odd_sized_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = pattern_disk(dir.path(), "odd.img", 2049);
    let out = Vmm::guest(TINY_ELF, "blk").drive(&path).run();
    assert_eq!(blk_num(out.assert_passed(), 0, "capacity"), 2049);
}

#[test]
fn rootfs_is_the_first_device_with_id_rootfs() {
    let dir = tempfile::tempdir().unwrap();
    let root = pattern_disk(dir.path(), "root.img", 16);
    let data = pattern_disk(dir.path(), "data.img", 16);
    let out = Vmm::guest(TINY_ELF, "blk")
        .flag("--rootfs", &root)
        .drive(&data)
        .run();
    let g = out.assert_passed();
    assert_eq!(blk_value(g, 0, "id"), "rootfs");
    assert_eq!(blk_value(g, 1, "id"), "drive1");
}

/// A disk that is a block device (a loop device here) is sized by its end offset, not by
/// st_size, which is 0 for a device.
#[test]
fn capacity_of_a_block_device() {
    let dir = tempfile::tempdir().unwrap();
    let path = pattern_disk(dir.path(), "backing.img", 2048);
    let loop_dev = disk::LoopDevice::attach(&path);
    let out = Vmm::guest(TINY_ELF, "blk").drive(loop_dev.path()).run();
    assert_eq!(blk_num(out.assert_passed(), 0, "capacity"), 2048);
}

/// A hostile driver publishes an avail index more than the queue size ahead of the device
/// (`break_avail=0`). That device gives up on its queue, says so once (DEVICE_NEEDS_RESET
/// and a config interrupt), and works again after a reset; the other drive, served by the
/// same device thread, never notices.
#[test]
fn a_broken_avail_ring_needs_a_reset_and_stalls_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let first = pattern_disk(dir.path(), "first.img", DISK_SECTORS);
    let second = pattern_disk(dir.path(), "second.img", DISK_SECTORS);
    let out = Vmm::guest(TINY_ELF, "blk")
        .append("break_avail=0")
        .drive(&first)
        .drive(&second)
        .run();
    let g = out.assert_passed();
    assert_ne!(
        blk_num(g, 0, "broken_status") & 0x40,
        0,
        "no DEVICE_NEEDS_RESET"
    );
    assert_ne!(blk_num(g, 0, "broken_isr") & 2, 0, "no config interrupt");
    assert_eq!(blk_num(g, 0, "status_after_reset"), 0);
    assert_eq!(blk_num(g, 0, "read_after_reset_status"), S_OK);
    assert_eq!(blk_num(g, 1, "read_status"), S_OK);
    assert_eq!(blk_num(g, 1, "after_malformed_status"), S_OK);
    assert_eq!(
        out.stderr.matches("the device needs a reset").count(),
        1,
        "logged once:\n{}",
        out.stderr
    );
}

/// `kill -USR1` on a running VMM logs each virtio device's driver status, pending
/// interrupt bits and ring indexes, and each vCPU's registers (for a guest that seems
/// stuck), under seccomp, and stops nothing: the guest goes on writing.
#[test]
fn sigusr1_reports_the_rings_and_the_guest_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    fs::write(&image, vec![0u8; 16 * SECTOR as usize]).unwrap();
    let mut vm = Vmm::guest(TINY_ELF, "blkwrite sectors=4")
        .drive(&image)
        .spawn();
    vm.wait_for_stdout("info pass 2\n", Duration::from_secs(30));
    vm.signal(libc::SIGUSR1);
    let log = vm.wait_for_stderr("queue 0: size", Duration::from_secs(10));
    let report = log
        .lines()
        .find(|l| l.contains("queue 0: size"))
        .unwrap()
        .to_owned();
    assert!(report.contains("virtio-blk"), "{report}");
    assert!(
        report.contains("device type 2 status 0xf interrupt status 0x"),
        "{report}"
    );
    // A pass writes 4 sectors and flushes: both rings have moved by the second.
    let index = |key: &str| -> u64 {
        let after = report.split(&format!(" {key} ")).nth(1).unwrap_or("");
        let value = after.split([' ', ';']).next().unwrap_or("");
        value
            .parse()
            .unwrap_or_else(|_| panic!("no {key} index in {report}"))
    };
    assert!(index("used") >= 10, "{report}");
    assert!(index("avail") >= index("used"), "{report}");
    // And each vCPU's registers, read by its own thread once kicked out of KVM_RUN.
    vm.wait_for_stderr("vCPU 0: rip=0x", Duration::from_secs(10));
    // Still running: a later pass completes.
    let passes = vm.stdout_text().matches("info pass ").count();
    vm.wait_for_stdout(
        &format!("info pass {}\n", passes + 1),
        Duration::from_secs(30),
    );
    vm.signal(libc::SIGTERM);
    vm.wait_timeout(Duration::from_secs(5)).assert_code(143);
}

/// The pattern writer and scanner of the snapshot tests: what one writes, the other
/// reads back as one run, and a sector changed on the host shows as bad.
#[test]
fn the_pattern_writer_and_scanner_agree() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("pattern.img");
    fs::write(&image, vec![0u8; 32 * SECTOR as usize]).unwrap();
    let wrote = Vmm::guest(TINY_ELF, "blkwrite sectors=16 passes=2")
        .drive(&image)
        .run();
    let g = wrote.assert_passed();
    assert_eq!(g.info_all("pass"), ["1", "2"]);
    let scan = || {
        let out = Vmm::guest(TINY_ELF, "blkscan sectors=20")
            .drive(&image)
            .run();
        let g = out.assert_passed();
        (g.info_all("run").join("; "), g.info_all("bad").join(" "))
    };
    assert_eq!(
        scan(),
        ("2 0 15; 0 16 19".to_string(), "16 17 18 19".to_string())
    );
    let mut bytes = fs::read(&image).unwrap();
    bytes[5 * SECTOR as usize + 100] ^= 1;
    fs::write(&image, bytes).unwrap();
    assert_eq!(scan().1, "5 16 17 18 19");
}
