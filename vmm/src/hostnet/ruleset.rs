//! The nftables rules of the host side, as `nft -f` scripts: pure text, built here and
//! applied by `command::nft` as one atomic transaction each.
//!
//! Two tables, both named `vmm`:
//! - `inet vmm`: NAT (masquerade out of the host's other interfaces), the egress policy
//!   (map `egress`: a sandbox's address → a jump to its own chain `sb-TAG`), nothing new
//!   inbound from outside (published ports are proxied by the sandbox's vmm), nothing
//!   from the bridge to the host itself but DNS, which is redirected per sandbox to its
//!   vmm's forwarder (map `dns`: address → port).
//! - `bridge vmm`: anti-spoofing on each sandbox's bridge port (map `ports`: port → a
//!   jump to `port-TAG`): frames carry the sandbox's MAC, and IPv4 or ARP from its own
//!   address only. The egress policy keys on source addresses, which this makes
//!   trustworthy. Ports are also isolated (the bridge's own flag), so sandboxes never
//!   reach each other at layer 2; between them, traffic is routed and policed.

use std::fmt::Write;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::config::Egress;

/// The host side as `vmm net setup` made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSide {
    pub bridge: String,
    /// The bridge's address: the sandboxes' gateway and DNS server.
    pub gateway: Ipv4Addr,
    /// The sandboxes' network (the gateway's network).
    pub subnet: Ipv4Net,
    pub mtu: u32,
}

/// One sandbox's place on the host side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRules {
    pub address: Ipv4Addr,
    pub mac: [u8; 6],
    /// Open: anything but other sandboxes; Allow: only those networks (other sandboxes
    /// too, where listed).
    pub egress: Egress,
    /// Where its vmm's DNS forwarder listens, on the gateway address.
    pub dns_port: u16,
}

/// The name part every per-sandbox object shares: the address in hex.
pub fn tag(address: Ipv4Addr) -> String {
    format!("{:08x}", u32::from(address))
}

/// The sandbox's link on the bridge (a TAP, or the host end of a veth): 11 characters,
/// within IFNAMSIZ.
pub fn link_name(address: Ipv4Addr) -> String {
    format!("vmt{}", tag(address))
}

/// The address whose link this is, for garbage collection.
pub fn address_of_link(name: &str) -> Option<Ipv4Addr> {
    let hex = name.strip_prefix("vmt")?;
    (hex.len() == 8)
        .then(|| u32::from_str_radix(hex, 16).ok())
        .flatten()
        .map(Ipv4Addr::from)
}

/// The address of a per-sandbox egress chain (`sb-TAG`).
pub fn address_of_chain(name: &str) -> Option<Ipv4Addr> {
    address_of_link(&format!("vmt{}", name.strip_prefix("sb-")?))
}

/// Creates the tables, maps and base chains, and (re)writes the base chains' rules:
/// idempotent, and it keeps every running sandbox's map entries and chains.
pub fn setup(host: &HostSide) -> String {
    let (br, gw, net) = (&host.bridge, host.gateway, host.subnet);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "add table inet vmm
add map inet vmm egress {{ type ipv4_addr : verdict ; }}
add map inet vmm dns {{ type ipv4_addr : inet_service ; }}
add chain inet vmm forward {{ type filter hook forward priority filter ; policy accept ; }}
add chain inet vmm input {{ type filter hook input priority filter ; policy accept ; }}
add chain inet vmm prerouting {{ type nat hook prerouting priority dstnat ; policy accept ; }}
add chain inet vmm postrouting {{ type nat hook postrouting priority srcnat ; policy accept ; }}
flush chain inet vmm forward
flush chain inet vmm input
flush chain inet vmm prerouting
flush chain inet vmm postrouting
add rule inet vmm forward iifname \"{br}\" ct state established,related accept
add rule inet vmm forward oifname \"{br}\" ct state established,related accept
add rule inet vmm forward iifname \"{br}\" ip saddr vmap @egress
add rule inet vmm forward iifname \"{br}\" drop
add rule inet vmm forward oifname \"{br}\" drop
add rule inet vmm input iifname \"{br}\" ct state established,related accept
add rule inet vmm input iifname \"{br}\" ct status dnat accept
add rule inet vmm input iifname \"{br}\" ip daddr {gw} icmp type echo-request accept
add rule inet vmm input iifname \"{br}\" drop
add rule inet vmm prerouting iifname \"{br}\" ip daddr {gw} meta l4proto {{ tcp, udp }} th dport 53 redirect to : ip saddr map @dns
add rule inet vmm postrouting ip saddr {net} oifname != \"{br}\" masquerade
add table bridge vmm
add map bridge vmm ports {{ type ifname : verdict ; }}
add chain bridge vmm prerouting {{ type filter hook prerouting priority filter ; policy accept ; }}
flush chain bridge vmm prerouting
add rule bridge vmm prerouting iifname vmap @ports"
    );
    s
}

