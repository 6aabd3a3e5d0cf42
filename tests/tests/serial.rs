//! The COM1 UART: guest output reaches stdout, stdin reaches the guest.

use std::time::Duration;

use vmm_tests::{Vmm, TINY_ELF};

#[test]
fn stdin_given_up_front_is_echoed() {
    let out = Vmm::guest(TINY_ELF, "echo").stdin(b"hello\n").run();
    assert_eq!(out.assert_passed().info("echo"), Some("hello"), "{out}");
}

#[test]
fn stdin_written_after_the_guest_is_ready_is_echoed() {
    let mut vm = Vmm::guest(TINY_ELF, "echo").spawn();
    vm.wait_for_stdout("info ready\n", Duration::from_secs(20));
    vm.write_stdin(b"hello world\n");
    vm.close_stdin();
    let out = vm.wait();
    assert_eq!(
        out.assert_passed().info("echo"),
        Some("hello world"),
        "{out}"
    );
}

#[test]
fn guest_lines_arrive_in_order_on_stdout() {
    let out = Vmm::guest(TINY_ELF, "boot").run();
    let g = out.assert_passed();
    let first = g.raw.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("info cr0 "),
        "first line {first:?}\n{out}"
    );
    assert!(g.raw.ends_with("done\n"), "{out}");
}
