//! virtio-blk requests/s through the device (parse → execute → complete on a queue in
//! guest memory) against plain pread/pwrite of the same sizes on the same file; then the
//! qcow2 engine against the raw one, both through the device: I/O on allocated clusters,
//! and first writes that allocate. Prints medians of RUNS runs and the ratios.
//! `make bench` runs it.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use devices::disk::{qcow2, DiskEngine, Qcow2Image};
use devices::virtio::block::{BlockHandler, DiskInfo, RawFile};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const RUNS: usize = 15;
const REQUESTS_PER_RUN: usize = 50_000;
const BATCH: u16 = 64;
const QUEUE_SIZE: u16 = 256;
/// Request sizes: 4 KiB (small random I/O) and 64 KiB (readahead/writeback sized).
const BLOCKS: [u32; 2] = [4096, 65536];
const FILE_SIZE: u64 = 64 << 20;

const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x1_0000;
const USED_RING: u64 = 0x2_0000;
const HEADERS: u64 = 0x10_0000;
const STATUS: u64 = 0x18_0000;
const DATA: u64 = 0x20_0000;
/// Guest memory: the rings, headers and BATCH data buffers of the largest size.
const MEM_SIZE: usize = 16 << 20;

/// qcow2 images use QEMU's default cluster size.
const CLUSTER_BITS: u32 = 16;

const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;

/// Where request i goes, in blocks of the request size.
#[derive(Clone, Copy)]
enum Pattern {
    /// A stride of 7919 blocks: every block once before any twice, no locality.
    Random,
    Sequential,
    /// One request per cluster: with a fresh image, every request allocates.
    PerCluster,
}

impl Pattern {
    fn offset(self, i: u64, block: u32) -> u64 {
        let blocks = FILE_SIZE / u64::from(block);
        match self {
            Pattern::Random => (i * 7919 % blocks) * u64::from(block),
            Pattern::Sequential => (i % blocks) * u64::from(block),
            Pattern::PerCluster => (i << CLUSTER_BITS) % FILE_SIZE,
        }
    }
}

/// A minimal driver: BATCH fixed 3-descriptor chains, republished every round.
struct Driver {
    mem: GuestMemoryMmap,
    avail_idx: u16,
    block: u32,
    pattern: Pattern,
}

impl Driver {
    fn new(mem: GuestMemoryMmap, write: bool, block: u32, pattern: Pattern) -> Self {
        // Touch the data buffers, as the raw side's are, so neither copies from the zero page.
        let fill = vec![0xa5u8; block as usize * usize::from(BATCH)];
        mem.write_slice(&fill, GuestAddress(DATA)).unwrap();
        for chain in 0..u64::from(BATCH) {
            let d = chain * 3;
            let data_flags = if write { 0 } else { VRING_DESC_F_WRITE };
            let descs = [
                (HEADERS + chain * 16, 16u32, VRING_DESC_F_NEXT, d + 1),
                (
                    DATA + chain * u64::from(block),
                    block,
                    data_flags | VRING_DESC_F_NEXT,
                    d + 2,
                ),
                (STATUS + chain, 1, VRING_DESC_F_WRITE, 0),
            ];
            for (i, (addr, len, flags, next)) in descs.into_iter().enumerate() {
                let at = DESC_TABLE + (d + i as u64) * 16;
                mem.write_obj(addr, GuestAddress(at)).unwrap();
                mem.write_obj(len, GuestAddress(at + 8)).unwrap();
                mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
                mem.write_obj(next as u16, GuestAddress(at + 14)).unwrap();
            }
            mem.write_obj(u32::from(write), GuestAddress(HEADERS + chain * 16))
                .unwrap();
        }
        Self {
            mem,
            avail_idx: 0,
            block,
            pattern,
        }
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(QUEUE_SIZE).unwrap();
        q.set_size(QUEUE_SIZE);
        q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        q.set_used_ring_address(Some(USED_RING as u32), Some(0));
        q.set_ready(true);
        q
    }

