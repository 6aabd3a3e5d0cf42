//! Client-side commands of the `vmm` binary: exec, shell, cp, status, terminate.

pub mod cp;
pub mod exec;
pub mod image;
pub mod logs;
pub mod net;

use std::path::Path;

use vmm_client::{Client, ClientError};

/// Exit status of a client command that failed before or outside the process
/// (connection, API or protocol errors), as `docker run` uses 125.
pub const EXIT_CLIENT_ERROR: i32 = 125;
/// The program could not be started (missing program or cwd), as shells use 127.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Writes `text` to stdout. A reader that went away (`vmm status | head -1`) ends the
/// output quietly: that is not an error of ours.
pub fn print_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// A single-threaded runtime: client commands are I/O bound and short-lived.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

pub async fn connect(api_socket: &Path) -> Result<Client, ClientError> {
    Client::connect(api_socket).await
}

/// Prints a client error and returns the exit status it maps to.
pub fn report(e: &ClientError) -> i32 {
    let mut line = e.to_string();
    // A status's own Display repeats its message with the code's description.
    let mut source = match e {
        ClientError::Status(_) => None,
        _ => std::error::Error::source(e),
    };
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    eprintln!("vmm: {line}");
    match e {
        ClientError::Status(s) if s.code() == tonic::Code::NotFound => EXIT_NOT_FOUND,
        _ => EXIT_CLIENT_ERROR,
    }
}

/// `vmm status` output: the state line, then one line per exec.
pub fn status_text(s: &vmm_protocol::api::StatusResponse) -> String {
    let state = vmm_protocol::api::status_response::State::try_from(s.state)
        .map(|st| st.as_str_name().trim_start_matches("STATE_").to_lowercase())
        .unwrap_or_else(|_| "unknown".into());
    let mut out = format!(
        "state: {state}  uptime: {} ms  ready after: {} ms",
        s.uptime_ms, s.ready_after_ms
    );
    if !s.detail.is_empty() {
        out.push_str(&format!("  ({})", printable(&s.detail)));
    }
    for e in &s.execs {
        let end = match e.exited.as_ref().and_then(|x| x.status) {
            Some(vmm_protocol::pb::exited::Status::Code(c)) => format!("exited {c}"),
            Some(vmm_protocol::pb::exited::Status::Signal(n)) => format!("killed by signal {n}"),
            None if e.running => "running".to_string(),
            None => "lost".to_string(),
        };
        out.push_str(&format!(
            "\n{}  pid {}  {end}  out {} B  err {} B  {}",
            printable(&e.exec_id),
            e.pid,
            e.stdout_bytes,
            e.stderr_bytes,
            printable(&e.argv.join(" "))
        ));
    }
    out
}

/// Control characters escaped (`\u{1b}`): what a sandbox chose to name or run must not
/// drive the terminal that reads `vmm status`.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_protocol::api::{ExecInfo, StatusResponse};

    #[test]
    fn status_escapes_what_the_sandbox_chose() {
        let s = StatusResponse {
            detail: "agent \x1b]0;pwned\x07".into(),
            execs: vec![ExecInfo {
                exec_id: "e1\x1b[2J".into(),
                argv: vec!["printf".into(), "\x1b[31mred\r\n".into()],
                running: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = status_text(&s);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(text.contains("e1\\u{1b}[2J"), "{text}");
        assert_eq!(text.lines().count(), 2);
    }
}
