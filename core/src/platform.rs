//! Platforms: `os/arch[/variant][:os.version]`, normalised and matched the
//! way the image spec and containerd do (`aarch64` is `arm64`, `arm64` means
//! `arm64/v8`, `x86_64` is `amd64`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A platform as found in an image index, or as asked for with `--platform`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// `linux`, `windows`, …
    pub os: String,
    /// `amd64`, `arm64`, …
    pub architecture: String,
    /// `v8`, `v7`, … (empty when none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
    /// `os.version`, e.g. `10.0.17763.5329` (empty when none).
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub os_version: String,
}

/// Operating systems as OCI (GOOS) names them.
const OSES: [&str; 16] = [
    "linux",
    "windows",
    "darwin",
    "freebsd",
    "netbsd",
    "openbsd",
    "dragonfly",
    "solaris",
    "illumos",
    "aix",
    "android",
    "ios",
    "plan9",
    "js",
    "wasip1",
    "zos",
];

/// Architectures as OCI (GOARCH) names them, and the spellings
/// [`normalize_arch`] understands.
const ARCHES: [&str; 24] = [
    "amd64", "x86_64", "x86-64", "arm64", "aarch64", "arm", "armhf", "armel", "386", "i386",
    "i686", "x86", "ppc64le", "ppc64", "s390x", "riscv64", "mips64le", "mips64", "mipsle", "mips",
    "loong64", "wasm", "sparc64", "ppc",
];

fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant.to_ascii_lowercase();
    match arch.as_str() {
        "x86_64" | "x86-64" | "amd64" => (
            "amd64".into(),
            if variant == "v1" {
                String::new()
            } else {
                variant
            },
        ),
        "aarch64" | "arm64" => (
            "arm64".into(),
            match variant.as_str() {
                "" | "8" | "v8" => "v8".into(),
                _ => variant,
            },
        ),
        "armhf" => ("arm".into(), "v7".into()),
        "armel" => ("arm".into(), "v6".into()),
        "arm" => (
            "arm".into(),
            match variant.as_str() {
                "" | "7" | "v7" => "v7".into(),
                "5" | "6" | "8" => format!("v{variant}"),
                _ => variant,
            },
        ),
        "i386" | "i686" | "x86" => ("386".into(), variant),
        _ => (arch, variant),
    }
}

impl Platform {
    /// The platform of the machine ocifs runs on.
    pub fn host() -> Self {
        let os = match std::env::consts::OS {
            "macos" => "darwin",
            other => other,
        };
        let (architecture, variant) = normalize_arch(std::env::consts::ARCH, "");
        Platform {
            os: os.into(),
            architecture,
            variant: if cfg!(target_arch = "aarch64") {
                variant
            } else {
                String::new()
            },
            os_version: String::new(),
        }
    }

    /// Whether an index entry with platform `candidate` satisfies this
    /// request. An empty variant or os.version in the request matches any.
    pub fn matches(&self, candidate: &Platform) -> bool {
        if !self.os.eq_ignore_ascii_case(&candidate.os) {
            return false;
        }
        let (want_arch, want_variant) = normalize_arch(&self.architecture, &self.variant);
        let (have_arch, have_variant) = normalize_arch(&candidate.architecture, &candidate.variant);
        if want_arch != have_arch {
            return false;
        }
        // A request without a variant names the architecture as a whole.
        if !self.variant.is_empty() && want_variant != have_variant {
            return false;
        }
        self.os_version.is_empty() || self.os_version == candidate.os_version
    }

    /// Whether `candidate` is this request's default variant (used to break
    /// ties when a request without a variant matched several entries).
    pub fn is_default_variant_of(&self, candidate: &Platform) -> bool {
        let (arch, _) = normalize_arch(&self.architecture, "");
        let (_, default_variant) = normalize_arch(&arch, "");
        let (_, have_variant) = normalize_arch(&candidate.architecture, &candidate.variant);
        have_variant == default_variant
    }

    /// Entries such as buildx attestations carry `unknown/unknown`.
    pub fn is_unknown(&self) -> bool {
        self.os == "unknown" || self.architecture == "unknown"
    }
}

