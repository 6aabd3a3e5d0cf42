//! One vsock stream: the handshake / shutdown state machine and credit-based flow control in
//! both directions (virtio 1.2, 5.10.6.3). Generic over the host-side stream, so the logic
//! runs against a fake stream in tests; the muxer owns the sockets and the scheduling.
//!
//! Guest → host data goes through a `Backlog` (straight to the stream, buffered only when
//! the stream is full); host → guest data is read(2) straight into the guest's rx buffer,
//! never more than the guest's credit allows.

use std::io::{self, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use vm_memory::{GuestAddress, GuestMemoryMmap, ReadVolatile, WriteVolatile};
use vmm_sys_util::epoll::EventSet;

use super::backlog::Backlog;
use super::credit::{Credit, CONN_BUF_ALLOC};
use super::packet::{PacketHeader, RxBuffer};
use super::{
    MAX_PAYLOAD, VSOCK_FLAGS_SHUTDOWN_RCV, VSOCK_FLAGS_SHUTDOWN_SEND, VSOCK_OP_CREDIT_REQUEST,
    VSOCK_OP_CREDIT_UPDATE, VSOCK_OP_REQUEST, VSOCK_OP_RESPONSE, VSOCK_OP_RST, VSOCK_OP_RW,
    VSOCK_OP_SHUTDOWN, VSOCK_TYPE_STREAM,
};

/// What a connection needs from its host-side stream.
pub trait HostStream: Write + ReadVolatile + WriteVolatile {
    fn shutdown_write(&self) -> io::Result<()>;
}

impl HostStream for UnixStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: the guest is (or will be) sent a REQUEST; awaiting its RESPONSE.
    Connecting,
    Established,
    /// An RST must reach the guest; nothing else happens on this connection.
    Resetting,
    /// Done: the owner drops the connection (and with it the host socket).
    Closed,
}

/// Control packets waiting for an rx buffer.
const PENDING_REQUEST: u8 = 1;
const PENDING_RESPONSE: u8 = 2;
const PENDING_SHUTDOWN: u8 = 4;
const PENDING_CREDIT_UPDATE: u8 = 8;

pub struct Connection<S> {
    stream: S,
    local_port: u32,
    peer_port: u32,
    state: State,
    pending: u8,
    /// Edge-triggered hint: the stream may have data. Cleared when a read comes up short,
    /// unless the host already shut its side: then the end-of-stream must still be read
    /// and no further edge would announce it.
    readable: bool,
    host_shut_seen: bool,
    /// The host will send no more (read returned 0).
    host_eof: bool,
    /// The host hung up entirely: it will not read either.
    host_gone: bool,
    /// We shut the stream's write side after the guest's SHUTDOWN_SEND.
    write_shut: bool,
    peer_shut_send: bool,
    peer_shut_recv: bool,
    credit: Credit,
    /// Guest bytes the stream has not taken yet.
    backlog: Backlog,
}

impl<S: HostStream> Connection<S> {
    /// A host-initiated connection to guest port `peer_port`; it starts with a REQUEST.
    pub fn new_local(stream: S, local_port: u32, peer_port: u32) -> Self {
        let mut c = Self::new(stream, local_port, peer_port, State::Connecting);
        c.pending = PENDING_REQUEST;
        c
    }

    /// A guest-initiated connection whose host side is already connected; it answers the
    /// guest's `request` with a RESPONSE.
    pub fn new_peer(stream: S, request: &PacketHeader) -> Self {
        let mut c = Self::new(
            stream,
            request.dst_port,
            request.src_port,
            State::Established,
        );
        c.pending = PENDING_RESPONSE;
        c.credit.update_peer(request.buf_alloc, request.fwd_cnt);
        c
    }

