//! The import rules of docs/architecture.md, checked on the source: every `crate::…` path in
//! a file under `src/` must name a module its layer may use. A violation fails the build
//! (`scripts/test.sh` runs every test), with the file, the line and the rule it breaks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The leaves: they may use each other and nothing else of ours.
const LEAVES: &[&str] = &[
    "settings",
    "telemetry",
    "mask",
    "tasks",
    "token",
    "crypto",
    "memory",
];

/// What each top-level module may use besides itself and the leaves.
fn allowed() -> BTreeMap<&'static str, &'static [&'static str]> {
    let mut rules: BTreeMap<&'static str, &'static [&'static str]> = BTreeMap::new();
    // Edges.
    rules.insert(
        "cli",
        &[
            "admin", "app", "web", "sandbox", "control", "runtime", "modules", "telegram",
            "content", "panel", "botdb", "schema",
        ],
    );
    // The web panel and HTTP API: the operators' rules and what they hand out.
    rules.insert(
        "web",
        &["admin", "modules", "content", "panel", "botdb", "schema"],
    );
    rules.insert(
        "app",
        &[
            "control", "runtime", "modules", "telegram", "content", "panel", "botdb", "schema",
        ],
    );
    rules.insert("sandbox", &[]);
    // Operators' rules.
    rules.insert("admin", &["modules", "content", "panel", "botdb", "schema"]);
    // Control plane: decides; never talks to Telegram.
    rules.insert(
        "control",
        &["runtime", "modules", "content", "panel", "botdb", "schema"],
    );
    // Data plane: never the control plane or the panel (commands come down channels).
    rules.insert(
        "runtime",
        &["modules", "telegram", "content", "botdb", "schema"],
    );
    // Behaviour: the snapshot, the send interface, storage of its own database.
    rules.insert("modules", &["telegram", "content", "botdb"]);
    rules.insert("telegram", &[]);
    rules.insert("content", &[]);
    // Storage.
    rules.insert("panel", &["content", "schema"]);
    rules.insert("botdb", &["content", "schema"]);
    rules.insert("schema", &[]);
    for leaf in LEAVES {
        rules.insert(leaf, &[]);
    }
    rules
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to (None: a binary's own file).
fn layer_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    if first == "bin" || first == "main.rs" || first == "lib.rs" {
        return None;
    }
    Some(first.trim_end_matches(".rs").to_owned())
}

/// The top-level modules named by `crate::…` paths on a line (grouped imports included).
fn named_modules(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    names.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.push(name);
            }
        }
    }
    names
}

#[test]
fn every_import_points_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rules = allowed();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    for file in &files {
        let Some(layer) = layer_of(&src, file) else {
            continue;
        };
        let Some(may_use) = rules.get(layer.as_str()) else {
            violations.push(format!(
                "{}: top-level module `{layer}` has no rule in tests/layers.rs",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for used in named_modules(line) {
                let ok = used == layer
                    || LEAVES.contains(&used.as_str())
                    || may_use.contains(&used.as_str());
                if !ok {
                    violations.push(format!(
                        "{}:{}: `{layer}` may not use `crate::{used}` (it may use: {}, and the leaves)",
                        file.strip_prefix(&src).unwrap().display(),
                        n + 1,
                        may_use.join(", ")
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports that point up the layers (see docs/architecture.md):\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_and_inline_paths() {
    assert_eq!(
        named_modules("use crate::{runtime::x, panel};"),
        ["runtime", "panel"]
    );
    assert_eq!(
        named_modules("    let x = crate::cli::error_line(&e); // crate::app"),
        ["cli"]
    );
    assert!(named_modules("// use crate::cli").is_empty());
}
