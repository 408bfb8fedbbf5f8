//! A tar writer of the harness's own, byte by byte: ustar headers and PAX
//! records exactly as asked, including what no archiver would write (names
//! with `..`, sizes past the end, links to nowhere). Independent of ocifs
//! and of the `tar` crate ocifs parses with.

use std::io::Write as _;
use std::process::{Command, Stdio};

/// A tar header's type flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TarKind {
    /// `0`: a regular file.
    File,
    /// `1`: a hard link.
    Hardlink,
    /// `2`: a symbolic link.
    Symlink,
    /// `3`: a character device.
    Char,
    /// `4`: a block device.
    Block,
    /// `5`: a directory.
    Dir,
    /// `6`: a FIFO.
    Fifo,
    /// `x`: PAX records for the next entry.
    Pax,
}

impl TarKind {
    fn flag(self) -> u8 {
        match self {
            TarKind::File => b'0',
            TarKind::Hardlink => b'1',
            TarKind::Symlink => b'2',
            TarKind::Char => b'3',
            TarKind::Block => b'4',
            TarKind::Dir => b'5',
            TarKind::Fifo => b'6',
            TarKind::Pax => b'x',
        }
    }
}

/// One header's fields, as written (no checks: that is the point).
#[derive(Clone, Debug)]
pub struct TarHeader {
    /// The name field (at most 100 bytes; longer names go in PAX `path`).
    pub name: Vec<u8>,
    /// The type flag.
    pub kind: TarKind,
    /// Mode, with setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// The size field; the data written may differ.
    pub size: u64,
    /// The link name field (at most 100 bytes).
    pub link: Vec<u8>,
    /// Device major.
    pub major: u32,
    /// Device minor.
    pub minor: u32,
    /// Modification time.
    pub mtime: u64,
}

impl TarHeader {
    /// A header of `kind` for `name`: mode 0644 (0755 for directories),
    /// root-owned, size 0.
    pub fn new(kind: TarKind, name: &str) -> Self {
        TarHeader {
            name: name.as_bytes().to_vec(),
            kind,
            mode: if kind == TarKind::Dir { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            size: 0,
            link: Vec::new(),
            major: 0,
            minor: 0,
            mtime: 1_700_000_000,
        }
    }

    /// The 512-byte ustar block, checksummed.
    ///
    /// # Panics
    ///
    /// If the name or link is over 100 bytes, or a number does not fit
    /// its octal field.
    pub fn block(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        assert!(self.name.len() <= 100, "name over 100 bytes: use PAX");
        assert!(self.link.len() <= 100, "link over 100 bytes: use PAX");
        b[..self.name.len()].copy_from_slice(&self.name);
        octal(&mut b[100..108], u64::from(self.mode));
        octal(&mut b[108..116], u64::from(self.uid));
        octal(&mut b[116..124], u64::from(self.gid));
        octal(&mut b[124..136], self.size);
        octal(&mut b[136..148], self.mtime);
        b[148..156].fill(b' ');
        b[156] = self.kind.flag();
        b[157..157 + self.link.len()].copy_from_slice(&self.link);
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        octal(&mut b[329..337], u64::from(self.major));
        octal(&mut b[337..345], u64::from(self.minor));
        let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
        let field = format!("{sum:06o}\0 ");
        b[148..156].copy_from_slice(field.as_bytes());
        b
    }
}

/// `value` in octal, zero-padded, NUL-terminated, filling `field`.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    assert!(
        s.len() == digits,
        "{value} does not fit {digits} octal digits"
    );
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
}

/// One PAX record, `"%d %s=%s\n"` with its own length counted.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// An uncompressed tar stream being written.
#[derive(Clone, Debug, Default)]
pub struct TarWriter {
    out: Vec<u8>,
}

impl TarWriter {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes so far.
    pub fn bytes(&self) -> &[u8] {
        &self.out
    }

