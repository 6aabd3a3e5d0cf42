//! `make bench` (network part): TCP throughput from a sandbox out through virtio-net, the
//! TAP, the bridge and the host's NAT to a sink in another network namespace, next to the
//! same transfer between two namespaces over a veth (the sink's own link) on the same
//! host. Both senders are `head -c N /dev/zero | socat`, and the sink times first byte to
//! end of stream. The VM needs Linux guests: `make bench` runs this in the emulated KVM
//! host here, where only the ratio means anything.
//!
//! VMM_BENCH_RUNS sets the runs per path (default 5); VMM_BENCH_NET_MIB the MiB per
//! transfer through the VM (default 16; the veth moves 16 times that).

use std::io::Read;
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Instant;

use vmm_tests::netlab::{NetLab, WORLD};
use vmm_tests::sandbox::{Backend, Networked, Sandbox};
use vmm_tests::stats::median;

const SINK_PORT: u16 = 9000;

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A sink in the world: for each connection, MiB/s from its first byte to its end.
fn sink(lab: &NetLab) -> mpsc::Receiver<(usize, f64)> {
    let listener: TcpListener =
        lab.on_world(|| TcpListener::bind((WORLD, SINK_PORT)).expect("bind the sink"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0;
            let mut first = None;
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 {
                    break;
                }
                first.get_or_insert_with(Instant::now);
                total += n;
            }
            let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
            let _ = tx.send((total, total as f64 / (1 << 20) as f64 / secs.max(1e-9)));
        }
    });
    rx
}

fn send_command(bytes: usize) -> String {
    format!("head -c {bytes} /dev/zero | socat -u - TCP:{WORLD}:{SINK_PORT}")
}

fn main() {
    let runs = env_or("VMM_BENCH_RUNS", 5);
    let vm_bytes = env_or("VMM_BENCH_NET_MIB", 16) << 20;
    let veth_bytes = vm_bytes * 16;
    let lab = NetLab::new("bench");
    let results = sink(&lab);
    let sandbox = Sandbox::start_networked(
        Backend::Vm,
        &Networked {
            lab: &lab,
            flags: &[],
        },
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let client = runtime.block_on(sandbox.client());
    let (mut vm, mut veth) = (Vec::new(), Vec::new());
    for run in 0..runs {
        // Interleaved, so that a slow spell of the host hits both.
        let out = runtime
            .block_on(client.run(&["sh", "-c", &send_command(vm_bytes)], b""))
            .expect("exec");
        assert_eq!(
            out.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (got, mibs) = results.recv().expect("the sink's result");
        assert_eq!(got, vm_bytes, "the sink got a short stream");
        vm.push(mibs);
        let status = lab
            .host_command(std::path::Path::new("/bin/sh"))
            .args(["-c", &send_command(veth_bytes)])
            .status()
            .expect("socat on the host side");
        assert!(status.success());
        let (got, mibs) = results.recv().expect("the sink's result");
        assert_eq!(got, veth_bytes);
        veth.push(mibs);
        eprintln!("run {run}: vm {:.1} MiB/s, veth {mibs:.1} MiB/s", vm[run]);
    }
    let (v, h) = (median(vm), median(veth));
    println!("== TCP guest -> host side (median of {runs}; MiB/s) ==");
    println!("veth between namespaces:            {h:>9.1}");
    println!(
        "sandbox (virtio-net, TAP, NAT):     {v:>9.1}   ratio {:.3}",
        v / h
    );
    drop(client);
    drop(sandbox);
}
