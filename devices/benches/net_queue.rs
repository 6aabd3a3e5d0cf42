//! virtio-net tx frames/s through the device (pop a chain, check it, writev straight from
//! guest memory to the TAP, complete it) against write(2) of the same frames, from the
//! same guest memory, to the same TAP: 1500-byte frames, and 64 KiB TCP GSO frames the way Linux
//! lays them out (header and protocol headers, then 4 KiB page fragments). The TAP lives
//! in a private network namespace, up, with nothing listening: the host drops each frame
//! early (addressed to another host), the same for both sides. Prints medians of RUNS
//! runs and the ratio. Needs root (a network namespace and a TAP); says so otherwise.

use std::process::Command;
use std::time::Instant;

use devices::virtio::net::{NetBackend, NetHandler, Tap, NET_HDR_LEN};
use devices::virtio::VIRTIO_F_VERSION_1;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const RUNS: usize = 15;
const BATCH: u16 = 64;
/// Room for BATCH chains of 17 descriptors each, without indirect tables.
const TX_QUEUE_SIZE: u16 = 2048;
const PAGE: usize = 4096;

const TX_DESC: u64 = 0x0;
const TX_AVAIL: u64 = 0x1_0000;
const TX_USED: u64 = 0x2_0000;
/// The rx queue the handler needs; the bench never posts on it.
const RX_RING: u64 = 0x3_0000;
const FRAMES: u64 = 0x10_0000;
const MEM_SIZE: usize = 16 << 20;

const VRING_DESC_F_NEXT: u16 = 1;

/// One kind of frame: its bytes (header included) and how a driver splits it.
struct Case {
    name: &'static str,
    frame: Vec<u8>,
    /// Descriptor lengths, in order; they add up to the frame.
    pieces: Vec<usize>,
    frames_per_run: usize,
}

