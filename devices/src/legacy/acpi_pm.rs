//! The ACPI power-management registers a guest needs to power off: the PM1a event block
//! (status and enable) and the PM1a control block, on port I/O. A kernel enters S5
//! (`poweroff`) by writing the `\_S5` sleep type with SLP_EN to PM1a_CNT, which only
//! kernel code can do: unlike a "reboot: Power down" console line, a guest user cannot
//! fake it. There is no SCI source: nothing here ever raises an event.

use vm_superio::Trigger;

use crate::bus::BusDevice;
use crate::EventFdTrigger;

/// PM1a_EVT_BLK: PM1_STS (2 bytes) then PM1_EN (2 bytes).
pub const PM1_EVT_LEN: u64 = 4;
/// PM1a_CNT_BLK follows the event block.
pub const PM1_CNT_OFFSET: u64 = 4;
pub const PM1_CNT_LEN: u64 = 2;
/// The whole port range: event block, then control block.
pub const ACPI_PM_PORTS: u64 = PM1_EVT_LEN + PM1_CNT_LEN;
/// SLP_TYP value of `\_S5` in our DSDT.
pub const S5_SLEEP_TYPE: u16 = 5;

const PM1_STS_OFFSET: u64 = 0;
const PM1_EN_OFFSET: u64 = 2;
/// PM1_CNT bits: SCI_EN (the OS owns the hardware: always, as there is no SMI_CMD),
/// SLP_TYP (10-12) and SLP_EN (13, write-only).
const SCI_EN: u16 = 1;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0b111 << SLP_TYP_SHIFT;
const SLP_EN: u16 = 1 << 13;
/// PM1_STS: WAK_STS, set when a sleep state was left (never, here).
const PM1_STS_WRITABLE: u16 = 0;

pub struct AcpiPm {
    status: u16,
    enable: u16,
    control: u16,
    power_off: EventFdTrigger,
}

impl AcpiPm {
    pub fn new(power_off: EventFdTrigger) -> Self {
        Self {
            status: 0,
            enable: 0,
            control: SCI_EN,
            power_off,
        }
    }

    fn write_control(&mut self, value: u16) {
        let sleep_type = (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT;
        if value & SLP_EN != 0 {
            if sleep_type == S5_SLEEP_TYPE {
                if let Err(e) = self.power_off.trigger() {
                    log::error!("acpi: cannot signal the power-off: {e}");
                }
            } else {
                // We declare no other sleep state; a guest that asks anyway stays awake.
                log::debug!("acpi: sleep type {sleep_type} ignored");
            }
        }
        self.control = SCI_EN | (value & SLP_TYP_MASK);
    }
}

/// Reads a 16-bit register at `offset` within it, `data.len()` bytes wide.
fn read_u16(reg: u16, offset: u64, data: &mut [u8]) {
    let bytes = reg.to_le_bytes();
    for (i, b) in data.iter_mut().enumerate() {
        *b = bytes.get(offset as usize + i).copied().unwrap_or(0);
    }
}

/// The 16-bit register value after writing `data` at `offset` within it.
fn write_u16(reg: u16, offset: u64, data: &[u8]) -> u16 {
    let mut bytes = reg.to_le_bytes();
    for (i, &b) in data.iter().enumerate() {
        if let Some(slot) = bytes.get_mut(offset as usize + i) {
            *slot = b;
        }
    }
    u16::from_le_bytes(bytes)
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            PM1_STS_OFFSET..PM1_EN_OFFSET => read_u16(self.status, offset, data),
            PM1_EN_OFFSET..PM1_CNT_OFFSET => read_u16(self.enable, offset - PM1_EN_OFFSET, data),
            PM1_CNT_OFFSET..ACPI_PM_PORTS => read_u16(self.control, offset - PM1_CNT_OFFSET, data),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            // Write 1 to clear.
            PM1_STS_OFFSET..PM1_EN_OFFSET => {
                let cleared = write_u16(0, offset, data);
                self.status &= !cleared | PM1_STS_WRITABLE;
            }
            PM1_EN_OFFSET..PM1_CNT_OFFSET => {
                self.enable = write_u16(self.enable, offset - PM1_EN_OFFSET, data)
            }
            PM1_CNT_OFFSET..ACPI_PM_PORTS => {
                let value = write_u16(self.control, offset - PM1_CNT_OFFSET, data);
                self.write_control(value);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    fn pm() -> (AcpiPm, EventFd) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (
            AcpiPm::new(EventFdTrigger::new(evt.try_clone().unwrap())),
            evt,
        )
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let (mut pm, evt) = pm();
        let mut cnt = [0u8; 2];
        pm.read(PM1_CNT_OFFSET, &mut cnt);
        assert_eq!(u16::from_le_bytes(cnt), SCI_EN, "ACPI mode from the start");
        // Linux writes the sleep type first, then the same with SLP_EN.
        let typ = S5_SLEEP_TYPE << SLP_TYP_SHIFT;
        pm.write(PM1_CNT_OFFSET, &(SCI_EN | typ).to_le_bytes());
        assert!(evt.read().is_err(), "not yet");
        pm.write(PM1_CNT_OFFSET, &(SCI_EN | typ | SLP_EN).to_le_bytes());
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn other_sleep_types_and_byte_writes_do_not_power_off() {
        let (mut pm, evt) = pm();
        pm.write(
            PM1_CNT_OFFSET,
            &((3 << SLP_TYP_SHIFT) | SLP_EN).to_le_bytes(),
        );
        // SLP_EN alone in the high byte, with the old (zero) sleep type.
        pm.write(PM1_CNT_OFFSET + 1, &[(SLP_EN >> 8) as u8]);
        pm.write(PM1_STS_OFFSET, &[0xff, 0xff]);
        pm.write(PM1_EN_OFFSET, &[0x01, 0x01]);
        assert!(evt.read().is_err());
        let mut en = [0u8; 2];
        pm.read(PM1_EN_OFFSET, &mut en);
        assert_eq!(en, [1, 1]);
        let mut sts = [0xffu8; 2];
        pm.read(PM1_STS_OFFSET, &mut sts);
        assert_eq!(sts, [0, 0]);
    }
}
