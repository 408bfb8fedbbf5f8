//! The crates' module structure, held to its shape: `ocifs-core`'s modules
//! each use only the layers below them (`core/src/lib.rs` draws them), and
//! no module of a crate imports one that imports it back.
//!
//! Read off the sources: every `crate::NAME` path (in `use` lines and in
//! code) of a top-level module (a file or a directory) is an edge to module
//! `NAME`. Unit tests (`#[cfg(test)] mod tests` blocks, `tests.rs` files,
//! `testutil`) are left out: they may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers of `ocifs-core`, bottom first: a module may use modules of
/// lower layers only. Two modules of one layer use neither the other.
const CORE_LAYERS: &[&[&str]] = &[
    &["error"],
    &["digest", "platform", "fsutil"],
    &["reference", "manifest"],
    &["content"],
    &["tree"],
    &["retry", "credentials", "hosts"],
    &["source"],
    &["resolve", "blob"],
    &["cache"],
    &["codec"],
    &["package"],
    &["image"],
    &["published"],
    &["view"],
    &["read"],
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source of a file without its unit tests and comments.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            // Skip the item that follows: up to its closing brace at the
            // same indentation (or the `mod x;` line).
            let indent = line.len() - t.len();
            for next in lines.by_ref() {
                let n = next.trim_start();
                if n.ends_with(';') && n.starts_with("mod ") {
                    break;
                }
                if n == "}" && next.len() - n.len() == indent {
                    break;
                }
            }
            continue;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Top-level module → the top-level modules it names.
fn edges(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("a name")
            .trim_end_matches(".rs")
            .to_owned();
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if matches!(top.as_str(), "lib" | "main" | "testutil") || name == "tests.rs" {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(&file).expect("read"));
        let targets = edges.entry(top.clone()).or_default();
        let mut rest = code.as_str();
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let group = rest.starts_with('{');
            let names: Vec<&str> = if group {
                let end = rest.find('}').unwrap_or(rest.len());
                rest[1..end]
                    .split(',')
                    .filter_map(|part| part.trim().split("::").next())
                    .collect()
            } else {
                vec![
                    rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .next()
                        .unwrap_or(""),
                ]
            };
            for n in names {
                let n = n.trim();
                if !n.is_empty() && n != top && n.chars().next().is_some_and(|c| c.is_lowercase()) {
                    targets.insert(n.to_owned());
                }
            }
        }
    }
    edges
}

/// A cycle among `edges`, if there is one (as a path `a → b → … → a`).
fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_owned());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_owned());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|n| visit(n, edges, &mut Vec::new(), &mut done))
}

#[test]
fn core_modules_use_only_the_layers_below_them() {
    let edges = edges(&workspace().join("core/src"));
    let rank = |m: &str| CORE_LAYERS.iter().position(|layer| layer.contains(&m));
    let mut wrong = Vec::new();
    for (from, targets) in &edges {
        let Some(r) = rank(from) else {
            wrong.push(format!(
                "{from}: a module in no layer (add it to CORE_LAYERS)"
            ));
            continue;
        };
        for to in targets {
            match rank(to) {
                Some(t) if t < r => {}
                Some(_) => wrong.push(format!("{from} uses {to}, which is not below it")),
                None => wrong.push(format!("{from} uses {to}, a module in no layer")),
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // And the check sees the edges it should (it is not vacuous).
    assert!(edges["read"].contains("codec") && edges["cache"].contains("blob"));
}

#[test]
fn no_module_of_a_crate_imports_one_that_imports_it_back() {
    for krate in ["core", "fs-linux", "fs-windows", "cli"] {
        let edges = edges(&workspace().join(krate).join("src"));
        assert!(
            edges.values().any(|t| !t.is_empty()),
            "{krate}: no imports seen"
        );
        assert_eq!(cycle(&edges), None, "{krate}: an import circle");
    }
}

#[test]
fn the_checker_finds_a_circle_and_a_layer_broken() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    edges.entry("fs".into()).or_default().insert("mount".into());
    edges
        .entry("mount".into())
        .or_default()
        .insert("sys".into());
    assert_eq!(cycle(&edges), None);
    edges.entry("mount".into()).or_default().insert("fs".into());
    assert_eq!(
        cycle(&edges),
        Some(vec!["fs".into(), "mount".into(), "fs".into()])
    );
    let code = code_of(
        "use crate::a::X;\nfn f() { crate::b::g(); }\n// crate::c\n#[cfg(test)]\nmod tests {\n    use crate::d;\n}\nuse crate::{e, f::G};\n",
    );
    assert!(code.contains("crate::a") && !code.contains("crate::c") && !code.contains("crate::d"));
}
