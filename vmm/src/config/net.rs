//! The VM's network: `--net`, `--no-net`, `--block-network`, `--allow`, `--publish` and
//! the `[net]` section. Whether the VM gets a NIC, on which TAP and with which MAC, and
//! what the host side lets it reach.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Deserialize;

use super::ConfigError;

/// The `[net]` section, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSection {
    /// "auto" (vmm creates the TAP and its host side) or "tap" (an existing TAP).
    pub mode: Option<String>,
    /// The existing TAP for mode "tap".
    pub tap: Option<String>,
    pub mac: Option<String>,
    /// No NIC at all.
    #[serde(default)]
    pub block_network: bool,
    /// Egress only to these CIDRs (mode "auto"); everything when absent.
    pub allow: Option<Vec<String>>,
    /// `[ADDR:]HOSTPORT:GUESTPORT` (mode "auto").
    #[serde(default)]
    pub publish: Vec<String>,
}

/// The network flags of `vmm run`.
#[derive(Debug, Default, Clone)]
pub struct NetFlags {
    /// `--net tap=NAME[,mac=MAC]` or `--net auto[,mac=MAC]`.
    pub net: Option<String>,
    pub no_net: bool,
    pub block_network: bool,
    pub allow: Vec<String>,
    pub publish: Vec<String>,
}

/// Where the NIC's frames go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackend {
    /// An existing TAP: its host side is the user's.
    Tap(String),
    /// A TAP vmm creates, wired to `vmm net setup`'s bridge with the policy below.
    Auto,
}

/// What the guest may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Egress {
    Open,
    /// IPv4 only: the sandbox network has no IPv6.
    Allow(Vec<Ipv4Net>),
}

/// A host port forwarded to a guest port (TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish {
    pub host_addr: Ipv4Addr,
    pub host_port: u16,
    pub guest_port: u16,
}

/// A validated NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    pub backend: NetBackend,
    pub mac: [u8; 6],
    pub egress: Egress,
    pub publish: Vec<Publish>,
}

fn err(what: &str, value: &str, why: &str) -> ConfigError {
    ConfigError::Net(format!("{what} {value:?}: {why}"))
}

/// Parses `aa:bb:cc:dd:ee:ff`, a unicast address.
pub fn parse_mac(value: &str) -> Result<[u8; 6], ConfigError> {
    let bad = || {
        err(
            "mac",
            value,
            "expected six hex bytes like 02:00:00:00:00:01",
        )
    };
    let mut mac = [0u8; 6];
    let mut parts = value.split(':');
    for byte in &mut mac {
        let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 {
        return Err(err("mac", value, "a multicast address cannot be a NIC's"));
    }
    Ok(mac)
}

/// A random locally administered unicast MAC (02:xx:xx:xx:xx:xx).
fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most `len` bytes into the buffer we own.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        // Never seen; a fixed address still works for one VM on a TAP of its own.
        mac = [0, 0, 0, 0, 0, 1];
    }
    mac[0] = 0x02;
    mac
}

/// Parses `[ADDR:]HOSTPORT:GUESTPORT`; without ADDR, every address of the host.
pub fn parse_publish(value: &str) -> Result<Publish, ConfigError> {
    let bad = |why: &str| err("publish", value, why);
    let parts: Vec<&str> = value.split(':').collect();
    let (addr, host, guest) = match parts[..] {
        [host, guest] => (Ipv4Addr::UNSPECIFIED, host, guest),
        [addr, host, guest] => (
            addr.parse()
                .map_err(|_| bad("the address is not an IPv4 address"))?,
            host,
            guest,
        ),
        _ => return Err(bad("expected [ADDR:]HOSTPORT:GUESTPORT")),
    };
    let port = |p: &str| p.parse::<u16>().ok().filter(|&p| p != 0);
    Ok(Publish {
        host_addr: addr,
        host_port: port(host).ok_or_else(|| bad("the host port is not 1-65535"))?,
        guest_port: port(guest).ok_or_else(|| bad("the guest port is not 1-65535"))?,
    })
}

