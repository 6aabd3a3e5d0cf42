//! The CMOS real-time clock (MC146818) at ports 0x70/0x71, reduced to what a guest reads:
//! the host's current UTC time, no update in progress, valid RAM and battery.
//!
//! Without it, Linux polls the "update in progress" bit of absent hardware for up to a
//! second per read (pm_trace, rtc_cmos probe), one port exit per poll: about 10 s of every
//! boot on a fast host and minutes under nested emulation. The time registers follow
//! the host clock; a guest's writes to them (hwclock --systohc) are ignored, as the host
//! owns the clock.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

/// Offsets from port 0x70: the index register, then the data register.
const INDEX_OFFSET: u64 = 0;
const DATA_OFFSET: u64 = 1;
/// Bit 7 of the index port masks NMIs on real hardware; it is not part of the index.
const INDEX_MASK: u8 = 0x7f;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
/// The century byte that PC firmware keeps (ACPI FADT's default).
const REG_CENTURY: u8 = 0x32;

/// Register A: 32.768 kHz time base, 1024 Hz periodic rate; bit 7 (update in progress)
/// always clear.
const REG_A_DEFAULT: u8 = 0x26;
const REG_A_UIP: u8 = 0x80;
/// Register B: 24-hour mode, BCD, no interrupts enabled (what PC firmware sets).
const REG_B_DEFAULT: u8 = 0x02;
const REG_B_24H: u8 = 0x02;
const REG_B_BINARY: u8 = 0x04;
/// Register D: RAM and time are valid (the battery is good).
const REG_D_VALID: u8 = 0x80;
/// Bit 7 of the hour in 12-hour mode: PM.
const HOUR_PM: u8 = 0x80;

pub struct Cmos {
    index: u8,
    ram: [u8; 128],
    now: fn() -> u64,
}

impl Default for Cmos {
    fn default() -> Self {
        Self::new()
    }
}

impl Cmos {
    pub fn new() -> Self {
        Self::with_clock(host_unix_seconds)
    }

    /// A clock that reads `now()` (seconds since the Unix epoch) for its time registers.
    fn with_clock(now: fn() -> u64) -> Self {
        let mut ram = [0u8; 128];
        ram[usize::from(REG_A)] = REG_A_DEFAULT;
        ram[usize::from(REG_B)] = REG_B_DEFAULT;
        ram[usize::from(REG_D)] = REG_D_VALID;
        Self { index: 0, ram, now }
    }

    fn read_register(&self, index: u8) -> u8 {
        let reg_b = self.ram[usize::from(REG_B)];
        let time = || CivilTime::from_unix((self.now)());
        let encode = |v: u8| {
            if reg_b & REG_B_BINARY != 0 {
                v
            } else {
                to_bcd(v)
            }
        };
        match index {
            REG_SECONDS => encode(time().second),
            REG_MINUTES => encode(time().minute),
            REG_HOURS => {
                let hour = time().hour;
                if reg_b & REG_B_24H != 0 {
                    encode(hour)
                } else {
                    let pm = if hour >= 12 { HOUR_PM } else { 0 };
                    encode(match hour % 12 {
                        0 => 12,
                        h => h,
                    }) | pm
                }
            }
            REG_WEEKDAY => encode(time().weekday),
            REG_DAY => encode(time().day),
            REG_MONTH => encode(time().month),
            REG_YEAR => encode((time().year % 100) as u8),
            REG_CENTURY => encode((time().year / 100) as u8),
            REG_A => self.ram[usize::from(REG_A)] & !REG_A_UIP,
            // No interrupt sources: nothing is ever pending.
            REG_C => 0,
            REG_D => REG_D_VALID,
            other => self.ram[usize::from(other & INDEX_MASK)],
        }
    }

