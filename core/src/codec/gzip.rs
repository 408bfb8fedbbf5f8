//! Seek points in a gzip stream, the zran technique: while a layer is
//! streamed once, [`GzipIndexer`] notes every few MiB of output a deflate
//! block boundary (where in the compressed stream, at which bit) with the
//! 32 KiB of output before it; [`inflate_from`] later resumes inflating at
//! such a point from a range read of the blob instead of from its start.
//!
//! Multi-member streams (concatenated gzip members, as `pigz` and some
//! image builders write) are followed member after member; each member's
//! CRC-32 and length are checked while indexing.

use std::io::{self, Read};

use crate::content::GzipPoint;

/// Uncompressed bytes between two seek points, by default.
pub const DEFAULT_SPACING: u64 = 4 << 20;

/// The deflate window: the most a back-reference reaches.
pub const WINDOW: usize = 32 << 10;

/// Input read from the compressed stream at a time.
const INPUT_BUF: usize = 64 << 10;

/// Bytes a point costs in an index besides its window (offsets, bits, length).
const POINT_OVERHEAD: u64 = 16;

impl GzipPoint {
    /// Where a read of the compressed stream must start to resume here:
    /// `compressed`, or the byte before it if `bits` of it are still input.
    pub fn input_start(&self) -> u64 {
        if self.bits > 0 {
            self.compressed.saturating_sub(1)
        } else {
            self.compressed
        }
    }
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// The stream ended early: `UnexpectedEof` inside this module, so that
/// [`inflate_from`] can say which offset it did not reach; the indexer
/// reports it as `InvalidData`.
fn truncated(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, message.into())
}

// ---------------------------------------------------------------------------
// The compressed input, with the exact count of bytes its consumers took.

/// A buffered reader that knows the stream offset of every byte it hands
/// out: what was consumed is exactly what its users took, whatever it
/// read ahead.
pub(super) struct Input<R> {
    inner: R,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    /// The stream offset of `buf[0]`.
    base: u64,
    /// A read of the stream returned nothing.
    eof: bool,
}

impl<R> Input<R> {
    pub(super) fn new(inner: R) -> Self {
        Input {
            inner,
            buf: vec![0; INPUT_BUF].into_boxed_slice(),
            pos: 0,
            len: 0,
            base: 0,
            eof: false,
        }
    }

    /// An input whose first byte is at `offset` of its stream.
    pub(super) fn at(inner: R, offset: u64) -> Self {
        Input {
            base: offset,
            ..Input::new(inner)
        }
    }

    /// Whether the stream's end was seen.
    pub(super) fn at_eof(&self) -> bool {
        self.eof
    }

    /// The stream offset of the next byte a consumer gets.
    pub(super) fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.len);
    }
}

impl<R: Read> Input<R> {
    /// The buffered bytes, read from the stream if none are; empty at its end.
    pub(super) fn fill(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.len {
            self.base += self.len as u64;
            self.pos = 0;
            self.len = read_retrying(&mut self.inner, &mut self.buf)?;
            self.eof |= self.len == 0;
        }
        Ok(&self.buf[self.pos..self.len])
    }

    /// The next `n` (≤ the buffer's size) bytes without consuming them;
    /// fewer only at the end of the stream.
    pub(super) fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        debug_assert!(n <= self.buf.len());
        if self.len - self.pos < n {
            self.buf.copy_within(self.pos..self.len, 0);
            self.base += self.pos as u64;
            self.len -= self.pos;
            self.pos = 0;
            while self.len < n {
                let got = read_retrying(&mut self.inner, &mut self.buf[self.len..])?;
                if got == 0 {
                    self.eof = true;
                    break;
                }
                self.len += got;
            }
        }
        Ok(&self.buf[self.pos..self.len.min(self.pos + n)])
    }

    pub(super) fn byte(&mut self) -> io::Result<Option<u8>> {
        let b = self.fill()?.first().copied();
        self.consume(usize::from(b.is_some()));
        Ok(b)
    }

    /// Skips `n` bytes; the count skipped (short at the end of the stream).
    pub(super) fn skip(&mut self, mut n: u64) -> io::Result<u64> {
        let want = n;
        while n > 0 {
            let avail = self.fill()?.len();
            if avail == 0 {
                break;
            }
            let take = avail.min(usize::try_from(n).unwrap_or(usize::MAX));
            self.consume(take);
            n -= take as u64;
        }
        Ok(want - n)
    }
}

impl<R: Read> Read for Input<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

