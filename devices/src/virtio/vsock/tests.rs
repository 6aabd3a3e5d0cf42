//! End-to-end tests: the device on a real event manager, the test acting as the guest driver
//! on rx/tx queues in guest memory, and real Unix sockets in a temporary directory.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::test_utils::{guest_memory, TestDriver};
use super::*;
use crate::virtio::{Activation, VirtioDevice, VirtioFront, VIRTIO_F_VERSION_1};

const GUEST_CID: u64 = 3;
const RX_BUFS: u64 = 0x10_0000;
const RX_SLOT: u64 = 0x2000;
const RX_BUF_LEN: u32 = 4096 + HEADER_LEN as u32;
const TX_BUFS: u64 = 0x40_0000;
const TX_SLOT: u64 = 0x1_1000;
/// What our test guest advertises per connection.
const GUEST_BUF_ALLOC: u32 = 64 * 1024;
const OUR_BUF_ALLOC: u32 = 256 * 1024;
const WAIT: Duration = Duration::from_secs(5);

type Pkt = (PacketHeader, Vec<u8>);

struct Guest {
    _dir: tempfile::TempDir,
    uds: PathBuf,
    mem: GuestMemoryMmap,
    rx: TestDriver,
    tx: TestDriver,
    front: VirtioFront<Vsock>,
    dev: Arc<Mutex<Vsock>>,
    em: EventManager<Arc<Mutex<Vsock>>>,
    rx_kick: EventFd,
    tx_kick: EventFd,
    rx_free: Vec<u64>,
    rx_posted: HashMap<u32, u64>,
    tx_free: Vec<u64>,
    tx_posted: HashMap<u32, u64>,
    rx_budget: usize,
    inbox: VecDeque<Pkt>,
}

