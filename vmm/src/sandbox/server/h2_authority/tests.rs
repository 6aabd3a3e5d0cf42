//! The rewriter on byte streams split every way, real HPACK (RFC 7541 examples
//! included), and malformed input.

use std::collections::VecDeque;
use std::task::Waker;

use super::*;

const DATA: u8 = 0x0;
const SETTINGS: u8 = 0x4;
const WINDOW_UPDATE: u8 = 0x8;
const BAD: &[u8] = b"tmp%2Fsb%2Fapi.sock";

/// A client connection that delivers its bytes in the given pieces, never blocking.
struct Pieces(VecDeque<Vec<u8>>);

impl AsyncRead for Pieces {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(mut piece) = self.0.pop_front() {
            let n = piece.len().min(buf.remaining());
            buf.put_slice(&piece[..n]);
            if n < piece.len() {
                self.0.push_front(piece.split_off(n));
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// What h2 reads from `pieces` through the rewriter, `read_size` bytes at a time.
fn through(pieces: Vec<Vec<u8>>, read_size: usize) -> io::Result<Vec<u8>> {
    let pieces = pieces.into_iter().filter(|p| !p.is_empty()).collect();
    let mut conn = RewriteAuthority::new(Pieces(pieces));
    let mut cx = Context::from_waker(Waker::noop());
    let mut got = Vec::new();
    let mut storage = vec![0; read_size];
    loop {
        let mut buf = ReadBuf::new(&mut storage);
        match Pin::new(&mut conn).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => return Ok(got),
            Poll::Ready(Ok(())) => got.extend_from_slice(buf.filled()),
            Poll::Ready(Err(e)) => {
                // A failed connection stays failed.
                let mut buf = ReadBuf::new(&mut storage);
                let again = Pin::new(&mut conn).poll_read(&mut cx, &mut buf);
                assert!(matches!(again, Poll::Ready(Err(_))), "{again:?}");
                return Err(e);
            }
            Poll::Pending => unreachable!("the test input never blocks"),
        }
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    FrameHeader::write(&mut f, payload.len(), kind, flags, stream);
    f.extend_from_slice(payload);
    f
}

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn fields(list: &[(&str, &[u8])]) -> Fields {
    list.iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec()))
        .collect()
}

fn request(authority: &[u8]) -> Fields {
    fields(&[
        (":method", b"POST"),
        (":scheme", b"http"),
        (":path", b"/vmm.sandbox.v1.Sandbox/Status"),
        (":authority", authority),
        ("content-type", b"application/grpc"),
        ("te", b"trailers"),
    ])
}

fn encode(client: &mut loona_hpack::Encoder<'static>, fields: &Fields) -> Vec<u8> {
    client.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])))
}

fn with_authority(mut fields: Fields, authority: &[u8]) -> Fields {
    for (n, v) in &mut fields {
        if n == b":authority" {
            *v = authority.to_vec();
        }
    }
    fields
}

#[derive(Debug, PartialEq)]
enum Seen {
    /// A header block: its HEADERS frame's stream, flags and priority fields, how many
    /// frames carried it, and the fields h2 decodes.
    Headers {
        stream: u32,
        flags: u8,
        priority: Vec<u8>,
        frames: usize,
        fields: Fields,
    },
    Other(Vec<u8>),
}