fn read_retrying(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

// ---------------------------------------------------------------------------
// zlib through its C API: the only place ocifs-core calls unsafe code.

/// The zlib calls the zran technique needs and flate2 does not offer
/// (`inflatePrime`, `inflateSetDictionary` on a raw stream, `Z_BLOCK`).
/// zlib-rs is pure Rust, but its C API takes a `z_stream` of raw pointers.
#[allow(unsafe_code)]
mod zlib {
    use std::ffi::{CStr, c_int};
    use std::io;

    use libz_rs_sys as z;

    /// What an inflate call came to.
    #[derive(Debug, PartialEq, Eq)]
    pub(super) enum Status {
        /// Progress, or a block boundary (`Z_BLOCK`).
        Ok,
        /// The end of the deflate stream.
        End,
        /// No progress was possible: more input is needed.
        NeedInput,
    }

    /// A raw-deflate inflate stream. The `z_stream` is boxed because zlib's
    /// state points back at it: it must never move between calls.
    pub(super) struct Inflater {
        strm: Box<z::z_stream>,
    }

    // SAFETY: the z_stream and the state it owns are reached only through
    // `&mut self`; nothing in them is tied to the thread that made them
    // (no thread-locals; the allocator is Rust's global one).
    unsafe impl Send for Inflater {}

    impl std::fmt::Debug for Inflater {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Inflater")
                .field("total_in", &self.strm.total_in)
                .field("total_out", &self.strm.total_out)
                .finish()
        }
    }

    impl Inflater {
        /// A raw inflater (no zlib or gzip wrapper), 32 KiB window.
        pub(super) fn raw() -> io::Result<Self> {
            // z_stream::default() sets the Rust allocator and null pointers.
            let mut strm = Box::new(z::z_stream::default());
            let size = c_int::try_from(size_of::<z::z_stream>()).unwrap_or(c_int::MAX);
            // SAFETY: `strm` is a valid z_stream with its allocator set and
            // no input or output; the version string is the library's own
            // NUL-terminated constant.
            let ret = unsafe { z::inflateInit2_(&mut *strm, -15, z::zlibVersion(), size) };
            if ret != z::Z_OK {
                return Err(io::Error::other(format!("inflateInit2 failed ({ret})")));
            }
            Ok(Inflater { strm })
        }

        /// Back to the start of a deflate stream, keeping the allocation.
        pub(super) fn reset(&mut self) -> io::Result<()> {
            // SAFETY: the stream was initialised by `raw` and never moved.
            let ret = unsafe { z::inflateReset(&mut *self.strm) };
            self.check(ret, "inflateReset")
        }

        /// Feeds the low `bits` (1 to 7) bits of `value` before any input.
        pub(super) fn prime(&mut self, bits: u8, value: u8) -> io::Result<()> {
            // SAFETY: as in `reset`; inflatePrime touches only the state.
            let ret =
                unsafe { z::inflatePrime(&mut *self.strm, c_int::from(bits), c_int::from(value)) };
            self.check(ret, "inflatePrime")
        }

        /// The output that precedes the resumed stream (at most 32 KiB).
        pub(super) fn set_dictionary(&mut self, dict: &[u8]) -> io::Result<()> {
            let len = u32::try_from(dict.len()).unwrap_or(u32::MAX);
            // SAFETY: as in `reset`; `dict` is valid for `len` ≤ its length
            // bytes during the call, and zlib copies what it keeps.
            let ret = unsafe { z::inflateSetDictionary(&mut *self.strm, dict.as_ptr(), len) };
            self.check(ret, "inflateSetDictionary")
        }

        /// Inflates from `input` into `output` (not empty), stopping at the
        /// end of a deflate block: (bytes consumed, bytes produced, status).
        pub(super) fn inflate(
            &mut self,
            input: &[u8],
            output: &mut [u8],
        ) -> io::Result<(usize, usize, Status)> {
            let in_len = u32::try_from(input.len()).unwrap_or(u32::MAX);
            let out_len = u32::try_from(output.len()).unwrap_or(u32::MAX);
            self.strm.next_in = input.as_ptr();
            self.strm.avail_in = in_len;
            self.strm.next_out = output.as_mut_ptr();
            self.strm.avail_out = out_len;
            // SAFETY: as in `reset`; `next_in`/`avail_in` describe `input`
            // and `next_out`/`avail_out` describe `output`, both borrowed for
            // the whole call; the pointers are cleared before returning, so
            // they never outlive the borrows.
            let ret = unsafe { z::inflate(&mut *self.strm, z::Z_BLOCK) };
            let used = (in_len - self.strm.avail_in) as usize;
            let made = (out_len - self.strm.avail_out) as usize;
            self.strm.next_in = std::ptr::null();
            self.strm.avail_in = 0;
            self.strm.next_out = std::ptr::null_mut();
            self.strm.avail_out = 0;
            match ret {
                z::Z_OK => Ok((used, made, Status::Ok)),
                z::Z_STREAM_END => Ok((used, made, Status::End)),
                z::Z_BUF_ERROR => Ok((used, made, Status::NeedInput)),
                _ => Err(super::invalid(format!(
                    "corrupt deflate data: {}",
                    self.message(ret)
                ))),
            }
        }

        /// zlib's `data_type` after the last call: the bits of input still
        /// unused (low 6 bits), 64 if the last block was reached, 128 at a
        /// block boundary.
        pub(super) fn data_type(&self) -> i32 {
            self.strm.data_type
        }

        fn check(&self, ret: c_int, call: &str) -> io::Result<()> {
            if ret == z::Z_OK {
                Ok(())
            } else {
                Err(io::Error::other(format!("{call}: {}", self.message(ret))))
            }
        }

        fn message(&self, ret: c_int) -> String {
            if self.strm.msg.is_null() {
                return format!("zlib error {ret}");
            }
            // SAFETY: zlib-rs points `msg` at a static NUL-terminated string.
            let msg = unsafe { CStr::from_ptr(self.strm.msg) };
            msg.to_string_lossy().into_owned()
        }
    }

    impl Drop for Inflater {
        fn drop(&mut self) {
            // SAFETY: the stream was initialised by `raw`; inflateEnd frees
            // its state once (the stream is not used afterwards).
            unsafe { z::inflateEnd(&mut *self.strm) };
        }
    }
}

use zlib::{Inflater, Status};

