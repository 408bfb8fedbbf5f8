//! Reading a file of an image: a range of a layer's uncompressed stream,
//! decoded from the nearest seek point before it.

use std::io::{self, Read as _};

use bytes::Bytes;

use super::{ImageLayer, LayerFile, SeekPoints};
use crate::archive::{Compression, DECODE_WHOLE_MAX, EntryReader, MAX_RATIO, decoder, with_stream};
use crate::error::{Error, Result};
use crate::reader::Reader;
use crate::view::Content;

/// Bytes `offset..offset + len` of `f` (inside it: the caller clamps).
/// Files of compressed layers up to [`DECODE_WHOLE_MAX`] are decoded whole
/// and kept by `entries`; larger ones are decoded per read.
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
    decode(blobs, layer, f.offset + offset, len).await
}

/// Bytes `at..at + len` of the uncompressed stream of `layer`.
async fn decode(blobs: &dyn Reader, layer: &ImageLayer, at: u64, len: u64) -> Result<Bytes> {
    let blob = layer.blob.clone();
    let limit = blob.size.saturating_mul(MAX_RATIO).max(1 << 20);
    let short = move |got: u64| Error::Layer {
        layer: blob.digest.to_string(),
        entry: None,
        reason: format!("the stream ends at {got}, before offset {}", at + len),
    };
    let unreadable = |digest: String| {
        move |e: io::Error| Error::Layer {
            layer: digest.clone(),
            entry: None,
            reason: format!("unreadable stream: {e}"),
        }
    };
    match &layer.points {
        SeekPoints::Gzip(_) | SeekPoints::Zstd(_) | SeekPoints::None => {
            let (b, compression) = (layer.blob.clone(), layer.compression);
            let io_err = unreadable(b.digest.to_string());
            with_stream(blobs, &layer.blob, 0..layer.blob.size, move |r| {
                let mut d = decoder(r, compression, &b)?;
                let skipped = io::copy(&mut (&mut d).take(at), &mut io::sink()).map_err(&io_err)?;
                let mut out = Vec::with_capacity(len.min(DECODE_WHOLE_MAX) as usize);
                (&mut d).take(len).read_to_end(&mut out).map_err(&io_err)?;
                let _ = limit;
                if skipped < at || (out.len() as u64) < len {
                    return Err(short(skipped + out.len() as u64));
                }
                Ok(Bytes::from(out))
            })
            .await
        }
    }
}
