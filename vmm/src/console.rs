//! The serial console on the host side: guest output to stdout (its panic lines kept for
//! the exit message), host stdin to the guest's UART, the terminal in raw mode meanwhile.
//!
//! Console text never ends a VM: any guest process that can write to /dev/console could
//! fake it. Power-off and panics arrive through ACPI and pvpanic (see `arch::acpi`).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use devices::bus::lock;
use devices::legacy::Serial;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::terminal::Terminal;

const PANIC_MARKER: &str = "Kernel panic - not syncing";
const MAX_LINE: usize = 1024;

/// Remembers the guest's last panic line, to explain a panic that pvpanic reported.
#[derive(Default)]
pub struct ConsoleWatcher {
    panic_line: Mutex<Option<String>>,
}

impl ConsoleWatcher {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// The last panic message printed, if any. Informational only: a guest user could
    /// have printed it.
    pub fn panic_line(&self) -> Option<String> {
        lock(&self.panic_line).clone()
    }

    fn on_line(&self, line: &str) {
        if let Some(at) = line.find(PANIC_MARKER) {
            *lock(&self.panic_line) = Some(line[at..].trim_end().to_string());
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

    #[test]
    fn the_last_panic_line_is_kept_and_nothing_else() {
        let watcher = ConsoleWatcher::new();
        watcher.on_line("[    1.0] reboot: Power down");
        assert_eq!(watcher.panic_line(), None);
        watcher.on_line("echo Kernel panic - not syncing: fake");
        watcher.on_line("[ 0.5] Kernel panic - not syncing: VFS: Unable to mount root fs");
        assert_eq!(
            watcher.panic_line().as_deref(),
            Some("Kernel panic - not syncing: VFS: Unable to mount root fs")
        );
    }
}
