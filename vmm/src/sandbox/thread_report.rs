//! The vCPU threads as the scheduler sees them, logged when the agent misses a probe: it
//! tells a guest that did not run (threads runnable, little CPU time) from one that ran
//! and did not answer (threads halted), or whose vCPU spun the whole time.

use std::fs;
use std::time::Instant;

/// One vCPU thread: its name, scheduler state (R, S, D…) and CPU time (user + system).
#[derive(Debug, Clone, PartialEq)]
pub struct VcpuThread {
    pub name: String,
    pub state: String,
    pub cpu_secs: f64,
}

/// The vCPU threads of this process, by name.
pub fn vcpu_threads() -> Vec<VcpuThread> {
    vcpu_threads_of("self")
}

/// The vCPU threads of process `pid` ("self" or a number), by name: how a test tells
/// what a silent guest's vCPUs were doing.
pub fn vcpu_threads_of(pid: &str) -> Vec<VcpuThread> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut threads: Vec<VcpuThread> = tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|stat| parse(&stat, ticks))
        .collect();
    threads.sort_by(|a, b| a.name.cmp(&b.name));
    threads
}

/// "vcpu0 R 1.23s, vcpu1 S 0.40s", or "none".
pub fn summary(threads: &[VcpuThread]) -> String {
    if threads.is_empty() {
        return "none".into();
    }
    threads
        .iter()
        .map(|t| format!("{} {} {:.2}s", t.name, t.state, t.cpu_secs))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The vCPUs that used nearly all of the time since `before` was taken: they spun, in
/// the guest or in KVM, while the guest made no visible progress.
pub fn spinning(before: &[VcpuThread], since: Instant, now: &[VcpuThread]) -> Vec<String> {
    let wall = since.elapsed().as_secs_f64();
    now.iter()
        .filter_map(|t| {
            let earlier = before.iter().find(|b| b.name == t.name)?;
            let used = t.cpu_secs - earlier.cpu_secs;
            (wall > 0.0 && used >= 0.9 * wall)
                .then(|| format!("{} ran {used:.1} s of the last {wall:.1} s", t.name))
        })
        .collect()
}

/// One thread's entry from its stat line, for vCPU threads only.
fn parse(stat: &str, ticks: f64) -> Option<VcpuThread> {
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
    Some(VcpuThread {
        name: comm.to_string(),
        state: state.to_string(),
        cpu_secs: (utime + stime) as f64 / ticks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vcpu(name: &str, state: &str, cpu_secs: f64) -> VcpuThread {
        VcpuThread {
            name: name.into(),
            state: state.into(),
            cpu_secs,
        }
    }

    #[test]
    fn a_vcpu_stat_line_gives_its_state_and_cpu_time() {
        let stat = "812 (vcpu1) R 800 800 800 0 -1 4194368 0 0 0 0 150 50 0 0 20 0 6 0";
        assert_eq!(parse(stat, 100.0), Some(vcpu("vcpu1", "R", 2.0)));
        assert_eq!(summary(&[vcpu("vcpu1", "R", 2.0)]), "vcpu1 R 2.00s");
        assert_eq!(parse("9 (devices) S 1 1 1 0 -1 0 0 0 0 0 1 1", 100.0), None);
        assert_eq!(parse("garbage", 100.0), None);
    }

    #[test]
    fn this_process_has_no_vcpu_threads() {
        assert_eq!(summary(&vcpu_threads()), "none");
    }

    #[test]
    fn a_vcpu_that_used_nearly_all_the_time_spun() {
        let since = Instant::now() - std::time::Duration::from_secs(10);
        let before = [vcpu("vcpu0", "S", 1.0), vcpu("vcpu1", "R", 5.0)];
        let now = [vcpu("vcpu0", "S", 1.1), vcpu("vcpu1", "R", 15.0)];
        let spun = spinning(&before, since, &now);
        assert_eq!(spun.len(), 1, "{spun:?}");
        assert!(
            spun[0].starts_with("vcpu1 ran 10.0 s of the last 10."),
            "{spun:?}"
        );
    }
}