/// `tap=NAME[,mac=MAC]` or `auto[,mac=MAC]`.
fn parse_net_flag(value: &str) -> Result<(NetBackend, Option<[u8; 6]>), ConfigError> {
    let bad = || {
        err(
            "--net",
            value,
            "expected tap=NAME[,mac=MAC] or auto[,mac=MAC]",
        )
    };
    let mut parts = value.split(',');
    let backend = match parts.next().map(|p| p.split_once('=')) {
        Some(Some(("tap", name))) => NetBackend::Tap(check_tap_name(name)?),
        Some(None) if value.split(',').next() == Some("auto") => NetBackend::Auto,
        _ => return Err(bad()),
    };
    let mut mac = None;
    for part in parts {
        match part.split_once('=') {
            Some(("mac", m)) => mac = Some(parse_mac(m)?),
            _ => return Err(bad()),
        }
    }
    Ok((backend, mac))
}

/// Linux interface names: 1-15 bytes, no '/', whitespace or ':'.
fn check_tap_name(name: &str) -> Result<String, ConfigError> {
    let ok = !name.is_empty()
        && name.len() < 16
        && !name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(name.to_string())
    } else {
        Err(err(
            "tap",
            name,
            "not an interface name (1-15 bytes, no '/', ':' or spaces)",
        ))
    }
}

