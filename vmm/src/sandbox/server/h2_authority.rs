//! Makes the API server accept the `:authority` that stock gRPC clients send on a Unix
//! socket.
//!
//! grpcio (C core) since 1.57, grpc-java and grpc-swift derive the `:authority` of a
//! `unix:` target from the socket path, e.g. `tmp%2Fsb%2Fapi.sock`. The API server's
//! HTTP/2 layer (h2, under hyper and tonic) parses `:authority` as a URI authority,
//! finds `%` or `/` in a host name invalid, and resets every such stream with
//! PROTOCOL_ERROR before our service sees it; neither h2, hyper nor tonic has a
//! setting to relax this. On a Unix socket the authority carries no information (the
//! socket path already names the peer), so the fix is to hand h2 a valid one.
//!
//! [`RewriteAuthority`] wraps each accepted connection and edits what the client sends,
//! before h2 reads it: the preface and every frame other than HEADERS/CONTINUATION pass
//! through untouched, read straight into h2's buffer (only what a read brings in after
//! a header frame is held back and copied once). A header block (HEADERS plus its
//! CONTINUATIONs) is collected and decoded with the client's HPACK context. The
//! connection's first block decides:
//! - When h2 accepts its `:authority` (or it has none), that block and everything after
//!   it pass through untouched, and h2's HPACK context stays the client's. A gRPC
//!   client's authority belongs to its channel and is the same on every call, so a
//!   client such as tonic (ours) pays for one decoded block per connection: every tonic
//!   request carries its `:path` as a Huffman-coded literal, which loona-hpack decodes
//!   slowly (tens of microseconds).
//! - Otherwise this block and every later one are rewritten: `:authority` becomes
//!   `localhost` where h2 would reject it, and the block is re-encoded with an HPACK
//!   context of our own, which h2's decoder then follows (every block reaches it through
//!   our encoder).
//!
//! What the server sends passes untouched.
//!
//! Input that is not valid (a broken frame, bad HPACK, an oversized header block) ends
//! the connection with an I/O error, which closes only that connection.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What every HTTP/2 client sends first (RFC 9113 section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE of the API server: hyper's default, which tonic keeps. A
/// client may send no larger frame, and the header frames we make are no larger.
const MAX_FRAME: usize = 16 << 10;
/// The most encoded header block we collect (all its frames together).
const MAX_BLOCK: usize = 64 << 10;
/// The most decoded header list (as HPACK counts it: name + value + 32 per field). It is
/// above the server's own limit (16 KiB, hyper's default), so h2 still answers a list
/// between the two as it would without us; a longer one ends the connection here.
const MAX_HEADER_LIST: usize = 64 << 10;
/// SETTINGS_HEADER_TABLE_SIZE: the server never changes the protocol's default, so this
/// bounds the client's HPACK table and is the size of h2's decoder table.
const HEADER_TABLE_SIZE: usize = 4096;
/// What replaces an authority that h2 would reject.
const REPLACEMENT: &[u8] = b"localhost";

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const PRIORITY_LEN: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("a {len}-byte header frame exceeds the maximum frame size of {MAX_FRAME}")]
    FrameTooLarge { len: usize },
    #[error("a header block exceeds {MAX_BLOCK} bytes")]
    BlockTooLarge,
    #[error("a decoded header list exceeds {MAX_HEADER_LIST} bytes")]
    ListTooLarge,
    #[error("a HEADERS frame's padding or priority fields exceed its payload")]
    BadPadding,
    #[error("a CONTINUATION frame that continues no header block")]
    StrayContinuation,
    #[error("a frame of type {kind:#x} where a CONTINUATION for stream {stream} must come")]
    ContinuationExpected { kind: u8, stream: u32 },
    #[error("malformed HPACK header block")]
    Hpack(#[source] loona_hpack::decoder::DecoderError),
}

/// Where the client's byte stream is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum At {
    /// In the preface, this many bytes into it.
    Preface(usize),
    /// At the start of a frame.
    FrameStart,
    /// Inside a frame that passes through: this many of its bytes still to come.
    Passing(usize),
    /// Everything passes from here on: the client's authority needs no fix, or the
    /// stream is not HTTP/2 (a wrong preface, which h2 rejects).
    Through,
}

struct FrameHeader {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl FrameHeader {
    fn parse(b: &[u8]) -> Option<FrameHeader> {
        let b: &[u8; FRAME_HEADER_LEN] = b.get(..FRAME_HEADER_LEN)?.try_into().ok()?;
        Some(FrameHeader {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize,
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        })
    }

    fn write(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
        out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
    }
}

/// A header block being collected.
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    fragment: Vec<u8>,
    /// Its frames as received, while they may yet be passed on unchanged.
    raw: Vec<u8>,
}

/// What `Rewriter::take` did with the frame at the start of its input.
#[derive(Debug, PartialEq)]
enum Took {
    /// Consumed this many bytes (one header frame).
    Frame(usize),
    /// The frame is not complete: the input must grow to this many bytes.
    NeedMore(usize),
}

