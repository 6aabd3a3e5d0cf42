//! The interface ioctls (netdevice(7)): list the interfaces, read their hardware
//! addresses, set MTU, address, netmask, broadcast and IFF_UP. Everything goes through
//! an AF_INET datagram socket and `if_nameindex` (netlink), both of which act in the
//! network namespace of the calling thread, unlike /sys/class/net, which shows the
//! namespace of whoever mounted /sys.

use std::ffi::CStr;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::mac::Mac;
use super::NetworkError;

/// An AF_INET datagram socket: the handle the interface and route ioctls are made on.
pub struct Socket(OwnedFd);

impl Socket {
    pub fn open() -> io::Result<Socket> {
        // SAFETY: socket(2) takes no pointers; it returns a new descriptor or -1.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        Ok(Socket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// An ioctl whose argument is a `T` the kernel reads (and for the getters fills in).
    /// Only for the requests of this module and `route`, each paired with its structure.
    pub(super) fn ioctl<T: IoctlArg>(&self, request: libc::c_ulong, arg: &mut T) -> io::Result<()> {
        // SAFETY: `arg` is a valid, exclusively borrowed `T` for the duration of the call,
        // and each caller pairs `request` with the structure that request takes (an
        // `ifreq` for the SIOC[GS]IF* requests, an `rtentry` for SIOCADDRT/SIOCDELRT),
        // whose pointer members are NULL or point to buffers that outlive the call.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), request, arg as *mut T) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The hardware address of `name`, when it is an Ethernet interface.
    pub fn hwaddr(&self, name: &str) -> io::Result<Option<Mac>> {
        let mut req = ifreq(name)?;
        self.ioctl(libc::SIOCGIFHWADDR, &mut req)?;
        // SAFETY: SIOCGIFHWADDR filled in the `ifru_hwaddr` member of the union.
        let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
        if hw.sa_family != libc::ARPHRD_ETHER {
            return Ok(None);
        }
        let mut mac = [0u8; 6];
        for (d, s) in mac.iter_mut().zip(hw.sa_data) {
            *d = s as u8;
        }
        Ok(Some(Mac(mac)))
    }

    pub fn mtu(&self, name: &str) -> io::Result<u32> {
        let mut req = ifreq(name)?;
        self.ioctl(libc::SIOCGIFMTU, &mut req)?;
        // SAFETY: SIOCGIFMTU filled in the `ifru_mtu` member of the union.
        let mtu = unsafe { req.ifr_ifru.ifru_mtu };
        u32::try_from(mtu).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
    }

    pub fn set_mtu(&self, name: &str, mtu: u32) -> io::Result<()> {
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_mtu =
            libc::c_int::try_from(mtu).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        self.ioctl(libc::SIOCSIFMTU, &mut req)
    }

    /// Sets the interface's (primary) IPv4 address, netmask or broadcast address.
    pub fn set_inet(&self, name: &str, what: Inet, ip: Ipv4Addr) -> io::Result<()> {
        let request = match what {
            Inet::Address => libc::SIOCSIFADDR,
            Inet::Netmask => libc::SIOCSIFNETMASK,
            Inet::Broadcast => libc::SIOCSIFBRDADDR,
        };
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_addr = sockaddr_in(ip);
        self.ioctl(request, &mut req)
    }

    /// Sets IFF_UP unless it is set already.
    pub fn set_up(&self, name: &str) -> io::Result<()> {
        let mut req = ifreq(name)?;
        self.ioctl(libc::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: SIOCGIFFLAGS filled in the `ifru_flags` member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        let up = libc::IFF_UP as libc::c_short;
        if flags & up != 0 {
            return Ok(());
        }
        req.ifr_ifru.ifru_flags = flags | up;
        self.ioctl(libc::SIOCSIFFLAGS, &mut req)
    }
}

/// What `Socket::set_inet` sets (each request takes an AF_INET sockaddr).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inet {
    Address,
    Netmask,
    Broadcast,
}

/// The structures `Socket::ioctl` passes to the kernel.
pub(super) trait IoctlArg {}
impl IoctlArg for libc::ifreq {}
impl IoctlArg for libc::rtentry {}

/// An interface name in the fixed-size, NUL-terminated form the ioctls take.
pub fn ifname(name: &str) -> io::Result<[libc::c_char; libc::IFNAMSIZ]> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut out = [0; libc::IFNAMSIZ];
    for (d, s) in out.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(out)
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: `ifreq` is plain data (a name and a union of integers, sockaddrs and a
    // pointer) for which all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name = ifname(name)?;
    Ok(req)
}

/// An AF_INET `sockaddr_in` (port 0) in the generic `sockaddr` form the ioctls take.
pub fn sockaddr_in(ip: Ipv4Addr) -> libc::sockaddr {
    let mut sa = libc::sockaddr {
        sa_family: libc::AF_INET as libc::sa_family_t,
        sa_data: [0; 14],
    };
    // sin_port (2 bytes, 0), then sin_addr in network byte order.
    for (d, s) in sa.sa_data[2..6].iter_mut().zip(ip.octets()) {
        *d = s as libc::c_char;
    }
    sa
}

/// The names of all interfaces, in index order.
pub fn names() -> io::Result<Vec<String>> {
    // SAFETY: if_nameindex takes no arguments; it returns a list we free below, or NULL.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut names = Vec::new();
    for i in 0.. {
        // SAFETY: the list ends with an entry whose index is 0 and name NULL, and we stop
        // there, so `list.add(i)` stays inside it.
        let entry = unsafe { &*list.add(i) };
        if entry.if_index == 0 || entry.if_name.is_null() {
            break;
        }
        // SAFETY: a non-NULL name is a NUL-terminated string owned by the list, which
        // lives until the free below; the bytes are copied out before that.
        let name = unsafe { CStr::from_ptr(entry.if_name) };
        names.push(name.to_string_lossy().into_owned());
    }
    // SAFETY: `list` came from if_nameindex, is freed once, and nothing borrows it now.
    unsafe { libc::if_freenameindex(list) };
    Ok(names)
}

/// What `find` saw: each interface with its MAC, when it has an Ethernet one.
#[derive(Debug, Default)]
pub struct Seen(Vec<(String, Option<Mac>)>);

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, (name, mac)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match mac {
                Some(mac) => write!(f, "{name} {mac}")?,
                None => f.write_str(name)?,
            }
        }
        Ok(())
    }
}

