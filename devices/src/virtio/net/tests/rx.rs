//! The rx queue against the fake TAP.

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::net::fake_tap::FakeTap;
use crate::virtio::net::handler::Round;
use crate::virtio::net::log_limit::LogLimit;
use crate::virtio::net::rx::RxQueue;
use crate::virtio::net::{VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MRG_RXBUF};
use crate::virtio::VIRTIO_RING_F_EVENT_IDX;

const MRG: u64 = VIRTIO_NET_F_MRG_RXBUF;
/// What Linux posts with MRG_RXBUF (its smallest mergeable buffer).
const SMALL: u32 = 1536;

fn num_buffers(r: &Rings, addr: u64) -> u16 {
    r.mem.read_obj(GuestAddress(addr + 10)).unwrap()
}

#[test]
fn a_frame_lands_in_a_buffer_with_a_correct_header() {
    for (features, flags) in [(0, 0), (VIRTIO_NET_F_GUEST_CSUM, 2)] {
        let mut r = Rings::new(16);
        let mut h = r.handler(features);
        let mut tap = FakeTap::new(0);
        // DATA_VALID from the host; stale bytes where num_buffers goes.
        let mut hdr = net_hdr(2, 0, 0, 0, 0, 0);
        hdr[10] = 0x77;
        let f = frame(hdr, 1514, 5);
        tap.push(f.clone());
        r.mem.write_slice(&[0xff; 12], GuestAddress(BUFS)).unwrap();
        r.post_rx(0, 1, 1526);
        let out = h.process_rx(&mut tap).unwrap();
        // Its only buffer used: waiting for the driver, not for the TAP.
        assert_eq!(out.round, Round::Waiting);
        assert!(out.interrupt);
        assert_eq!(r.rx.used(), vec![(0, 1526)]);
        let got = read(&r.mem, BUFS, 1526);
        assert_eq!(
            got[0], flags,
            "checksum flags only for a guest that takes them"
        );
        assert_eq!(got[1..10], f[1..10]);
        assert_eq!(num_buffers(&r, BUFS), 1);
        assert_eq!(got[12..], f[12..]);
    }
}

#[test]
fn a_64k_gso_frame_spreads_over_mergeable_buffers() {
    let mut r = Rings::new(256);
    let mut h = r.handler(MRG | VIRTIO_NET_F_GUEST_CSUM);
    let mut tap = FakeTap::new(0);
    let big = frame(net_hdr(1, 1, 54, 1448, 34, 16), 65_536, 11);
    let small = frame([0; 12], 60, 12);
    tap.push(big.clone());
    tap.push(small.clone());
    r.post_rx(0, 100, SMALL);
    assert_eq!(h.process_rx(&mut tap).unwrap().round, Round::Drained);
    let used = r.rx.used();
    let n = big.len().div_ceil(SMALL as usize);
    assert_eq!(used.len(), n + 1);
    // In ring order, full buffers then the rest; the next frame starts a new buffer.
    for (i, &(id, len)) in used[..n].iter().enumerate() {
        assert_eq!(id, i as u32);
        let want = (big.len() - i * SMALL as usize).min(SMALL as usize);
        assert_eq!(len as usize, want, "buffer {i}");
    }
    assert_eq!(used[n], (n as u32, small.len() as u32));
    assert_eq!(num_buffers(&r, BUFS) as usize, n);
    assert_eq!(num_buffers(&r, BUFS + n as u64 * 0x1_0000), 1);
    let mut got = Vec::new();
    for &(id, len) in &used[..n] {
        got.extend(read(&r.mem, BUFS + u64::from(id) * 0x1_0000, len as usize));
    }
    assert_eq!(got[..10], big[..10], "GSO fields pass through");
    assert_eq!(got[12..], big[12..]);
}

