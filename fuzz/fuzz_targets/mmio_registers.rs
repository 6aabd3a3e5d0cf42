//! virtio-mmio register accesses against a real device (virtio-blk on an in-memory disk,
//! or virtio-vsock with its Unix socket) behind its `MmioTransport` on a `Bus`, as a vCPU
//! makes them, with the device thread's event loop running in between: feature
//! negotiation, queue setup, status changes and resets in any order, notifies, and chains
//! posted on queues in the guest memory the input also fills.
//!
//! Input: a device byte (bit 0: vsock; bit 1: read-only disk), then operations, each an
//! opcode byte and its operands (see `step`).

#![no_main]

use std::sync::{Arc, Mutex};

use devices::bus::Bus;
use devices::virtio::block::{Block, RawFile};
use devices::virtio::mmio_regs::*;
use devices::virtio::vsock::{Vsock, VsockConfig};
use devices::virtio::{MmioTransport, QueueWorker, VirtioFront, MMIO_WINDOW_SIZE};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_fuzz::{guest_memory, memfd_disk, Reader, Ring};

const MEM: u64 = 1 << 20;
const BASE: u64 = 0xd000_0000;
const QUEUE_AREA: u64 = 0x1_0000;

/// Every register of the window, and the first config-space bytes.
const REGISTERS: [u64; 27] = [
    MAGIC_VALUE,
    VERSION,
    DEVICE_ID,
    VENDOR_ID,
    DEVICE_FEATURES,
    DEVICE_FEATURES_SEL,
    DRIVER_FEATURES,
    DRIVER_FEATURES_SEL,
    QUEUE_SEL,
    QUEUE_NUM_MAX,
    QUEUE_NUM,
    QUEUE_READY,
    QUEUE_NOTIFY,
    INTERRUPT_STATUS,
    INTERRUPT_ACK,
    STATUS,
    QUEUE_DESC_LOW,
    QUEUE_DESC_HIGH,
    QUEUE_DRIVER_LOW,
    QUEUE_DRIVER_HIGH,
    QUEUE_DEVICE_LOW,
    QUEUE_DEVICE_HIGH,
    CONFIG_GENERATION,
    CONFIG_SPACE,
    CONFIG_SPACE + 4,
    CONFIG_SPACE + 8,
    CONFIG_SPACE + 0x10,
];

struct Guest<W: QueueWorker + MutEventSubscriber> {
    mem: GuestMemoryMmap,
    bus: Bus,
    em: EventManager<Arc<Mutex<W>>>,
    rings: Vec<Ring>,
}

