//! Shared scaffolding of the fuzz targets: a reader that turns fuzz input into numbers,
//! guest memory, a driver-side split virtqueue in that memory, and an in-memory disk.
//! None of it parses guest data: the targets hand the bytes to the real device code.

use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{GuestAddress, GuestMemoryMmap};

/// The driver side of a split virtqueue, shared with the devices' own tests.
pub use devices::virtio::test_ring::TestRing as Ring;

/// Reads little-endian numbers and byte strings off the fuzz input; past the end it
/// yields zeroes and empty slices, so every input decodes to something.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Everything that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    fn le<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        let got = self.bytes(N);
        b[..got.len()].copy_from_slice(got);
        b
    }

    pub fn u8(&mut self) -> u8 {
        self.le::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.le())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.le())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.le())
    }

    /// A byte string with a one-byte length prefix.
    pub fn short_bytes(&mut self) -> &'a [u8] {
        let n = usize::from(self.u8());
        self.bytes(n)
    }

    /// A byte string with a two-byte length prefix, at most `max` bytes.
    pub fn long_bytes(&mut self, max: usize) -> &'a [u8] {
        let n = usize::from(self.u16()).min(max);
        self.bytes(n)
    }
}

/// Ignores SIGPIPE, as the vmm binary does: Rust's runtime sets SIG_IGN before `main`, but
/// a fuzz target starts in libFuzzer's `main`, where a write to a socket whose peer is gone
/// would end the process instead of failing with EPIPE (which the device code handles).
pub fn ignore_sigpipe() {
    // SAFETY: installs the SIG_IGN disposition, no handler code; called once, before the
    // fuzzer runs anything.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// A directory for a target's fixture files, `fuzz/target/fixtures/<name>`: the same one
/// for every run, so that runs leave nothing behind in /tmp.
pub fn fixture_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/fixtures")
        .join(name);
    std::fs::create_dir_all(&dir).expect("cannot create the fixture directory");
    dir
}

/// `size` bytes of zeroed guest memory at guest address 0.
pub fn guest_memory(size: u64) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)])
        .expect("cannot map guest memory")
}

/// A zero-filled in-memory file of `size` bytes (a disk image without a filesystem).
pub fn memfd_disk(size: u64) -> File {
    // SAFETY: memfd_create reads a NUL-terminated name and takes flags; the result is
    // checked before use.
    let fd = unsafe { libc::memfd_create(c"vmm-fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).expect("cannot size the memfd");
    file
}