/// What the server sees in `out` (after the preface), as h2 decodes it. Checks the
/// header frames we make: none padded, none over MAX_FRAME.
fn server_view(out: &[u8]) -> Vec<Seen> {
    assert_eq!(&out[..PREFACE.len()], PREFACE);
    let mut rest = &out[PREFACE.len()..];
    let mut server = loona_hpack::Decoder::new();
    let mut seen = Vec::new();
    let mut fragment = Vec::new();
    while !rest.is_empty() {
        let h = FrameHeader::parse(rest).expect("a whole frame header");
        let (raw, tail) = rest.split_at(FRAME_HEADER_LEN + h.len);
        rest = tail;
        let payload = &raw[FRAME_HEADER_LEN..];
        match h.kind {
            HEADERS => {
                assert!(h.len <= MAX_FRAME, "a {}-byte HEADERS frame", h.len);
                assert_eq!(h.flags & PADDED, 0);
                let plen = if h.flags & PRIORITY != 0 {
                    PRIORITY_LEN
                } else {
                    0
                };
                let (priority, frag) = payload.split_at(plen);
                fragment = frag.to_vec();
                seen.push(Seen::Headers {
                    stream: h.stream,
                    flags: h.flags,
                    priority: priority.to_vec(),
                    frames: 1,
                    fields: Vec::new(),
                });
            }
            CONTINUATION => {
                assert!(h.len <= MAX_FRAME, "a {}-byte CONTINUATION frame", h.len);
                let Some(Seen::Headers { stream, frames, .. }) = seen.last_mut() else {
                    panic!("a CONTINUATION after no HEADERS");
                };
                assert_eq!(*stream, h.stream);
                *frames += 1;
                fragment.extend_from_slice(payload);
            }
            _ => seen.push(Seen::Other(raw.to_vec())),
        }
        if matches!(h.kind, HEADERS | CONTINUATION) && h.flags & END_HEADERS != 0 {
            let Some(Seen::Headers { fields, .. }) = seen.last_mut() else {
                unreachable!()
            };
            *fields = server.decode(&fragment).expect("valid HPACK from us");
        }
    }
    seen
}

fn headers_seen(stream: u32, flags: u8, fields: Fields) -> Seen {
    Seen::Headers {
        stream,
        flags,
        priority: Vec::new(),
        frames: 1,
        fields,
    }
}

/// A connection's start: preface, SETTINGS, WINDOW_UPDATE.
fn opening() -> Vec<u8> {
    let mut c = PREFACE.to_vec();
    c.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0x10, 0, 0]));
    c.extend(frame(WINDOW_UPDATE, 0, 0, &[0, 0x0f, 0, 1]));
    c
}

#[test]
fn replaces_a_bad_authority_and_passes_everything_else() {
    let mut client = loona_hpack::Encoder::new();
    let mut input = opening();
    input.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &encode(&mut client, &request(BAD)),
    ));
    let data = frame(DATA, END_STREAM, 1, b"\0\0\0\0\x05hello");
    input.extend(&data);

    let out = through(vec![input.clone()], 1 << 16).unwrap();
    assert_eq!(&out[..opening().len()], &opening()[..]);
    let seen = server_view(&out);
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen[2], headers_seen(1, END_HEADERS, request(b"localhost")));
    assert_eq!(seen[3], Seen::Other(data));

    // Split anywhere, read in any size: h2 reads the same bytes.
    for split in 1..input.len() {
        let pieces = vec![input[..split].to_vec(), input[split..].to_vec()];
        assert_eq!(through(pieces, 1 << 16).unwrap(), out, "split at {split}");
    }
    for read_size in 1..=20 {
        assert_eq!(through(vec![input.clone()], read_size).unwrap(), out);
    }
    let bytes = input.iter().map(|b| vec![*b]).collect();
    assert_eq!(through(bytes, 3).unwrap(), out);
}

#[test]
fn a_valid_first_authority_lets_the_connection_through_untouched() {
    for authority in [
        &b"localhost"[..],
        b"[::1]:50051",
        b"example.com:443",
        b"vmm.local",
    ] {
        let mut client = loona_hpack::Encoder::new();
        let mut input = opening();
        let block = encode(&mut client, &request(authority));
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &block));
        input.extend(frame(DATA, END_STREAM, 3, b"x"));
        // Decided: later blocks pass as they are, bad authority or not.
        let block = encode(&mut client, &request(BAD));
        input.extend(frame(
            HEADERS,
            PADDED | END_HEADERS,
            5,
            &[&[1][..], &block, &[0]].concat(),
        ));
        for read_size in [1, 10, 4096] {
            assert_eq!(through(vec![input.clone()], read_size).unwrap(), input);
        }
    }
    // RFC 7541 C.4: three requests in Huffman code, the later ones naming entries that
    // the earlier ones added to the table.
    let mut input = opening();
    for (stream, block) in [
        &b"\x82\x86\x84\x41\x8c\xf1\xe3\xc2\xe5\xf2\x3a\x6b\xa0\xab\x90\xf4\xff"[..],
        b"\x82\x86\x84\xbe\x58\x86\xa8\xeb\x10\x64\x9c\xbf",
        b"\x82\x87\x85\xbf\x40\x88\x25\xa8\x49\xe9\x5b\xa9\x7d\x7f\x89\x25\xa8\x49\xe9\x5b\xb8\xe8\xb4\xbf",
    ]
    .into_iter()
    .enumerate()
    {
        input.extend(frame(HEADERS, END_HEADERS, 1 + 2 * stream as u32, block));
    }
    let out = through(vec![input.clone()], 4096).unwrap();
    assert_eq!(out, input);
    let Seen::Headers { fields: third, .. } = &server_view(&out)[4] else {
        panic!("no third request");
    };
    assert_eq!(
        third[3],
        (b":authority".to_vec(), b"www.example.com".to_vec())
    );
}

