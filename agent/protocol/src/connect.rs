//! Client-side transports for the gRPC services: a plain Unix socket (the API socket, the
//! agent in the test jail) and hybrid vsock (the agent in a VM, reached through the
//! vsock device's Unix socket with `CONNECT <port>\n` / `OK <host_port>\n`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use crate::socket::Socket;

/// Longest `OK <port>\n` answer we accept.
const MAX_HANDSHAKE_LINE: usize = 32;
/// HTTP/2 flow control between the supervisor and the agent. A stream whose reader
/// paused (a client not reading an exec's output, a process not reading stdin) holds at
/// most STREAM_WINDOW of connection credit. The connection window is as large as HTTP/2
/// allows and the agent admits at most MAX_STREAMS streams, so paused streams can never
/// use up the connection's credit and stall the others.
pub const STREAM_WINDOW: u32 = 1 << 20;
pub const CONNECTION_WINDOW: u32 = (1 << 31) - 1;
pub const MAX_STREAMS: u32 = 1024;
const _: () = assert!(MAX_STREAMS as u64 * STREAM_WINDOW as u64 <= CONNECTION_WINDOW as u64);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {path}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vsock handshake with {path} failed: {reason}")]
    Handshake { path: PathBuf, reason: String },
    #[error("gRPC connection failed")]
    Grpc(#[from] tonic::transport::Error),
}

/// Where a gRPC peer listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    /// Through the vsock device's Unix socket to a guest port.
    HybridVsock {
        uds: PathBuf,
        port: u32,
    },
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::HybridVsock { uds, port } => write!(f, "vsock:{}:{port}", uds.display()),
        }
    }
}

/// Opens one byte stream to `address` (handshake included for vsock).
pub async fn open_stream(address: &Address) -> Result<Socket, ConnectError> {
    let (path, stream) = match address {
        Address::Unix(path) => (path, connect_unix(path).await?),
        Address::HybridVsock { uds, port } => {
            let mut stream = connect_unix(uds).await?;
            handshake(&mut stream, uds, *port).await?;
            (uds, stream)
        }
    };
    Socket::from_unix(stream).map_err(|source| ConnectError::Socket {
        path: path.clone(),
        source,
    })
}

async fn connect_unix(path: &Path) -> Result<UnixStream, ConnectError> {
    UnixStream::connect(path)
        .await
        .map_err(|source| ConnectError::Socket {
            path: path.to_path_buf(),
            source,
        })
}

async fn handshake(stream: &mut UnixStream, uds: &Path, port: u32) -> Result<(), ConnectError> {
    let fail = |reason: String| ConnectError::Handshake {
        path: uds.to_path_buf(),
        reason,
    };
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|e| fail(e.to_string()))?;
    // Byte by byte: whatever follows the line belongs to the protocol on top.
    let mut line = Vec::new();
    loop {
        let b = stream.read_u8().await.map_err(|e| {
            fail(format!(
                "no answer to CONNECT {port} ({e}); is the guest listening?"
            ))
        })?;
        if b == b'\n' {
            break;
        }
        line.push(b);
        if line.len() > MAX_HANDSHAKE_LINE {
            return Err(fail("answer line too long".into()));
        }
    }
    let text = String::from_utf8_lossy(&line);
    if text.starts_with("OK ") {
        Ok(())
    } else {
        Err(fail(format!("unexpected answer {text:?}")))
    }
}

/// A gRPC channel to `address`. One HTTP/2 connection carries every call; it is
/// re-established on demand if it breaks.
pub async fn channel(address: Address) -> Result<Channel, ConnectError> {
    // The URI is required by tonic but unused: the connector decides where to go.
    let channel = Endpoint::from_static("http://vmm.local")
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_| {
            let address = address.clone();
            async move { open_stream(&address).await.map(TokioIo::new) }
        }))
        .await?;
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    /// A stand-in for the vsock device's Unix socket: answers the CONNECT line with
    /// `answer`, then echoes.
    fn fake_device(path: &Path, answer: &'static [u8]) -> tokio::task::JoinHandle<String> {
        let listener = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut line = Vec::new();
            while line.last() != Some(&b'\n') {
                line.push(s.read_u8().await.unwrap());
            }
            s.write_all(answer).await.unwrap();
            let mut buf = [0u8; 4];
            if s.read_exact(&mut buf).await.is_ok() {
                s.write_all(&buf).await.unwrap();
            }
            String::from_utf8(line).unwrap()
        })
    }

    #[tokio::test]
    async fn hybrid_vsock_handshake_keeps_the_bytes_after_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        // The answer and the first protocol bytes arrive in one write.
        let device = fake_device(&uds, b"OK 4242\nhello");
        let address = Address::HybridVsock {
            uds: uds.clone(),
            port: 1024,
        };
        let mut s = open_stream(&address).await.unwrap();
        let mut got = [0u8; 5];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        s.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        s.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping");
        assert_eq!(device.await.unwrap(), "CONNECT 1024\n");
    }

    #[tokio::test]
    async fn a_refused_hybrid_vsock_connect_is_a_handshake_error() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let _device = fake_device(&uds, b"NO\n");
        let address = Address::HybridVsock { uds, port: 9 };
        match open_stream(&address).await {
            Err(ConnectError::Handshake { reason, .. }) => {
                assert!(reason.contains("unexpected answer"), "{reason}")
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a refused connect succeeded"),
        }
    }
}
