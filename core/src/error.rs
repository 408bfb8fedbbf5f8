//! The one error type of ocifs-core.
//!
//! Every variant says what went wrong in terms a user can act on, carries the
//! reference, digest or path involved, and maps to one errno (for the
//! filesystem backends) and one exit code (for the CLI).

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error another one was made from, kept as its `source()`; shared,
/// because [`Error`] is `Clone`.
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// Everything that can go wrong between a reference and the bytes of a file.
///
/// `Clone`, so that one failed fetch can wake all its waiters with the error.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The reference string could not be parsed.
    #[error("invalid reference {input:?}: {reason}")]
    InvalidReference {
        /// What the user typed.
        input: String,
        /// Why it is not a reference.
        reason: String,
    },

    /// A setting (of the cache, of a mount) has a value ocifs cannot use.
    #[error("invalid {option} {value}: {reason}")]
    InvalidOption {
        /// The setting, in words ("chunk size").
        option: String,
        /// The value given.
        value: String,
        /// What a usable value is.
        reason: String,
    },

    /// A digest string is not `sha256:` followed by 64 lowercase hex digits.
    #[error("invalid digest {input:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest {
        /// What was given.
        input: String,
    },

    /// A platform string is not `os/arch[/variant][:os.version]`.
    #[error(
        "invalid platform {input:?}: {reason} (expected os/arch[/variant][:os.version], e.g. linux/arm64/v8)"
    )]
    InvalidPlatform {
        /// What was given.
        input: String,
        /// Why it does not parse.
        reason: String,
    },

    /// The registry or layout has no manifest under this tag or digest.
    #[error("{reference}: manifest not found{}", nearby_hint(.nearby))]
    ManifestNotFound {
        /// The reference asked for.
        reference: String,
        /// Tags that do exist and look alike (may be empty).
        nearby: Vec<String>,
    },

    /// The registry or layout has no blob with this digest.
    #[error("blob {digest} not found in {source_name}")]
    BlobNotFound {
        /// The digest asked for.
        digest: String,
        /// The registry repository or layout directory.
        source_name: String,
    },

    /// No entry of an index matches the requested platform.
    #[error("no manifest for platform {wanted} in {reference}; available platforms: {}", list_or_none(.available))]
    PlatformNotFound {
        /// The reference whose index was searched.
        reference: String,
        /// The platform asked for.
        wanted: String,
        /// The platforms the index does have.
        available: Vec<String>,
    },

    /// An index (or layout) holds several candidates and nothing picks one.
    #[error("{reference} is ambiguous: {reason}; candidates:\n  {}", .candidates.join("\n  "))]
    Ambiguous {
        /// The reference that was resolved.
        reference: String,
        /// Why no single candidate was chosen.
        reason: String,
        /// Each candidate, with its tag, digest and platform.
        candidates: Vec<String>,
    },

    /// The registry refused the credentials given.
    #[error(
        "authentication to {registry} failed: {detail} (check --username/--password or the docker config)"
    )]
    AuthFailed {
        /// The registry host.
        registry: String,
        /// What the registry or token server said.
        detail: String,
    },

    /// The registry demands credentials and none were given.
    #[error(
        "{registry} requires authentication: pass --username/--password or log in with a docker-compatible client"
    )]
    AuthRequired {
        /// The registry host.
        registry: String,
    },

    /// The registry could not be reached at all.
    #[error("registry {registry} is unreachable: {detail}{}", tls_hint(.detail))]
    Unreachable {
        /// The registry host.
        registry: String,
        /// The underlying connection error.
        detail: String,
        /// The connection error itself, when there is one.
        #[source]
        source: Option<Cause>,
    },

    /// An operation did not finish in time, retries included.
    #[error("{what} timed out after {:.1}s", .after.as_secs_f64())]
    Timeout {
        /// The operation.
        what: String,
        /// How long was waited in total.
        after: Duration,
    },

    /// A transfer broke off mid-body (reset, truncated body).
    #[error("transfer of {what} from {registry} broke off: {detail}")]
    Transfer {
        /// The registry host.
        registry: String,
        /// What was being transferred.
        what: String,
        /// The underlying error.
        detail: String,
        /// The underlying error itself, when there is one.
        #[source]
        source: Option<Cause>,
    },

    /// The registry answered with an error status that retries did not cure.
    #[error("registry {registry} answered {status} for {what}: {detail}")]
    Registry {
        /// The registry host.
        registry: String,
        /// The HTTP status code.
        status: u16,
        /// What was requested.
        what: String,
        /// The error body or reason.
        detail: String,
        /// The HTTP client's error, when the status came with one.
        #[source]
        source: Option<Cause>,
    },

    /// A mirror answered a request for part of a blob with the whole of
    /// it (`200`): it is not read through to the offset.
    #[error(
        "mirror {registry} ignored the Range of a request for {what} (it answered 200 with the whole blob)"
    )]
    RangeIgnored {
        /// The mirror's host.
        registry: String,
        /// What was requested.
        what: String,
    },

    /// A configuration file (hosts.toml, registries.conf) that cannot be
    /// used.
    #[error("{file}{}: {detail}", .line.map(|l| format!(": line {l}")).unwrap_or_default())]
    Config {
        /// The file.
        file: String,
        /// The line, where known.
        line: Option<usize>,
        /// What is wrong.
        detail: String,
    },

    /// Content does not hash to the digest that names it. Never served.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was checked (a manifest reference, a blob).
        what: String,
        /// The digest it should have had.
        expected: String,
        /// The digest it had.
        actual: String,
    },

    /// Content is larger than ocifs accepts for its kind.
    #[error("{what} is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// What was too large.
        what: String,
        /// Its size (or the size seen so far).
        size: u64,
        /// The limit.
        limit: u64,
    },

    /// A manifest or index is not valid JSON of the expected shape.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was being parsed, with its digest or path.
        what: String,
        /// What is wrong with it.
        detail: String,
        /// The parser's error, when there is one.
        #[source]
        source: Option<Cause>,
    },

    /// A media type ocifs does not know how to handle.
    #[error("unsupported media type {media_type:?} for {what}; expected {expected}")]
    UnsupportedMediaType {
        /// The media type found.
        media_type: String,
        /// Where it was found.
        what: String,
        /// What would have been accepted.
        expected: String,
    },

    /// A directory is not a usable OCI image layout.
    #[error("{path} is not a usable OCI image layout: {detail}")]
    Layout {
        /// The layout directory.
        path: String,
        /// What is wrong with it.
        detail: String,
        /// The I/O or parse error behind it, when there is one.
        #[source]
        source: Option<Cause>,
    },

    /// A layer title cannot become a file name in the view.
    #[error("layer {digest} has an unusable title {title:?}: {reason}")]
    InvalidTitle {
        /// The layer's digest.
        digest: String,
        /// The title annotation.
        title: String,
        /// Why it cannot be used.
        reason: String,
    },

    /// A package layer (zip, tar), or one entry of it, cannot be read.
    #[error("package {package}: {}{reason}", entry_prefix(.entry))]
    Archive {
        /// The layer's title, or its digest.
        package: String,
        /// The entry, when only it is bad.
        entry: Option<String>,
        /// What is wrong.
        reason: String,
        /// The read or decoding error behind it, when there is one.
        #[source]
        source: Option<Cause>,
    },

    /// A layer of a container image, or one entry of it, cannot be read.
    #[error("layer {layer}: {}{reason}", entry_prefix(.entry))]
    Layer {
        /// The layer's digest.
        layer: String,
        /// The entry, when only it is bad.
        entry: Option<String>,
        /// What is wrong.
        reason: String,
        /// The read or decoding error behind it, when there is one.
        #[source]
        source: Option<Cause>,
    },

    /// No such file or directory in the artifact.
    #[error("{path}: no such file or directory in the artifact")]
    PathNotFound {
        /// The path asked for.
        path: String,
    },

    /// A path names a directory where a file is needed, or the reverse,
    /// or a symbolic link that cannot be followed.
    #[error("{path}: {kind}")]
    WrongKind {
        /// The path asked for.
        path: String,
        /// What the path is that makes it wrong here.
        kind: Kind,
    },

    /// A source returned fewer bytes than the range asked for.
    #[error("short read of {digest}: asked for {expected} bytes at offset {offset}, got {got}")]
    ShortRead {
        /// The blob.
        digest: String,
        /// Where the read started.
        offset: u64,
        /// How many bytes were asked for.
        expected: u64,
        /// How many came.
        got: u64,
    },

    /// Credentials could not be read from a docker or podman config.
    #[error("cannot read credentials: {detail}")]
    Credentials {
        /// What went wrong.
        detail: String,
    },

    /// A local I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The OS error.
        #[source]
        source: Arc<io::Error>,
    },

    /// A cache directory others could write to: refused.
    #[error("refusing the cache directory {path}: it {detail}")]
    UnsafeCache {
        /// The directory.
        path: String,
        /// What is wrong, and the fix.
        detail: String,
    },

    /// A cache directory in a format this ocifs does not read (made by a
    /// newer one, or damaged): refused, never misread.
    #[error("refusing the cache directory {path}: {detail}")]
    CacheFormat {
        /// The directory.
        path: String,
        /// What was found, and the fix.
        detail: String,
    },

    /// Something is not in the cache and the network may not be used.
    #[error("{what} is not in the cache, and {why}")]
    NotCached {
        /// What was asked for.
        what: String,
        /// Why the registry was not asked (offline, unreachable).
        why: String,
    },
}

