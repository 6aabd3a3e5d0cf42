//! Entry state and boot structures, as docs/guest-abi.md promises them, seen from
//! inside the tiny guest (test=boot) for both the ELF and the bzImage.

use std::sync::OnceLock;

use vmm_tests::abi::{self, expected_e820, E820Entry};
use vmm_tests::disk::fnv1a;
use vmm_tests::{parse_nums, GuestOutput, Outcome, Vmm, TINY_BZIMAGE, TINY_ELF, TINY_PVH_ELF};

const MARKER: &str = "marker=boot-test-7f3a -- init-arg";

fn e820(g: &GuestOutput) -> Vec<E820Entry> {
    g.info_all("e820")
        .into_iter()
        .map(|v| match parse_nums(v).as_deref() {
            Some(&[a, s, t]) => (a, s, u32::try_from(t).unwrap()),
            _ => panic!("bad `info e820 {v}`"),
        })
        .collect()
}

fn bit(v: u64, n: u32) -> bool {
    v >> n & 1 == 1
}

/// The checks every 64-bit boot-protocol kernel format must pass; one run per
/// format, shared by its tests.
macro_rules! boot_protocol_tests {
    ($format:ident, $kernel:expr) => {
        mod $format {
            use super::*;

            fn run() -> &'static Outcome {
                static RUN: OnceLock<Outcome> = OnceLock::new();
                RUN.get_or_init(|| Vmm::guest($kernel, "boot").append(MARKER).run())
            }

            fn guest() -> &'static GuestOutput {
                run().assert_passed()
            }

            #[test]
            fn reaches_done_and_exits_0_through_i8042_reset() {
                run().assert_passed();
            }

            #[test]
            fn long_mode_with_paging() {
                let g = guest();
                let (cr0, cr4, efer) = (g.info_num("cr0"), g.info_num("cr4"), g.info_num("efer"));
                assert!(bit(cr0, 0) && bit(cr0, 31), "CR0.PE|PG: {cr0:#x}");
                assert!(bit(cr4, 5), "CR4.PAE: {cr4:#x}");
                assert!(bit(efer, 8) && bit(efer, 10), "EFER.LME|LMA: {efer:#x}");
            }

            #[test]
            fn page_tables_at_0x9000() {
                assert_eq!(guest().info_num("cr3") & !0xfff, abi::PML4);
            }

            #[test]
            fn flat_segments() {
                let g = guest();
                assert_eq!(g.info_num("cs"), abi::CODE64_SELECTOR);
                for seg in ["ds", "es", "ss"] {
                    assert_eq!(g.info_num(seg), abi::DATA_SELECTOR, "{seg}");
                }
            }

            #[test]
            fn entry_registers() {
                let g = guest();
                assert_eq!(g.info_num("rsi"), abi::ZERO_PAGE, "rsi = zero page");
                assert_eq!(g.info_num("rsp"), abi::INITIAL_RSP, "rsp");
                assert!(!bit(g.info_num("rflags"), 9), "interrupts must be off");
            }

            #[test]
            fn zero_page_header() {
                let g = guest();
                assert_eq!(g.info_num("boot_flag"), 0xaa55);
                assert_eq!(g.info_num("header"), 0x5372_6448, "\"HdrS\"");
                assert_eq!(g.info_num("type_of_loader"), 0xff);
                assert_eq!(g.info_num("cmd_line_ptr"), abi::CMDLINE);
            }

            #[test]
            fn command_line_is_base_then_append() {
                let want = format!("{} test=boot {MARKER}", abi::BASE_CMDLINE);
                assert_eq!(guest().expect_info("cmdline"), want);
            }

            #[test]
            fn e820_for_128_mib() {
                let g = guest();
                let want = expected_e820(128 << 20);
                assert_eq!(g.info_num("e820_entries"), want.len() as u64);
                assert_eq!(e820(g), want);
            }

            #[test]
            fn no_initrd_means_zero_ramdisk_fields() {
                let g = guest();
                assert_eq!(g.info_num("ramdisk_image"), 0);
                assert_eq!(g.info_num("ramdisk_size"), 0);
            }

            #[test]
            fn mp_table_with_one_cpu_by_default() {
                let g = guest();
                assert_eq!(g.info_num("mp_fp"), abi::MP_TABLE);
                assert_eq!(g.info_num("mp_fp_sum"), 0, "floating pointer checksum");
                assert_eq!(
                    g.info_num("mp_config_sum"),
                    0,
                    "configuration table checksum"
                );
                assert_eq!(
                    g.info_num("mp_config_entries"),
                    g.info_num("mp_entries_parsed")
                );
                assert_eq!(g.info_num("mp_lapic"), abi::LAPIC);
                assert_eq!(g.info_num("cpus"), 1);
                assert_eq!(g.info_all("mp_cpu"), ["0 0x3"], "APIC id 0, enabled + BSP");
                assert!(g.info_num("mp_ioapics") >= 1);
            }
        }
    };
}

boot_protocol_tests!(elf, TINY_ELF);
boot_protocol_tests!(bzimage, TINY_BZIMAGE);

