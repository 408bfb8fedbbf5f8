//! Search expressions: `PrjFileNameMatch` semantics.
//!
//! ProjFS passes the provider the expression an application enumerated
//! with (`*.txt`, or the DOS forms Win32 rewrites `*` and `?` into), and the
//! provider returns only the entries that match it. The rules are those of
//! the kernel's `FsRtlIsNameInExpression`, case-insensitively, as written
//! down in [MS-FSA] 2.1.4.4:
//!
//! | wildcard | matches |
//! |---|---|
//! | `*` | zero or more characters |
//! | `?` | exactly one character |
//! | `<` (`DOS_STAR`) | zero or more characters up to, and including, the final `.` of the name |
//! | `>` (`DOS_QM`) | one character, or nothing at a `.` or at the end of the name (a run of them stops there) |
//! | `"` (`DOS_DOT`) | a `.`, or nothing at the end of the name |
//!
//! An empty name matches only the empty expression, so `*` does not match
//! `""`; `*` and `*.*` match every other name.
//!
//! [MS-FSA]: https://learn.microsoft.com/en-us/openspecs/windows_protocols/ms-fsa/

use crate::names;

const STAR: u16 = b'*' as u16;
const QM: u16 = b'?' as u16;
const DOS_STAR: u16 = b'<' as u16;
const DOS_QM: u16 = b'>' as u16;
const DOS_DOT: u16 = b'"' as u16;
const DOT: u16 = b'.' as u16;

/// A compiled search expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    /// The expression, upcased.
    expr: Vec<u16>,
}

impl Pattern {
    /// The expression that matches every name.
    pub fn all() -> Self {
        Pattern { expr: vec![STAR] }
    }

    /// Compiles `expr`.
    pub fn new(expr: &str) -> Self {
        Pattern {
            expr: names::key(expr),
        }
    }

    /// Compiles an expression given in UTF-16.
    pub fn from_wide(expr: &[u16]) -> Self {
        Pattern {
            expr: names::key_wide(expr),
        }
    }

    /// Whether `name` matches, ignoring case.
    pub fn matches(&self, name: &str) -> bool {
        self.matches_key(&names::key(name))
    }

    /// Whether a name already upcased with [`names::key`] matches.
    pub fn matches_key(&self, name: &[u16]) -> bool {
        matches_upcased(name, &self.expr)
    }

    /// Whether the expression has wildcards (`PrjDoesNameContainWildCards`);
    /// without any it matches one name only.
    pub fn has_wildcards(&self) -> bool {
        self.expr
            .iter()
            .any(|c| matches!(*c, STAR | QM | DOS_STAR | DOS_QM | DOS_DOT))
    }
}

/// `PrjFileNameMatch(name, expr)`: whether `name` matches `expr`, ignoring case.
pub fn is_match(name: &str, expr: &str) -> bool {
    Pattern::new(expr).matches(name)
}

