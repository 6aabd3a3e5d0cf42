//! A small internet in network namespaces, for the networking tests: the sandboxes'
//! host (`vmm net setup` runs there, and their vmm processes) and a "world" behind it,
//! which the host reaches through a veth, as its default route. The world serves HTTP on
//! two networks (WORLD on 198.18.0.0/24, FAR on 198.18.1.0/24) and DNS for `world.test`
//! (UDP and TCP); the host's resolv.conf names the world's DNS server: `host_command`
//! bind-mounts the lab's own over /etc/resolv.conf in the mount namespace `ip netns exec`
//! makes (/etc itself may be read-only, as in the emulated KVM host). Only these
//! namespaces are touched: never the machine's own network, never an address beyond it
//! (198.18.0.0/15 is the benchmarking range).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::vmm_bin;

const IP: &str = "/usr/sbin/ip";
/// The host's end of the link to the world; what the world sees sandboxes as (NAT).
pub const HOST_WAN: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The world's HTTP and DNS server.
pub const WORLD: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Another world network, for allow lists: same server, other address.
pub const FAR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const HTTP_PORT: u16 = 8080;
/// The name the world's DNS server answers (with WORLD).
pub const WORLD_NAME: &str = "world.test";

pub struct NetLab {
    pub host: String,
    world: String,
    dir: tempfile::TempDir,
    stop: Arc<AtomicBool>,
    /// Queries the world's DNS server answered over TCP.
    dns_tcp_queries: Arc<AtomicUsize>,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn ip(args: &[&str]) {
    let out = Command::new(IP).args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread inside the named network namespace.
pub fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = File::open(Path::new("/run/netns").join(name)).expect("netns file");
    std::thread::spawn(move || {
        // SAFETY: setns on a descriptor we own; it moves only this thread.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("the netns thread panicked")
}

impl NetLab {
    pub fn new(tag: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{tag}-{}-{n}", std::process::id());
        let (host, world) = (format!("vmmh-{id}"), format!("vmmw-{id}"));
        let dir = tempfile::tempdir().expect("temp dir");
        let resolv = format!("nameserver {WORLD}\n");
        std::fs::write(dir.path().join("resolv.conf"), resolv).unwrap();
        let lab = Self {
            host,
            world,
            dir,
            stop: Arc::new(AtomicBool::new(false)),
            dns_tcp_queries: Arc::new(AtomicUsize::new(0)),
        };
        ip(&["netns", "add", &lab.host]);
        ip(&["netns", "add", &lab.world]);
        let (h, w) = (lab.host.as_str(), lab.world.as_str());
        ip(&[
            "-n", h, "link", "add", "wan0", "type", "veth", "peer", "name", "wan0", "netns", w,
        ]);
        for (ns, addrs) in [
            (h, vec![format!("{HOST_WAN}/24")]),
            (w, vec![format!("{WORLD}/24"), format!("{FAR}/24")]),
        ] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            for a in addrs {
                ip(&["-n", ns, "addr", "add", &a, "dev", "wan0"]);
            }
            ip(&["-n", ns, "link", "set", "wan0", "up"]);
        }
        ip(&[
            "-n",
            h,
            "route",
            "add",
            "default",
            "via",
            &WORLD.to_string(),
        ]);
        // The world answers the host's masqueraded traffic: its route back is the link.
        lab.vmm(&["net", "setup"]);
        for addr in [WORLD, FAR] {
            lab.serve_http(addr);
        }
        lab.serve_dns();
        lab.serve_dns_tcp();
        lab
    }

    /// A command that runs `program` in the host namespace, with the lab's resolv.conf
    /// as /etc/resolv.conf; the program keeps the command's pid. (`ip netns exec` mounts
    /// a sysfs of the namespace's own, without the cgroup tree under it: a cgroup v2 tree
    /// is mounted again, for `vmm run --cgroup`.)
    pub fn host_command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(IP);
        cmd.args(["netns", "exec", &self.host, "sh", "-c"])
            .arg(
                "if [ -e /proc/1/root/sys/fs/cgroup/cgroup.controllers ]; then \
                   mount -t cgroup2 cgroup2 /sys/fs/cgroup || exit; fi; \
                 mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"",
            )
            .arg(self.dir.path().join("resolv.conf"))
            .arg(program);
        cmd
    }

    /// Runs `vmm ARGS` in the host namespace; panics with its stderr when it fails.
    pub fn vmm(&self, args: &[&str]) -> String {
        let out = self
            .host_command(&vmm_bin())
            .args(args)
            .output()
            .expect("vmm runs");
        assert!(
            out.status.success(),
            "vmm {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on a thread in the host namespace (a client of published ports).
    pub fn on_host<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.host, f)
    }

    /// Runs `f` on a thread in the world namespace.
    pub fn on_world<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.world, f)
    }

    /// Makes the world route the sandboxes' network through the host, as a machine on
    /// the host's LAN could: what then reaches the sandboxes is the host's rules' doing.
    pub fn route_world_to_sandboxes(&self) {
        ip(&[
            "-n",
            &self.world,
            "route",
            "add",
            "10.200.0.0/16",
            "via",
            &HOST_WAN.to_string(),
        ]);
    }

    /// HTTP on ADDR:HTTP_PORT: every request gets "world ADDR saw PEER".
    fn serve_http(&self, addr: Ipv4Addr) {
        let stop = self.stop.clone();
        let listener = in_netns(&self.world, move || {
            TcpListener::bind((addr, HTTP_PORT)).expect("bind the world's HTTP server")
        });
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((mut conn, peer)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut request = [0u8; 1024];
                let _ = conn.read(&mut request);
                let body = format!("world {addr} saw {}\n", peer.ip());
                let _ = write!(
                    conn,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
    }

    /// How many queries the world's DNS server has answered over TCP.
    pub fn dns_tcp_queries(&self) -> usize {
        self.dns_tcp_queries.load(Ordering::Relaxed)
    }

    /// DNS over TCP on WORLD:53: length-prefixed messages, answered as over UDP.
    fn serve_dns_tcp(&self) {
        let stop = self.stop.clone();
        let count = self.dns_tcp_queries.clone();
        let listener = in_netns(&self.world, || {
            TcpListener::bind((WORLD, 53)).expect("bind the world's DNS server (TCP)")
        });
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut len = [0u8; 2];
                while conn.read_exact(&mut len).is_ok() {
                    let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if conn.read_exact(&mut query).is_err() {
                        break;
                    }
                    let Some(answer) = dns_answer(&query) else {
                        break;
                    };
                    count.fetch_add(1, Ordering::Relaxed);
                    let mut reply = (answer.len() as u16).to_be_bytes().to_vec();
                    reply.extend_from_slice(&answer);
                    if conn.write_all(&reply).is_err() {
                        break;
                    }
                }
            }
        });
    }

    /// DNS on WORLD:53 (UDP): `world.test` A → WORLD; any other name: NXDOMAIN.
    fn serve_dns(&self) {
        let stop = self.stop.clone();
        let sock = in_netns(&self.world, || {
            UdpSocket::bind((WORLD, 53)).expect("bind the world's DNS server")
        });
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(answer) = dns_answer(&buf[..n]) {
                    let _ = sock.send_to(&answer, from);
                }
            }
        });
    }
}

