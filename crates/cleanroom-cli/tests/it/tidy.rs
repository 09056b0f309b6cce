//! The architecture as written stays true: each crate depends directly only on the crates of
//! the project its layer may know (`.ci/check-deps` checks the transitive rules; this checks
//! the direct edges, so `cleanroom-server` cannot reach past the service to the store), and
//! every file ARCHITECTURE.md names exists.

use std::collections::{BTreeMap, BTreeSet};

use crate::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The project's crates each crate may depend on directly (normal dependencies).
const ALLOWED: &[(&str, &[&str])] = &[
    ("cleanroom-core", &[]),
    ("cleanroom-testkit", &[]),
    ("cleanroom-privacy", &[]),
    ("cleanroom-storage", &["cleanroom-core"]),
    ("cleanroom-identity", &["cleanroom-core"]),
    (
        "cleanroom-objstore",
        &["cleanroom-core", "cleanroom-storage"],
    ),
    ("cleanroom-meta", &["cleanroom-core"]),
    ("cleanroom-psi", &["cleanroom-privacy"]),
    ("cleanroom-psi-net", &["cleanroom-psi"]),
    (
        "cleanroom-query",
        &["cleanroom-core", "cleanroom-privacy", "cleanroom-storage"],
    ),
    (
        "cleanroom-service",
        &[
            "cleanroom-core",
            "cleanroom-privacy",
            "cleanroom-storage",
            "cleanroom-query",
            "cleanroom-meta",
        ],
    ),
    ("cleanroom-server", &["cleanroom-core", "cleanroom-service"]),
    // executes plans the query layer built; decides nothing, stores nothing
    (
        "cleanroom-cluster",
        &["cleanroom-core", "cleanroom-storage", "cleanroom-query"],
    ),
    (
        "cleanroom-cli",
        &[
            "cleanroom-core",
            "cleanroom-cluster",
            "cleanroom-identity",
            "cleanroom-objstore",
            "cleanroom-psi",
            "cleanroom-psi-net",
            "cleanroom-server",
            "cleanroom-service",
        ],
    ),
];

fn direct_project_deps(manifest: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    let mut tables = Vec::new();
    if let Some(d) = doc.get("dependencies").and_then(|d| d.as_table()) {
        tables.push(d.clone());
    }
    if let Some(targets) = doc.get("target").and_then(|t| t.as_table()) {
        for t in targets.values() {
            if let Some(d) = t.get("dependencies").and_then(|d| d.as_table()) {
                tables.push(d.clone());
            }
        }
    }
    tables
        .iter()
        .flat_map(|t| t.keys().cloned())
        .filter(|k| k.starts_with("cleanroom"))
        .collect()
}

#[test]
fn each_crate_depends_directly_only_on_the_layers_below_it() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("crates")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let manifest = entry.path().join("Cargo.toml");
        if !manifest.exists() {
            continue;
        }
        let rule = allowed
            .get(name.as_str())
            .unwrap_or_else(|| panic!("crate {name} has no rule here: add it to ALLOWED"));
        for dep in direct_project_deps(&manifest) {
            assert!(
                rule.contains(&dep.as_str()),
                "{name} depends directly on {dep}, which its layer must not know (ARCHITECTURE.md)"
            );
        }
        seen += 1;
    }
    assert_eq!(seen, ALLOWED.len(), "a crate in ALLOWED no longer exists");
}

/// Expands `a/{b,c}.rs` into `a/b.rs` and `a/c.rs`.
fn expand(token: &str) -> Vec<String> {
    match (token.find('{'), token.find('}')) {
        (Some(o), Some(c)) if o < c => token[o + 1..c]
            .split(',')
            .flat_map(|alt| expand(&format!("{}{}{}", &token[..o], alt, &token[c + 1..])))
            .collect(),
        _ => vec![token.to_owned()],
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "target" || n == ".git") {
                continue;
            }
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn every_file_architecture_md_names_exists() {
    let root = repo();
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut all = Vec::new();
    files_under(&root, &mut all);
    let exts = [".rs", ".sql", ".toml", ".md", ".sh"];
    let mut krate: Option<String> = None;
    let mut checked = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("### `")
            && let Some(name) = rest.strip_suffix('`')
        {
            krate = Some(name.to_owned());
        }
        if line.starts_with("## ") {
            krate = None;
        }
        for (i, part) in line.split('`').enumerate() {
            // Odd parts are inside backticks.
            if i % 2 == 0 || part.contains(' ') || !exts.iter().any(|e| part.ends_with(e)) {
                continue;
            }
            for token in expand(part) {
                let token = token.trim_start_matches("./").to_owned();
                let found = if ["crates/", "docs/", "bench/", "testdata/", ".ci/"]
                    .iter()
                    .any(|p| token.starts_with(p))
                    || !token.contains('/') && root.join(&token).exists()
                {
                    root.join(&token).exists()
                } else if token.starts_with("cleanroom-") {
                    root.join("crates").join(&token).exists()
                } else {
                    let scope = match &krate {
                        Some(k) => root.join("crates").join(k),
                        None => root.clone(),
                    };
                    all.iter()
                        .any(|f| f.starts_with(&scope) && f.ends_with(Path::new(&token)))
                };
                assert!(
                    found,
                    "ARCHITECTURE.md names {token} ({}) but no such file exists",
                    krate.as_deref().unwrap_or("repository")
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 40, "only {checked} file references found");
}
