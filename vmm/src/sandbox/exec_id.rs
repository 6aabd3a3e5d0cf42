//! Exec ids: what a client may name an exec, and the reservation that makes two
//! concurrent starts with the same id impossible (one wins, the other gets ALREADY_EXISTS
//! before anything runs).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use devices::bus::lock;
use tonic::Status;

use super::exec::Exec;
use super::output::Budget;

/// Longest exec id a client may choose.
pub const MAX_ID_LEN: usize = 128;
/// Execs running (or starting) at once. Each holds an HTTP/2 stream to the agent, and the
/// agent admits `vmm_protocol::connect::MAX_STREAMS`; file transfers need streams too.
pub const MAX_RUNNING_EXECS: usize = 512;
const _: () = assert!(MAX_RUNNING_EXECS * 2 <= vmm_protocol::connect::MAX_STREAMS as usize);

/// Ids are 1 to 128 of `A-Z a-z 0-9 . _ : @ -`: safe in a terminal, a file name, a URL.
pub fn validate(id: &str) -> Result<(), Status> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "._:@-".contains(c);
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.chars().all(ok_char) {
        return Err(Status::invalid_argument(format!(
            "exec id must be 1-{MAX_ID_LEN} characters of A-Z a-z 0-9 . _ : @ - (got {} bytes)",
            id.len()
        )));
    }
    Ok(())
}

/// The sandbox's execs by id, the ids of starts still waiting for the agent, and the
/// memory their output holds.
#[derive(Default)]
pub struct ExecTable {
    pub execs: Mutex<HashMap<String, Arc<Exec>>>,
    starting: Mutex<HashSet<String>>,
    pub budget: Arc<Budget>,
}

/// An id held for a start in progress; released on drop unless the exec was registered.
pub struct Reservation<'a> {
    table: &'a ExecTable,
    id: String,
}

impl ExecTable {
    pub fn get(&self, id: &str) -> Option<Arc<Exec>> {
        lock(&self.execs).get(id).cloned()
    }

    /// Holds `id` for a start, or says it is taken (by an exec or another start).
    pub fn reserve(&self, id: String) -> Result<Reservation<'_>, Status> {
        // Lock order: execs, then starting (register takes them in the same order).
        let execs = lock(&self.execs);
        let mut starting = lock(&self.starting);
        if execs.contains_key(&id) || starting.contains(&id) {
            return Err(Status::already_exists(format!("exec id {id:?} is taken")));
        }
        let running = execs.values().filter(|e| e.is_running()).count() + starting.len();
        if running >= MAX_RUNNING_EXECS {
            return Err(Status::resource_exhausted(format!(
                "{MAX_RUNNING_EXECS} execs are running; wait for one to end"
            )));
        }
        starting.insert(id.clone());
        Ok(Reservation { table: self, id })
    }

    /// Drops delivered output, the longest-finished execs' first and running ones' last,
    /// until the sandbox is back under three quarters of its budget (so this does not run
    /// again on the next chunk), and gives the memory back to the system.
    pub fn evict(&self) {
        let execs = lock(&self.execs);
        let mut order: Vec<_> = execs
            .values()
            .map(|e| {
                let finished_at = lock(&e.state).finished_at;
                (finished_at.is_none(), finished_at, e)
            })
            .collect();
        order.sort_by_key(|&(running, finished_at, _)| (running, finished_at));
        let target = self.budget.limit() / 4 * 3;
        let mut freed = 0;
        for (_, _, exec) in order {
            if self.budget.held() <= target {
                break;
            }
            let mut st = lock(&exec.state);
            freed += st.stdout.drop_delivered() + st.stderr.drop_delivered();
        }
        drop(execs);
        if freed > 0 {
            log::info!("output over budget: dropped {freed} bytes of delivered output");
            release_memory();
        }
    }

    /// The first free `e<N>` at or after `next`.
    pub fn reserve_generated(&self, next: impl Fn() -> u64) -> Result<Reservation<'_>, Status> {
        loop {
            match self.reserve(format!("e{}", next())) {
                Err(s) if s.code() == tonic::Code::AlreadyExists => continue,
                other => return other,
            }
        }
    }
}

impl Reservation<'_> {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Puts the started exec in the table under the reserved id.
    pub fn register(self, exec: Arc<Exec>) {
        let mut execs = lock(&self.table.execs);
        let forgot = super::exec::forget_old(&mut execs);
        execs.insert(self.id.clone(), exec);
        drop(execs);
        if forgot {
            release_memory();
        }
        // `self` drops here: the reservation ends with the exec in place.
    }
}

/// Hands freed heap back to the system: after output of many execs was dropped, glibc
/// would otherwise keep it, and the VMM's RSS would stay at its peak.
fn release_memory() {
    // SAFETY: malloc_trim only walks and trims glibc's own heap.
    unsafe { libc::malloc_trim(0) };
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(&self.table.starting).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_and_plain() {
        for good in [
            "e1",
            "build-42",
            "job_7.retry:2@host",
            &"x".repeat(MAX_ID_LEN),
        ] {
            assert!(validate(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "\x1b[2J",
            "a b",
            "../x",
            "ü",
            &"x".repeat(MAX_ID_LEN + 1),
        ] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_id_is_held_until_its_start_ends() {
        let table = ExecTable::default();
        let first = table.reserve("job".into()).unwrap();
        assert_eq!(
            table.reserve("job".into()).err().unwrap().code(),
            tonic::Code::AlreadyExists
        );
        drop(first);
        assert!(
            table.reserve("job".into()).is_ok(),
            "a failed start frees its id"
        );
        let n = std::sync::atomic::AtomicU64::new(1);
        let taken = table.reserve("e1".into()).unwrap();
        let next = || n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(table.reserve_generated(next).unwrap().id(), "e2");
        drop(taken);
    }

    #[test]
    fn starts_beyond_the_running_limit_are_refused() {
        let table = ExecTable::default();
        let (input, _keep) = tokio::sync::mpsc::channel(1);
        for i in 0..MAX_RUNNING_EXECS - 1 {
            let exec = Arc::new(Exec::new(
                format!("r{i}"),
                vec![],
                1,
                input.clone(),
                &table.budget,
                false,
            ));
            table.reserve(format!("r{i}")).unwrap().register(exec);
        }
        let last = table.reserve("last".into()).unwrap();
        let refused = table.reserve("one-more".into()).err().unwrap();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        drop(last);
        assert!(table.reserve("one-more".into()).is_ok());
    }
}
