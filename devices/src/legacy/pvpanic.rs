//! QEMU's pvpanic device on one I/O port: the guest kernel's panic notifier writes
//! PANICKED to it (Linux: CONFIG_PVPANIC_MMIO, found through the ACPI device QEMU0001).
//! Only kernel code reaches the port, so unlike a "Kernel panic" console line a guest user
//! cannot fake it.

use vm_superio::Trigger;

use crate::bus::BusDevice;
use crate::EventFdTrigger;

/// The port QEMU uses; guests find it in the DSDT either way.
pub const PVPANIC_PORT: u16 = 0x505;
const PANICKED: u8 = 1 << 0;
const CRASH_LOADED: u8 = 1 << 1;

pub struct PvPanic {
    panicked: EventFdTrigger,
}

impl PvPanic {
    pub fn new(panicked: EventFdTrigger) -> Self {
        Self { panicked }
    }
}

impl BusDevice for PvPanic {
    /// The events the device understands; the driver sends only those.
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = PANICKED | CRASH_LOADED;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let Some(&event) = data.first() else {
            return;
        };
        if event & PANICKED != 0 {
            if let Err(e) = self.panicked.trigger() {
                log::error!("pvpanic: cannot signal the panic: {e}");
            }
        } else if event & CRASH_LOADED != 0 {
            // A crash kernel takes over; that kernel's own end is what we report.
            log::info!("pvpanic: the guest is loading its crash kernel");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn panicked_is_signalled_and_capabilities_read_back() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = PvPanic::new(EventFdTrigger::new(evt.try_clone().unwrap()));
        let mut caps = [0u8; 1];
        dev.read(0, &mut caps);
        assert_eq!(caps[0], PANICKED | CRASH_LOADED);
        dev.write(0, &[CRASH_LOADED]);
        dev.write(0, &[]);
        assert!(evt.read().is_err());
        dev.write(0, &[PANICKED]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
