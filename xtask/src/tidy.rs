//! Tidy checks on the tree, run as tests (`cargo test -p xtask`, and so by
//! `cargo xtask test`), after rust-analyzer's: they keep the docs, the
//! config reference and the repository honest as the code moves.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The files git tracks, relative to the project root.
fn tracked() -> Vec<PathBuf> {
    let out = std::process::Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(crate::project_root())
        .output()
        .expect("git ls-files runs");
    assert!(out.status.success(), "git ls-files failed");
    out.stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(crate::project_root().join(path))
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Relative links in Markdown files point at files that exist.
#[test]
fn links_in_docs_resolve() {
    let root = crate::project_root();
    let mut broken = Vec::new();
    for md in tracked()
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
    {
        let text = read(md);
        for (at, _) in text.match_indices("](") {
            let rest = &text[at + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = rest[..end].split('#').next().unwrap_or_default();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let dir = md.parent().unwrap_or(Path::new(""));
            if !root.join(dir).join(target).exists() {
                broken.push(format!("{}: {target}", md.display()));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links to nothing:\n{}",
        broken.join("\n")
    );
}

/// The fields of a config type (a struct or enum that derives
/// `Deserialize` in a `config.rs`), as keys: struct fields and the fields of
/// enum variants, not those `#[serde(skip)]` hides.
fn config_keys(source: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut deserialized = false;
    let mut in_type = false;
    let mut skip_next = false;
    for line in source.lines() {
        let t = line.trim();
        if !line.starts_with(' ') {
            if t.starts_with("#[derive(") {
                deserialized = t.contains("Deserialize");
            } else if t.starts_with("pub struct ") || t.starts_with("pub enum ") {
                in_type = deserialized && t.ends_with('{');
                deserialized = false;
            } else if t == "}" {
                in_type = false;
            }
            continue;
        }
        if !in_type {
            continue;
        }
        if t.starts_with("#[serde(skip") {
            skip_next = true;
            continue;
        }
        let field = t.strip_prefix("pub ").unwrap_or(t);
        if let Some((name, _)) = field.split_once(':')
            && !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !t.starts_with("//")
            && !std::mem::take(&mut skip_next)
        {
            keys.insert(name.to_owned());
        }
    }
    keys
}

/// Every key a config file may hold is in docs/config.md.
#[test]
fn every_config_key_is_documented() {
    let doc = read(Path::new("docs/config.md"));
    let mut missing = Vec::new();
    for file in tracked()
        .iter()
        .filter(|p| p.starts_with("crates") && p.ends_with("src/config.rs"))
    {
        for key in config_keys(&read(file)) {
            if !doc.contains(&format!("`{key}`")) {
                missing.push(format!("{}: `{key}`", file.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "config keys missing from docs/config.md:\n{}",
        missing.join("\n")
    );
}

#[test]
fn config_keys_are_found() {
    let source = "#[derive(Debug, Deserialize)]\npub struct A {\n    /// x\n    pub one: u8,\n    #[serde(skip)]\n    pub hidden: u8,\n}\n#[derive(Debug)]\npub struct B {\n    pub not_config: u8,\n}\n#[derive(Deserialize)]\npub enum C {\n    V {\n        two: String,\n    },\n}\n";
    let keys: Vec<String> = config_keys(source).into_iter().collect();
    assert_eq!(keys, ["one", "two"]);
}

/// No binary file is tracked: databases, builds and images are made, not
/// committed.
#[test]
fn no_binary_files_are_tracked() {
    let root = crate::project_root();
    let binary: Vec<String> = tracked()
        .iter()
        .filter(|p| {
            std::fs::read(root.join(p))
                .map(|bytes| bytes.iter().take(8000).any(|b| *b == 0))
                .unwrap_or(false)
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(binary.is_empty(), "binary files tracked: {binary:?}");
}

/// Every public item is documented: the workspace denies undocumented
/// public items (`missing_docs`, a warning that CI's clippy `-D warnings`
/// fails on), and every crate takes the workspace's lints.
#[test]
fn every_crate_requires_docs_on_public_items() {
    let workspace = read(Path::new("Cargo.toml"));
    assert!(
        workspace.contains("missing_docs = \"warn\"")
            || workspace.contains("missing_docs = \"deny\""),
        "the workspace lints no longer include missing_docs"
    );
    let without: Vec<String> = tracked()
        .iter()
        .filter(|p| {
            p.file_name().is_some_and(|n| n == "Cargo.toml") && p.parent() != Some(Path::new(""))
        })
        .filter(|p| !read(p).contains("[lints]\nworkspace = true"))
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        without.is_empty(),
        "crates that do not take the workspace lints: {without:?}"
    );
}
