//! The virtio-mmio transport (virtio 1.2, section 4.2.2), version 2 ("modern") only.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{Activation, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::bus::{lock, BusDevice};

/// Size of each device's register window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

const MAGIC_VALUE: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const VENDOR_ID: u64 = 0x00c;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

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

/// Register file of one virtio-mmio device; the device model sits behind it.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    acked_features: u64,
    status: u32,
    config_generation: u32,
}

impl MmioTransport {
    pub fn new(mem: GuestMemoryMmap, device: Arc<Mutex<dyn VirtioDevice>>) -> Self {
        let queues = fresh_queues(&*lock(&device));
        Self {
            device,
            mem,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            acked_features: 0,
            status: 0,
            config_generation: 0,
        }
    }

    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queue setup is only allowed before DRIVER_OK (4.2.3.2).
        if self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let device = lock(&self.device);
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
            QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(value as u16);
                }
            }
            QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH => {
                let (low, high) = split_address_write(offset == QUEUE_DESC_LOW, value);
                if let Some(q) = self.selected_queue() {
                    q.set_desc_table_address(low, high);
                }
            }
            QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH => {
                let (low, high) = split_address_write(offset == QUEUE_DRIVER_LOW, value);
                if let Some(q) = self.selected_queue() {
                    q.set_avail_ring_address(low, high);
                }
            }
            QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => {
                let (low, high) = split_address_write(offset == QUEUE_DEVICE_LOW, value);
                if let Some(q) = self.selected_queue() {
                    q.set_used_ring_address(low, high);
                }
            }
            QUEUE_NOTIFY => self.notify_without_ioeventfd(value),
            INTERRUPT_ACK => lock(&self.device).interrupt().ack(value),
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

    /// Only reached when KVM's ioeventfd did not take the write (e.g. a wrong access size).
    fn notify_without_ioeventfd(&self, queue: u32) {
        let device = lock(&self.device);
        if let Some(evt) = device.queue_events().get(queue as usize) {
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
        let offered = lock(&self.device).features();
        self.acked_features & !offered == 0 && self.acked_features & VIRTIO_F_VERSION_1 != 0
    }

    fn activate(&mut self) -> bool {
        let mut device = lock(&self.device);
        if let Some(i) = self.queues.iter().position(|q| !q.is_valid(&self.mem)) {
            log::warn!("virtio-mmio: driver enabled the device with queue {i} unusable");
            return false;
        }
        let activation = Activation {
            mem: self.mem.clone(),
            queues: self.queues.iter().map(copy_queue).collect(),
            acked_features: self.acked_features,
        };
        match device.activate(activation) {
            Ok(()) => true,
            Err(e) => {
                log::error!("virtio-mmio: device activation failed: {e}");
                false
            }
        }
    }

    fn reset(&mut self) {
        let mut device = lock(&self.device);
        device.reset();
        device.interrupt().ack(u32::MAX);
        self.queues = fresh_queues(&*device);
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

fn split_address_write(low: bool, value: u32) -> (Option<u32>, Option<u32>) {
    if low {
        (Some(value), None)
    } else {
        (None, Some(value))
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            lock(&self.device).read_config(offset - CONFIG_SPACE, data);
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
            lock(&self.device).write_config(offset - CONFIG_SPACE, data);
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
    use crate::virtio::{ActivateError, Interrupt, INTERRUPT_USED_RING};
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    struct FakeDevice {
        queue_events: Vec<EventFd>,
        interrupt: Interrupt,
        activated_with: Option<(usize, u64)>,
        resets: usize,
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
            self.activated_with = Some((a.queues.len(), a.acked_features));
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
            self.activated_with = None;
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<FakeDevice>>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let evt = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = Arc::new(Mutex::new(FakeDevice {
            queue_events: vec![evt(), evt()],
            interrupt: Interrupt::new(evt()),
            activated_with: None,
            resets: 0,
        }));
        (MmioTransport::new(mem, dev.clone()), dev)
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
        assert_eq!(
            dev.lock().unwrap().activated_with,
            Some((2, VIRTIO_F_VERSION_1 | 1 << 5))
        );
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
        assert!(dev.lock().unwrap().activated_with.is_none());
        // A ring outside guest memory is refused too.
        setup_queue(&mut t, 1, 0xfff0_0000);
        wr(&mut t, STATUS, 0);
        assert_eq!(dev.lock().unwrap().resets, 2, "one per negotiate, one now");
        assert_eq!(rd(&mut t, STATUS), 0);
    }

    #[test]
    fn interrupt_status_and_ack() {
        let (mut t, dev) = transport();
        dev.lock().unwrap().interrupt.signal(INTERRUPT_USED_RING);
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
}
