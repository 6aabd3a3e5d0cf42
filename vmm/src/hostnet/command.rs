//! Runs the host's network tools, `ip` (iproute2) and `nft` (nftables), with a script on
//! stdin where there is one. A failure becomes one line naming the tool, what it was
//! doing, and the tool's own message.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::HostNetError;

/// Where the tools live when PATH does not say (an orchestrator's PATH often lacks sbin).
const SBIN: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Runs `program args`, feeding `stdin`; returns its stdout. `what` says what for, in
/// the error ("create the bridge vmmbr0").
pub fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
    what: &str,
) -> Result<String, HostNetError> {
    let tool_error = |detail: String| HostNetError::Tool {
        tool: program.to_string(),
        what: what.to_string(),
        detail,
    };
    let path = find(program).ok_or_else(|| {
        tool_error(format!(
            "{program} is not installed (package {})",
            if program == "nft" {
                "nftables"
            } else {
                "iproute2"
            }
        ))
    })?;
    let mut child = Command::new(&path)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| tool_error(format!("cannot run {}: {e}", path.display())))?;
    if let (Some(script), Some(mut input)) = (stdin, child.stdin.take()) {
        // A tool that fails early closes its stdin; its stderr says why.
        let _ = input.write_all(script.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| tool_error(format!("cannot wait for {}: {e}", path.display())))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let detail = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '^' || c == ' ' || c == '~'))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(tool_error(if detail.is_empty() {
            format!("exited with {}", out.status)
        } else {
            detail
        }));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `nft -f -` with `script`: one atomic transaction.
pub fn nft(script: &str, what: &str) -> Result<(), HostNetError> {
    run("nft", &["-f", "-"], Some(script), what).map(drop)
}

/// `ip -batch -` with `script`: one `ip` process for several link changes.
pub fn ip_batch(script: &str, what: &str) -> Result<(), HostNetError> {
    run("ip", &["-batch", "-"], Some(script), what).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_tool_is_one_line_naming_it_and_its_message() {
        let e = run(
            "ip",
            &["link", "show", "dev", "no-such-link0"],
            None,
            "look",
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("ip (look): "), "{text}");
        assert!(text.contains("no-such-link0"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn a_missing_tool_says_which_package_has_it() {
        let e = run("no-such-tool-x", &[], None, "try").unwrap_err();
        assert!(e.to_string().contains("is not installed"), "{e}");
    }
}
