//! Validation of a `NetworkConfig`: every field is checked before anything changes, and
//! a malformed one is named with its value.

use std::net::{IpAddr, Ipv4Addr};

use agent::pb::NetworkConfig;

use super::mac::Mac;
use super::NetworkError;

/// What the resolver reads (glibc's MAXNS); more would be silently ignored.
pub const MAX_NAMESERVERS: usize = 3;
pub const MIN_MTU: u32 = 68;
pub const MAX_MTU: u32 = 65535;
/// /31 and /32 have no room for both a host and a gateway with broadcast semantics.
pub const MAX_PREFIX_LEN: u32 = 30;

/// A validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub mac: Mac,
    pub address: Ipv4Addr,
    /// 1..=30.
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    /// `None`: leave the MTU as it is.
    pub mtu: Option<u32>,
    /// Empty: leave resolv.conf alone.
    pub nameservers: Vec<IpAddr>,
}

impl Plan {
    pub fn netmask(&self) -> Ipv4Addr {
        netmask(self.prefix_len)
    }

    pub fn network(&self) -> Ipv4Addr {
        self.address & self.netmask()
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        self.address | !self.netmask()
    }
}

fn netmask(prefix_len: u8) -> Ipv4Addr {
    Ipv4Addr::from(
        u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0),
    )
}

fn invalid(field: impl Into<String>, value: String, reason: impl Into<String>) -> NetworkError {
    NetworkError::Invalid {
        field: field.into(),
        value,
        reason: reason.into(),
    }
}

/// Checks every field of `req`.
pub fn plan(req: &NetworkConfig) -> Result<Plan, NetworkError> {
    let mac = parse_mac(&req.mac)?;
    let address = parse_host("address", &req.address)?;
    let prefix_len = match u8::try_from(req.prefix_len) {
        Ok(p) if (1..=MAX_PREFIX_LEN).contains(&req.prefix_len) => p,
        _ => {
            return Err(invalid(
                "prefix_len",
                req.prefix_len.to_string(),
                format!("not in 1-{MAX_PREFIX_LEN}"),
            ))
        }
    };
    let subnet = |ip: Ipv4Addr| Ipv4Addr::from(u32::from(ip) & u32::from(netmask(prefix_len)));
    let cidr = format!("{}/{prefix_len}", subnet(address));
    in_subnet_host("address", &req.address, address, prefix_len, &cidr)?;
    let gateway = parse_host("gateway", &req.gateway)?;
    if subnet(gateway) != subnet(address) {
        return Err(invalid(
            "gateway",
            format!("{:?}", req.gateway),
            format!("not inside {cidr}"),
        ));
    }
    in_subnet_host("gateway", &req.gateway, gateway, prefix_len, &cidr)?;
    if gateway == address {
        return Err(invalid(
            "gateway",
            format!("{:?}", req.gateway),
            "the interface's own address",
        ));
    }
    let mtu = match req.mtu {
        0 => None,
        m if (MIN_MTU..=MAX_MTU).contains(&m) => Some(m),
        m => {
            return Err(invalid(
                "mtu",
                m.to_string(),
                format!("not in {MIN_MTU}-{MAX_MTU} (or 0 to leave it as is)"),
            ))
        }
    };
    let nameservers = parse_nameservers(&req.nameservers)?;
    Ok(Plan {
        mac,
        address,
        prefix_len,
        gateway,
        mtu,
        nameservers,
    })
}

fn parse_mac(s: &str) -> Result<Mac, NetworkError> {
    let value = format!("{s:?}");
    let mac = Mac::parse(s).ok_or_else(|| {
        invalid(
            "mac",
            value.clone(),
            "not six hex bytes like 02:00:0a:c8:03:04",
        )
    })?;
    if mac.is_multicast() {
        return Err(invalid("mac", value, "a multicast address"));
    }
    if mac.is_zero() {
        return Err(invalid("mac", value, "the all-zero address"));
    }
    Ok(mac)
}

/// An IPv4 address an interface can have (the checks the kernel's SIOCSIFADDR makes, and
/// the loopback range).
fn parse_host(field: &str, s: &str) -> Result<Ipv4Addr, NetworkError> {
    let value = || format!("{s:?}");
    let ip: Ipv4Addr = s
        .parse()
        .map_err(|_| invalid(field, value(), "not an IPv4 address"))?;
    let reason = match ip.octets()[0] {
        0 => "in 0.0.0.0/8 (\"this network\")",
        127 => "a loopback address",
        224..=239 => "a multicast address",
        240..=255 => "in the reserved 240.0.0.0/4",
        _ => return Ok(ip),
    };
    Err(invalid(field, value(), reason))
}

