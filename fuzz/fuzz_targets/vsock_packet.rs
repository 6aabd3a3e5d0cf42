//! virtio-vsock packets and the Unix-socket muxer: a sequence of guest packets (tx chains
//! in any layout), rx buffers, and host-side socket actions (clients with their CONNECT
//! lines, services listening on `<uds>_<port>`, reads, writes, hang-ups), run through the
//! real `VsockHandler` and `Muxer` as the device thread would.
//!
//! Input: a sequence of operations, each an opcode byte and its operands (see `Op`).
//! Oracles: every used rx buffer carries a well-formed packet from the host to the guest
//! that fits the buffer; used ids are chains the driver posted.

#![no_main]

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use devices::virtio::vsock::{
    Muxer, PacketHeader, VsockHandler, HEADER_LEN, HOST_CID, MAX_PAYLOAD,
};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_fuzz::{guest_memory, Reader, Ring};

const GUEST_CID: u64 = 3;
const MEM: u64 = 8 << 20;
const QUEUE_SIZE: u16 = 64;
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x1_0000;
const RINGS_END: u64 = 0x2_0000;
const SLOT: u64 = 0x1_1000;
const SLOTS: u64 = 16;
const TX_BUFS: u64 = 0x10_0000;
const RX_BUFS: u64 = 0x40_0000;
/// Ports the operations pick from, so that packets and sockets meet.
const PORTS: [u32; 6] = [1024, 1025, 1026, 52, 5000, 4242];

fn port(r: &mut Reader) -> u32 {
    match r.u8() {
        b @ 0..=0xef => PORTS[usize::from(b) % PORTS.len()],
        _ => r.u32(),
    }
}

