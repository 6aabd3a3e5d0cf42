//! The device behind its front, on a real event loop, with the fake TAP.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};

use super::*;
use crate::virtio::net::fake_tap::FakeTap;
use crate::virtio::net::{
    Net, NetConfig, NetError, TapError, TapSource, OFFLOAD_PROBES, RX_QUEUE, TUN_F_CSUM,
    TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TX_QUEUE, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS,
};
use crate::virtio::{
    ActivateError, Activation, VirtioDevice, VirtioFront, INTERRUPT_CONFIG_CHANGE,
    INTERRUPT_USED_RING,
};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

struct Device {
    rings: Rings,
    tap: FakeTap,
    front: VirtioFront<Net>,
    em: EventManager<Arc<Mutex<Net>>>,
}

impl Device {
    fn new(supported: u32, mtu: Option<u16>) -> Self {
        let tap = FakeTap::new(supported);
        let net = Net::with_backend(Box::new(tap.clone()), MAC, mtu).unwrap();
        let (front, worker) = VirtioFront::new(net).unwrap();
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(worker);
        let mut d = Self {
            rings: Rings::new(256),
            tap,
            front,
            em,
        };
        d.pump();
        d
    }

    fn activate(&mut self, features: u64) -> Result<(), ActivateError> {
        let r = self.front.activate(Activation {
            mem: self.rings.mem.clone(),
            queues: vec![self.rings.rx.queue(), self.rings.tx.queue()],
            acked_features: VIRTIO_F_VERSION_1 | features,
        });
        self.pump();
        r
    }

    /// Runs the device thread until it has nothing to do; returns the events it handled.
    fn pump(&mut self) -> usize {
        let mut total = 0;
        for _ in 0..100 {
            match self.em.run_with_timeout(0).unwrap() {
                0 => return total,
                n => total += n,
            }
        }
        panic!("the device thread is busy in a loop");
    }

    fn kick(&self, queue: usize) {
        self.front.queue_events()[queue].write(1).unwrap();
    }

    fn config(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.front.read_config(offset, &mut v);
        v
    }
}

#[test]
fn identity_features_and_config_space() {
    let d = Device::new(0, None);
    assert_eq!(d.front.device_type(), 1);
    assert_eq!(d.front.queue_max_sizes(), &[256, 256]);
    let f = d.front.features();
    for bit in [
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
    ] {
        assert_ne!(f & bit, 0, "{bit:#x}");
    }
    assert_eq!(f & (VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_MTU), 0);
    assert_eq!(d.config(0, 6), MAC);
    assert_eq!(d.config(6, 2), [1, 0], "link up");
    assert_eq!(d.config(8, 2), [1, 0], "one queue pair");

    let d = Device::new(OFFLOAD_PROBES[1], Some(9000));
    let f = d.front.features();
    assert_ne!(f & VIRTIO_NET_F_GUEST_TSO6, 0);
    assert_ne!(f & VIRTIO_NET_F_HOST_TSO4, 0);
    assert_ne!(f & VIRTIO_NET_F_MTU, 0);
    assert_eq!(d.config(10, 2), 9000u16.to_le_bytes());
}

#[test]
fn bad_configurations_are_refused() {
    let tap = || Box::new(FakeTap::new(0));
    for mac in [[1, 0, 0, 0, 0, 1], [0; 6], [0xff; 6]] {
        let e = Net::with_backend(tap(), mac, None).err().unwrap();
        assert!(matches!(e, NetError::InvalidMac(m) if m == mac), "{e}");
    }
    let e = Net::with_backend(tap(), MAC, Some(67)).err().unwrap();
    assert_eq!(e.to_string(), "MTU 67 is outside 68..=65535");
    let e = Net::new(NetConfig {
        tap: TapSource::from("no/such"),
        mac: MAC,
        mtu: None,
    })
    .err()
    .unwrap();
    assert!(matches!(e, NetError::Tap(TapError::InvalidName(_))), "{e}");
    assert_eq!(
        NetError::InvalidMac([1, 2, 3, 4, 5, 0xab]).to_string(),
        "MAC address 01:02:03:04:05:ab is multicast or all zeroes"
    );
}

