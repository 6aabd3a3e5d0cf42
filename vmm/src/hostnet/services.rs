//! The thread that serves a sandbox's host-side sockets: its DNS forwarder and its
//! published ports. It confines itself (its own seccomp filter) before serving.

use std::sync::Arc;

use super::attach::{DnsSockets, PublishedPort};
use super::{dns, proxy};
use crate::seccomp::{Filters, ThreadKind};

/// Starts the thread; it runs until the process ends.
pub fn spawn(
    dns: DnsSockets,
    published: Vec<PublishedPort>,
    seccomp: Arc<Filters>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("hostnet".into())
        .spawn(move || {
            runtime.block_on(async move {
                if let Err(e) = serve(dns, published, &seccomp).await {
                    log::error!("host-side network services stopped: {e}");
                }
            })
        })?;
    Ok(())
}

async fn serve(
    dns: DnsSockets,
    published: Vec<PublishedPort>,
    seccomp: &Filters,
) -> Result<(), Box<dyn std::error::Error>> {
    // Registered with the runtime before the filter is on (it needs fcntl and epoll_ctl).
    dns.udp.set_nonblocking(true)?;
    dns.tcp.set_nonblocking(true)?;
    let udp = tokio::net::UdpSocket::from_std(dns.udp)?;
    let tcp = tokio::net::TcpListener::from_std(dns.tcp)?;
    let mut proxies = Vec::new();
    for port in published {
        port.listener.set_nonblocking(true)?;
        proxies.push((
            tokio::net::TcpListener::from_std(port.listener)?,
            port.guest,
        ));
    }
    seccomp.confine(ThreadKind::HostNet)?;
    let upstreams = Arc::new(dns.upstreams);
    tokio::spawn(dns::serve_tcp(tcp, upstreams.clone()));
    for (listener, guest) in proxies {
        tokio::spawn(proxy::serve(listener, guest));
    }
    dns::serve_udp(udp, upstreams).await;
    Ok(())
}
