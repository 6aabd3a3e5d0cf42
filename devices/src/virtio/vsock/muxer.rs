//! The Unix-socket backend: it owns the listener, the host clients and every connection,
//! routes guest packets to connections, and schedules packets for the guest round-robin.
//!
//! All its fds live in an epoll of its own whose fd the device registers with the event
//! manager (as Firecracker's muxer does): connections come and go without touching the
//! device thread's registrations, and a driver reset (which arrives on a vCPU thread) can
//! drop every connection at once. Sockets are edge-triggered: an edge sets a hint, and a
//! connection reads only when the guest has credit and an rx buffer is at hand, so a guest
//! that stops reading stalls its own connection (the kernel then pushes back on that host
//! writer) and never spins the loop or delays the others.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{Connection, State};
use super::handler::VsockBackend;
use super::packet::{PacketHeader, RxBuffer, TxPacket};
use super::uds::{self, LineStatus, PendingClient, UdsError};
use super::{HOST_CID, VSOCK_OP_REQUEST, VSOCK_OP_RST, VSOCK_TYPE_STREAM};

/// How long a host client may take to send its CONNECT line, and the guest to answer the
/// REQUEST that follows.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections (either direction) at once; a guest opening more gets RST.
const MAX_CONNECTIONS: usize = 1024;
/// Host clients that have not finished their CONNECT line.
const MAX_PENDING_CLIENTS: usize = 256;
/// RSTs for packets that match no connection, waiting for rx buffers.
const MAX_QUEUED_RSTS: usize = 1024;
/// Host ports for host-initiated connections are allocated counting up from here.
const FIRST_HOST_PORT: u32 = 1024;
const EVENTS_PER_CALL: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    #[error(transparent)]
    Socket(#[from] UdsError),
    #[error("cannot create the vsock epoll or timer")]
    Poller(#[source] io::Error),
}

/// (host port, guest port): what identifies a stream to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey {
    local_port: u32,
    peer_port: u32,
}

struct Entry {
    conn: Connection<UnixStream>,
    /// Unique per socket: epoll tokens and deadlines carry it so stale ones are ignored.
    id: u64,
    /// In `rx_queue` (scheduled for a turn at the rx queue).
    queued: bool,
    /// Host-initiated: `local_port` was allocated by us.
    host_port: bool,
}

enum Target {
    Client(RawFd),
    Conn(ConnKey),
}

struct Deadline {
    at: Instant,
    id: u64,
    target: Target,
}

pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    timer: TimerFd,
    clients: HashMap<RawFd, PendingClient>,
    conns: HashMap<ConnKey, Entry>,
    fds: HashMap<RawFd, ConnKey>,
    host_ports: HashSet<u32>,
    /// Connections with something for the guest, served one packet per turn.
    rx_queue: VecDeque<ConnKey>,
    rsts: VecDeque<PacketHeader>,
    /// In expiry order: every deadline is `handshake_timeout` after its creation.
    deadlines: VecDeque<Deadline>,
    next_port: u32,
    next_id: u64,
    handshake_timeout: Duration,
}

/// epoll token: the socket's id in the high half, its fd in the low half.
fn token(id: u64, fd: RawFd) -> u64 {
    (id << 32) | u64::from(fd as u32)
}

