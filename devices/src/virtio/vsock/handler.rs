//! Queue processing for virtio-vsock: tx chains become packets for the backend, backend
//! packets fill rx buffers. No file descriptors here, so it runs on a test driver with a
//! fake backend in tests.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::packet::{PacketHeader, RxBuffer, TxPacket};
use super::HEADER_LEN;
use crate::virtio::{collect_chain, notifications_off, notifications_on, pop_chain, QueueBroken};

/// Descriptors one packet or rx buffer may span. Linux uses two (header and payload), a
/// few more for zero-copy sends.
const MAX_CHAIN: usize = 64;

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;

/// Where packets go and come from (the Unix-socket muxer, or a fake in tests).
pub trait VsockBackend {
    /// A well-formed packet from the guest; its payload lies in guest memory.
    fn send_pkt(&mut self, pkt: &TxPacket, mem: &GuestMemoryMmap);
    /// A packet whose header was read but whose payload was unusable.
    fn bad_pkt(&mut self, hdr: &PacketHeader);
    /// The next packet for the guest: the backend writes the payload into `buf` and
    /// returns the header (the handler writes it). `None` when there is nothing to send.
    fn recv_pkt(&mut self, buf: &RxBuffer, mem: &GuestMemoryMmap) -> Option<PacketHeader>;
    /// Whether `recv_pkt` may have something (a cheap hint, checked before taking a buffer).
    fn has_pending_rx(&self) -> bool;
}

/// The active queues of a vsock device. The event queue is left alone: nothing we do
/// needs its buffers.
pub struct VsockHandler {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    /// Reused for every chain: no allocation per packet on the hot path.
    descs: Vec<Descriptor>,
    tx_pkt: TxPacket,
    rx_buf: RxBuffer,
}

impl VsockHandler {
    pub fn new(mem: GuestMemoryMmap, rx: Queue, tx: Queue) -> Self {
        Self {
            mem,
            rx,
            tx,
            descs: Vec::new(),
            tx_pkt: TxPacket::default(),
            rx_buf: RxBuffer::default(),
        }
    }

    /// Hands every tx chain to the backend; returns whether the driver must be interrupted.
    /// The backend always takes a packet (it buffers within the credit it advertised, or
    /// resets the connection), so the tx queue never stalls. A broken avail ring is an
    /// error: the caller drops the queues.
    pub fn process_tx(&mut self, backend: &mut dyn VsockBackend) -> Result<bool, QueueBroken> {
        let mut used = false;
        loop {
            notifications_off(&mut self.tx, &self.mem, "virtio-vsock tx");
            while let Some(chain) = pop_chain(&mut self.tx, &self.mem)? {
                let head = chain.head_index();
                if let Err(e) = collect_chain(chain, &mut self.descs, MAX_CHAIN) {
                    log::debug!("virtio-vsock: tx {e}; dropped");
                } else {
                    self.send_tx_packet(backend);
                }
                if let Err(e) = self.tx.add_used(&self.mem, head, 0) {
                    log::warn!("virtio-vsock: cannot return tx descriptor {head}: {e}");
                }
                used = true;
            }
            if !notifications_on(&mut self.tx, &self.mem, "virtio-vsock tx") {
                break;
            }
        }
        Ok(used && self.tx.needs_notification(&self.mem).unwrap_or(true))
    }

    /// The chain in `self.descs`, to the backend.
    fn send_tx_packet(&mut self, backend: &mut dyn VsockBackend) {
        match self.tx_pkt.parse(&self.descs, &self.mem) {
            Ok(()) => backend.send_pkt(&self.tx_pkt, &self.mem),
            Err(e) => {
                log::debug!("virtio-vsock: malformed tx packet: {e}");
                if self.tx_pkt.header_ok() {
                    backend.bad_pkt(self.tx_pkt.hdr());
                }
            }
        }
    }