/// The client-to-server HTTP/2 stream as a state machine over bytes, with no I/O.
struct Rewriter {
    at: At,
    block: Option<Block>,
    /// The client's HPACK context.
    decoder: loona_hpack::Decoder<'static>,
    /// Ours, toward h2.
    encoder: loona_hpack::Encoder<'static>,
    /// The connection's header blocks are rewritten (decided by its first one).
    rewriting: bool,
}

impl Rewriter {
    fn new() -> Rewriter {
        let mut decoder = loona_hpack::Decoder::new();
        // A client may not grow its table past the server's setting; refusing larger
        // size updates also bounds the memory a client can make us hold.
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Rewriter {
            at: At::Preface(0),
            block: None,
            decoder,
            encoder: loona_hpack::Encoder::new(),
            rewriting: false,
        }
    }

    /// How many leading bytes of `data` (at most `limit`) pass through unchanged; the
    /// state moves past them. It stops before a header frame and before a frame header
    /// that is not complete in `data` (both then go to `take`).
    fn pass(&mut self, data: &[u8], limit: usize) -> usize {
        let limit = limit.min(data.len());
        let mut i = 0;
        loop {
            match self.at {
                At::Through => return limit,
                At::Preface(seen) => {
                    let want = &PREFACE[seen..];
                    let have = &data[i..];
                    let n = want.len().min(have.len());
                    if want[..n] != have[..n] {
                        self.at = At::Through;
                        continue;
                    }
                    let n = n.min(limit - i);
                    i += n;
                    if seen + n < PREFACE.len() {
                        self.at = At::Preface(seen + n);
                        return i;
                    }
                    self.at = At::FrameStart;
                }
                At::Passing(left) => {
                    let n = left.min(limit - i);
                    i += n;
                    if n < left {
                        self.at = At::Passing(left - n);
                        return i;
                    }
                    self.at = At::FrameStart;
                }
                At::FrameStart => match FrameHeader::parse(&data[i..]) {
                    Some(h)
                        if self.block.is_none() && h.kind != HEADERS && h.kind != CONTINUATION =>
                    {
                        self.at = At::Passing(FRAME_HEADER_LEN + h.len);
                    }
                    _ => return i,
                },
            }
        }
    }

    /// Consumes the header frame at the start of `data` (where `pass` stopped), once it
    /// is complete; at the end of a header block, appends what h2 gets for it to `out`.
    fn take(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<Took, AuthorityError> {
        let Some(h) = FrameHeader::parse(data) else {
            return Ok(Took::NeedMore(FRAME_HEADER_LEN));
        };
        match (&self.block, h.kind) {
            (None, HEADERS) => {}
            (Some(b), CONTINUATION) if b.stream == h.stream => {}
            (None, _) => return Err(AuthorityError::StrayContinuation),
            (Some(b), kind) => {
                return Err(AuthorityError::ContinuationExpected {
                    kind,
                    stream: b.stream,
                })
            }
        }
        if h.len > MAX_FRAME {
            return Err(AuthorityError::FrameTooLarge { len: h.len });
        }
        let collected = self.block.as_ref().map_or(0, |b| b.fragment.len());
        if collected + h.len > MAX_BLOCK {
            return Err(AuthorityError::BlockTooLarge);
        }
        let Some(payload) = data.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + h.len) else {
            return Ok(Took::NeedMore(FRAME_HEADER_LEN + h.len));
        };
        let block = match &mut self.block {
            Some(block) => {
                block.fragment.extend_from_slice(payload);
                block
            }
            None => self.block.insert(Block::from_headers(&h, payload)?),
        };
        let frame_len = FRAME_HEADER_LEN + h.len;
        if !self.rewriting {
            block.raw.extend_from_slice(&data[..frame_len]);
        }
        self.at = At::FrameStart;
        if h.flags & END_HEADERS != 0 {
            if let Some(block) = self.block.take() {
                self.finish(block, out)?;
            }
        }
        Ok(Took::Frame(frame_len))
    }

    /// Decodes a whole header block and appends to `out` what h2 gets for it: the
    /// block unchanged, or with its authority fixed as a HEADERS frame and as many
    /// CONTINUATIONs as its size needs.
    fn finish(&mut self, block: Block, out: &mut Vec<u8>) -> Result<(), AuthorityError> {
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut size = 0;
        // The size is checked field by field: a short block can name a 4 KiB table
        // entry thousands of times.
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                size += name.len() + value.len() + 32;
                if size <= MAX_HEADER_LIST {
                    fields.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(AuthorityError::Hpack)?;
        if size > MAX_HEADER_LIST {
            return Err(AuthorityError::ListTooLarge);
        }
        let rejected = |name: &[u8], value: &[u8]| {
            name == b":authority" && http::uri::Authority::try_from(value).is_err()
        };
        if !self.rewriting {
            let Some((_, value)) = fields.iter().find(|(n, v)| rejected(n, v)) else {
                out.extend_from_slice(&block.raw);
                self.at = At::Through;
                return Ok(());
            };
            log::debug!(
                "API: a client's :authority {:?} is no valid authority; h2 gets {:?}",
                String::from_utf8_lossy(value),
                String::from_utf8_lossy(REPLACEMENT)
            );
            self.rewriting = true;
        }
        for (name, value) in &mut fields {
            if rejected(name, value) {
                *value = REPLACEMENT.to_vec();
            }
        }
        let encoded = self
            .encoder
            .encode(fields.iter().map(|(n, v)| (&n[..], &v[..])));

        let first_room = MAX_FRAME - block.priority.map_or(0, |p| p.len());
        let (first, mut rest) = encoded.split_at(first_room.min(encoded.len()));
        let mut flags = if block.end_stream { END_STREAM } else { 0 };
        if block.priority.is_some() {
            flags |= PRIORITY;
        }
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        let priority = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
        FrameHeader::write(
            out,
            priority.len() + first.len(),
            HEADERS,
            flags,
            block.stream,
        );
        out.extend_from_slice(priority);
        out.extend_from_slice(first);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(MAX_FRAME.min(rest.len()));
            let flags = if tail.is_empty() { END_HEADERS } else { 0 };
            FrameHeader::write(out, chunk.len(), CONTINUATION, flags, block.stream);
            out.extend_from_slice(chunk);
            rest = tail;
        }
        Ok(())
    }
}

