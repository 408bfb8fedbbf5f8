//! Windows file names: ordering, case-insensitive equality, validity, and
//! splitting the relative paths ProjFS hands the provider.
//!
//! NTFS, and with it ProjFS, compares names by upcasing each UTF-16 code
//! unit and comparing the results ordinally; that is what
//! `PrjFileNameCompare` does, and the order a provider must fill
//! directory enumerations in. [`compare`] is that comparison, [`key`] the
//! upcased form it compares, so that a listing sorted once by key can be
//! binary-searched for a name in any case.
//!
//! Upcasing uses Unicode's simple (one-to-one) uppercase mapping within the
//! Basic Multilingual Plane: `ß` stays `ß` (its full uppercase is two
//! letters), surrogates are left alone, as in the volume's upcase table.

use std::cmp::Ordering;

/// The upcased UTF-16 form of a name: equal keys are the same name to
/// Windows, and keys order as `PrjFileNameCompare` orders names.
pub fn key(name: &str) -> Vec<u16> {
    name.encode_utf16().map(upcase_unit).collect()
}

/// [`key`] of a name that is already UTF-16.
pub fn key_wide(name: &[u16]) -> Vec<u16> {
    name.iter().copied().map(upcase_unit).collect()
}

/// One UTF-16 code unit, upcased the way the file system's upcase table does.
pub fn upcase_unit(unit: u16) -> u16 {
    if let Ok(ascii) = u8::try_from(unit)
        && ascii.is_ascii()
    {
        return u16::from(ascii.to_ascii_uppercase());
    }
    let Some(c) = char::from_u32(u32::from(unit)) else {
        return unit; // a surrogate half: no case
    };
    let mut upper = c.to_uppercase();
    match (upper.next(), upper.next()) {
        (Some(u), None) => u16::try_from(u32::from(u)).unwrap_or(unit),
        _ => unit,
    }
}

/// Compares two names as `PrjFileNameCompare` does: ordinally, by upcased
/// UTF-16 code unit. `compare("a", "B")` is `Less`; `compare("Ab", "aB")`
/// is `Equal`.
pub fn compare(a: &str, b: &str) -> Ordering {
    a.encode_utf16()
        .map(upcase_unit)
        .cmp(b.encode_utf16().map(upcase_unit))
}

/// Whether two names are the same name to Windows (case-insensitively).
pub fn eq_ignore_case(a: &str, b: &str) -> bool {
    compare(a, b) == Ordering::Equal
}