    /// Publishes the batch with the sectors for this round.
    fn publish(&mut self, round: u64) {
        for chain in 0..u64::from(BATCH) {
            let i = round * u64::from(BATCH) + chain;
            let sector = self.pattern.offset(i, self.block) / 512;
            self.mem
                .write_obj(sector, GuestAddress(HEADERS + chain * 16 + 8))
                .unwrap();
            let slot = u64::from(self.avail_idx % QUEUE_SIZE);
            self.mem
                .write_obj((chain * 3) as u16, GuestAddress(AVAIL_RING + 4 + slot * 2))
                .unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL_RING + 2))
            .unwrap();
    }
}

fn device_run(path: &std::path::Path, write: bool, block: u32) -> f64 {
    let file = File::options().read(true).write(true).open(path).unwrap();
    let engine = RawFile::new(file).unwrap();
    engine_run(
        &engine,
        write,
        block,
        Pattern::Random,
        REQUESTS_PER_RUN,
        false,
    )
}

/// Requests/s of `requests` requests through the device on `engine`; with `flush`, the
/// time includes a final flush (metadata that allocation left in memory).
fn engine_run(
    engine: &dyn DiskEngine,
    write: bool,
    block: u32,
    pattern: Pattern,
    requests: usize,
    flush: bool,
) -> f64 {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let mut driver = Driver::new(mem.clone(), write, block, pattern);
    let mut handler = BlockHandler::new(mem, driver.queue());
    let id = [0u8; 20];
    let disk = DiskInfo {
        id: &id,
        read_only: false,
    };
    let rounds = requests / usize::from(BATCH);
    let mut busy = 0.0;
    for round in 0..rounds {
        driver.publish(round as u64);
        let start = Instant::now();
        handler
            .process_queue(engine, &disk)
            .expect("a well-formed queue");
        busy += start.elapsed().as_secs_f64();
    }
    if flush {
        let start = Instant::now();
        engine.flush().unwrap();
        busy += start.elapsed().as_secs_f64();
    }
    (rounds * usize::from(BATCH)) as f64 / busy
}

fn raw_run(path: &std::path::Path, write: bool, block: u32) -> f64 {
    let file = File::options().read(true).write(true).open(path).unwrap();
    // The same buffer footprint as the device's batch: one 4 KiB slot per request.
    let mut buf = vec![0xa5u8; block as usize * usize::from(BATCH)];
    let blocks = FILE_SIZE / u64::from(block);
    let rounds = REQUESTS_PER_RUN / usize::from(BATCH);
    let start = Instant::now();
    for i in 0..(rounds * usize::from(BATCH)) as u64 {
        let offset = (i * 7919 % blocks) * u64::from(block);
        let slot = (i % u64::from(BATCH)) as usize * block as usize;
        let slot = &mut buf[slot..slot + block as usize];
        if write {
            file.write_all_at(slot, offset).unwrap();
        } else {
            file.read_exact_at(slot, offset).unwrap();
        }
    }
    (rounds * usize::from(BATCH)) as f64 / start.elapsed().as_secs_f64()
}

/// A qcow2 image of FILE_SIZE in `dir`, every cluster allocated if `fill`.
fn qcow2_image(dir: &std::path::Path, fill: bool) -> Qcow2Image {
    let path = dir.join("bench.qcow2");
    let _ = std::fs::remove_file(&path);
    qcow2::create(&path, FILE_SIZE, CLUSTER_BITS, None).unwrap();
    let img = Qcow2Image::open(&path, true).unwrap();
    if fill {
        let mut chunk = vec![0x5au8; 1 << 20];
        for i in 0..(FILE_SIZE >> 20) {
            img.write_at(&vm_memory::VolatileSlice::from(&mut chunk[..]), i << 20)
                .unwrap();
        }
        img.flush().unwrap();
    }
    img
}

