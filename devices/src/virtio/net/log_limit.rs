//! Warnings a guest can cause at will (malformed chains, frames the TAP refuses): the
//! first is logged, then at most one a second with the count of those left out, so a
//! hostile driver cannot flood the host's log.

use std::fmt;
use std::time::{Duration, Instant};

const INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct LogLimit {
    last: Option<Instant>,
    left_out: u64,
}

impl LogLimit {
    /// Logs `msg` as a warning unless one was logged less than a second ago; returns
    /// whether it did.
    pub fn warn(&mut self, msg: fmt::Arguments) -> bool {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < INTERVAL) {
            self.left_out += 1;
            return false;
        }
        if self.left_out > 0 {
            log::warn!("{msg} ({} similar lines left out)", self.left_out);
        } else {
            log::warn!("{msg}");
        }
        self.last = Some(now);
        self.left_out = 0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second() {
        let mut l = LogLimit::default();
        assert!(l.warn(format_args!("first")));
        assert!(!l.warn(format_args!("second")));
        assert!(!l.warn(format_args!("third")));
        assert_eq!(l.left_out, 2);
        l.last = Some(Instant::now() - INTERVAL);
        assert!(l.warn(format_args!("later")));
        assert_eq!(l.left_out, 0);
    }
}
