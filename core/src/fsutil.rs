//! Positional file I/O that works the same on Unix and Windows, and bounded
//! whole-file reads.
//!
//! One difference stays: on Windows a positional read or write
//! (`seek_read`, `seek_write`) also moves the file's position to where it
//! ended, where Unix's `pread`/`pwrite` leave it alone. Code that hands a
//! file on to be read in order rewinds it first.

use std::fs::File;
use std::io::{self, Read as _};

/// Reads a whole file, refusing more than `limit` bytes (`FileTooLarge`).
pub(crate) fn read_bounded(file: &File, limit: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    file.take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            "file over the size limit",
        ));
    }
    Ok(buf)
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::write_at(file, buf, offset)
}

#[cfg(windows)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_write(file, buf, offset)
}

pub(crate) fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match read_at(file, &mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Up to `len` bytes at `offset`, fewer only at the end of the file, into
/// a new buffer that is not zeroed first (on Unix: a large buffer from the
/// heap would be, at the cost of a pass over it).
pub(crate) fn read_vec_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    #[cfg(unix)]
    {
        let mut buf = Vec::with_capacity(len);
        while buf.len() < len {
            let at = offset + buf.len() as u64;
            match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at) {
                Ok(0) => break,
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(buf)
    }
    #[cfg(not(unix))]
    {
        let mut buf = vec![0; len];
        let got = read_full_at(file, &mut buf, offset)?;
        buf.truncate(got);
        Ok(buf)
    }
}

/// The most [`write_all_at`] hands the kernel in one write. The kernel
/// sizes the page cache's folios by the write (Linux's large folios): a
/// write of 1 MiB and more fills folios of up to 2 MiB, and on a VM whose
/// host reclaims the guest's free memory (virtio-balloon free page
/// reporting, as on the benchmark's Firecracker VM) each such folio first
/// costs the host a fault of its own. Writing 1 GiB into a fresh file
/// after the page cache was dropped took 0.24 s of system time in writes
/// of 256 or 512 KiB, 0.7–0.9 s in 1 MiB writes, 3.6 s in 2 MiB writes.
/// Folios of 256 KiB lose nothing elsewhere: the per-folio work is small
/// against the copy by then.
pub(crate) const WRITE_PIECE: usize = 256 << 10;

/// Writes all of `buf` at `offset`, in writes of at most [`WRITE_PIECE`].
pub(crate) fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let piece = &buf[..buf.len().min(WRITE_PIECE)];
        match write_at(file, piece, offset) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "wrote nothing")),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