/// What grpcio 1.85.1 sent for three calls on a channel to `unix:/tmp/sb/api.sock`
/// (Status, Status, List), captured on the socket: Huffman-coded literals in the
/// first request, table entries in the later ones.
const GRPCIO_CALLS: &[&str] = &[
    "505249202a20485454502f322e300d0a0d0a534d0d0a0d0a0000240400000000000002000000000003000000",
    "00000400400000000500400000000600004000fe0300000001000004080000000000003f0001000000040100",
    "0000000000df01040000000140053a706174681e2f766d6d2e73616e64626f782e76312e53616e64626f782f",
    "537461747573400a3a617574686f7269747913746d7025324673622532466170692e736f636b8386400c636f",
    "6e74656e742d74797065106170706c69636174696f6e2f677270634002746508747261696c65727340146772",
    "70632d6163636570742d656e636f64696e67176964656e746974792c206465666c6174652c20677a6970400a",
    "757365722d6167656e7430677270632d707974686f6e2f312e38352e3120677270632d632f35382e302e3020",
    "286c696e75783b20636874747032290000040800000000010000000500000500010000000100000000000000",
    "08010400000003c3c28386c1c0bfbe0000040800000000030000000500000500010000000300000000000000",
    "2b01040000000540053a706174681c2f766d6d2e73616e64626f782e76312e53616e64626f782f4c697374c3",
    "8386c2c1c0bf0000040800000000050000000500000800010000000500000000030a012f0000040800000000",
    "000000000f",
];

fn grpcio_calls() -> Vec<u8> {
    let hex = GRPCIO_CALLS.concat();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn rewrites_what_grpcio_sends() {
    let input = grpcio_calls();
    let out = through(vec![input.clone()], 1 << 16).unwrap();
    let headers: Vec<Fields> = server_view(&out)
        .into_iter()
        .filter_map(|seen| match seen {
            Seen::Headers { fields, .. } => Some(fields),
            Seen::Other(_) => None,
        })
        .collect();
    let call = |path: &[u8]| {
        fields(&[
            (":path", path),
            (":authority", b"localhost"),
            (":method", b"POST"),
            (":scheme", b"http"),
            ("content-type", b"application/grpc"),
            ("te", b"trailers"),
            ("grpc-accept-encoding", b"identity, deflate, gzip"),
            (
                "user-agent",
                b"grpc-python/1.85.1 grpc-c/58.0.0 (linux; chttp2)",
            ),
        ])
    };
    let status = call(b"/vmm.sandbox.v1.Sandbox/Status");
    let list = call(b"/vmm.sandbox.v1.Sandbox/List");
    assert_eq!(headers, [status.clone(), status, list]);
    for split in 1..input.len() {
        let pieces = vec![input[..split].to_vec(), input[split..].to_vec()];
        assert_eq!(through(pieces, 1 << 16).unwrap(), out, "split at {split}");
    }
}

#[test]
fn joins_continuation_frames_into_one_block() {
    let mut client = loona_hpack::Encoder::new();
    let block = encode(&mut client, &request(BAD));
    let (a, rest) = block.split_at(10);
    let (b, c) = rest.split_at(7);
    let mut input = opening();
    input.extend(frame(HEADERS, 0, 5, a));
    input.extend(frame(CONTINUATION, 0, 5, b));
    input.extend(frame(CONTINUATION, END_HEADERS, 5, c));
    let out = through(vec![input.clone()], 4096).unwrap();
    let seen = server_view(&out);
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2], headers_seen(5, END_HEADERS, request(b"localhost")));
    for read_size in [1, 2, 9, 10, 11] {
        assert_eq!(through(vec![input.clone()], read_size).unwrap(), out);
    }
}

