//! The config file.
//!
//! Read, in order, from the system's file (`/etc/ocifs/config.toml`;
//! `%ProgramData%\ocifs\config.toml` on Windows) and the user's
//! (`$XDG_CONFIG_HOME/ocifs/config.toml`, else `~/.config/ocifs/config.toml`;
//! `%APPDATA%\ocifs\config.toml` on Windows), a later file's key winning; or
//! only from the file `--config` (or `$OCIFS_CONFIG`) names. A flag, or an
//! environment variable a flag reads (`$OCIFS_CACHE`), wins over every file,
//! and a file over the built-in default.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::Deserialize;

use ocifs_core::Verify;

use crate::options::{CacheArgs, RegistryDefaults, SourceArgs, parse_size};

/// A size as a file writes it: `10G`, `"512K"` or a number of bytes.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(try_from = "SizeText")]
struct Size(u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeText {
    Bytes(u64),
    Text(String),
}

impl TryFrom<SizeText> for Size {
    type Error = String;
    fn try_from(t: SizeText) -> Result<Self, String> {
        match t {
            SizeText::Bytes(n) => Ok(Size(n)),
            SizeText::Text(s) => parse_size(&s).map(Size),
        }
    }
}

/// A verify mode as a file writes it.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(try_from = "String")]
struct Mode(Verify);

impl TryFrom<String> for Mode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse().map(Mode)
    }
}

/// One file, as written. Every key is optional; an unknown one is an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    cache_dir: Option<PathBuf>,
    cache_max_size: Option<Size>,
    verify: Option<Mode>,
    timeout: Option<f64>,
    retries: Option<u32>,
    chunk_size: Option<Size>,
    memory_cache_size: Option<Size>,
    background_fetch_max: Option<Size>,
    #[serde(default)]
    registry: BTreeMap<String, RegistryFile>,
}

/// A `[registry."HOST[:PORT]"]` table, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    plain_http: Option<bool>,
    insecure: Option<bool>,
    mirrors: Option<Vec<String>>,
}

/// A value and the file it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Set<T> {
    pub value: T,
    pub file: PathBuf,
}

/// What a registry's table says, merged over the files.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RegistrySettings {
    /// Talk to it over plain HTTP.
    pub plain_http: Option<Set<bool>>,
    /// Accept any TLS certificate from it.
    pub insecure: Option<Set<bool>>,
    /// Mirrors tried first, in order (`[scheme://]host[:port][/path]`).
    pub mirrors: Option<Set<Vec<String>>>,
}

/// The settings of every file read, merged.
#[derive(Debug, Default)]
pub struct Config {
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    /// The files looked for when none was found (for `config show`).
    pub looked_for: Vec<PathBuf>,
    cache_dir: Option<Set<PathBuf>>,
    cache_max_size: Option<Set<u64>>,
    verify: Option<Set<Verify>>,
    timeout: Option<Set<f64>>,
    retries: Option<Set<u32>>,
    chunk_size: Option<Set<u64>>,
    memory_cache_size: Option<Set<u64>>,
    background_fetch_max: Option<Set<u64>>,
    registry: BTreeMap<String, RegistrySettings>,
}

/// The system's and the user's config file, in the order they are read.
pub fn default_files() -> Vec<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let file = |dir: PathBuf| dir.join("ocifs").join("config.toml");
    if cfg!(windows) {
        [env("ProgramData"), env("APPDATA")]
            .into_iter()
            .flatten()
            .map(file)
            .collect()
    } else {
        let user = env("XDG_CONFIG_HOME").or_else(|| env("HOME").map(|h| h.join(".config")));
        std::iter::once(PathBuf::from("/etc"))
            .chain(user)
            .map(file)
            .collect()
    }
}