#[test]
fn without_buffers_the_tap_is_left_alone_until_the_driver_posts() {
    let mut r = Rings::new(16);
    let mut h = r.handler(0);
    let mut tap = FakeTap::new(0);
    let frames: Vec<_> = (0..3).map(|i| frame([0; 12], 100 + i, i as u8)).collect();
    for f in &frames {
        tap.push(f.clone());
    }
    let out = h.process_rx(&mut tap).unwrap();
    assert_eq!(out.round, Round::Waiting);
    assert!(!out.interrupt);
    assert_eq!(
        tap.state().reads,
        0,
        "no read without a buffer to put it in"
    );
    // The driver is asked to notify (no NO_NOTIFY flag in the used ring).
    let flags: u16 = r.mem.read_obj(GuestAddress(r.rx.used_ring())).unwrap();
    assert_eq!(flags, 0);
    // Its notification: two buffers, two frames, then waiting again.
    r.post_rx(0, 2, 1526);
    assert_eq!(h.process_rx(&mut tap).unwrap().round, Round::Waiting);
    assert_eq!(r.rx.used().len(), 2);
    assert_eq!(tap.state().to_guest.len(), 1);
    r.post_rx(2, 2, 1526);
    assert_eq!(h.process_rx(&mut tap).unwrap().round, Round::Drained);
    let used = r.rx.used();
    assert_eq!(used, vec![(2, 114)]);
    assert_eq!(
        read(&r.mem, BUFS + 2 * 0x1_0000, 114)[12..],
        frames[2][12..]
    );
}

#[test]
fn mergeable_buffers_wait_for_room_for_the_largest_frame() {
    let mut r = Rings::new(256);
    let mut h = r.handler(MRG);
    let mut tap = FakeTap::new(0);
    tap.push(frame([0; 12], 60, 0));
    // 40 * 1536 < 65562: a 64 KiB frame might come next; the ring has room for more.
    r.post_rx(0, 40, SMALL);
    assert_eq!(h.process_rx(&mut tap).unwrap().round, Round::Waiting);
    assert_eq!(tap.state().reads, 0);
    r.post_rx(40, 3, SMALL);
    h.process_rx(&mut tap).unwrap();
    assert_eq!(r.rx.used(), vec![(0, 72)]);
    assert_eq!(tap.state().reads, 1);
}

#[test]
fn a_ring_smaller_than_the_largest_frame_still_gets_what_fits() {
    let mut r = Rings::new(16);
    let mut h = r.handler(MRG);
    let mut tap = FakeTap::new(0);
    let fits = frame([0; 12], 20_000, 1);
    let too_big = frame([0; 12], 30_000, 2);
    tap.push(fits.clone());
    tap.push(too_big);
    tap.push(fits.clone());
    r.post_rx(0, 16, SMALL);
    h.process_rx(&mut tap).unwrap();
    // The whole ring holds 24576 bytes: the first frame fits; then the device waits
    // for the driver to post again.
    let used = r.rx.used();
    assert_eq!(used.len(), fits.len().div_ceil(SMALL as usize));
    assert_eq!(tap.state().to_guest.len(), 2);
    // The ring full again: the second frame can never fit and is dropped, the third
    // goes in.
    r.post_rx(16, used.len() as u64, SMALL);
    h.process_rx(&mut tap).unwrap();
    assert_eq!(r.rx.used().len(), used.len());
    assert!(tap.state().to_guest.is_empty());
}

#[test]
fn frames_are_neither_reordered_nor_lost_through_a_small_ring() {
    let mut r = Rings::new(8);
    let mut h = r.handler(MRG | VIRTIO_NET_F_GUEST_CSUM);
    let mut tap = FakeTap::new(0);
    let frames: Vec<_> = (0..500)
        .map(|i| frame([0; 12], [60, 1500, 9000, 20_000][i % 4], i as u8))
        .collect();
    for f in &frames {
        tap.push(f.clone());
    }
    // Eight 8 KiB buffers (64 KiB: the ring is full before 65562), reposted as used.
    let mut free: Vec<u64> = (0..8).collect();
    let mut posted = std::collections::HashMap::new();
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut left = 0;
    for _ in 0..10_000 {
        while let Some(slot) = free.pop() {
            let head = r.rx.post(&[(BUFS + slot * 0x1_0000, 8192, true)]).unwrap();
            posted.insert(u32::from(head), slot);
        }
        let _ = h.process_rx(&mut tap).unwrap();
        for (head, len) in r.rx.used() {
            let slot = posted.remove(&head).unwrap();
            let bytes = read(&r.mem, BUFS + slot * 0x1_0000, len as usize);
            if left == 0 {
                left = num_buffers(&r, BUFS + slot * 0x1_0000);
                pending.clear();
            }
            pending.extend(bytes);
            left -= 1;
            if left == 0 {
                got.push(std::mem::take(&mut pending));
            }
            free.push(slot);
        }
        if got.len() == frames.len() {
            break;
        }
    }
    assert_eq!(got.len(), frames.len());
    for (i, (g, f)) in got.iter().zip(&frames).enumerate() {
        assert_eq!(g[12..], f[12..], "frame {i}");
    }
}

