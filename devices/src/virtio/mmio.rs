//! The virtio-mmio transport (virtio 1.2, section 4.2.2), version 2 ("modern") only.

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{ring_state, Activation, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::bus::BusDevice;

/// Size of each device's register window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

/// Register offsets in a device's window (virtio 1.2, table 4.1): public for drivers in
/// tests and fuzz targets.
pub mod regs {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG_SPACE: u64 = 0x100;
}
use regs::*;

/// "virt" in little endian.
const MAGIC: u32 = 0x7472_6976;
const MMIO_VERSION: u32 = 2;
/// Vendor ID: "VMMS"; any value works for Linux, it only has to be stable.
const VENDOR: u32 = 0x534d_4d56;

#[cfg(test)]
const STATUS_ACKNOWLEDGE: u32 = 1;
#[cfg(test)]
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_DEVICE_NEEDS_RESET: u32 = 0x40;
const STATUS_FAILED: u32 = 0x80;

/// Register file of one virtio-mmio device; the device's front sits behind it (owned: no
/// lock of the device thread is taken on a register access).
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    /// The driver wrote a queue setting we refused (size, alignment); DRIVER_OK then fails.
    queue_setup_error: bool,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    acked_features: u64,
    status: u32,
    config_generation: u32,
}

impl MmioTransport {
    pub fn new(mem: GuestMemoryMmap, device: Box<dyn VirtioDevice>) -> Self {
        let queues = fresh_queues(&*device);
        Self {
            device,
            mem,
            queues,
            queue_setup_error: false,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            acked_features: 0,
            status: 0,
            config_generation: 0,
        }
    }

