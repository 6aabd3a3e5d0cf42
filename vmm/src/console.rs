//! The serial console on the host side: guest output to stdout (watched for panics and
//! power-off), host stdin to the guest's UART, the terminal in raw mode meanwhile.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::bus::lock;
use devices::legacy::Serial;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::terminal::Terminal;

use crate::exit::ExitReason;

const PANIC_MARKER: &str = "Kernel panic - not syncing";
const PANIC_END_MARKER: &str = "---[ end Kernel panic";
/// Printed by Linux's kernel_power_off() / kernel_halt(): with no ACPI there is no other
/// way for a guest to say it powered off. Since 6.x, a power-off without a power-off
/// handler (no ACPI here) halts and says so with the third line.
const POWER_OFF_MARKERS: [&str; 3] = [
    "reboot: Power down",
    "reboot: System halted",
    "reboot: Power off not available: System halted instead",
];
/// Time the guest gets to print the rest of a panic report before we stop it.
const PANIC_GRACE: Duration = Duration::from_secs(1);
const MAX_LINE: usize = 1024;

/// Watches console lines for the guest's last words.
pub struct ConsoleWatcher {
    exit: Mutex<Sender<ExitReason>>,
    panic_line: Mutex<Option<String>>,
}

impl ConsoleWatcher {
    pub fn new(exit: Sender<ExitReason>) -> Arc<Self> {
        Arc::new(Self {
            exit: Mutex::new(exit),
            panic_line: Mutex::new(None),
        })
    }

    /// The panic message, once one was printed.
    pub fn panic_line(&self) -> Option<String> {
        lock(&self.panic_line).clone()
    }

    fn send(&self, reason: ExitReason) {
        let _ = lock(&self.exit).send(reason);
    }

    fn on_line(self: &Arc<Self>, line: &str) {
        if let Some(at) = line.find(PANIC_MARKER) {
            let mut seen = lock(&self.panic_line);
            if seen.is_none() {
                *seen = Some(line[at..].trim_end().to_string());
                let watcher = Arc::clone(self);
                std::thread::spawn(move || {
                    std::thread::sleep(PANIC_GRACE);
                    let line = watcher.panic_line().unwrap_or_default();
                    watcher.send(ExitReason::GuestPanic(line));
                });
            }
        } else if line.contains(PANIC_END_MARKER) {
            let line = self.panic_line().unwrap_or_else(|| line.trim().to_string());
            self.send(ExitReason::GuestPanic(line));
        } else if POWER_OFF_MARKERS.iter().any(|m| line.contains(m)) {
            self.send(ExitReason::PowerOff);
        }
    }
}

/// The UART's output: copied to stdout unbuffered, scanned line by line.
pub struct ConsoleOutput {
    line: Vec<u8>,
    watcher: Arc<ConsoleWatcher>,
}

impl ConsoleOutput {
    pub fn new(watcher: Arc<ConsoleWatcher>) -> Self {
        Self {
            line: Vec::with_capacity(MAX_LINE),
            watcher,
        }
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        for &b in buf {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.line).into_owned();
                self.line.clear();
                self.watcher.on_line(&line);
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

/// Host stdin → guest UART, on the device thread.
pub struct ConsoleInput {
    serial: Arc<Mutex<Serial>>,
    buf: Vec<u8>,
}

impl ConsoleInput {
    pub fn new(serial: Arc<Mutex<Serial>>) -> Self {
        Self {
            serial,
            buf: vec![0; 4096],
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        let stdin = std::io::stdin();
        // Regular files and /dev/null cannot be polled: then there is simply no input.
        if let Err(e) = ops.add(Events::new(&stdin, EventSet::IN)) {
            log::debug!("console: stdin is not pollable ({e:?}); no serial input");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let n = match std::io::stdin().lock().read(&mut self.buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return,
            Err(e) => {
                log::warn!("console: reading stdin failed: {e}");
                0
            }
        };
        if n == 0 {
            // EOF: stop watching, the guest keeps running.
            let _ = ops.remove(events);
            return;
        }
        let accepted = lock(&self.serial).queue_input(&self.buf[..n]);
        if accepted < n {
            log::warn!(
                "console: guest is not reading input; dropped {} bytes",
                n - accepted
            );
        }
    }
}

/// Raw mode for the life of the VM when stdin is a terminal; restored on drop.
pub struct RawTerminal {
    active: bool,
}

impl RawTerminal {
    pub fn enter() -> Self {
        let stdin = std::io::stdin();
        // SAFETY: isatty only inspects the descriptor.
        let is_tty = unsafe { libc::isatty(stdin.as_raw_fd()) } == 1;
        let active = is_tty && stdin.lock().set_raw_mode().is_ok();
        Self { active }
    }

    pub fn restore(&mut self) {
        if self.active {
            let _ = std::io::stdin().lock().set_canon_mode();
            self.active = false;
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        self.restore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn power_off_line_ends_the_vm() {
        let (tx, rx) = channel();
        let watcher = ConsoleWatcher::new(tx);
        watcher.on_line("[    1.0] reboot: Power down");
        assert_eq!(rx.try_recv().unwrap(), ExitReason::PowerOff);
    }

    #[test]
    fn a_power_off_without_a_handler_ends_the_vm() {
        // Linux 6.12 with no ACPI: `poweroff` halts and prints this.
        let (tx, rx) = channel();
        let watcher = ConsoleWatcher::new(tx);
        watcher.on_line("[   23.72] reboot: Power off not available: System halted instead");
        assert_eq!(rx.try_recv().unwrap(), ExitReason::PowerOff);
    }

    #[test]
    fn panic_is_reported_with_its_message() {
        let (tx, rx) = channel();
        let watcher = ConsoleWatcher::new(tx);
        watcher.on_line("[ 0.5] Kernel panic - not syncing: VFS: Unable to mount root fs");
        watcher.on_line("---[ end Kernel panic - not syncing: VFS ]---");
        assert_eq!(
            rx.recv().unwrap(),
            ExitReason::GuestPanic(
                "Kernel panic - not syncing: VFS: Unable to mount root fs".into()
            )
        );
        assert!(watcher.panic_line().is_some());
    }

    #[test]
    fn a_panic_without_end_marker_is_reported_after_the_grace_period() {
        let (tx, rx) = channel();
        let watcher = ConsoleWatcher::new(tx);
        watcher.on_line("Kernel panic - not syncing: test");
        let got = rx.recv_timeout(PANIC_GRACE * 3).unwrap();
        assert!(matches!(got, ExitReason::GuestPanic(_)));
    }
}