impl Muxer {
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Self, MuxerError> {
        let listener = uds::bind_listener(&uds_path)?;
        let epoll = Epoll::new().map_err(MuxerError::Poller)?;
        let timer = TimerFd::new().map_err(|e| MuxerError::Poller(e.into()))?;
        let edge = EventSet::IN | EventSet::EDGE_TRIGGERED;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(edge, token(0, listener.as_raw_fd())),
            )
            .map_err(MuxerError::Poller)?;
        epoll
            .ctl(
                ControlOperation::Add,
                timer.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token(0, timer.as_raw_fd())),
            )
            .map_err(MuxerError::Poller)?;
        Ok(Self {
            guest_cid,
            uds_path,
            listener,
            epoll,
            timer,
            clients: HashMap::new(),
            conns: HashMap::new(),
            fds: HashMap::new(),
            host_ports: HashSet::new(),
            rx_queue: VecDeque::new(),
            rsts: VecDeque::new(),
            deadlines: VecDeque::new(),
            next_port: FIRST_HOST_PORT,
            next_id: 1,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        })
    }

    /// The fd to watch: readable whenever one of the muxer's sockets or its timer is.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    #[cfg(test)]
    pub fn set_handshake_timeout(&mut self, timeout: Duration) {
        self.handshake_timeout = timeout;
    }

    /// The driver reset the device: every stream it knew is gone.
    pub fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        self.rx_queue.clear();
        self.rsts.clear();
    }

    /// Handles what is ready among the muxer's fds, without blocking.
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); EVENTS_PER_CALL];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::warn!("virtio-vsock: epoll_wait failed: {e}");
                }
                return;
            }
        };
        for ev in &events[..n] {
            let fd = ev.data() as u32 as RawFd;
            let id = ev.data() >> 32;
            let set = ev.event_set();
            if fd == self.listener.as_raw_fd() {
                self.accept_clients();
            } else if fd == self.timer.as_raw_fd() {
                self.expire_deadlines();
            } else if self.clients.get(&fd).is_some_and(|c| c.id == id) {
                self.client_ready(fd);
            } else if let Some(&key) = self.fds.get(&fd) {
                let Some(entry) = self.conns.get_mut(&key).filter(|e| e.id == id) else {
                    continue;
                };
                entry.conn.on_host_event(set);
                self.after_change(key);
            }
        }
    }

    fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        // Ids only need to differ among live sockets; 32 bits of them fit in a token.
        self.next_id = (self.next_id + 1) & 0xffff_ffff;
        if self.next_id == 0 {
            self.next_id = 1;
        }
        id
    }

    /// Watches a socket: edge-triggered, for reading, writing and the peer's hang-up.
    fn watch(&self, fd: RawFd, id: u64) -> io::Result<()> {
        let set = EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(set, token(id, fd)),
        )
    }

    fn unwatch(&self, fd: RawFd) {
        // Closing the fd would drop it from the epoll too; this keeps the set exact.
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    fn accept_clients(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // E.g. out of fds: the next client's edge retries.
                    log::warn!("virtio-vsock: accept on {}: {e}", self.uds_path.display());
                    return;
                }
            };
            if !crate::owner_only::peer_allowed(&stream) {
                log::warn!("virtio-vsock: refused a host client of another user");
                continue;
            }
            if self.clients.len() >= MAX_PENDING_CLIENTS || self.conns.len() >= MAX_CONNECTIONS {
                log::warn!("virtio-vsock: too many connections; host client refused");
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                log::warn!("virtio-vsock: host client refused: {e}");
                continue;
            }
            let id = self.new_id();
            let fd = stream.as_raw_fd();
            if let Err(e) = self.watch(fd, id) {
                log::warn!("virtio-vsock: cannot watch a host client: {e}");
                continue;
            }
            // Registration reports data that is already there, so no read is needed here.
            self.clients.insert(fd, PendingClient::new(stream, id));
            self.add_deadline(Target::Client(fd), id);
        }
    }

    fn client_ready(&mut self, fd: RawFd) {
        let Some(client) = self.clients.get_mut(&fd) else {
            return;
        };
        let port = match client.read_line() {
            LineStatus::Incomplete => return,
            LineStatus::Port(port) => Some(port),
            LineStatus::Invalid => None,
        };
        let Some(client) = self.clients.remove(&fd) else {
            return;
        };
        match port {
            Some(port) => self.connect_to_guest(client, port),
            None => {
                log::debug!("virtio-vsock: host client sent no valid CONNECT line");
                self.unwatch(fd);
            }
        }
    }

    /// A host client asked for guest port `peer_port`: offer the guest a connection.
    fn connect_to_guest(&mut self, client: PendingClient, peer_port: u32) {
        let fd = client.stream.as_raw_fd();
        let Some(local_port) = self.alloc_port(peer_port) else {
            log::warn!("virtio-vsock: no free host port; host client refused");
            self.unwatch(fd);
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port,
        };
        let mut conn = Connection::new_local(client.stream, local_port, peer_port);
        // Bytes after the CONNECT line may already wait in the socket: no new edge for them.
        conn.on_host_event(EventSet::IN);
        self.conns.insert(
            key,
            Entry {
                conn,
                id: client.id,
                queued: false,
                host_port: true,
            },
        );
        self.fds.insert(fd, key);
        self.host_ports.insert(local_port);
        self.add_deadline(Target::Conn(key), client.id);
        self.after_change(key);
    }

    fn alloc_port(&mut self, peer_port: u32) -> Option<u32> {
        // At most one candidate per live connection is taken, so this finds a free one.
        for _ in 0..=self.conns.len() {
            let port = self.next_port;
            self.next_port = port.checked_add(1).unwrap_or(FIRST_HOST_PORT);
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            if !self.host_ports.contains(&port) && !self.conns.contains_key(&key) {
                return Some(port);
            }
        }
        None
    }

    /// The guest asked for host port `dst_port`: connect to the service listening there.
    fn connect_to_host(&mut self, hdr: &PacketHeader) {
        if self.conns.len() >= MAX_CONNECTIONS {
            log::debug!("virtio-vsock: too many connections; guest request refused");
            self.reply_rst(hdr);
            return;
        }
        let path = uds::service_path(&self.uds_path, hdr.dst_port);
        let stream = match uds::connect_nonblocking(&path) {
            Ok(stream) => stream,
            Err(e) => {
                log::debug!("virtio-vsock: guest connect to {}: {e}", path.display());
                self.reply_rst(hdr);
                return;
            }
        };
        let id = self.new_id();
        let fd = stream.as_raw_fd();
        if let Err(e) = self.watch(fd, id) {
            log::warn!("virtio-vsock: cannot watch {}: {e}", path.display());
            self.reply_rst(hdr);
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        self.conns.insert(
            key,
            Entry {
                conn: Connection::new_peer(stream, hdr),
                id,
                queued: false,
                host_port: false,
            },
        );
        self.fds.insert(fd, key);
        self.after_change(key);
    }

    fn reply_rst(&mut self, hdr: &PacketHeader) {
        if hdr.op == VSOCK_OP_RST {
            return;
        }
        if self.rsts.len() >= MAX_QUEUED_RSTS {
            log::debug!("virtio-vsock: RST backlog full; reply dropped");
            return;
        }
        let mut rst = hdr.reply(VSOCK_OP_RST);
        rst.src_cid = HOST_CID;
        rst.dst_cid = self.guest_cid;
        self.rsts.push_back(rst);
    }

    /// After a connection changed: drop it once closed, else give it a turn if it has work.
    fn after_change(&mut self, key: ConnKey) {
        let Some(entry) = self.conns.get_mut(&key) else {
            return;
        };
        if entry.conn.is_closed() {
            self.remove(key);
        } else if !entry.queued && entry.conn.has_rx_work() {
            entry.queued = true;
            self.rx_queue.push_back(key);
        }
    }

    fn remove(&mut self, key: ConnKey) {
        let Some(entry) = self.conns.remove(&key) else {
            return;
        };
        let fd = entry.conn.stream().as_raw_fd();
        self.fds.remove(&fd);
        self.unwatch(fd);
        if entry.host_port {
            self.host_ports.remove(&key.local_port);
        }
        // Dropping the entry closes the host socket.
    }

    fn add_deadline(&mut self, target: Target, id: u64) {
        let at = Instant::now() + self.handshake_timeout;
        self.deadlines.push_back(Deadline { at, id, target });
        if self.deadlines.len() == 1 {
            self.arm_timer(at);
        }
    }

    fn arm_timer(&mut self, at: Instant) {
        // A zero duration would disarm the timer.
        let after = at
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        if let Err(e) = self.timer.reset(after, None) {
            log::warn!("virtio-vsock: cannot arm the handshake timer: {e}");
        }
    }

    /// Closes host clients that are still handshaking after the timeout. Re-arming (or
    /// clearing) the timer also resets its expiry count, so the timer fd is never read.
    fn expire_deadlines(&mut self) {
        let now = Instant::now();
        while let Some(d) = self.deadlines.front() {
            if d.at > now {
                break;
            }
            let Some(d) = self.deadlines.pop_front() else {
                break;
            };
            match d.target {
                Target::Client(fd) => {
                    if self.clients.get(&fd).is_some_and(|c| c.id == d.id) {
                        log::debug!("virtio-vsock: host client sent no CONNECT line in time");
                        let client = self.clients.remove(&fd);
                        self.unwatch(fd);
                        drop(client);
                    }
                }
                Target::Conn(key) => {
                    let stale = self
                        .conns
                        .get(&key)
                        .is_some_and(|e| e.id == d.id && e.conn.state() == State::Connecting);
                    if stale {
                        log::debug!(
                            "virtio-vsock: guest did not answer a connection to port {}",
                            key.peer_port
                        );
                        self.remove(key);
                    }
                }
            }
        }
        match self.deadlines.front() {
            Some(d) => {
                let at = d.at;
                self.arm_timer(at);
            }
            None => {
                if let Err(e) = self.timer.clear() {
                    log::warn!("virtio-vsock: cannot clear the handshake timer: {e}");
                }
            }
        }
    }
}

