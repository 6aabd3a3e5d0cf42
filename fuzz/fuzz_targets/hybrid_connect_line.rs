//! The hybrid vsock `CONNECT <port>\n` line a host client starts with: the parser, the
//! incremental reader on a socket (the bytes arrive in pieces), and the muxer end to end
//! (a client connects to the device's Unix socket and writes them; a valid line must turn
//! into exactly one REQUEST for that guest port, anything else into none).
//!
//! Input: one byte that chooses how the bytes are cut into writes, then the bytes the
//! client sends.

#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use devices::virtio::vsock::{
    parse_connect_line, LineStatus, Muxer, PacketHeader, PendingClient, VsockHandler,
    CONNECT_LINE_MAX, HEADER_LEN, HOST_CID, VSOCK_OP_REQUEST,
};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};
use vmm_fuzz::{guest_memory, Reader, Ring};

const GUEST_CID: u64 = 3;

/// What the reader must make of `bytes` followed by the end of the stream: the line up to
/// the first newline, if it comes before the length limit, parsed as a whole.
fn expected(bytes: &[u8]) -> (LineStatus, usize) {
    match bytes.iter().position(|&b| b == b'\n') {
        Some(nl) if nl < CONNECT_LINE_MAX => match parse_connect_line(&bytes[..nl]) {
            Some(port) => (LineStatus::Port(port), nl + 1),
            None => (LineStatus::Invalid, nl + 1),
        },
        _ => (LineStatus::Invalid, 0),
    }
}

fn check_parser(line: &[u8]) {
    if let Some(port) = parse_connect_line(line) {
        let digits = line.strip_suffix(b"\r").unwrap_or(line);
        let digits = digits
            .strip_prefix(b"CONNECT ")
            .expect("accepted without CONNECT");
        assert!(!digits.is_empty() && digits.iter().all(u8::is_ascii_digit));
        let canonical = format!("CONNECT {port}");
        assert_eq!(parse_connect_line(canonical.as_bytes()), Some(port));
    }
}

/// The bytes in pieces through a socket pair, `read_line` after each piece.
fn check_reader(cuts: u8, bytes: &[u8]) {
    let (mut client, server) = UnixStream::pair().expect("socketpair");
    server.set_nonblocking(true).expect("nonblocking");
    let mut pending = PendingClient::new(server, 1);
    let mut sizes = (1..=8usize).cycle().skip(usize::from(cuts));
    let mut sent = 0;
    let mut status = LineStatus::Incomplete;
    while sent < bytes.len() && status == LineStatus::Incomplete {
        let n = sizes.next().unwrap_or(1).min(bytes.len() - sent);
        client
            .write_all(&bytes[sent..sent + n])
            .expect("socketpair write");
        sent += n;
        status = pending.read_line();
    }
    if status == LineStatus::Incomplete {
        client
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        status = pending.read_line();
    }
    let (want, consumed) = expected(bytes);
    assert_eq!(status, want, "{bytes:?}");
    if let LineStatus::Port(_) = want {
        // Nothing after the newline was consumed: it belongs to the stream.
        client.write_all(&bytes[sent..]).expect("socketpair write");
        drop(client);
        let mut rest = Vec::new();
        pending.stream.set_nonblocking(false).expect("blocking");
        pending.stream.read_to_end(&mut rest).expect("read");
        assert_eq!(rest, &bytes[consumed..]);
    }
}

/// A host client of the real muxer; the guest must see a REQUEST iff the line is valid.
fn check_muxer(bytes: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("v.sock");
    let mut muxer = Muxer::new(GUEST_CID, uds.clone()).expect("muxer");
    let mem = guest_memory(1 << 20);
    let mut rx = Ring::new(&mem, 0, 8);
    let tx = Ring::new(&mem, 0x1000, 8);
    let mut handler = VsockHandler::new(mem.clone(), rx.queue(), tx.queue());
    rx.post(&[(0x8000, 4096, true)]).expect("rx buffer");

    let mut client = UnixStream::connect(&uds).expect("connect");
    // A short line fits the socket buffer at once; the reader is covered above.
    let _ = client.write_all(bytes);
    // The listener's event, then the client's (it is watched once accepted).
    for _ in 0..3 {
        muxer.process_events();
    }
    handler.process_rx(&mut muxer).expect("rx queue");
    let used = rx.used();
    match expected(bytes).0 {
        LineStatus::Port(port) => {
            assert_eq!(used.len(), 1, "no REQUEST for {bytes:?}");
            assert_eq!(used[0].1, HEADER_LEN as u32);
            let mut raw = [0u8; HEADER_LEN];
            mem.read_slice(&mut raw, GuestAddress(0x8000)).expect("rx");
            let hdr = PacketHeader::from_bytes(&raw);
            assert_eq!(hdr.op, VSOCK_OP_REQUEST);
            assert_eq!((hdr.src_cid, hdr.dst_cid), (HOST_CID, GUEST_CID));
            assert_eq!(hdr.dst_port, port);
        }
        _ => assert!(used.is_empty(), "{bytes:?} got the guest a packet"),
    }
}

fuzz_target!(init: vmm_fuzz::ignore_sigpipe(), |data: &[u8]| {
    let mut r = Reader::new(data);
    let cuts = r.u8();
    let bytes = r.rest();
    check_parser(bytes);
    if let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
        check_parser(&bytes[..nl]);
    }
    let bytes = &bytes[..bytes.len().min(4096)];
    check_reader(cuts, bytes);
    check_muxer(bytes);
});
