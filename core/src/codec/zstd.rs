//! zstd frames as seek points: each frame decodes on its own, so a frame
//! start is a point where decoding can begin afresh, with no window to
//! keep. [`ZstdIndexer`] notes them while a layer is streamed once;
//! [`decode_from`] later decodes from one of them out of a range read.
//!
//! Skippable frames (magic `0x184D2A5?`) are skipped and are not points;
//! the seekable format keeps its seek table in one, so walking the frames
//! covers seekable-format layers too, with no need to read that table.

use std::io::{self, BufRead as _, BufReader, Read};

use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

use super::gzip::Input;
use crate::content::FramePoint;

/// The least uncompressed distance between two points, by default: a
/// point costs a few bytes, but frames much closer than this (zstd:chunked
/// writes one per file) are not worth one each.
pub const DEFAULT_SPACING: u64 = 64 << 10;

const MAGIC: u32 = 0xFD2F_B528;
const SKIPPABLE: u32 = 0x184D_2A50;
const SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// `UnexpectedEof` inside this module (so [`decode_from`] can say which
/// offset it did not reach); the indexer reports it as `InvalidData`.
fn truncated(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, message.into())
}

enum State {
    /// Between frames (`first`: before the stream's first).
    Between {
        first: bool,
    },
    /// Inside the frame that starts at this compressed offset.
    Frame {
        start: u64,
    },
    End,
}

/// What a step of [`Frames`] came to.
enum Event {
    /// A zstd frame starts at this compressed offset.
    Frame(u64),
    /// Bytes produced.
    Data(usize),
    /// The stream ended after a frame.
    End,
}

/// A zstd stream's frames, decoded one after the other.
struct Frames<R> {
    input: Input<R>,
    decoder: FrameDecoder,
    state: State,
}

impl<R: Read> Frames<R> {
    fn new(input: Input<R>, first: bool) -> Self {
        Frames {
            input,
            decoder: FrameDecoder::new(),
            state: State::Between { first },
        }
    }

    /// The error for a decoder failure in the frame at `start`.
    fn frame_error(&self, start: u64, e: impl std::fmt::Display) -> io::Error {
        if self.input.at_eof() {
            truncated(format!(
                "the zstd stream ends inside the frame at offset {start} ({e})"
            ))
        } else {
            invalid(format!("the zstd frame at offset {start} is corrupt: {e}"))
        }
    }

    /// The next bytes, into `out` (which must not be empty), or the next
    /// frame start.
    fn step(&mut self, out: &mut [u8]) -> io::Result<Event> {
        loop {
            match self.state {
                State::End => return Ok(Event::End),
                State::Between { first } => {
                    let at = self.input.offset();
                    let head = self.input.peek(8)?;
                    if head.is_empty() {
                        if first {
                            return Err(invalid("not a zstd stream: it is empty"));
                        }
                        self.state = State::End;
                        return Ok(Event::End);
                    }
                    if head.len() < 4 {
                        return Err(truncated(format!(
                            "the zstd stream ends inside a frame header (offset {at})"
                        )));
                    }
                    let magic = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
                    if magic & SKIPPABLE_MASK == SKIPPABLE {
                        if head.len() < 8 {
                            return Err(truncated(format!(
                                "the zstd stream ends inside a skippable frame header (offset {at})"
                            )));
                        }
                        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
                        self.input.consume(8);
                        if self.input.skip(u64::from(len))? < u64::from(len) {
                            return Err(truncated(format!(
                                "the zstd stream ends inside the skippable frame at offset {at}"
                            )));
                        }
                        self.state = State::Between { first: false };
                        continue;
                    }
                    if magic != MAGIC {
                        return Err(invalid(if first {
                            format!("not a zstd stream (it starts with {magic:08x})")
                        } else {
                            format!(
                                "the bytes at offset {at}, after a zstd frame, are not a zstd frame \
                                 (they start with {magic:08x})"
                            )
                        }));
                    }
                    if let Err(e) = self.decoder.init(&mut self.input) {
                        return Err(self.frame_error(at, e));
                    }
                    self.state = State::Frame { start: at };
                    return Ok(Event::Frame(at));
                }
                State::Frame { start } => {
                    if self.decoder.can_collect() == 0 && !self.decoder.is_finished() {
                        if let Err(e) = self
                            .decoder
                            .decode_blocks(&mut self.input, BlockDecodingStrategy::UptoBlocks(1))
                        {
                            return Err(self.frame_error(start, e));
                        }
                        continue;
                    }
                    let n = self
                        .decoder
                        .read(out)
                        .map_err(|e| self.frame_error(start, e))?;
                    if n > 0 {
                        return Ok(Event::Data(n));
                    }
                    if self.decoder.is_finished() && self.decoder.can_collect() == 0 {
                        let stated = self.decoder.get_checksum_from_data();
                        let computed = self.decoder.get_calculated_checksum();
                        if let (Some(stated), Some(computed)) = (stated, computed)
                            && stated != computed
                        {
                            return Err(invalid(format!(
                                "the zstd frame at offset {start} has checksum {stated:08x} but its data {computed:08x}"
                            )));
                        }
                        self.state = State::Between { first: false };
                    }
                }
            }
        }
    }
}