/// An Ethernet frame of `len` bytes to a host that is not this one, so the host stack
/// drops it right after the TAP: EtherType IPv4, a 20-byte IP header, a TCP header.
fn frame(len: usize, hdr: [u8; NET_HDR_LEN]) -> Vec<u8> {
    let mut f = hdr.to_vec();
    f.extend([0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    let ip_len = (len - 14) as u16;
    f.extend([
        0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ]);
    f[NET_HDR_LEN + 16..NET_HDR_LEN + 18].copy_from_slice(&ip_len.to_be_bytes());
    f.extend([
        0x30, 0x39, 0, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    f.resize(NET_HDR_LEN + len, 0x5a);
    f
}

fn cases() -> [Case; 2] {
    let small = frame(1514, [0; NET_HDR_LEN]);
    // NEEDS_CSUM, GSO TCPv4, 54 bytes of headers, 1448-byte segments, checksum at 34+16.
    let mut gso_hdr = [0u8; NET_HDR_LEN];
    gso_hdr[..10].copy_from_slice(&[1, 1, 54, 0, 0xa8, 0x05, 34, 0, 16, 0]);
    let big = frame(65_000, gso_hdr);
    let mut pieces = vec![NET_HDR_LEN + 54];
    let mut left = big.len() - pieces[0];
    while left > 0 {
        pieces.push(left.min(PAGE));
        left -= pieces[pieces.len() - 1];
    }
    [
        Case {
            name: "1500 B",
            pieces: vec![small.len()],
            frame: small,
            frames_per_run: 50_000,
        },
        Case {
            name: "64 KiB GSO",
            frame: big,
            pieces,
            frames_per_run: 5_000,
        },
    ]
}

/// A minimal driver: BATCH fixed chains of `case` in guest memory, republished each round.
struct Driver {
    mem: GuestMemoryMmap,
    avail_idx: u16,
    heads: Vec<u16>,
    /// Where each chain's frame lies, in one piece.
    frames: Vec<u64>,
}

impl Driver {
    fn new(case: &Case) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let mut heads = Vec::new();
        let mut frames = Vec::new();
        let mut desc = 0u16;
        // Frames page-aligned, back to back, as a guest's buffers are.
        let stride = case.frame.len().next_multiple_of(PAGE) as u64;
        for chain in 0..u64::from(BATCH) {
            let slot = FRAMES + chain * stride;
            mem.write_slice(&case.frame, GuestAddress(slot)).unwrap();
            frames.push(slot);
            heads.push(desc);
            let mut at = slot;
            for (i, &len) in case.pieces.iter().enumerate() {
                let last = i + 1 == case.pieces.len();
                let d = TX_DESC + u64::from(desc) * 16;
                mem.write_obj(at, GuestAddress(d)).unwrap();
                mem.write_obj(len as u32, GuestAddress(d + 8)).unwrap();
                let flags = if last { 0 } else { VRING_DESC_F_NEXT };
                mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
                mem.write_obj(desc + 1, GuestAddress(d + 14)).unwrap();
                at += len as u64;
                desc += 1;
            }
        }
        assert!(desc <= TX_QUEUE_SIZE, "descriptor table overflow");
        Self {
            mem,
            avail_idx: 0,
            heads,
            frames,
        }
    }

    fn queue(size: u16, desc: u64, avail: u64, used: u64) -> Queue {
        let mut q = Queue::new(size).unwrap();
        q.set_size(size);
        q.set_desc_table_address(Some(desc as u32), Some(0));
        q.set_avail_ring_address(Some(avail as u32), Some(0));
        q.set_used_ring_address(Some(used as u32), Some(0));
        q.set_ready(true);
        q
    }

    fn publish(&mut self) {
        for &head in &self.heads {
            let slot = u64::from(self.avail_idx % TX_QUEUE_SIZE);
            self.mem
                .write_obj(head, GuestAddress(TX_AVAIL + 4 + slot * 2))
                .unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
        self.mem
            .write_obj(self.avail_idx, GuestAddress(TX_AVAIL + 2))
            .unwrap();
    }
}

/// Frames/s through the device.
fn device_run(tap: &mut Tap, case: &Case, driver: &mut Driver) -> f64 {
    let tx = Driver::queue(TX_QUEUE_SIZE, TX_DESC, TX_AVAIL, TX_USED);
    let rx = Driver::queue(256, RX_RING, RX_RING + 0x1000, RX_RING + 0x2000);
    let mut handler = NetHandler::new(driver.mem.clone(), rx, tx, VIRTIO_F_VERSION_1);
    let rounds = case.frames_per_run / usize::from(BATCH);
    let mut busy = 0.0;
    for _ in 0..rounds {
        driver.publish();
        let start = Instant::now();
        handler.process_tx(tap).expect("a well-formed queue");
        busy += start.elapsed().as_secs_f64();
    }
    (rounds * usize::from(BATCH)) as f64 / busy
}

/// Frames/s of write(2) of the same frames from where the driver put them.
fn raw_run(tap: &Tap, case: &Case, driver: &Driver) -> f64 {
    let len = case.frame.len();
    let frames: Vec<_> = (driver.frames.iter())
        .map(|&at| driver.mem.get_slice(GuestAddress(at), len).unwrap())
        .collect();
    let rounds = case.frames_per_run / usize::from(BATCH);
    let start = Instant::now();
    for _ in 0..rounds {
        for f in &frames {
            // SAFETY: write reads `len` bytes of guest memory that vm-memory bounds-checked
            // and that stays mapped while `driver` is borrowed.
            let n = unsafe { libc::write(tap.fd(), f.ptr_guard().as_ptr().cast(), len) };
            assert_eq!(n, len as isize, "{}", std::io::Error::last_os_error());
        }
    }
    (rounds * usize::from(BATCH)) as f64 / start.elapsed().as_secs_f64()
}

/// Frames/s of writev(2) of the same frames in the driver's pieces: the kernel's cost of
/// a scattered frame, without the device.
fn gather_run(tap: &Tap, case: &Case, driver: &Driver) -> f64 {
    let iovecs: Vec<Vec<libc::iovec>> = (driver.frames.iter())
        .map(|&at| {
            let mut at = at;
            (case.pieces.iter())
                .map(|&len| {
                    let s = driver.mem.get_slice(GuestAddress(at), len).unwrap();
                    at += len as u64;
                    libc::iovec {
                        iov_base: s.ptr_guard_mut().as_ptr().cast(),
                        iov_len: len,
                    }
                })
                .collect()
        })
        .collect();
    let rounds = case.frames_per_run / usize::from(BATCH);
    let start = Instant::now();
    for _ in 0..rounds {
        for iov in &iovecs {
            // SAFETY: the iovecs point into guest memory that vm-memory bounds-checked and
            // that stays mapped while `driver` is borrowed; writev only reads them.
            let n = unsafe { libc::writev(tap.fd(), iov.as_ptr(), iov.len() as libc::c_int) };
            assert_eq!(
                n,
                case.frame.len() as isize,
                "{}",
                std::io::Error::last_os_error()
            );
        }
    }
    (rounds * usize::from(BATCH)) as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // SAFETY: unshare only takes flags; it moves this (single) thread into a new, empty
    // network namespace, so the TAP never appears on the host.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        println!(
            "net_queue: skipped, no private network namespace for a TAP: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    let mut tap = Tap::open("benchtap0").expect("a TAP in the private namespace");
    let up = Command::new("ip")
        .args(["link", "set", "dev", tap.name(), "up"])
        .status()
        .expect("ip (iproute2)");
    assert!(up.success(), "ip link set up failed");
    println!("virtio-net tx on a mock queue vs write(2) of the same frames to the same TAP (private netns), median of {RUNS} runs");
    for case in cases() {
        let (mut device, mut raw, mut gather) = (Vec::new(), Vec::new(), Vec::new());
        // Interleaved so all see the same machine state.
        for _ in 0..RUNS {
            let mut driver = Driver::new(&case);
            device.push(device_run(&mut tap, &case, &mut driver));
            raw.push(raw_run(&tap, &case, &driver));
            if case.pieces.len() > 1 {
                gather.push(gather_run(&tap, &case, &driver));
            }
        }
        let (d, r) = (median(device), median(raw));
        println!(
            "net tx {:<10} ({:>2} descs): device {d:>8.0} frames/s ({:>5.0} ns)   raw {r:>8.0} frames/s ({:>5.0} ns)   ratio {:.2}",
            case.name,
            case.pieces.len(),
            1e9 / d,
            1e9 / r,
            d / r
        );
        if !gather.is_empty() {
            let g = median(gather);
            println!(
                "  the same pieces by writev(2):                           {g:>8.0} frames/s ({:>5.0} ns)   ratio {:.2}",
                1e9 / g,
                d / g
            );
        }
    }
}
