//! Legacy PC devices on port I/O: the COM1 UART, the i8042 reset line, the CMOS clock, and
//! the ACPI power-management registers and pvpanic port that end a VM in ways a guest
//! user cannot fake.

pub mod acpi_pm;
mod cmos;
mod i8042;
pub mod pvpanic;
mod serial;

pub use acpi_pm::AcpiPm;
pub use cmos::Cmos;
pub use i8042::I8042;
pub use pvpanic::PvPanic;
pub use serial::Serial;
