//! The host side against the real kernel, each test in a network namespace of its own
//! (the thread that runs it unshares one; the `ip` and `nft` it runs inherit it), so the
//! host's own network is never touched.

use std::net::Ipv4Addr;

use super::command::{nft, run};
use super::ruleset::{self, SandboxRules};
use super::{gc, host, link_exists};
use crate::config::Egress;

/// Runs `f` on a thread in a fresh network namespace.
pub fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare moves only this thread into a new network namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("the test thread panicked")
}

fn sandbox(address: Ipv4Addr, egress: Egress) -> SandboxRules {
    SandboxRules {
        address,
        mac: [2, 0, 1, 2, 3, 4],
        egress,
        dns_port: 40000,
    }
}

fn ruleset() -> String {
    run("nft", &["list", "ruleset"], None, "list").unwrap()
}

#[test]
fn setup_is_idempotent_and_teardown_removes_everything() {
    in_fresh_netns(|| {
        let side = host::setup("10.200.0.0/16".parse().unwrap()).unwrap();
        assert_eq!(side.gateway, Ipv4Addr::new(10, 200, 0, 1));
        let first = ruleset();
        let again = host::setup("10.200.0.0/16".parse().unwrap()).unwrap();
        assert_eq!(side, again);
        assert_eq!(first, ruleset(), "a second setup changed the rules");
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
            "1\n"
        );
        host::teardown().unwrap();
        assert!(!link_exists(super::BRIDGE));
        assert!(!ruleset().contains("vmm"), "{}", ruleset());
        host::teardown().unwrap();
    });
}

#[test]
fn a_sandbox_s_rules_install_and_release_whole_and_setup_keeps_them() {
    in_fresh_netns(|| {
        let side = host::setup("10.200.0.0/16".parse().unwrap()).unwrap();
        let a = Ipv4Addr::new(10, 200, 3, 4);
        let allow = Egress::Allow(vec!["192.0.2.0/24".parse().unwrap()]);
        nft(&ruleset::attach(&side, &sandbox(a, allow)), "attach").unwrap();
        let b = Ipv4Addr::new(10, 200, 9, 9);
        nft(&ruleset::attach(&side, &sandbox(b, Egress::Open)), "attach").unwrap();
        assert_eq!(gc::sandboxes_with_rules().unwrap(), vec![a, b]);
        host::setup("10.200.0.0/16".parse().unwrap()).unwrap();
        assert_eq!(gc::sandboxes_with_rules().unwrap(), vec![a, b]);
        let listed = ruleset();
        assert!(listed.contains("10.200.3.4 : jump sb-0ac80304"), "{listed}");
        assert!(
            listed.contains("\"vmt0ac80304\" : jump port-0ac80304"),
            "{listed}"
        );
        // No link of theirs exists: both are stale.
        let mut freed = gc::collect().unwrap();
        freed.sort();
        assert_eq!(freed, vec![a, b]);
        let listed = ruleset();
        assert!(
            !listed.contains("sb-") && !listed.contains("port-"),
            "{listed}"
        );
        // Releasing what is gone is not an error.
        gc::release(a, false).unwrap();
    });
}

#[test]
fn gc_keeps_the_rules_of_a_sandbox_whose_link_exists() {
    in_fresh_netns(|| {
        let side = host::setup("10.200.0.0/16".parse().unwrap()).unwrap();
        let a = Ipv4Addr::new(10, 200, 3, 4);
        nft(&ruleset::attach(&side, &sandbox(a, Egress::Open)), "attach").unwrap();
        super::command::ip_batch(
            &format!(
                "link add {} type veth peer name p0\n",
                ruleset::link_name(a)
            ),
            "veth",
        )
        .unwrap();
        assert!(gc::collect().unwrap().is_empty());
        assert_eq!(gc::sandboxes_with_rules().unwrap(), vec![a]);
    });
}

#[test]
fn without_setup_gc_says_to_run_it() {
    in_fresh_netns(|| {
        let e = gc::collect().unwrap_err();
        assert!(e.to_string().contains("vmm net setup"), "{e}");
        let e = host::host_side().unwrap_err();
        assert!(e.to_string().contains("no bridge vmmbr0"), "{e}");
    });
}