impl VsockBackend for Muxer {
    fn send_pkt(&mut self, pkt: &TxPacket, mem: &GuestMemoryMmap) {
        let hdr = pkt.hdr();
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            log::debug!(
                "virtio-vsock: packet from CID {} to CID {} dropped",
                hdr.src_cid,
                hdr.dst_cid
            );
            return;
        }
        if hdr.socket_type != VSOCK_TYPE_STREAM {
            log::debug!("virtio-vsock: socket type {} refused", hdr.socket_type);
            self.reply_rst(hdr);
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        match self.conns.get_mut(&key) {
            Some(entry) => entry.conn.on_guest_pkt(hdr, pkt.payload(), mem),
            None if hdr.op == VSOCK_OP_REQUEST => return self.connect_to_host(hdr),
            None => return self.reply_rst(hdr),
        }
        self.after_change(key);
    }

    fn bad_pkt(&mut self, hdr: &PacketHeader) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        match self.conns.get_mut(&key) {
            // Its payload is lost: the stream can no longer be trusted.
            Some(entry) => entry.conn.kill(),
            None => return self.reply_rst(hdr),
        }
        self.after_change(key);
    }

    fn recv_pkt(&mut self, buf: &RxBuffer, mem: &GuestMemoryMmap) -> Option<PacketHeader> {
        if let Some(rst) = self.rsts.pop_front() {
            return Some(rst);
        }
        // One pass at most: a connection may turn out to have nothing after all.
        for _ in 0..self.rx_queue.len() {
            let key = self.rx_queue.pop_front()?;
            let Some(entry) = self.conns.get_mut(&key) else {
                continue;
            };
            entry.queued = false;
            let pkt = entry.conn.recv_pkt(buf, mem);
            self.after_change(key);
            if let Some(mut hdr) = pkt {
                hdr.src_cid = HOST_CID;
                hdr.dst_cid = self.guest_cid;
                return Some(hdr);
            }
        }
        None
    }

    fn has_pending_rx(&self) -> bool {
        !self.rsts.is_empty() || !self.rx_queue.is_empty()
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        // Nobody can connect any more; do not leave a dead socket file behind.
        let _ = std::fs::remove_file(&self.uds_path);
    }
}
