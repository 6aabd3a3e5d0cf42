//! `vmm net`: the host side of `--net auto` (see crate::hostnet).

use std::net::Ipv4Addr;

use clap::Subcommand;

use crate::hostnet::{self, attach, gc, host, HostNetError};

#[derive(Subcommand)]
pub enum NetCommand {
    /// Create the bridge vmmbr0 with the sandboxes' gateway address, turn on IPv4
    /// forwarding, and install the nftables tables `inet vmm` and `bridge vmm` (NAT
    /// through the host's routes, per-sandbox egress policy, anti-spoofing). Idempotent:
    /// running sandboxes keep their network. Needs root (CAP_NET_ADMIN).
    Setup {
        /// The sandboxes' IPv4 network; the bridge takes its first address.
        #[arg(long, value_name = "CIDR", default_value = hostnet::DEFAULT_SUBNET)]
        subnet: String,
    },
    /// Remove the rules of sandboxes that have ended (their vmm was killed along with
    /// its releaser, or the host went down). Prints the addresses freed.
    Gc,
    /// Remove the bridge and both nftables tables: every sandbox loses its network.
    Teardown,
    /// Release one sandbox's rules (run by vmm itself for each sandbox; `--wait` waits
    /// for stdin to end first, which happens when that vmm ends).
    #[command(hide = true)]
    Release {
        #[arg(long)]
        wait: bool,
        /// Delete the sandbox's link too (the host end of a veth).
        #[arg(long)]
        delete_link: bool,
        address: Ipv4Addr,
    },
}

/// Runs a `vmm net` command; returns what to print.
pub fn run(command: NetCommand) -> Result<String, HostNetError> {
    match command {
        NetCommand::Setup { subnet } => {
            let side = host::setup(attach::parse_subnet(&subnet)?)?;
            Ok(format!(
                "{}: sandboxes get addresses in {} via {} (mtu {}); tables inet vmm and bridge vmm installed\n",
                side.bridge, side.subnet, side.gateway, side.mtu
            ))
        }
        NetCommand::Gc => {
            let _lock = hostnet::lock::take()?;
            let freed = gc::collect()?;
            Ok(freed.iter().map(|a| format!("released {a}\n")).collect())
        }
        NetCommand::Teardown => {
            let _lock = hostnet::lock::take()?;
            host::teardown()?;
            Ok(String::new())
        }
        NetCommand::Release {
            wait,
            delete_link,
            address,
        } => {
            if wait {
                attach::release_when_stdin_ends(address, delete_link)?;
            } else {
                let _lock = hostnet::lock::take()?;
                gc::release(address, delete_link)?;
            }
            Ok(String::new())
        }
    }
}
