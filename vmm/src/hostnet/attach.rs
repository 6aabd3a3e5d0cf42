//! One sandbox onto the host side: an address, its link on the bridge, its rules, its
//! DNS forwarder's sockets and its published ports' listeners, all made before the vmm
//! confines itself; and the releaser, which removes the rules when the vmm ends.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;

use devices::virtio::net::{Tap, TapError};
use ipnet::Ipv4Net;

use super::command::{ip_batch, nft};
use super::ruleset::{self, link_name, HostSide, SandboxRules};
use super::{gc, host, link_exists, lock, HostNetError};
use crate::config::{Egress, Publish};

/// What the sandbox's link is.
#[derive(Debug, Clone)]
pub enum LinkRequest {
    /// A TAP, for a VM's virtio-net device.
    Tap,
    /// A veth pair whose other end goes into this network namespace as `eth0` (the
    /// test jail, which runs the agent on the host's kernel).
    Veth { netns: PathBuf },
}

/// The link as made.
#[derive(Debug)]
pub enum SandboxLink {
    Tap(Tap),
    Veth,
}

/// What the guest agent configures (ConfigureNetwork).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNetwork {
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    pub nameservers: Vec<IpAddr>,
}

/// A published port: the host listener and where its connections go.
#[derive(Debug)]
pub struct PublishedPort {
    pub listener: TcpListener,
    pub guest: SocketAddrV4,
}

/// The sockets of the sandbox's DNS forwarder, on the gateway address.
#[derive(Debug)]
pub struct DnsSockets {
    pub udp: UdpSocket,
    pub tcp: TcpListener,
    /// The host's resolvers the queries go to.
    pub upstreams: Vec<SocketAddr>,
}

/// A sandbox on the host side. Its rules stay until the vmm process ends (see
/// `spawn_releaser`), whatever becomes of this value.
#[derive(Debug)]
pub struct Attachment {
    pub link: SandboxLink,
    pub guest: GuestNetwork,
    pub dns: DnsSockets,
    pub published: Vec<PublishedPort>,
}

/// The request for one sandbox.
#[derive(Debug, Clone)]
pub struct AttachRequest<'a> {
    pub link: LinkRequest,
    pub mac: [u8; 6],
    pub egress: &'a Egress,
    pub publish: &'a [Publish],
    /// The vmm binary, for the releaser (`vmm net release`).
    pub vmm_binary: &'a Path,
    /// Where the host's resolvers are listed.
    pub resolv_conf: &'a Path,
}

