//! Entry names: what a name in an archive may be before it becomes a path
//! in the view.

use crate::codec::tar::MAX_NAME;

/// Splits an entry name into path components, refusing anything that could
/// land outside the package's directory or that no filesystem shows:
/// absolute paths, `..`, backslashes (a separator on Windows), drive
/// prefixes, NUL, over-long names. Empty and `.` components are dropped
/// (`./bin/x`, `dir/`), so the package's own directory is `[]`.
pub(crate) fn entry_components(name: &str) -> Result<Vec<String>, String> {
    if name.len() > MAX_NAME {
        return Err(format!("name longer than {MAX_NAME} bytes"));
    }
    if name.contains('\0') {
        return Err("NUL in the name".into());
    }
    if name.contains('\\') {
        return Err("backslash in the name (a path separator on Windows)".into());
    }
    if name.starts_with('/') {
        return Err("absolute path".into());
    }
    let b = name.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        return Err("a Windows drive prefix".into());
    }
    let mut out = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("\"..\" path component (it would escape the package)".into()),
            c if c.len() > 255 => return Err("a path component is longer than 255 bytes".into()),
            c => out.push(c.to_owned()),
        }
    }
    Ok(out)
}

/// Checks a symlink target: any string a filesystem can hold (the link is
/// only shown, never followed by ocifs outside the view).
pub(crate) fn check_target(target: &str) -> Result<(), String> {
    if target.is_empty() {
        return Err("empty symlink target".into());
    }
    if target.len() > MAX_NAME {
        return Err(format!("symlink target longer than {MAX_NAME} bytes"));
    }
    if target.contains('\0') {
        return Err("NUL in the symlink target".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let ok = |n: &str| entry_components(n).unwrap();
        assert_eq!(ok("a/b"), ["a", "b"]);
        assert_eq!(ok("./bin/x"), ["bin", "x"]);
        assert_eq!(ok("dir/"), ["dir"]);
        assert_eq!(ok("./"), Vec::<String>::new());
        for (bad, why) in [
            ("../evil", ".."),
            ("a/../../b", ".."),
            ("/abs", "absolute"),
            ("a\\..\\b", "backslash"),
            ("C:evil", "drive"),
            ("a\0b", "NUL"),
        ] {
            let e = entry_components(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(entry_components(&"a/".repeat(3000)).is_err());
        assert!(entry_components(&"x".repeat(256)).is_err());
        assert!(check_target("../lib/x").is_ok());
        assert!(check_target("/usr/bin/x").is_ok());
        assert!(check_target("").is_err());
    }
}