impl<W: QueueWorker + MutEventSubscriber> Guest<W> {
    fn new(mem: GuestMemoryMmap, worker: W) -> Self {
        let (front, worker) = VirtioFront::new(worker).expect("front");
        let transport = MmioTransport::new(mem.clone(), Box::new(front));
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(transport)), BASE, MMIO_WINDOW_SIZE)
            .expect("bus");
        let mut em = EventManager::new().expect("event manager");
        em.add_subscriber(worker);
        Self {
            mem,
            bus,
            em,
            rings: Vec::new(),
        }
    }

    fn write(&self, offset: u64, value: u32) {
        self.bus.write(BASE + offset, &value.to_le_bytes());
    }

    fn read(&self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.bus.read(BASE + offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// The device thread's turn: whatever its eventfds have.
    fn run_device(&mut self) {
        for _ in 0..8 {
            if self.em.run_with_timeout(0).expect("event loop") == 0 {
                break;
            }
        }
    }

    /// The Linux driver's sequence: reset, features (the device's, masked by the input),
    /// every queue at its own place with a size from the input, then DRIVER_OK.
    fn initialize(&mut self, r: &mut Reader) {
        let mask = r.u64();
        self.write(STATUS, 0);
        self.write(STATUS, 1);
        self.write(STATUS, 3);
        for sel in 0..2u32 {
            self.write(DEVICE_FEATURES_SEL, sel);
            let offered = self.read(DEVICE_FEATURES);
            self.write(DRIVER_FEATURES_SEL, sel);
            self.write(DRIVER_FEATURES, offered & (mask >> (32 * sel)) as u32);
        }
        self.write(STATUS, 0xb);
        self.rings.clear();
        for q in 0..8u32 {
            self.write(QUEUE_SEL, q);
            let max = self.read(QUEUE_NUM_MAX);
            if max == 0 {
                break;
            }
            let size = (1u32 << (r.u8() % 9)).min(max) as u16;
            let base = QUEUE_AREA * (u64::from(q) + 1);
            let ring = Ring::new(&self.mem, base, size);
            self.write(QUEUE_NUM, u32::from(size));
            for (low, high, addr) in [
                (QUEUE_DESC_LOW, QUEUE_DESC_HIGH, ring.desc_table()),
                (QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH, ring.avail_ring()),
                (QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH, ring.used_ring()),
            ] {
                self.write(low, addr as u32);
                self.write(high, (addr >> 32) as u32);
            }
            self.write(QUEUE_READY, 1);
            self.rings.push(ring);
        }
        self.write(STATUS, 0xf);
        self.run_device();
    }

    fn step(&mut self, r: &mut Reader) {
        let op = r.u8();
        let offset = match r.u8() {
            b @ 0..=0xdf => REGISTERS[usize::from(b) % REGISTERS.len()],
            _ => u64::from(r.u16() % 0x1100),
        };
        match op % 6 {
            // A 32-bit write.
            0 => self.write(offset, r.u32()),
            // A write of another size (ignored by registers, taken by config space).
            1 => {
                let size = [1, 2, 8, 3][usize::from(r.u8() % 4)];
                let bytes = r.bytes(size).to_vec();
                self.bus.write(BASE + offset, &bytes);
            }
            // A read of any size.
            2 => {
                let size = [4, 1, 2, 8][usize::from(r.u8() % 4)];
                let mut bytes = vec![0u8; size];
                self.bus.read(BASE + offset, &mut bytes);
            }
            // Guest memory contents (rings included).
            3 => {
                let at = u64::from(r.u32()) % MEM;
                let bytes = r.long_bytes(4096);
                let _ = self.mem.write_slice(bytes, GuestAddress(at));
            }
            // The whole driver initialization.
            4 => self.initialize(r),
            // A chain on a queue set up by `initialize`, then a notify.
            _ => {
                let q = usize::from(r.u8());
                let n = r.u8() % 4 + 1;
                let chain: Vec<_> = (0..n)
                    .map(|_| {
                        (
                            u64::from(r.u32()) % MEM,
                            r.u32() % 0x1_0000,
                            r.u8() & 1 != 0,
                        )
                    })
                    .collect();
                if !self.rings.is_empty() {
                    let q = q % self.rings.len();
                    self.rings[q].post(&chain);
                    self.write(QUEUE_NOTIFY, q as u32);
                    self.run_device();
                    self.rings[q].used();
                }
            }
        }
        self.run_device();
    }

    fn run(&mut self, r: &mut Reader) {
        for _ in 0..128 {
            if r.is_empty() {
                break;
            }
            self.step(r);
        }
    }
}

fuzz_target!(init: vmm_fuzz::ignore_sigpipe(), |data: &[u8]| {
    let mut r = Reader::new(data);
    let device = r.u8();
    let mem = guest_memory(MEM);
    if device & 1 == 0 {
        let engine = RawFile::new(memfd_disk(64 << 10)).expect("memfd disk");
        let block = Block::with_engine(std::sync::Arc::new(engine), device & 2 != 0, "fuzz").expect("block");
        Guest::new(mem, block).run(&mut r);
    } else {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = VsockConfig {
            guest_cid: 3,
            uds_path: dir.path().join("v.sock"),
        };
        let vsock = Vsock::new(&config).expect("vsock");
        Guest::new(mem, vsock).run(&mut r);
    }
});