impl Config {
    /// Reads `explicit` (which must exist), or else those of `defaults`
    /// that exist.
    pub fn load(explicit: Option<&Path>, defaults: &[PathBuf]) -> anyhow::Result<Config> {
        let mut config = Config::default();
        if let Some(path) = explicit {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the config file {}", path.display()))?;
            config.merge(path, &text)?;
            return Ok(config);
        }
        for path in defaults {
            match std::fs::read_to_string(path) {
                Ok(text) => config.merge(path, &text)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("reading the config file {}", path.display()));
                }
            }
        }
        if config.files.is_empty() {
            config.looked_for = defaults.to_vec();
        }
        Ok(config)
    }

    /// Adds one file's settings over those read before.
    fn merge(&mut self, path: &Path, text: &str) -> anyhow::Result<()> {
        let file: File = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let message = e.message().replace("field", "key");
            match line {
                Some(line) => anyhow::anyhow!("{}: line {line}: {message}", path.display()),
                None => anyhow::anyhow!("{}: {message}", path.display()),
            }
        })?;
        let at = |what: &str| format!("{}: {what}", path.display());
        if let Some(t) = file.timeout
            && !(t.is_finite() && t > 0.0)
        {
            bail!("{}", at("timeout must be a positive number of seconds"));
        }
        for name in file.registry.keys() {
            if name.is_empty() || name.contains(['/', ' ']) {
                bail!(
                    "{}",
                    at(&format!(
                        "[registry.{name:?}]: a registry is a host name with an optional port"
                    ))
                );
            }
        }
        fn set<T>(value: T, file: &Path) -> Set<T> {
            Set {
                value,
                file: file.to_owned(),
            }
        }
        macro_rules! over {
            ($($key:ident $(. $inner:tt)?),*) => {$(
                if let Some(v) = file.$key {
                    self.$key = Some(set(v $(. $inner)?, path));
                }
            )*};
        }
        over!(
            cache_dir,
            cache_max_size.0,
            verify.0,
            timeout,
            retries,
            chunk_size.0,
            memory_cache_size.0,
            background_fetch_max.0
        );
        for (name, r) in file.registry {
            let merged = self.registry.entry(name.clone()).or_default();
            if let Some(v) = r.plain_http {
                merged.plain_http = Some(set(v, path));
            }
            if let Some(v) = r.insecure {
                merged.insecure = Some(set(v, path));
            }
            if let Some(v) = r.mirrors {
                for url in &v {
                    if let Err(e) = ocifs_core::Endpoint::mirror(url) {
                        bail!("{}", at(&format!("[registry.{name:?}] mirrors: {e}")));
                    }
                }
                merged.mirrors = Some(set(v, path));
            }
        }
        self.files.push(path.to_owned());
        Ok(())
    }

    /// Puts the files' cache settings into `args` where no flag (or
    /// environment variable) gave one.
    pub fn apply_cache(&self, args: &mut CacheArgs, m: &ArgMatches) {
        if !given(m, "cache_dir")
            && let Some(s) = &self.cache_dir
        {
            args.cache_dir = Some(s.value.clone());
        }
        if !given(m, "cache_max_size")
            && let Some(s) = &self.cache_max_size
        {
            args.cache_max_size = s.value;
        }
    }

    /// Puts the files' settings into `args` where no flag gave one.
    pub fn apply_source(&self, args: &mut SourceArgs, m: &ArgMatches) {
        self.apply_cache(&mut args.cache, m);
        macro_rules! fill {
            ($($key:ident),*) => {$(
                if !given(m, stringify!($key)) && let Some(s) = &self.$key {
                    args.$key = s.value.clone();
                }
            )*};
        }
        fill!(
            verify,
            timeout,
            retries,
            chunk_size,
            memory_cache_size,
            background_fetch_max
        );
        let on = |s: &Option<Set<bool>>| s.as_ref().is_some_and(|s| s.value);
        args.registries = self
            .registry
            .iter()
            .map(|(name, r)| {
                let defaults = RegistryDefaults {
                    plain_http: on(&r.plain_http),
                    insecure: on(&r.insecure),
                    mirrors: r
                        .mirrors
                        .as_ref()
                        .map(|m| m.value.clone())
                        .unwrap_or_default(),
                };
                (name.clone(), defaults)
            })
            .collect();
    }

    /// `ocifs config show`: every setting `args` ends up with (after
    /// [`Config::apply_source`]) and where it came from, as TOML with the
    /// origin in a comment.
    pub fn show(&self, args: &SourceArgs, m: &ArgMatches) -> String {
        let mut out = String::new();
        if self.files.is_empty() {
            let looked: Vec<String> = self
                .looked_for
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            let _ = writeln!(out, "# no config file (looked for {})", looked.join(", "));
        } else {
            for f in &self.files {
                let _ = writeln!(out, "# read {}", f.display());
            }
        }
        let origin = |id: &str, flag: &str, file: Option<&PathBuf>| -> String {
            match m.value_source(id) {
                Some(ValueSource::CommandLine) => flag.to_owned(),
                Some(ValueSource::EnvVariable) => {
                    format!("${}", if id == "cache_dir" { "OCIFS_CACHE" } else { id })
                }
                _ => file.map_or_else(|| "default".to_owned(), |f| f.display().to_string()),
            }
        };
        fn file_of(s: Option<&Set<u64>>) -> Option<&PathBuf> {
            s.map(|s| &s.file)
        }
        let mut line = |key: &str, value: String, from: String| {
            let _ = writeln!(out, "{key} = {value}  # {from}");
        };
        let dir = args.cache.dir().map_or_else(
            |_| "\"\"".to_owned(),
            |d| toml_string(&d.display().to_string()),
        );
        line(
            "cache_dir",
            dir,
            origin(
                "cache_dir",
                "--cache-dir",
                self.cache_dir.as_ref().map(|s| &s.file),
            ),
        );
        line(
            "cache_max_size",
            toml_string(&show_size(args.cache.cache_max_size)),
            origin(
                "cache_max_size",
                "--cache-max-size",
                file_of(self.cache_max_size.as_ref()),
            ),
        );
        let verify = match args.verify {
            Verify::Strict => "strict",
            Verify::Lazy => "lazy",
        };
        line(
            "verify",
            toml_string(verify),
            origin("verify", "--verify", self.verify.as_ref().map(|s| &s.file)),
        );
        line(
            "timeout",
            format!("{:?}", args.timeout),
            origin(
                "timeout",
                "--timeout",
                self.timeout.as_ref().map(|s| &s.file),
            ),
        );
        line(
            "retries",
            args.retries.to_string(),
            origin(
                "retries",
                "--retries",
                self.retries.as_ref().map(|s| &s.file),
            ),
        );
        for (key, value, set) in [
            ("chunk_size", args.chunk_size, &self.chunk_size),
            (
                "memory_cache_size",
                args.memory_cache_size,
                &self.memory_cache_size,
            ),
            (
                "background_fetch_max",
                args.background_fetch_max,
                &self.background_fetch_max,
            ),
        ] {
            let flag = format!("--{}", key.replace('_', "-"));
            line(
                key,
                toml_string(&show_size(value)),
                origin(key, &flag, file_of(set.as_ref())),
            );
        }
        for (name, r) in &self.registry {
            let _ = writeln!(out, "\n[registry.{}]", toml_string(name));
            for (key, set) in [("plain_http", &r.plain_http), ("insecure", &r.insecure)] {
                if let Some(s) = set {
                    let _ = writeln!(out, "{key} = {}  # {}", s.value, s.file.display());
                }
            }
            if let Some(s) = &r.mirrors {
                let urls: Vec<String> = s.value.iter().map(|u| toml_string(u)).collect();
                let _ = writeln!(
                    out,
                    "mirrors = [{}]  # {}",
                    urls.join(", "),
                    s.file.display()
                );
            }
        }
        out
    }
}

