//! Which file-system operations the projection refuses.
//!
//! The projection is read-only. ProjFS tells the provider about operations
//! it registered for, and an error returned from a "pre" notification (or
//! from a post-create one, which ProjFS then cancels) fails the operation
//! with that error. The values are those of `PRJ_NOTIFICATION` and
//! `PRJ_NOTIFY_TYPES` (the same bits).

use crate::hresult::{self, Hresult};

/// A handle was opened to an existing file or directory.
pub const FILE_OPENED: u32 = 0x0000_0002;
/// A new file or directory was created.
pub const NEW_FILE_CREATED: u32 = 0x0000_0004;
/// An existing file was overwritten or superseded.
pub const FILE_OVERWRITTEN: u32 = 0x0000_0008;
/// A file or directory is about to be deleted.
pub const PRE_DELETE: u32 = 0x0000_0010;
/// A file or directory is about to be renamed.
pub const PRE_RENAME: u32 = 0x0000_0020;
/// A hard link is about to be created.
pub const PRE_SET_HARDLINK: u32 = 0x0000_0040;
/// A file was renamed.
pub const FILE_RENAMED: u32 = 0x0000_0080;
/// A hard link was created.
pub const HARDLINK_CREATED: u32 = 0x0000_0100;
/// A handle was closed; nothing changed.
pub const FILE_HANDLE_CLOSED_NO_MODIFICATION: u32 = 0x0000_0200;
/// A handle was closed after the file was modified.
pub const FILE_HANDLE_CLOSED_FILE_MODIFIED: u32 = 0x0000_0400;
/// A handle was closed and the file deleted.
pub const FILE_HANDLE_CLOSED_FILE_DELETED: u32 = 0x0000_0800;
/// A placeholder is about to become a full file: someone is writing to it.
pub const FILE_PRE_CONVERT_TO_FULL: u32 = 0x0000_1000;

/// The notifications the provider registers for on the whole root: every
/// operation that would change the projection. `FILE_OPENED` is left out:
/// it fires for every read and does not say whether the handle can write;
/// a write to a projected file is caught by `FILE_PRE_CONVERT_TO_FULL`.
pub const MASK: u32 = NEW_FILE_CREATED
    | FILE_OVERWRITTEN
    | PRE_DELETE
    | PRE_RENAME
    | PRE_SET_HARDLINK
    | FILE_PRE_CONVERT_TO_FULL;

/// The answer to a notification. While the mount is being cleaned up
/// (`cleaning`) the provider removes its own placeholders and allows
/// everything; otherwise changes are refused with access denied.
pub fn verdict(notification: u32, cleaning: bool) -> Hresult {
    if !cleaning && MASK & notification != 0 {
        hresult::ACCESS_DENIED
    } else {
        hresult::S_OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_refused() {
        for n in [
            NEW_FILE_CREATED,
            FILE_OVERWRITTEN,
            PRE_DELETE,
            PRE_RENAME,
            PRE_SET_HARDLINK,
            FILE_PRE_CONVERT_TO_FULL,
        ] {
            assert_eq!(verdict(n, false), hresult::ACCESS_DENIED, "{n:#x}");
            assert_eq!(verdict(n, true), hresult::S_OK, "{n:#x} while cleaning");
        }
    }

    #[test]
    fn reads_and_after_the_fact_notices_are_allowed() {
        for n in [
            FILE_OPENED,
            FILE_RENAMED,
            HARDLINK_CREATED,
            FILE_HANDLE_CLOSED_NO_MODIFICATION,
            FILE_HANDLE_CLOSED_FILE_MODIFIED,
            FILE_HANDLE_CLOSED_FILE_DELETED,
        ] {
            assert_eq!(verdict(n, false), hresult::S_OK, "{n:#x}");
        }
    }

    #[test]
    fn the_mask_registers_exactly_the_refused_operations() {
        assert_eq!(MASK, 0x107C);
        assert_eq!(MASK & FILE_OPENED, 0);
    }
}