    /// Appends raw bytes (a truncated header, garbage).
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.out.extend_from_slice(bytes);
        self
    }

    /// Appends `header` and `data`, padded to 512 bytes. The header's size
    /// field is written as it is, whatever `data`'s length.
    pub fn entry(&mut self, header: &TarHeader, data: &[u8]) -> &mut Self {
        self.out.extend_from_slice(&header.block());
        self.out.extend_from_slice(data);
        self.pad();
        self
    }

    /// Appends `header` with `data`, with PAX records first for `pax` and
    /// for a name or link over 100 bytes (`path`, `linkpath`).
    pub fn entry_pax(
        &mut self,
        header: &TarHeader,
        data: &[u8],
        pax: &[(&str, &[u8])],
    ) -> &mut Self {
        let mut records = Vec::new();
        let mut h = header.clone();
        if h.name.len() > 100 {
            records.extend(pax_record("path", &h.name));
            h.name = b"pax-long-name".to_vec();
        }
        if h.link.len() > 100 {
            records.extend(pax_record("linkpath", &h.link));
            h.link = b"pax-long-link".to_vec();
        }
        for (k, v) in pax {
            records.extend(pax_record(k, v));
        }
        if !records.is_empty() {
            let mut p = TarHeader::new(TarKind::Pax, "PaxHeaders/entry");
            p.size = records.len() as u64;
            self.entry(&p, &records);
        }
        self.entry(&h, data)
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, mode: u32, owner: (u32, u32), data: &[u8]) -> &mut Self {
        let mut h = TarHeader::new(TarKind::File, name);
        (h.mode, h.uid, h.gid, h.size) = (mode, owner.0, owner.1, data.len() as u64);
        self.entry_pax(&h, data, &[])
    }

    /// A directory (`name` without a trailing `/`; one is added).
    pub fn dir(&mut self, name: &str, mode: u32, owner: (u32, u32)) -> &mut Self {
        let mut h = TarHeader::new(TarKind::Dir, &format!("{name}/"));
        (h.mode, h.uid, h.gid) = (mode, owner.0, owner.1);
        self.entry_pax(&h, &[], &[])
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut h = TarHeader::new(TarKind::Symlink, name);
        h.mode = 0o777;
        h.link = target.as_bytes().to_vec();
        self.entry_pax(&h, &[], &[])
    }

    /// A hard link to `target` (a path in the layer or a lower one).
    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut h = TarHeader::new(TarKind::Hardlink, name);
        h.link = target.as_bytes().to_vec();
        self.entry_pax(&h, &[], &[])
    }

    /// A character or block device, or a FIFO.
    pub fn special(
        &mut self,
        kind: TarKind,
        name: &str,
        mode: u32,
        (major, minor): (u32, u32),
    ) -> &mut Self {
        let mut h = TarHeader::new(kind, name);
        (h.mode, h.major, h.minor) = (mode, major, minor);
        self.entry_pax(&h, &[], &[])
    }

    /// Pads to a 512-byte boundary.
    fn pad(&mut self) {
        let rem = self.out.len() % 512;
        if rem != 0 {
            self.out.resize(self.out.len() + 512 - rem, 0);
        }
    }

    /// The stream with its end-of-archive marker (two zero blocks).
    pub fn finish(mut self) -> Vec<u8> {
        self.pad();
        self.out.resize(self.out.len() + 1024, 0);
        self.out
    }
}

/// `data` gzip-compressed (one member) by flate2 at `level` (0–9).
///
/// # Panics
///
/// Never in practice (writing to memory).
pub fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(data).expect("gzip to memory");
    e.finish().expect("gzip to memory")
}

/// `data` zstd-compressed by Debian's `zstd` (level 3).
///
/// # Panics
///
/// If `zstd` is missing (scripts/test installs it) or fails.
pub fn zstd(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("zstd")
        .args(["-q", "-c", "-3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running zstd (Debian's zstd; scripts/test installs it): {e}"));
    let mut stdin = child.stdin.take().expect("zstd's stdin");
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("zstd");
    writer
        .join()
        .expect("writer thread")
        .expect("writing to zstd");
    assert!(
        out.status.success(),
        "zstd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        assert_eq!(pax_record("path", b"ab"), b"11 path=ab\n");
        let r = pax_record("path", &[b'x'; 95]);
        let len: usize = String::from_utf8_lossy(&r[..3]).parse().expect("length");
        assert_eq!(len, r.len());
    }

    #[test]
    fn the_tar_crate_reads_what_we_write() {
        let mut t = TarWriter::new();
        t.dir("d", 0o750, (1, 2))
            .file("d/f", 0o4755, (1000, 1000), b"hello")
            .symlink("l", "/d/f")
            .special(TarKind::Char, "null", 0o666, (1, 3))
            .file(&"n".repeat(150), 0o644, (0, 0), b"long");
        let bytes = t.finish();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for e in archive.entries().expect("entries") {
            let e = e.expect("entry");
            let h = e.header();
            seen.push((
                e.path().expect("path").display().to_string(),
                h.mode().expect("mode"),
                h.uid().expect("uid"),
                e.size(),
            ));
        }
        assert_eq!(
            seen,
            [
                ("d/".to_owned(), 0o750, 1, 0),
                ("d/f".to_owned(), 0o4755, 1000, 5),
                ("l".to_owned(), 0o777, 0, 0),
                ("null".to_owned(), 0o666, 0, 0),
                ("n".repeat(150), 0o644, 0, 4),
            ]
        );
    }
}