/// Merges the section and the flags (flags win) into the NIC, if any.
pub fn build(file: Option<NetSection>, flags: NetFlags) -> Result<Option<NetSpec>, ConfigError> {
    let file = file.unwrap_or_default();
    if flags.no_net {
        return Ok(None);
    }
    let (backend, flag_mac) = match &flags.net {
        Some(value) => {
            let (backend, mac) = parse_net_flag(value)?;
            (Some(backend), mac)
        }
        None => (
            match file.mode.as_deref() {
                None | Some("none") => None,
                Some("auto") => Some(NetBackend::Auto),
                Some("tap") => {
                    let name = file.tap.as_deref().ok_or_else(|| {
                        ConfigError::Net("[net] mode \"tap\" needs tap = \"NAME\"".into())
                    })?;
                    Some(NetBackend::Tap(check_tap_name(name)?))
                }
                Some(other) => return Err(err("[net] mode", other, "expected auto, tap or none")),
            },
            None,
        ),
    };
    let allow: Vec<String> = flags
        .allow
        .into_iter()
        .chain(file.allow.clone().unwrap_or_default())
        .collect();
    let publish: Vec<String> = flags.publish.into_iter().chain(file.publish).collect();
    let restricted = !allow.is_empty() || file.allow.is_some();
    if flags.block_network || file.block_network {
        if backend.is_some() || restricted || !publish.is_empty() {
            return Err(ConfigError::Net(
                "block_network means no NIC: it cannot go with --net, allow or publish".into(),
            ));
        }
        return Ok(None);
    }
    let Some(backend) = backend else {
        if restricted || !publish.is_empty() {
            return Err(ConfigError::Net(
                "allow and publish need a NIC: add --net auto".into(),
            ));
        }
        return Ok(None);
    };
    if backend != NetBackend::Auto && (restricted || !publish.is_empty()) {
        return Err(ConfigError::Net(
            "allow and publish need --net auto: vmm programs the host's rules only for TAPs it creates".into(),
        ));
    }
    let egress = if restricted {
        let nets = allow
            .iter()
            .map(|cidr| {
                cidr.parse::<Ipv4Net>().map_err(|_| {
                    err(
                        "allow",
                        cidr,
                        "not an IPv4 CIDR like 10.0.0.0/8 (the sandbox network is IPv4 only)",
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Egress::Allow(nets)
    } else {
        Egress::Open
    };
    let mac = match (flag_mac, file.mac.as_deref()) {
        (Some(m), _) => m,
        (None, Some(m)) => parse_mac(m)?,
        (None, None) => random_mac(),
    };
    Ok(Some(NetSpec {
        backend,
        mac,
        egress,
        publish: publish
            .iter()
            .map(|p| parse_publish(p))
            .collect::<Result<_, _>>()?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(net: Option<&str>) -> NetFlags {
        NetFlags {
            net: net.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn no_net_unless_asked() {
        assert_eq!(build(None, NetFlags::default()).unwrap(), None);
        let spec = build(None, flags(Some("tap=tap0,mac=02:00:00:00:00:2a")))
            .unwrap()
            .unwrap();
        assert_eq!(spec.backend, NetBackend::Tap("tap0".into()));
        assert_eq!(spec.mac, [2, 0, 0, 0, 0, 0x2a]);
        assert_eq!(spec.egress, Egress::Open);
        let auto = build(None, flags(Some("auto"))).unwrap().unwrap();
        assert_eq!(auto.backend, NetBackend::Auto);
        assert_eq!(auto.mac[0], 0x02, "locally administered, unicast");
        let file = NetSection {
            mode: Some("auto".into()),
            ..Default::default()
        };
        let no = NetFlags {
            no_net: true,
            ..Default::default()
        };
        assert_eq!(build(Some(file), no).unwrap(), None);
    }

    #[test]
    fn policy_and_publish_need_auto_and_block_network_means_no_nic() {
        let file = NetSection {
            mode: Some("auto".into()),
            allow: Some(vec!["10.0.0.0/8".into()]),
            publish: vec!["127.0.0.1:8080:80".into(), "9000:90".into()],
            ..Default::default()
        };
        let spec = build(Some(file), NetFlags::default()).unwrap().unwrap();
        assert_eq!(
            spec.egress,
            Egress::Allow(vec!["10.0.0.0/8".parse().unwrap()])
        );
        assert_eq!(
            spec.publish,
            [
                Publish {
                    host_addr: Ipv4Addr::LOCALHOST,
                    host_port: 8080,
                    guest_port: 80
                },
                Publish {
                    host_addr: Ipv4Addr::UNSPECIFIED,
                    host_port: 9000,
                    guest_port: 90
                }
            ]
        );
        // An empty allow list is "nowhere", not "everywhere".
        let file = NetSection {
            mode: Some("auto".into()),
            allow: Some(vec![]),
            ..Default::default()
        };
        assert_eq!(
            build(Some(file), NetFlags::default())
                .unwrap()
                .unwrap()
                .egress,
            Egress::Allow(vec![])
        );
        let e = |f: NetFlags| build(None, f).unwrap_err().to_string();
        let tap_with_allow = NetFlags {
            allow: vec!["1.2.3.0/24".into()],
            ..flags(Some("tap=tap0"))
        };
        assert!(e(tap_with_allow).contains("--net auto"));
        let blocked = NetFlags {
            block_network: true,
            ..flags(Some("auto"))
        };
        assert!(e(blocked).contains("block_network"));
        let blocked = NetFlags {
            block_network: true,
            ..Default::default()
        };
        assert_eq!(build(None, blocked).unwrap(), None);
    }

    #[test]
    fn bad_values_are_named() {
        for (value, needle) in [
            ("tap=", "interface name"),
            ("tap=a/b", "interface name"),
            ("tap=averyveryverylongname", "interface name"),
            ("bridge", "expected tap=NAME"),
            ("auto,mac=01:00:00:00:00:01", "multicast"),
            ("auto,mac=02:00:00:00:00", "six hex bytes"),
            ("auto,speed=10", "expected tap=NAME"),
        ] {
            let e = build(None, flags(Some(value))).unwrap_err().to_string();
            assert!(e.contains(needle), "{value}: {e}");
        }
        for bad in ["80", "a:1:2", "0:80", "1:2:3:4", "8080:70000"] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
        let allow = NetFlags {
            allow: vec!["10.0.0.0/33".into()],
            ..flags(Some("auto"))
        };
        let e = build(None, allow).unwrap_err().to_string();
        assert!(e.contains("10.0.0.0/33"), "{e}");
        let v6 = NetFlags {
            allow: vec!["2001:db8::/32".into()],
            ..flags(Some("auto"))
        };
        let e = build(None, v6).unwrap_err().to_string();
        assert!(
            e.contains("2001:db8::/32") && e.contains("IPv4 only"),
            "{e}"
        );
    }
}
