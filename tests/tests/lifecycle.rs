//! How a VM ends: guest reset, triple fault, kernel panic, SIGTERM.

use std::time::{Duration, Instant};

use vmm_tests::{Vmm, TINY_BZIMAGE, TINY_ELF};

#[test]
fn i8042_reset_exits_0() {
    let out = Vmm::guest(TINY_ELF, "bench").run();
    out.assert_code(0);
    assert!(out.stdout.starts_with(b"!"), "{out}");
}

#[test]
fn bzimage_reset_exits_0() {
    Vmm::guest(TINY_BZIMAGE, "bench").run().assert_code(0);
}

#[test]
fn triple_fault_exits_2_and_says_so() {
    let out = Vmm::guest(TINY_ELF, "triplefault").run();
    // With the registers it died with: the guest's empty IDT among them.
    out.assert_code(2)
        .assert_stderr_mentions("triple fault")
        .assert_stderr_mentions("triple-faulted with rip=")
        .assert_stderr_mentions("idt=0x0/0x0");
    assert_eq!(
        out.guest.info("triplefault"),
        Some(""),
        "guest got there\n{out}"
    );
}

/// The tables Linux looks for: RSDP in the BIOS area, XSDT, a legacy-model FADT with the
/// PM1a blocks, FACS, DSDT; and a pvpanic port that answers. The guest then powers off the
/// way Linux's acpi_power_off does and halts: only the VMM can end it.
#[test]
fn acpi_power_off_exits_0() {
    let out = Vmm::guest(TINY_ELF, "acpi")
        .flag("--cpus", "2")
        .append("acpi=poweroff")
        .timeout(Duration::from_secs(30))
        .run();
    out.assert_code(0);
    let g = &out.guest;
    g.assert_no_fail();
    assert_eq!(
        g.info_all("acpi_table"),
        vec!["XSDT", "FACP", "FACS", "DSDT", "APIC"],
        "{out}"
    );
    assert_eq!(g.info_num("acpi_rsdp"), 0xe0000);
    assert_eq!(
        g.info_num("acpi_lapics"),
        2,
        "one enabled local APIC per vCPU"
    );
    assert_eq!(g.info_num("acpi_hw_reduced"), 0);
    assert_eq!(g.info_num("acpi_pm1a_cnt"), 0x604);
    assert_eq!(g.info_num("pvpanic_caps"), 3);
}

#[test]
fn a_pvpanic_exits_2_with_the_panic_line() {
    let out = Vmm::guest(TINY_ELF, "acpi").append("acpi=panic").run();
    out.assert_code(2).assert_stderr_mentions(
        "guest kernel panic: Kernel panic - not syncing: tiny guest test panic",
    );
}

/// "reboot: Power down" or "Kernel panic" on the console, which any guest process that can
/// write to /dev/console can print, end nothing: the guest keeps running until its reset.
#[test]
fn power_off_and_panic_lines_on_the_console_end_nothing() {
    let out = Vmm::guest(TINY_ELF, "acpi").append("acpi=fake").run();
    out.assert_code(0);
    assert_eq!(out.guest.info("still_running"), Some(""), "{out}");
}

#[test]
fn sigterm_stops_a_halted_guest_with_143() {
    let mut vm = Vmm::guest(TINY_ELF, "hang").spawn();
    vm.wait_for_stdout("info ready\n", Duration::from_secs(20));
    // Give the vCPU time to block in HLT with interrupts off.
    std::thread::sleep(Duration::from_millis(100));
    let sent = Instant::now();
    vm.signal(libc::SIGTERM);
    let out = vm.wait_timeout(Duration::from_secs(3));
    out.assert_code(143);
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "took {:?}",
        sent.elapsed()
    );
}