#[test]
fn malformed_buffers_are_returned_empty_and_the_frame_goes_to_the_next() {
    let mut r = Rings::new(256);
    let mut h = r.handler(0);
    let mut tap = FakeTap::new(0);
    let f = frame([0; 12], 200, 3);
    tap.push(f.clone());
    let chains: Vec<Vec<(u64, u32, bool)>> = vec![
        vec![(BUFS, 1526, false)],                            // device-readable
        vec![(BUFS, 8, true)],                                // too short for a header
        vec![(0x1F0_0000_0000, 1526, true)],                  // outside guest memory
        (0..65).map(|i| (BUFS + i * 64, 64, true)).collect(), // too many descriptors
    ];
    for c in &chains {
        r.rx.post(c);
    }
    r.post_rx(1, 1, 1526);
    let out = h.process_rx(&mut tap).unwrap();
    assert!(out.interrupt);
    let used = r.rx.used();
    assert_eq!(used.len(), 5);
    assert!(used[..4].iter().all(|&(_, len)| len == 0));
    assert_eq!(used[4].1 as usize, f.len());
    assert_eq!(read(&r.mem, BUFS + 0x1_0000, f.len())[12..], f[12..]);
}

#[test]
fn a_frame_larger_than_the_buffer_is_dropped_and_the_buffer_kept() {
    let mut r = Rings::new(16);
    let mut h = r.handler(0);
    let mut tap = FakeTap::new(0);
    tap.push(frame([0; 12], 3000, 1));
    let small = frame([0; 12], 100, 2);
    tap.push(small.clone());
    r.post_rx(0, 1, 1526);
    h.process_rx(&mut tap).unwrap();
    assert_eq!(r.rx.used(), vec![(0, small.len() as u32)]);
    assert_eq!(read(&r.mem, BUFS, small.len())[12..], small[12..]);
    assert_eq!(h.rx_prepared(), 0);
}

#[test]
fn event_idx_interrupts_only_when_the_driver_asked() {
    let mut r = Rings::new(16);
    let mut rx = r.rx.queue();
    virtio_queue::QueueT::set_event_idx(&mut rx, true);
    let mut tx = r.tx.queue();
    virtio_queue::QueueT::set_event_idx(&mut tx, true);
    let mut h = NetHandler::new(r.mem.clone(), rx, tx, VIRTIO_RING_F_EVENT_IDX);
    let mut tap = FakeTap::new(0);
    let used_event = GuestAddress(r.rx.avail_ring() + 4 + 2 * 16);
    r.post_rx(0, 4, 1526);
    // used_event 0: interrupt when the used index passes 0.
    r.mem.write_obj(0u16, used_event).unwrap();
    tap.push(frame([0; 12], 60, 0));
    assert!(h.process_rx(&mut tap).unwrap().interrupt);
    tap.push(frame([0; 12], 60, 1));
    assert!(!h.process_rx(&mut tap).unwrap().interrupt, "already past 0");
    // The driver wants to hear after entry 2 (index 3).
    r.mem.write_obj(2u16, used_event).unwrap();
    tap.push(frame([0; 12], 60, 2));
    assert!(h.process_rx(&mut tap).unwrap().interrupt);
    assert_eq!(r.rx.used().len(), 3);
}

#[test]
fn a_flood_yields_after_the_budget_and_an_empty_read_ends_the_round() {
    let mut r = Rings::new(16);
    let mut rx = RxQueue::new(r.rx.queue(), 0);
    let mut tap = FakeTap::new(0);
    for i in 0..3 {
        tap.push(frame([0; 12], 60, i));
    }
    r.post_rx(0, 8, 1526);
    let mut log = LogLimit::default();
    let (round, interrupt) = rx.process(&r.mem, &mut tap, 2, &mut log).unwrap();
    assert_eq!((round, interrupt), (Round::Budget, true));
    assert_eq!(r.rx.used().len(), 2);
    // What a TAP whose interface is gone reads: 0 bytes, not a frame to retry at once.
    tap.state().to_guest.push_front(Vec::new());
    let (round, _) = rx.process(&r.mem, &mut tap, 2, &mut log).unwrap();
    assert_eq!(round, Round::Drained);
    assert!(r.rx.used().is_empty());
    rx.process(&r.mem, &mut tap, 2, &mut log).unwrap();
    assert_eq!(r.rx.used().len(), 1);
}
