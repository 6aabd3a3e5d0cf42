//! The tx queue against the fake TAP.

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::net::fake_tap::FakeTap;
use crate::virtio::net::handler::Round;
use crate::virtio::net::log_limit::LogLimit;
use crate::virtio::net::tx::TxQueue;

/// Writes `bytes` at `addr` and returns the readable descriptor for them.
fn put(r: &Rings, addr: u64, bytes: &[u8]) -> (u64, u32, bool) {
    r.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    (addr, bytes.len() as u32, false)
}

#[test]
fn a_frame_reaches_the_tap_byte_exact_with_its_header() {
    let mut r = Rings::new(16);
    let mut h = r.handler(0);
    let mut tap = FakeTap::new(0);
    let f = frame(net_hdr(0, 0, 0, 0, 0, 0), 1514, 1);
    // Linux's layout: the header and the frame in one descriptor; and split after it.
    let one = put(&r, BUFS, &f);
    r.tx.post(&[one]);
    let hdr = put(&r, BUFS + 0x1_0000, &f[..12]);
    let body = put(&r, BUFS + 0x2_0000, &f[12..]);
    r.tx.post(&[hdr, body]);
    let out = h.process_tx(&mut tap).unwrap();
    assert_eq!(out.round, Round::Drained);
    assert!(out.interrupt);
    assert_eq!(tap.sent(), vec![f.clone(), f]);
    assert_eq!(
        r.tx.used(),
        vec![(0, 0), (1, 0)],
        "tx chains complete with len 0"
    );
}