    /// Fills rx buffers while the backend has packets; returns whether the driver must be
    /// interrupted. Out of buffers, it stops: the driver's next rx notification resumes it.
    pub fn process_rx(&mut self, backend: &mut dyn VsockBackend) -> Result<bool, QueueBroken> {
        let mut used = false;
        while backend.has_pending_rx() {
            let Some(chain) = pop_chain(&mut self.rx, &self.mem)? else {
                break;
            };
            let head = chain.head_index();
            let parsed = collect_chain(chain, &mut self.descs, MAX_CHAIN)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    self.rx_buf
                        .parse(&self.descs, &self.mem)
                        .map_err(|e| e.to_string())
                });
            let len = match parsed {
                Err(e) => {
                    log::debug!("virtio-vsock: unusable rx buffer returned empty: {e}");
                    0
                }
                Ok(()) => {
                    let Some(hdr) = backend.recv_pkt(&self.rx_buf, &self.mem) else {
                        // Nothing after all: the buffer stays with us for next time.
                        self.rx.go_to_previous_position();
                        break;
                    };
                    match self.rx_buf.write_header(&hdr, &self.mem) {
                        Ok(()) => HEADER_LEN as u32 + hdr.len,
                        Err(e) => {
                            log::warn!("virtio-vsock: packet for the guest lost: {e}");
                            0
                        }
                    }
                }
            };
            if let Err(e) = self.rx.add_used(&self.mem, head, len) {
                log::warn!("virtio-vsock: cannot return rx descriptor {head}: {e}");
            }
            used = true;
        }
        Ok(used && self.rx.needs_notification(&self.mem).unwrap_or(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::vsock::test_utils::{guest_memory, TestDriver};
    use crate::virtio::vsock::{VSOCK_OP_RST, VSOCK_OP_RW, VSOCK_TYPE_STREAM};
    use vm_memory::{Bytes, GuestAddress};

    /// Records what the guest sent; answers with canned packets.
    #[derive(Default)]
    struct FakeBackend {
        sent: Vec<(PacketHeader, Vec<u8>)>,
        bad: Vec<PacketHeader>,
        to_guest: Vec<(PacketHeader, Vec<u8>)>,
    }

    impl VsockBackend for FakeBackend {
        fn send_pkt(&mut self, pkt: &TxPacket, mem: &GuestMemoryMmap) {
            let mut data = Vec::new();
            for &(addr, len) in pkt.payload() {
                let mut piece = vec![0; len as usize];
                mem.read_slice(&mut piece, addr).unwrap();
                data.extend(piece);
            }
            self.sent.push((*pkt.hdr(), data));
        }
        fn bad_pkt(&mut self, hdr: &PacketHeader) {
            self.bad.push(*hdr);
        }
        fn recv_pkt(&mut self, buf: &RxBuffer, mem: &GuestMemoryMmap) -> Option<PacketHeader> {
            if self.to_guest.is_empty() {
                return None;
            }
            let (hdr, data) = self.to_guest.remove(0);
            let mut src: &[u8] = &data;
            let n = buf
                .read_payload_from(mem, &mut src, data.len())
                .unwrap_or(0);
            Some(PacketHeader {
                len: n as u32,
                ..hdr
            })
        }
        fn has_pending_rx(&self) -> bool {
            !self.to_guest.is_empty()
        }
    }

    fn hdr(op: u16, len: u32) -> PacketHeader {
        PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1000,
            dst_port: 2000,
            len,
            socket_type: VSOCK_TYPE_STREAM,
            op,
            ..PacketHeader::default()
        }
    }

    const BUF: u64 = 0x10_0000;

    #[test]
    fn tx_packets_reach_the_backend_and_malformed_ones_do_not_stop_the_queue() {
        let mem = guest_memory();
        let mut tx = TestDriver::new(&mem, 0x1_0000, 16);
        let mut handler = VsockHandler::new(
            mem.clone(),
            TestDriver::new(&mem, 0, 16).queue(),
            tx.queue(),
        );
        let put =
            |at: u64, h: PacketHeader| mem.write_slice(&h.to_bytes(), GuestAddress(at)).unwrap();
        put(BUF, hdr(VSOCK_OP_RW, 5));
        mem.write_slice(b"hello", GuestAddress(BUF + 0x100))
            .unwrap();
        put(BUF + 0x1000, hdr(VSOCK_OP_RW, 100));
        put(BUF + 0x2000, hdr(VSOCK_OP_RST, 0));
        tx.post(&[(BUF, 44, false), (BUF + 0x100, 5, false)]);
        // Short header, wrong direction, outside memory: dropped, nothing to reset.
        tx.post(&[(BUF, 40, false)]);
        tx.post(&[(BUF, 44, true)]);
        tx.post(&[(0xF000_0000, 44, false)]);
        // Payload longer than the chain: the named connection is reset.
        tx.post(&[(BUF + 0x1000, 44, false), (BUF + 0x100, 50, false)]);
        tx.post(&[(BUF + 0x2000, 44, false)]);
        let mut backend = FakeBackend::default();
        assert!(handler.process_tx(&mut backend).unwrap());
        assert_eq!(tx.used().len(), 6);
        assert_eq!(backend.sent.len(), 2);
        assert_eq!(backend.sent[0], (hdr(VSOCK_OP_RW, 5), b"hello".to_vec()));
        assert_eq!(backend.sent[1].0.op, VSOCK_OP_RST);
        assert_eq!(backend.bad, vec![hdr(VSOCK_OP_RW, 100)]);
    }

    #[test]
    fn rx_buffers_are_filled_until_either_side_runs_out() {
        let mem = guest_memory();
        let mut rx = TestDriver::new(&mem, 0, 16);
        let tx = TestDriver::new(&mem, 0x1_0000, 16);
        let mut handler = VsockHandler::new(mem.clone(), rx.queue(), tx.queue());
        let mut backend = FakeBackend {
            to_guest: (0..3)
                .map(|i| (hdr(VSOCK_OP_RW, 0), vec![i as u8; 10]))
                .collect(),
            ..FakeBackend::default()
        };
        // No buffers: nothing happens, and nothing is lost.
        assert!(!handler.process_rx(&mut backend).unwrap());
        assert_eq!(backend.to_guest.len(), 3);
        // An unusable buffer is returned empty; a good one carries a packet.
        rx.post(&[(BUF, 100, false)]);
        rx.post(&[(BUF + 0x1000, 100, true)]);
        assert!(handler.process_rx(&mut backend).unwrap());
        assert_eq!(rx.used(), vec![(0, 0), (1, 54)]);
        let mut raw = [0u8; 54];
        mem.read_slice(&mut raw, GuestAddress(BUF + 0x1000))
            .unwrap();
        let got = PacketHeader::from_bytes(raw[..44].try_into().unwrap());
        assert_eq!((got.op, got.len), (VSOCK_OP_RW, 10));
        assert_eq!(&raw[44..], &[0u8; 10]);
        // Two more buffers than packets: the spare one stays posted.
        for i in 0..3 {
            rx.post(&[(BUF + 0x2000 + i * 0x1000, 100, true)]);
        }
        assert!(handler.process_rx(&mut backend).unwrap());
        assert_eq!(rx.used().len(), 2);
        backend.to_guest.push((hdr(VSOCK_OP_RST, 0), Vec::new()));
        assert!(handler.process_rx(&mut backend).unwrap());
        assert_eq!(rx.used(), vec![(4, 44)]);
    }
}