/// One sandbox's chains and map entries; `release` undoes exactly this.
pub fn attach(host: &HostSide, sb: &SandboxRules) -> String {
    let (ip, t) = (sb.address, tag(sb.address));
    let link = link_name(ip);
    let mut s = format!("add chain inet vmm sb-{t}\nflush chain inet vmm sb-{t}\n");
    match &sb.egress {
        Egress::Open => {
            let _ = writeln!(s, "add rule inet vmm sb-{t} ip daddr {} drop", host.subnet);
            let _ = writeln!(s, "add rule inet vmm sb-{t} accept");
        }
        Egress::Allow(nets) => {
            if !nets.is_empty() {
                let list: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
                let _ = writeln!(
                    s,
                    "add rule inet vmm sb-{t} ip daddr {{ {} }} accept",
                    list.join(", ")
                );
            }
            let _ = writeln!(s, "add rule inet vmm sb-{t} drop");
        }
    }
    let _ = writeln!(
        s,
        "add element inet vmm egress {{ {ip} : jump sb-{t} }}
add element inet vmm dns {{ {ip} : {port} }}
add chain bridge vmm port-{t}
flush chain bridge vmm port-{t}
add rule bridge vmm port-{t} ether saddr != {mac} drop
add rule bridge vmm port-{t} ether type arp arp saddr ip {ip} accept
add rule bridge vmm port-{t} ether type ip ip saddr {ip} accept
add rule bridge vmm port-{t} drop
add element bridge vmm ports {{ \"{link}\" : jump port-{t} }}",
        port = sb.dns_port,
        mac = super::mac_text(sb.mac),
    );
    s
}

/// Undoes `attach` for `address`, as one transaction (it fails whole when a part is
/// missing; `release_steps` then removes what is there).
pub fn release(address: Ipv4Addr) -> String {
    release_steps(address).join("\n") + "\n"
}

/// `release`, one statement per step, in an order where each can stand alone.
pub fn release_steps(address: Ipv4Addr) -> Vec<String> {
    let (ip, t, link) = (address, tag(address), link_name(address));
    vec![
        format!("delete element inet vmm egress {{ {ip} }}"),
        format!("delete element inet vmm dns {{ {ip} }}"),
        format!("flush chain inet vmm sb-{t}"),
        format!("delete chain inet vmm sb-{t}"),
        format!("delete element bridge vmm ports {{ \"{link}\" }}"),
        format!("flush chain bridge vmm port-{t}"),
        format!("delete chain bridge vmm port-{t}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostSide {
        HostSide {
            bridge: "vmmbr0".into(),
            gateway: Ipv4Addr::new(10, 200, 0, 1),
            subnet: "10.200.0.0/16".parse().unwrap(),
            mtu: 1500,
        }
    }

    fn sandbox(egress: Egress) -> SandboxRules {
        SandboxRules {
            address: Ipv4Addr::new(10, 200, 3, 4),
            mac: [2, 0, 10, 200, 3, 4],
            egress,
            dns_port: 40123,
        }
    }

    #[test]
    fn names_round_trip_through_the_address() {
        let ip = Ipv4Addr::new(10, 200, 3, 4);
        assert_eq!(link_name(ip), "vmt0ac80304");
        assert!(link_name(Ipv4Addr::new(255, 255, 255, 255)).len() < libc::IFNAMSIZ);
        assert_eq!(address_of_link("vmt0ac80304"), Some(ip));
        assert_eq!(address_of_chain("sb-0ac80304"), Some(ip));
        for bad in ["vmt0ac8030", "vmt0ac803044", "eth0", "vmtzzzzzzzz"] {
            assert_eq!(address_of_link(bad), None, "{bad}");
        }
        assert_eq!(address_of_chain("forward"), None);
    }

    #[test]
    fn setup_masquerades_the_subnet_and_redirects_dns_per_sandbox() {
        let s = setup(&host());
        assert!(s.contains(
            "add rule inet vmm postrouting ip saddr 10.200.0.0/16 oifname != \"vmmbr0\" masquerade"
        ));
        assert!(s.contains("th dport 53 redirect to : ip saddr map @dns"));
        // Re-running it rewrites the base chains instead of appending to them.
        for chain in ["forward", "input", "prerouting", "postrouting"] {
            let flush = s.find(&format!("flush chain inet vmm {chain}\n")).unwrap();
            let first_rule = s.find(&format!("add rule inet vmm {chain} ")).unwrap();
            assert!(flush < first_rule, "{chain}");
        }
        // Unknown sources and anything new from outside stop at the bridge.
        let vmap = s.find("ip saddr vmap @egress").unwrap();
        assert!(vmap < s.find("forward iifname \"vmmbr0\" drop").unwrap());
        assert!(s.contains("forward oifname \"vmmbr0\" drop"));
        assert!(s.contains("input iifname \"vmmbr0\" drop"));
    }

    #[test]
    fn open_egress_reaches_everything_but_other_sandboxes() {
        let s = attach(&host(), &sandbox(Egress::Open));
        assert!(s.contains("add rule inet vmm sb-0ac80304 ip daddr 10.200.0.0/16 drop\nadd rule inet vmm sb-0ac80304 accept\n"));
        assert!(s.contains("add element inet vmm egress { 10.200.3.4 : jump sb-0ac80304 }"));
        assert!(s.contains("add element inet vmm dns { 10.200.3.4 : 40123 }"));
    }

    #[test]
    fn an_allow_list_accepts_its_networks_then_drops() {
        let nets = vec![
            "192.0.2.0/24".parse().unwrap(),
            "10.200.9.9/32".parse().unwrap(),
        ];
        let s = attach(&host(), &sandbox(Egress::Allow(nets)));
        assert!(s.contains(
            "add rule inet vmm sb-0ac80304 ip daddr { 192.0.2.0/24, 10.200.9.9/32 } accept\nadd rule inet vmm sb-0ac80304 drop\n"
        ));
        let none = attach(&host(), &sandbox(Egress::Allow(vec![])));
        assert!(!none.contains("sb-0ac80304 ip daddr"), "{none}");
        assert!(
            none.contains("add rule inet vmm sb-0ac80304 drop\n"),
            "{none}"
        );
    }

    #[test]
    fn a_port_accepts_only_its_own_mac_and_address() {
        let s = attach(&host(), &sandbox(Egress::Open));
        assert!(s.contains("port-0ac80304 ether saddr != 02:00:0a:c8:03:04 drop"));
        assert!(s.contains("port-0ac80304 ether type arp arp saddr ip 10.200.3.4 accept"));
        assert!(s.contains("port-0ac80304 ether type ip ip saddr 10.200.3.4 accept"));
        assert!(s
            .trim_end()
            .ends_with("add element bridge vmm ports { \"vmt0ac80304\" : jump port-0ac80304 }"));
    }

    #[test]
    fn release_undoes_attach_map_entries_before_their_chains() {
        let steps = release_steps(Ipv4Addr::new(10, 200, 3, 4));
        let pos = |needle: &str| steps.iter().position(|s| s.contains(needle)).unwrap();
        assert!(pos("egress {") < pos("delete chain inet vmm sb-"));
        assert!(pos("ports {") < pos("delete chain bridge vmm port-"));
        assert!(pos("flush chain inet") < pos("delete chain inet"));
    }
}