// ---------------------------------------------------------------------------
// gzip members.

/// FTEXT: a hint, ignored.
const FTEXT: u8 = 0b1;
const MAGIC: [u8; 2] = [0x1f, 0x8b];
const FHCRC: u8 = 0b10;
const FEXTRA: u8 = 0b100;
const FNAME: u8 = 0b1000;
const FCOMMENT: u8 = 0b1_0000;
const FRESERVED: u8 = !(FTEXT | FHCRC | FEXTRA | FNAME | FCOMMENT);

/// Reads a member header. `Ok(false)` at the end of the stream, if that
/// is where a header would start and `first` is not set.
fn read_header<R: Read>(input: &mut Input<R>, first: bool) -> io::Result<bool> {
    let at = input.offset();
    let fixed = input.peek(10)?;
    if fixed.is_empty() {
        return if first {
            Err(invalid("not a gzip stream: it is empty"))
        } else {
            Ok(false)
        };
    }
    let what = if first {
        "not a gzip stream".to_owned()
    } else {
        format!("bytes after the gzip stream's last member (at offset {at}) are not a gzip member")
    };
    if !MAGIC.starts_with(&fixed[..fixed.len().min(2)]) {
        let magic = hex::encode(&fixed[..fixed.len().min(2)]);
        return Err(invalid(format!(
            "{what} (they start with {magic}, not 1f8b)"
        )));
    }
    if fixed.len() < 10 {
        return Err(truncated(format!(
            "the gzip stream ends inside a member header (offset {at})"
        )));
    }
    let (method, flags) = (fixed[2], fixed[3]);
    if method != 8 {
        return Err(invalid(format!(
            "the gzip member at offset {at} uses compression method {method}, not deflate"
        )));
    }
    if flags & FRESERVED != 0 {
        return Err(invalid(format!(
            "the gzip member at offset {at} sets reserved header flags ({flags:#04x})"
        )));
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(fixed);
    input.consume(10);
    let cut = || {
        truncated(format!(
            "the gzip stream ends inside a member header (offset {at})"
        ))
    };
    let next = |input: &mut Input<R>, crc: &mut crc32fast::Hasher| -> io::Result<u8> {
        let b = input.byte()?.ok_or_else(cut)?;
        crc.update(&[b]);
        Ok(b)
    };
    if flags & FEXTRA != 0 {
        let len = u16::from_le_bytes([next(input, &mut crc)?, next(input, &mut crc)?]);
        for _ in 0..len {
            next(input, &mut crc)?;
        }
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            while next(input, &mut crc)? != 0 {}
        }
    }
    if flags & FHCRC != 0 {
        let want = crc.finalize() & 0xffff;
        let b0 = input.byte()?.ok_or_else(cut)?;
        let b1 = input.byte()?.ok_or_else(cut)?;
        let got = u32::from(u16::from_le_bytes([b0, b1]));
        if got != want {
            return Err(invalid(format!(
                "the gzip member at offset {at} has a bad header CRC ({got:#06x}, computed {want:#06x})"
            )));
        }
    }
    Ok(true)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before a member header (`first`: the stream's first).
    Header { first: bool },
    /// Inside a member's deflate data.
    Deflate,
    /// After a member's deflate data, before its 8-byte trailer.
    Trailer,
    /// After the last member.
    End,
}

/// What a step of [`Members`] came to.
#[derive(Debug)]
enum Event {
    /// Bytes produced; `boundary`: the inflater stopped at the end of a
    /// block that is not its member's last.
    Data { made: usize, boundary: bool },
    /// A member's deflate data starts here, with an empty window.
    Member,
    /// The stream ended after a member's trailer.
    End,
}

/// A gzip stream's members, inflated one after the other.
struct Members<R> {
    input: Input<R>,
    inflater: Inflater,
    state: State,
    /// Check each member's CRC-32 and length (only possible from its start).
    check: bool,
    crc: crc32fast::Hasher,
    member_out: u64,
}

impl<R: Read> Members<R> {
    /// The next bytes, into `out` (which must not be empty), or the next
    /// member boundary.
    fn step(&mut self, out: &mut [u8]) -> io::Result<Event> {
        loop {
            match self.state {
                State::End => return Ok(Event::End),
                State::Header { first } => {
                    if !read_header(&mut self.input, first)? {
                        self.state = State::End;
                        return Ok(Event::End);
                    }
                    self.inflater.reset()?;
                    self.crc = crc32fast::Hasher::new();
                    self.member_out = 0;
                    self.state = State::Deflate;
                    return Ok(Event::Member);
                }
                State::Trailer => {
                    let at = self.input.offset();
                    let trailer = self.input.peek(8)?;
                    if trailer.len() < 8 {
                        return Err(truncated(format!(
                            "the gzip stream ends inside a member trailer (offset {at})"
                        )));
                    }
                    let crc = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
                    let isize =
                        u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
                    self.input.consume(8);
                    if self.check {
                        let computed = std::mem::take(&mut self.crc).finalize();
                        if crc != computed {
                            return Err(invalid(format!(
                                "the gzip member ending at offset {at} has CRC-32 {crc:08x} but its data {computed:08x}"
                            )));
                        }
                        if u64::from(isize) != self.member_out & 0xffff_ffff {
                            return Err(invalid(format!(
                                "the gzip member ending at offset {at} states a length of {isize} (mod 2^32) but inflates to {}",
                                self.member_out
                            )));
                        }
                    }
                    self.state = State::Header { first: false };
                }
                State::Deflate => {
                    let at = self.input.offset();
                    let input = self.input.fill()?;
                    let eof = input.is_empty();
                    let (used, made, status) = self.inflater.inflate(input, out).map_err(|e| {
                        invalid(format!("{e} (compressed offset {at} or just before)"))
                    })?;
                    self.input.consume(used);
                    if self.check {
                        self.crc.update(&out[..made]);
                    }
                    self.member_out += made as u64;
                    let boundary = match status {
                        Status::End => {
                            self.state = State::Trailer;
                            false
                        }
                        Status::NeedInput if used == 0 && made == 0 => {
                            if eof {
                                return Err(truncated(format!(
                                    "the gzip stream ends inside deflate data (offset {at})"
                                )));
                            }
                            return Err(invalid(format!(
                                "inflate made no progress at compressed offset {at}"
                            )));
                        }
                        Status::NeedInput => false,
                        Status::Ok => {
                            let dt = self.inflater.data_type();
                            dt & 128 != 0 && dt & 64 == 0
                        }
                    };
                    if made > 0 || boundary {
                        return Ok(Event::Data { made, boundary });
                    }
                }
            }
        }
    }

    /// Where the next unused bit of input is, as a point's (compressed, bits).
    fn bit_position(&self) -> (u64, u8) {
        let unused = u64::from((self.inflater.data_type() & 63) as u8);
        let bit = (self.input.offset() * 8).saturating_sub(unused);
        let compressed = bit.div_ceil(8);
        (compressed, (compressed * 8 - bit) as u8)
    }
}

// ---------------------------------------------------------------------------
// The indexer.

/// Reads a gzip stream, yielding its uncompressed bytes, and records seek
/// points on the way (at most one per `spacing` bytes of output, each at
/// a deflate block boundary or a member start).
///
/// The output is bounded: past `limit` bytes it is an error (what the
/// stream's tar declares, found as it is walked: [`Self::set_limit`]). Errors are sticky: once a read failed, every later
/// one fails the same way.
pub struct GzipIndexer<R> {
    members: Members<R>,
    /// The last 32 KiB of output, written circularly; inflate writes here.
    ring: Box<[u8]>,
    /// Where the next output goes in `ring`.
    pos: usize,
    /// Bytes of `ring[..pos]` already handed to the reader.
    given: usize,
    out: u64,
    spacing: u64,
    limit: u64,
    points: Vec<GzipPoint>,
    failed: Option<(io::ErrorKind, String)>,
}

impl<R> std::fmt::Debug for GzipIndexer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GzipIndexer")
            .field("compressed", &self.members.input.offset())
            .field("uncompressed", &self.out)
            .field("points", &self.points.len())
            .finish()
    }
}