struct World {
    dir: tempfile::TempDir,
    uds: PathBuf,
    mem: GuestMemoryMmap,
    muxer: Muxer,
    rx: Ring,
    tx: Ring,
    /// `None` after a broken queue, until the driver resets the device.
    handler: Option<VsockHandler>,
    rx_bufs: HashMap<u32, (u64, u32)>,
    tx_posted: HashSet<u32>,
    rx_next: u64,
    tx_next: u64,
    streams: Vec<UnixStream>,
    listeners: HashMap<u32, UnixListener>,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = dir.path().join("v.sock");
        let mem = guest_memory(MEM);
        let muxer = Muxer::new(GUEST_CID, uds.clone()).expect("muxer");
        let rx = Ring::new(&mem, RX_RING, QUEUE_SIZE);
        let tx = Ring::new(&mem, TX_RING, QUEUE_SIZE);
        let handler = Some(VsockHandler::new(mem.clone(), rx.queue(), tx.queue()));
        Self {
            dir,
            uds,
            mem,
            muxer,
            rx,
            tx,
            handler,
            rx_bufs: HashMap::new(),
            tx_posted: HashSet::new(),
            rx_next: 0,
            tx_next: 0,
            streams: Vec::new(),
            listeners: HashMap::new(),
        }
    }

    /// The driver reset the device and set it up again.
    fn reset(&mut self) {
        self.muxer.reset();
        self.rx = Ring::new(&self.mem, RX_RING, QUEUE_SIZE);
        self.tx = Ring::new(&self.mem, TX_RING, QUEUE_SIZE);
        self.rx_bufs.clear();
        self.tx_posted.clear();
        self.handler = Some(VsockHandler::new(
            self.mem.clone(),
            self.rx.queue(),
            self.tx.queue(),
        ));
    }

    fn tx_slot(&mut self) -> u64 {
        self.tx_next += 1;
        TX_BUFS + (self.tx_next % SLOTS) * SLOT
    }

    /// What the device thread does on a tx kick: tx, then the answers on rx.
    fn kick_tx(&mut self) {
        let Some(handler) = self.handler.as_mut() else {
            return;
        };
        let result = handler
            .process_tx(&mut self.muxer)
            .and_then(|_| handler.process_rx(&mut self.muxer));
        if result.is_err() {
            self.handler = None;
            self.muxer.reset();
        }
        self.collect();
    }

    /// What the device thread does on an rx kick or a host socket event.
    fn kick_rx(&mut self, host_event: bool) {
        if host_event {
            // The device's event loop calls again while the muxer's epoll fd is readable:
            // a client accepted in one call has its CONNECT line read in the next.
            for _ in 0..3 {
                self.muxer.process_events();
            }
        }
        let Some(handler) = self.handler.as_mut() else {
            return;
        };
        if handler.process_rx(&mut self.muxer).is_err() {
            self.handler = None;
            self.muxer.reset();
        }
        self.collect();
    }

    /// Takes the used entries of both queues and checks what the device gave the guest.
    fn collect(&mut self) {
        for (id, _) in self.tx.used() {
            assert!(self.tx_posted.remove(&id), "tx id {id} not posted");
        }
        for (id, len) in self.rx.used() {
            let (addr, cap) = self
                .rx_bufs
                .remove(&id)
                .unwrap_or_else(|| panic!("rx id {id} not posted"));
            assert!(
                len <= cap,
                "rx packet of {len} bytes in a {cap}-byte buffer"
            );
            if len == 0 {
                continue;
            }
            let mut raw = [0u8; HEADER_LEN];
            self.mem
                .read_slice(&mut raw, GuestAddress(addr))
                .expect("rx buffer");
            let hdr = PacketHeader::from_bytes(&raw);
            assert_eq!(u64::from(hdr.len) + HEADER_LEN as u64, u64::from(len));
            assert!(hdr.len <= MAX_PAYLOAD);
            assert_eq!((hdr.src_cid, hdr.dst_cid), (HOST_CID, GUEST_CID));
            assert!((1..=7).contains(&hdr.op), "op {}", hdr.op);
        }
    }

    fn post_tx(&mut self, chain: &[(u64, u32, bool)]) {
        if let Some(head) = self.tx.post(chain) {
            self.tx_posted.insert(u32::from(head));
        }
        self.kick_tx();
    }

    fn service_path(&self, port: u32) -> PathBuf {
        let mut s = self.uds.clone().into_os_string();
        s.push(format!("_{port}"));
        PathBuf::from(s)
    }

    fn stream(&mut self, r: &mut Reader) -> Option<usize> {
        let i = usize::from(r.u8());
        (!self.streams.is_empty()).then(|| i % self.streams.len())
    }

    fn step(&mut self, r: &mut Reader) {
        match r.u8() % 10 {
            // A packet: header fields, payload and how the chain splits them.
            0 => {
                let sel = r.u8();
                let mut hdr = PacketHeader {
                    src_cid: if sel & 0x80 != 0 { r.u64() } else { GUEST_CID },
                    dst_cid: if sel & 0x40 != 0 { r.u64() } else { HOST_CID },
                    src_port: port(r),
                    dst_port: port(r),
                    socket_type: if sel & 0x20 != 0 { r.u16() } else { 1 },
                    op: u16::from(r.u8() % 9),
                    flags: u32::from(r.u8()),
                    buf_alloc: r.u32(),
                    fwd_cnt: r.u32(),
                    len: 0,
                };
                let payload = r.long_bytes(MAX_PAYLOAD as usize + 16);
                hdr.len = if sel & 0x10 != 0 {
                    r.u32()
                } else {
                    payload.len() as u32
                };
                let split = usize::from(r.u8());
                let mut bytes = hdr.to_bytes().to_vec();
                bytes.extend_from_slice(payload);
                let at = self.tx_slot();
                self.mem
                    .write_slice(&bytes, GuestAddress(at))
                    .expect("tx slot");
                // One descriptor, header | payload, or a cut anywhere in the first 64 bytes.
                let cut = match sel & 3 {
                    0 => bytes.len(),
                    1 => HEADER_LEN.min(bytes.len()),
                    _ => split.min(bytes.len()) % 64,
                };
                let total = bytes.len() as u32;
                let mut chain = vec![(at, cut as u32, sel & 4 != 0)];
                if cut < bytes.len() {
                    chain.push((at + cut as u64, total - cut as u32, false));
                }
                self.post_tx(&chain);
            }
            // A raw tx chain: up to 4 descriptors anywhere.
            1 => {
                let n = r.u8() % 4 + 1;
                let chain: Vec<_> = (0..n)
                    .map(|_| {
                        (
                            r.u64() % (MEM + 0x1000),
                            r.u32() % 0x2_0000,
                            r.u8() & 1 != 0,
                        )
                    })
                    .collect();
                self.post_tx(&chain);
            }
            // Guest memory contents (not the rings: the driver owns those).
            2 => {
                let at = RINGS_END + u64::from(r.u32()) % (MEM - RINGS_END);
                let bytes = r.long_bytes(4096);
                let _ = self.mem.write_slice(bytes, GuestAddress(at));
            }
            // Rx buffers: count, length, direction.
            3 => {
                let n = r.u8() % 4 + 1;
                let len = u32::from(r.u16()) + u32::from(r.u8() & 1) * MAX_PAYLOAD;
                let writable = r.u8() & 0x80 == 0;
                for _ in 0..n {
                    self.rx_next += 1;
                    let at = RX_BUFS + (self.rx_next % SLOTS) * SLOT;
                    let len = len.min(SLOT as u32);
                    if let Some(head) = self.rx.post(&[(at, len, writable)]) {
                        let cap = if writable { len } else { 0 };
                        self.rx_bufs.insert(u32::from(head), (at, cap));
                    }
                }
                self.kick_rx(false);
            }
            // A host client connects and writes its first bytes (the CONNECT line).
            4 => {
                let line = r.short_bytes();
                if let Ok(mut s) = UnixStream::connect(&self.uds) {
                    let _ = s.set_nonblocking(true);
                    let _ = s.write(line);
                    self.streams.push(s);
                }
                self.kick_rx(true);
            }
            // A host stream writes.
            5 => {
                let i = self.stream(r);
                let data = r.long_bytes(1 << 16);
                if let Some(i) = i {
                    let _ = self.streams[i].write(data);
                }
                self.kick_rx(true);
            }
            // A host stream reads what is there.
            6 => {
                if let Some(i) = self.stream(r) {
                    let mut buf = vec![0u8; 1 << 16];
                    for _ in 0..16 {
                        if !matches!(self.streams[i].read(&mut buf), Ok(n) if n > 0) {
                            break;
                        }
                    }
                }
                self.kick_rx(true);
            }
            // A host stream shuts down its write side, or goes away.
            7 => {
                let how = r.u8();
                if let Some(i) = self.stream(r) {
                    if how & 1 == 0 {
                        let _ = self.streams[i].shutdown(Shutdown::Write);
                    } else {
                        self.streams.swap_remove(i);
                    }
                }
                self.kick_rx(true);
            }
            // A host service listens on a port, or accepts what connected to it.
            8 => {
                let p = port(r);
                if let Some(l) = self.listeners.get(&p) {
                    while let Ok((s, _)) = l.accept() {
                        let _ = s.set_nonblocking(true);
                        self.streams.push(s);
                    }
                } else if let Ok(l) = UnixListener::bind(self.service_path(p)) {
                    let _ = l.set_nonblocking(true);
                    self.listeners.insert(p, l);
                }
                self.kick_rx(true);
            }
            // The driver resets the device.
            _ => self.reset(),
        }
    }
}

fuzz_target!(init: vmm_fuzz::ignore_sigpipe(), |data: &[u8]| {
    let mut r = Reader::new(data);
    let mut world = World::new();
    for _ in 0..64 {
        if r.is_empty() {
            break;
        }
        world.step(&mut r);
    }
    assert!(world.dir.path().exists());
});