#[test]
fn drops_padding_and_keeps_priority_and_end_stream() {
    let mut client = loona_hpack::Encoder::new();
    let priority = [0x80, 0, 0, 3, 200];
    let mut payload = vec![7];
    payload.extend_from_slice(&priority);
    payload.extend(encode(&mut client, &request(BAD)));
    payload.extend_from_slice(&[0; 7]);
    let flags = PADDED | PRIORITY | END_STREAM | END_HEADERS;
    let mut input = opening();
    input.extend(frame(HEADERS, flags, 7, &payload));
    let seen = server_view(&through(vec![input], 4096).unwrap());
    assert_eq!(
        seen[2],
        Seen::Headers {
            stream: 7,
            flags: PRIORITY | END_STREAM | END_HEADERS,
            priority: priority.to_vec(),
            frames: 1,
            fields: request(b"localhost"),
        }
    );
}

/// An HPACK string literal, without Huffman code (short strings only).
fn lit(s: &[u8]) -> Vec<u8> {
    assert!(s.len() < 127);
    let mut v = vec![s.len() as u8];
    v.extend_from_slice(s);
    v
}

#[test]
fn follows_the_hpack_tables_across_requests() {
    // As grpcio does: the first request adds its fields (the bad authority among them)
    // to the client's table, later ones name the entries, between DATA frames.
    let path = b"/vmm.sandbox.v1.Sandbox/Status";
    let mut first = vec![0x83, 0x86, 0x44]; // POST, http, :path with indexing
    first.extend(lit(path));
    first.push(0x41); // :authority with indexing
    first.extend(lit(BAD));
    first.extend([0x5f, 0x10]); // content-type with indexing (name index 31)
    first.extend_from_slice(b"application/grpc");
    first.push(0x40); // a new name with indexing
    first.extend(lit(b"te"));
    first.extend(lit(b"trailers"));
    // Table now: te (62), content-type (63), :authority (64), :path (65).
    let again = [0x83, 0x86, 0xc1, 0xc0, 0xbf, 0xbe];
    // A table size update to 0 empties the table; then the request is literal again.
    let mut emptied = vec![0x20, 0x3f, 0xe1, 0x1f]; // sizes 0, then 4096
    emptied.extend_from_slice(&first);
    let mut input = opening();
    for (stream, block) in [
        (1, &first[..]),
        (3, &again[..]),
        (5, &again[..]),
        (7, &emptied[..]),
        (9, &again[..]),
    ] {
        input.extend(frame(HEADERS, END_HEADERS, stream, block));
        input.extend(frame(DATA, 0, stream, &[stream as u8; 30]));
    }
    let seen = server_view(&through(vec![input], 4096).unwrap());
    assert_eq!(seen.len(), 2 + 2 * 5);
    for (i, stream) in [1, 3, 5, 7, 9].into_iter().enumerate() {
        assert_eq!(
            seen[2 + 2 * i],
            headers_seen(stream, END_HEADERS, request(b"localhost"))
        );
        assert_eq!(
            seen[3 + 2 * i],
            Seen::Other(frame(DATA, 0, stream, &[stream as u8; 30]))
        );
    }
}

#[test]
fn splits_a_large_block_into_frames_of_at_most_max_frame() {
    let mut client = loona_hpack::Encoder::new();
    let mut req = request(BAD);
    req.push((b"x-big".to_vec(), vec![b'b'; 40_000]));
    let block = encode(&mut client, &req);
    let mut input = opening();
    let mut chunks = block.chunks(MAX_FRAME).peekable();
    let mut kind = HEADERS;
    while let Some(chunk) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            END_HEADERS
        } else {
            0
        };
        input.extend(frame(
            kind,
            flags | (END_STREAM * u8::from(kind == HEADERS)),
            1,
            chunk,
        ));
        kind = CONTINUATION;
    }
    let seen = server_view(&through(vec![input], 1 << 16).unwrap());
    assert_eq!(
        seen[2],
        Seen::Headers {
            stream: 1,
            flags: END_STREAM,
            priority: Vec::new(),
            frames: 3,
            fields: with_authority(req, b"localhost"),
        }
    );
}