/// Reads a zstd stream, yielding its uncompressed bytes, and records a
/// [`FramePoint`] at each frame start at least `spacing` bytes of output
/// past the previous point (the first frame always).
///
/// The output is bounded: past `limit` bytes it is an error (what the
/// stream's tar declares, found as it is walked: [`Self::set_limit`]). Errors are sticky.
pub struct ZstdIndexer<R> {
    frames: Frames<R>,
    out: u64,
    spacing: u64,
    limit: u64,
    points: Vec<FramePoint>,
    failed: Option<(io::ErrorKind, String)>,
}

impl<R> std::fmt::Debug for ZstdIndexer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZstdIndexer")
            .field("compressed", &self.frames.input.offset())
            .field("uncompressed", &self.out)
            .field("points", &self.points.len())
            .finish()
    }
}

impl<R: Read> ZstdIndexer<R> {
    /// Indexes the zstd stream `r`: a point at each frame at least
    /// `spacing` (≥ 1) bytes of output past the previous one, output
    /// bounded by `limit`.
    pub fn new(r: R, spacing: u64, limit: u64) -> Self {
        ZstdIndexer {
            frames: Frames::new(Input::new(r), true),
            out: 0,
            spacing: spacing.max(1),
            limit,
            points: Vec::new(),
            failed: None,
        }
    }

    /// Bounds the output from here on to `limit` bytes in all (a walk
    /// that found the end of its tar allows only a little more).
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    /// Compressed bytes consumed so far.
    pub fn compressed_len(&self) -> u64 {
        self.frames.input.offset()
    }

    /// Uncompressed bytes produced so far.
    pub fn uncompressed_len(&self) -> u64 {
        self.out
    }

    /// The points recorded so far.
    pub fn points(&self) -> &[FramePoint] {
        &self.points
    }

    /// Reads the rest of the stream (checking it to its end) and returns
    /// the points and the uncompressed size.
    pub fn finish(mut self) -> io::Result<(Vec<FramePoint>, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((self.points, self.out))
    }

    fn next(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.frames.step(buf)? {
                Event::End => return Ok(0),
                Event::Frame(compressed) => {
                    let due = self
                        .points
                        .last()
                        .is_none_or(|p| self.out - p.uncompressed >= self.spacing);
                    if due {
                        self.points.push(FramePoint {
                            compressed,
                            uncompressed: self.out,
                        });
                    }
                }
                Event::Data(n) => {
                    self.out += n as u64;
                    if self.out > self.limit {
                        return Err(invalid(format!(
                            "the zstd stream decodes to more than {} bytes: more than its tar declares \
                             (trailing data, or a decompression bomb)",
                            self.limit
                        )));
                    }
                    return Ok(n);
                }
            }
        }
    }
}

impl<R: Read> Read for ZstdIndexer<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some((kind, message)) = &self.failed {
            return Err(io::Error::new(*kind, message.clone()));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        self.next(buf).map_err(|e| {
            let kind = match e.kind() {
                io::ErrorKind::UnexpectedEof => io::ErrorKind::InvalidData,
                kind => kind,
            };
            self.failed = Some((kind, e.to_string()));
            io::Error::new(kind, e.to_string())
        })
    }
}

/// The compressed offset a reader must fetch up to so that decoding from
/// the last point at or before an offset produces everything before
/// `uncompressed_end`: the start of the first point at or past it (frames
/// end where the next begins), or the blob's end.
pub fn compressed_end(points: &[FramePoint], uncompressed_end: u64, blob_size: u64) -> u64 {
    let i = points.partition_point(|p| p.uncompressed < uncompressed_end);
    points
        .get(i)
        .map_or(blob_size, |p| p.compressed.min(blob_size))
}

/// The last point at or before `offset` (points are in increasing order).
pub fn point_before(points: &[FramePoint], offset: u64) -> Option<&FramePoint> {
    let i = points.partition_point(|p| p.uncompressed <= offset);
    i.checked_sub(1).map(|i| &points[i])
}