impl<R: Read> GzipIndexer<R> {
    /// Indexes the gzip stream `r`: a point every `spacing` bytes of output
    /// (at the first block boundary past it), output bounded by `limit`.
    pub fn new(r: R, spacing: u64, limit: u64) -> io::Result<Self> {
        Ok(GzipIndexer {
            members: Members {
                input: Input::new(r),
                inflater: Inflater::raw()?,
                state: State::Header { first: true },
                check: true,
                crc: crc32fast::Hasher::new(),
                member_out: 0,
            },
            ring: vec![0; WINDOW].into_boxed_slice(),
            pos: 0,
            given: 0,
            out: 0,
            spacing: spacing.max(1),
            limit,
            points: Vec::new(),
            failed: None,
        })
    }

    /// Bounds the output from here on to `limit` bytes in all (a walk
    /// that found the end of its tar allows only a little more).
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    /// Compressed bytes consumed so far.
    pub fn compressed_len(&self) -> u64 {
        self.members.input.offset()
    }

    /// Uncompressed bytes produced so far (some perhaps not yet read).
    pub fn uncompressed_len(&self) -> u64 {
        self.out
    }

    /// The points recorded so far.
    pub fn points(&self) -> &[GzipPoint] {
        &self.points
    }

    /// Reads the rest of the stream (checking it to its end) and returns
    /// the points and the uncompressed size.
    pub fn finish(mut self) -> io::Result<(Vec<GzipPoint>, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((self.points, self.out))
    }

    fn due(&self) -> bool {
        self.points
            .last()
            .is_none_or(|p| self.out - p.uncompressed >= self.spacing)
    }

    /// The member's last (up to) 32 KiB of output, ending at `pos`.
    fn window(&self) -> Vec<u8> {
        let len = usize::try_from(self.members.member_out)
            .unwrap_or(WINDOW)
            .min(WINDOW);
        if len <= self.pos {
            self.ring[self.pos - len..self.pos].to_vec()
        } else {
            let mut w = Vec::with_capacity(len);
            w.extend_from_slice(&self.ring[WINDOW - (len - self.pos)..]);
            w.extend_from_slice(&self.ring[..self.pos]);
            w
        }
    }

