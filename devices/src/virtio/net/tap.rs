//! A TAP device (/dev/net/tun with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR), nonblocking, with
//! the 12-byte virtio-net header on every frame. Frames move with readv/writev straight
//! between the TAP and guest memory. The only unsafe code of the net device is here:
//! the ioctls and the iovecs.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::backend::NetBackend;
use super::features::OFFLOAD_PROBES;
use super::NET_HDR_LEN;

const TUN_PATH: &str = "/dev/net/tun";
/// IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, as TUNSETIFF's flags (a C short). IFF_ONE_QUEUE
/// is obsolete: the kernel ignores it.
const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
/// Most iovecs one readv/writev takes (Linux's UIO_MAXIOV).
const IOV_MAX: usize = 1024;

/// Why a TAP cannot be opened or set up. Each names the TAP (and the ioctl).
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// Interface names are at most 15 bytes, and some bytes are not allowed.
    #[error("TAP name {0:?} is empty, longer than 15 bytes, or holds '/', whitespace or NUL")]
    InvalidName(String),
    /// /dev/net/tun is missing or not ours to open.
    #[error("cannot open {TUN_PATH} for TAP {tap:?}")]
    OpenTun {
        /// The TAP's name.
        tap: String,
        /// The open(2) error.
        #[source]
        source: io::Error,
    },
    /// An ioctl failed (TUNSETIFF without CAP_NET_ADMIN, a TAP in use, ...).
    #[error("{ioctl} on TAP {tap:?} failed")]
    Ioctl {
        /// The TAP's name.
        tap: String,
        /// The ioctl's name.
        ioctl: &'static str,
        /// The ioctl's error.
        #[source]
        source: io::Error,
    },
    /// The kernel's TUN driver cannot do what the device needs.
    #[error("the kernel's TUN driver lacks {missing} (TUNGETFEATURES), needed by TAP {tap:?}")]
    Unsupported {
        /// The TAP's name.
        tap: String,
        /// The missing IFF_* flag.
        missing: &'static str,
    },
}

/// iovecs rebuilt for each read or write.
#[derive(Default)]
struct IoVecs(Vec<libc::iovec>);

// SAFETY: the pointers are written and used within one `read_frame`/`write_frame` call,
// on the thread making it; between calls they are stale values nothing dereferences.
unsafe impl Send for IoVecs {}

/// An open TAP device.
pub struct Tap {
    file: File,
    name: String,
    offloads: u32,
    iovecs: IoVecs,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap")
            .field("name", &self.name)
            .field("fd", &self.file.as_raw_fd())
            .finish()
    }
}

impl Tap {
    /// Opens the TAP `name`, or creates it if it does not exist (that needs
    /// CAP_NET_ADMIN; a name like "tap%d" lets the kernel pick the number). It comes
    /// with the vnet header and no offloads on; `name()` is the kernel's name for it.
    pub fn open(name: &str) -> Result<Self, TapError> {
        let bytes = name.as_bytes();
        if bytes.is_empty()
            || bytes.len() >= libc::IFNAMSIZ
            || bytes
                .iter()
                .any(|&b| b == b'/' || b == 0 || b.is_ascii_whitespace())
        {
            return Err(TapError::InvalidName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|source| TapError::OpenTun {
                tap: name.to_string(),
                source,
            })?;
        let mut tap = Self {
            file,
            name: name.to_string(),
            offloads: 0,
            iovecs: IoVecs::default(),
        };

        let mut supported: libc::c_uint = 0;
        // SAFETY: TUNGETFEATURES writes one unsigned int through the pointer, which
        // points to `supported`.
        tap.ioctl("TUNGETFEATURES", libc::TUNGETFEATURES, |fd, req| unsafe {
            libc::ioctl(fd, req, &mut supported as *mut libc::c_uint)
        })?;
        for (flag, missing) in [
            (libc::IFF_TAP, "IFF_TAP"),
            (libc::IFF_NO_PI, "IFF_NO_PI"),
            (libc::IFF_VNET_HDR, "IFF_VNET_HDR"),
        ] {
            if supported & flag as libc::c_uint == 0 {
                return Err(TapError::Unsupported {
                    tap: tap.name,
                    missing,
                });
            }
        }

        // SAFETY: ifreq is plain data (a name and a union of integers and pointers);
        // all zeroes is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, &src) in ifr.ifr_name.iter_mut().zip(bytes) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = TAP_FLAGS as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one ifreq through the pointer, which points
        // to `ifr`; its name is NUL-terminated (shorter than IFNAMSIZ, zeroed after).
        tap.ioctl("TUNSETIFF", libc::TUNSETIFF, |fd, req| unsafe {
            libc::ioctl(fd, req, &mut ifr as *mut libc::ifreq)
        })?;
        // The kernel's name: the one asked for, or "tap%d" filled in.
        // SAFETY: the kernel returns a NUL-terminated name of at most IFNAMSIZ bytes;
        // the last byte was zero before and TUNSETIFF never writes past the name.
        let given = unsafe { CStr::from_ptr(ifr.ifr_name.as_ptr()) };
        tap.name = given.to_string_lossy().into_owned();

        let hdr_len = NET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points to
        // `hdr_len`.
        tap.ioctl("TUNSETVNETHDRSZ", libc::TUNSETVNETHDRSZ, |fd, req| unsafe {
            libc::ioctl(fd, req, &hdr_len as *const libc::c_int)
        })?;

        // The kernel refuses a set of offloads with a flag it does not know: the first
        // set it takes is what it supports. Then none stay on until a driver asks.
        tap.offloads = OFFLOAD_PROBES
            .into_iter()
            .find(|&o| tap.set_offloads_raw(o).is_ok())
            .unwrap_or(0);
        tap.set_offloads_raw(0)?;
        Ok(tap)
    }

    /// The kernel's name for the interface.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs one ioctl; a failure names the TAP and the ioctl.
    fn ioctl(
        &self,
        ioctl: &'static str,
        req: libc::Ioctl,
        call: impl FnOnce(RawFd, libc::Ioctl) -> libc::c_int,
    ) -> Result<(), TapError> {
        if call(self.file.as_raw_fd(), req) < 0 {
            return Err(TapError::Ioctl {
                tap: self.name.clone(),
                ioctl,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn set_offloads_raw(&self, offloads: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value: no memory is passed.
        self.ioctl("TUNSETOFFLOAD", libc::TUNSETOFFLOAD, |fd, req| unsafe {
            libc::ioctl(fd, req, libc::c_ulong::from(offloads))
        })
    }

    /// Points `self.iovecs` at `bufs` in guest memory, then at `spill` if given.
    fn build_iovecs(
        &mut self,
        mem: &GuestMemoryMmap,
        bufs: &[(GuestAddress, u32)],
        spill: Option<&mut [u8]>,
    ) -> io::Result<()> {
        let iov = &mut self.iovecs.0;
        iov.clear();
        for &(addr, len) in bufs {
            // A range may cross guest memory regions: one iovec per piece.
            for slice in mem.get_slices(addr, len as usize) {
                let slice = slice.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                iov.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                });
            }
        }
        if let Some(spill) = spill {
            iov.push(libc::iovec {
                iov_base: spill.as_mut_ptr().cast(),
                iov_len: spill.len(),
            });
        }
        if iov.len() > IOV_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame spans more than 1024 pieces of memory",
            ));
        }
        Ok(())
    }
}

