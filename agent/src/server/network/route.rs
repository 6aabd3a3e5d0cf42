//! The default route, through the SIOCADDRT / SIOCDELRT ioctls (route(8)'s interface).
//!
//! SIOCADDRT answers EEXIST only for an identical route: a default route through another
//! gateway would be added next to the old one, not instead of it. So to converge, every
//! default route of the main table is deleted first, then ours is added. The guest's
//! default route is the host side's to assign.

use std::io;
use std::net::Ipv4Addr;

use super::iface::{ifname, sockaddr_in, Socket};

/// Deleting stops after this many default routes (more than any guest has): a kernel
/// that kept answering success must not keep us here.
const MAX_DEFAULT_ROUTES: usize = 64;

/// A default route entry (0.0.0.0/0 in the main table, metric 0).
fn default_route() -> libc::rtentry {
    // SAFETY: `rtentry` is plain data (integers, sockaddrs and a pointer that may be
    // NULL) for which all zeroes is a valid value.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_flags = libc::RTF_UP;
    rt
}

/// Deletes every IPv4 default route of the main table; returns how many there were.
pub fn delete_defaults(sock: &Socket) -> io::Result<usize> {
    for deleted in 0..MAX_DEFAULT_ROUTES {
        // No gateway and no device: the kernel deletes the first default route, any.
        let mut rt = default_route();
        match sock.ioctl(libc::SIOCDELRT, &mut rt) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(deleted),
            Err(e) => return Err(e),
        }
    }
    Ok(MAX_DEFAULT_ROUTES)
}

/// Adds the default route via `gateway` on `dev`. An identical route that is already
/// there (EEXIST) is fine.
pub fn add_default(sock: &Socket, dev: &str, gateway: Ipv4Addr) -> io::Result<()> {
    // The kernel copies IFNAMSIZ - 1 bytes from `rt_dev` whatever the name's length: the
    // buffer must be that long.
    let mut dev = ifname(dev)?;
    let mut rt = default_route();
    rt.rt_gateway = sockaddr_in(gateway);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    rt.rt_dev = dev.as_mut_ptr();
    match sock.ioctl(libc::SIOCADDRT, &mut rt) {
        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => Err(e),
        _ => Ok(()),
    }
}

/// Makes the route via `gateway` on `dev` the only default route.
pub fn replace_default(sock: &Socket, dev: &str, gateway: Ipv4Addr) -> Result<(), Step> {
    delete_defaults(sock).map_err(|e| Step("remove the old default route", e))?;
    add_default(sock, dev, gateway).map_err(|e| Step("add the default route", e))
}

/// The step that failed, and how.
#[derive(Debug)]
pub struct Step(pub &'static str, pub io::Error);