    fn advance(&mut self) -> io::Result<bool> {
        if self.pos == WINDOW {
            self.pos = 0;
            self.given = 0;
        }
        match self.members.step(&mut self.ring[self.pos..])? {
            Event::End => return Ok(false),
            Event::Member => {
                let point = GzipPoint {
                    compressed: self.members.input.offset(),
                    bits: 0,
                    uncompressed: self.out,
                    window: Vec::new(),
                };
                // A member start needs no window: it replaces a point at the
                // same offset (the previous member's last block boundary).
                let due = self.due();
                match self.points.last_mut() {
                    Some(last) if last.uncompressed == point.uncompressed => *last = point,
                    _ if due => self.points.push(point),
                    _ => {}
                }
            }
            Event::Data { made, boundary } => {
                self.pos += made;
                self.out += made as u64;
                if self.out > self.limit {
                    return Err(invalid(format!(
                        "the gzip stream decodes to more than {} bytes: more than its tar declares \
                         (trailing data, or a decompression bomb)",
                        self.limit
                    )));
                }
                if boundary && self.due() {
                    let (compressed, bits) = self.members.bit_position();
                    let window = self.window();
                    self.points.push(GzipPoint {
                        compressed,
                        bits,
                        uncompressed: self.out,
                        window,
                    });
                }
            }
        }
        Ok(true)
    }
}

impl<R: Read> Read for GzipIndexer<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some((kind, message)) = &self.failed {
            return Err(io::Error::new(*kind, message.clone()));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        while self.given == self.pos {
            match self.advance() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(e) => {
                    let kind = match e.kind() {
                        io::ErrorKind::UnexpectedEof => io::ErrorKind::InvalidData,
                        kind => kind,
                    };
                    self.failed = Some((kind, e.to_string()));
                    return Err(io::Error::new(kind, e.to_string()));
                }
            }
        }
        let n = (self.pos - self.given).min(buf.len());
        buf[..n].copy_from_slice(&self.ring[self.given..self.given + n]);
        self.given += n;
        Ok(n)
    }
}

// ---------------------------------------------------------------------------
// Using the points.

/// Drops every other point (keeping the first) until the points' size in
/// an index (windows and offsets, uncompressed) fits `max_bytes`, or one
/// point is left.
pub fn thin(mut points: Vec<GzipPoint>, max_bytes: u64) -> Vec<GzipPoint> {
    let size = |points: &[GzipPoint]| -> u64 {
        points
            .iter()
            .map(|p| p.window.len() as u64 + POINT_OVERHEAD)
            .sum()
    };
    while points.len() > 1 && size(&points) > max_bytes {
        let mut i = 0;
        points.retain(|_| {
            i += 1;
            i % 2 == 1
        });
    }
    points
}

/// The compressed offset a reader must fetch up to so that inflating from
/// the last point at or before an offset produces everything before
/// `uncompressed_end`: the first point at or past `uncompressed_end` is
/// reached with the input before its `compressed` offset (its partial byte
/// included), so that offset; the blob's end if there is no such point.
pub fn compressed_end(points: &[GzipPoint], uncompressed_end: u64, blob_size: u64) -> u64 {
    let i = points.partition_point(|p| p.uncompressed < uncompressed_end);
    points
        .get(i)
        .map_or(blob_size, |p| p.compressed.min(blob_size))
}

/// The last point at or before `offset` (points are in increasing order).
pub fn point_before(points: &[GzipPoint], offset: u64) -> Option<&GzipPoint> {
    let i = points.partition_point(|p| p.uncompressed <= offset);
    i.checked_sub(1).map(|i| &points[i])
}