/// The matcher, on upcased UTF-16. It tracks the set of expression positions
/// reachable after each name character (a non-deterministic automaton, as
/// the kernel's own matcher does), so it never backtracks: time is
/// O(name × expression).
fn matches_upcased(name: &[u16], expr: &[u16]) -> bool {
    if name.is_empty() || expr.is_empty() {
        return name.is_empty() && expr.is_empty();
    }
    if expr == [STAR] || expr == [STAR, DOT, STAR] {
        return true;
    }
    let last_dot = name.iter().rposition(|&c| c == DOT);
    let n = expr.len();
    let mut current = vec![false; n + 1];
    let mut next = vec![false; n + 1];
    current[0] = true;
    for i in 0..=name.len() {
        let c = name.get(i).copied();
        // Zero-width moves, which depend on what comes next in the name.
        // They only go forward, so one pass in order reaches the closure.
        for p in 0..n {
            if current[p] {
                let skip = match expr[p] {
                    STAR | DOS_STAR => true,
                    DOS_QM => matches!(c, None | Some(DOT)),
                    DOS_DOT => c.is_none(),
                    _ => false,
                };
                if skip {
                    current[p + 1] = true;
                }
            }
        }
        let Some(c) = c else {
            return current[n];
        };
        next.fill(false);
        for p in 0..n {
            if !current[p] {
                continue;
            }
            match expr[p] {
                STAR => next[p] = true,
                QM => next[p + 1] = true,
                DOS_STAR => {
                    if c == DOT && last_dot == Some(i) {
                        next[p + 1] = true; // the final dot ends it
                    } else {
                        next[p] = true;
                    }
                }
                DOS_QM => {
                    if c != DOT {
                        next[p + 1] = true;
                    }
                }
                DOS_DOT => {
                    if c == DOT {
                        next[p + 1] = true;
                    }
                }
                literal => {
                    if literal == c {
                        next[p + 1] = true;
                    }
                }
            }
        }
        if !next.contains(&true) {
            return false;
        }
        std::mem::swap(&mut current, &mut next);
    }
    current[n]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (expression, name, matches): outcomes of `FsRtlIsNameInExpression`
    /// with case ignored, the DOS wildcard cases the kernel documentation
    /// and MS-FSA describe, and the conversions Win32 makes (`*.*` →
    /// `<"*`, `*.txt` → `<.txt`, `?` → `>`).
    const CASES: &[(&str, &str, bool)] = &[
        // Empty strings.
        ("", "", true),
        ("", "a", false),
        ("*", "", false),
        ("**", "", false),
        (".*", "", false),
        ("*?", "", false),
        // `*` and `*.*` match everything else.
        ("*", "a", true),
        ("*", ".", true),
        ("*", "..", true),
        ("*", "SETUP.INI", true),
        ("**", "a", true),
        ("*.*", "noextension", true),
        ("*.*", "a.b", true),
        // Literals, ignoring case.
        ("ntdll.dll", "ntdll.dll", true),
        ("NTDLL.DLL", "ntdll.dll", true),
        ("ntdll.dll", ".", false),
        ("ntdll.dll", "..", false),
        ("ntdll.dll", "~1", false),
        ("smss.exe", "ntdll.dll", false),
        ("abc.exe", "abc.exe", true),
        ("abc.exe", "abc.exe.", false),
        ("abc.exe", "abc.exe.back", false),
        ("abc.exe", "abc.exes", false),
        (".", "NTDLL.DLL", false),
        // `?` is one character, a dot included.
        ("nt??krnl.???", "ntoskrnl.exe", true),
        ("a.b.??.d", "a.b.c1.d", true),
        ("a.b.??.d", "a.b.c.d", false),
        ("?.?.?.?", "1.0.0.1", true),
        ("a?c", "a.c", true),
        ("?*?", "a", false),
        ("?*?", "aa", true),
        ("?*?", "aaaa", true),
        ("*?", "a", true),
        ("*?", "aaa", true),
        // `*` in the middle and combinations.
        ("he*o", "hello", true),
        ("he*o", "helo", true),
        ("he*o", "hella", false),
        ("he*", "hella", true),
        ("*.cpl", "kdcom.dll", false),
        ("*.TTF", "SETUP.INI", false),
        ("*.ttf", "font.TTF", true),
        (".*", "1", false),
        (".*", ".", true),
        (".*", ".txt", true),
        (".*", "1.txt", false),
        ("*.c.d", "a.b.c.d", true),
        ("*.?.c.d", "a.b.c.d", true),
        ("**.?.c.d", "a.b.c.d", true),
        ("a.**.c.d", "a.b.c.d", true),
        ("a.b.*?.d", "a.b.c.d", true),
        ("a.b.*??.d", "a.b.ccc.d", true),
        ("a.b.*??.d", "a.b.cc.d", true),
        ("a.b.*??.d", "a.b.c.d", false),
        ("a.b.*?*.d", "a.b.c.d", true),
        ("*.*.*.*", "127.0.0.1", true),
        ("*?*?*?*", "1.0.0.1", true),
        ("?*?*?*?", "1.0.0.1", true),
        ("*a*ab*abc", "aabaabcdadabdabc", true),
        ("*.bmp;*.dib", "winhlp32.exe", false),
        ("F0_*.*", "f0_", false),
        ("F0_*.*", "f0_.", true),
        ("F0_*.*", "F0_001", false),
        ("F0_*.*", "f0_001.txt", true),
        ("F0_*.", "F0_001.", true),
        ("F0_*.", "F0_001.txt", false),
        // DOS_DOT: a period, or nothing at the end of the name.
        ("ntoskrnl\"exe", "ntoskrnl.exe", true),
        ("ntoskrnl.exe\"", "ntoskrnl.exe", true),
        ("\"ntoskrnl.exe", "ntoskrnl.exe", false),
        ("ntoskrn\".exe", "ntoskrnl.exe", false),
        ("ntoskrn\"\"exe", "ntoskrnl.exe", false),
        ("ntoskrnl.\"exe", "ntoskrnl.exe", false),
        // DOS_STAR: up to and including the final period.
        ("ab<exe", "abcd.exe", true),
        ("ab<exe", "ab.exe", true),
        ("ab<exe", "abcdexe", true),
        ("ab<exe", "acd.exe", false),
        ("a.b<exe", "a.bcd.exe", true),
        ("a<b.exe", "a.bcd.exe", false),
        ("a.b.exe", "a.bcd.exe", false),
        ("<.exe", "test.exe", true),
        ("<.EXE", "test.exe", true),
        ("<.txt", "a.b.txt", true),
        ("<.txt", "a.txt.b", false),
        ("<", "abc", true),
        ("<", "abc.", true),
        ("<", "a.b.c", false),
        // DOS_QM: one character, or nothing at a period or the end.
        ("a>c.exe", "abc.exe", true),
        ("a>c.exe", "ac.exe", false),
        ("a>>>exe", "abc.exe", false),
        ("a>>>exe", "ac.exe", false),
        ("a>>>.exe", "ab.exe", true),
        ("a>>>.exe", "abcd.exe", true),
        ("a>>>.exe", "abcde.exe", false),
        ("file>>>", "file1", true),
        ("file>>>", "file1234", false),
        (">", "", false),
        // Win32's `*.*` becomes `<"*`: every name with or without a dot.
        ("F0_<\"*", ".", false),
        ("F0_<\"*", "..", false),
        ("F0_<\"*", "SETUP.EXE", false),
        ("F0_<\"*", "f0_", true),
        ("F0_<\"*", "F0_.", true),
        ("F0_<\"*", "F0_001", true),
        ("F0_<\"*", "f0_001.", true),
        ("F0_<\"*", "F0_001.txt", true),
        ("<\"*", "noextension", true),
        ("<\"*", "a.b.c", true),
        // Names with characters beyond ASCII.
        ("GRÜSSE*", "grüsse.txt", true),
        ("*.Σ", "x.σ", true),
        ("?", "\u{1F600}", false), // two UTF-16 code units, as on Windows
        ("??", "\u{1F600}", true),
    ];

    #[test]
    fn fsrtl_is_name_in_expression_cases() {
        let failures: Vec<String> = CASES
            .iter()
            .filter(|(expr, name, want)| is_match(name, expr) != *want)
            .map(|(expr, name, want)| format!("{expr:?} vs {name:?}: expected {want}"))
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn wildcard_detection() {
        for (expr, wild) in [
            ("a.txt", false),
            ("*", true),
            ("a?", true),
            ("<.txt", true),
            ("a>", true),
            ("a\"txt", true),
            ("", false),
        ] {
            assert_eq!(Pattern::new(expr).has_wildcards(), wild, "{expr:?}");
        }
    }

    #[test]
    fn without_wildcards_a_pattern_is_one_name_in_any_case() {
        let p = Pattern::new("Vmlinuz");
        assert!(p.matches("vmlinuz"));
        assert!(p.matches("VMLINUZ"));
        assert!(!p.matches("vmlinuz.old"));
        assert!(Pattern::all().matches("anything.at.all"));
    }

    #[test]
    fn long_inputs_do_not_backtrack() {
        // Exponential for a backtracking matcher; linear-times-length here.
        let name = "a".repeat(4000);
        let expr = format!("{}b", "*a".repeat(100));
        assert!(!is_match(&name, &expr));
        assert!(is_match(&name, &"*a".repeat(100)));
    }
}