impl FromStr for Platform {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidPlatform {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (head, os_version) = match s.split_once(':') {
            Some((h, v)) if !v.is_empty() => (h, v),
            Some(_) => return Err(bad("empty os.version after ':'")),
            None => (s, ""),
        };
        let parts: Vec<&str> = head.split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        // A bare architecture (`aarch64`, `arm/v7`) means this machine's OS.
        let host = Platform::host();
        let is_os = |p: &str| OSES.contains(&p.to_ascii_lowercase().as_str());
        let is_arch = |p: &str| ARCHES.contains(&p.to_ascii_lowercase().as_str());
        let (os, arch, variant) = match parts.as_slice() {
            [os] if is_os(os) => {
                return Err(bad(
                    "an OS alone: give OS/ARCH (e.g. linux/amd64) or an architecture",
                ));
            }
            [arch] => (host.os.as_str(), *arch, ""),
            [arch, variant] if is_arch(arch) && !is_os(arch) => (host.os.as_str(), *arch, *variant),
            [os, arch] => (*os, *arch, ""),
            [os, arch, variant] => (*os, *arch, *variant),
            _ => return Err(bad("wrong number of '/'-separated parts")),
        };
        if !ok(os) || !ok(arch) || (!variant.is_empty() && !ok(variant)) {
            return Err(bad("empty or non-alphanumeric part"));
        }
        if !os_version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
        {
            return Err(bad(
                "os.version holds characters other than letters, digits, '.', '_', '-', '+'",
            ));
        }
        Ok(Platform {
            os: os.to_ascii_lowercase(),
            architecture: arch.to_ascii_lowercase(),
            variant: variant.to_ascii_lowercase(),
            os_version: os_version.to_owned(),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        if !self.os_version.is_empty() {
            write!(f, ":{}", self.os_version)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn parses_all_parts() {
        let x = p("windows/amd64:10.0.17763.5329");
        assert_eq!(
            (
                x.os.as_str(),
                x.architecture.as_str(),
                x.os_version.as_str()
            ),
            ("windows", "amd64", "10.0.17763.5329")
        );
        assert_eq!(p("linux/arm64/v8").variant, "v8");
        assert_eq!(p("linux/arm64/v8:1.0").to_string(), "linux/arm64/v8:1.0");
        for bad in [
            "linux",
            "linux/",
            "/amd64",
            "a/b/c/d",
            "linux/amd64:",
            "linux/am d64",
            "linux/amd64:a/b",
        ] {
            assert!(bad.parse::<Platform>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn arm64_means_v8_and_aarch64() {
        assert!(p("linux/arm64").matches(&p("linux/arm64/v8")));
        assert!(p("linux/arm64/v8").matches(&p("linux/arm64")));
        assert!(p("linux/aarch64").matches(&p("linux/arm64/v8")));
        assert!(!p("linux/arm64/v9").matches(&p("linux/arm64/v8")));
        assert!(p("linux/x86_64").matches(&p("linux/amd64")));
        assert!(!p("linux/amd64").matches(&p("windows/amd64")));
        assert!(p("linux/arm/v7").matches(&p("linux/arm")));
        assert!(!p("linux/arm/v6").matches(&p("linux/arm/v7")));
    }

    #[test]
    fn a_bare_architecture_means_this_machines_os() {
        let os = Platform::host().os;
        for bare in [
            "aarch64",
            "x86_64",
            "arm64",
            "arm/v7",
            "arm64/v8",
            "riscv64:1.0",
        ] {
            assert_eq!(p(bare), p(&format!("{os}/{bare}")), "{bare}");
        }
        assert!(p("aarch64").matches(&p(&format!("{os}/arm64/v8"))));
        // An OS first is still OS/ARCH.
        assert_eq!(p("windows/amd64").os, "windows");
        let e = "linux".parse::<Platform>().unwrap_err().to_string();
        assert!(e.contains("an OS alone"), "{e}");
    }

    #[test]
    fn os_version_narrows() {
        let a = p("linux/arm64/v8:1.0");
        let b = p("linux/arm64/v8:2.0");
        assert!(p("linux/arm64").matches(&a) && p("linux/arm64").matches(&b));
        assert!(p("linux/arm64:2.0").matches(&b));
        assert!(!p("linux/arm64:2.0").matches(&a));
    }

    #[test]
    fn host_is_well_formed() {
        let h = Platform::host();
        assert!(!h.os.is_empty() && !h.architecture.is_empty());
        assert_eq!(h.to_string().parse::<Platform>().ok(), Some(h));
    }
}
