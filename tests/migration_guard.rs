//! Shipped migrations are immutable: `migrations/checksums.txt` must match the files.
//!
//! Run `UPDATE_CHECKSUMS=1 cargo test --test migration_guard` to append new migrations to the
//! list; existing lines are never rewritten.

use std::path::Path;

#[path = "support/migration_guard.rs"]
mod migration_guard;

use migration_guard::{
    APPEND_COMMAND, CHECKSUMS_FILE, append_new_checksums, sqlx_checksum_hex, verify_checksums,
};
use sqlx::migrate::Migrator;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn shipped_migrations_match_the_checksum_list() {
    if std::env::var_os("UPDATE_CHECKSUMS").is_some_and(|v| v == "1") {
        let appended = append_new_checksums(repo()).expect("checksum list is writable");
        for file in &appended {
            eprintln!("appended {file} to {CHECKSUMS_FILE}");
        }
    }
    if let Err(violations) = verify_checksums(repo()) {
        let report: Vec<String> = violations.iter().map(|v| format!("- {v}")).collect();
        panic!(
            "{CHECKSUMS_FILE} disagrees with the migrations:\n{}\n\
             Edits, renames and deletions of shipped migrations are never fixed by updating the \
             list: add a new migration instead. New files are appended by `{APPEND_COMMAND}`.",
            report.join("\n")
        );
    }
}

/// Our checksum is the one sqlx stores in `_sqlx_migrations.checksum`, byte for byte, including
/// for files with a byte-order mark, CRLF line ends and non-ASCII text.
#[tokio::test]
async fn checksum_agrees_with_sqlx_migrator() {
    let dir = tempfile::tempdir().unwrap();
    let texts = [
        ("0001_init.sql", "CREATE TABLE users (id bigint);\n"),
        (
            "0002_crlf.sql",
            "\u{feff}ALTER TABLE users ADD note text;\r\n-- é ü\r\n",
        ),
        (
            "0003_idx.sql",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY i ON users (id);\n",
        ),
    ];
    for (name, text) in texts {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let migrator = Migrator::new(dir.path()).await.unwrap();
    let from_sqlx: Vec<String> = migrator
        .iter()
        .map(|m| m.checksum.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let ours: Vec<String> = texts
        .iter()
        .map(|(_, text)| sqlx_checksum_hex(text))
        .collect();
    assert_eq!(from_sqlx, ours);
}
