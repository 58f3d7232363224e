//! Immutability guard for shipped migrations.
//!
//! `migrations/checksums.txt` lists every migration file that has shipped, one per line:
//! `<dir>/<file name> <hex checksum>`, the path relative to `migrations/`. The checksum is the
//! SHA-384 of the file's text computed by sqlx itself ([`sqlx::migrate::Migration::new`]), so it
//! equals what sqlx stores in `_sqlx_migrations.checksum` and later compares at startup.
//!
//! [`verify_checksums`] fails when a listed file was edited, renamed or deleted, and when a
//! migration file is not listed yet; [`append_new_checksums`] appends the unlisted files and
//! never rewrites a line that is already there. The test `tests/migration_guard.rs` runs the
//! check on the repository; `UPDATE_CHECKSUMS=1 cargo test --test migration_guard` appends.
//!
//! Invariants: existing lines of the list are never modified; migration directories are the
//! direct subdirectories of `migrations/` (today `panel` and `bot`); only `*.sql` files count.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType};

/// The checksum list, relative to the repository root.
pub const CHECKSUMS_FILE: &str = "migrations/checksums.txt";

/// The command that appends new migrations to the checksum list.
pub const APPEND_COMMAND: &str = "UPDATE_CHECKSUMS=1 cargo test --test migration_guard";

/// The header written when the checksum list is created.
const HEADER: &str = "\
# Checksums of shipped migrations: `<dir>/<file> <sha384 hex>`, as sqlx computes them.
# Append-only. Never edit or delete a line: write a new migration instead.
# New files are appended by: UPDATE_CHECKSUMS=1 cargo test --test migration_guard
";

/// One way the migrations disagree with the checksum list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardViolation {
    /// A listed migration's content changed.
    Edited {
        /// Path relative to `migrations/`.
        file: String,
        expected: String,
        actual: String,
    },
    /// A listed migration was renamed: a file with the same checksum exists under a new name.
    Renamed { from: String, to: String },
    /// A listed migration no longer exists.
    Deleted { file: String },
    /// A migration file exists that the list does not contain yet.
    Unlisted { file: String },
    /// A line of the checksum list is not `<path> <hex>`, or repeats a path.
    Malformed { line: usize, text: String },
    /// A file or directory could not be read.
    Unreadable { path: PathBuf, error: String },
}

impl fmt::Display for GuardViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHIPPED: &str = "shipped migrations are immutable: databases have already applied \
                               it and sqlx would refuse to start on a checksum mismatch";
        match self {
            GuardViolation::Edited { file, .. } => write!(
                f,
                "migrations/{file} was edited after it shipped; {SHIPPED}. Restore it \
                 (git checkout -- migrations/{file}) and put the change in a new migration"
            ),
            GuardViolation::Renamed { from, to } => write!(
                f,
                "migrations/{from} was renamed to migrations/{to}; {SHIPPED}. Rename it back"
            ),
            GuardViolation::Deleted { file } => write!(
                f,
                "migrations/{file} was deleted after it shipped; {SHIPPED}. Restore it; to undo \
                 its effect, add a new migration"
            ),
            GuardViolation::Unlisted { file } => write!(
                f,
                "migrations/{file} is not in {CHECKSUMS_FILE}; once it passes \
                 `botvisor migrate lint`, append it with `{APPEND_COMMAND}` and commit the list"
            ),
            GuardViolation::Malformed { line, text } => write!(
                f,
                "{CHECKSUMS_FILE}:{line}: expected `<dir>/<file> <sha384 hex>` once per file, \
                 found {text:?}; restore the line from git"
            ),
            GuardViolation::Unreadable { path, error } => {
                write!(f, "cannot read {}: {error}", path.display())
            }
        }
    }
}