/// Why a path cannot be used as it is: the kind of [`Error::WrongKind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory where a file is needed.
    IsDirectory,
    /// A file (or other non-directory) where a directory is needed.
    NotDirectory,
    /// Symbolic links followed more than 40 times on the way.
    SymlinkLoop,
    /// A symbolic link to an absolute path, outside the artifact.
    AbsoluteSymlink,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::IsDirectory => "is a directory",
            Kind::NotDirectory => "not a directory",
            Kind::SymlinkLoop => "too many levels of symbolic links",
            Kind::AbsoluteSymlink => "a symbolic link to an absolute path, outside the artifact",
        })
    }
}

/// `e` as the [`Cause`] an error made from it keeps.
pub(crate) fn cause(e: impl std::error::Error + Send + Sync + 'static) -> Option<Cause> {
    Some(Arc::new(e))
}

fn nearby_hint(nearby: &[String]) -> String {
    if nearby.is_empty() {
        String::new()
    } else {
        format!(" (tags that exist: {})", nearby.join(", "))
    }
}

fn entry_prefix(entry: &Option<String>) -> String {
    entry
        .as_ref()
        .map(|e| format!("entry {e:?}: "))
        .unwrap_or_default()
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

fn tls_hint(detail: &str) -> &'static str {
    let d = detail.to_ascii_lowercase();
    if [
        "certificate",
        "tls",
        "ssl",
        "corrupt message",
        "invalidcontenttype",
    ]
    .iter()
    .any(|w| d.contains(w))
    {
        " (for a registry without TLS use --plain-http; for a self-signed certificate --insecure)"
    } else {
        ""
    }
}

