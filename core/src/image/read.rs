//! Reading a file of an image: a range of a layer's uncompressed stream,
//! decoded from the nearest seek point before it, fetching only the
//! compressed bytes from that point to the first point past the range.

use std::io::{self, Read as _};

use bytes::{Bytes, BytesMut};

use super::{ImageLayer, LayerFile, SeekPoints, gzip, zstd};
use crate::archive::{Compression, DECODE_WHOLE_MAX, EntryReader, MAX_RATIO, decoder, with_stream};
use crate::error::{Error, Result};
use crate::reader::Reader;
use crate::view::Content;

/// Spans between seek points up to this size are decoded whole and kept
/// (for reads of files too large to keep whole).
const SPAN_MAX: u64 = 16 << 20;
/// Marks a decoded span's key apart from a decoded file's (tar data
/// offsets are multiples of 512, far below this bit).
const SPAN_KEY: u64 = 1 << 63;

/// Bytes `offset..offset + len` of `f` (inside it: the caller clamps).
/// Files of compressed layers up to [`DECODE_WHOLE_MAX`] are decoded whole
/// and kept by `entries`; larger ones are read span by span.
pub(crate) async fn read(
    entries: &EntryReader,
    blobs: &dyn Reader,
    f: &LayerFile,
    offset: u64,
    len: u64,
) -> Result<Bytes> {
    let layer = &f.layer;
    if layer.compression == Compression::None {
        let blob = Content::Blob(layer.blob.clone());
        return blobs.read(&blob, f.offset + offset, len).await;
    }
    if f.size <= DECODE_WHOLE_MAX {
        let key = (layer.blob.digest.clone(), f.offset);
        let whole = entries
            .whole(key, || decode(blobs, layer, f.offset, f.size))
            .await?;
        let end = (offset + len).min(whole.len() as u64);
        return Ok(whole.slice(offset as usize..end as usize));
    }
    read_spans(entries, blobs, layer, f.offset + offset, len).await
}

/// Bytes `at..at + len` of a layer's stream, through decoded spans kept by
/// `entries` where spans are small enough.
async fn read_spans(
    entries: &EntryReader,
    blobs: &dyn Reader,
    layer: &ImageLayer,
    at: u64,
    len: u64,
) -> Result<Bytes> {
    let SeekPoints::Gzip(points) = &layer.points else {
        return decode(blobs, layer, at, len).await;
    };
    let end = at + len;
    let mut out = BytesMut::with_capacity(len as usize);
    let mut pos = at;
    while pos < end {
        let i = points.partition_point(|p| p.uncompressed <= pos);
        let start = i.checked_sub(1).map_or(0, |i| points[i].uncompressed);
        let stop = points
            .get(i)
            .map_or(layer.uncompressed_size, |p| p.uncompressed);
        if stop <= pos || stop - start > SPAN_MAX {
            out.extend_from_slice(&decode(blobs, layer, pos, end - pos).await?);
            break;
        }
        let key = (layer.blob.digest.clone(), start | SPAN_KEY);
        let span = entries
            .whole(key, || decode(blobs, layer, start, stop - start))
            .await?;
        let from = (pos - start) as usize;
        let to = ((end.min(stop)) - start) as usize;
        out.extend_from_slice(&span[from..to.min(span.len())]);
        pos = stop;
    }
    Ok(out.freeze())
}

/// Bytes `at..at + len` of the uncompressed stream of `layer`, decoded from
/// the last seek point at or before `at`.
async fn decode(blobs: &dyn Reader, layer: &ImageLayer, at: u64, len: u64) -> Result<Bytes> {
    let blob = layer.blob.clone();
    let limit = blob.size.saturating_mul(MAX_RATIO).max(1 << 20);
    let digest = blob.digest.to_string();
    let fail = move |e: io::Error| Error::Layer {
        layer: digest.clone(),
        entry: None,
        reason: format!("reading at offset {at} of the uncompressed stream: {e}"),
    };
    let capacity = len.min(DECODE_WHOLE_MAX) as usize;
    match &layer.points {
        SeekPoints::Gzip(points) if let Some(p) = gzip::point_before(points, at) => {
            let p = p.clone();
            let end = gzip::compressed_end(points, at + len, blob.size);
            with_stream(blobs, &blob, p.input_start()..end, move |r| {
                let mut out = Vec::with_capacity(capacity);
                gzip::inflate_from(&p, r, at - p.uncompressed, &mut out, len, limit)
                    .map_err(fail)?;
                Ok(Bytes::from(out))
            })
            .await
        }
        SeekPoints::Zstd(points) if let Some(p) = zstd::point_before(points, at) => {
            let p = *p;
            let end = zstd::compressed_end(points, at + len, blob.size);
            with_stream(blobs, &blob, p.compressed..end, move |r| {
                let mut out = Vec::with_capacity(capacity);
                zstd::decode_from(&p, r, at - p.uncompressed, &mut out, len, limit)
                    .map_err(fail)?;
                Ok(Bytes::from(out))
            })
            .await
        }
        _ => {
            // No seek points: from the start of the stream.
            let (b, compression) = (blob.clone(), layer.compression);
            with_stream(blobs, &blob, 0..blob.size, move |r| {
                let mut d = decoder(r, compression, &b)?;
                let skipped = io::copy(&mut (&mut d).take(at), &mut io::sink()).map_err(&fail)?;
                let mut out = Vec::with_capacity(capacity);
                (&mut d).take(len).read_to_end(&mut out).map_err(&fail)?;
                if skipped < at || (out.len() as u64) < len {
                    return Err(fail(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the stream ends at {}", skipped + out.len() as u64),
                    )));
                }
                Ok(Bytes::from(out))
            })
            .await
        }
    }
}