/// Neither the network nor the broadcast address of the subnet.
fn in_subnet_host(
    field: &str,
    s: &str,
    ip: Ipv4Addr,
    prefix_len: u8,
    cidr: &str,
) -> Result<(), NetworkError> {
    let host_bits = u32::from(ip) & !u32::from(netmask(prefix_len));
    let reason = if host_bits == 0 {
        "the network address"
    } else if host_bits == !u32::from(netmask(prefix_len)) {
        "the broadcast address"
    } else {
        return Ok(());
    };
    Err(invalid(
        field,
        format!("{s:?}"),
        format!("{reason} of {cidr}"),
    ))
}

fn parse_nameservers(list: &[String]) -> Result<Vec<IpAddr>, NetworkError> {
    if list.len() > MAX_NAMESERVERS {
        return Err(invalid(
            "nameservers",
            format!("{list:?}"),
            format!(
                "{} given, the resolver reads at most {MAX_NAMESERVERS}",
                list.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        let field = format!("nameservers[{i}]");
        let ip: IpAddr = s
            .parse()
            .map_err(|_| invalid(field.as_str(), format!("{s:?}"), "not an IP address"))?;
        if ip.is_unspecified() {
            return Err(invalid(field, format!("{s:?}"), "the unspecified address"));
        }
        if ip.is_multicast() {
            return Err(invalid(field, format!("{s:?}"), "a multicast address"));
        }
        out.push(ip);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> NetworkConfig {
        NetworkConfig {
            mac: "02:00:0a:c8:03:04".into(),
            address: "10.200.3.4".into(),
            prefix_len: 16,
            gateway: "10.200.0.1".into(),
            mtu: 1500,
            nameservers: vec!["10.200.0.1".into(), "2001:db8::53".into()],
        }
    }

    /// The error of `req` as the client sees it.
    fn err(req: &NetworkConfig) -> String {
        let e = plan(req).unwrap_err();
        let status = e.status();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{e}");
        status.message().to_owned()
    }

    fn with(f: impl FnOnce(&mut NetworkConfig)) -> NetworkConfig {
        let mut req = good();
        f(&mut req);
        req
    }

    #[test]
    fn a_good_request_becomes_a_plan() {
        let p = plan(&good()).unwrap();
        assert_eq!(p.mac, Mac([2, 0, 0x0a, 0xc8, 3, 4]));
        assert_eq!(p.address, Ipv4Addr::new(10, 200, 3, 4));
        assert_eq!(p.prefix_len, 16);
        assert_eq!(p.gateway, Ipv4Addr::new(10, 200, 0, 1));
        assert_eq!(p.mtu, Some(1500));
        assert_eq!(
            p.nameservers,
            vec![
                "10.200.0.1".parse::<IpAddr>().unwrap(),
                "2001:db8::53".parse::<IpAddr>().unwrap()
            ]
        );
        assert_eq!(p.netmask(), Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(p.network(), Ipv4Addr::new(10, 200, 0, 0));
        assert_eq!(p.broadcast(), Ipv4Addr::new(10, 200, 255, 255));
    }

    #[test]
    fn optional_fields() {
        let p = plan(&with(|r| {
            r.mtu = 0;
            r.nameservers.clear();
        }))
        .unwrap();
        assert_eq!(p.mtu, None);
        assert!(p.nameservers.is_empty());
        for mtu in [68, 9000, 65535] {
            assert_eq!(plan(&with(|r| r.mtu = mtu)).unwrap().mtu, Some(mtu));
        }
    }

    #[test]
    fn prefix_edges() {
        let p = plan(&with(|r| {
            r.address = "192.168.7.1".into();
            r.gateway = "192.168.7.2".into();
            r.prefix_len = 30;
        }))
        .unwrap();
        assert_eq!(p.netmask(), Ipv4Addr::new(255, 255, 255, 252));
        assert_eq!(p.broadcast(), Ipv4Addr::new(192, 168, 7, 3));
        let p = plan(&with(|r| {
            r.address = "10.1.2.3".into();
            r.gateway = "100.1.2.3".into();
            r.prefix_len = 1;
        }))
        .unwrap();
        assert_eq!(p.netmask(), Ipv4Addr::new(128, 0, 0, 0));
        assert_eq!(p.broadcast(), Ipv4Addr::new(127, 255, 255, 255));
    }

    #[test]
    fn mac_errors() {
        assert_eq!(
            err(&with(|r| r.mac = "02:00:0a:c8:03".into())),
            "mac \"02:00:0a:c8:03\": not six hex bytes like 02:00:0a:c8:03:04"
        );
        assert_eq!(
            err(&with(|r| r.mac = String::new())),
            "mac \"\": not six hex bytes like 02:00:0a:c8:03:04"
        );
        assert_eq!(
            err(&with(|r| r.mac = "03:00:0a:c8:03:04".into())),
            "mac \"03:00:0a:c8:03:04\": a multicast address"
        );
        assert_eq!(
            err(&with(|r| r.mac = "00:00:00:00:00:00".into())),
            "mac \"00:00:00:00:00:00\": the all-zero address"
        );
    }

    #[test]
    fn address_errors() {
        for (address, reason) in [
            ("10.0.0.300", "not an IPv4 address"),
            ("", "not an IPv4 address"),
            ("10.200.3.4/16", "not an IPv4 address"),
            (" 10.200.3.4", "not an IPv4 address"),
            ("010.200.3.4", "not an IPv4 address"),
            ("fd00::1", "not an IPv4 address"),
            ("0.1.2.3", "in 0.0.0.0/8 (\"this network\")"),
            ("127.0.0.2", "a loopback address"),
            ("224.0.0.1", "a multicast address"),
            ("255.255.255.255", "in the reserved 240.0.0.0/4"),
            ("10.200.0.0", "the network address of 10.200.0.0/16"),
            ("10.200.255.255", "the broadcast address of 10.200.0.0/16"),
        ] {
            assert_eq!(
                err(&with(|r| r.address = address.into())),
                format!("address {address:?}: {reason}")
            );
        }
    }

    #[test]
    fn prefix_len_errors() {
        for prefix_len in [0, 31, 32, 33, 256, u32::MAX] {
            assert_eq!(
                err(&with(|r| r.prefix_len = prefix_len)),
                format!("prefix_len {prefix_len}: not in 1-30")
            );
        }
    }

    #[test]
    fn gateway_errors() {
        for (gateway, reason) in [
            ("10.200.0.256", "not an IPv4 address"),
            ("", "not an IPv4 address"),
            ("127.0.0.1", "a loopback address"),
            ("10.201.0.1", "not inside 10.200.0.0/16"),
            ("192.168.0.1", "not inside 10.200.0.0/16"),
            ("10.200.0.0", "the network address of 10.200.0.0/16"),
            ("10.200.255.255", "the broadcast address of 10.200.0.0/16"),
            ("10.200.3.4", "the interface's own address"),
        ] {
            assert_eq!(
                err(&with(|r| r.gateway = gateway.into())),
                format!("gateway {gateway:?}: {reason}")
            );
        }
    }

    #[test]
    fn mtu_errors() {
        for mtu in [1, 67, 65536, u32::MAX] {
            assert_eq!(
                err(&with(|r| r.mtu = mtu)),
                format!("mtu {mtu}: not in 68-65535 (or 0 to leave it as is)")
            );
        }
    }

    #[test]
    fn nameserver_errors() {
        assert_eq!(
            err(&with(
                |r| r.nameservers = vec!["1.1.1.1".into(), "dns.example".into()]
            )),
            "nameservers[1] \"dns.example\": not an IP address"
        );
        assert_eq!(
            err(&with(|r| r.nameservers = vec!["10.0.0.256".into()])),
            "nameservers[0] \"10.0.0.256\": not an IP address"
        );
        assert_eq!(
            err(&with(|r| r.nameservers = vec!["0.0.0.0".into()])),
            "nameservers[0] \"0.0.0.0\": the unspecified address"
        );
        assert_eq!(
            err(&with(|r| r.nameservers = vec!["ff02::1".into()])),
            "nameservers[0] \"ff02::1\": a multicast address"
        );
        let four: Vec<String> = (1..=4).map(|i| format!("10.0.0.{i}")).collect();
        assert_eq!(
            err(&with(|r| r.nameservers = four)),
            "nameservers [\"10.0.0.1\", \"10.0.0.2\", \"10.0.0.3\", \"10.0.0.4\"]: \
             4 given, the resolver reads at most 3"
        );
        let three: Vec<String> = (1..=3).map(|i| format!("10.0.0.{i}")).collect();
        assert_eq!(
            plan(&with(|r| r.nameservers = three))
                .unwrap()
                .nameservers
                .len(),
            3
        );
    }

    #[test]
    fn the_first_bad_field_is_named() {
        let req = NetworkConfig {
            mac: "x".into(),
            address: "y".into(),
            ..Default::default()
        };
        assert!(err(&req).starts_with("mac \"x\""));
    }
}