#[test]
fn the_tap_offloads_follow_the_acked_features() {
    let mut d = Device::new(OFFLOAD_PROBES[0], None);
    let guest = VIRTIO_NET_F_GUEST_CSUM
        | VIRTIO_NET_F_GUEST_TSO4
        | VIRTIO_NET_F_GUEST_TSO6
        | VIRTIO_NET_F_GUEST_ECN;
    d.activate(guest).unwrap();
    assert_eq!(
        d.tap.state().offloads,
        TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
    );
    // A new driver that takes no offloads gets none.
    d.front.reset();
    d.activate(VIRTIO_NET_F_HOST_TSO4).unwrap();
    assert_eq!(d.tap.state().offloads, 0);
    // A TAP that will not: the device gives up on the driver (DEVICE_NEEDS_RESET)
    // rather than hand it frames it cannot take, and reads nothing.
    d.front.reset();
    d.tap.state().refuse_offloads = true;
    d.tap.push(frame([0; 12], 60, 0));
    d.rings.post_rx(0, 1, 1526);
    d.activate(guest).unwrap();
    assert!(d.front.interrupt().needs_reset());
    assert_eq!(d.tap.state().reads, 0);
}

#[test]
fn without_buffers_the_device_sleeps_until_the_driver_posts() {
    let mut d = Device::new(0, None);
    d.activate(VIRTIO_NET_F_MRG_RXBUF).unwrap();
    let frames: Vec<_> = (0..3).map(|i| frame([0; 12], 500, i)).collect();
    for f in &frames {
        d.tap.push(f.clone());
    }
    assert!(d.pump() > 0, "the TAP woke the device");
    assert_eq!(d.tap.state().reads, 0);
    assert_eq!(d.pump(), 0, "and it went back to sleep: no busy loop");
    assert_eq!(d.front.interrupt().status(), 0);
    d.rings.post_rx(0, 43, 1536);
    d.kick(RX_QUEUE);
    d.pump();
    let used = d.rings.rx.used();
    assert_eq!(used.len(), 1, "then room for one largest frame only");
    d.rings.post_rx(43, 3, 1536);
    d.kick(RX_QUEUE);
    d.pump();
    let used: Vec<_> = used.into_iter().chain(d.rings.rx.used()).collect();
    assert_eq!(used.len(), 3);
    for ((id, len), f) in used.into_iter().zip(&frames) {
        assert_eq!(
            read(&d.rings.mem, BUFS + u64::from(id) * 0x1_0000, len as usize)[12..],
            f[12..]
        );
    }
    assert_eq!(d.front.interrupt().status(), INTERRUPT_USED_RING);
    assert_eq!(d.front.interrupt().irqfd().read().unwrap(), 2);
}

#[test]
fn a_frame_the_tap_refused_goes_out_when_it_is_writable() {
    let mut d = Device::new(0, None);
    d.activate(0).unwrap();
    let f = frame([0; 12], 1000, 4);
    vm_memory::Bytes::write_slice(&d.rings.mem, &f, GuestAddress(BUFS)).unwrap();
    d.tap.state().block_writes = 1;
    d.rings.tx.post(&[(BUFS, f.len() as u32, false)]).unwrap();
    d.kick(TX_QUEUE);
    // The fake is writable again at once: the re-armed watch reports EPOLLOUT.
    d.pump();
    assert_eq!(d.tap.sent(), vec![f]);
    assert_eq!(d.rings.tx.used(), vec![(0, 0)]);
}

