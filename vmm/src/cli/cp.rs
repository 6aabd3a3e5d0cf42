//! `vmm cp`: copy a file between the host and the sandbox, streamed, mode bits kept.
//! A sandbox path is written with a leading ':' (`:/etc/hostname`).

use std::os::unix::fs::PermissionsExt;

use vmm_client::{Client, ClientError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Host(String),
    Sandbox(String),
}

impl Location {
    pub fn parse(s: &str) -> Self {
        match s.strip_prefix(':') {
            Some(path) => Self::Sandbox(path.to_string()),
            None => Self::Host(s.to_string()),
        }
    }
}

/// Copies `from` to `to`; exactly one side must be in the sandbox.
pub async fn copy(client: &Client, from: &Location, to: &Location) -> Result<u64, ClientError> {
    match (from, to) {
        (Location::Host(src), Location::Sandbox(dst)) => {
            let file = tokio::fs::File::open(src).await?;
            let mode = file.metadata().await?.permissions().mode() & 0o7777;
            client.write_file(dst, mode, file).await
        }
        (Location::Sandbox(src), Location::Host(dst)) => {
            let file = tokio::fs::File::create(dst).await?;
            let info = client.read_file(src, file).await?;
            let mode = if info.mode == 0 { 0o644 } else { info.mode };
            tokio::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode)).await?;
            Ok(info.size)
        }
        _ => Err(ClientError::Protocol(
            "one side must be a sandbox path (prefix it with ':')".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colon_marks_the_sandbox_side() {
        assert_eq!(
            Location::parse(":/tmp/x"),
            Location::Sandbox("/tmp/x".into())
        );
        assert_eq!(Location::parse("./x"), Location::Host("./x".into()));
    }
}
