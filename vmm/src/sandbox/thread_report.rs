//! A one-line account of the vCPU threads, logged when the agent misses a probe: it tells
//! a guest that did not run (threads runnable, little CPU time) from one that ran and did
//! not answer (threads halted or busy in the guest).

use std::fs;

/// "vcpu0 R 1.23s, vcpu1 S 0.40s": each vCPU thread's scheduler state and CPU time.
pub fn vcpu_threads() -> String {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return "unknown (cannot list /proc/self/task)".into();
    };
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut lines: Vec<String> = tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|stat| describe(&stat, ticks))
        .collect();
    lines.sort();
    if lines.is_empty() {
        return "none".into();
    }
    lines.join(", ")
}

/// One thread's "NAME STATE CPUs" from its stat line, for vCPU threads only.
fn describe(stat: &str, ticks: f64) -> Option<String> {
    // "TID (COMM) STATE ..." where COMM may hold spaces and parentheses.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = &stat[open + 1..close];
    if !comm.starts_with("vcpu") {
        return None;
    }
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // After COMM: state is field 3 of stat(5), utime 14 and stime 15.
    let state = fields.first()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(format!(
        "{comm} {state} {:.2}s",
        (utime + stime) as f64 / ticks
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vcpu_stat_line_gives_its_state_and_cpu_time() {
        let stat = "812 (vcpu1) R 800 800 800 0 -1 4194368 0 0 0 0 150 50 0 0 20 0 6 0";
        assert_eq!(describe(stat, 100.0).as_deref(), Some("vcpu1 R 2.00s"));
        assert_eq!(
            describe("9 (devices) S 1 1 1 0 -1 0 0 0 0 0 1 1", 100.0),
            None
        );
        assert_eq!(describe("garbage", 100.0), None);
    }

    #[test]
    fn this_process_has_no_vcpu_threads() {
        assert_eq!(vcpu_threads(), "none");
    }
}