/// The UTF-16 form of `s`, NUL-terminated, for Windows APIs.
pub fn to_wide_nul(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

/// The components of a path relative to the virtualization root, as ProjFS
/// gives them (`dir1\dir2\file.txt`; `/` is accepted too). Empty
/// components and `.` are skipped, so `""` and `"\"` are the root.
pub fn split_path(path: &str) -> impl Iterator<Item = &str> {
    path.split(['\\', '/'])
        .filter(|c| !c.is_empty() && *c != ".")
}

/// The longest name NTFS stores, in UTF-16 code units.
pub const MAX_NAME_UNITS: usize = 255;

/// Why Windows cannot show `name` as a file name, or `None` if it can.
///
/// Refused: the empty name, `.` and `..`, control characters, the
/// characters `< > : " / \ | ? *` (the last five are also wildcards in
/// enumeration patterns), a trailing space or period (Win32 strips them, so
/// the file could never be opened by that name) and names over 255 UTF-16
/// code units. Reserved device names (`CON`, `NUL`, …) are valid on NTFS
/// and reachable with `\\?\` paths, so they are kept.
pub fn invalid_reason(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("empty name");
    }
    if name == "." || name == ".." {
        return Some("a relative directory name");
    }
    if name.chars().any(|c| u32::from(c) < 0x20) {
        return Some("a control character");
    }
    if name.contains(['<', '>', ':', '"', '/', '\\', '|', '?', '*']) {
        return Some("a character Windows does not allow in names (< > : \" / \\ | ? *)");
    }
    if name.ends_with([' ', '.']) {
        return Some("a trailing space or period");
    }
    if name.encode_utf16().count() > MAX_NAME_UNITS {
        return Some("longer than 255 UTF-16 code units");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_is_upcased_ordinal() {
        // Case does not matter, then code units decide: '_' (0x5F) sorts
        // after the upcased letters (0x41-0x5A), though it comes before
        // the lowercase ones in byte order.
        let mut names = vec!["b", "_x", "A", "a_", "ab", "Z", "10", "9", "É", "e"];
        names.sort_by(|a, b| compare(a, b));
        assert_eq!(
            names,
            vec!["10", "9", "A", "ab", "a_", "b", "e", "Z", "_x", "É"]
        );
        assert_eq!(compare("README", "readme"), Ordering::Equal);
        assert_eq!(compare("abc", "ABCD"), Ordering::Less);
        assert_eq!(compare("straße", "STRASSE"), Ordering::Greater);
    }

    #[test]
    fn byte_order_and_windows_order_differ() {
        // In byte order (the Tree's) uppercase comes first; Windows ignores case.
        let mut bytes = vec!["b", "C", "a"];
        bytes.sort();
        assert_eq!(bytes, vec!["C", "a", "b"]);
        bytes.sort_by(|a, b| compare(a, b));
        assert_eq!(bytes, vec!["a", "b", "C"]);
    }

    #[test]
    fn case_insensitive_equality() {
        assert!(eq_ignore_case("Kernel.IMG", "kernel.img"));
        assert!(eq_ignore_case("ÄÖÜ", "äöü"));
        assert!(eq_ignore_case("ΣΊΣΥΦΟΣ", "σίσυφος"));
        assert!(!eq_ignore_case("straße", "STRASSE"));
        assert!(!eq_ignore_case("a", "a "));
        assert_eq!(key("aé"), key("AÉ"));
    }

    #[test]
    fn surrogates_and_non_bmp_are_compared_as_units() {
        let emoji = "\u{1F600}"; // a surrogate pair in UTF-16
        assert_eq!(key(emoji), emoji.encode_utf16().collect::<Vec<_>>());
        // A surrogate (0xD83D) sorts above most BMP letters but below U+FF21.
        assert_eq!(compare(emoji, "z"), Ordering::Greater);
        assert_eq!(compare(emoji, "\u{FF41}"), Ordering::Less);
        assert_eq!(upcase_unit(0xD83D), 0xD83D);
    }

    #[test]
    fn paths_split_on_both_separators() {
        let parts = |p| split_path(p).collect::<Vec<_>>();
        assert_eq!(parts(""), Vec::<&str>::new());
        assert_eq!(parts("\\"), Vec::<&str>::new());
        assert_eq!(
            parts("dir1\\dir2\\file.txt"),
            vec!["dir1", "dir2", "file.txt"]
        );
        assert_eq!(
            parts("dir1/dir2\\\\file.txt"),
            vec!["dir1", "dir2", "file.txt"]
        );
        assert_eq!(parts(".\\a\\.\\b\\"), vec!["a", "b"]);
        assert_eq!(parts("a\\..\\b"), vec!["a", "..", "b"]);
    }

    #[test]
    fn windows_name_rules() {
        for ok in [
            "vmlinuz",
            "initrd.img",
            "CON",
            "nul.txt",
            ".hidden",
            "a b",
            "日本語",
        ] {
            assert_eq!(invalid_reason(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            (".", "relative"),
            ("..", "relative"),
            ("a:b", "allow"),
            ("what?", "allow"),
            ("x*", "allow"),
            ("q\"uote", "allow"),
            ("pipe|d", "allow"),
            ("tab\there", "control"),
            ("dot.", "trailing"),
            ("space ", "trailing"),
        ] {
            let reason = invalid_reason(bad).unwrap_or_default();
            assert!(reason.contains(why), "{bad:?}: {reason}");
        }
        assert!(invalid_reason(&"x".repeat(255)).is_none());
        assert!(invalid_reason(&"x".repeat(256)).is_some());
        // 255 code units counted in UTF-16, not bytes: 200 × 'é' is 400 bytes.
        assert!(invalid_reason(&"é".repeat(200)).is_none());
    }

    #[test]
    fn wide_strings_are_nul_terminated() {
        assert_eq!(to_wide_nul("ab"), vec![0x61, 0x62, 0]);
        assert_eq!(to_wide_nul(""), vec![0]);
    }
}