/// The name of the interface whose hardware address is `mac`; NoInterface with what was
/// seen instead. An interface that disappears while we look is skipped.
pub fn find(sock: &Socket, mac: Mac) -> Result<String, NetworkError> {
    let mut seen = Seen::default();
    for name in names().map_err(NetworkError::List)? {
        let hw = match sock.hwaddr(&name) {
            Ok(hw) => hw,
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => continue,
            Err(source) => {
                return Err(NetworkError::Interface {
                    iface: name,
                    step: "read the hardware address".into(),
                    source,
                })
            }
        };
        if hw == Some(mac) {
            return Ok(name);
        }
        seen.0.push((name, hw));
    }
    Err(NetworkError::NoInterface { mac, seen })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_layout() {
        let sa = sockaddr_in(Ipv4Addr::new(10, 200, 3, 4));
        assert_eq!(sa.sa_family, libc::AF_INET as libc::sa_family_t);
        let bytes: Vec<u8> = sa.sa_data.iter().map(|&b| b as u8).collect();
        assert_eq!(bytes, [0, 0, 10, 200, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0]);
        // The same bytes as a sockaddr_in (whose fields are in network byte order).
        assert_eq!(
            std::mem::size_of::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_in>()
        );
    }

    #[test]
    fn interface_names() {
        assert_eq!(&ifname("eth0").unwrap()[..5], &[101, 116, 104, 48, 0]);
        assert!(ifname("fifteen-chars-x").is_ok());
        for bad in ["", "sixteen-chars-xx", "a\0b"] {
            assert_eq!(
                ifname(bad).unwrap_err().raw_os_error(),
                Some(libc::EINVAL),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn lists_interfaces_with_lo() {
        // Every network namespace has `lo`; it has no Ethernet address.
        let names = names().unwrap();
        assert!(names.iter().any(|n| n == "lo"), "{names:?}");
        let sock = Socket::open().unwrap();
        assert_eq!(sock.hwaddr("lo").unwrap(), None);
        assert!(sock.mtu("lo").unwrap() >= 1500);
    }

    #[test]
    fn seen_lists_names_and_macs() {
        let seen = Seen(vec![
            ("lo".into(), None),
            ("eth0".into(), Some(Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]))),
        ]);
        assert_eq!(seen.to_string(), "lo, eth0 52:54:00:12:34:56");
        assert_eq!(Seen::default().to_string(), "none");
    }
}
