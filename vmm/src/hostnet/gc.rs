//! Stale sandboxes: rules whose sandbox is gone. A sandbox's link (its TAP, or the host
//! end of its veth) lives exactly as long as the sandbox, so rules whose link is missing
//! are stale. The releaser removes a sandbox's rules when its vmm ends; this catches
//! what it could not (the releaser killed too, a host crash).

use std::net::Ipv4Addr;

use super::command::{nft, run};
use super::ruleset::{self, address_of_chain, link_name};
use super::{link_exists, HostNetError};

/// The addresses that have rules on this host (their `sb-` chains).
pub fn sandboxes_with_rules() -> Result<Vec<Ipv4Addr>, HostNetError> {
    let out = run(
        "nft",
        &["-j", "list", "table", "inet", "vmm"],
        None,
        "list the rules",
    )
    .map_err(|e| HostNetError::NotSetUp(format!("no nftables table inet vmm: {e}")))?;
    let listing: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| HostNetError::Invalid(format!("nft -j list table inet vmm: {e}")))?;
    let entries = listing["nftables"].as_array().cloned().unwrap_or_default();
    Ok(entries
        .iter()
        .filter_map(|entry| entry["chain"]["name"].as_str())
        .filter_map(address_of_chain)
        .collect())
}

/// Removes one sandbox's rules: as one transaction, or step by step when a part was
/// already gone. Deletes its link too when `link` says it is ours to delete.
pub fn release(address: Ipv4Addr, delete_link: bool) -> Result<(), HostNetError> {
    let name = link_name(address);
    if delete_link && link_exists(&name) {
        // The host end of a veth outlives its vmm (a TAP goes with it); it also goes when
        // the namespace of its other end does, maybe just now.
        let deleted =
            super::command::ip_batch(&format!("link del {name}\n"), &format!("delete {name}"));
        if let (Err(e), true) = (deleted, link_exists(&name)) {
            return Err(e);
        }
    }
    if nft(&ruleset::release(address), "release the sandbox's rules").is_ok() {
        return Ok(());
    }
    for step in ruleset::release_steps(address) {
        if let Err(e) = nft(&(step + "\n"), "release the sandbox's rules") {
            log::debug!("{e}");
        }
    }
    Ok(())
}

/// Releases every sandbox whose link is gone; returns their addresses. The caller holds
/// the host lock.
pub fn collect() -> Result<Vec<Ipv4Addr>, HostNetError> {
    let mut released = Vec::new();
    for address in sandboxes_with_rules()? {
        if !link_exists(&link_name(address)) {
            release(address, false)?;
            released.push(address);
        }
    }
    Ok(released)
}
