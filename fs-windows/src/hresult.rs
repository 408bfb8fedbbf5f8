//! The HRESULTs the provider answers ProjFS with, and the one mapping from
//! core errors to them.
//!
//! Plain `i32`s, so that the provider logic builds and is tested on every
//! platform; the Windows glue checks at compile time that they equal the
//! `windows` crate's constants.

use ocifs_core::{Error, Kind};

/// An HRESULT: `0` is success, negative values are errors.
pub type Hresult = i32;

/// `HRESULT_FROM_WIN32`: the HRESULT of a Win32 error code.
pub const fn from_win32(code: u32) -> Hresult {
    if code == 0 {
        0
    } else {
        ((code & 0xFFFF) | 0x8007_0000) as i32
    }
}

/// Success.
pub const S_OK: Hresult = 0;
/// `ERROR_FILE_NOT_FOUND`: no such name in the directory.
pub const FILE_NOT_FOUND: Hresult = from_win32(2);
/// `ERROR_PATH_NOT_FOUND`: a parent component is missing or is a file.
pub const PATH_NOT_FOUND: Hresult = from_win32(3);
/// `ERROR_ACCESS_DENIED` (`E_ACCESSDENIED`): refused; the projection is read-only.
pub const ACCESS_DENIED: Hresult = from_win32(5);
/// `E_OUTOFMEMORY` (`ERROR_OUTOFMEMORY`): an aligned buffer could not be allocated.
pub const OUT_OF_MEMORY: Hresult = from_win32(14);
/// `ERROR_CRC`: "data error"; content that failed its digest check.
pub const DATA_ERROR: Hresult = from_win32(23);
/// `ERROR_HANDLE_EOF`: the source ended before the range asked for.
pub const HANDLE_EOF: Hresult = from_win32(38);
/// `ERROR_INVALID_PARAMETER`.
pub const INVALID_PARAMETER: Hresult = from_win32(87);
/// `ERROR_INSUFFICIENT_BUFFER`: not even one directory entry fit.
pub const INSUFFICIENT_BUFFER: Hresult = from_win32(122);
/// `ERROR_DIRECTORY`: a directory was expected.
pub const DIRECTORY: Hresult = from_win32(267);
/// `ERROR_OPERATION_ABORTED`: the mount is stopping.
pub const OPERATION_ABORTED: Hresult = from_win32(995);
/// `ERROR_IO_PENDING`: the request is completed later with `PrjCompleteCommand`.
pub const IO_PENDING: Hresult = from_win32(997);
/// `ERROR_IO_DEVICE`: the generic I/O error (`EIO`).
pub const IO_DEVICE: Hresult = from_win32(1117);
/// `ERROR_NETWORK_UNREACHABLE`: the registry cannot be reached.
pub const NETWORK_UNREACHABLE: Hresult = from_win32(1231);
/// `ERROR_TIMEOUT`.
pub const TIMEOUT: Hresult = from_win32(1460);
/// `E_UNEXPECTED`: a bug (a panic caught at the FFI boundary).
pub const UNEXPECTED: Hresult = 0x8000_FFFF_u32 as i32;

/// The HRESULT for a core error: what Windows applications see when a
/// request fails.
pub fn of_error(error: &Error) -> Hresult {
    match error {
        Error::PathNotFound { .. } => FILE_NOT_FOUND,
        Error::WrongKind { kind, .. } => match kind {
            Kind::IsDirectory => ACCESS_DENIED,
            Kind::NotDirectory | Kind::SymlinkLoop | Kind::AbsoluteSymlink => PATH_NOT_FOUND,
        },
        Error::AuthFailed { .. } | Error::AuthRequired { .. } | Error::Credentials { .. } => {
            ACCESS_DENIED
        }
        Error::Timeout { .. } => TIMEOUT,
        Error::Unreachable { .. } | Error::NotCached { .. } => NETWORK_UNREACHABLE,
        Error::DigestMismatch { .. } => DATA_ERROR,
        Error::ShortRead { .. } => HANDLE_EOF,
        Error::Io { source, .. } => match source.raw_os_error() {
            // On Windows an OS error is a Win32 code already.
            Some(code) if cfg!(windows) && code > 0 => from_win32(code as u32),
            _ => IO_DEVICE,
        },
        _ => IO_DEVICE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn win32_codes_become_hresults() {
        assert_eq!(IO_PENDING as u32, 0x8007_03E5);
        assert_eq!(FILE_NOT_FOUND as u32, 0x8007_0002);
        assert_eq!(ACCESS_DENIED as u32, 0x8007_0005);
        assert_eq!(INSUFFICIENT_BUFFER as u32, 0x8007_007A);
        assert_eq!(from_win32(0), S_OK);
        assert_eq!(UNEXPECTED as u32, 0x8000_FFFF);
    }

    #[test]
    fn errors_map_to_what_windows_programs_expect() {
        let not_found = Error::PathNotFound { path: "x".into() };
        assert_eq!(of_error(&not_found), FILE_NOT_FOUND);
        let not_dir = Error::WrongKind {
            path: "f\\x".into(),
            kind: Kind::NotDirectory,
        };
        assert_eq!(of_error(&not_dir), PATH_NOT_FOUND);
        let is_dir = Error::WrongKind {
            path: "d".into(),
            kind: Kind::IsDirectory,
        };
        assert_eq!(of_error(&is_dir), ACCESS_DENIED);
        let corrupt = Error::DigestMismatch {
            what: "blob".into(),
            expected: "e".into(),
            actual: "a".into(),
        };
        assert_eq!(of_error(&corrupt), DATA_ERROR);
        let down = Error::Unreachable {
            registry: "r".into(),
            detail: "refused".into(),
            source: None,
        };
        assert_eq!(of_error(&down), NETWORK_UNREACHABLE);
        let other = Error::Malformed {
            what: "m".into(),
            detail: "d".into(),
            source: None,
        };
        assert_eq!(of_error(&other), IO_DEVICE);
    }
}
