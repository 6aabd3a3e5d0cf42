//! Tier 3, virtio-net with a real Linux guest on a TAP the test creates (with a /24 of its
//! own; in the emulated KVM host, whose network is its alone): the guest brings up eth0
//! with the MAC it was given and talks TCP to a server on the TAP's host side.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;

use vmm_tests::sandbox::{skip_tier3, Backend, Sandbox};

const HOST_IP: &str = "10.0.3.1";
const GUEST_IP: &str = "10.0.3.15";
const MAC: &str = "02:00:00:00:03:0f";

/// A TAP with the host side's address, deleted on drop.
struct TestTap(String);

impl TestTap {
    fn new() -> Self {
        let tap = Self(format!("vmmt{}", std::process::id() % 100_000));
        for args in [
            vec![
                "tuntap",
                "add",
                "dev",
                tap.0.as_str(),
                "mode",
                "tap",
                "vnet_hdr",
            ],
            vec!["addr", "add", "10.0.3.1/24", "dev", tap.0.as_str()],
            vec!["link", "set", tap.0.as_str(), "up"],
        ] {
            let out = Command::new("ip").args(&args).output().expect("ip runs");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tap
    }
}

impl Drop for TestTap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier3_a_linux_guest_talks_tcp_to_the_host_through_its_tap() {
    if skip_tier3("a_linux_guest_talks_tcp_to_the_host_through_its_tap") {
        return;
    }
    let tap = TestTap::new();
    let listener = TcpListener::bind((HOST_IP, 0)).expect("bind on the TAP's address");
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (conn, peer) = listener.accept().expect("the guest connects");
        let mut line = String::new();
        BufReader::new(&conn).read_line(&mut line).unwrap();
        (&conn)
            .write_all(format!("echo {line}").as_bytes())
            .unwrap();
        (peer.ip().to_string(), line)
    });
    let net = format!("tap={},mac={MAC}", tap.0);
    let sb = tokio::task::spawn_blocking(move || {
        Sandbox::start_with(Backend::Vm, &["--net", net.as_str()])
    })
    .await
    .unwrap();
    let c = sb.client().await;
    let script = format!(
        "set -e; cat /sys/class/net/eth0/address; ip addr add {GUEST_IP}/24 dev eth0; \
         ip link set eth0 up; exec 3<>/dev/tcp/{HOST_IP}/{port}; \
         echo hello-from-linux >&3; head -1 <&3"
    );
    let out = c.run(&["bash", "-c", &script], b"").await.expect("exec");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{MAC}\necho hello-from-linux\n"),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (peer, line) = server.join().unwrap();
    assert_eq!(
        (peer.as_str(), line.as_str()),
        (GUEST_IP, "hello-from-linux\n")
    );
    let _ = c.terminate(std::time::Duration::from_secs(10)).await;
}