/// Exit codes of the `ocifs` command, one per kind of failure.
pub mod exit_code {
    /// Anything not listed below.
    pub const OTHER: u8 = 1;
    /// The command line, a reference, digest, platform or setting is malformed.
    pub const USAGE: u8 = 2;
    /// A tag, manifest, platform, blob or path does not exist.
    pub const NOT_FOUND: u8 = 3;
    /// Credentials missing or refused.
    pub const AUTH: u8 = 4;
    /// The registry is unreachable, timed out or keeps failing.
    pub const NETWORK: u8 = 5;
    /// Content failed its digest check.
    pub const INTEGRITY: u8 = 6;
    /// A manifest, index or layout is malformed, too large or unsupported.
    pub const INVALID_CONTENT: u8 = 7;
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }

    /// Content that does not hash to the digest (or checksum) that names
    /// it: `what` was checked, `expected` is what it should have had.
    pub fn digest_mismatch(
        what: impl Into<String>,
        expected: impl fmt::Display,
        actual: impl fmt::Display,
    ) -> Self {
        Error::DigestMismatch {
            what: what.into(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        }
    }

    /// A blob that is not the blob `digest` names (another digest, another
    /// length): the message says "blob DIGEST DETAIL", `detail` saying where
    /// it was read and how long it was.
    pub fn blob_mismatch(
        digest: impl fmt::Display,
        detail: impl fmt::Display,
        actual: impl fmt::Display,
    ) -> Self {
        Error::DigestMismatch {
            what: format!("blob {digest} {detail}"),
            expected: digest.to_string(),
            actual: actual.to_string(),
        }
    }

    /// Whether trying the same request again may succeed (5xx, 429,
    /// connection errors, timeouts of a single attempt).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. }
            | Error::Timeout { .. }
            | Error::ShortRead { .. }
            | Error::Transfer { .. } => true,
            Error::Registry { status, .. } => *status == 429 || *status >= 500 || *status == 0,
            _ => false,
        }
    }

    /// The exit code the CLI uses for this error.
    pub fn exit_code(&self) -> u8 {
        use exit_code::*;
        match self {
            Error::InvalidReference { .. }
            | Error::InvalidOption { .. }
            | Error::InvalidDigest { .. }
            | Error::InvalidPlatform { .. }
            | Error::Config { .. } => USAGE,
            Error::ManifestNotFound { .. }
            | Error::BlobNotFound { .. }
            | Error::PlatformNotFound { .. }
            | Error::PathNotFound { .. }
            | Error::WrongKind { .. }
            | Error::Ambiguous { .. } => NOT_FOUND,
            Error::AuthFailed { .. } | Error::AuthRequired { .. } | Error::Credentials { .. } => {
                AUTH
            }
            Error::Unreachable { .. }
            | Error::Timeout { .. }
            | Error::Registry { .. }
            | Error::Transfer { .. }
            | Error::RangeIgnored { .. }
            | Error::NotCached { .. } => NETWORK,
            Error::DigestMismatch { .. } | Error::ShortRead { .. } => INTEGRITY,
            Error::TooLarge { .. }
            | Error::Malformed { .. }
            | Error::UnsupportedMediaType { .. }
            | Error::Layout { .. }
            | Error::InvalidTitle { .. }
            | Error::Archive { .. }
            | Error::Layer { .. } => INVALID_CONTENT,
            Error::Io { .. } | Error::UnsafeCache { .. } | Error::CacheFormat { .. } => OTHER,
        }
    }

    /// The errno a filesystem backend answers with for this error.
    pub fn errno(&self) -> i32 {
        // Values are the Linux ones; the Windows backend maps errors itself.
        const ENOENT: i32 = 2;
        const EIO: i32 = 5;
        const EACCES: i32 = 13;
        const ENOTDIR: i32 = 20;
        const EISDIR: i32 = 21;
        const ETIMEDOUT: i32 = 110;
        match self {
            Error::PathNotFound { .. } => ENOENT,
            Error::WrongKind { kind, .. } => match kind {
                Kind::IsDirectory => EISDIR,
                Kind::NotDirectory | Kind::SymlinkLoop | Kind::AbsoluteSymlink => ENOTDIR,
            },
            Error::AuthFailed { .. } | Error::AuthRequired { .. } => EACCES,
            Error::Timeout { .. } => ETIMEDOUT,
            // A local I/O error keeps its errno (EBUSY, EACCES, ENOSPC tell
            // the caller something), except a missing file: that is one of
            // the cache's own files, and ENOENT would say the caller's file
            // does not exist.
            Error::Io { source, .. } => match source.raw_os_error() {
                Some(ENOENT) | None => EIO,
                Some(errno) => errno,
            },
            _ => EIO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_not_found_lists_what_exists() {
        let e = Error::PlatformNotFound {
            reference: "r/x:1".into(),
            wanted: "linux/s390x".into(),
            available: vec!["linux/amd64".into(), "linux/arm64/v8".into()],
        };
        let msg = e.to_string();
        assert!(msg.contains("linux/s390x"), "{msg}");
        assert!(msg.contains("linux/amd64, linux/arm64/v8"), "{msg}");
        assert_eq!(e.exit_code(), exit_code::NOT_FOUND);
    }

    #[test]
    fn transient_errors_are_the_retryable_ones() {
        let status = |status| Error::Registry {
            registry: "r".into(),
            status,
            what: "x".into(),
            detail: String::new(),
            source: None,
        };
        assert!(status(503).is_transient());
        assert!(status(429).is_transient());
        assert!(!status(404).is_transient());
        assert!(!status(401).is_transient());
        assert!(
            !Error::DigestMismatch {
                what: "b".into(),
                expected: "e".into(),
                actual: "a".into()
            }
            .is_transient()
        );
    }

    #[test]
    fn io_errors_keep_their_errno_but_a_missing_cache_file_is_eio() {
        let io = |code| Error::io("x", io::Error::from_raw_os_error(code));
        assert_eq!(io(16).errno(), 16);
        assert_eq!(io(2).errno(), 5);
        assert_eq!(Error::io("x", io::Error::other("no os error")).errno(), 5);
    }

    #[test]
    fn wrong_kinds_say_what_the_path_is_and_pick_the_errno() {
        let e = |kind| Error::WrongKind {
            path: "a/b".into(),
            kind,
        };
        assert_eq!(e(Kind::IsDirectory).to_string(), "a/b: is a directory");
        assert_eq!(e(Kind::IsDirectory).errno(), 21);
        assert_eq!(e(Kind::NotDirectory).to_string(), "a/b: not a directory");
        assert_eq!(e(Kind::NotDirectory).errno(), 20);
        assert_eq!(e(Kind::SymlinkLoop).errno(), 20);
        assert_eq!(e(Kind::AbsoluteSymlink).exit_code(), exit_code::NOT_FOUND);
    }

    #[test]
    fn an_invalid_option_is_a_usage_error() {
        let e = Error::InvalidOption {
            option: "chunk size".into(),
            value: "1000".into(),
            reason: "it must be a power of two of at least 4096".into(),
        };
        assert_eq!(
            e.to_string(),
            "invalid chunk size 1000: it must be a power of two of at least 4096"
        );
        assert_eq!(e.exit_code(), exit_code::USAGE);
    }

    #[test]
    fn digest_mismatches_read_as_their_literals_did() {
        let e = Error::digest_mismatch("manifest r:1", "sha256:e", "sha256:a");
        assert_eq!(
            e.to_string(),
            "digest mismatch for manifest r:1: expected sha256:e, got sha256:a"
        );
        let e = Error::blob_mismatch("sha256:e", "in r (3 bytes read, 4 expected)", "sha256:a");
        assert_eq!(
            e.to_string(),
            "digest mismatch for blob sha256:e in r (3 bytes read, 4 expected): expected sha256:e, got sha256:a"
        );
        assert_eq!(e.exit_code(), exit_code::INTEGRITY);
    }

    #[test]
    fn a_kept_cause_is_the_source_and_leaves_the_message_alone() {
        let parse = serde_json::from_slice::<u32>(b"{").unwrap_err();
        let e = Error::Malformed {
            what: "m".into(),
            detail: parse.to_string(),
            source: cause(parse),
        };
        let source = std::error::Error::source(&e).expect("a source");
        assert_eq!(e.to_string(), format!("malformed m: {source}"));
        let clone = e.clone();
        assert!(std::error::Error::source(&clone).is_some());
    }

    #[test]
    fn tls_errors_suggest_plain_http() {
        let e = Error::Unreachable {
            registry: "localhost:5000".into(),
            detail: "invalid peer certificate: UnknownIssuer".into(),
            source: None,
        };
        assert!(e.to_string().contains("--plain-http"));
    }
}

/// Text from outside (a registry's error body) made safe to print: invalid
/// UTF-8 replaced, control characters escaped (`\u{1b}`, `\n`), cut after
/// `max` characters with an ellipsis.
pub fn printable(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod printable_tests {
    use super::printable;

    #[test]
    fn control_characters_are_escaped_and_long_text_cut() {
        let hostile = b"denied\x1b]0;pwned\x07\x1b[2J\r\nnext\xff";
        let shown = printable(hostile, 300);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.starts_with("denied\\u{1b}]0;pwned"), "{shown:?}");
        assert!(shown.contains("\\r\\nnext"), "{shown:?}");
        let long = vec![b'x'; 10_000];
        let cut = printable(&long, 300);
        assert_eq!(cut.chars().count(), 301);
        assert!(cut.ends_with('…'));
        assert_eq!(printable(b"plain words", 300), "plain words");
    }
}