/// Why the checksum list could not be extended.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// A migration file or directory could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The checksum list could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The checksum sqlx computes for a migration with this text, as lower-case hex.
pub fn sqlx_checksum_hex(sql: &str) -> String {
    let migration = Migration::new(
        0,
        "".into(),
        MigrationType::Simple,
        sqlx::AssertSqlSafe(sql).into_sql_str(),
        false,
    );
    migration
        .checksum
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The migration files under `<root>/migrations/*/`, as `(path relative to migrations/, path)`,
/// sorted by relative path.
fn migration_files(root: &Path) -> Result<Vec<(String, PathBuf)>, GuardError> {
    let migrations = root.join("migrations");
    let read = |path: &Path| {
        fs::read_dir(path).map_err(|source| GuardError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let mut files = Vec::new();
    let dirs = match fs::read_dir(&migrations) {
        Ok(dirs) => dirs,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(source) => {
            return Err(GuardError::Read {
                path: migrations,
                source,
            });
        }
    };
    for dir in dirs {
        let dir = dir
            .map_err(|source| GuardError::Read {
                path: migrations.clone(),
                source,
            })?
            .path();
        if !dir.is_dir() {
            continue;
        }
        let dir_name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        for file in read(&dir)? {
            let path = file
                .map_err(|source| GuardError::Read {
                    path: dir.clone(),
                    source,
                })?
                .path();
            if path.is_file() && path.extension().is_some_and(|ext| ext == "sql") {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                files.push((format!("{dir_name}/{name}"), path));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Reads and hashes every migration file: relative path → checksum hex.
fn current_checksums(root: &Path) -> Result<BTreeMap<String, String>, GuardError> {
    migration_files(root)?
        .into_iter()
        .map(|(relative, path)| {
            let sql = fs::read_to_string(&path).map_err(|source| GuardError::Read {
                path: path.clone(),
                source,
            })?;
            Ok((relative, sqlx_checksum_hex(&sql)))
        })
        .collect()
}

/// The parsed checksum list: entries in file order, and the malformed lines.
struct Listed {
    entries: BTreeMap<String, String>,
    malformed: Vec<GuardViolation>,
    /// The raw text, empty when the file does not exist.
    text: String,
}

fn read_listed(root: &Path) -> Result<Listed, GuardError> {
    let path = root.join(CHECKSUMS_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(GuardError::Read { path, source }),
    };
    let mut entries = BTreeMap::new();
    let mut malformed = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        let well_formed = parts.len() == 2
            && parts[1].len() == 96
            && parts[1].bytes().all(|b| b.is_ascii_hexdigit());
        if !well_formed || entries.contains_key(parts[0]) {
            malformed.push(GuardViolation::Malformed {
                line: index + 1,
                text: raw.to_owned(),
            });
            continue;
        }
        entries.insert(parts[0].to_owned(), parts[1].to_ascii_lowercase());
    }
    Ok(Listed {
        entries,
        malformed,
        text,
    })
}

/// Checks the migrations under `<root>/migrations` against `<root>/migrations/checksums.txt`.
///
/// Proven by `tests/migration_guard.rs` on the repository and by this module's unit tests for
/// the edited, renamed, deleted, unlisted and malformed cases.
pub fn verify_checksums(root: &Path) -> Result<(), Vec<GuardViolation>> {
    let unreadable = |e: GuardError| {
        let path = match &e {
            GuardError::Read { path, .. } | GuardError::Write { path, .. } => path.clone(),
        };
        let error = std::error::Error::source(&e).map_or_else(String::new, ToString::to_string);
        vec![GuardViolation::Unreadable { path, error }]
    };
    let listed = read_listed(root).map_err(unreadable)?;
    let current = current_checksums(root).map_err(unreadable)?;

    let mut violations = listed.malformed;
    let mut missing = Vec::new();
    for (file, expected) in &listed.entries {
        match current.get(file) {
            Some(actual) if actual == expected => {}
            Some(actual) => violations.push(GuardViolation::Edited {
                file: file.clone(),
                expected: expected.clone(),
                actual: actual.clone(),
            }),
            None => missing.push((file, expected)),
        }
    }
    let mut unlisted: BTreeSet<&String> = current
        .keys()
        .filter(|file| !listed.entries.contains_key(*file))
        .collect();
    for (file, expected) in missing {
        let renamed_to = unlisted
            .iter()
            .find(|new| current.get(**new) == Some(expected))
            .copied();
        match renamed_to {
            Some(to) => {
                unlisted.remove(to);
                violations.push(GuardViolation::Renamed {
                    from: file.clone(),
                    to: to.clone(),
                });
            }
            None => violations.push(GuardViolation::Deleted { file: file.clone() }),
        }
    }
    violations.extend(
        unlisted
            .into_iter()
            .map(|file| GuardViolation::Unlisted { file: file.clone() }),
    );
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations)
    }
}

/// Appends every migration file not yet in the checksum list and returns their relative paths.
///
/// Existing lines are never rewritten, so an edited, renamed or deleted migration still fails
/// [`verify_checksums`] afterwards. The list is created with a header when missing.
pub fn append_new_checksums(root: &Path) -> Result<Vec<String>, GuardError> {
    let listed = read_listed(root)?;
    let current = current_checksums(root)?;
    let new: Vec<(&String, &String)> = current
        .iter()
        .filter(|(file, _)| !listed.entries.contains_key(*file))
        .collect();
    if new.is_empty() {
        return Ok(Vec::new());
    }

    let path = root.join(CHECKSUMS_FILE);
    let write_error = |source| GuardError::Write {
        path: path.clone(),
        source,
    };
    let mut addition = String::new();
    if listed.text.is_empty() {
        addition.push_str(HEADER);
    } else if !listed.text.ends_with('\n') {
        addition.push('\n');
    }
    for (file, checksum) in &new {
        addition.push_str(&format!("{file} {checksum}\n"));
    }
    let mut out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(write_error)?;
    out.write_all(addition.as_bytes()).map_err(write_error)?;
    Ok(new.into_iter().map(|(file, _)| file.clone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, relative: &str, text: &str) {
        let path = root.join("migrations").join(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    /// A repository with two shipped migrations, both listed.
    fn shipped() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            "bot/0001_init.sql",
            "CREATE TABLE users (id bigint);\n",
        );
        write(
            root.path(),
            "panel/0001_init.sql",
            "CREATE TABLE bots (id bigint);\n",
        );
        let appended = append_new_checksums(root.path()).unwrap();
        assert_eq!(appended, ["bot/0001_init.sql", "panel/0001_init.sql"]);
        assert_eq!(verify_checksums(root.path()), Ok(()));
        root
    }

    #[test]
    fn checksum_is_sha384_hex() {
        // SHA-384 of the empty string.
        assert_eq!(
            sqlx_checksum_hex(""),
            "38b060a751ac96384cd9327eb1b1e36a21fdb71114be07434c0cc7bf63f6e1da\
             274edebfe76f65fbd51ad2f14898b95b"
        );
    }

    #[test]
    fn no_migrations_and_no_list_is_fine() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(verify_checksums(root.path()), Ok(()));
        assert_eq!(
            append_new_checksums(root.path()).unwrap(),
            Vec::<String>::new()
        );
        assert!(!root.path().join(CHECKSUMS_FILE).exists());
    }

    #[test]
    fn edited_migration_fails() {
        let root = shipped();
        write(
            root.path(),
            "bot/0001_init.sql",
            "CREATE TABLE users (id int);\n",
        );
        let violations = verify_checksums(root.path()).unwrap_err();
        assert!(
            matches!(&violations[..], [GuardViolation::Edited { file, .. }] if file == "bot/0001_init.sql"),
            "{violations:?}"
        );
        assert!(violations[0].to_string().contains("new migration"));
        // Appending does not paper over the edit.
        assert_eq!(
            append_new_checksums(root.path()).unwrap(),
            Vec::<String>::new()
        );
        assert!(verify_checksums(root.path()).is_err());
    }

    #[test]
    fn renamed_migration_fails() {
        let root = shipped();
        let dir = root.path().join("migrations/bot");
        fs::rename(dir.join("0001_init.sql"), dir.join("0001_initial.sql")).unwrap();
        assert_eq!(
            verify_checksums(root.path()),
            Err(vec![GuardViolation::Renamed {
                from: "bot/0001_init.sql".into(),
                to: "bot/0001_initial.sql".into(),
            }])
        );
        // Appending the new name still leaves the old one missing.
        append_new_checksums(root.path()).unwrap();
        assert_eq!(
            verify_checksums(root.path()),
            Err(vec![GuardViolation::Deleted {
                file: "bot/0001_init.sql".into()
            }])
        );
    }

    #[test]
    fn deleted_migration_fails() {
        let root = shipped();
        fs::remove_file(root.path().join("migrations/panel/0001_init.sql")).unwrap();
        assert_eq!(
            verify_checksums(root.path()),
            Err(vec![GuardViolation::Deleted {
                file: "panel/0001_init.sql".into()
            }])
        );
    }

    #[test]
    fn new_migration_fails_until_appended_and_appending_keeps_old_lines() {
        let root = shipped();
        let before = fs::read_to_string(root.path().join(CHECKSUMS_FILE)).unwrap();
        write(
            root.path(),
            "bot/0002_add_x.sql",
            "ALTER TABLE users ADD x int;\n",
        );
        let violations = verify_checksums(root.path()).unwrap_err();
        assert_eq!(
            violations,
            vec![GuardViolation::Unlisted {
                file: "bot/0002_add_x.sql".into()
            }]
        );
        assert!(violations[0].to_string().contains(APPEND_COMMAND));

        assert_eq!(
            append_new_checksums(root.path()).unwrap(),
            ["bot/0002_add_x.sql"]
        );
        let after = fs::read_to_string(root.path().join(CHECKSUMS_FILE)).unwrap();
        assert!(after.starts_with(&before), "existing lines were rewritten");
        assert_eq!(verify_checksums(root.path()), Ok(()));
    }

    #[test]
    fn malformed_and_duplicate_lines_fail() {
        let root = shipped();
        let path = root.path().join(CHECKSUMS_FILE);
        let mut text = fs::read_to_string(&path).unwrap();
        let first_entry = text
            .lines()
            .find(|l| !l.starts_with('#'))
            .unwrap()
            .to_owned();
        text.push_str(&first_entry);
        text.push_str("\nbot/0003_x.sql nothex\n");
        fs::write(&path, text).unwrap();
        let violations = verify_checksums(root.path()).unwrap_err();
        assert_eq!(violations.len(), 2, "{violations:?}");
        assert!(
            violations
                .iter()
                .all(|v| matches!(v, GuardViolation::Malformed { .. }))
        );
    }
}