#[test]
fn a_chain_split_over_many_descriptors_and_an_indirect_table() {
    let mut r = Rings::new(256);
    let mut h = r.handler(0);
    let mut tap = FakeTap::new(0);
    let f = frame(net_hdr(1, 0, 0, 0, 34, 16), 6000, 7);
    // 64 descriptors, the header straddling the first two, uneven pieces.
    let mut chain = Vec::new();
    let mut at = 0;
    for i in 0..64 {
        let len = if i == 0 {
            5
        } else if i == 63 {
            f.len() - at
        } else {
            40 + i
        };
        chain.push(put(&r, BUFS + i as u64 * 0x1000, &f[at..at + len]));
        at += len;
    }
    r.tx.post(&chain);
    // The same frame behind one ring descriptor pointing to a 3-entry indirect table.
    let table = BUFS + 0x10_0000;
    let pieces = [(0, 12), (12, 3000), (3012, f.len() - 3012)];
    for (i, &(start, len)) in pieces.iter().enumerate() {
        let addr = BUFS + 0x20_0000 + i as u64 * 0x2000;
        r.mem
            .write_slice(&f[start..start + len], GuestAddress(addr))
            .unwrap();
        let flags = if i < 2 { VRING_DESC_F_NEXT as u16 } else { 0 };
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&(i as u16 + 1).to_le_bytes());
        r.mem
            .write_slice(&raw, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    r.tx.write_desc(200, table, 48, VRING_DESC_F_INDIRECT as u16, 0);
    r.tx.push_avail(200);
    h.process_tx(&mut tap).unwrap();
    assert_eq!(tap.sent(), vec![f.clone(), f]);
    assert_eq!(r.tx.used(), vec![(0, 0), (200, 0)]);
}

#[test]
fn a_frame_the_tap_cannot_take_yet_waits_on_the_queue_in_order() {
    let mut r = Rings::new(16);
    let mut h = r.handler(0);
    let mut tap = FakeTap::new(0);
    let frames: Vec<_> = (0..3).map(|i| frame([0; 12], 100, i)).collect();
    for (i, f) in frames.iter().enumerate() {
        let d = put(&r, BUFS + i as u64 * 0x1000, f);
        r.tx.post(&[d]);
    }
    tap.state().block_writes = 1;
    let out = h.process_tx(&mut tap).unwrap();
    assert_eq!(out.round, Round::Waiting);
    assert!(!out.interrupt, "nothing completed");
    assert!(tap.sent().is_empty());
    assert!(
        r.tx.used().is_empty(),
        "the chain is not lost, nor completed"
    );
    // Writable again (EPOLLOUT): the same chain goes first.
    let out = h.process_tx(&mut tap).unwrap();
    assert_eq!(out.round, Round::Drained);
    assert_eq!(tap.sent(), frames);
    assert_eq!(r.tx.used().len(), 3);
}

#[test]
fn offload_header_fields_pass_through() {
    let mut r = Rings::new(16);
    let mut h = r.handler(0);
    let mut tap = FakeTap::new(0);
    // NEEDS_CSUM, GSO TCPv4 with ECN, 54-byte headers, 1448-byte segments, checksum at
    // 34 + 16, and a num_buffers the device must not touch either.
    let mut hdr = net_hdr(1, 0x81, 54, 1448, 34, 16);
    hdr[10] = 0xab;
    let f = frame(hdr, 65_000, 3);
    let d = put(&r, BUFS, &f);
    r.tx.post(&[d]);
    h.process_tx(&mut tap).unwrap();
    assert_eq!(tap.sent()[0][..12], hdr);
    assert_eq!(tap.sent()[0], f);
}

#[test]
fn malformed_chains_complete_empty_and_the_queue_goes_on() {
    let mut r = Rings::new(256);
    let mut h = r.handler(0);
    let mut tap = FakeTap::new(0);
    let good = frame([0; 12], 60, 9);
    let g = put(&r, BUFS, &good);
    let chains: Vec<Vec<(u64, u32, bool)>> = vec![
        vec![(BUFS, 8, false)],                          // shorter than a header
        vec![(BUFS, 12, false)],                         // a header and no frame
        vec![g, (BUFS + 0x1000, 64, true)],              // a writable descriptor
        vec![(0x1F0_0000_0000, 64, false)],              // outside guest memory
        vec![(BUFS, 65_000, false), (BUFS, 563, false)], // 65563 bytes: too long
        (0..65).map(|_| (BUFS, 2, false)).collect(),     // too many descriptors
    ];
    for c in &chains {
        r.tx.post(c);
    }
    r.tx.post(&[g]);
    h.process_tx(&mut tap).unwrap();
    let used = r.tx.used();
    assert_eq!(used.len(), chains.len() + 1);
    assert!(used.iter().all(|&(_, len)| len == 0));
    assert_eq!(
        tap.sent(),
        vec![good.clone()],
        "only the good frame went out"
    );
    // A frame the host refuses (a bad GSO header: EINVAL) is dropped, not retried.
    tap.state().refuse_writes = 1;
    r.tx.post(&[g]);
    r.tx.post(&[g]);
    h.process_tx(&mut tap).unwrap();
    assert_eq!(r.tx.used().len(), 2);
    assert_eq!(tap.sent().len(), 2);
}

#[test]
fn a_flood_yields_after_the_budget() {
    let mut r = Rings::new(16);
    let mut tx = TxQueue::new(r.tx.queue());
    let mut tap = FakeTap::new(0);
    let d = put(&r, BUFS, &frame([0; 12], 60, 0));
    for _ in 0..5 {
        r.tx.post(&[d]);
    }
    let mut log = LogLimit::default();
    let (round, _) = tx.process(&r.mem, &mut tap, 2, &mut log).unwrap();
    assert_eq!(round, Round::Budget);
    assert_eq!(tap.sent().len(), 2);
    tx.process(&r.mem, &mut tap, 2, &mut log).unwrap();
    let (round, _) = tx.process(&r.mem, &mut tap, 2, &mut log).unwrap();
    assert_eq!(round, Round::Drained);
    assert_eq!(tap.sent().len(), 5);
    assert_eq!(r.tx.used().len(), 5);
}

#[test]
fn an_avail_index_too_far_ahead_breaks_the_queue() {
    let r = Rings::new(16);
    let mut h = r.handler(0);
    let mut tap = FakeTap::new(0);
    r.tx.set_avail_idx(17);
    assert!(h.process_tx(&mut tap).is_err());
    r.rx.set_avail_idx(17);
    assert!(h.process_rx(&mut tap).is_err());
}
