//! Credit accounting of one stream, both directions (virtio 1.2, 5.10.6.3). Each side
//! advertises `buf_alloc` (its receive buffer) and `fwd_cnt` (bytes it has consumed); a
//! sender may have at most `buf_alloc - (tx_cnt - fwd_cnt)` bytes in flight. Counters are
//! free-running u32s, so all differences are taken modulo 2^32.

use std::num::Wrapping;

/// Our receive buffer per connection, advertised as `buf_alloc`: the most guest data we
/// ever hold that the host socket has not taken yet.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Forwarded-but-unadvertised bytes after which we volunteer a CREDIT_UPDATE. Any packet
/// we send carries our counters, so this matters only while the host side is silent; a
/// guest out of credit has `CONN_BUF_ALLOC` bytes in flight, so it always gets one.
const UPDATE_THRESHOLD: u32 = CONN_BUF_ALLOC / 2;

#[derive(Debug, Default)]
pub struct Credit {
    // Guest → host: bytes received, bytes forwarded to the host, and the forwarded count
    // in the last header we sent (the newest value the guest can know).
    rx_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    advertised_fwd_cnt: Wrapping<u32>,
    // Host → guest: bytes sent, and the guest's last advertised buffer and consumed count.
    tx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
}

impl Credit {
    /// Takes the counters every guest header carries.
    pub fn update_peer(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
    }

    /// Bytes the guest can still take from us. A guest claiming to have consumed more than
    /// it was sent gets nothing: it only hurts itself.
    pub fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub((self.tx_cnt - self.peer_fwd_cnt).0)
    }

    pub fn sent(&mut self, n: u32) {
        self.tx_cnt += n;
    }

    /// Accounts for `len` bytes from the guest; false (and nothing counted) if they exceed
    /// the credit we gave it. The guest's idea of our `fwd_cnt` can only lag the one we
    /// last sent, so a well-behaved guest always passes.
    pub fn receive(&mut self, len: u32) -> bool {
        let in_flight = u64::from((self.rx_cnt - self.advertised_fwd_cnt).0);
        if in_flight + u64::from(len) > u64::from(CONN_BUF_ALLOC) {
            return false;
        }
        self.rx_cnt += len;
        true
    }

    /// `n` received bytes reached the host.
    pub fn forwarded(&mut self, n: usize) {
        self.fwd_cnt += n as u32;
    }

    pub fn fwd_cnt(&self) -> u32 {
        self.fwd_cnt.0
    }

    /// A header carrying `fwd_cnt()` went to the guest.
    pub fn advertised(&mut self) {
        self.advertised_fwd_cnt = self.fwd_cnt;
    }

    /// Whether enough was forwarded since the guest last heard from us to tell it.
    pub fn update_due(&self) -> bool {
        (self.fwd_cnt - self.advertised_fwd_cnt).0 >= UPDATE_THRESHOLD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_credit_tracks_what_the_guest_consumed() {
        let mut c = Credit::default();
        assert_eq!(c.peer_credit(), 0, "nothing before the guest advertises");
        c.update_peer(1000, 0);
        c.sent(600);
        assert_eq!(c.peer_credit(), 400);
        c.sent(400);
        assert_eq!(c.peer_credit(), 0);
        c.update_peer(1000, 700);
        assert_eq!(c.peer_credit(), 700);
        c.update_peer(100, 700);
        assert_eq!(c.peer_credit(), 0, "a shrunk buffer does not go negative");
        c.update_peer(1000, 5000);
        assert_eq!(c.peer_credit(), 0, "a bogus fwd_cnt earns nothing");
    }

    #[test]
    fn counters_wrap_around() {
        let mut c = Credit {
            tx_cnt: Wrapping(u32::MAX - 10),
            rx_cnt: Wrapping(u32::MAX - 10),
            fwd_cnt: Wrapping(u32::MAX - 10),
            advertised_fwd_cnt: Wrapping(u32::MAX - 10),
            ..Credit::default()
        };
        c.update_peer(100, u32::MAX - 10);
        c.sent(50);
        assert_eq!(c.peer_credit(), 50);
        c.update_peer(100, 39);
        assert_eq!(c.peer_credit(), 100);
        assert!(c.receive(CONN_BUF_ALLOC));
        c.forwarded(CONN_BUF_ALLOC as usize);
        assert!(c.update_due());
        c.advertised();
        assert_eq!(c.fwd_cnt(), (u32::MAX - 10).wrapping_add(CONN_BUF_ALLOC));
        assert!(c.receive(CONN_BUF_ALLOC));
    }

    #[test]
    fn guests_may_fill_our_buffer_and_no_more() {
        let mut c = Credit::default();
        assert!(c.receive(CONN_BUF_ALLOC - 1));
        assert!(!c.receive(2));
        assert!(c.receive(1));
        // Forwarding alone does not help until the guest is told.
        c.forwarded(1000);
        assert!(!c.receive(1));
        assert!(!c.update_due());
        c.advertised();
        assert!(c.receive(1000));
        assert!(!c.receive(1));
    }

    #[test]
    fn updates_are_due_after_half_the_buffer() {
        let mut c = Credit::default();
        assert!(c.receive(CONN_BUF_ALLOC));
        c.forwarded(UPDATE_THRESHOLD as usize - 1);
        assert!(!c.update_due());
        c.forwarded(1);
        assert!(c.update_due());
        c.advertised();
        assert!(!c.update_due());
    }
}