    fn new(stream: S, local_port: u32, peer_port: u32, state: State) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            state,
            pending: 0,
            readable: false,
            host_shut_seen: false,
            host_eof: false,
            host_gone: false,
            write_shut: false,
            peer_shut_send: false,
            peer_shut_recv: false,
            credit: Credit::default(),
            backlog: Backlog::default(),
        }
    }

    pub fn stream(&self) -> &S {
        &self.stream
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Queues an RST for the guest; the connection ends once it is sent.
    pub fn kill(&mut self) {
        if self.state != State::Closed {
            self.state = State::Resetting;
        }
    }

    /// Readiness of the host stream (edge-triggered: each call reports a change).
    pub fn on_host_event(&mut self, set: EventSet) {
        if matches!(self.state, State::Resetting | State::Closed) {
            return;
        }
        let hangup = set.contains(EventSet::HANG_UP);
        let read_hangup = hangup || set.contains(EventSet::READ_HANG_UP);
        if set.contains(EventSet::ERROR) {
            log::debug!(
                "virtio-vsock: host socket error on port {}",
                self.local_port
            );
            self.kill();
            return;
        }
        // A hang-up also reads as end-of-stream, after any data still queued.
        self.readable |= read_hangup || set.contains(EventSet::IN);
        self.host_shut_seen |= read_hangup;
        if hangup {
            self.host_gone = true;
            if self.state == State::Connecting {
                self.kill();
                return;
            }
        }
        if set.contains(EventSet::OUT) && !self.backlog.is_empty() {
            let flushed = self.backlog.flush(&mut self.stream);
            self.consumed(flushed);
        }
        self.check_done();
    }

    /// A packet from the guest addressed to this connection.
    pub fn on_guest_pkt(
        &mut self,
        hdr: &PacketHeader,
        payload: &[(GuestAddress, u32)],
        mem: &GuestMemoryMmap,
    ) {
        if hdr.op == VSOCK_OP_RST {
            self.state = State::Closed;
            return;
        }
        if matches!(self.state, State::Resetting | State::Closed) {
            return;
        }
        self.credit.update_peer(hdr.buf_alloc, hdr.fwd_cnt);
        match (self.state, hdr.op) {
            (State::Connecting, VSOCK_OP_RESPONSE) => {
                self.state = State::Established;
                let line = format!("OK {}\n", self.local_port);
                // A fresh socket always has room for a line this short.
                if !matches!(self.stream.write(line.as_bytes()), Ok(n) if n == line.len()) {
                    self.kill();
                }
            }
            (State::Established, VSOCK_OP_RW) => self.take_data(hdr.len, payload, mem),
            (State::Established, VSOCK_OP_CREDIT_UPDATE) => {}
            (State::Established, VSOCK_OP_CREDIT_REQUEST) => {
                self.pending |= PENDING_CREDIT_UPDATE;
            }
            (State::Established, VSOCK_OP_SHUTDOWN) => {
                self.peer_shut_recv |= hdr.flags & VSOCK_FLAGS_SHUTDOWN_RCV != 0;
                self.peer_shut_send |= hdr.flags & VSOCK_FLAGS_SHUTDOWN_SEND != 0;
                self.finish_writes();
            }
            (state, op) => {
                log::debug!(
                    "virtio-vsock: op {op} in state {state:?} on port {}: reset",
                    self.local_port
                );
                self.kill();
            }
        }
        self.check_done();
    }

    /// Whether `recv_pkt` has something to send (given an rx buffer).
    pub fn has_rx_work(&self) -> bool {
        match self.state {
            State::Connecting => self.pending & PENDING_REQUEST != 0,
            State::Established => self.pending != 0 || self.can_read(),
            State::Resetting => true,
            State::Closed => false,
        }
    }

    /// The next packet for the guest, if any; an RW packet's payload is read straight into
    /// `buf`. Addresses are ports only: the caller fills in the CIDs.
    pub fn recv_pkt(&mut self, buf: &RxBuffer, mem: &GuestMemoryMmap) -> Option<PacketHeader> {
        let pkt = match self.state {
            State::Connecting => self
                .take(PENDING_REQUEST)
                .then(|| self.header(VSOCK_OP_REQUEST, 0, 0)),
            State::Established => self.next_established(buf, mem),
            _ => None,
        };
        let pkt = match pkt {
            None if self.state == State::Resetting => {
                self.state = State::Closed;
                Some(self.header(VSOCK_OP_RST, 0, 0))
            }
            other => other,
        }?;
        // Every header carries our counters, so the guest's view of our credit is current.
        self.pending &= !PENDING_CREDIT_UPDATE;
        self.credit.advertised();
        Some(pkt)
    }

    fn next_established(&mut self, buf: &RxBuffer, mem: &GuestMemoryMmap) -> Option<PacketHeader> {
        if self.take(PENDING_RESPONSE) {
            return Some(self.header(VSOCK_OP_RESPONSE, 0, 0));
        }
        if self.can_read() {
            let max = buf
                .capacity()
                .min(self.credit.peer_credit() as usize)
                .min(MAX_PAYLOAD as usize);
            if max > 0 {
                match buf.read_payload_from(mem, &mut self.stream, max) {
                    Ok(0) => {
                        self.readable = false;
                        self.host_eof = true;
                        self.pending |= PENDING_SHUTDOWN;
                        self.check_done();
                    }
                    Ok(n) => {
                        self.readable = n == max || self.host_shut_seen;
                        self.credit.sent(n as u32);
                        return Some(self.header(VSOCK_OP_RW, n as u32, 0));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        log::debug!("virtio-vsock: read on port {}: {e}", self.local_port);
                        self.kill();
                    }
                }
            }
        }
        if self.state != State::Established {
            return None;
        }
        if self.take(PENDING_SHUTDOWN) {
            return Some(self.header(VSOCK_OP_SHUTDOWN, 0, VSOCK_FLAGS_SHUTDOWN_SEND));
        }
        if self.take(PENDING_CREDIT_UPDATE) {
            return Some(self.header(VSOCK_OP_CREDIT_UPDATE, 0, 0));
        }
        None
    }

    fn can_read(&self) -> bool {
        self.readable && !self.host_eof && !self.peer_shut_recv && self.credit.peer_credit() > 0
    }

    fn take(&mut self, flag: u8) -> bool {
        let set = self.pending & flag != 0;
        self.pending &= !flag;
        set
    }

    fn header(&self, op: u16, len: u32, flags: u32) -> PacketHeader {
        PacketHeader {
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            socket_type: VSOCK_TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.credit.fwd_cnt(),
            ..PacketHeader::default()
        }
    }

    /// Guest data: straight to the stream while it takes it, the rest into the backlog.
    fn take_data(&mut self, len: u32, payload: &[(GuestAddress, u32)], mem: &GuestMemoryMmap) {
        if self.peer_shut_send {
            log::debug!(
                "virtio-vsock: data after SHUTDOWN_SEND on port {}",
                self.local_port
            );
            self.kill();
            return;
        }
        if !self.credit.receive(len) {
            log::debug!(
                "virtio-vsock: guest overran its credit on port {}",
                self.local_port
            );
            self.kill();
            return;
        }
        let written = self
            .backlog
            .write_from_guest(&mut self.stream, payload, mem);
        self.consumed(written);
    }

    /// Accounts for bytes that reached the stream, or resets on a broken stream.
    fn consumed(&mut self, written: io::Result<usize>) {
        match written {
            Ok(n) => self.credit.forwarded(n),
            Err(e) => {
                log::debug!("virtio-vsock: write on port {}: {e}", self.local_port);
                self.kill();
                return;
            }
        }
        if self.credit.update_due() {
            self.pending |= PENDING_CREDIT_UPDATE;
        }
        self.finish_writes();
    }

    /// Half-closes the stream once the guest said it is done sending and all of its data
    /// reached the stream.
    fn finish_writes(&mut self) {
        if self.peer_shut_send && !self.write_shut && self.backlog.is_empty() {
            self.write_shut = true;
            if let Err(e) = self.stream.shutdown_write() {
                log::debug!("virtio-vsock: shutdown on port {}: {e}", self.local_port);
            }
        }
    }

    /// Resets the connection once neither direction can carry data any more.
    fn check_done(&mut self) {
        if self.state != State::Established {
            return;
        }
        let to_host_done = self.write_shut || self.host_gone;
        let to_guest_done = self.host_eof || self.peer_shut_recv;
        if to_host_done && to_guest_done {
            self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::vsock::test_utils::FakeStream;
    use crate::virtio::vsock::HEADER_LEN;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::split::Descriptor;
    use vm_memory::{Bytes, GuestAddress};

    const DATA: u64 = 0x1_0000;
    const RX: u64 = 0x8_0000;

    struct Setup {
        mem: GuestMemoryMmap,
        rx: RxBuffer,
    }

    fn setup() -> Setup {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut rx = RxBuffer::default();
        let desc = Descriptor::new(RX, 4096 + HEADER_LEN as u32, VRING_DESC_F_WRITE as u16, 0);
        rx.parse(&[desc], &mem).unwrap();
        Setup { mem, rx }
    }

    fn guest(op: u16, len: u32, buf_alloc: u32, fwd_cnt: u32) -> PacketHeader {
        PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 5000,
            dst_port: 1024,
            len,
            socket_type: VSOCK_TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc,
            fwd_cnt,
        }
    }

    fn peer_conn(room: usize, buf_alloc: u32) -> Connection<FakeStream> {
        let stream = FakeStream::with_room(room);
        let mut c = Connection::new_peer(stream, &guest(VSOCK_OP_REQUEST, 0, buf_alloc, 0));
        let s = setup();
        let resp = c.recv_pkt(&s.rx, &s.mem).unwrap();
        assert_eq!(resp.op, VSOCK_OP_RESPONSE);
        c
    }

    fn send_rw(c: &mut Connection<FakeStream>, s: &Setup, data: &[u8], fwd_cnt: u32) {
        s.mem.write_slice(data, GuestAddress(DATA)).unwrap();
        let hdr = guest(VSOCK_OP_RW, data.len() as u32, 4096, fwd_cnt);
        c.on_guest_pkt(&hdr, &[(GuestAddress(DATA), data.len() as u32)], &s.mem);
    }

    fn payload(s: &Setup, len: u32) -> Vec<u8> {
        let mut v = vec![0; len as usize];
        s.mem
            .read_slice(&mut v, GuestAddress(RX + HEADER_LEN as u64))
            .unwrap();
        v
    }

    #[test]
    fn guest_initiated_handshake_answers_with_our_credit() {
        let s = setup();
        let mut c =
            Connection::new_peer(FakeStream::default(), &guest(VSOCK_OP_REQUEST, 0, 4096, 0));
        assert!(c.has_rx_work());
        let resp = c.recv_pkt(&s.rx, &s.mem).unwrap();
        assert_eq!(
            (resp.op, resp.src_port, resp.dst_port),
            (VSOCK_OP_RESPONSE, 1024, 5000)
        );
        assert_eq!((resp.buf_alloc, resp.fwd_cnt), (CONN_BUF_ALLOC, 0));
        assert!(!c.has_rx_work());
        assert_eq!(c.credit.peer_credit(), 4096);
    }

    #[test]
    fn host_initiated_handshake_writes_ok_or_closes_on_rst() {
        let s = setup();
        let mut c = Connection::new_local(FakeStream::with_room(100), 1500, 5000);
        let req = c.recv_pkt(&s.rx, &s.mem).unwrap();
        assert_eq!(
            (req.op, req.src_port, req.dst_port),
            (VSOCK_OP_REQUEST, 1500, 5000)
        );
        assert!(!c.has_rx_work());
        let mut resp = guest(VSOCK_OP_RESPONSE, 0, 4096, 0);
        resp.dst_port = 1500;
        c.on_guest_pkt(&resp, &[], &s.mem);
        assert_eq!(c.state(), State::Established);
        assert_eq!(c.stream().written, b"OK 1500\n");

        let mut c = Connection::new_local(FakeStream::default(), 1501, 5000);
        c.recv_pkt(&s.rx, &s.mem).unwrap();
        c.on_guest_pkt(&guest(VSOCK_OP_RST, 0, 0, 0), &[], &s.mem);
        assert!(c.is_closed());
        // Data before the handshake is a protocol error.
        let mut c = Connection::new_local(FakeStream::default(), 1502, 5000);
        c.on_guest_pkt(&guest(VSOCK_OP_RW, 0, 0, 0), &[], &s.mem);
        assert!(c.has_rx_work());
        assert_eq!(c.recv_pkt(&s.rx, &s.mem).unwrap().op, VSOCK_OP_RST);
        assert!(c.is_closed());
    }

    #[test]
    fn host_data_never_exceeds_the_guest_credit() {
        let s = setup();
        let mut c = peer_conn(0, 100);
        c.stream.input.extend(std::iter::repeat_n(7u8, 300));
        c.on_host_event(EventSet::IN);
        let rw = c.recv_pkt(&s.rx, &s.mem).unwrap();
        assert_eq!((rw.op, rw.len), (VSOCK_OP_RW, 100));
        assert_eq!(payload(&s, 100), vec![7; 100]);
        assert_eq!(c.credit.peer_credit(), 0);
        assert!(!c.has_rx_work(), "no credit, no work");
        assert!(c.recv_pkt(&s.rx, &s.mem).is_none());
        // The guest consumed 60 bytes and says so.
        c.on_guest_pkt(&guest(VSOCK_OP_CREDIT_UPDATE, 0, 100, 60), &[], &s.mem);
        assert!(c.has_rx_work());
        assert_eq!(c.recv_pkt(&s.rx, &s.mem).unwrap().len, 60);
        // A guest that claims to have consumed more than it received gets nothing more.
        c.on_guest_pkt(
            &guest(VSOCK_OP_CREDIT_UPDATE, 0, 100, 1_000_000),
            &[],
            &s.mem,
        );
        assert_eq!(c.credit.peer_credit(), 0);
        // A buffer smaller than the credit limits the packet.
        c.on_guest_pkt(&guest(VSOCK_OP_CREDIT_UPDATE, 0, 1 << 20, 160), &[], &s.mem);
        let rw = c.recv_pkt(&s.rx, &s.mem).unwrap();
        assert_eq!(rw.len, 140, "what is left of the 300 bytes");
        assert!(!c.has_rx_work(), "drained: short read cleared the hint");
    }

    #[test]
    fn guest_data_is_written_then_buffered_within_our_credit() {
        let s = setup();
        let mut c = peer_conn(10, 4096);
        send_rw(&mut c, &s, &[1; 100], 0);
        assert_eq!(c.stream.written, vec![1; 10]);
        assert_eq!((c.credit.fwd_cnt(), c.backlog.len()), (10, 90));
        c.stream.room = 1000;
        c.on_host_event(EventSet::OUT);
        assert_eq!(c.stream.written.len(), 100);
        assert_eq!((c.credit.fwd_cnt(), c.backlog.len()), (100, 0));
        assert!(!c.has_rx_work(), "100 bytes is below the update threshold");
        // A credit request is answered with an update carrying fwd_cnt.
        c.on_guest_pkt(&guest(VSOCK_OP_CREDIT_REQUEST, 0, 4096, 0), &[], &s.mem);
        let upd = c.recv_pkt(&s.rx, &s.mem).unwrap();
        assert_eq!(
            (upd.op, upd.fwd_cnt, upd.buf_alloc),
            (VSOCK_OP_CREDIT_UPDATE, 100, CONN_BUF_ALLOC)
        );
    }

    #[test]
    fn credit_updates_flow_and_overruns_reset() {
        let s = setup();
        let mut c = peer_conn(usize::MAX, 4096);
        let chunk = vec![9u8; 64 * 1024];
        send_rw(&mut c, &s, &chunk, 0);
        assert!(!c.has_rx_work());
        send_rw(&mut c, &s, &chunk, 0);
        assert!(c.has_rx_work(), "128 KiB consumed: tell the guest");
        let upd = c.recv_pkt(&s.rx, &s.mem).unwrap();
        assert_eq!((upd.op, upd.fwd_cnt), (VSOCK_OP_CREDIT_UPDATE, 128 * 1024));

        // Socket full: the guest can fill exactly our buffer, one byte more resets.
        let mut c = peer_conn(0, 4096);
        for _ in 0..4 {
            send_rw(&mut c, &s, &chunk, 0);
        }
        assert_eq!(c.backlog.len(), CONN_BUF_ALLOC as usize);
        assert_eq!(c.state(), State::Established);
        send_rw(&mut c, &s, &[1], 0);
        assert_eq!(c.state(), State::Resetting);
        assert_eq!(c.recv_pkt(&s.rx, &s.mem).unwrap().op, VSOCK_OP_RST);
        assert!(c.is_closed());
    }

    #[test]
    fn half_close_waits_for_the_buffer_then_both_ways_reset() {
        let s = setup();
        let mut c = peer_conn(4, 4096);
        send_rw(&mut c, &s, b"abcdefgh", 0);
        let mut shut_hdr = guest(VSOCK_OP_SHUTDOWN, 0, 4096, 0);
        shut_hdr.flags = VSOCK_FLAGS_SHUTDOWN_SEND;
        c.on_guest_pkt(&shut_hdr, &[], &s.mem);
        assert!(!c.write_shut, "4 bytes still buffered");
        send_rw(&mut c, &s, b"late", 0);
        assert_eq!(c.state(), State::Resetting, "data after SHUTDOWN_SEND");

        let mut c = peer_conn(4, 4096);
        send_rw(&mut c, &s, b"abcdefgh", 0);
        c.on_guest_pkt(&shut_hdr, &[], &s.mem);
        c.stream.room = 100;
        c.on_host_event(EventSet::OUT);
        assert!(c.write_shut);
        assert_eq!(c.stream.written, b"abcdefgh");
        assert_eq!(c.state(), State::Established, "the host may still send");
        // Host EOF: SHUTDOWN would follow, but both directions are now done: RST.
        c.stream.eof = true;
        c.on_host_event(EventSet::IN);
        assert_eq!(c.recv_pkt(&s.rx, &s.mem).unwrap().op, VSOCK_OP_RST);
        assert!(c.is_closed());
    }

    #[test]
    fn host_eof_sends_shutdown_and_hangup_resets_after_the_data() {
        let s = setup();
        let mut c = peer_conn(100, 4096);
        c.stream.input.extend(b"bye");
        c.on_host_event(EventSet::IN);
        assert_eq!(c.recv_pkt(&s.rx, &s.mem).unwrap().len, 3);
        assert!(!c.has_rx_work(), "short read: wait for the next edge");
        c.stream.eof = true;
        c.on_host_event(EventSet::READ_HANG_UP);
        let shut = c.recv_pkt(&s.rx, &s.mem).unwrap();
        assert_eq!(
            (shut.op, shut.flags),
            (VSOCK_OP_SHUTDOWN, VSOCK_FLAGS_SHUTDOWN_SEND)
        );
        assert_eq!(c.state(), State::Established);
        let mut both = guest(VSOCK_OP_SHUTDOWN, 0, 4096, 3);
        both.flags = VSOCK_FLAGS_SHUTDOWN_SEND | VSOCK_FLAGS_SHUTDOWN_RCV;
        c.on_guest_pkt(&both, &[], &s.mem);
        assert_eq!(c.recv_pkt(&s.rx, &s.mem).unwrap().op, VSOCK_OP_RST);
        assert!(c.is_closed());

        let mut c = peer_conn(100, 4096);
        c.stream.input.extend(b"data and FIN together");
        c.stream.eof = true;
        c.on_host_event(EventSet::IN | EventSet::READ_HANG_UP);
        assert_eq!(c.recv_pkt(&s.rx, &s.mem).unwrap().len, 21);
        assert_eq!(c.recv_pkt(&s.rx, &s.mem).unwrap().op, VSOCK_OP_SHUTDOWN);

        let mut c = peer_conn(100, 4096);
        c.stream.input.extend(b"last words");
        c.stream.eof = true;
        c.on_host_event(EventSet::IN | EventSet::HANG_UP);
        assert_eq!(c.recv_pkt(&s.rx, &s.mem).unwrap().len, 10);
        assert_eq!(c.recv_pkt(&s.rx, &s.mem).unwrap().op, VSOCK_OP_RST);
        assert!(c.is_closed());

        let mut c = peer_conn(100, 4096);
        c.on_host_event(EventSet::IN | EventSet::ERROR);
        assert_eq!(c.recv_pkt(&s.rx, &s.mem).unwrap().op, VSOCK_OP_RST);
        // Guest RST: gone at once, nothing to send.
        let mut c = peer_conn(100, 4096);
        c.on_guest_pkt(&guest(VSOCK_OP_RST, 0, 0, 0), &[], &s.mem);
        assert!(c.is_closed() && !c.has_rx_work());
        // Broken pipe on write resets.
        let mut c = peer_conn(100, 4096);
        c.stream.broken = true;
        send_rw(&mut c, &s, b"x", 0);
        assert_eq!(c.state(), State::Resetting);
    }
}