/// Inflates from `point`: `compressed` yields the blob's bytes from
/// `point.input_start()` on. Discards `skip` bytes of output, then appends
/// `len` bytes to `out`, crossing member boundaries; reads no further than
/// that needs (beyond its input buffer). `skip + len` may not exceed
/// `limit`. A stream that ends first is an error.
pub fn inflate_from<R: Read>(
    point: &GzipPoint,
    compressed: R,
    skip: u64,
    out: &mut Vec<u8>,
    len: u64,
    limit: u64,
) -> io::Result<()> {
    let end = point.uncompressed.saturating_add(skip).saturating_add(len);
    if skip.saturating_add(len) > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} bytes asked for past the seek point at {}, more than the limit of {limit}",
                skip.saturating_add(len),
                point.uncompressed
            ),
        ));
    }
    if point.bits > 7 || point.window.len() > WINDOW || (point.bits > 0 && point.compressed == 0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a malformed gzip seek point (at {})", point.uncompressed),
        ));
    }
    let want = usize::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a read too large"))?;
    let mut input = Input::at(compressed, point.input_start());
    let mut inflater = Inflater::raw()?;
    if point.bits > 0 {
        let byte = input
            .byte()?
            .ok_or_else(|| invalid(format!("the gzip stream ends before offset {end}")))?;
        inflater.prime(point.bits, byte >> (8 - point.bits))?;
    }
    if !point.window.is_empty() {
        inflater.set_dictionary(&point.window)?;
    }
    let mut members = Members {
        input,
        inflater,
        state: State::Deflate,
        check: false,
        crc: crc32fast::Hasher::new(),
        member_out: 0,
    };
    let short = || invalid(format!("the gzip stream ends before offset {end}"));

    let short_on_eof = |e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof => short(),
        _ => e,
    };
    let mut left = skip;
    let mut scratch = vec![0u8; WINDOW];
    while left > 0 {
        let room = usize::try_from(left).unwrap_or(WINDOW).min(WINDOW);
        match members.step(&mut scratch[..room]).map_err(short_on_eof)? {
            Event::Data { made, .. } => left -= made as u64,
            Event::Member => {}
            Event::End => return Err(short()),
        }
    }
    let start = out.len();
    out.resize(start + want, 0);
    let mut got = 0;
    while got < want {
        match members.step(&mut out[start + got..]) {
            Ok(Event::Data { made, .. }) => got += made,
            Ok(Event::Member) => {}
            Ok(Event::End) => {
                out.truncate(start + got);
                return Err(short());
            }
            Err(e) => {
                out.truncate(start + got);
                return Err(short_on_eof(e));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write as _;
    use std::sync::OnceLock;

    use super::*;

    /// Deterministic pseudo-random bytes (xorshift64*).
    pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect()
    }

    /// Compressible text (about 3:1): words drawn from a small vocabulary,
    /// and numbers.
    pub(crate) fn text(len: usize, seed: u64) -> Vec<u8> {
        const WORDS: [&str; 16] = [
            "layer", "blob", "manifest", "digest", "sha256", "usr/lib", "etc/", "tar", "gzip",
            "window", "\n", "seek", "point", "the", "a", "of",
        ];
        let picks = noise(len, seed);
        let mut out = Vec::with_capacity(len + 16);
        let mut i = 0;
        while out.len() < len {
            let pick = picks[i % picks.len()];
            out.extend_from_slice(WORDS[usize::from(pick % 16)].as_bytes());
            if pick.is_multiple_of(3) {
                out.extend_from_slice(format!("{}", u64::from(pick) * (i as u64 % 977)).as_bytes());
            }
            out.push(b' ');
            i += 1;
        }
        out.truncate(len);
        out
    }

    pub(crate) fn gzip(data: &[u8], level: u32) -> Vec<u8> {
        gzip_flushed(data, level, usize::MAX)
    }

    /// A gzip member with a sync flush every `every` bytes: more block
    /// boundaries than miniz_oxide makes by itself (it ends a block every
    /// 64 Ki codes), many of them mid-byte.
    pub(crate) fn gzip_flushed(data: &[u8], level: u32, every: usize) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        for piece in data.chunks(every) {
            e.write_all(piece).unwrap();
            e.flush().unwrap();
        }
        e.finish().unwrap()
    }

    /// `data` cut into `parts` members, each flushed every `every` bytes.
    fn members(data: &[u8], parts: usize, level: u32, every: usize) -> Vec<u8> {
        let size = data.len().div_ceil(parts.max(1)).max(1);
        let mut out = Vec::new();
        for chunk in data.chunks(size) {
            out.extend(gzip_flushed(chunk, level, every));
        }
        if data.is_empty() {
            out = gzip(data, level);
        }
        out
    }

    fn flate2_decode(gz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(gz)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// Reads all of `gz` through an indexer, in reads of odd sizes.
    fn index(gz: &[u8], spacing: u64, limit: u64) -> io::Result<(Vec<u8>, Vec<GzipPoint>, u64)> {
        let mut ix = GzipIndexer::new(gz, spacing, limit)?;
        let mut out = Vec::new();
        let mut buf = vec![0; 7919];
        loop {
            let n = ix.read(&mut buf[..(out.len() % 7919) + 1])?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        let consumed = ix.compressed_len();
        let (points, size) = ix.finish()?;
        assert_eq!(consumed, gz.len() as u64);
        assert_eq!(size, out.len() as u64);
        Ok((out, points, size))
    }

    /// Reads `[off, off + len)` the way a reader would: from the point
    /// before `off`, with only the compressed bytes it needs.
    fn read_at(gz: &[u8], points: &[GzipPoint], off: u64, len: u64) -> io::Result<Vec<u8>> {
        let p = point_before(points, off).expect("a point at 0");
        let end = compressed_end(points, off + len, gz.len() as u64);
        let bytes = &gz[p.input_start() as usize..end as usize];
        let mut out = b"prefix".to_vec();
        inflate_from(p, bytes, off - p.uncompressed, &mut out, len, u64::MAX)?;
        assert_eq!(&out[..6], b"prefix");
        Ok(out.split_off(6))
    }

    fn check_points(points: &[GzipPoint], spacing: u64, size: u64) {
        assert_eq!(points[0].uncompressed, 0);
        assert!(points[0].window.is_empty());
        for w in points.windows(2) {
            assert!(w[1].uncompressed - w[0].uncompressed >= spacing, "{w:?}");
            assert!(w[1].compressed > w[0].compressed);
        }
        for p in points {
            assert!(p.bits < 8 && p.window.len() <= WINDOW && p.uncompressed <= size);
        }
    }

    #[test]
    fn the_indexer_yields_what_flate2_does_and_every_point_resumes() {
        let inputs = [
            ("noise", noise(200_000, 7)),
            ("text", text(600_000, 3)),
            ("empty", Vec::new()),
        ];
        for (name, data) in &inputs {
            for (level, every) in [
                (0, usize::MAX),
                (1, 7000),
                (6, usize::MAX),
                (6, 7000),
                (9, 3000),
            ] {
                for parts in [1, 3] {
                    let gz = members(data, parts, level, every);
                    assert_eq!(&flate2_decode(&gz), data);
                    for spacing in [1, 20_000, DEFAULT_SPACING] {
                        let what = format!(
                            "{name} level {level} flushed every {every} parts {parts} spacing {spacing}"
                        );
                        let (out, points, size) = index(&gz, spacing, u64::MAX).unwrap();
                        assert!(out == *data, "{what}");
                        assert_eq!(size, data.len() as u64);
                        check_points(&points, spacing, size);
                        if spacing == 20_000 && every < 10_000 && !data.is_empty() {
                            assert!(
                                points.len() as u64 >= size / 60_000,
                                "{what}: {}",
                                points.len()
                            );
                        }
                        for (i, p) in points.iter().enumerate() {
                            let len = (size - p.uncompressed).min(5000);
                            let got = read_at(&gz, &points, p.uncompressed, len).unwrap();
                            let at = p.uncompressed as usize;
                            assert!(
                                got == data[at..at + len as usize],
                                "{what}: point {i} {p:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn points_fall_mid_byte_and_on_member_starts() {
        let data = text(400_000, 11);
        let gz = members(&data, 4, 6, 10_000);
        let (_, points, _) = index(&gz, 1, u64::MAX).unwrap();
        assert!(points.iter().any(|p| p.bits > 0), "no mid-byte point");
        // Member starts: an empty window past the stream's start.
        assert!(points[1..].iter().filter(|p| p.window.is_empty()).count() >= 3);
    }

    /// A fixture for the random reads: four members, many points.
    fn fixture() -> &'static (Vec<u8>, Vec<u8>, Vec<GzipPoint>) {
        static F: OnceLock<(Vec<u8>, Vec<u8>, Vec<GzipPoint>)> = OnceLock::new();
        F.get_or_init(|| {
            let mut data = text(700_000, 5);
            data.extend(noise(100_000, 9));
            data.extend(text(200_000, 6));
            let gz = members(&data, 4, 6, 9000);
            let (_, points, _) = index(&gz, 50_000, u64::MAX).unwrap();
            (data, gz, points)
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        #[test]
        fn any_range_reads_from_its_point(off in 0u64..1_000_000, len in 0u64..120_000) {
            let (data, gz, points) = fixture();
            let len = len.min(data.len() as u64 - off);
            let got = read_at(gz, points, off, len).unwrap();
            proptest::prop_assert!(got == data[off as usize..(off + len) as usize]);
        }

        #[test]
        fn damaged_streams_never_panic(at in 0usize..4000, v in proptest::num::u8::ANY, cut in 0usize..4000) {
            let data = text(30_000, 1);
            let mut gz = members(&data, 2, 6, 5000);
            let at = at % gz.len();
            gz[at] = v;
            gz.truncate(cut.max(at + 1));
            if let Ok((out, points, _)) = index(&gz, 4096, 1 << 20) {
                // A CRC-32 catches any damage to one byte of a member.
                proptest::prop_assert!(out.len() <= data.len() && data.starts_with(&out));
                for p in &points {
                    let len = (out.len() as u64 - p.uncompressed).min(1000);
                    let got = read_at(&gz, &points, p.uncompressed, len).unwrap();
                    let at = p.uncompressed as usize;
                    proptest::prop_assert!(got == out[at..at + len as usize]);
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2000)) {
            let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
            gz.extend(bytes);
            let _ = index(&gz, 1, 1 << 20);
        }
    }

    fn index_err(gz: &[u8], limit: u64) -> String {
        let e = index(gz, 1 << 16, limit).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        e.to_string()
    }

    #[test]
    fn every_truncation_is_an_error_or_a_shorter_stream() {
        let data = text(20_000, 2);
        let first = gzip(&data[..9000], 9);
        let mut gz = first.clone();
        gz.extend(gzip(&data[9000..], 9));
        for cut in 0..gz.len() {
            match index(&gz[..cut], 4096, u64::MAX) {
                Ok((out, _, _)) => assert!(cut == first.len() && out == data[..9000], "{cut}"),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{cut}: {e}");
                    let e = e.to_string();
                    assert!(e.contains("ends") || e.contains("empty"), "{cut}: {e}");
                }
            }
        }
    }

    #[test]
    fn output_past_the_limit_is_refused_naming_it() {
        let gz = gzip(&vec![0; 8 << 20], 9);
        let e = index_err(&gz, 1 << 20);
        assert!(
            e.contains("more than 1048576 bytes") && e.contains("bomb"),
            "{e}"
        );
        // The same stream under a limit it fits.
        assert_eq!(index(&gz, 1 << 20, 8 << 20).unwrap().2, 8 << 20);
    }

    #[test]
    fn bad_trailers_headers_and_garbage_are_errors() {
        let data = text(5000, 4);
        let gz = gzip(&data, 6);
        let n = gz.len();

        let mut bad = gz.clone();
        bad[n - 8] ^= 1;
        assert!(index_err(&bad, u64::MAX).contains("CRC-32"));
        let mut bad = gz.clone();
        bad[n - 4] ^= 1;
        assert!(index_err(&bad, u64::MAX).contains("length"));

        let mut bad = gz.clone();
        bad.extend_from_slice(b"garbage!");
        let e = index_err(&bad, u64::MAX);
        assert!(e.contains("after the gzip stream's last member"), "{e}");
        let mut bad = gz.clone();
        bad.push(0);
        assert!(index_err(&bad, u64::MAX).contains("last member"));

        assert!(index_err(b"", u64::MAX).contains("empty"));
        assert!(index_err(b"PK\x03\x04 a zip", u64::MAX).contains("not a gzip stream"));
        let mut bad = gz.clone();
        bad[2] = 7;
        assert!(index_err(&bad, u64::MAX).contains("method 7"));
        let mut bad = gz.clone();
        bad[3] = 0x80;
        assert!(index_err(&bad, u64::MAX).contains("reserved"));
        let mut bad = gz.clone();
        bad[12] ^= 0xff;
        let e = index_err(&bad, u64::MAX);
        assert!(
            e.contains("deflate") || e.contains("CRC") || e.contains("length"),
            "{e}"
        );
    }

    #[test]
    fn header_fields_are_skipped_and_the_header_crc_checked() {
        let data = text(50_000, 8);
        let deflated = {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        let mut header = vec![
            0x1f,
            0x8b,
            8,
            FHCRC | FEXTRA | FNAME | FCOMMENT,
            1,
            2,
            3,
            4,
            0,
            3,
        ];
        header.extend_from_slice(&[5, 0, b'A', b'B', 2, 0, 9]);
        header.extend_from_slice(b"name.tar\0a comment\0");
        let hcrc = (crc32fast::hash(&header) & 0xffff) as u16;
        let mut gz = header.clone();
        gz.extend_from_slice(&hcrc.to_le_bytes());
        gz.extend_from_slice(&deflated);
        gz.extend_from_slice(&crc32fast::hash(&data).to_le_bytes());
        gz.extend_from_slice(&(data.len() as u32).to_le_bytes());
        gz.extend(gzip(b"and a second member", 1));
        let mut want = data.clone();
        want.extend_from_slice(b"and a second member");
        assert_eq!(flate2_decode(&gz), want);
        let (out, points, _) = index(&gz, 10_000, u64::MAX).unwrap();
        assert_eq!(out, want);
        assert_eq!(points[0].compressed, header.len() as u64 + 2);
        for p in &points {
            let len = (want.len() as u64 - p.uncompressed).min(30_000);
            let got = read_at(&gz, &points, p.uncompressed, len).unwrap();
            assert_eq!(got, want[p.uncompressed as usize..][..len as usize]);
        }
        let mut bad = gz.clone();
        bad[header.len()] ^= 1;
        assert!(index_err(&bad, u64::MAX).contains("header CRC"));
    }

    #[test]
    fn errors_are_sticky() {
        let mut gz = gzip(&text(100_000, 1), 6);
        gz.truncate(gz.len() / 2);
        let mut ix = GzipIndexer::new(&gz[..], 1 << 16, u64::MAX).unwrap();
        let mut sink = Vec::new();
        let first = ix.read_to_end(&mut sink).unwrap_err().to_string();
        let again = ix.read(&mut [0; 10]).unwrap_err().to_string();
        assert_eq!(first, again);
        assert!(first.contains("ends inside deflate data"), "{first}");
    }

    #[test]
    fn reads_past_the_end_or_over_the_limit_are_errors() {
        let data = text(100_000, 3);
        let gz = gzip(&data, 6);
        let (_, points, size) = index(&gz, 30_000, u64::MAX).unwrap();
        let last = points.last().unwrap();
        let from = &gz[last.input_start() as usize..];
        let mut out = Vec::new();
        let e =
            inflate_from(last, from, size - last.uncompressed, &mut out, 1, u64::MAX).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("ends before offset {}", size + 1)),
            "{e}"
        );
        // Cut short of what a read needs.
        let p = &points[0];
        let cut = &gz[p.input_start() as usize..100];
        let e = inflate_from(p, cut, 0, &mut out, 50_000, u64::MAX).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("ends before offset 50000"), "{e}");
        let e = inflate_from(p, &gz[..], 10, &mut out, 100, 50).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn thinning_keeps_the_first_point_and_reads_right() {
        let (data, gz, points) = fixture();
        let total: u64 = points.iter().map(|p| p.window.len() as u64 + 16).sum();
        assert_eq!(thin(points.clone(), total), *points);
        let thinned = thin(points.clone(), total / 5);
        assert!(thinned.len() < points.len() && thinned[0] == points[0]);
        assert!(
            thinned
                .iter()
                .map(|p| p.window.len() as u64 + 16)
                .sum::<u64>()
                <= total / 5
        );
        assert!(thinned.iter().all(|p| points.contains(p)));
        assert_eq!(thin(points.clone(), 0), points[..1]);
        for off in [0, 123_456, 500_000, 999_000] {
            let got = read_at(gz, &thinned, off, 1000).unwrap();
            assert_eq!(got, data[off as usize..off as usize + 1000]);
        }
    }

    #[test]
    fn compressed_end_is_the_next_point_or_the_blob_end() {
        let p = |c, u| GzipPoint {
            compressed: c,
            bits: 3,
            uncompressed: u,
            window: vec![],
        };
        let points = [p(10, 0), p(500, 4000), p(900, 8000)];
        assert_eq!(compressed_end(&points, 0, 1000), 10);
        assert_eq!(compressed_end(&points, 1, 1000), 500);
        assert_eq!(compressed_end(&points, 4000, 1000), 500);
        assert_eq!(compressed_end(&points, 4001, 1000), 900);
        assert_eq!(compressed_end(&points, 8001, 1000), 1000);
        assert_eq!(compressed_end(&[], 5, 1000), 1000);
        assert_eq!(point_before(&points, 3999).unwrap().uncompressed, 0);
        assert_eq!(point_before(&points, 4000).unwrap().uncompressed, 4000);
        assert_eq!(p(10, 0).input_start(), 9);
        assert_eq!(
            GzipPoint {
                bits: 0,
                ..p(10, 0)
            }
            .input_start(),
            10
        );
    }
}