/// A sparse raw file of FILE_SIZE in `dir`.
fn fresh_raw(dir: &std::path::Path) -> RawFile {
    let path = dir.join("bench.raw");
    let _ = std::fs::remove_file(&path);
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.set_len(FILE_SIZE).unwrap();
    RawFile::new(file).unwrap()
}

fn qcow2_vs_raw(dir: &std::path::Path, raw_path: &std::path::Path) {
    println!(
        "qcow2 ({} KiB clusters) vs raw, both through the device on tmpfs, median of {RUNS} runs",
        1 << (CLUSTER_BITS - 10)
    );
    let allocated = qcow2_image(dir, true);
    let raw = RawFile::new(
        File::options()
            .read(true)
            .write(true)
            .open(raw_path)
            .unwrap(),
    )
    .unwrap();
    let cases = [
        (
            "4 KiB random read",
            false,
            4096,
            Pattern::Random,
            REQUESTS_PER_RUN,
        ),
        (
            "4 KiB random write",
            true,
            4096,
            Pattern::Random,
            REQUESTS_PER_RUN,
        ),
        (
            "64 KiB sequential read",
            false,
            65536,
            Pattern::Sequential,
            REQUESTS_PER_RUN / 5,
        ),
        (
            "64 KiB sequential write",
            true,
            65536,
            Pattern::Sequential,
            REQUESTS_PER_RUN / 5,
        ),
    ];
    for (name, write, block, pattern, requests) in cases {
        let (mut q, mut r) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            q.push(engine_run(
                &allocated, write, block, pattern, requests, false,
            ));
            r.push(engine_run(&raw, write, block, pattern, requests, false));
        }
        report(name, median(q), median(r));
    }
    drop(allocated);
    // First writes: a fresh image (and a fresh sparse raw file) per run, one request per
    // cluster, so every request allocates; the final flush is timed.
    let clusters = (FILE_SIZE >> CLUSTER_BITS) as usize;
    for (name, block) in [("64 KiB first write", 65536), ("4 KiB first write", 4096)] {
        let (mut q, mut r) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let img = qcow2_image(dir, false);
            q.push(engine_run(
                &img,
                true,
                block,
                Pattern::PerCluster,
                clusters,
                true,
            ));
            let raw = fresh_raw(dir);
            r.push(engine_run(
                &raw,
                true,
                block,
                Pattern::PerCluster,
                clusters,
                true,
            ));
        }
        report(name, median(q), median(r));
    }
}

fn report(name: &str, qcow2: f64, raw: f64) {
    println!(
        "{name:<24}: qcow2 {qcow2:>9.0} req/s   raw {raw:>9.0} req/s   ratio {:.2}",
        qcow2 / raw
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // tmpfs keeps disk writeback (which lands on whichever run is active) out of the
    // comparison: both sides pay the same syscall and copy, nothing else.
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    let mut file = tempfile::NamedTempFile::new_in(dir).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..(FILE_SIZE >> 20) {
        file.write_all(&chunk).unwrap();
    }
    file.flush().unwrap();
    println!("virtio-blk on a mock queue vs pread/pwrite on the same 64 MiB file on tmpfs, median of {RUNS} runs x {REQUESTS_PER_RUN} requests");
    for block in BLOCKS {
        for (name, write) in [("read", false), ("write", true)] {
            let mut device = Vec::new();
            let mut raw = Vec::new();
            // Interleaved so both see the same machine state.
            for _ in 0..RUNS {
                device.push(device_run(file.path(), write, block));
                raw.push(raw_run(file.path(), write, block));
            }
            let (d, r) = (median(device), median(raw));
            println!(
                "blk {name:<5} {:>3} KiB: device {d:>9.0} req/s   raw {r:>9.0} req/s   ratio {:.2}",
                block / 1024,
                d / r
            );
        }
    }
    let scratch = tempfile::tempdir_in(dir).unwrap();
    qcow2_vs_raw(scratch.path(), file.path());
}