/// Whether the user gave `id` on the command line or through its
/// environment variable (not its default).
fn given(m: &ArgMatches, id: &str) -> bool {
    matches!(
        m.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A size the way the flags take it: `10G`, `32M`, `512K`, or bytes.
fn show_size(n: u64) -> String {
    for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if n != 0 && n.trailing_zeros() >= shift {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_later_file_wins_key_by_key_and_missing_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let system = write(
            dir.path(),
            "system.toml",
            "cache_dir = \"/var/cache/ocifs\"\nverify = \"lazy\"\ncache_max_size = \"20G\"\n\
             [registry.\"mirror:5000\"]\nplain_http = true\ninsecure = false\n",
        );
        let user = write(
            dir.path(),
            "user.toml",
            "verify = \"strict\"\nchunk_size = 262144\n[registry.\"mirror:5000\"]\ninsecure = true\n\
             mirrors = [\"http://m1:5001\", \"https://m2/cache\"]\n",
        );
        let missing = dir.path().join("none.toml");
        let config = Config::load(None, &[system.clone(), missing, user.clone()]).unwrap();
        assert_eq!(config.files, [system.clone(), user.clone()]);
        assert_eq!(
            config.cache_dir.as_ref().map(|s| (&s.value, &s.file)),
            Some((&PathBuf::from("/var/cache/ocifs"), &system))
        );
        assert_eq!(
            config.verify.as_ref().map(|s| (s.value, &s.file)),
            Some((Verify::Strict, &user))
        );
        assert_eq!(config.cache_max_size.as_ref().unwrap().value, 20 << 30);
        assert_eq!(config.chunk_size.as_ref().unwrap().value, 262_144);
        let mirror = config.registry["mirror:5000"].clone();
        assert_eq!(
            mirror.plain_http.map(|s| (s.value, s.file)),
            Some((true, system))
        );
        assert_eq!(
            mirror.insecure.map(|s| (s.value, s.file)),
            Some((true, user.clone()))
        );
        assert_eq!(
            mirror.mirrors.map(|s| (s.value, s.file)),
            Some((
                vec!["http://m1:5001".to_owned(), "https://m2/cache".to_owned()],
                user
            ))
        );
        assert_eq!(config.registry.len(), 1);
    }

    #[test]
    fn an_explicit_file_is_the_only_one_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let default = write(dir.path(), "d.toml", "verify = \"lazy\"\n");
        let explicit = write(dir.path(), "e.toml", "timeout = 5\n");
        let config = Config::load(Some(&explicit), std::slice::from_ref(&default)).unwrap();
        assert_eq!(config.files, [explicit]);
        assert!(config.verify.is_none());
        let gone = dir.path().join("gone.toml");
        let e = Config::load(Some(&gone), &[default]).unwrap_err();
        assert!(format!("{e:#}").contains("gone.toml"), "{e:#}");
    }

    #[test]
    fn bad_files_are_refused_naming_the_file_the_line_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        for (text, wanted) in [
            (
                "verify = \"lazy\"\ncache_size = \"1G\"\n",
                "line 2: unknown key `cache_size`",
            ),
            (
                "[registry.\"r:1\"]\nplain_http = true\nmirror = \"x\"\n",
                "line 3: unknown key `mirror`",
            ),
            (
                "[registry.\"r:1\"]\nmirrors = [\"ftp://m\"]\n",
                "[registry.\"r:1\"] mirrors: \"ftp://m\": only http:// and https://",
            ),
            (
                "verify = \"sometimes\"\n",
                "line 1: unknown verify mode \"sometimes\"",
            ),
            (
                "cache_max_size = \"ten\"\n",
                "line 1: \"ten\" is not a size",
            ),
            ("timeout = -1\n", "timeout must be a positive number"),
            ("retries = \"many\"\n", "line 1: invalid type"),
            ("verify = \n", "line 1"),
            ("[registry.\"a/b\"]\n", "a registry is a host name"),
        ] {
            let path = write(dir.path(), "bad.toml", text);
            let e = Config::load(None, std::slice::from_ref(&path)).unwrap_err();
            let message = format!("{e:#}");
            assert!(
                message.starts_with(&format!("{}: ", path.display())) && message.contains(wanted),
                "{text:?}: {message}"
            );
        }
    }

    #[test]
    fn the_default_files_are_the_systems_then_the_users() {
        let files = default_files();
        if cfg!(windows) {
            return;
        }
        assert_eq!(files[0], Path::new("/etc/ocifs/config.toml"));
        if let Some(home) = std::env::var_os("XDG_CONFIG_HOME").or(std::env::var_os("HOME")) {
            assert!(files[1].starts_with(home), "{files:?}");
            assert!(files[1].ends_with("ocifs/config.toml"), "{files:?}");
        }
    }

    #[test]
    fn sizes_show_as_the_flags_take_them() {
        assert_eq!(show_size(10 << 30), "10G");
        assert_eq!(show_size(32 << 20), "32M");
        assert_eq!(show_size(1536 << 20), "1536M");
        assert_eq!(show_size(4096), "4K");
        assert_eq!(show_size(1000), "1000");
        assert_eq!(show_size(0), "0");
        assert_eq!(toml_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
