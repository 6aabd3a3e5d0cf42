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
    out.assert_code(2).assert_stderr_mentions("triple fault");
    assert_eq!(
        out.guest.info("triplefault"),
        Some(""),
        "guest got there\n{out}"
    );
}

#[test]
fn kernel_panic_on_the_console_exits_2() {
    let out = Vmm::guest(TINY_ELF, "panic").run();
    out.assert_code(2).assert_stderr_mentions("panic");
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
