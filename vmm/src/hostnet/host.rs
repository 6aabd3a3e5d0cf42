//! `vmm net setup` and `vmm net teardown`, and reading back what setup made: the bridge
//! (its address is the sandboxes' gateway and its network theirs), IPv4 forwarding, and
//! the nftables tables of `ruleset`.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::command::{ip_batch, nft, run};
use super::ruleset::{self, HostSide};
use super::{link_exists, HostNetError, BRIDGE};

/// The bridge's first IPv4 address and MTU, from `ip -j`.
fn bridge_address() -> Result<Option<(Ipv4Net, u32)>, HostNetError> {
    let out = run(
        "ip",
        &["-j", "-4", "addr", "show", "dev", BRIDGE],
        None,
        "read the bridge's address",
    )?;
    let links: serde_json::Value = serde_json::from_str(&out).map_err(|e| {
        HostNetError::Invalid(format!(
            "ip -j addr show dev {BRIDGE}: unexpected output: {e}"
        ))
    })?;
    let Some(link) = links.as_array().and_then(|a| a.first()) else {
        return Ok(None);
    };
    let mtu = link["mtu"].as_u64().unwrap_or(1500) as u32;
    let address = link["addr_info"].as_array().and_then(|infos| {
        infos.iter().find_map(|info| {
            let local: Ipv4Addr = info["local"].as_str()?.parse().ok()?;
            let prefix = info["prefixlen"].as_u64()? as u8;
            Ipv4Net::new(local, prefix).ok()
        })
    });
    Ok(address.map(|a| (a, mtu)))
}

/// What `vmm net setup` made, read from the bridge; NotSetUp when it is missing.
pub fn host_side() -> Result<HostSide, HostNetError> {
    if !link_exists(BRIDGE) {
        return Err(HostNetError::NotSetUp(format!(
            "there is no bridge {BRIDGE}"
        )));
    }
    let (address, mtu) = bridge_address()?.ok_or_else(|| {
        HostNetError::NotSetUp(format!("the bridge {BRIDGE} has no IPv4 address"))
    })?;
    Ok(HostSide {
        bridge: BRIDGE.to_string(),
        gateway: address.addr(),
        subnet: address.trunc(),
        mtu,
    })
}

/// Checks a subnet for sandboxes; returns the bridge's address in it (the first host).
pub fn gateway_of(subnet: Ipv4Net) -> Result<Ipv4Net, HostNetError> {
    if subnet != subnet.trunc() {
        return Err(HostNetError::Invalid(format!(
            "subnet {subnet}: not a network address (did you mean {}?)",
            subnet.trunc()
        )));
    }
    if !(8..=28).contains(&subnet.prefix_len()) {
        return Err(HostNetError::Invalid(format!(
            "subnet {subnet}: the prefix must be /8 to /28"
        )));
    }
    let first = subnet.hosts().next().expect("a /28 has hosts");
    Ok(Ipv4Net::new(first, subnet.prefix_len()).expect("prefix checked"))
}

/// Creates (or completes) the bridge, turns on IPv4 forwarding, and installs the base
/// rules. Idempotent: running sandboxes keep their addresses and rules.
pub fn setup(subnet: Ipv4Net) -> Result<HostSide, HostNetError> {
    let wanted = gateway_of(subnet)?;
    let current = if link_exists(BRIDGE) {
        bridge_address()?
    } else {
        ip_batch(
            &format!("link add {BRIDGE} type bridge\n"),
            &format!("create the bridge {BRIDGE}"),
        )?;
        None
    };
    match current {
        Some((have, _)) if have != wanted => {
            return Err(HostNetError::Invalid(format!(
            "the bridge {BRIDGE} already has {have}, not {wanted}: run `vmm net teardown` first \
                 (it ends the network of running sandboxes)"
        )))
        }
        Some(_) => {}
        None => ip_batch(
            &format!("addr add {wanted} dev {BRIDGE}\n"),
            &format!("give the bridge {BRIDGE} its address"),
        )?,
    }
    ip_batch(
        &format!("link set dev {BRIDGE} up\n"),
        &format!("bring the bridge {BRIDGE} up"),
    )?;
    // Forwarding, and private-VLAN proxy ARP: the ports are isolated, so the host answers
    // ARP for one sandbox's address to another with its own MAC, and traffic between
    // sandboxes is routed through it (and its rules) instead of failing at layer 2.
    let sysctls = [
        ("ipv4/ip_forward".to_string(), "turn on IPv4 forwarding"),
        (
            format!("ipv4/conf/{BRIDGE}/proxy_arp"),
            "turn on proxy ARP on the bridge",
        ),
        (
            format!("ipv4/conf/{BRIDGE}/proxy_arp_pvlan"),
            "turn on private-VLAN proxy ARP on the bridge",
        ),
    ];
    for (key, what) in sysctls {
        let path = format!("/proc/sys/net/{key}");
        std::fs::write(&path, "1").map_err(HostNetError::io(format!("{what} ({path})")))?;
    }
    let host = host_side()?;
    nft(&ruleset::setup(&host), "install the base rules")?;
    Ok(host)
}

/// Removes the rules (every sandbox's too) and the bridge. IPv4 forwarding stays on: other
/// software may rely on it.
pub fn teardown() -> Result<(), HostNetError> {
    for table in ["inet vmm", "bridge vmm"] {
        // A table that is not there is what we want.
        if run("nft", &["list", "table", table], None, "look for the table").is_ok() {
            nft(
                &format!("delete table {table}\n"),
                &format!("delete the table {table}"),
            )?;
        }
    }
    if link_exists(BRIDGE) {
        ip_batch(
            &format!("link del {BRIDGE}\n"),
            &format!("delete the bridge {BRIDGE}"),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_is_the_first_host_of_a_network_address() {
        let gw = gateway_of("10.200.0.0/16".parse().unwrap()).unwrap();
        assert_eq!(gw.to_string(), "10.200.0.1/16");
        let e = gateway_of("10.200.0.1/16".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("did you mean 10.200.0.0/16"), "{e}");
        assert!(gateway_of("10.0.0.0/30".parse().unwrap()).is_err());
        assert!(gateway_of("10.0.0.0/7".parse().unwrap()).is_err());
    }
}
