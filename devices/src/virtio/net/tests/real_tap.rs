//! One real TAP, created in a private network namespace (a thread of ours moves into a
//! new one; the host's network is never touched): a frame the guest sends comes out of
//! the TAP's interface, and a frame sent into the interface lands in the guest's buffer.
//! Needs CAP_SYS_ADMIN and CAP_NET_ADMIN (root); says so and passes without them.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use vm_memory::Bytes;

use super::*;
use crate::virtio::net::{
    Net, NetBackend, NetConfig, Tap, TapSource, RX_QUEUE, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6,
    TUN_F_TSO_ECN, TX_QUEUE, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_MRG_RXBUF,
};
use crate::virtio::{Activation, VirtioDevice, VirtioFront};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
/// Local experimental EtherTypes: nothing in the namespace answers or sends them.
const TO_HOST: u16 = 0x88b5;
const TO_GUEST: u16 = 0x88b6;
const WAIT: Duration = Duration::from_secs(5);

fn check(ret: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if ret < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(ret)
}

/// Sets IFF_UP on interface `name` of this thread's namespace.
fn link_up(name: &str) -> io::Result<()> {
    // SAFETY: socket() takes integers and returns a new fd we own.
    let fd = check(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) },
        "socket",
    )?;
    // SAFETY: `fd` was just returned by socket() and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, &s) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads and writes the ifreq `ifr` points to (name checked short).
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) };
    check(r, "SIOCGIFFLAGS")?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the ifreq `ifr` points to.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut ifr) };
    check(r, "SIOCSIFFLAGS").map(drop)
}

/// An AF_PACKET socket on interface `ifindex`: the other end of the TAP.
struct Wire {
    sock: OwnedFd,
    ifindex: i32,
}

impl Wire {
    fn open(name: &str) -> io::Result<Self> {
        let cname = std::ffi::CString::new(name).unwrap();
        // SAFETY: if_nametoindex reads the NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket() takes integers and returns a new fd we own.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        let fd = check(fd, "socket(AF_PACKET)")?;
        // SAFETY: `fd` was just returned by socket() and nothing else owns it.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let addr = Self::addr(ifindex, proto);
        // SAFETY: bind reads a sockaddr_ll of the size given.
        let r = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        check(r, "bind(AF_PACKET)")?;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: SO_RCVTIMEO reads a timeval of the size given.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        check(r, "SO_RCVTIMEO")?;
        Ok(Self { sock, ifindex })
    }

