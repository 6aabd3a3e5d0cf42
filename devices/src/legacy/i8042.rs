//! The i8042 keyboard controller, reduced to what a VM needs: the CPU reset command that
//! Linux (`reboot=k`) and our test guests use to end the VM, and the few controller
//! commands Linux's probe issues (self-test, reading and writing the configuration byte).
//! No keyboard or mouse is attached.
//!
//! A controller that never answers costs every boot the probe's timeouts (1.2 s on a fast
//! host, far more under nested emulation, where each poll is a port exit). With these
//! answers, and `i8042.noaux i8042.nomux i8042.dumbkbd` on the command line (as
//! Firecracker does), the probe takes a few port accesses.

use std::collections::VecDeque;

use crate::bus::BusDevice;
use vm_superio::Trigger;

use crate::EventFdTrigger;

/// Port 0x60: data; port 0x64: command (write) / status (read).
const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_RESET_CPU: u8 = 0xfe;

const SELF_TEST_PASSED: u8 = 0x55;
const INTERFACE_TEST_PASSED: u8 = 0x00;

/// Status: output buffer full; system flag (self-test passed); last write was a command.
const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM: u8 = 0x04;
const STATUS_COMMAND: u8 = 0x08;
/// Keyboard not inhibited (no keylock).
const STATUS_UNLOCKED: u8 = 0x10;

/// Configuration byte: keyboard interrupt on, system flag, keyboard translation.
const CTR_DEFAULT: u8 = 0x45;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;
/// Output port: the reset line is inactive (bit 0 set), A20 enabled.
const OUTPUT_PORT_DEFAULT: u8 = 0x03;

/// What the next write to the data port means.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DataWrite {
    /// A byte for the (absent) keyboard: dropped.
    Keyboard,
    Ctr,
    OutputPort,
}

pub struct I8042 {
    reset: EventFdTrigger,
    ctr: u8,
    output_port: u8,
    status: u8,
    output: VecDeque<u8>,
    next_data: DataWrite,
}

impl I8042 {
    /// `reset` is written when the guest pulses the CPU reset line.
    pub fn new(reset: EventFdTrigger) -> Self {
        Self {
            reset,
            ctr: CTR_DEFAULT,
            output_port: OUTPUT_PORT_DEFAULT,
            status: STATUS_SYSTEM | STATUS_UNLOCKED,
            output: VecDeque::new(),
            next_data: DataWrite::Keyboard,
        }
    }

    fn reply(&mut self, byte: u8) {
        // Real controllers hold one byte; a short queue keeps replies in order.
        if self.output.len() < 16 {
            self.output.push_back(byte);
        }
    }

    fn pulse_reset(&self) {
        if let Err(e) = self.reset.trigger() {
            log::error!("i8042: failed to signal the reset: {e}");
        }
    }

    fn command(&mut self, cmd: u8) {
        self.status |= STATUS_COMMAND;
        self.next_data = DataWrite::Keyboard;
        match cmd {
            CMD_READ_CTR => self.reply(self.ctr),
            CMD_WRITE_CTR => self.next_data = DataWrite::Ctr,
            CMD_SELF_TEST => self.reply(SELF_TEST_PASSED),
            CMD_TEST_KBD | CMD_TEST_AUX => self.reply(INTERFACE_TEST_PASSED),
            CMD_DISABLE_KBD => self.ctr |= CTR_KBD_DISABLED,
            CMD_ENABLE_KBD => self.ctr &= !CTR_KBD_DISABLED,
            CMD_DISABLE_AUX => self.ctr |= CTR_AUX_DISABLED,
            CMD_ENABLE_AUX => self.ctr &= !CTR_AUX_DISABLED,
            CMD_READ_OUTPUT_PORT => self.reply(self.output_port),
            CMD_WRITE_OUTPUT_PORT => self.next_data = DataWrite::OutputPort,
            CMD_RESET_CPU => self.pulse_reset(),
            _ => {}
        }
    }

    fn data(&mut self, byte: u8) {
        self.status &= !STATUS_COMMAND;
        match std::mem::replace(&mut self.next_data, DataWrite::Keyboard) {
            DataWrite::Ctr => self.ctr = byte,
            DataWrite::OutputPort => {
                self.output_port = byte;
                // Bit 0 drives the CPU reset line, active low.
                if byte & 1 == 0 {
                    self.pulse_reset();
                }
            }
            DataWrite::Keyboard => {}
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match (offset, data.len()) {
            (DATA_OFFSET, 1) => self.output.pop_front().unwrap_or(0),
            (COMMAND_OFFSET, 1) => {
                let full = if self.output.is_empty() {
                    0
                } else {
                    STATUS_OUTPUT_FULL
                };
                self.status | full
            }
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (COMMAND_OFFSET, [cmd]) => self.command(*cmd),
            (DATA_OFFSET, [byte]) => self.data(*byte),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    fn device() -> (I8042, EventFd) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (
            I8042::new(EventFdTrigger::new(evt.try_clone().unwrap())),
            evt,
        )
    }

    fn status(dev: &mut I8042) -> u8 {
        let mut b = [0u8];
        dev.read(COMMAND_OFFSET, &mut b);
        b[0]
    }

    fn data(dev: &mut I8042) -> u8 {
        let mut b = [0u8];
        dev.read(DATA_OFFSET, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_signals_the_event() {
        let (mut dev, evt) = device();
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert!(evt.read().is_err(), "other commands do not reset");
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn clearing_the_reset_bit_of_the_output_port_resets() {
        let (mut dev, evt) = device();
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_OUTPUT_PORT]);
        dev.write(DATA_OFFSET, &[OUTPUT_PORT_DEFAULT]);
        assert!(evt.read().is_err());
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_OUTPUT_PORT]);
        dev.write(DATA_OFFSET, &[0x02]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn linux_probe_sequence_is_answered() {
        let (mut dev, evt) = device();
        assert_eq!(status(&mut dev) & STATUS_OUTPUT_FULL, 0, "nothing to flush");
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_ne!(status(&mut dev) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(data(&mut dev), SELF_TEST_PASSED);
        assert_eq!(status(&mut dev) & STATUS_OUTPUT_FULL, 0);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(data(&mut dev), CTR_DEFAULT);
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[0x47]);
        dev.write(COMMAND_OFFSET, &[CMD_DISABLE_KBD]);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(data(&mut dev), 0x47 | CTR_KBD_DISABLED);
        dev.write(COMMAND_OFFSET, &[CMD_TEST_KBD]);
        assert_eq!(data(&mut dev), INTERFACE_TEST_PASSED);
        assert!(evt.read().is_err(), "no reset on the way");
    }

    #[test]
    fn keyboard_bytes_and_odd_accesses_are_dropped() {
        let (mut dev, evt) = device();
        dev.write(DATA_OFFSET, &[0xff]);
        assert_eq!(status(&mut dev) & STATUS_OUTPUT_FULL, 0);
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU, 0]);
        assert!(evt.read().is_err());
        let mut wide = [0u8; 2];
        dev.read(DATA_OFFSET, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
        for _ in 0..100 {
            dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        }
        assert!(dev.output.len() <= 16, "replies nobody reads stay bounded");
    }
}
