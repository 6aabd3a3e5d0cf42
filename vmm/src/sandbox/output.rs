//! One output stream of an exec (stdout or stderr) as the supervisor keeps it: a byte log
//! addressed by absolute offsets, so a client that reconnects can resume where it
//! stopped. Memory is bounded three ways:
//! - per stream, delivered bytes are dropped once more than `retain` of them are kept;
//! - per stream, the producer waits while a window of bytes is undelivered (that wait is
//!   the backpressure that reaches the process's pipe); the window shrinks as more
//!   streams run, so their sum stays under `UNDELIVERED_BUDGET`;
//! - per sandbox, every log's bytes count against one `Budget` (with a per-chunk
//!   overhead, so a flood of 1-byte writes counts for what it costs), and delivered
//!   bytes are evicted when it is exceeded (see `ExecTable::evict`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

/// What a chunk costs beyond its bytes: its queue slot, its `Bytes` handle and the
/// allocation's header.
pub const CHUNK_OVERHEAD: u64 = 64;
/// Writes smaller than this are copied onto the previous chunk while it stays under
/// `COALESCE_LIMIT`, so 1-byte writes do not become one chunk each.
const COALESCE_BELOW: usize = 1024;
const COALESCE_LIMIT: usize = 8 << 10;
/// Delivered output the sandbox keeps for re-attach, over all its execs.
pub const RETAINED_BUDGET: u64 = 128 << 20;
/// Undelivered output over all running streams.
const UNDELIVERED_BUDGET: u64 = 128 << 20;
/// Undelivered bytes one stream may have, whatever the number of streams.
const MIN_WINDOW: u64 = 64 << 10;
const MAX_WINDOW: u64 = 4 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OutputError {
    #[error("offset {requested} is no longer retained (oldest kept byte is {oldest})")]
    Dropped { requested: u64, oldest: u64 },
    #[error("offset {requested} is beyond the end of the stream ({end})")]
    Beyond { requested: u64, end: u64 },
}

/// The sandbox's output memory: bytes held by every log (with chunk overhead), and the
/// number of streams still being produced.
#[derive(Debug, Default)]
pub struct Budget {
    held: AtomicU64,
    producing: AtomicUsize,
}

impl Budget {
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// All output the sandbox may hold: retained plus undelivered.
    pub fn limit(&self) -> u64 {
        RETAINED_BUDGET + UNDELIVERED_BUDGET
    }

    /// Whether delivered bytes should be evicted.
    pub fn over(&self) -> bool {
        self.held() > self.limit()
    }

    /// Undelivered bytes each producing stream may have now.
    pub fn window(&self) -> u64 {
        let streams = self.producing.load(Ordering::Relaxed).max(1) as u64;
        (UNDELIVERED_BUDGET / streams).clamp(MIN_WINDOW, MAX_WINDOW)
    }

    fn add(&self, n: u64) {
        self.held.fetch_add(n, Ordering::Relaxed);
    }