/// The answer to one query: an A record for WORLD_NAME, no records for its other types,
/// NXDOMAIN for other names.
fn dns_answer(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // The question: labels, then type and class.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question = &query[12..at + 4];
    let known = labels.join(".") == WORLD_NAME;
    let answers = u16::from(known && qtype == 1);
    let mut out = query[..2].to_vec();
    let rcode = if known { 0 } else { 3 };
    out.extend_from_slice(&[0x81, 0x80 | rcode, 0, 1, 0, answers as u8, 0, 0, 0, 0]);
    out.extend_from_slice(question);
    if answers == 1 {
        out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        out.extend_from_slice(&WORLD.octets());
    }
    Some(out)
}

impl Drop for NetLab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The namespaces take their links, bridge and rules with them.
        for ns in [&self.host, &self.world] {
            let _ = Command::new(IP).args(["netns", "del", ns]).status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u8) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, qtype, 0, 1]);
        q
    }

    #[test]
    fn the_world_name_has_an_a_record_and_others_do_not_exist() {
        let a = dns_answer(&query("world.test", 1)).unwrap();
        assert_eq!(&a[..2], &[0x12, 0x34]);
        assert_eq!(a[3] & 0xf, 0, "NOERROR");
        assert_eq!(a[7], 1, "one answer");
        assert_eq!(&a[a.len() - 4..], &WORLD.octets());
        let aaaa = dns_answer(&query("world.test", 28)).unwrap();
        assert_eq!((aaaa[3] & 0xf, aaaa[7]), (0, 0));
        let other = dns_answer(&query("example.org", 1)).unwrap();
        assert_eq!(other[3] & 0xf, 3, "NXDOMAIN");
        assert_eq!(dns_answer(&[1, 2, 3]), None);
    }
}