/// Retries a read or write that a signal interrupted; a negative return is the error.
fn retry(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl NetBackend for Tap {
    fn read_frame(
        &mut self,
        mem: &GuestMemoryMmap,
        bufs: &[(GuestAddress, u32)],
        spill: &mut [u8],
    ) -> io::Result<usize> {
        self.build_iovecs(mem, bufs, Some(spill))?;
        let (fd, iov) = (self.file.as_raw_fd(), &self.iovecs.0);
        retry(|| {
            // SAFETY: every iovec points into guest memory (mapped while `mem` is
            // borrowed; vm-memory checked the bounds) or into `spill`, borrowed mutably
            // for this call; there are at most IOV_MAX of them.
            unsafe { libc::readv(fd, iov.as_ptr(), iov.len() as libc::c_int) }
        })
    }

    fn write_frame(
        &mut self,
        mem: &GuestMemoryMmap,
        bufs: &[(GuestAddress, u32)],
    ) -> io::Result<()> {
        self.build_iovecs(mem, bufs, None)?;
        let (fd, iov) = (self.file.as_raw_fd(), &self.iovecs.0);
        let n = match iov[..] {
            // A frame in one piece (Linux's small frames): write(2) skips the kernel's
            // copy and walk of an iovec array.
            // SAFETY: as in `read_frame`; write only reads the one range.
            [one] => retry(|| unsafe { libc::write(fd, one.iov_base, one.iov_len) })?,
            // SAFETY: as in `read_frame`; writev only reads through the iovecs.
            _ => retry(|| unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as libc::c_int) })?,
        };
        // A TAP takes a frame whole or not at all.
        let want: usize = iov.iter().map(|v| v.iov_len).sum();
        if n != want {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("the TAP took {n} of {want} bytes"),
            ));
        }
        Ok(())
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn supported_offloads(&self) -> u32 {
        self.offloads
    }

    fn set_offloads(&mut self, offloads: u32) -> io::Result<()> {
        self.set_offloads_raw(offloads).map_err(|e| match e {
            TapError::Ioctl { source, .. } => source,
            other => io::Error::other(other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        for name in ["", "0123456789abcdef", "a/b", "a b", "a\0b"] {
            let err = Tap::open(name).unwrap_err();
            assert!(matches!(err, TapError::InvalidName(_)), "{name:?}: {err}");
        }
    }

    #[test]
    fn errors_name_the_tap_and_the_ioctl() {
        let e = TapError::Ioctl {
            tap: "tap0".into(),
            ioctl: "TUNSETIFF",
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert_eq!(e.to_string(), "TUNSETIFF on TAP \"tap0\" failed");
    }
}
