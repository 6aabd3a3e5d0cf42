//! The sandbox's DNS server: a forwarder on the gateway address (the guest's resolv.conf
//! names the gateway; nftables redirects the sandbox's port-53 traffic to this one's
//! port). Queries go to the host's resolvers, so the guest resolves what the host
//! resolves, whatever its egress policy. UDP from a fresh socket per query (a random
//! source port, answers matched by the kernel); TCP is relayed to the first resolver.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

/// How long one resolver gets to answer before the next one is asked.
const PER_RESOLVER: Duration = Duration::from_secs(2);
/// Queries in flight at once; more are dropped (the guest's resolver retries).
const MAX_IN_FLIGHT: usize = 64;
/// A DNS message has a 12-byte header; UDP ones with EDNS stay within 4096 bytes here.
const HEADER_LEN: usize = 12;
const MAX_QUERY: usize = 4096;
/// A TCP relay ends after this long, answered or not.
const TCP_LIFETIME: Duration = Duration::from_secs(30);

pub async fn serve_udp(listener: UdpSocket, upstreams: Arc<Vec<SocketAddr>>) {
    let listener = Arc::new(listener);
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = vec![0u8; MAX_QUERY];
    loop {
        let (len, client) = match listener.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                log::warn!("dns: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if len < HEADER_LEN {
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            log::debug!("dns: {MAX_IN_FLIGHT} queries in flight; one dropped");
            continue;
        };
        let (query, listener, upstreams) =
            (buf[..len].to_vec(), listener.clone(), upstreams.clone());
        tokio::spawn(async move {
            if let Some(answer) = resolve(&query, &upstreams).await {
                let _ = listener.send_to(&answer, client).await;
            }
            drop(slot);
        });
    }
}

/// Asks each resolver in turn; the first answer with the query's id wins.
async fn resolve(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for &upstream in upstreams {
        let local: SocketAddr = if upstream.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let attempt = async {
            let sock = UdpSocket::bind(local).await.ok()?;
            sock.connect(upstream).await.ok()?;
            sock.send(query).await.ok()?;
            let mut answer = vec![0u8; 65535];
            loop {
                let n = sock.recv(&mut answer).await.ok()?;
                // The same id as the query, or it is not the answer.
                if n >= HEADER_LEN && answer[..2] == query[..2] {
                    answer.truncate(n);
                    return Some(answer);
                }
            }
        };
        match tokio::time::timeout(PER_RESOLVER, attempt).await {
            Ok(Some(answer)) => return Some(answer),
            _ => log::debug!("dns: no answer from {upstream}"),
        }
    }
    None
}

pub async fn serve_tcp(listener: TcpListener, upstreams: Arc<Vec<SocketAddr>>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let upstream = upstreams[0];
        tokio::spawn(async move {
            let relay = async {
                let mut server = TcpStream::connect(upstream).await?;
                tokio::io::copy_bidirectional(&mut client, &mut server).await
            };
            let _ = tokio::time::timeout(TCP_LIFETIME, relay).await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolver that answers every query with its own bytes reversed after the id.
    async fn fake_resolver() -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let at = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let mut answer = buf[..n].to_vec();
                answer[2..].reverse();
                sock.send_to(&answer, from).await.unwrap();
            }
        });
        at
    }

    fn query(id: u8) -> Vec<u8> {
        let mut q = vec![id, id, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(b"\x07example\x00\x00\x01\x00\x01");
        q
    }

    #[tokio::test]
    async fn a_query_is_answered_by_the_first_resolver_that_answers() {
        // Nothing listens on the first one: its time runs out and the second answers.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let upstreams = Arc::new(vec![silent.local_addr().unwrap(), fake_resolver().await]);
        let forwarder = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let at = forwarder.local_addr().unwrap();
        tokio::spawn(serve_udp(forwarder, upstreams));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(&query(7), at).await.unwrap();
        // Too short to be DNS: dropped without an answer.
        client.send_to(b"short", at).await.unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(10), client.recv(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        let mut expected = query(7);
        expected[2..].reverse();
        assert_eq!(&buf[..n], &expected[..]);
    }
}