    fn sub(&self, n: u64) {
        self.held.fetch_sub(n, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct OutputLog {
    /// Offset of the first byte in `chunks`.
    start: u64,
    chunks: VecDeque<Bytes>,
    len: u64,
    /// What this log counts against the budget: `len` plus the chunks' overhead.
    held: u64,
    /// Highest offset any client has been sent.
    delivered: u64,
    retain: u64,
    producing: bool,
    /// A ring: the producer never waits, and the oldest bytes go beyond `retain`,
    /// delivered or not (an entrypoint's output, which nobody may read).
    ring: bool,
    budget: Arc<Budget>,
}

impl OutputLog {
    pub fn new(retain: u64, budget: Arc<Budget>) -> Self {
        budget.producing.fetch_add(1, Ordering::Relaxed);
        Self {
            start: 0,
            chunks: VecDeque::new(),
            len: 0,
            held: 0,
            delivered: 0,
            retain,
            producing: true,
            ring: false,
            budget,
        }
    }

    /// A log that keeps the last `retain` bytes and never holds its producer back.
    pub fn ring(retain: u64, budget: Arc<Budget>) -> Self {
        let mut log = Self::new(retain, budget);
        // It takes no share of the undelivered window.
        log.finish();
        log.producing = false;
        log.ring = true;
        log
    }

    /// Offset one past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }

    pub fn oldest(&self) -> u64 {
        self.start
    }

    /// Where a reader at `offset` resumes: a ring's reader that fell behind skips what
    /// was dropped (the gap shows in the offsets); other logs never skip.
    pub fn resume_at(&self, offset: u64) -> u64 {
        if self.ring {
            offset.max(self.start)
        } else {
            offset
        }
    }

    /// The producer may append while fewer than the budget's window of bytes await
    /// delivery.
    pub fn has_room(&self) -> bool {
        self.ring || self.end() - self.delivered < self.budget.window()
    }

    /// Nothing more will be pushed: the stream no longer takes a share of the window.
    pub fn finish(&mut self) {
        if std::mem::replace(&mut self.producing, false) {
            self.budget.producing.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        let n = data.len() as u64;
        self.len += n;
        let coalesce = data.len() < COALESCE_BELOW
            && self
                .chunks
                .back()
                .is_some_and(|last| last.len() + data.len() <= COALESCE_LIMIT);
        if coalesce {
            let last = self.chunks.pop_back().expect("checked above");
            let mut joined = BytesMut::with_capacity(last.len() + data.len());
            joined.extend_from_slice(&last);
            joined.extend_from_slice(&data);
            self.chunks.push_back(joined.freeze());
            self.account_add(n);
        } else {
            self.chunks.push_back(data);
            self.account_add(n + CHUNK_OVERHEAD);
        }
        if self.ring {
            // Undelivered or not: a reader that falls this far behind resumes at
            // `oldest()`.
            self.delivered = self.delivered.max(self.end().saturating_sub(self.retain));
            self.trim(self.retain);
        }
    }

    fn account_add(&mut self, n: u64) {
        self.held += n;
        self.budget.add(n);
    }

    /// Up to `max` bytes starting at `offset` (never crossing a chunk: no copy is made),
    /// marking them delivered. Empty at the end of the stream.
    pub fn read(&mut self, offset: u64, max: usize) -> Result<Bytes, OutputError> {
        if offset < self.start {
            return Err(OutputError::Dropped {
                requested: offset,
                oldest: self.start,
            });
        }
        if offset > self.end() {
            return Err(OutputError::Beyond {
                requested: offset,
                end: self.end(),
            });
        }
        let mut chunk_start = self.start;
        let mut out = Bytes::new();
        for chunk in &self.chunks {
            let chunk_end = chunk_start + chunk.len() as u64;
            if chunk_end > offset {
                let from = (offset - chunk_start) as usize;
                let to = chunk.len().min(from + max);
                out = chunk.slice(from..to);
                break;
            }
            chunk_start = chunk_end;
        }
        self.delivered = self.delivered.max(offset + out.len() as u64);
        self.trim(self.retain);
        Ok(out)
    }

    /// Drops every delivered chunk (the sandbox is over its budget); returns what that
    /// freed.
    pub fn drop_delivered(&mut self) -> u64 {
        let before = self.held;
        self.trim(0);
        before - self.held
    }

    /// Drops whole delivered chunks while more than `keep` bytes are kept.
    fn trim(&mut self, keep: u64) {
        while let Some(front) = self.chunks.front() {
            let front_end = self.start + front.len() as u64;
            if self.len <= keep || front_end > self.delivered {
                break;
            }
            let n = front.len() as u64;
            self.len -= n;
            self.start = front_end;
            self.chunks.pop_front();
            self.held -= n + CHUNK_OVERHEAD;
            self.budget.sub(n + CHUNK_OVERHEAD);
        }
    }
}

impl Drop for OutputLog {
    fn drop(&mut self) {
        self.finish();
        self.budget.sub(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_never_holds_its_producer_and_keeps_the_last_bytes() {
        let budget = Arc::new(Budget::default());
        let mut log = OutputLog::ring(4 * COALESCE_BELOW as u64, budget.clone());
        for i in 0..100u8 {
            assert!(log.has_room());
            log.push(Bytes::from(vec![i; COALESCE_BELOW]));
        }
        let n = COALESCE_BELOW as u64;
        assert_eq!(log.end(), 100 * n);
        assert_eq!(log.oldest(), 96 * n);
        assert_eq!(budget.held(), 4 * (n + CHUNK_OVERHEAD));
        assert!(matches!(log.read(0, 1), Err(OutputError::Dropped { .. })));
        assert_eq!(log.read(99 * n, 2).unwrap(), &[99u8, 99][..]);
        // It takes no share of the other streams' window.
        let other = OutputLog::new(1 << 20, budget.clone());
        assert_eq!(budget.producing.load(Ordering::Relaxed), 1);
        drop((log, other));
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn reads_resume_at_any_retained_offset() {
        let mut log = OutputLog::new(1 << 20, Arc::default());
        let big = |b: u8| Bytes::from(vec![b; COALESCE_BELOW]);
        log.push(big(b'a'));
        log.push(big(b'b'));
        let n = COALESCE_BELOW as u64;
        assert_eq!(log.read(0, 4).unwrap(), &b"aaaa"[..]);
        assert_eq!(
            log.read(n - 2, 100).unwrap(),
            &b"aa"[..],
            "reads stop at a chunk end"
        );
        assert_eq!(log.read(n, 3).unwrap(), &b"bbb"[..]);
        assert_eq!(log.read(1, 2).unwrap(), &b"aa"[..]);
        assert_eq!(log.read(2 * n, 5).unwrap(), &b""[..]);
        assert!(matches!(
            log.read(2 * n + 1, 1),
            Err(OutputError::Beyond { .. })
        ));
        // Small writes join the chunk before them.
        log.push(Bytes::from_static(b"hello "));
        log.push(Bytes::from_static(b"world"));
        assert_eq!(log.read(2 * n, 100).unwrap(), &b"hello world"[..]);
    }

    #[test]
    fn the_window_bounds_undelivered_bytes_and_shrinks_with_more_streams() {
        let budget = Arc::new(Budget::default());
        let mut log = OutputLog::new(0, budget.clone());
        assert_eq!(budget.window(), MAX_WINDOW);
        log.push(Bytes::from(vec![1; 3 << 20]));
        assert!(log.has_room());
        log.push(Bytes::from(vec![2; 1 << 20]));
        assert!(!log.has_room());
        log.read(0, 3 << 20).unwrap();
        assert!(log.has_room());
        let many: Vec<_> = (0..999)
            .map(|_| OutputLog::new(0, budget.clone()))
            .collect();
        assert_eq!(budget.window(), UNDELIVERED_BUDGET / 1000);
        drop(many);
        log.finish();
        assert_eq!(budget.window(), MAX_WINDOW);
    }

    #[test]
    fn one_byte_writes_are_coalesced_and_counted_with_their_overhead() {
        let budget = Arc::new(Budget::default());
        let mut log = OutputLog::new(1 << 20, budget.clone());
        for _ in 0..100_000 {
            log.push(Bytes::from_static(b"x"));
        }
        assert!(log.chunks.len() <= 100_000 / COALESCE_LIMIT + 1);
        assert!(budget.held() >= 100_000);
        log.push(Bytes::from(vec![0; 4096 * 4]));
        assert_eq!(
            budget.held(),
            100_000 + 16384 + CHUNK_OVERHEAD * log.chunks.len() as u64
        );
        drop(log);
        assert_eq!(budget.held(), 0, "a forgotten log gives its bytes back");
    }

    #[test]
    fn drop_delivered_frees_what_was_sent_and_keeps_the_rest() {
        let budget = Arc::new(Budget::default());
        let mut log = OutputLog::new(1 << 20, budget.clone());
        log.push(Bytes::from(vec![1; 4096]));
        log.push(Bytes::from(vec![2; 4096]));
        log.read(0, 4096).unwrap();
        assert_eq!(log.drop_delivered(), 4096 + CHUNK_OVERHEAD);
        assert_eq!(log.oldest(), 4096);
        assert_eq!(budget.held(), 4096 + CHUNK_OVERHEAD);
        assert_eq!(log.read(4096, 10).unwrap(), vec![2; 10]);
    }

    #[test]
    fn delivered_bytes_beyond_retention_are_dropped() {
        const C: usize = 2048;
        let mut log = OutputLog::new(2 * C as u64, Arc::default());
        for i in 0..4u8 {
            log.push(Bytes::from(vec![i; C]));
        }
        let mut at = 0;
        while at < 3 * C as u64 {
            at += log.read(at, 3 * C - at as usize).unwrap().len() as u64;
        }
        // 4 chunks kept, 3 delivered, retain 2 chunks' worth: the first two go.
        assert_eq!(log.oldest(), 2 * C as u64);
        assert_eq!(
            log.read(0, 1),
            Err(OutputError::Dropped {
                requested: 0,
                oldest: 2 * C as u64
            })
        );
        assert_eq!(log.read(2 * C as u64, C).unwrap(), vec![2; C]);
        assert_eq!(log.read(3 * C as u64, C).unwrap(), vec![3; C]);
    }
}