impl Guest {
    /// A device with an active driver that keeps `rx_budget` rx buffers posted.
    fn new(rx_budget: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let dev = Vsock::new(&VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: uds.clone(),
        })
        .unwrap();
        let mem = guest_memory();
        let rx = TestDriver::new(&mem, 0, 256);
        let tx = TestDriver::new(&mem, 0x1_0000, 256);
        let evt = TestDriver::new(&mem, 0x2_0000, 256);
        let (front, dev) = VirtioFront::new(dev).unwrap();
        let rx_kick = front.queue_events()[0].try_clone().unwrap();
        let tx_kick = front.queue_events()[1].try_clone().unwrap();
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        let mut g = Self {
            _dir: dir,
            uds,
            mem: mem.clone(),
            rx_free: (0..256).rev().map(|i| RX_BUFS + i * RX_SLOT).collect(),
            tx_free: (0..128).rev().map(|i| TX_BUFS + i * TX_SLOT).collect(),
            rx,
            tx,
            front,
            dev,
            em,
            rx_kick,
            tx_kick,
            rx_posted: HashMap::new(),
            tx_posted: HashMap::new(),
            rx_budget,
            inbox: VecDeque::new(),
        };
        g.refill();
        let queues = vec![g.rx.queue(), g.tx.queue(), evt.queue()];
        g.front
            .activate(Activation {
                mem,
                queues,
                acked_features: VIRTIO_F_VERSION_1,
            })
            .unwrap();
        g.pump();
        g
    }

    fn pump(&mut self) {
        for _ in 0..1000 {
            if self.em.run_with_timeout(0).unwrap() == 0 {
                return;
            }
        }
    }

    fn refill(&mut self) {
        let mut posted = false;
        while self.rx_posted.len() < self.rx_budget {
            let addr = self.rx_free.pop().unwrap();
            let head = self
                .rx
                .post(&[(addr, RX_BUF_LEN, true)])
                .expect("room in the rx ring");
            self.rx_posted.insert(u32::from(head), addr);
            posted = true;
        }
        if posted {
            self.rx_kick.write(1).unwrap();
        }
    }

    /// Runs the device, moves what it put in rx buffers to the inbox, reposts buffers.
    fn poll(&mut self) {
        self.pump();
        loop {
            let used = self.rx.used();
            if used.is_empty() {
                break;
            }
            for (head, len) in used {
                let addr = self.rx_posted.remove(&head).unwrap();
                assert!(len as usize >= HEADER_LEN, "short rx packet: {len}");
                let mut raw = vec![0u8; len as usize];
                self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
                let hdr = PacketHeader::from_bytes(raw[..HEADER_LEN].try_into().unwrap());
                assert_eq!(hdr.len as usize, raw.len() - HEADER_LEN);
                assert_eq!((hdr.src_cid, hdr.dst_cid), (HOST_CID, GUEST_CID));
                assert_eq!(hdr.socket_type, VSOCK_TYPE_STREAM);
                self.inbox.push_back((hdr, raw.split_off(HEADER_LEN)));
                self.rx_free.push(addr);
            }
            self.refill();
            self.pump();
        }
        for (head, _) in self.tx.used() {
            self.tx_free.push(self.tx_posted.remove(&head).unwrap());
        }
    }

    /// Polls until the inbox holds `n` packets.
    fn wait(&mut self, n: usize) {
        let start = Instant::now();
        loop {
            self.poll();
            if self.inbox.len() >= n {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "timed out with {} of {n} packets",
                self.inbox.len()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn next(&mut self) -> Pkt {
        self.wait(1);
        self.inbox.pop_front().unwrap()
    }

    /// Polls a little and checks that nothing arrived.
    fn quiet(&mut self) {
        for _ in 0..5 {
            self.poll();
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(
            self.inbox.is_empty(),
            "unexpected: {:?}",
            self.inbox.front()
        );
    }

    /// Posts a packet on the tx queue (header and payload in separate descriptors, as
    /// Linux does) and runs the device.
    fn send(&mut self, hdr: PacketHeader, payload: &[u8]) {
        let slot = self.tx_free.pop().unwrap();
        let hdr = PacketHeader {
            len: payload.len() as u32,
            ..hdr
        };
        self.send_raw(slot, &hdr.to_bytes(), payload);
    }

    fn send_raw(&mut self, slot: u64, header: &[u8], payload: &[u8]) {
        self.mem.write_slice(header, GuestAddress(slot)).unwrap();
        self.mem
            .write_slice(payload, GuestAddress(slot + 0x100))
            .unwrap();
        let mut chain = vec![(slot, header.len() as u32, false)];
        if !payload.is_empty() {
            chain.push((slot + 0x100, payload.len() as u32, false));
        }
        let head = self.tx.post(&chain).expect("room in the tx ring");
        self.tx_posted.insert(u32::from(head), slot);
        self.tx_kick.write(1).unwrap();
        self.poll();
    }

    fn conns(&self) -> usize {
        self.dev.lock().unwrap().connection_count()
    }

    /// A host client that has not said anything yet.
    fn raw_client(&self) -> UnixStream {
        let s = UnixStream::connect(&self.uds).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s
    }

    /// A host client asking for guest port `port`.
    fn client(&self, port: u32) -> UnixStream {
        let mut s = self.raw_client();
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        s
    }
}

/// A header from the guest.
fn pkt(op: u16, src_port: u32, dst_port: u32, fwd_cnt: u32) -> PacketHeader {
    PacketHeader {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        socket_type: VSOCK_TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: GUEST_BUF_ALLOC,
        fwd_cnt,
    }
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

/// Reads `n` bytes from a host socket while running the device.
fn drain(g: &mut Guest, s: &mut UnixStream, n: usize) -> Vec<u8> {
    s.set_nonblocking(true).unwrap();
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while out.len() < n {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => out.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                g.poll();
                assert!(start.elapsed() < WAIT, "read {} of {n} bytes", out.len());
            }
            Err(e) => panic!("{e}"),
        }
    }
    s.set_nonblocking(false).unwrap();
    out
}

fn is_closed(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

/// Handshake of a host-initiated connection; returns the host port.
fn accept_host_connection(g: &mut Guest, client: &mut UnixStream, port: u32) -> u32 {
    let (req, _) = g.next();
    assert_eq!((req.op, req.dst_port), (VSOCK_OP_REQUEST, port));
    assert_eq!(req.buf_alloc, OUR_BUF_ALLOC);
    g.send(pkt(VSOCK_OP_RESPONSE, port, req.src_port, 0), &[]);
    assert_eq!(read_line(client), format!("OK {}", req.src_port));
    req.src_port
}

#[test]
fn host_initiated_stream_with_credit_and_shutdown() {
    let mut g = Guest::new(64);
    let mut client = g.client(1234);
    let hp = accept_host_connection(&mut g, &mut client, 1234);
    assert_eq!(hp, 1024, "host ports count up from 1024");
    assert_eq!(g.conns(), 1);

    // Guest → host.
    g.send(pkt(VSOCK_OP_RW, 1234, hp, 0), b"hello host");
    let mut buf = [0u8; 10];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello host");

    // Host → guest, limited to the guest's 64 KiB of credit.
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    client.write_all(&data).unwrap();
    let mut got = Vec::new();
    while got.len() < GUEST_BUF_ALLOC as usize {
        let (h, p) = g.next();
        assert_eq!((h.op, h.src_port, h.dst_port), (VSOCK_OP_RW, hp, 1234));
        assert!(p.len() <= 4096);
        got.extend(p);
    }
    assert_eq!(
        got.len(),
        GUEST_BUF_ALLOC as usize,
        "never more than the credit"
    );
    g.quiet();
    // The guest read it all and says so: the rest flows.
    g.send(pkt(VSOCK_OP_CREDIT_UPDATE, 1234, hp, got.len() as u32), &[]);
    while got.len() < data.len() {
        got.extend(g.next().1);
    }
    assert_eq!(got, data);
    let fwd = got.len() as u32;

    // 256 KiB from the guest without the host reading: the socket takes part, the device
    // buffers the rest within the credit it advertised, and tells the guest as it drains.
    let chunk: Vec<u8> = (0..65536u32).map(|i| (i % 13) as u8).collect();
    let mut sent = 10u32;
    for _ in 0..4 {
        g.send(pkt(VSOCK_OP_RW, 1234, hp, fwd), &chunk);
        sent += chunk.len() as u32;
    }
    let out = drain(&mut g, &mut client, 4 * chunk.len());
    assert!(out.chunks(65536).all(|c| c == chunk.as_slice()));
    g.send(pkt(VSOCK_OP_CREDIT_REQUEST, 1234, hp, fwd), &[]);
    g.wait(1);
    let (last, _) = g.inbox.pop_back().unwrap();
    assert_eq!(last.fwd_cnt, sent, "every byte forwarded and advertised");
    g.inbox.clear();

    // Host half-close: the guest sees SHUTDOWN(SEND) and can still send.
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let (h, _) = g.next();
    assert_eq!(
        (h.op, h.flags),
        (VSOCK_OP_SHUTDOWN, VSOCK_FLAGS_SHUTDOWN_SEND)
    );
    g.send(pkt(VSOCK_OP_RW, 1234, hp, fwd), b"bye");
    let mut bye = [0u8; 3];
    client.read_exact(&mut bye).unwrap();
    assert_eq!(&bye, b"bye");
    // The guest closes too: RST, the host sees end-of-stream, all state is gone.
    let mut shut = pkt(VSOCK_OP_SHUTDOWN, 1234, hp, fwd);
    shut.flags = VSOCK_FLAGS_SHUTDOWN_SEND | VSOCK_FLAGS_SHUTDOWN_RCV;
    g.send(shut, &[]);
    assert_eq!(g.next().0.op, VSOCK_OP_RST);
    assert!(is_closed(&mut client));
    assert_eq!(g.conns(), 0);
}

#[test]
fn guest_rst_and_timeouts_close_host_clients() {
    let mut g = Guest::new(64);
    g.dev
        .lock()
        .unwrap()
        .muxer_mut()
        .set_handshake_timeout(Duration::from_millis(300));
    // Nobody listens on the guest port.
    let mut refused = g.client(1);
    let (req, _) = g.next();
    g.send(pkt(VSOCK_OP_RST, 1, req.src_port, 0), &[]);
    assert!(is_closed(&mut refused));
    // Silent guest, silent client, malformed and oversized lines.
    let mut unanswered = g.client(2);
    let mut silent = g.raw_client();
    let mut partial = g.raw_client();
    partial.write_all(b"CONNECT 3").unwrap();
    let mut bad = g.raw_client();
    bad.write_all(b"HELLO 3\n").unwrap();
    let mut long = g.raw_client();
    long.write_all(&[b'9'; 64]).unwrap();
    assert_eq!(g.next().0.dst_port, 2);
    assert!(is_closed(&mut bad));
    assert!(is_closed(&mut long));
    // Clients that never finish their line block nobody.
    let mut good = g.client(4);
    accept_host_connection(&mut g, &mut good, 4);
    std::thread::sleep(Duration::from_millis(400));
    g.poll();
    for s in [&mut unanswered, &mut silent, &mut partial] {
        assert!(is_closed(s));
    }
    assert_eq!(
        g.em.run_with_timeout(0).unwrap(),
        0,
        "the expired timer is quiet"
    );
    // A late answer to the expired REQUEST is refused.
    g.send(pkt(VSOCK_OP_RESPONSE, 2, req.src_port + 1, 0), &[]);
    assert_eq!(g.next().0.op, VSOCK_OP_RST);
    assert_eq!(g.conns(), 1, "only the answered connection is left");
}

#[test]
fn guest_initiated_connections_reach_listeners_or_get_reset() {
    let mut g = Guest::new(64);
    let service = UnixListener::bind(uds::service_path(&g.uds, 5000)).unwrap();
    g.send(pkt(VSOCK_OP_REQUEST, 40000, 5000, 0), &[]);
    let (resp, _) = g.next();
    assert_eq!(
        (resp.op, resp.src_port, resp.dst_port),
        (VSOCK_OP_RESPONSE, 5000, 40000)
    );
    let (mut host, _) = service.accept().unwrap();
    host.set_read_timeout(Some(WAIT)).unwrap();
    g.send(pkt(VSOCK_OP_RW, 40000, 5000, 0), b"ping");
    let mut buf = [0u8; 4];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    host.write_all(b"pong").unwrap();
    let (h, p) = g.next();
    assert_eq!((h.op, p.as_slice()), (VSOCK_OP_RW, &b"pong"[..]));

    // Nobody listens on 5001.
    g.send(pkt(VSOCK_OP_REQUEST, 40001, 5001, 0), &[]);
    let (rst, _) = g.next();
    assert_eq!(
        (rst.op, rst.src_port, rst.dst_port),
        (VSOCK_OP_RST, 5001, 40001)
    );

    // The service hangs up after a last message: data first, then RST.
    host.write_all(b"done").unwrap();
    drop(host);
    let (h, p) = g.next();
    assert_eq!((h.op, p.as_slice()), (VSOCK_OP_RW, &b"done"[..]));
    assert_eq!(g.next().0.op, VSOCK_OP_RST);
    assert_eq!(g.conns(), 0);

    // A guest RST closes the service's side at once.
    g.send(pkt(VSOCK_OP_REQUEST, 40002, 5000, 0), &[]);
    assert_eq!(g.next().0.op, VSOCK_OP_RESPONSE);
    let (mut host, _) = service.accept().unwrap();
    host.set_read_timeout(Some(WAIT)).unwrap();
    g.send(pkt(VSOCK_OP_RST, 40002, 5000, 0), &[]);
    assert!(is_closed(&mut host));
    assert_eq!(g.conns(), 0);
    g.quiet();
}

#[test]
fn malformed_packets_are_dropped_or_reset_and_the_queue_goes_on() {
    let mut g = Guest::new(64);
    // Spoofed CIDs: dropped silently.
    let mut spoofed = pkt(VSOCK_OP_REQUEST, 1, 5000, 0);
    spoofed.src_cid = 7;
    g.send(spoofed, &[]);
    let mut elsewhere = pkt(VSOCK_OP_REQUEST, 1, 5000, 0);
    elsewhere.dst_cid = 9;
    g.send(elsewhere, &[]);
    g.quiet();
    // Wrong socket type, unknown op, stray data: RST.
    let mut seqpacket = pkt(VSOCK_OP_REQUEST, 2, 5000, 0);
    seqpacket.socket_type = 2;
    g.send(seqpacket, &[]);
    g.send(pkt(99, 3, 5000, 0), &[]);
    g.send(pkt(VSOCK_OP_RW, 4, 5000, 0), b"stray");
    // An RST for nothing gets no answer.
    g.send(pkt(VSOCK_OP_RST, 5, 5000, 0), &[]);
    g.wait(3);
    let ports: Vec<(u16, u32)> = g.inbox.drain(..).map(|(h, _)| (h.op, h.dst_port)).collect();
    assert_eq!(
        ports,
        vec![(VSOCK_OP_RST, 2), (VSOCK_OP_RST, 3), (VSOCK_OP_RST, 4)]
    );
    // Chains that cannot be parsed: short header, writable, outside memory, too long.
    let slot = g.tx_free.pop().unwrap();
    g.send_raw(slot, &[0u8; 20], &[]);
    let hdr = pkt(VSOCK_OP_RW, 6, 5000, 0);
    for (addr, len, write) in [(slot, 44, true), (0xF_0000_0000, 44, false)] {
        let head = g.tx.post(&[(addr, len, write)]).unwrap();
        g.tx_posted
            .insert(u32::from(head), g.tx_free.pop().unwrap());
    }
    let slot = g.tx_free.pop().unwrap();
    g.send_raw(slot, &PacketHeader { len: 70_000, ..hdr }.to_bytes(), b"x");
    let (h, _) = g.next();
    assert_eq!(
        (h.op, h.dst_port),
        (VSOCK_OP_RST, 6),
        "the one with a readable header"
    );
    g.quiet();

    // A connection whose packet is malformed is reset; others are unaffected.
    let service = UnixListener::bind(uds::service_path(&g.uds, 5000)).unwrap();
    g.send(pkt(VSOCK_OP_REQUEST, 7, 5000, 0), &[]);
    g.send(pkt(VSOCK_OP_REQUEST, 8, 5000, 0), &[]);
    g.wait(2);
    g.inbox.clear();
    let (mut a, _) = service.accept().unwrap();
    let (mut b, _) = service.accept().unwrap();
    let slot = g.tx_free.pop().unwrap();
    let overlong = PacketHeader {
        len: 100,
        ..pkt(VSOCK_OP_RW, 7, 5000, 0)
    };
    g.send_raw(slot, &overlong.to_bytes(), b"short");
    assert_eq!(g.next().0.op, VSOCK_OP_RST);
    a.set_read_timeout(Some(WAIT)).unwrap();
    assert!(is_closed(&mut a));
    g.send(pkt(VSOCK_OP_RW, 8, 5000, 0), b"fine");
    let mut buf = [0u8; 4];
    b.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"fine");
    // Overrunning the credit we advertised resets the connection.
    b.set_nonblocking(true).unwrap();
    let chunk = vec![0u8; 65536];
    let mut rst = None;
    for _ in 0..200 {
        g.send(pkt(VSOCK_OP_RW, 8, 5000, 0), &chunk);
        if let Some((h, _)) = g.inbox.iter().find(|(h, _)| h.op == VSOCK_OP_RST) {
            rst = Some(*h);
            break;
        }
    }
    assert_eq!(rst.map(|h| h.dst_port), Some(8));
    assert_eq!(g.conns(), 0);
}

#[test]
fn a_guest_that_stops_reading_stalls_only_its_connection() {
    let mut g = Guest::new(64);
    let mut slow = g.client(100);
    let slow_port = accept_host_connection(&mut g, &mut slow, 100);
    let mut fast = g.client(200);
    let fast_port = accept_host_connection(&mut g, &mut fast, 200);
    // The slow connection exhausts its credit and the guest never updates it.
    slow.set_nonblocking(true).unwrap();
    let big = vec![1u8; 300 * 1024];
    let mut written = 0;
    while let Ok(n) = slow.write(&big[written..]) {
        written += n;
    }
    let mut slow_bytes = 0;
    let mut fast_bytes = Vec::new();
    for round in 0..20u8 {
        fast.write_all(&[round; 1000]).unwrap();
        let start = Instant::now();
        while fast_bytes.len() < 1000 * (round as usize + 1) {
            assert!(start.elapsed() < WAIT, "fast connection starved");
            let (h, p) = g.next();
            if h.dst_port == 200 {
                assert_eq!(h.src_port, fast_port);
                fast_bytes.extend(p);
            } else {
                assert_eq!(h.src_port, slow_port);
                slow_bytes += p.len();
            }
        }
        // The fast one keeps granting credit.
        g.send(
            pkt(
                VSOCK_OP_CREDIT_UPDATE,
                200,
                fast_port,
                fast_bytes.len() as u32,
            ),
            &[],
        );
    }
    assert!(slow_bytes <= GUEST_BUF_ALLOC as usize);
    g.poll();
    g.inbox.retain(|(h, _)| h.dst_port == 100);
    let rest: usize = g.inbox.iter().map(|(_, p)| p.len()).sum();
    assert_eq!(slow_bytes + rest, GUEST_BUF_ALLOC as usize);
}

#[test]
fn three_hundred_concurrent_host_connections() {
    const N: u32 = 300;
    let mut g = Guest::new(32);
    let mut clients = Vec::new();
    for i in 0..N {
        clients.push(g.client(10_000 + i));
        g.poll();
    }
    g.wait(N as usize);
    let mut host_ports = HashMap::new();
    for (req, _) in g.inbox.drain(..).collect::<Vec<_>>() {
        assert_eq!(req.op, VSOCK_OP_REQUEST);
        host_ports.insert(req.dst_port, req.src_port);
        g.send(pkt(VSOCK_OP_RESPONSE, req.dst_port, req.src_port, 0), &[]);
    }
    assert_eq!(host_ports.len(), N as usize);
    assert_eq!(g.conns(), N as usize);
    for (i, c) in clients.iter_mut().enumerate() {
        let port = 10_000 + i as u32;
        assert_eq!(read_line(c), format!("OK {}", host_ports[&port]));
        c.write_all(format!("hello {i}").as_bytes()).unwrap();
    }
    g.wait(N as usize);
    // Echo every greeting back on its own connection.
    for (h, p) in g.inbox.drain(..).collect::<Vec<_>>() {
        assert_eq!(h.op, VSOCK_OP_RW);
        assert_eq!(p, format!("hello {}", h.dst_port - 10_000).into_bytes());
        g.send(pkt(VSOCK_OP_RW, h.dst_port, h.src_port, h.len), &p);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let want = format!("hello {i}");
        let mut buf = vec![0u8; want.len()];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(buf, want.into_bytes());
    }
    // Every client hangs up: each connection ends with an RST and leaves nothing behind.
    clients.clear();
    g.wait(N as usize);
    assert!(g.inbox.iter().all(|(h, _)| h.op == VSOCK_OP_RST));
    assert_eq!(g.conns(), 0);
}

#[test]
fn a_driver_reset_closes_every_host_socket() {
    let mut g = Guest::new(64);
    let mut client = g.client(1);
    accept_host_connection(&mut g, &mut client, 1);
    g.front.reset();
    assert_eq!(g.conns(), 0);
    assert!(is_closed(&mut client));
    // The listener survives the reset.
    assert!(UnixStream::connect(&g.uds).is_ok());
}