fn boot(kernel: &str, vmm: impl FnOnce(Vmm) -> Vmm) -> GuestOutput {
    vmm(Vmm::guest(kernel, "boot"))
        .run()
        .assert_passed()
        .clone()
}

#[test]
fn e820_for_1024_mib() {
    let g = boot(TINY_ELF, |v| v.memory_mib(1024));
    assert_eq!(e820(&g), expected_e820(1 << 30));
}

#[test]
fn e820_for_4096_mib_keeps_the_mmio_hole() {
    let g = boot(TINY_ELF, |v| v.memory_mib(4096));
    assert_eq!(e820(&g), expected_e820(4 << 30));
}

#[test]
fn mp_table_lists_two_cpus() {
    let g = boot(TINY_ELF, |v| v.flag("--cpus", "2"));
    assert_eq!(g.info_num("cpus"), 2);
    assert_eq!(
        g.info_all("mp_cpu"),
        ["0 0x3", "1 0x1"],
        "APIC ids 0 (BSP) and 1"
    );
    assert_eq!(g.info_num("mp_config_sum"), 0);
    assert_eq!(
        g.info_num("mp_config_entries"),
        g.info_num("mp_entries_parsed")
    );
}

#[test]
fn rootfs_and_drives_are_announced_on_the_command_line_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = vmm_tests::disk::pattern_disk(dir.path(), "root.img", 8);
    let data = vmm_tests::disk::pattern_disk(dir.path(), "data.img", 8);
    let g = boot(TINY_ELF, |v| v.flag("--rootfs", &root).drive(&data));
    let want = format!(
        "{} root=/dev/vda rw {} {} test=boot",
        abi::BASE_CMDLINE,
        abi::virtio_token(0),
        abi::virtio_token(1)
    );
    assert_eq!(g.expect_info("cmdline"), want);
}

/// Runs test=boot with a 4 KiB initrd and checks where and how it was loaded.
fn check_initrd(kernel: &str, memory_mib: u32, highest_end: u64) {
    let dir = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..4096u32).map(|i| (i * 7 + i / 256) as u8).collect();
    let path = dir.path().join("initrd.img");
    std::fs::write(&path, &bytes).unwrap();
    let g = boot(kernel, |v| v.memory_mib(memory_mib).flag("--initrd", &path));
    let (image, size) = (g.info_num("ramdisk_image"), g.info_num("ramdisk_size"));
    assert_eq!(size, 4096);
    assert_eq!(
        g.info_num("ramdisk_fnv"),
        u64::from(fnv1a(&bytes)),
        "initrd content"
    );
    assert_eq!(image % 4096, 0, "initrd at {image:#x} is not page aligned");
    assert!(
        image >= abi::KERNEL_START + 0x10_0000,
        "initrd at {image:#x} overlaps the kernel"
    );
    assert!(
        image + size <= highest_end,
        "initrd ends at {:#x}",
        image + size
    );
    let in_ram = e820(&g)
        .iter()
        .any(|&(a, s, t)| t == abi::E820_RAM && a <= image && image + size <= a + s);
    assert!(in_ram, "initrd at {image:#x} is not inside e820 RAM");
}

#[test]
fn initrd_loaded_for_elf() {
    check_initrd(TINY_ELF, 128, 128 << 20);
}

#[test]
fn initrd_loaded_for_bzimage() {
    check_initrd(TINY_BZIMAGE, 128, 128 << 20);
}

#[test]
fn initrd_respects_bzimage_initrd_addr_max_with_4_gib() {
    // The bzImage header says initrd_addr_max = 0x7fffffff.
    check_initrd(TINY_BZIMAGE, 4096, 0x8000_0000);
}

#[test]
fn initrd_stays_below_the_mmio_hole_with_4_gib() {
    check_initrd(TINY_ELF, 4096, abi::MMIO_HOLE);
}

#[test]
fn pvh_entry_with_start_info() {
    let out = Vmm::guest(TINY_PVH_ELF, "pvh").append(MARKER).run();
    let g = out.assert_passed();
    assert!(g.has_ok("pvh"), "no `ok pvh magic`\n{out}");
    let cr0 = g.info_num("pvh_cr0");
    assert!(
        bit(cr0, 0) && !bit(cr0, 31),
        "protected mode, paging off: {cr0:#x}"
    );
    assert_eq!(g.info_num("pvh_cs"), 0x08, "flat 32-bit code segment");
    let want = format!("{} test=pvh {MARKER}", abi::BASE_CMDLINE);
    assert_eq!(g.expect_info("cmdline"), want);
    if g.info_num("pvh_version") >= 1 {
        let memmap: Vec<E820Entry> = g
            .info_all("memmap")
            .into_iter()
            .map(|v| match parse_nums(v).as_deref() {
                Some(&[a, s, t]) => (a, s, u32::try_from(t).unwrap()),
                _ => panic!("bad `info memmap {v}`"),
            })
            .collect();
        assert_eq!(memmap, expected_e820(128 << 20), "PVH memory map");
    }
}
