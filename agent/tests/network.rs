//! ConfigureNetwork's ioctl path on the host kernel, in a network namespace of the test's
//! own: a thread unshares CLONE_NEWNET (only that thread moves), makes a veth pair there
//! with `ip` (a child spawned from that thread inherits its namespace), configures one end
//! by its MAC with the agent's `network::configure`, and checks the outcome with `ip -j`
//! from the same thread. Needs root and iproute2; the host's namespace is never touched.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use agent::pb::NetworkConfig;
use agent::server::network::{configure, plan};
use serde_json::Value;

const IP: &str = "/usr/sbin/ip";
const MAC: &str = "02:00:0a:c8:03:04";
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

fn netns_inode() -> u64 {
    fs::metadata(THREAD_NETNS)
        .unwrap_or_else(|e| panic!("{THREAD_NETNS}: {e}"))
        .ino()
}

/// Runs `f` on a new thread in a new network namespace; its panics are the test's.
fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let host = netns_inode();
    std::thread::spawn(move || {
        // SAFETY: unshare(2) takes no pointers; CLONE_NEWNET moves only the calling thread,
        // which ends with the closure (and the namespace with it).
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET) (the test needs root): {}",
            io::Error::last_os_error()
        );
        assert_ne!(netns_inode(), host, "still in the host's network namespace");
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Runs `ip args` (in the calling thread's namespace); its stdout.
fn ip(args: &[&str]) -> String {
    let out = Command::new(IP)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{IP}: {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn ip_json(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    let out = ip(&all);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip {args:?}: {e}: {out}"));
    v.as_array().cloned().unwrap_or_default()
}

fn config(address: &str, prefix_len: u32, gateway: &str, mtu: u32, dns: &[&str]) -> NetworkConfig {
    NetworkConfig {
        mac: MAC.into(),
        address: address.into(),
        prefix_len,
        gateway: gateway.into(),
        mtu,
        nameservers: dns.iter().map(|s| s.to_string()).collect(),
    }
}

/// What `ip -j addr show dev <dev>` says: (flags, mtu, [(local, prefixlen, broadcast)]).
fn link(dev: &str) -> (Vec<String>, u64, Vec<(String, u64, String)>) {
    let links = ip_json(&["addr", "show", "dev", dev]);
    assert_eq!(links.len(), 1, "{links:?}");
    let l = &links[0];
    let flags = l["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect();
    let mtu = l["mtu"].as_u64().unwrap();
    let inet = l["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| {
            (
                a["local"].as_str().unwrap().to_owned(),
                a["prefixlen"].as_u64().unwrap(),
                a["broadcast"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    (flags, mtu, inet)
}

/// The default routes of the main table: (gateway, dev).
fn default_routes() -> Vec<(String, String)> {
    ip_json(&["route", "show", "default"])
        .iter()
        .map(|r| {
            (
                r["gateway"].as_str().unwrap_or("").to_owned(),
                r["dev"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn inet(local: &str, prefixlen: u64, broadcast: &str) -> (String, u64, String) {
    (local.into(), prefixlen, broadcast.into())
}

fn route(gateway: &str, dev: &str) -> (String, String) {
    (gateway.into(), dev.into())
}

#[test]
fn configures_a_veth_end_by_its_mac_and_converges() {
    in_new_netns(|| {
        ip(&[
            "link", "add", "vtest0", "address", MAC, "type", "veth", "peer", "name", "vtest1",
        ]);
        ip(&["link", "set", "vtest1", "up"]);
        assert!(!link("lo").0.contains(&"UP".to_owned()));
        let dir = tempfile::tempdir().unwrap();
        let resolv = dir.path().join("resolv.conf");

        let first = plan(&config(
            "10.200.3.4",
            16,
            "10.200.0.1",
            1400,
            &["10.200.0.1"],
        ))
        .unwrap();
        assert_eq!(configure(&first, &resolv).unwrap(), "vtest0");
        let (flags, mtu, addrs) = link("vtest0");
        assert!(flags.contains(&"UP".to_owned()), "{flags:?}");
        assert_eq!(mtu, 1400);
        assert_eq!(addrs, [inet("10.200.3.4", 16, "10.200.255.255")]);
        let (lo_flags, _, lo_addrs) = link("lo");
        assert!(lo_flags.contains(&"UP".to_owned()), "{lo_flags:?}");
        assert_eq!(lo_addrs, [inet("127.0.0.1", 8, "")]);
        assert_eq!(default_routes(), [route("10.200.0.1", "vtest0")]);
        let written = fs::read_to_string(&resolv).unwrap();
        assert!(written.starts_with("# Written by vmm-agent"), "{written}");
        assert!(written.ends_with("\nnameserver 10.200.0.1\n"), "{written}");

        // The same again: nothing to change, no error.
        assert_eq!(configure(&first, &resolv).unwrap(), "vtest0");
        assert_eq!(link("vtest0").2, [inet("10.200.3.4", 16, "10.200.255.255")]);
        assert_eq!(default_routes(), [route("10.200.0.1", "vtest0")]);

        // Another gateway in the same subnet replaces the default route; MTU 0 leaves the
        // MTU and no nameservers leave resolv.conf as they were.
        let second = plan(&config("10.200.3.4", 16, "10.200.0.254", 0, &[])).unwrap();
        assert_eq!(configure(&second, &resolv).unwrap(), "vtest0");
        assert_eq!(default_routes(), [route("10.200.0.254", "vtest0")]);
        let (_, mtu, addrs) = link("vtest0");
        assert_eq!(mtu, 1400);
        assert_eq!(addrs, [inet("10.200.3.4", 16, "10.200.255.255")]);
        assert_eq!(fs::read_to_string(&resolv).unwrap(), written);

        // Another subnet: the address is replaced, not added, and the route follows.
        let third = plan(&config(
            "192.168.77.10",
            24,
            "192.168.77.1",
            1500,
            &["192.168.77.1", "1.1.1.1"],
        ))
        .unwrap();
        assert_eq!(configure(&third, &resolv).unwrap(), "vtest0");
        let (flags, mtu, addrs) = link("vtest0");
        assert!(flags.contains(&"UP".to_owned()), "{flags:?}");
        assert_eq!(mtu, 1500);
        assert_eq!(addrs, [inet("192.168.77.10", 24, "192.168.77.255")]);
        assert_eq!(default_routes(), [route("192.168.77.1", "vtest0")]);
        assert!(fs::read_to_string(&resolv)
            .unwrap()
            .ends_with("\nnameserver 192.168.77.1\nnameserver 1.1.1.1\n"));
    });
}

#[test]
fn an_unknown_mac_is_not_found_and_changes_nothing() {
    in_new_netns(|| {
        ip(&[
            "link",
            "add",
            "vtest0",
            "address",
            "02:00:0a:c8:03:05",
            "type",
            "veth",
            "peer",
            "name",
            "vtest1",
            "address",
            "02:00:0a:c8:03:06",
        ]);
        let dir = tempfile::tempdir().unwrap();
        let resolv = dir.path().join("resolv.conf");
        let p = plan(&config(
            "10.200.3.4",
            16,
            "10.200.0.1",
            1400,
            &["10.200.0.1"],
        ))
        .unwrap();
        let status = configure(&p, &resolv).unwrap_err().status();
        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
        assert_eq!(
            status.message(),
            "no interface has MAC 02:00:0a:c8:03:04 \
             (seen: lo, vtest1 02:00:0a:c8:03:06, vtest0 02:00:0a:c8:03:05)"
        );
        let (flags, mtu, addrs) = link("vtest0");
        assert!(!flags.contains(&"UP".to_owned()), "{flags:?}");
        assert_eq!(mtu, 1500);
        assert!(addrs.is_empty(), "{addrs:?}");
        assert!(!link("lo").0.contains(&"UP".to_owned()));
        assert!(default_routes().is_empty());
        assert!(!Path::new(&resolv).exists());
    });
}
