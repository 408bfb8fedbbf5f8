//! A layer's table of contents.

/// What an entry of a layer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (`TocEntry::link` is its target).
    Symlink,
    /// A hard link (`TocEntry::link` is the path of the file it links to).
    Hardlink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A FIFO.
    Fifo,
}

/// One entry of a layer's tar stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TocEntry {
    /// The path from the layer's root: components joined by `/`, without a
    /// leading `/`, `.` or `..` components; never empty (the root itself is
    /// not an entry). Whiteouts (`.wh.NAME`, `.wh..wh..opq`) are entries
    /// too: the overlay merge interprets them.
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits with setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// A file's size; 0 for the others.
    pub size: u64,
    /// Where a file's data starts in the uncompressed stream; 0 for the
    /// others.
    pub offset: u64,
    /// A symlink's target, or the path a hard link links to (normalised as
    /// `path` is); empty for the others.
    pub link: String,
    /// A device's major and minor numbers; 0 for the others.
    pub major: u32,
    /// See `major`.
    pub minor: u32,
    /// Extended attributes (PAX `SCHILY.xattr.NAME`), in archive order.
    pub xattrs: Vec<(String, Vec<u8>)>,
}