    fn write_register(&mut self, index: u8, value: u8) {
        match index {
            // The host owns the clock; C and D are read-only.
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_WEEKDAY | REG_DAY | REG_MONTH
            | REG_YEAR | REG_CENTURY | REG_C | REG_D => {}
            REG_A => self.ram[usize::from(REG_A)] = value & !REG_A_UIP,
            other => self.ram[usize::from(other & INDEX_MASK)] = value,
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match (offset, data.len()) {
            (INDEX_OFFSET, 1) => self.index,
            (DATA_OFFSET, 1) => self.read_register(self.index),
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (INDEX_OFFSET, [value]) => self.index = value & INDEX_MASK,
            (DATA_OFFSET, [value]) => self.write_register(self.index, *value),
            _ => {}
        }
    }
}

fn host_unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

/// A UTC date and time, as the RTC's registers hold it.
#[derive(Debug, PartialEq, Eq)]
struct CivilTime {
    year: u32,
    month: u8,
    day: u8,
    /// 1 = Sunday, as on PC firmware.
    weekday: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl CivilTime {
    /// Converts seconds since 1970-01-01 UTC (the days-to-civil algorithm in the
    /// proleptic Gregorian calendar).
    fn from_unix(secs: u64) -> Self {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        // 1970-01-01 was a Thursday (5 with Sunday = 1).
        let weekday = ((days + 4) % 7) as u8 + 1;
        // Shift the epoch to 0000-03-01 so leap days fall at the end of a year.
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z % 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + u64::from(month <= 2)) as u32;
        Self {
            year,
            month,
            day,
            weekday,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-29 15:04:05 UTC, a Sunday.
    const SUNDAY_AFTERNOON: u64 = 1_795_964_645;

    fn read(cmos: &mut Cmos, index: u8) -> u8 {
        cmos.write(INDEX_OFFSET, &[index]);
        let mut data = [0u8];
        cmos.read(DATA_OFFSET, &mut data);
        data[0]
    }

    #[test]
    fn civil_time_of_known_instants() {
        let t = CivilTime::from_unix(0);
        assert_eq!((t.year, t.month, t.day, t.weekday), (1970, 1, 1, 5));
        let t = CivilTime::from_unix(SUNDAY_AFTERNOON);
        assert_eq!(
            t,
            CivilTime {
                year: 2026,
                month: 11,
                day: 29,
                weekday: 1,
                hour: 15,
                minute: 4,
                second: 5
            }
        );
        // A leap day.
        let t = CivilTime::from_unix(951_782_400);
        assert_eq!((t.year, t.month, t.day), (2000, 2, 29));
    }

    #[test]
    fn time_registers_read_the_clock_in_bcd() {
        let mut cmos = Cmos::with_clock(|| SUNDAY_AFTERNOON);
        assert_eq!(read(&mut cmos, REG_SECONDS), 0x05);
        assert_eq!(read(&mut cmos, REG_MINUTES), 0x04);
        assert_eq!(read(&mut cmos, REG_HOURS), 0x15);
        assert_eq!(read(&mut cmos, REG_DAY), 0x29);
        assert_eq!(read(&mut cmos, REG_MONTH), 0x11);
        assert_eq!(read(&mut cmos, REG_YEAR), 0x26);
        assert_eq!(read(&mut cmos, REG_CENTURY), 0x20);
        assert_eq!(read(&mut cmos, REG_WEEKDAY), 0x01);
    }

    #[test]
    fn binary_and_12_hour_modes_follow_register_b() {
        let mut cmos = Cmos::with_clock(|| SUNDAY_AFTERNOON);
        cmos.write(INDEX_OFFSET, &[REG_B]);
        cmos.write(DATA_OFFSET, &[REG_B_BINARY]);
        assert_eq!(read(&mut cmos, REG_HOURS), 3 | HOUR_PM);
        assert_eq!(read(&mut cmos, REG_DAY), 29);
        cmos.write(INDEX_OFFSET, &[REG_B]);
        cmos.write(DATA_OFFSET, &[REG_B_BINARY | REG_B_24H]);
        assert_eq!(read(&mut cmos, REG_HOURS), 15);
    }

    #[test]
    fn never_updating_and_always_valid() {
        let mut cmos = Cmos::new();
        cmos.write(INDEX_OFFSET, &[REG_A]);
        cmos.write(DATA_OFFSET, &[0xff]);
        assert_eq!(read(&mut cmos, REG_A) & REG_A_UIP, 0);
        assert_eq!(read(&mut cmos, REG_D), REG_D_VALID);
        assert_eq!(read(&mut cmos, REG_C), 0);
    }

    #[test]
    fn the_guest_cannot_set_the_clock_but_keeps_its_ram() {
        let mut cmos = Cmos::with_clock(|| SUNDAY_AFTERNOON);
        cmos.write(INDEX_OFFSET, &[REG_YEAR]);
        cmos.write(DATA_OFFSET, &[0x99]);
        assert_eq!(read(&mut cmos, REG_YEAR), 0x26);
        // The NMI mask bit is not part of the index.
        cmos.write(INDEX_OFFSET, &[0x80 | 0x40]);
        cmos.write(DATA_OFFSET, &[0xab]);
        assert_eq!(read(&mut cmos, 0x40), 0xab);
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let mut cmos = Cmos::new();
        let mut wide = [0u8; 2];
        cmos.read(INDEX_OFFSET, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
        cmos.write(DATA_OFFSET, &[1, 2]);
        cmos.read(7, &mut wide[..1]);
        assert_eq!(wide[0], 0xff);
    }
}
