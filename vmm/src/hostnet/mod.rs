//! The host side of sandbox networking (`--net auto`): a bridge with NAT through the
//! host's default route, made once by `vmm net setup`; per sandbox, a link on the bridge
//! (a TAP, or a veth into the test jail), an address, its egress policy and anti-spoofing
//! rules, a DNS forwarder and the published ports' proxies. A sandbox's rules go when
//! its vmm ends (a releaser process waits for that, even after `kill -9`), and stale
//! ones are collected by the next start or by `vmm net gc`.
//!
//! Everything here needs CAP_NET_ADMIN (in practice root); it runs `ip` and `nft`.

pub mod attach;
pub mod command;
mod dns;
pub mod gc;
pub mod host;
pub mod lock;
mod proxy;
pub mod ruleset;
pub mod services;

/// The bridge `vmm net setup` creates.
pub const BRIDGE: &str = "vmmbr0";
/// The sandboxes' network unless `vmm net setup --subnet` says otherwise.
pub const DEFAULT_SUBNET: &str = "10.200.0.0/16";

#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    #[error("{tool} ({what}): {detail}")]
    Tool {
        tool: String,
        what: String,
        detail: String,
    },
    #[error("the host side of --net auto is not set up ({0}): run `vmm net setup` as root first")]
    NotSetUp(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no free address in {0}: every one is taken by a running sandbox")]
    Full(ipnet::Ipv4Net),
}

impl HostNetError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// "02:00:0a:c8:03:04", as ip, nft and the agent write a MAC.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// True when a network interface of this name exists in our network namespace.
pub fn link_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: if_nametoindex reads the NUL-terminated string we own.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

#[cfg(test)]
mod tests;
