//! The scheduler module's SQL: jobs and the runs of their occurrences.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

/// A scheduled job.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ScheduleJob {
    /// Its id.
    pub id: i64,
    /// once or cron.
    pub kind: String,
    /// A one-off's time.
    pub run_at: Option<DateTime<Utc>>,
    /// A cron job's expression.
    pub cron: Option<String>,
    /// The zone its times are read in.
    pub tz: String,
    /// One chat it sends to.
    pub chat_id: Option<i64>,
    /// Or an audience.
    pub audience: Option<String>,
    /// A text.
    pub text: Option<String>,
    /// Or a text key.
    pub text_key: Option<String>,
    /// Whether each occurrence starts a broadcast.
    pub broadcast: bool,
    /// run-once or skip.
    pub misfire: String,
    /// Whether it is paused.
    pub paused: bool,
    /// The next occurrence not yet claimed.
    pub next_due: Option<DateTime<Utc>>,
    /// When it was added.
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, kind, run_at, cron, tz, chat_id, audience, text, text_key, \
    broadcast, misfire, paused, next_due, created_at";

/// A job to add.
#[derive(Debug, Clone, Default)]
pub struct NewJob<'a> {
    /// once or cron.
    pub kind: &'a str,
    /// A one-off's time.
    pub run_at: Option<DateTime<Utc>>,
    /// A cron expression.
    pub cron: Option<&'a str>,
    /// The zone.
    pub tz: &'a str,
    /// One chat.
    pub chat_id: Option<i64>,
    /// Or an audience.
    pub audience: Option<&'a str>,
    /// A text.
    pub text: Option<&'a str>,
    /// Or a text key.
    pub text_key: Option<&'a str>,
    /// Start a broadcast at each occurrence.
    pub broadcast: bool,
    /// run-once or skip.
    pub misfire: &'a str,
    /// The first occurrence.
    pub next_due: Option<DateTime<Utc>>,
}

/// Adds a job; returns its id.
pub async fn add(conn: &mut PgConnection, j: &NewJob<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO schedule_jobs (kind, run_at, cron, tz, chat_id, audience, text, text_key, \
            broadcast, misfire, next_due) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
    )
    .bind(j.kind)
    .bind(j.run_at)
    .bind(j.cron)
    .bind(j.tz)
    .bind(j.chat_id)
    .bind(j.audience)
    .bind(j.text)
    .bind(j.text_key)
    .bind(j.broadcast)
    .bind(j.misfire)
    .bind(j.next_due)
    .fetch_one(conn)
    .await
}

/// Every job, by id.
pub async fn list(conn: &mut PgConnection) -> Result<Vec<ScheduleJob>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM schedule_jobs ORDER BY id"
    )))
    .fetch_all(conn)
    .await
}

/// One job.
pub async fn get(conn: &mut PgConnection, id: i64) -> Result<Option<ScheduleJob>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM schedule_jobs WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Removes a job and its runs; returns whether it existed.
pub async fn remove(conn: &mut PgConnection, id: i64) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("DELETE FROM schedule_jobs WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Pauses or resumes a job, setting its next occurrence when given; returns whether it
/// exists.
pub async fn set_paused(
    conn: &mut PgConnection,
    id: i64,
    paused: bool,
    next_due: Option<DateTime<Utc>>,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE schedule_jobs SET paused = $2, next_due = COALESCE($3, next_due) WHERE id = $1",
    )
    .bind(id)
    .bind(paused)
    .bind(next_due)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Unpaused jobs whose next occurrence is at or before `now`, earliest first.
pub async fn due(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<ScheduleJob>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM schedule_jobs \
         WHERE NOT paused AND next_due IS NOT NULL AND next_due <= $1 \
         ORDER BY next_due, id LIMIT $2"
    )))
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// The earliest next occurrence of an unpaused job.
pub async fn next_due(conn: &mut PgConnection) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT min(next_due) FROM schedule_jobs WHERE NOT paused AND next_due IS NOT NULL",
    )
    .fetch_one(conn)
    .await
}

/// Claims occurrence `due` of a job by moving its `next_due` on to `next` (compare-and-set,
/// inside the caller's transaction); false when another claim or a change came first.
pub async fn advance(
    conn: &mut PgConnection,
    id: i64,
    due: DateTime<Utc>,
    next: Option<DateTime<Utc>>,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE schedule_jobs SET next_due = $3 WHERE id = $1 AND next_due = $2 AND NOT paused",
    )
    .bind(id)
    .bind(due)
    .bind(next)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Records an occurrence's run; false when it was recorded already.
pub async fn insert_run(
    conn: &mut PgConnection,
    id: i64,
    due: DateTime<Utc>,
    outcome: &str,
    late_ms: i64,
    detail: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "INSERT INTO schedule_runs (job_id, due_at, outcome, late_ms, detail) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (job_id, due_at) DO NOTHING",
    )
    .bind(id)
    .bind(due)
    .bind(outcome)
    .bind(late_ms)
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// One run of a job.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RunRecord {
    /// The occurrence's time.
    pub due_at: DateTime<Utc>,
    /// When it was claimed.
    pub started_at: DateTime<Utc>,
    /// sent, broadcast, late, skipped or failed.
    pub outcome: String,
    /// How late it was claimed, in milliseconds.
    pub late_ms: i64,
    /// What it did, or why it failed.
    pub detail: Option<String>,
}

/// A job's runs, oldest first.
pub async fn runs(conn: &mut PgConnection, id: i64) -> Result<Vec<RunRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT due_at, started_at, outcome, late_ms, detail FROM schedule_runs \
         WHERE job_id = $1 ORDER BY due_at",
    )
    .bind(id)
    .fetch_all(conn)
    .await
}