#[test]
fn passes_what_is_not_http2_untouched() {
    let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x00\x01\x01\x04garbage".to_vec();
    assert_eq!(through(vec![input.clone()], 7).unwrap(), input);
    let short = PREFACE[..10].to_vec();
    assert_eq!(through(vec![short.clone()], 3).unwrap(), short);
}

/// The client's bytes for a connection that sent `frames` after its opening; the
/// rewriter must fail it with `expected` in the message, after passing the opening.
fn assert_fails(frames: Vec<u8>, expected: &str) {
    let mut input = opening();
    input.extend(frames);
    for read_size in [1, 4096] {
        let err = through(vec![input.clone()], read_size).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains(expected), "{err} for {expected}");
    }
}

#[test]
fn malformed_input_fails_the_connection() {
    let mut client = loona_hpack::Encoder::new();
    let block = encode(&mut client, &request(BAD));

    // An index past both tables; an integer that never ends.
    assert_fails(frame(HEADERS, END_HEADERS, 1, &[0x82, 0xff, 0x7f]), "HPACK");
    assert_fails(frame(HEADERS, END_HEADERS, 1, &[0xff; 8]), "HPACK");
    // The client's table may not grow past the server's setting (4096).
    let mut grow = vec![0x3f, 0xe2, 0x1f];
    grow.extend_from_slice(&block);
    assert_fails(frame(HEADERS, END_HEADERS, 1, &grow), "HPACK");

    assert_fails(frame(CONTINUATION, END_HEADERS, 1, &block), "continues no");
    let mut open = frame(HEADERS, 0, 1, &block[..5]);
    open.extend(frame(DATA, 0, 1, b"x"));
    assert_fails(open, "type 0x0 where a CONTINUATION for stream 1");
    let mut other = frame(HEADERS, 0, 1, &block[..5]);
    other.extend(frame(CONTINUATION, END_HEADERS, 3, &block[5..]));
    assert_fails(other, "CONTINUATION for stream 1");

    assert_fails(
        frame(HEADERS, END_HEADERS, 1, &[0x82; MAX_FRAME + 1]),
        "maximum frame size",
    );
    let mut huge = frame(HEADERS, 0, 1, &[0x82; MAX_FRAME]);
    for _ in 0..4 {
        huge.extend(frame(CONTINUATION, 0, 1, &[0x82; MAX_FRAME]));
    }
    assert_fails(huge, "header block exceeds");

    assert_fails(frame(HEADERS, END_HEADERS | PADDED, 1, &[]), "padding");
    assert_fails(
        frame(HEADERS, END_HEADERS | PADDED, 1, &[4, 0x82, 0x86]),
        "padding",
    );
    assert_fails(
        frame(HEADERS, END_HEADERS | PRIORITY, 1, &[0, 0, 0]),
        "padding",
    );

    // A small block that names a 4000-byte table entry a hundred times.
    let mut big = request(BAD);
    big.push((b"x-big".to_vec(), vec![b'b'; 4000]));
    let mut client = loona_hpack::Encoder::new();
    let mut bomb = frame(HEADERS, END_HEADERS, 1, &encode(&mut client, &big));
    bomb.extend(frame(HEADERS, END_HEADERS, 3, &[0x80 | 62; 100]));
    assert_fails(bomb, "decoded header list exceeds");
}

#[test]
fn mangled_input_never_panics() {
    // grpcio's bytes with a few bytes changed, cut short or in random pieces: each run
    // ends in some output or an error, never a panic.
    let input = grpcio_calls();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |bound: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % bound as u64) as usize
    };
    for _ in 0..300 {
        let mut mangled = input.clone();
        for _ in 0..1 + next(4) {
            let at = PREFACE.len() + next(mangled.len() - PREFACE.len());
            mangled[at] = next(256) as u8;
        }
        mangled.truncate(PREFACE.len() + next(mangled.len() - PREFACE.len() + 1));
        let mut pieces = Vec::new();
        while !mangled.is_empty() {
            let n = 1 + next(mangled.len().min(64));
            pieces.push(mangled.drain(..n).collect());
        }
        let _ = through(pieces, 1 + next(100));
    }
}