#[test]
fn a_broken_avail_ring_needs_a_reset_and_a_reset_heals() {
    let mut d = Device::new(0, None);
    d.activate(0).unwrap();
    d.rings.rx.set_avail_idx(300);
    d.kick(RX_QUEUE);
    d.pump();
    let irq = d.front.interrupt();
    assert!(irq.needs_reset());
    assert_ne!(irq.status() & INTERRUPT_CONFIG_CHANGE, 0);
    // Queues dropped: a frame for the guest is not read, tx is not looked at.
    d.tap.push(frame([0; 12], 60, 0));
    d.rings.tx.post(&[(BUFS, 100, false)]).unwrap();
    d.kick(TX_QUEUE);
    d.pump();
    assert_eq!(d.tap.state().reads, 0);
    assert!(d.tap.sent().is_empty());
    // The driver resets (the transport clears the interrupt state) and starts over.
    d.front.reset();
    d.front.interrupt().clear();
    d.rings = Rings::new(256);
    d.activate(0).unwrap();
    d.rings.rx.post(&[(BUFS, 1526, true)]).unwrap();
    d.kick(RX_QUEUE);
    d.pump();
    assert_eq!(d.rings.rx.used(), vec![(0, 72)]);
    assert!(!d.front.interrupt().needs_reset());
}

/// The Linux driver's sequence through the MMIO registers: every offered feature acked,
/// the MAC read from the config space, both queues set up, DRIVER_OK; then a frame.
#[test]
fn a_driver_brings_it_up_through_the_transport() {
    use crate::bus::BusDevice;
    use crate::virtio::mmio_regs::*;
    use crate::virtio::MmioTransport;

    let tap = FakeTap::new(OFFLOAD_PROBES[0]);
    let net = Net::with_backend(Box::new(tap.clone()), MAC, Some(1500)).unwrap();
    let (front, worker) = VirtioFront::new(net).unwrap();
    let mut em = EventManager::new().unwrap();
    em.add_subscriber(worker);
    let mut rings = Rings::new(256);
    let mut t = MmioTransport::new(rings.mem.clone(), Box::new(front));
    let rd = |t: &mut MmioTransport, at: u64| {
        let mut b = [0u8; 4];
        t.read(at, &mut b);
        u32::from_le_bytes(b)
    };
    let wr = |t: &mut MmioTransport, at: u64, v: u32| t.write(at, &v.to_le_bytes());
    assert_eq!(rd(&mut t, DEVICE_ID), 1);
    for status in [0, 1, 3] {
        wr(&mut t, STATUS, status);
    }
    for sel in 0..2 {
        wr(&mut t, DEVICE_FEATURES_SEL, sel);
        let offered = rd(&mut t, DEVICE_FEATURES);
        wr(&mut t, DRIVER_FEATURES_SEL, sel);
        wr(&mut t, DRIVER_FEATURES, offered);
    }
    wr(&mut t, STATUS, 0xb);
    assert_eq!(rd(&mut t, STATUS), 0xb, "FEATURES_OK kept");
    let mut mac = [0u8; 6];
    t.read(CONFIG_SPACE, &mut mac);
    assert_eq!(mac, MAC);
    for (q, ring) in [(0, &rings.rx), (1, &rings.tx)] {
        wr(&mut t, QUEUE_SEL, q);
        assert_eq!(rd(&mut t, QUEUE_NUM_MAX), 256);
        wr(&mut t, QUEUE_NUM, 256);
        for (low, addr) in [
            (QUEUE_DESC_LOW, ring.desc_table()),
            (QUEUE_DRIVER_LOW, ring.avail_ring()),
            (QUEUE_DEVICE_LOW, ring.used_ring()),
        ] {
            wr(&mut t, low, addr as u32);
        }
        wr(&mut t, QUEUE_READY, 1);
    }
    wr(&mut t, STATUS, 0xf);
    assert_eq!(rd(&mut t, STATUS), 0xf);
    let f = frame(net_hdr(1, 1, 54, 1448, 34, 16), 9000, 1);
    vm_memory::Bytes::write_slice(&rings.mem, &f, GuestAddress(BUFS)).unwrap();
    rings.tx.post(&[(BUFS, f.len() as u32, false)]).unwrap();
    wr(&mut t, QUEUE_NOTIFY, 1);
    while em.run_with_timeout(0).unwrap() > 0 {}
    assert_eq!(tap.sent(), vec![f]);
    assert_eq!(
        tap.state().offloads,
        OFFLOAD_PROBES[0],
        "every guest offload on"
    );
    assert_eq!(rd(&mut t, INTERRUPT_STATUS), INTERRUPT_USED_RING);
}
