//! One output stream of an exec (stdout or stderr) as the supervisor keeps it: a byte log
//! addressed by absolute offsets, so a client that reconnects can resume where it
//! stopped. Memory is bounded: bytes that were delivered are dropped once more than
//! `retain` of them are kept, and the producer waits while `window` bytes are undelivered
//! (that wait is the backpressure that reaches the process's pipe).

use std::collections::VecDeque;

use bytes::Bytes;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OutputError {
    #[error("offset {requested} is no longer retained (oldest kept byte is {oldest})")]
    Dropped { requested: u64, oldest: u64 },
    #[error("offset {requested} is beyond the end of the stream ({end})")]
    Beyond { requested: u64, end: u64 },
}

#[derive(Debug)]
pub struct OutputLog {
    /// Offset of the first byte in `chunks`.
    start: u64,
    chunks: VecDeque<Bytes>,
    len: u64,
    /// Highest offset any client has been sent.
    delivered: u64,
    retain: u64,
    window: u64,
}

impl OutputLog {
    pub fn new(retain: u64, window: u64) -> Self {
        Self {
            start: 0,
            chunks: VecDeque::new(),
            len: 0,
            delivered: 0,
            retain,
            window,
        }
    }

    /// Offset one past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }

    pub fn oldest(&self) -> u64 {
        self.start
    }

    /// The producer may append while fewer than `window` bytes await delivery.
    pub fn has_room(&self) -> bool {
        self.end() - self.delivered < self.window
    }

    pub fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        self.len += data.len() as u64;
        self.chunks.push_back(data);
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
        self.trim();
        Ok(out)
    }

    /// Drops whole delivered chunks while more than `retain` bytes are kept.
    fn trim(&mut self) {
        while let Some(front) = self.chunks.front() {
            let front_end = self.start + front.len() as u64;
            if self.len <= self.retain || front_end > self.delivered {
                break;
            }
            self.len -= front.len() as u64;
            self.start = front_end;
            self.chunks.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_resume_at_any_retained_offset() {
        let mut log = OutputLog::new(1 << 20, 1 << 20);
        log.push(Bytes::from_static(b"hello "));
        log.push(Bytes::from_static(b"world"));
        assert_eq!(log.read(0, 4).unwrap(), &b"hell"[..]);
        assert_eq!(
            log.read(4, 100).unwrap(),
            &b"o "[..],
            "reads stop at a chunk end"
        );
        assert_eq!(log.read(6, 100).unwrap(), &b"world"[..]);
        assert_eq!(log.read(3, 5).unwrap(), &b"lo "[..]);
        assert_eq!(log.read(11, 5).unwrap(), &b""[..]);
        assert!(matches!(log.read(12, 1), Err(OutputError::Beyond { .. })));
    }

    #[test]
    fn window_bounds_undelivered_bytes() {
        let mut log = OutputLog::new(0, 10);
        log.push(Bytes::from(vec![1; 6]));
        assert!(log.has_room());
        log.push(Bytes::from(vec![2; 6]));
        assert!(!log.has_room());
        log.read(0, 6).unwrap();
        assert!(log.has_room());
    }

    #[test]
    fn delivered_bytes_beyond_retention_are_dropped() {
        let mut log = OutputLog::new(8, 100);
        for i in 0..4u8 {
            log.push(Bytes::from(vec![i; 4]));
        }
        let mut at = 0;
        while at < 12 {
            at += log.read(at, 12 - at as usize).unwrap().len() as u64;
        }
        // 16 kept, 12 delivered, retain 8: the first chunk (4 bytes) goes... and the next.
        assert_eq!(log.oldest(), 8);
        assert_eq!(
            log.read(0, 1),
            Err(OutputError::Dropped {
                requested: 0,
                oldest: 8
            })
        );
        assert_eq!(log.read(8, 100).unwrap(), vec![2, 2, 2, 2]);
        assert_eq!(log.read(12, 100).unwrap(), vec![3, 3, 3, 3]);
    }
}