pub fn attach(request: &AttachRequest) -> Result<Attachment, HostNetError> {
    let host = host::host_side()?;
    let upstreams = upstream_resolvers(request.resolv_conf)?;
    let published = request
        .publish
        .iter()
        .map(|p| {
            let at = SocketAddrV4::new(p.host_addr, p.host_port);
            TcpListener::bind(at)
                .map(|listener| (listener, p.guest_port))
                .map_err(HostNetError::io(format!("publish {at}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let _lock = lock::take()?;
    let stale = gc::collect()?;
    if !stale.is_empty() {
        log::info!("released the rules of {} ended sandbox(es)", stale.len());
    }
    let taken = gc::sandboxes_with_rules()?;
    let (address, link) = claim_address(&host, &taken, &request.link, request.mac)?;
    // From here on the releaser undoes whatever exists once we end, also if a step below
    // fails (the vmm then exits with that error).
    spawn_releaser(request.vmm_binary, address, &request.link)?;
    let (udp, tcp) = bind_dns(host.gateway)?;
    let rules = SandboxRules {
        address,
        mac: request.mac,
        egress: request.egress.clone(),
        dns_port: udp
            .local_addr()
            .map_err(HostNetError::io("DNS socket"))?
            .port(),
    };
    nft(
        &ruleset::attach(&host, &rules),
        "install the sandbox's rules",
    )?;
    let name = link_name(address);
    ip_batch(
        &format!(
            "link set dev {name} master {br} mtu {mtu}\nlink set dev {name} type bridge_slave isolated on\nlink set dev {name} up\n",
            br = host.bridge,
            mtu = host.mtu
        ),
        &format!("put {name} on the bridge {}", host.bridge),
    )?;
    log::info!(
        "net: {address}/{} via {} on {name}, egress {}",
        host.subnet.prefix_len(),
        host.gateway,
        match request.egress {
            Egress::Open => "open".to_string(),
            Egress::Allow(nets) => format!("only to {nets:?}"),
        }
    );
    Ok(Attachment {
        link,
        guest: GuestNetwork {
            mac: request.mac,
            address,
            prefix_len: host.subnet.prefix_len(),
            gateway: host.gateway,
            mtu: host.mtu,
            nameservers: vec![IpAddr::V4(host.gateway)],
        },
        dns: DnsSockets {
            udp,
            tcp,
            upstreams,
        },
        published: published
            .into_iter()
            .map(|(listener, port)| PublishedPort {
                listener,
                guest: SocketAddrV4::new(address, port),
            })
            .collect(),
    })
}

/// Picks a free address at random and makes its link; the link's name is the claim (a
/// TAP in use cannot be opened again, a veth cannot be made twice).
fn claim_address(
    host: &HostSide,
    taken: &[Ipv4Addr],
    request: &LinkRequest,
    mac: [u8; 6],
) -> Result<(Ipv4Addr, SandboxLink), HostNetError> {
    // The subnet's host addresses, from network + 1 to broadcast - 1, without a list of
    // them (a /8 has millions): a random start, then every one in turn.
    let first = u32::from(host.subnet.network()) + 1;
    let count = (1u64 << (32 - host.subnet.prefix_len())).saturating_sub(2);
    let taken: std::collections::HashSet<Ipv4Addr> = taken.iter().copied().collect();
    let start = random_below(count);
    for i in 0..count {
        let address = Ipv4Addr::from(first + ((start + i) % count) as u32);
        if address == host.gateway || taken.contains(&address) {
            continue;
        }
        let name = link_name(address);
        if link_exists(&name) {
            continue;
        }
        match request {
            LinkRequest::Tap => match Tap::open(&name) {
                Ok(tap) => return Ok((address, SandboxLink::Tap(tap))),
                Err(TapError::Ioctl { source, .. })
                    if source.raw_os_error() == Some(libc::EBUSY) =>
                {
                    continue
                }
                Err(e) => {
                    return Err(HostNetError::Invalid(format!(
                        "cannot create the TAP {name}: {}",
                        error_chain(&e)
                    )))
                }
            },
            LinkRequest::Veth { netns } => {
                let mac = super::mac_text(mac);
                let made = ip_batch(
                    &format!(
                        "link add {name} mtu {mtu} type veth peer name eth0 mtu {mtu} address {mac} netns {ns}\n",
                        mtu = host.mtu,
                        ns = netns.display()
                    ),
                    &format!("create the veth {name}"),
                );
                match made {
                    Ok(()) => return Ok((address, SandboxLink::Veth)),
                    // Made by another vmm since we looked.
                    Err(_) if link_exists(&name) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Err(HostNetError::Full(host.subnet))
}

/// A random number below `n` (0 when n is 0).
fn random_below(n: u64) -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer we own. A
    // failure leaves zeroes: the search then starts at the first address, still correct.
    unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    u64::from_ne_bytes(bytes) % n.max(1)
}

/// UDP and TCP on the same free port of the gateway address.
fn bind_dns(gateway: Ipv4Addr) -> Result<(UdpSocket, TcpListener), HostNetError> {
    let mut last = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind((gateway, 0)).map_err(HostNetError::io(format!(
            "bind the DNS forwarder on {gateway}"
        )))?;
        let port = udp
            .local_addr()
            .map_err(HostNetError::io("DNS socket"))?
            .port();
        match TcpListener::bind((gateway, port)) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(HostNetError::io(format!(
        "bind the DNS forwarder on {gateway}"
    ))(last.unwrap_or_else(|| io::Error::other("no port"))))
}

/// The host's resolvers from resolv.conf (systemd-resolved's stub, 127.0.0.53, works:
/// the forwarder runs on the host).
pub fn upstream_resolvers(resolv_conf: &Path) -> Result<Vec<SocketAddr>, HostNetError> {
    let text = std::fs::read_to_string(resolv_conf).map_err(HostNetError::io(format!(
        "read the host's resolvers ({})",
        resolv_conf.display()
    )))?;
    let servers: Vec<SocketAddr> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect();
    if servers.is_empty() {
        return Err(HostNetError::Invalid(format!(
            "{} names no nameserver: the sandbox's DNS would have nowhere to go",
            resolv_conf.display()
        )));
    }
    Ok(servers)
}

/// `vmm net release --wait ADDRESS [--delete-link]`, which runs when this process ends
/// (crate::releaser).
fn spawn_releaser(vmm: &Path, address: Ipv4Addr, link: &LinkRequest) -> Result<(), HostNetError> {
    let mut cmd = Command::new(vmm);
    cmd.args(["net", "release", "--wait", &address.to_string()]);
    if matches!(link, LinkRequest::Veth { .. }) {
        cmd.arg("--delete-link");
    }
    crate::releaser::spawn(cmd).map_err(HostNetError::io(format!(
        "start the releaser ({})",
        vmm.display()
    )))
}

/// The releaser's side: waits for stdin to end, then removes the rules.
pub fn release_when_stdin_ends(address: Ipv4Addr, delete_link: bool) -> Result<(), HostNetError> {
    crate::releaser::wait_for_stdin_to_end();
    let _lock = lock::take()?;
    gc::release(address, delete_link)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
}

/// The sandboxes' network as a `vmm net setup` argument.
pub fn parse_subnet(value: &str) -> Result<Ipv4Net, HostNetError> {
    value.parse().map_err(|_| {
        HostNetError::Invalid(format!(
            "subnet {value:?}: not an IPv4 CIDR like 10.200.0.0/16"
        ))
    })
}

/// Attaches the sandbox of `spec` (backend Auto) with this binary as the releaser and the
/// host's /etc/resolv.conf; None for any other backend.
pub fn attach_spec(
    spec: Option<&crate::config::NetSpec>,
    link: LinkRequest,
) -> Result<Option<Attachment>, HostNetError> {
    let Some(spec) = spec.filter(|s| s.backend == crate::config::NetBackend::Auto) else {
        return Ok(None);
    };
    let vmm_binary = std::env::current_exe().map_err(HostNetError::io("find the vmm binary"))?;
    attach(&AttachRequest {
        link,
        mac: spec.mac,
        egress: &spec.egress,
        publish: &spec.publish,
        vmm_binary: &vmm_binary,
        resolv_conf: Path::new("/etc/resolv.conf"),
    })
    .map(Some)
}
