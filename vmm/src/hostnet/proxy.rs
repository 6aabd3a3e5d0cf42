//! Published ports: each accepted connection on the host listener is relayed to the
//! guest's port over the bridge. A proxy rather than a DNAT rule, so that 127.0.0.1 works
//! without route_localnet, and the guest's inbound rules stay "nothing new from outside".

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Connections relayed at once per published port; more wait to be accepted.
const MAX_CONNECTIONS: usize = 256;
/// How long the guest gets to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve(listener: TcpListener, guest: SocketAddrV4) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                log::warn!("publish {guest}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(guest)).await {
                Ok(Ok(mut server)) => {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
                Ok(Err(e)) => log::debug!("publish: the guest's {guest}: {e}"),
                Err(_) => log::debug!("publish: the guest's {guest} did not answer"),
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_go_both_ways_and_a_closed_guest_port_closes_the_client() {
        let guest = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let guest_at = match guest.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        tokio::spawn(async move {
            let (mut s, _) = guest.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf.map(|b| b.to_ascii_uppercase()))
                .await
                .unwrap();
        });
        let host = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host_at = host.local_addr().unwrap();
        tokio::spawn(serve(host, guest_at));
        let mut c = TcpStream::connect(host_at).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut reply = Vec::new();
        c.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"HELLO");

        // The guest listener is gone now: the next client is closed, not left hanging.
        let mut c = TcpStream::connect(host_at).await.unwrap();
        let mut reply = Vec::new();
        // Reset or closed: either ends the read, with nothing in it.
        let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut reply))
            .await
            .expect("the client was closed in time");
        assert!(reply.is_empty());
    }
}