impl Block {
    /// The start of a block, from a HEADERS frame: without its padding, which has done
    /// its job on the client's side of us.
    fn from_headers(h: &FrameHeader, payload: &[u8]) -> Result<Block, AuthorityError> {
        let mut p = payload;
        let mut pad = 0;
        if h.flags & PADDED != 0 {
            let (&len, tail) = p.split_first().ok_or(AuthorityError::BadPadding)?;
            pad = len as usize;
            p = tail;
        }
        let mut priority = None;
        if h.flags & PRIORITY != 0 {
            let (fields, tail) = p
                .split_at_checked(PRIORITY_LEN)
                .ok_or(AuthorityError::BadPadding)?;
            let mut kept = [0; PRIORITY_LEN];
            kept.copy_from_slice(fields);
            priority = Some(kept);
            p = tail;
        }
        let end = p.len().checked_sub(pad).ok_or(AuthorityError::BadPadding)?;
        Ok(Block {
            stream: h.stream,
            end_stream: h.flags & END_STREAM != 0,
            priority,
            fragment: p[..end].to_vec(),
            raw: Vec::new(),
        })
    }
}

/// An accepted API connection whose client-to-server bytes go through a [`Rewriter`].
pub struct RewriteAuthority<S> {
    inner: S,
    rewriter: Rewriter,
    /// Client bytes read but not handed on yet: a header frame being completed, and
    /// whatever came after it in the same read.
    held: BytesMut,
    /// Rewritten header frames not handed on yet.
    out: BytesMut,
    /// Why the connection failed; every later read fails the same way.
    failed: Option<String>,
}

impl<S> RewriteAuthority<S> {
    pub fn new(inner: S) -> Self {
        RewriteAuthority {
            inner,
            rewriter: Rewriter::new(),
            held: BytesMut::new(),
            out: BytesMut::new(),
            failed: None,
        }
    }

    fn fail(&mut self, err: AuthorityError) -> io::Error {
        let mut why = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(e) = source {
            why = format!("{why}: {e}");
            source = e.source();
        }
        log::warn!("API: closing a client connection: {why}");
        let msg = format!("API client sent invalid HTTP/2: {why}");
        self.failed = Some(msg.clone());
        io::Error::new(io::ErrorKind::InvalidData, msg)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for RewriteAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(msg) = &this.failed {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, msg.clone())));
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if !this.held.is_empty() {
                let n = this.rewriter.pass(&this.held, buf.remaining());
                if n > 0 {
                    buf.put_slice(&this.held[..n]);
                    this.held.advance(n);
                    return Poll::Ready(Ok(()));
                }
                let mut rewritten = Vec::new();
                match this.rewriter.take(&this.held, &mut rewritten) {
                    Ok(Took::Frame(n)) => {
                        this.held.advance(n);
                        this.out.extend_from_slice(&rewritten);
                    }
                    Ok(Took::NeedMore(total)) => {
                        // Reads only the rest of this frame: `held` never grows past
                        // one header frame plus what an earlier read brought along.
                        let have = this.held.len();
                        this.held.resize(total, 0);
                        let mut more = ReadBuf::new(&mut this.held[have..]);
                        let polled = Pin::new(&mut this.inner).poll_read(cx, &mut more);
                        let got = more.filled().len();
                        this.held.truncate(have + got);
                        ready!(polled)?;
                        if got == 0 {
                            // End of stream inside a frame: h2 sees the end of stream.
                            return Poll::Ready(Ok(()));
                        }
                    }
                    Err(e) => return Poll::Ready(Err(this.fail(e))),
                }
                continue;
            }
            // Nothing held: read straight into h2's buffer and keep back only what
            // starts at a header frame.
            let start = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let new = &buf.filled()[start..];
            if new.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let n = this.rewriter.pass(new, new.len());
            if n < new.len() {
                this.held.extend_from_slice(&new[n..]);
                buf.set_filled(start + n);
            }
            if n > 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for RewriteAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for RewriteAuthority<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests;
