//! The API socket: a Unix socket created with mode 0600 that, in addition, only accepts
//! peers running as our own user (or root). Each connection goes through
//! `h2_authority`, so that stock gRPC clients' Unix-socket `:authority` is accepted.

mod h2_authority;

use std::path::Path;
use std::sync::Arc;

use vmm_protocol::api::sandbox_server::SandboxServer;
/// HTTP/2 windows toward API clients. Per client connection, what the clients send and
/// the sandbox has not consumed yet (stdin of processes that do not read it) is bounded
/// by the connection window.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;
use vmm_protocol::socket::Socket;

use super::service::SandboxService;
use super::Supervisor;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot bind the API socket {path}")]
    Bind {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the supervisor runtime")]
    Runtime(#[source] std::io::Error),
    #[error("API server failed")]
    Serve(#[from] tonic::transport::Error),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

/// Binds `path` (replacing a stale socket) with mode 0600.
pub async fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Bind {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            std::fs::remove_file(path).map_err(err)?;
        }
        Ok(_) => {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            )))
        }
        Err(_) => {}
    }
    let listener = devices::owner_only::bind(path).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    UnixListener::from_std(listener).map_err(err)
}

/// Serves until `stop` turns true, then finishes the calls in flight.
pub async fn serve(
    listener: UnixListener,
    supervisor: Arc<Supervisor>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let incoming = UnixListenerStream::new(listener)
        .filter(|conn| match conn {
            Ok(stream) if !devices::owner_only::peer_allowed(stream) => {
                log::warn!("API: refused a connection from another user");
                false
            }
            _ => true,
        })
        .map(|conn| {
            conn.and_then(Socket::from_unix)
                .map(h2_authority::RewriteAuthority::new)
        });
    // h2_authority relies on hyper's defaults for the maximum frame size and the HPACK
    // table size: set either here and it must follow.
    tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .add_service(
            SandboxServer::new(SandboxService::new(supervisor))
                .max_decoding_message_size(16 << 20)
                .max_encoding_message_size(16 << 20),
        )
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await?;
    Ok(())
}