/// Decodes from `point`: `compressed` yields the blob's bytes from
/// `point.compressed` on. Discards `skip` bytes of output, then appends
/// `len` bytes to `out`, crossing frame boundaries; reads no further than
/// that needs (beyond its input buffer). `skip + len` may not exceed
/// `limit`. A stream that ends first is an error.
pub fn decode_from<R: Read>(
    point: &FramePoint,
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
    let want = usize::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a read too large"))?;
    let mut frames = Frames::new(Input::at(compressed, point.compressed), false);
    let short = || invalid(format!("the zstd stream ends before offset {end}"));
    let short_on_eof = |e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof => short(),
        _ => e,
    };
    let mut left = skip;
    let mut scratch = vec![0u8; 64 << 10];
    while left > 0 {
        let room = usize::try_from(left)
            .unwrap_or(scratch.len())
            .min(scratch.len());
        match frames.step(&mut scratch[..room]).map_err(short_on_eof)? {
            Event::Data(n) => left -= n as u64,
            Event::Frame(_) => {}
            Event::End => return Err(short()),
        }
    }
    let start = out.len();
    out.resize(start + want, 0);
    let mut got = 0;
    while got < want {
        match frames.step(&mut out[start + got..]) {
            Ok(Event::Data(n)) => got += n,
            Ok(Event::Frame(_)) => {}
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

/// A zstd stream of one or more frames.
pub struct Zstd<R: Read> {
    state: ZstdState<R>,
}

enum ZstdState<R: Read> {
    Between(BufReader<R>),
    Frame(Box<ruzstd::decoding::StreamingDecoder<BufReader<R>, ruzstd::decoding::FrameDecoder>>),
    Done,
}

impl<R: Read> std::fmt::Debug for Zstd<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zstd").finish_non_exhaustive()
    }
}

impl<R: Read> Zstd<R> {
    /// A decoder of the frames of `r`, one after the other.
    pub fn new(r: R) -> Self {
        Zstd {
            state: ZstdState::Between(BufReader::new(r)),
        }
    }
}

