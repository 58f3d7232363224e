//! Embedded migrations for the panel and for every bot database, applied and inspected the
//! same way.
//!
//! Migrations run on a dedicated connection that is closed afterwards (a failed run can leave
//! sqlx's session advisory lock behind on a pooled connection). A database that holds
//! migrations this binary does not know (it is *ahead*, after a rollback to an older binary)
//! is accepted: our migrations are additive, so the older binary keeps working; status
//! reports those versions as `ahead`.

pub mod lint;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Row};

/// The panel schema, embedded at build time.
pub static PANEL: Migrator = sqlx::migrate!("./migrations/panel");

/// The schema of every bot database, embedded at build time.
pub static BOT: Migrator = sqlx::migrate!("./migrations/bot");

/// Errors while migrating or inspecting a database.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// Could not connect.
    #[error("cannot connect to {url}")]
    Connect {
        /// The masked URL.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed or an applied one was edited.
    #[error("migration failed: {0}")]
    Migrate(#[from] MigrateError),
    /// Reading `_sqlx_migrations` failed.
    #[error("cannot read the migrations table")]
    Query(#[from] sqlx::Error),
}

impl MigrationError {
    /// Whether retrying without a change (to the database or the binary) cannot help.
    pub fn is_fatal(&self) -> bool {
        matches!(self, MigrationError::Migrate(_))
    }
}

/// Where one migration stands in one database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationState {
    /// Applied, and its checksum matches the embedded file.
    Applied,
    /// Applied, but the embedded file differs from what was applied.
    ChecksumMismatch,
    /// Known to this binary and not applied yet.
    Pending,
    /// Applied by a newer binary; unknown to this one.
    Ahead,
    /// Started and did not finish (`success = false`).
    Failed,
}

/// One row of `migrate status`.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationStatus {
    /// The migration's version number.
    pub version: i64,
    /// Its description (file name after the version).
    pub name: String,
    /// When it was applied, if it was.
    pub applied_at: Option<DateTime<Utc>>,
    /// Where it stands.
    pub state: MigrationState,
}

/// Applies every pending migration of `migrator` to the database at `options`.
pub async fn apply(migrator: &Migrator, options: &PgConnectOptions) -> Result<(), MigrationError> {
    apply_counted(migrator, options).await.map(|_| ())
}

/// Like [`apply`], returning how many migrations were pending and are now applied (0: nothing
/// to apply).
pub async fn apply_counted(
    migrator: &Migrator,
    options: &PgConnectOptions,
) -> Result<usize, MigrationError> {
    let mut conn = connect(options).await?;
    let result = async {
        let pending = status_on(migrator, &mut conn)
            .await?
            .iter()
            .filter(|m| m.state == MigrationState::Pending)
            .count();
        apply_on(migrator, &mut conn).await?;
        Ok(pending)
    }
    .await;
    // Closing drops the session, and with it any advisory lock a failed run left behind.
    let _ = conn.close().await;
    result
}

/// Applies every pending migration of `migrator` on an open connection.
pub async fn apply_on(migrator: &Migrator, conn: &mut PgConnection) -> Result<(), MigrationError> {
    let mut tolerant = Migrator::with_migrations(migrator.migrations.to_vec());
    tolerant.set_ignore_missing(true);
    tolerant.run_direct(None, conn, false).await?;
    Ok(())
}

/// Whether every migration of `migrator` is applied, successfully and with its checksum, on
/// the database behind `conn`: one query and no lock, for a bot's start. `false` (a missing
/// migrations table, a pending, failed or changed migration) means [`apply_on`] has work to do
/// or an error to report; migrations applied by a newer binary are tolerated, as
/// [`apply_on`] tolerates them.
pub async fn is_current_on(
    migrator: &Migrator,
    conn: &mut PgConnection,
) -> Result<bool, sqlx::Error> {
    let rows: Vec<(i64, bool, Vec<u8>)> =
        match sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations")
            .fetch_all(&mut *conn)
            .await
        {
            Ok(rows) => rows,
            // undefined_table: a database no migration ran on yet.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => {
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
    if rows.iter().any(|(_, success, _)| !success) {
        return Ok(false);
    }
    let applied: HashMap<i64, Vec<u8>> = rows.into_iter().map(|(v, _, sum)| (v, sum)).collect();
    Ok(migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .all(|m| {
            applied
                .get(&m.version)
                .is_some_and(|sum| sum.as_slice() == &*m.checksum)
        }))
}

/// Lists applied, pending and unknown migrations of the database at `options`.
pub async fn status(
    migrator: &Migrator,
    options: &PgConnectOptions,
) -> Result<Vec<MigrationStatus>, MigrationError> {
    let mut conn = connect(options).await?;
    let result = status_on(migrator, &mut conn).await;
    let _ = conn.close().await;
    result
}

/// Like [`status`] on an open connection.
pub async fn status_on(
    migrator: &Migrator,
    conn: &mut PgConnection,
) -> Result<Vec<MigrationStatus>, MigrationError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    let mut applied: HashMap<i64, (String, DateTime<Utc>, bool, Vec<u8>)> = HashMap::new();
    if exists {
        let rows = sqlx::query(
            "SELECT version, description, installed_on, success, checksum \
             FROM _sqlx_migrations ORDER BY version",
        )
        .fetch_all(&mut *conn)
        .await?;
        for row in rows {
            applied.insert(
                row.try_get("version")?,
                (
                    row.try_get("description")?,
                    row.try_get("installed_on")?,
                    row.try_get("success")?,
                    row.try_get("checksum")?,
                ),
            );
        }
    }
    let mut out = Vec::new();
    for m in migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
    {
        let entry = match applied.remove(&m.version) {
            Some((_, at, false, _)) => (Some(at), MigrationState::Failed),
            Some((_, at, true, sum)) if sum.as_slice() != &*m.checksum => {
                (Some(at), MigrationState::ChecksumMismatch)
            }
            Some((_, at, true, _)) => (Some(at), MigrationState::Applied),
            None => (None, MigrationState::Pending),
        };
        out.push(MigrationStatus {
            version: m.version,
            name: m.description.to_string(),
            applied_at: entry.0,
            state: entry.1,
        });
    }
    for (version, (name, at, success, _)) in applied {
        out.push(MigrationStatus {
            version,
            name,
            applied_at: Some(at),
            state: if success {
                MigrationState::Ahead
            } else {
                MigrationState::Failed
            },
        });
    }
    out.sort_by_key(|s| s.version);
    Ok(out)
}

async fn connect(options: &PgConnectOptions) -> Result<PgConnection, MigrationError> {
    options
        .connect()
        .await
        .map_err(|source| MigrationError::Connect {
            url: describe(options),
            source,
        })
}

/// A printable `postgres://user@host:port/db` for an options value (never the password).
pub fn describe(options: &PgConnectOptions) -> String {
    format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    )
}
