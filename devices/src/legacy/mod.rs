//! Legacy PC devices on port I/O: the COM1 UART and the i8042 reset line.

mod i8042;
mod serial;

pub use i8042::I8042;
pub use serial::Serial;