    fn addr(ifindex: i32, proto: u16) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
        let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        a.sll_family = libc::AF_PACKET as u16;
        a.sll_protocol = proto;
        a.sll_ifindex = ifindex;
        a
    }

    /// The next frame of EtherType `ethertype` on the wire, within `WAIT`.
    fn recv(&self, ethertype: u16) -> Vec<u8> {
        let start = Instant::now();
        let mut buf = vec![0u8; 70_000];
        while start.elapsed() < WAIT {
            // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
            let n =
                unsafe { libc::recv(self.sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 14 && buf[12..14] == ethertype.to_be_bytes() {
                return buf[..n as usize].to_vec();
            }
        }
        panic!("no frame of type {ethertype:#x} on the wire within {WAIT:?}");
    }

    /// Frames sent from now on start with a `struct virtio_net_hdr` (10 bytes): GSO
    /// frames leave whole when the TAP has the offload on.
    fn enable_vnet_hdr(&self) {
        let on: libc::c_int = 1;
        // SAFETY: PACKET_VNET_HDR reads an int of the size given.
        let r = unsafe {
            libc::setsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_VNET_HDR,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        check(r, "PACKET_VNET_HDR").unwrap();
    }

    /// Sends `frame` out of the interface: into the TAP, towards the guest.
    fn send(&self, frame: &[u8]) {
        let addr = Self::addr(self.ifindex, 0);
        // SAFETY: sendto reads `frame` and a sockaddr_ll of the size given.
        let n = unsafe {
            libc::sendto(
                self.sock.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(n, frame.len() as isize, "{}", io::Error::last_os_error());
    }
}

/// An Ethernet frame of `len` bytes (header included) from `src` to `dst`.
fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, len: usize) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend(src);
    f.extend(ethertype.to_be_bytes());
    f.extend((14..len).map(|i| (i % 251) as u8));
    f
}

/// The device on a TAP of this thread's namespace, activated with `features`, with 64
/// rx buffers of 2 KiB posted; `None` (said on stderr) without the privileges.
struct Setup {
    wire: Wire,
    front: VirtioFront<Net>,
    em: EventManager<Arc<Mutex<Net>>>,
    rings: Rings,
}

const RX_SLOT: u64 = 0x1000;

fn rx_slot(head: u32) -> u64 {
    BUFS + 0x10_0000 + u64::from(head) * RX_SLOT
}

impl Setup {
    fn new(features: u64) -> Self {
        // Nothing skips: these tests need root (CAP_SYS_ADMIN for the namespace).
        // SAFETY: unshare only takes flags; it moves this thread alone (a network
        // namespace is per thread) into a new, empty namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "cannot create a network namespace (run the tests as root): {}",
            io::Error::last_os_error()
        );
        let tap = Tap::open("vmmtest%d").expect("TAP in a private namespace");
        assert!(tap.name().starts_with("vmmtest"), "{}", tap.name());
        let base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
        assert_eq!(tap.supported_offloads() & base, base, "a kernel with TSO");
        let name = tap.name().to_string();
        link_up(&name).unwrap();
        let wire = Wire::open(&name).unwrap();
        let net = Net::new(NetConfig {
            tap: TapSource::Open(tap),
            mac: MAC,
            mtu: None,
        })
        .unwrap();
        let (mut front, worker) = VirtioFront::new(net).unwrap();
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(worker);
        let mut rings = Rings::new(256);
        front
            .activate(Activation {
                mem: rings.mem.clone(),
                queues: vec![rings.rx.queue(), rings.tx.queue()],
                acked_features: VIRTIO_F_VERSION_1 | features,
            })
            .unwrap();
        for i in 0..64 {
            let head = rings.rx.post(&[(rx_slot(i), 2048, true)]).unwrap();
            assert_eq!(u32::from(head), i);
        }
        front.queue_events()[RX_QUEUE].write(1).unwrap();
        Self {
            wire,
            front,
            em,
            rings,
        }
    }

    /// The guest sends `hdr` + `frame`; returns what came out of the interface.
    fn guest_sends(&mut self, hdr: [u8; NET_HDR], frame: &[u8], ethertype: u16) -> Vec<u8> {
        let mut sent = hdr.to_vec();
        sent.extend(frame);
        self.rings
            .mem
            .write_slice(&sent, vm_memory::GuestAddress(BUFS))
            .unwrap();
        self.rings
            .tx
            .post(&[(BUFS, sent.len() as u32, false)])
            .unwrap();
        self.front.queue_events()[TX_QUEUE].write(1).unwrap();
        self.em.run_with_timeout(100).unwrap();
        let out = self.wire.recv(ethertype);
        assert_eq!(self.rings.tx.used().len(), 1);
        out
    }

    /// Runs the device until a frame of `ethertype` reaches the guest's buffers; returns
    /// it with its header (whatever else the namespace sends, e.g. IPv6 router
    /// solicitations, is skipped).
    fn guest_receives(&mut self, ethertype: u16) -> Vec<u8> {
        let start = Instant::now();
        let mut frame = Vec::new();
        let mut left = 0;
        loop {
            assert!(start.elapsed() < WAIT, "the frame never reached the guest");
            self.em.run_with_timeout(100).unwrap();
            for (head, len) in self.rings.rx.used() {
                let mut buf = vec![0u8; len as usize];
                let at = vm_memory::GuestAddress(rx_slot(head));
                self.rings.mem.read_slice(&mut buf, at).unwrap();
                if left == 0 {
                    left = u16::from_le_bytes([buf[10], buf[11]]);
                    frame.clear();
                }
                frame.extend(buf);
                left -= 1;
                let kind = frame.get(NET_HDR + 12..NET_HDR + 14);
                if left == 0 && kind == Some(&ethertype.to_be_bytes()[..]) {
                    return frame;
                }
            }
        }
    }
}

#[test]
fn frames_cross_a_real_tap_both_ways() {
    std::thread::spawn(|| {
        let mut s = Setup::new(VIRTIO_NET_F_MRG_RXBUF | VIRTIO_NET_F_GUEST_CSUM);
        let out = ethernet([0xff; 6], MAC, TO_HOST, 1200);
        assert_eq!(s.guest_sends([0; NET_HDR], &out, TO_HOST), out);
        let back = ethernet(MAC, [0x02, 0, 0, 0, 0, 1], TO_GUEST, 1500);
        s.wire.send(&back);
        let got = s.guest_receives(TO_GUEST);
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
        assert_eq!(got[NET_HDR..], back);
    })
    .join()
    .unwrap();
}

/// A 64 KiB TCP/IPv4 segment from `src` to `dst` for GSO: Ethernet, IPv4 (20 bytes,
/// checksummed), TCP (20 bytes, checksum left to the offload) and payload.
fn tcp_gso_frame(dst: [u8; 6], src: [u8; 6], total: usize) -> Vec<u8> {
    let mut f = ethernet(dst, src, 0x0800, total);
    let ip_len = (total - 14) as u16;
    let ip = &mut f[14..34];
    ip.copy_from_slice(&[
        0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ]);
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    let sum: u32 = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let tcp = &mut f[34..54];
    tcp.copy_from_slice(&[
        0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    f
}

/// GSO through a real kernel: what the guest sends as one 64 KiB TCP segment comes out
/// whole (HOST_TSO4), and with GUEST_TSO4 acked (so TUNSETOFFLOAD turned TSO4 on) one
/// the host sends reaches the guest whole, over merged buffers, with its GSO header.
#[test]
fn gso_frames_cross_a_real_tap_whole() {
    std::thread::spawn(|| {
        let features = VIRTIO_NET_F_MRG_RXBUF | VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4;
        let mut s = Setup::new(features);
        // NEEDS_CSUM, GSO TCPv4, 54 bytes of headers, 1448-byte segments, checksum at
        // 34 + 16.
        let hdr = net_hdr(1, 1, 54, 1448, 34, 16);
        let out = tcp_gso_frame([0xff; 6], MAC, 60_000);
        assert_eq!(s.guest_sends(hdr, &out, 0x0800).len(), out.len());

        s.wire.enable_vnet_hdr();
        let back = tcp_gso_frame(MAC, [0x02, 0, 0, 0, 0, 1], 60_000);
        let mut sent = hdr[..10].to_vec();
        sent.extend(&back);
        s.wire.send(&sent);
        let got = s.guest_receives(0x0800);
        assert_eq!(got[1], 1, "gso_type TCPv4: the TAP did not segment it");
        assert_eq!(u16::from_le_bytes([got[4], got[5]]), 1448, "gso_size");
        let buffers = u16::from_le_bytes([got[10], got[11]]);
        assert_eq!(usize::from(buffers), (NET_HDR + back.len()).div_ceil(2048));
        assert_eq!(got[NET_HDR..], back);
    })
    .join()
    .unwrap();
}

/// Without GUEST_TSO4 the TAP's TSO stays off: the kernel segments the same packet and
/// the guest gets MSS-sized frames with no GSO header.
#[test]
fn without_guest_tso_the_kernel_segments_for_the_guest() {
    std::thread::spawn(|| {
        let mut s = Setup::new(VIRTIO_NET_F_MRG_RXBUF | VIRTIO_NET_F_GUEST_CSUM);
        s.wire.enable_vnet_hdr();
        let back = tcp_gso_frame(MAC, [0x02, 0, 0, 0, 0, 1], 60_000);
        let mut sent = net_hdr(1, 1, 54, 1448, 34, 16)[..10].to_vec();
        sent.extend(&back);
        s.wire.send(&sent);
        let got = s.guest_receives(0x0800);
        assert_eq!(got[1], 0, "no GSO for this guest");
        assert_eq!(got.len(), NET_HDR + 54 + 1448, "one segment");
        assert_eq!(got[NET_HDR + 54..], back[54..54 + 1448]);
    })
    .join()
    .unwrap();
}

const NET_HDR: usize = crate::virtio::net::NET_HDR_LEN;