    /// One line on the device's state for someone debugging a stuck guest: the driver's
    /// status, the pending interrupt bits, and each ready queue's ring indexes.
    pub fn report(&self) -> String {
        let mut line = format!(
            "device type {} status {:#x} interrupt status {:#x}",
            self.device.device_type(),
            self.read_register(STATUS),
            self.device.interrupt().status()
        );
        for (i, q) in self.queues.iter().enumerate().filter(|(_, q)| q.ready()) {
            line.push_str(&format!("; queue {i}: {}", ring_state(q, &self.mem)));
        }
        line
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queue setup is only allowed before DRIVER_OK (4.2.3.2).
        if self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let device = &self.device;
        match offset {
            MAGIC_VALUE => MAGIC,
            VERSION => MMIO_VERSION,
            DEVICE_ID => device.device_type(),
            VENDOR_ID => VENDOR,
            DEVICE_FEATURES => match self.device_features_select {
                0 => device.features() as u32,
                1 => (device.features() >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_select as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            QUEUE_READY => self
                .queues
                .get(self.queue_select as usize)
                .map_or(0, |q| u32::from(q.ready())),
            INTERRUPT_STATUS => device.interrupt().status(),
            STATUS if device.interrupt().needs_reset() => self.status | STATUS_DEVICE_NEEDS_RESET,
            STATUS => self.status,
            CONFIG_GENERATION => self.config_generation,
            _ => {
                log::debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_select = value,
            DRIVER_FEATURES_SEL => self.driver_features_select = value,
            DRIVER_FEATURES => self.ack_features(value),
            QUEUE_SEL => self.queue_select = value,
            QUEUE_NUM => self.set_queue_size(value),
            QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH
            | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => self.set_queue_address(offset, value),
            QUEUE_NOTIFY => self.notify_without_ioeventfd(value),
            INTERRUPT_ACK => self.device.interrupt().ack(value),
            STATUS => self.set_status(value),
            _ => log::debug!("virtio-mmio: write of {value:#x} to unknown register {offset:#x}"),
        }
    }

    fn ack_features(&mut self, value: u32) {
        if self.status & (STATUS_FEATURES_OK | STATUS_DRIVER_OK) != 0 {
            log::debug!("virtio-mmio: feature write after FEATURES_OK ignored");
            return;
        }
        let shift = match self.driver_features_select {
            0 => 0,
            1 => 32,
            _ => return,
        };
        let mask = 0xffff_ffffu64 << shift;
        self.acked_features = (self.acked_features & !mask) | (u64::from(value) << shift);
    }

    /// A size the queue cannot take (above its maximum, not a power of two, or wider than
    /// 16 bits: 0x10010 is not 16) is remembered and fails DRIVER_OK, rather than leaving
    /// the device and the driver with different ideas of the ring.
    fn set_queue_size(&mut self, value: u32) {
        let Some(q) = self.selected_queue() else {
            return;
        };
        let accepted = u16::try_from(value)
            .ok()
            .is_some_and(|size| q.try_set_size(size).is_ok());
        if !accepted {
            log::debug!("virtio-mmio: queue size {value:#x} refused");
            self.queue_setup_error = true;
        }
    }

    /// One half of a ring address; misaligned addresses are refused like bad sizes.
    fn set_queue_address(&mut self, offset: u64, value: u32) {
        let Some(q) = self.selected_queue() else {
            return;
        };
        type Setter = fn(&mut Queue, GuestAddress) -> Result<(), virtio_queue::Error>;
        let (low, current, set): (bool, u64, Setter) = match offset {
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH => (
                offset == QUEUE_DESC_LOW,
                q.desc_table(),
                Queue::try_set_desc_table_address,
            ),
            QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH => (
                offset == QUEUE_DRIVER_LOW,
                q.avail_ring(),
                Queue::try_set_avail_ring_address,
            ),
            QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => (
                offset == QUEUE_DEVICE_LOW,
                q.used_ring(),
                Queue::try_set_used_ring_address,
            ),
            _ => return,
        };
        let address = if low {
            (current & !0xffff_ffff) | u64::from(value)
        } else {
            (current & 0xffff_ffff) | (u64::from(value) << 32)
        };
        if set(q, GuestAddress(address)).is_err() {
            log::debug!("virtio-mmio: misaligned ring address {address:#x} refused");
            self.queue_setup_error = true;
        }
    }

    /// Only reached when KVM's ioeventfd did not take the write (e.g. a wrong access size).
    fn notify_without_ioeventfd(&self, queue: u32) {
        if let Some(evt) = self.device.queue_events().get(queue as usize) {
            if let Err(e) = evt.write(1) {
                log::error!("virtio-mmio: failed to forward a queue notification: {e}");
            }
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        let newly_set = value & !self.status;
        if newly_set & STATUS_FAILED != 0 {
            log::warn!("virtio-mmio: the driver gave up on the device");
        }
        if newly_set & STATUS_FEATURES_OK != 0 && !self.features_acceptable() {
            value &= !STATUS_FEATURES_OK;
        }
        if newly_set & STATUS_DRIVER_OK != 0
            && (value & STATUS_FEATURES_OK == 0 || !self.activate())
        {
            value = (value & !STATUS_DRIVER_OK) | STATUS_DEVICE_NEEDS_RESET;
        }
        self.status = value;
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.device.features();
        self.acked_features & !offered == 0 && self.acked_features & VIRTIO_F_VERSION_1 != 0
    }

    fn activate(&mut self) -> bool {
        if self.queue_setup_error {
            log::warn!("virtio-mmio: driver enabled the device after a refused queue setting");
            return false;
        }
        if let Some(i) = self.queues.iter().position(|q| !q.is_valid(&self.mem)) {
            log::warn!("virtio-mmio: driver enabled the device with queue {i} unusable");
            return false;
        }
        let activation = Activation {
            mem: self.mem.clone(),
            queues: self.queues.iter().map(copy_queue).collect(),
            acked_features: self.acked_features,
        };
        match self.device.activate(activation) {
            Ok(()) => true,
            Err(e) => {
                log::error!("virtio-mmio: device activation failed: {e}");
                false
            }
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        self.device.interrupt().clear();
        self.queues = fresh_queues(&*self.device);
        self.queue_setup_error = false;
        self.status = 0;
        self.acked_features = 0;
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
    }
}

fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
    device
        .queue_max_sizes()
        .iter()
        .map(|&max| Queue::new(max).expect("queue sizes are powers of two chosen by the device"))
        .collect()
}

/// Queue is not Clone; its state round-trips exactly.
fn copy_queue(q: &Queue) -> Queue {
    Queue::try_from(q.state()).expect("a validated queue's own state is valid")
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            log::debug!(
                "virtio-mmio: {}-byte read at {offset:#x} ignored",
                data.len()
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            log::debug!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::{ActivateError, Interrupt, INTERRUPT_CONFIG_CHANGE, INTERRUPT_USED_RING};
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EventFd;

    /// What the transport did to the device, seen from the test.
    #[derive(Default)]
    struct Record {
        activated_with: Option<(usize, u64)>,
        resets: usize,
    }

    struct FakeDevice {
        queue_events: Vec<EventFd>,
        interrupt: Arc<Interrupt>,
        record: Arc<Mutex<Record>>,
    }

    impl VirtioDevice for FakeDevice {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1 << 5
        }
        fn queue_events(&self) -> &[EventFd] {
            &self.queue_events
        }
        fn interrupt(&self) -> &Interrupt {
            &self.interrupt
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            crate::virtio::read_config_bytes(&[1, 2, 3, 4], offset, data);
        }
        fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
            self.record.lock().unwrap().activated_with = Some((a.queues.len(), a.acked_features));
            Ok(())
        }
        fn reset(&mut self) {
            let mut r = self.record.lock().unwrap();
            r.resets += 1;
            r.activated_with = None;
        }
    }

    struct Fake {
        interrupt: Arc<Interrupt>,
        record: Arc<Mutex<Record>>,
    }

    impl Fake {
        fn activated_with(&self) -> Option<(usize, u64)> {
            self.record.lock().unwrap().activated_with
        }
        fn resets(&self) -> usize {
            self.record.lock().unwrap().resets
        }
    }

    fn transport() -> (MmioTransport, Fake) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let evt = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let fake = Fake {
            interrupt: Arc::new(Interrupt::new(evt())),
            record: Arc::default(),
        };
        let dev = FakeDevice {
            queue_events: vec![evt(), evt()],
            interrupt: Arc::clone(&fake.interrupt),
            record: Arc::clone(&fake.record),
        };
        (MmioTransport::new(mem, Box::new(dev)), fake)
    }

    fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    /// The Linux driver's sequence up to FEATURES_OK, acking `features`.
    fn negotiate(t: &mut MmioTransport, features: u64) {
        wr(t, STATUS, 0);
        wr(t, STATUS, STATUS_ACKNOWLEDGE);
        wr(t, STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        for sel in 0..2 {
            wr(t, DRIVER_FEATURES_SEL, sel);
            wr(t, DRIVER_FEATURES, (features >> (32 * sel)) as u32);
        }
        wr(
            t,
            STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
    }

    fn setup_queue(t: &mut MmioTransport, index: u32, base: u32) {
        wr(t, QUEUE_SEL, index);
        wr(t, QUEUE_NUM, 8);
        wr(t, QUEUE_DESC_LOW, base);
        wr(t, QUEUE_DESC_HIGH, 0);
        wr(t, QUEUE_DRIVER_LOW, base + 0x1000);
        wr(t, QUEUE_DEVICE_LOW, base + 0x2000);
        wr(t, QUEUE_READY, 1);
    }

    #[test]
    fn identity_registers() {
        let (mut t, _) = transport();
        assert_eq!(rd(&mut t, MAGIC_VALUE), MAGIC);
        assert_eq!(rd(&mut t, VERSION), 2);
        assert_eq!(rd(&mut t, DEVICE_ID), 42);
        wr(&mut t, DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, DEVICE_FEATURES), 1);
        wr(&mut t, QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, QUEUE_NUM_MAX), 8);
        wr(&mut t, QUEUE_SEL, 7);
        assert_eq!(rd(&mut t, QUEUE_NUM_MAX), 0);
        let mut cfg = [0u8; 2];
        t.read(CONFIG_SPACE + 2, &mut cfg);
        assert_eq!(cfg, [3, 4]);
    }

    #[test]
    fn full_driver_sequence_activates_the_device() {
        let (mut t, dev) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1 | 1 << 5);
        assert_ne!(rd(&mut t, STATUS) & STATUS_FEATURES_OK, 0);
        setup_queue(&mut t, 0, 0x1_0000);
        setup_queue(&mut t, 1, 0x2_0000);
        wr(&mut t, STATUS, 0xf);
        assert_eq!(rd(&mut t, STATUS), 0xf);
        assert_eq!(dev.activated_with(), Some((2, VIRTIO_F_VERSION_1 | 1 << 5)));
        // Queue registers are frozen once running.
        wr(&mut t, QUEUE_SEL, 0);
        wr(&mut t, QUEUE_READY, 0);
        assert_eq!(rd(&mut t, QUEUE_READY), 1);
    }

    #[test]
    fn unknown_features_or_legacy_drivers_do_not_get_features_ok() {
        let (mut t, _) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1 | 1 << 7);
        assert_eq!(rd(&mut t, STATUS) & STATUS_FEATURES_OK, 0);
        negotiate(&mut t, 1 << 5);
        assert_eq!(rd(&mut t, STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn driver_ok_with_a_broken_queue_needs_reset() {
        let (mut t, dev) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 0, 0x1_0000);
        // Queue 1 is never set up; its rings point at address 0 but it is not ready.
        wr(&mut t, STATUS, 0xf);
        assert_ne!(rd(&mut t, STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
        assert!(dev.activated_with().is_none());
        // A ring outside guest memory is refused too.
        setup_queue(&mut t, 1, 0xfff0_0000);
        wr(&mut t, STATUS, 0);
        assert_eq!(dev.resets(), 2, "one per negotiate, one now");
        assert_eq!(rd(&mut t, STATUS), 0);
    }

    #[test]
    fn the_report_shows_status_interrupts_and_the_rings_in_guest_memory() {
        let (mut t, dev) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 0, 0x1_0000);
        assert_eq!(
            t.report(),
            "device type 42 status 0xb interrupt status 0x0; \
             queue 0: size 8 avail 0 used 0 used_event 0 avail_event 0"
        );
        // The driver published 5 requests and wants an interrupt after the 4th; the device
        // used 3 and interrupted.
        use vm_memory::Bytes;
        let mem = t.mem.clone();
        mem.write_obj(5u16, GuestAddress(0x1_1002)).unwrap();
        mem.write_obj(3u16, GuestAddress(0x1_1004 + 2 * 8)).unwrap();
        mem.write_obj(3u16, GuestAddress(0x1_2002)).unwrap();
        dev.interrupt.signal(INTERRUPT_USED_RING);
        // Queue 1 sits outside guest memory: its indexes cannot be read.
        setup_queue(&mut t, 1, 0x10_0000);
        assert_eq!(
            t.report(),
            "device type 42 status 0xb interrupt status 0x1; \
             queue 0: size 8 avail 5 used 3 used_event 3 avail_event 0; \
             queue 1: size 8 avail ? used ? used_event ? avail_event ?"
        );
    }

    #[test]
    fn interrupt_status_and_ack() {
        let (mut t, dev) = transport();
        dev.interrupt.signal(INTERRUPT_USED_RING);
        assert_eq!(rd(&mut t, INTERRUPT_STATUS), INTERRUPT_USED_RING);
        wr(&mut t, INTERRUPT_ACK, INTERRUPT_USED_RING);
        assert_eq!(rd(&mut t, INTERRUPT_STATUS), 0);
    }

    #[test]
    fn odd_accesses_are_ignored() {
        let (mut t, _) = transport();
        let mut b = [0u8; 2];
        t.read(MAGIC_VALUE, &mut b);
        assert_eq!(b, [0, 0]);
        t.write(STATUS, &[1]);
        assert_eq!(rd(&mut t, STATUS), 0);
        wr(&mut t, 0x0ff0, 5);
    }

    #[test]
    fn refused_queue_sizes_and_addresses_fail_driver_ok() {
        for (register, value) in [
            (QUEUE_NUM, 0x10010), // not 16: wider than the register's 16 bits
            (QUEUE_NUM, 12),      // not a power of two
            (QUEUE_NUM, 32),      // above QUEUE_NUM_MAX
            (QUEUE_DESC_LOW, 0x1_0008),
            (QUEUE_DRIVER_LOW, 0x1_1001),
            (QUEUE_DEVICE_LOW, 0x1_2002),
        ] {
            let (mut t, dev) = transport();
            negotiate(&mut t, VIRTIO_F_VERSION_1);
            setup_queue(&mut t, 1, 0x2_0000);
            setup_queue(&mut t, 0, 0x1_0000);
            wr(&mut t, register, value);
            wr(&mut t, STATUS, 0xf);
            let status = rd(&mut t, STATUS);
            assert_ne!(
                status & STATUS_DEVICE_NEEDS_RESET,
                0,
                "{register:#x}={value:#x}"
            );
            assert!(dev.activated_with().is_none(), "{register:#x}={value:#x}");
            // A reset forgets it: the same driver can start over.
            negotiate(&mut t, VIRTIO_F_VERSION_1);
            setup_queue(&mut t, 1, 0x2_0000);
            setup_queue(&mut t, 0, 0x1_0000);
            wr(&mut t, STATUS, 0xf);
            assert_eq!(rd(&mut t, STATUS), 0xf, "{register:#x}={value:#x}");
        }
    }

    #[test]
    fn a_device_that_gave_up_shows_needs_reset_until_the_driver_resets_it() {
        let (mut t, dev) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 0, 0x1_0000);
        setup_queue(&mut t, 1, 0x2_0000);
        wr(&mut t, STATUS, 0xf);
        assert!(dev.interrupt.set_needs_reset());
        assert!(!dev.interrupt.set_needs_reset(), "reported once");
        assert_eq!(rd(&mut t, STATUS), 0xf | STATUS_DEVICE_NEEDS_RESET);
        assert_eq!(rd(&mut t, INTERRUPT_STATUS), INTERRUPT_CONFIG_CHANGE);
        wr(&mut t, STATUS, 0);
        assert_eq!(rd(&mut t, STATUS), 0);
        assert_eq!(rd(&mut t, INTERRUPT_STATUS), 0);
    }
}
