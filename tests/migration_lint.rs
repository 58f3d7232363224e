//! The additive-only lint over the repository's migrations and over the bad examples in
//! `tests/fixtures/migrations-bad`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use botvisor::schema::lint::{DEFAULT_DIRS, Finding, Rule, lint_dir, run_lint};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn file_name(finding: &Finding) -> String {
    Path::new(&finding.file)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Every migration the binary ships passes the lint (a missing folder holds no migrations).
#[test]
fn repository_migrations_are_additive() {
    let dirs: Vec<PathBuf> = DEFAULT_DIRS.iter().map(|d| repo().join(d)).collect();
    let findings = run_lint(&dirs).expect("migration folders are readable");
    let report: Vec<String> = findings.iter().map(ToString::to_string).collect();
    assert!(
        findings.is_empty(),
        "migrations that would break the previous binary (see docs/migrations.md):\n{}",
        report.join("\n")
    );
}

#[test]
fn bad_examples_give_exactly_the_expected_findings() {
    use Rule::*;
    let findings = lint_dir(&repo().join("tests/fixtures/migrations-bad")).unwrap();
    let got: BTreeSet<(String, Rule)> = findings.iter().map(|f| (file_name(f), f.rule)).collect();
    let expected: BTreeSet<(String, Rule)> = [
        ("0001_drop_column.sql", DropColumn),
        ("0002_drop_table.sql", DropTable),
        ("0003_rename.sql", Rename),
        ("0004_alter_type.sql", AlterType),
        ("0005_set_not_null.sql", SetNotNull),
        ("0006_drop_default.sql", DropDefault),
        ("0007_drop_constraint.sql", DropConstraint),
        ("0008_not_null_without_default.sql", NotNullWithoutDefault),
        ("0009_index_not_concurrent.sql", IndexNotConcurrent),
        ("0011_invalid_markers.sql", InvalidMarker),
        ("0011_invalid_markers.sql", DropColumn),
        ("0011_invalid_markers.sql", DropTable),
        ("0012_do_block.sql", NotNullWithoutDefault),
        ("0012_do_block.sql", DropColumn),
        (
            "0015_concurrent_index_in_transaction.sql",
            ConcurrentIndexInTransaction,
        ),
        ("0016_multi_action.sql", AlterType),
        ("0016_multi_action.sql", DropDefault),
    ]
    .into_iter()
    .map(|(file, rule)| (file.to_owned(), rule))
    .collect();
    let report: Vec<String> = findings.iter().map(ToString::to_string).collect();
    assert_eq!(got, expected, "findings:\n{}", report.join("\n"));
    // Two renames in 0003, two invalid markers in 0011: one finding each.
    assert_eq!(findings.len(), expected.len() + 2, "{}", report.join("\n"));
}

#[test]
fn findings_carry_the_line_of_the_offending_clause() {
    let findings = lint_dir(&repo().join("tests/fixtures/migrations-bad")).unwrap();
    let lines = |file: &str| -> Vec<(usize, Rule)> {
        findings
            .iter()
            .filter(|f| file_name(f) == file)
            .map(|f| (f.line, f.rule))
            .collect()
    };
    assert_eq!(lines("0001_drop_column.sql"), [(3, Rule::DropColumn)]);
    assert_eq!(
        lines("0003_rename.sql"),
        [(2, Rule::Rename), (3, Rule::Rename)]
    );
    assert_eq!(
        lines("0009_index_not_concurrent.sql"),
        [(2, Rule::IndexNotConcurrent)]
    );
    assert_eq!(
        lines("0011_invalid_markers.sql"),
        [
            (1, Rule::InvalidMarker),
            (2, Rule::InvalidMarker),
            (3, Rule::DropColumn),
            (4, Rule::DropTable)
        ]
    );
    assert_eq!(
        lines("0012_do_block.sql"),
        [(6, Rule::NotNullWithoutDefault), (10, Rule::DropColumn)]
    );
    assert_eq!(
        lines("0016_multi_action.sql"),
        [(4, Rule::AlterType), (5, Rule::DropDefault)]
    );

    let first = findings
        .iter()
        .find(|f| file_name(f) == "0001_drop_column.sql")
        .unwrap();
    assert_eq!(first.excerpt, "ALTER TABLE users DROP COLUMN nickname");
    assert!(
        first
            .to_string()
            .ends_with("(allow with \"-- botvisor: allow drop-column <reason>\")")
    );
}

#[test]
fn missing_directory_has_no_findings() {
    let findings = lint_dir(&repo().join("tests/fixtures/no-such-directory")).unwrap();
    assert!(findings.is_empty());
}
