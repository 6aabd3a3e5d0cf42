//! virtio-net with a tiny guest (tier 1): the guest's polling driver (test=net) finds its
//! MAC, gets an ARP reply from the kernel and a UDP datagram echoed back, through a TAP
//! in a network namespace the test creates (the host's own network is never touched).

use std::fs::File;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vmm_tests::{vmm_bin, Vmm, TINY_ELF};

const IP: &str = "/usr/sbin/ip";
const PEER: &str = "10.0.2.1";
const ECHO_PORT: u16 = 7777;

/// A named network namespace with one TAP (10.0.2.1/24, up), deleted on drop (which
/// deletes the TAP with it).
struct NetNs {
    name: String,
}

impl NetNs {
    fn new(tag: &str) -> Self {
        let name = format!("vmmtest-{tag}-{}", std::process::id());
        let ns = Self { name };
        ns.ip(&["netns", "add", &ns.name]);
        for args in [
            vec!["tuntap", "add", "dev", "tap0", "mode", "tap", "vnet_hdr"],
            vec!["addr", "add", &format!("{PEER}/24"), "dev", "tap0"],
            vec!["link", "set", "tap0", "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut all = vec!["-n", ns.name.as_str()];
            all.extend(args);
            ns.ip(&all);
        }
        ns
    }

    fn ip(&self, args: &[&str]) {
        let out = Command::new(IP).args(args).output().expect("ip runs");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A UDP echo server in the namespace, on its own thread (setns is per thread).
    fn udp_echo(&self, port: u16) {
        let ns = File::open(Path::new("/run/netns").join(&self.name)).expect("netns file");
        let ready = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: setns on a descriptor we own; it moves only this thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let sock = UdpSocket::bind((PEER, port)).expect("bind the echo socket");
            ready.0.send(()).unwrap();
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        });
        ready.1.recv().unwrap();
    }

    /// The tiny guest in `mode`, run by `vmm` inside the namespace.
    fn guest(&self, mode: &str) -> Vmm {
        let vmm = vmm_bin();
        Vmm::program(
            Path::new(IP),
            ["netns", "exec", &self.name, vmm.to_str().unwrap(), "run"],
        )
        .flag("--kernel", TINY_ELF)
        .flag("--memory-mib", "64")
        .flag("--append", format!("test={mode}"))
        .timeout(Duration::from_secs(30))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new(IP).args(["netns", "del", &self.name]).status();
    }
}

#[test]
fn a_tiny_guest_gets_an_arp_reply_and_a_udp_echo_through_a_tap() {
    let ns = NetNs::new("echo");
    ns.udp_echo(ECHO_PORT);
    let out = ns
        .guest("net")
        .flag("--net", "tap=tap0,mac=02:00:00:00:00:2a")
        .run();
    let g = out.assert_passed();
    let net = |key: &str| -> String {
        let prefix = format!("{key} ");
        g.info_all("net")
            .iter()
            .find_map(|v| v.strip_prefix(&prefix).map(String::from))
            .unwrap_or_else(|| panic!("no `info net {key}` line\n{out}"))
    };
    assert_eq!(net("mac"), "2:0:0:0:0:2a");
    assert!(!net("peer_mac").is_empty());
    assert_eq!(net("udp_echo"), "hello from the guest");
}

#[test]
fn a_missing_tap_or_a_bad_net_flag_is_a_setup_error_naming_it() {
    let ns = NetNs::new("errors");
    // Inside the namespace, a TAP of another name is created by the kernel on open: an
    // interface name that cannot exist is what fails.
    let out = ns.guest("net").flag("--net", "tap=bad name").run();
    out.assert_code(1).assert_stderr_mentions("bad name");
    let out = Vmm::guest(TINY_ELF, "net")
        .flag("--net", "tap=tap0,mac=01:00:00:00:00:01")
        .run();
    out.assert_code(1).assert_stderr_mentions("multicast");
    // --net auto where `vmm net setup` never ran: nothing to attach to, and it says so.
    let out = ns
        .guest("net")
        .flag("--net", "auto")
        .flag("--allow", "10.0.0.0/8")
        .run();
    out.assert_code(1)
        .assert_stderr_mentions("no bridge vmmbr0")
        .assert_stderr_mentions("run `vmm net setup`");
}
