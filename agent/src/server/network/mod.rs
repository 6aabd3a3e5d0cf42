//! ConfigureNetwork: the guest's NIC, default route and resolv.conf from what the host
//! side assigned. The request is validated whole first ([`plan`]); then plain ioctls on
//! an AF_INET socket make the changes, in the network namespace of the calling thread
//! (the VM's, or the test jail's). Blocking: run [`configure`] off the reactor.

mod iface;
mod mac;
mod plan;
mod resolv;
mod route;

use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::sync::Mutex;

use tonic::{Code, Status};

pub use iface::{Inet, Seen, Socket};
pub use mac::Mac;
pub use plan::{plan, Plan, MAX_NAMESERVERS};

use super::errors::{io_code, strerror};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{field} {value}: {reason}")]
    Invalid {
        field: String,
        /// As the client sent it (strings quoted).
        value: String,
        reason: String,
    },
    #[error("no interface has MAC {mac} (seen: {seen})")]
    NoInterface { mac: Mac, seen: Seen },
    #[error("cannot open a socket for the interface ioctls")]
    Socket(#[source] io::Error),
    #[error("cannot list the network interfaces")]
    List(#[source] io::Error),
    #[error("{iface}: {step}")]
    Interface {
        iface: String,
        step: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}")]
    Resolv {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl NetworkError {
    /// The gRPC status: the message with the OS error's text, the code from its errno.
    pub fn status(&self) -> Status {
        match self {
            NetworkError::Invalid { .. } => Status::invalid_argument(self.to_string()),
            NetworkError::NoInterface { .. } => Status::not_found(self.to_string()),
            NetworkError::Socket(source)
            | NetworkError::List(source)
            | NetworkError::Interface { source, .. }
            | NetworkError::Resolv { source, .. } => {
                let code = match io_code(source) {
                    // Not a bad field of the request (those were checked): the kernel
                    // refused a value for this interface (an MTU above its maximum).
                    Code::InvalidArgument => Code::FailedPrecondition,
                    code => code,
                };
                Status::new(code, format!("{self}: {}", strerror(source)))
            }
        }
    }
}

/// Two configurations at once would interleave their route changes.
static CONFIGURING: Mutex<()> = Mutex::new(());

/// Applies `plan`: `lo` up; the interface with the plan's MAC gets the MTU, address,
/// netmask, broadcast and IFF_UP; the default route goes through the gateway; the
/// nameservers (if any) replace `resolv_conf`. Returns the interface's name. Applying it
/// again, or another plan, converges.
pub fn configure(plan: &Plan, resolv_conf: &Path) -> Result<String, NetworkError> {
    let _one_at_a_time = CONFIGURING.lock().unwrap_or_else(|e| e.into_inner());
    let sock = Socket::open().map_err(NetworkError::Socket)?;
    let name = iface::find(&sock, plan.mac)?;
    let step = |iface: &str, step: &str| {
        let (iface, step) = (iface.to_owned(), step.to_owned());
        move |source| NetworkError::Interface {
            iface,
            step,
            source,
        }
    };
    sock.set_up("lo").map_err(step("lo", "bring it up"))?;
    if let Some(mtu) = plan.mtu {
        sock.set_mtu(&name, mtu)
            .map_err(step(&name, &format!("set the MTU to {mtu}")))?;
    }
    // The address first: SIOCSIFADDR gives it its class's netmask, which the netmask and
    // broadcast then correct. The same values again change nothing.
    sock.set_inet(&name, Inet::Address, plan.address)
        .map_err(step(&name, "set the address"))?;
    sock.set_inet(&name, Inet::Netmask, plan.netmask())
        .map_err(step(&name, "set the netmask"))?;
    sock.set_inet(&name, Inet::Broadcast, plan.broadcast())
        .map_err(step(&name, "set the broadcast address"))?;
    sock.set_up(&name).map_err(step(&name, "bring it up"))?;
    // After the address: changing an address flushes the routes through the interface.
    route::replace_default(&sock, &name, plan.gateway)
        .map_err(|route::Step(what, e)| step(&name, what)(e))?;
    if !plan.nameservers.is_empty() {
        resolv::write(resolv_conf, &plan.nameservers)?;
    }
    let mtu = sock.mtu(&name).ok();
    log::info!("{}", summary(&name, plan, mtu));
    Ok(name)
}

/// "eth0: 10.200.3.4/16 via 10.200.0.1, mtu 1500, dns 10.200.0.1".
pub fn summary(name: &str, plan: &Plan, mtu: Option<u32>) -> String {
    let mut s = format!(
        "{name}: {}/{} via {}, mtu ",
        plan.address, plan.prefix_len, plan.gateway
    );
    match mtu {
        Some(mtu) => {
            let _ = write!(s, "{mtu}");
        }
        None => s.push('?'),
    }
    if plan.nameservers.is_empty() {
        s.push_str(", dns unchanged");
    } else {
        s.push_str(", dns");
        for ns in &plan.nameservers {
            let _ = write!(s, " {ns}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent::pb::NetworkConfig;

    fn plan_of(nameservers: &[&str]) -> Plan {
        plan(&NetworkConfig {
            mac: "02:00:0a:c8:03:04".into(),
            address: "10.200.3.4".into(),
            prefix_len: 16,
            gateway: "10.200.0.1".into(),
            mtu: 0,
            nameservers: nameservers.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn summary_line() {
        assert_eq!(
            summary("eth0", &plan_of(&["10.200.0.1"]), Some(1500)),
            "eth0: 10.200.3.4/16 via 10.200.0.1, mtu 1500, dns 10.200.0.1"
        );
        assert_eq!(
            summary("eth0", &plan_of(&["10.200.0.1", "fd00::53"]), Some(9000)),
            "eth0: 10.200.3.4/16 via 10.200.0.1, mtu 9000, dns 10.200.0.1 fd00::53"
        );
        assert_eq!(
            summary("eth1", &plan_of(&[]), None),
            "eth1: 10.200.3.4/16 via 10.200.0.1, mtu ?, dns unchanged"
        );
    }

    #[test]
    fn statuses_name_the_step_and_interface() {
        let e = NetworkError::Interface {
            iface: "eth0".into(),
            step: "set the address".into(),
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        let s = e.status();
        assert_eq!(s.code(), Code::PermissionDenied);
        assert_eq!(
            s.message(),
            "eth0: set the address: Operation not permitted"
        );
        let e = NetworkError::Interface {
            iface: "eth0".into(),
            step: "set the MTU to 65535".into(),
            source: io::Error::from_raw_os_error(libc::EINVAL),
        };
        let s = e.status();
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(s.message(), "eth0: set the MTU to 65535: Invalid argument");
    }

    #[test]
    fn not_found_lists_what_was_seen() {
        let e = NetworkError::NoInterface {
            mac: Mac([2, 0, 0x0a, 0xc8, 3, 4]),
            seen: Seen::default(),
        };
        let s = e.status();
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(
            s.message(),
            "no interface has MAC 02:00:0a:c8:03:04 (seen: none)"
        );
    }
}