impl<R: Read> Read for Zstd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match std::mem::replace(&mut self.state, ZstdState::Done) {
                ZstdState::Done => return Ok(0),
                ZstdState::Between(mut r) => {
                    if r.fill_buf()?.is_empty() {
                        return Ok(0);
                    }
                    let frame = ruzstd::decoding::StreamingDecoder::new(r).map_err(|e| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}"))
                    })?;
                    self.state = ZstdState::Frame(Box::new(frame));
                }
                ZstdState::Frame(mut frame) => {
                    let n = frame.read(buf)?;
                    if n > 0 || buf.is_empty() {
                        self.state = ZstdState::Frame(frame);
                        return Ok(n);
                    }
                    self.state = ZstdState::Between(frame.into_inner());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use ruzstd::encoding::{CompressionLevel, compress_to_vec};

    use super::*;
    use crate::codec::gzip::tests::{noise, text};

    fn frame(data: &[u8], level: CompressionLevel) -> Vec<u8> {
        compress_to_vec(data, level)
    }

    fn skippable(n: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = (SKIPPABLE + u32::from(n)).to_le_bytes().to_vec();
        f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// `data` in frames of `size` bytes, a skippable frame after every
    /// third; the frame starts.
    fn frames(data: &[u8], size: usize) -> (Vec<u8>, Vec<FramePoint>) {
        let mut zst = Vec::new();
        let mut starts = Vec::new();
        for (i, chunk) in data.chunks(size.max(1)).enumerate() {
            starts.push(FramePoint {
                compressed: zst.len() as u64,
                uncompressed: (i * size) as u64,
            });
            let level = if i % 2 == 0 {
                CompressionLevel::Fastest
            } else {
                CompressionLevel::Uncompressed
            };
            zst.extend(frame(chunk, level));
            if i % 3 == 2 {
                zst.extend(skippable(i as u8 % 16, b"a seek table, say"));
            }
        }
        (zst, starts)
    }

    fn index(zst: &[u8], spacing: u64, limit: u64) -> io::Result<(Vec<u8>, Vec<FramePoint>)> {
        let mut ix = ZstdIndexer::new(zst, spacing, limit);
        let mut out = Vec::new();
        let mut buf = vec![0; 5003];
        loop {
            let n = ix.read(&mut buf[..(out.len() % 5003) + 1])?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(ix.compressed_len(), zst.len() as u64);
        let (points, size) = ix.finish()?;
        assert_eq!(size, out.len() as u64);
        Ok((out, points))
    }

    fn read_at(zst: &[u8], points: &[FramePoint], off: u64, len: u64) -> io::Result<Vec<u8>> {
        let p = point_before(points, off).expect("a point at 0");
        let end = compressed_end(points, off + len, zst.len() as u64);
        let mut out = b"prefix".to_vec();
        decode_from(
            p,
            &zst[p.compressed as usize..end as usize],
            off - p.uncompressed,
            &mut out,
            len,
            u64::MAX,
        )?;
        assert_eq!(&out[..6], b"prefix");
        Ok(out.split_off(6))
    }

    #[test]
    fn frames_are_points_and_every_point_decodes() {
        for (name, data) in [("text", text(300_000, 1)), ("noise", noise(100_000, 2))] {
            for size in [1000, 40_000, 1 << 20] {
                let (zst, starts) = frames(&data, size);
                let (out, points) = index(&zst, 1, u64::MAX).unwrap();
                assert!(out == data, "{name} {size}");
                assert_eq!(points, starts, "{name} {size}");
                for p in &points {
                    let len = (data.len() as u64 - p.uncompressed).min(3000);
                    let got = read_at(&zst, &points, p.uncompressed, len).unwrap();
                    let at = p.uncompressed as usize;
                    assert!(got == data[at..at + len as usize], "{name} {size} {p:?}");
                }
                // Spacing keeps only frames far enough apart.
                let (_, spaced) = index(&zst, 50_000, u64::MAX).unwrap();
                assert_eq!(spaced[0], starts[0]);
                for w in spaced.windows(2) {
                    assert!(w[1].uncompressed - w[0].uncompressed >= 50_000);
                }
            }
        }
    }

    /// Made by the zstd command line (v1.5, `--check`): a compressed frame
    /// of 3000 bytes at level 19, then two raw frames.
    const CLI: &[u8] = &[
        40, 181, 47, 253, 100, 184, 10, 85, 1, 0, 20, 2, 108, 97, 121, 101, 114, 32, 98, 108, 111,
        98, 32, 100, 105, 103, 101, 115, 116, 32, 115, 104, 97, 50, 53, 54, 32, 117, 115, 114, 47,
        108, 105, 98, 10, 1, 0, 161, 28, 241, 213, 19, 191, 227, 84, 85, 40, 181, 47, 253, 36, 44,
        97, 1, 0, 104, 101, 108, 108, 111, 32, 102, 114, 111, 109, 32, 116, 104, 101, 32, 122, 115,
        116, 100, 32, 99, 111, 109, 109, 97, 110, 100, 32, 108, 105, 110, 101, 44, 32, 102, 114,
        97, 109, 101, 32, 111, 110, 101, 10, 14, 214, 169, 77, 40, 181, 47, 253, 36, 23, 185, 0, 0,
        97, 110, 100, 32, 102, 114, 97, 109, 101, 32, 116, 119, 111, 44, 32, 99, 104, 101, 99, 107,
        101, 100, 10, 215, 174, 155, 236,
    ];

    #[test]
    fn a_stream_from_the_zstd_command_line() {
        let mut want: Vec<u8> = b"layer blob digest sha256 usr/lib\n".repeat(100);
        want.truncate(3000);
        want.extend_from_slice(b"hello from the zstd command line, frame one\n");
        want.extend_from_slice(b"and frame two, checked\n");
        let (out, points) = index(CLI, 1, u64::MAX).unwrap();
        assert_eq!(out, want);
        let starts: Vec<u64> = points.iter().map(|p| p.compressed).collect();
        assert_eq!(starts, [0, 56, 113]);
        assert_eq!(read_at(CLI, &points, 3040, 20).unwrap(), want[3040..3060]);
        // The content checksum is checked.
        let mut bad = CLI.to_vec();
        bad[55] ^= 1;
        let e = index(&bad, 1, u64::MAX).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
    }

    #[test]
    fn a_single_frame_is_one_point() {
        let data = text(200_000, 3);
        let zst = frame(&data, CompressionLevel::Fastest);
        let (out, points) = index(&zst, 1, u64::MAX).unwrap();
        assert!(out == data);
        assert_eq!(
            points,
            [FramePoint {
                compressed: 0,
                uncompressed: 0
            }]
        );
        assert_eq!(
            read_at(&zst, &points, 150_000, 10).unwrap(),
            data[150_000..150_010]
        );
    }

    fn fixture() -> &'static (Vec<u8>, Vec<u8>, Vec<FramePoint>) {
        static F: OnceLock<(Vec<u8>, Vec<u8>, Vec<FramePoint>)> = OnceLock::new();
        F.get_or_init(|| {
            let data = text(400_000, 4);
            let (zst, _) = frames(&data, 7000);
            let (_, points) = index(&zst, 20_000, u64::MAX).unwrap();
            (data, zst, points)
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        #[test]
        fn any_range_reads_from_its_point(off in 0u64..400_000, len in 0u64..60_000) {
            let (data, zst, points) = fixture();
            let len = len.min(data.len() as u64 - off);
            let got = read_at(zst, points, off, len).unwrap();
            proptest::prop_assert!(got == data[off as usize..(off + len) as usize]);
        }

        #[test]
        fn damaged_streams_never_panic(at in 0usize..3000, v in proptest::num::u8::ANY, cut in 0usize..3000) {
            let data = text(20_000, 5);
            let (mut zst, _) = frames(&data, 3000);
            let at = at % zst.len();
            zst[at] = v;
            zst.truncate(cut.max(at + 1));
            if let Ok((out, points)) = index(&zst, 1, 1 << 20) {
                for p in &points {
                    let len = (out.len() as u64 - p.uncompressed).min(500);
                    let got = read_at(&zst, &points, p.uncompressed, len).unwrap();
                    let at = p.uncompressed as usize;
                    proptest::prop_assert!(got == out[at..at + len as usize]);
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2000)) {
            let mut zst = MAGIC.to_le_bytes().to_vec();
            zst.extend(bytes);
            let _ = index(&zst, 1, 1 << 20);
        }
    }

    fn index_err(zst: &[u8], limit: u64) -> String {
        let e = index(zst, 1, limit).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        e.to_string()
    }

    #[test]
    fn truncation_garbage_and_bombs_are_errors() {
        let data = text(8_000, 6);
        let (zst, starts) = frames(&data, 2000);
        // A cut between frames is a shorter stream (a skippable frame
        // follows the third frame).
        let skip_end = starts[3].compressed as usize;
        let skip_start = skip_end - skippable(0, b"a seek table, say").len();
        for cut in 0..zst.len() {
            match index(&zst[..cut], 1, u64::MAX) {
                Ok((out, _)) => {
                    let i = starts.iter().position(|p| p.compressed as usize == cut);
                    let i = i
                        .or((cut == skip_start).then_some(3))
                        .expect("a frame boundary");
                    assert!(
                        cut > 0 && out == data[..(i * 2000).min(data.len())],
                        "{cut}"
                    );
                }
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{cut}: {e}");
                    let e = e.to_string();
                    assert!(e.contains("ends") || e.contains("empty"), "{cut}: {e}");
                }
            }
        }
        let mut bad = zst.clone();
        bad.extend_from_slice(b"trailing junk");
        assert!(index_err(&bad, u64::MAX).contains("after a zstd frame, are not a zstd frame"));
        assert!(index_err(b"\x1f\x8b\x08\x00 gzip", u64::MAX).contains("not a zstd stream"));
        assert!(index_err(b"", u64::MAX).contains("empty"));

        let bomb = frame(&vec![0; 4 << 20], CompressionLevel::Fastest);
        let e = index_err(&bomb, 1 << 20);
        assert!(
            e.contains("more than 1048576 bytes") && e.contains("bomb"),
            "{e}"
        );

        // Skippable frames alone make an empty stream, not an error.
        let (out, points) = index(&skippable(0, b"x"), 1, u64::MAX).unwrap();
        assert!(out.is_empty() && points.is_empty());
    }

    #[test]
    fn reads_past_the_end_are_errors() {
        let (data, zst, points) = fixture();
        let last = points.last().unwrap();
        let mut out = Vec::new();
        let skip = data.len() as u64 - last.uncompressed;
        let e = decode_from(
            last,
            &zst[last.compressed as usize..],
            skip,
            &mut out,
            1,
            u64::MAX,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("ends before offset {}", data.len() + 1)),
            "{e}"
        );
        let e = decode_from(&points[0], &zst[..500], 0, &mut out, 100_000, u64::MAX).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("ends before offset 100000"), "{e}");
        assert!(decode_from(&points[0], &zst[..], 0, &mut out, 100, 99).is_err());
    }

    #[test]
    fn compressed_end_is_the_next_point_or_the_blob_end() {
        let p = |c, u| FramePoint {
            compressed: c,
            uncompressed: u,
        };
        let points = [p(0, 0), p(500, 4000)];
        assert_eq!(compressed_end(&points, 1, 900), 500);
        assert_eq!(compressed_end(&points, 4000, 900), 500);
        assert_eq!(compressed_end(&points, 4001, 900), 900);
    }
}
