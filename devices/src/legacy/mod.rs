//! Legacy PC devices on port I/O: the COM1 UART, the i8042 reset line and the CMOS clock.

mod cmos;
mod i8042;
mod serial;

pub use cmos::Cmos;
pub use i8042::I8042;
pub use serial::Serial;
