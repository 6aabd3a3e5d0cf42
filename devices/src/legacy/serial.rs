//! 8250 UART (vm-superio) on the bus, with an input backlog so host input larger than the
//! 64-byte receive FIFO is delivered as the guest drains it instead of being dropped.

use std::collections::VecDeque;
use std::io::Write;

use vm_superio::serial::NoEvents;

use crate::bus::BusDevice;
use crate::EventFdTrigger;

/// Receive buffer register (read) / transmit holding register (write).
const DATA_OFFSET: u64 = 0;
/// Input kept for the guest beyond the FIFO; a terminal user typing cannot exceed it.
const MAX_BACKLOG: usize = 1 << 20;

pub struct Serial {
    uart: vm_superio::Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
    backlog: VecDeque<u8>,
}

impl Serial {
    pub fn new(interrupt: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: vm_superio::Serial::new(interrupt, out),
            backlog: VecDeque::new(),
        }
    }

    /// Queues host input for the guest; returns how many bytes were accepted.
    pub fn queue_input(&mut self, bytes: &[u8]) -> usize {
        let room = MAX_BACKLOG.saturating_sub(self.backlog.len());
        let accepted = bytes.len().min(room);
        self.backlog.extend(&bytes[..accepted]);
        self.refill_fifo();
        accepted
    }

    fn refill_fifo(&mut self) {
        let room = self.uart.fifo_capacity();
        if room == 0 || self.backlog.is_empty() {
            return;
        }
        let chunk: Vec<u8> = self.backlog.iter().take(room).copied().collect();
        match self.uart.enqueue_raw_bytes(&chunk) {
            Ok(n) => {
                self.backlog.drain(..n);
            }
            Err(e) => log::warn!("serial: failed to deliver input to the guest: {e:?}"),
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            data.fill(0xff);
            return;
        }
        data[0] = self.uart.read(offset as u8);
        if offset == DATA_OFFSET {
            self.refill_fifo();
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 {
            return;
        }
        if let Err(e) = self.uart.write(offset as u8, data[0]) {
            log::warn!("serial: write to register {offset} failed: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn serial() -> (Serial, SharedBuf) {
        let out = SharedBuf::default();
        let irq = EventFdTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        (Serial::new(irq, Box::new(out.clone())), out)
    }

    #[test]
    fn guest_output_reaches_the_writer() {
        let (mut s, out) = serial();
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn input_larger_than_the_fifo_is_delivered_in_order() {
        let (mut s, _) = serial();
        let input: Vec<u8> = (0..200u32).map(|i| i as u8).collect();
        assert_eq!(s.queue_input(&input), 200);
        let mut got = Vec::new();
        let mut b = [0u8];
        for _ in 0..200 {
            s.read(DATA_OFFSET, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, input);
    }
}
