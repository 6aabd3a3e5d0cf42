//! `vmm logs`: the entrypoint's output.

use std::io::Write;

use vmm_protocol::api::exec_event;

use crate::sandbox::entrypoint::ENTRYPOINT_ID;
use vmm_client::{Client, ClientError};

/// Prints the entrypoint's stdout and stderr from the oldest byte kept; to its exit when
/// following. Returns the exit status for `vmm logs` (0).
pub async fn print(client: &Client, follow: bool) -> Result<i32, ClientError> {
    let mut session = client.logs(ENTRYPOINT_ID, follow).await?;
    while let Some(event) = session.events.message().await? {
        let written = match event.event {
            Some(exec_event::Event::Stdout(o)) => std::io::stdout().write_all(&o.data),
            Some(exec_event::Event::Stderr(o)) => std::io::stderr().write_all(&o.data),
            _ => Ok(()),
        };
        if let Err(e) = written {
            // A reader that went away (`vmm logs | head`) ends us quietly.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(ClientError::Protocol(format!(
                "cannot write the output: {e}"
            )));
        }
    }
    let _ = std::io::stdout().flush();
    Ok(crate::exit::EXIT_OK)
}
