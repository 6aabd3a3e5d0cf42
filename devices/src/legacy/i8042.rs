//! The i8042 keyboard controller, reduced to what a VM needs: the CPU reset command that
//! Linux (`reboot=k`) and our test guests use to end the VM.

use crate::bus::BusDevice;
use crate::EventFdTrigger;

/// Command register (write) / status register (read): port 0x64 on a base of 0x60.
const STATUS_REGISTER_OFFSET: u64 = 4;

pub struct I8042 {
    inner: vm_superio::I8042Device<EventFdTrigger>,
}

impl I8042 {
    /// `reset` is written when the guest pulses the CPU reset line.
    pub fn new(reset: EventFdTrigger) -> Self {
        Self {
            inner: vm_superio::I8042Device::new(reset),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 || offset > STATUS_REGISTER_OFFSET {
            data.fill(0xff);
            return;
        }
        data[0] = self.inner.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset > STATUS_REGISTER_OFFSET {
            return;
        }
        if let Err(e) = self.inner.write(offset as u8, data[0]) {
            log::error!("i8042: failed to signal the reset: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn reset_command_signals_the_event() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(EventFdTrigger::new(evt.try_clone().unwrap()));
        dev.write(STATUS_REGISTER_OFFSET, &[0x20]);
        assert!(evt.read().is_err(), "other commands do not reset");
        dev.write(STATUS_REGISTER_OFFSET, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
