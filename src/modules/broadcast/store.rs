//! The broadcast module's SQL: broadcasts, their frozen audiences and each recipient's
//! outcome (recorded from the outbox's result).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

use super::Audience;

/// What a new broadcast sends, and to whom.
#[derive(Debug, Clone, Default)]
pub struct NewBroadcast<'a> {
    /// A text (placeholders rendered per recipient).
    pub text: Option<&'a str>,
    /// A text key, rendered per recipient in their language.
    pub text_key: Option<&'a str>,
    /// A message to copy: (chat, message id).
    pub copy: Option<(i64, i64)>,
    /// Rows of inline buttons, as Telegram's JSON.
    pub buttons: Option<&'a serde_json::Value>,
    /// The audience, as written (`all`, `lang:CODE`, `active-days:N`, `admins`).
    pub audience: &'a str,
    /// cli, bot or schedule.
    pub created_by: &'a str,
    /// When it starts (`None`: now).
    pub start_at: Option<DateTime<Utc>>,
    /// The admin's progress message (an in-bot /broadcast): (chat, message id).
    pub progress: Option<(i64, i64)>,
}

/// A broadcast row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct BroadcastRow {
    /// Its id.
    pub id: i64,
    /// scheduled, running, paused, done or cancelled.
    pub state: String,
    /// Its text, if it sends one.
    pub text: Option<String>,
    /// Its text key, if it sends one.
    pub text_key: Option<String>,
    /// The chat of the message it copies.
    pub copy_from_chat: Option<i64>,
    /// The message it copies.
    pub copy_message_id: Option<i64>,
    /// Its inline buttons.
    pub buttons: Option<sqlx::types::Json<serde_json::Value>>,
    /// Its audience as written.
    pub audience: String,
    /// cli, bot or schedule.
    pub created_by: String,
    /// When it starts (or started to be due).
    pub start_at: DateTime<Utc>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its audience was frozen.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended (done or cancelled).
    pub finished_at: Option<DateTime<Utc>>,
    /// How many runs of the bot resumed it after a restart or crash.
    pub resumed: i32,
    /// The admin's progress message chat.
    pub progress_chat: Option<i64>,
    /// The admin's progress message.
    pub progress_message_id: Option<i64>,
}

const COLUMNS: &str = "id, state, text, text_key, copy_from_chat, copy_message_id, buttons, \
    audience, created_by, start_at, created_at, started_at, finished_at, resumed, \
    progress_chat, progress_message_id";

/// Counts of a broadcast's recipients by outcome.
#[derive(
    Debug, Clone, Copy, Default, Serialize, sqlx::FromRow, PartialEq, Eq, utoipa::ToSchema,
)]
pub struct Counts {
    /// Recipients frozen.
    pub total: i64,
    /// Telegram accepted the message.
    pub sent: i64,
    /// Refused for good (400s), with the reason kept.
    pub failed: i64,
    /// The user blocked the bot (403).
    pub blocked: i64,
    /// Not yet recorded (waiting, or queued in the outbox).
    pub pending: i64,
}

/// Creates a broadcast in state `scheduled`; returns its id.
pub async fn create(conn: &mut PgConnection, b: &NewBroadcast<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO broadcasts (text, text_key, copy_from_chat, copy_message_id, buttons, \
            audience, created_by, start_at, progress_chat, progress_message_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, COALESCE($8, now()), $9, $10) RETURNING id",
    )
    .bind(b.text)
    .bind(b.text_key)
    .bind(b.copy.map(|c| c.0))
    .bind(b.copy.map(|c| c.1))
    .bind(b.buttons.map(sqlx::types::Json))
    .bind(b.audience)
    .bind(b.created_by)
    .bind(b.start_at)
    .bind(b.progress.map(|p| p.0))
    .bind(b.progress.map(|p| p.1))
    .fetch_one(conn)
    .await
}

/// The `WHERE` condition on `users u` selecting an audience (binds `$1`: admin ids, `$2`:
/// the language, `$3`: days).
const AUDIENCE: &str = "NOT u.blocked AND CASE $4 \
    WHEN 'all' THEN TRUE \
    WHEN 'admins' THEN u.user_id = ANY($1) \
    WHEN 'lang' THEN lower(u.language_code) = $2 OR lower(u.language_code) LIKE $2 || '-%' \
    ELSE u.last_seen >= now() - make_interval(days => $3::int) END";

fn audience_binds(audience: &Audience) -> (String, i32, &'static str) {
    match audience {
        Audience::All => (String::new(), 0, "all"),
        Audience::Admins => (String::new(), 0, "admins"),
        Audience::Lang(code) => (code.to_ascii_lowercase(), 0, "lang"),
        Audience::ActiveDays(days) => (
            String::new(),
            i32::try_from(*days).unwrap_or(i32::MAX),
            "active",
        ),
    }
}

/// How many users an audience has now (blocked users excluded).
pub async fn count_audience(
    conn: &mut PgConnection,
    audience: &Audience,
    admins: &[i64],
) -> Result<i64, sqlx::Error> {
    let (lang, days, kind) = audience_binds(audience);
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM users u WHERE {AUDIENCE}"
    )))
    .bind(admins)
    .bind(lang)
    .bind(days)
    .bind(kind)
    .fetch_one(conn)
    .await
}

/// Freezes the audience of a `scheduled` broadcast (one row per recipient) and sets it
/// `running`; returns how many recipients it has, or `None` when it was not scheduled.
pub async fn freeze(
    conn: &mut PgConnection,
    id: i64,
    audience: &Audience,
    admins: &[i64],
) -> Result<Option<i64>, sqlx::Error> {
    let started: Option<i64> = sqlx::query_scalar(
        "UPDATE broadcasts SET state = 'running', started_at = now() \
         WHERE id = $1 AND state = 'scheduled' AND started_at IS NULL RETURNING id",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    if started.is_none() {
        return Ok(None);
    }
    let (lang, days, kind) = audience_binds(audience);
    let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO broadcast_recipients (broadcast_id, user_id) \
         SELECT $5, u.user_id FROM users u WHERE {AUDIENCE}"
    )))
    .bind(admins)
    .bind(lang)
    .bind(days)
    .bind(kind)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(Some(
        i64::try_from(inserted.rows_affected()).unwrap_or(i64::MAX),
    ))
}

/// One broadcast.
pub async fn get(conn: &mut PgConnection, id: i64) -> Result<Option<BroadcastRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM broadcasts WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Every broadcast, newest first.
pub async fn list(conn: &mut PgConnection) -> Result<Vec<BroadcastRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM broadcasts ORDER BY id DESC"
    )))
    .fetch_all(conn)
    .await
}

/// The broadcasts in `state`, oldest first.
pub async fn in_state(
    conn: &mut PgConnection,
    state: &str,
) -> Result<Vec<BroadcastRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM broadcasts WHERE state = $1 ORDER BY id"
    )))
    .bind(state)
    .fetch_all(conn)
    .await
}

/// Every broadcast not finished (scheduled, running or paused), oldest first.
pub async fn unfinished(conn: &mut PgConnection) -> Result<Vec<BroadcastRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM broadcasts \
         WHERE state IN ('scheduled', 'running', 'paused') ORDER BY id"
    )))
    .fetch_all(conn)
    .await
}

/// Counts of a broadcast's recipients by outcome.
pub async fn counts(conn: &mut PgConnection, id: i64) -> Result<Counts, sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) AS total, \
            count(*) FILTER (WHERE state = 'sent') AS sent, \
            count(*) FILTER (WHERE state = 'failed') AS failed, \
            count(*) FILTER (WHERE state = 'blocked') AS blocked, \
            count(*) FILTER (WHERE state IN ('pending', 'queued')) AS pending \
         FROM broadcast_recipients WHERE broadcast_id = $1",
    )
    .bind(id)
    .fetch_one(conn)
    .await
}

/// Moves a broadcast from one of `from` to `to` (ending it sets `finished_at`); returns the
/// state it had, or `None` when it was in none of `from` (or does not exist).
pub async fn set_state(
    conn: &mut PgConnection,
    id: i64,
    from: &[&str],
    to: &str,
) -> Result<Option<String>, sqlx::Error> {
    let from: Vec<String> = from.iter().map(|s| (*s).to_owned()).collect();
    sqlx::query_scalar(
        "UPDATE broadcasts b SET state = $3, \
            finished_at = CASE WHEN $3 IN ('done', 'cancelled') THEN now() ELSE NULL END \
         FROM (SELECT state FROM broadcasts WHERE id = $1 FOR UPDATE) old \
         WHERE b.id = $1 AND b.state = ANY($2) RETURNING old.state",
    )
    .bind(id)
    .bind(&from)
    .bind(to)
    .fetch_optional(conn)
    .await
}

/// Counts one more resumption of every unfinished, started broadcast (a new run of the bot).
pub async fn note_resumed(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE broadcasts SET resumed = resumed + 1 \
         WHERE state IN ('running', 'paused') AND started_at IS NOT NULL",
    )
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// Recipients of a running broadcast queued in the outbox and not yet recorded.
pub async fn queued(conn: &mut PgConnection, id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM broadcast_recipients WHERE broadcast_id = $1 AND state = 'queued'",
    )
    .bind(id)
    .fetch_one(conn)
    .await
}

/// A recipient about to be queued, with what rendering needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Recipient {
    /// The user (their private chat).
    pub user_id: i64,
    /// First name.
    pub first_name: String,
    /// Username.
    pub username: Option<String>,
    /// Language code.
    pub language_code: Option<String>,
}

/// Locks and returns up to `limit` pending recipients of a broadcast (inside the caller's
/// transaction), in user order.
pub async fn take_pending(
    conn: &mut PgConnection,
    id: i64,
    limit: i64,
) -> Result<Vec<Recipient>, sqlx::Error> {
    sqlx::query_as(
        "SELECT r.user_id, COALESCE(u.first_name, '') AS first_name, u.username, \
            u.language_code \
         FROM (SELECT user_id FROM broadcast_recipients \
               WHERE broadcast_id = $1 AND state = 'pending' ORDER BY user_id LIMIT $2 \
               FOR UPDATE SKIP LOCKED) r \
         LEFT JOIN users u ON u.user_id = r.user_id ORDER BY r.user_id",
    )
    .bind(id)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Marks a recipient queued as outbox request `outbox_id`.
pub async fn mark_queued(
    conn: &mut PgConnection,
    id: i64,
    user_id: i64,
    outbox_id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE broadcast_recipients SET state = 'queued', outbox_id = $3 \
         WHERE broadcast_id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(user_id)
    .bind(outbox_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks a recipient done without sending (e.g. its text is missing).
pub async fn mark_unsent(
    conn: &mut PgConnection,
    id: i64,
    user_id: i64,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE broadcast_recipients SET state = 'failed', error = $3, done_at = now() \
         WHERE broadcast_id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(user_id)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records what the outbox made of request `outbox_id` (sent, blocked or failed).
pub async fn record(
    conn: &mut PgConnection,
    outbox_id: i64,
    state: &str,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE broadcast_recipients SET state = $2, error = $3, done_at = now() \
         WHERE outbox_id = $1 AND state = 'queued'",
    )
    .bind(outbox_id)
    .bind(state)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets a running broadcast `done` when no recipient is left; returns whether it did.
pub async fn finish_if_done(conn: &mut PgConnection, id: i64) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE broadcasts SET state = 'done', finished_at = now() \
         WHERE id = $1 AND state = 'running' AND NOT EXISTS ( \
             SELECT 1 FROM broadcast_recipients \
             WHERE broadcast_id = $1 AND state IN ('pending', 'queued'))",
    )
    .bind(id)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// The broadcast started from the admin's confirmation message `message_id` in `chat`.
pub async fn by_progress_message(
    conn: &mut PgConnection,
    chat: i64,
    message_id: i64,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM broadcasts WHERE progress_chat = $1 AND progress_message_id = $2",
    )
    .bind(chat)
    .bind(message_id)
    .fetch_optional(conn)
    .await
}

/// One line of a broadcast's report.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ReportLine {
    /// The user.
    pub user_id: i64,
    /// pending, queued, sent, blocked or failed.
    pub outcome: String,
    /// Telegram's reason, for failed ones.
    pub error: Option<String>,
    /// When the outcome was recorded.
    pub time: Option<DateTime<Utc>>,
}

/// One line per recipient, in user order.
pub async fn report(conn: &mut PgConnection, id: i64) -> Result<Vec<ReportLine>, sqlx::Error> {
    sqlx::query_as(
        "SELECT user_id, state AS outcome, error, done_at AS time FROM broadcast_recipients \
         WHERE broadcast_id = $1 ORDER BY user_id",
    )
    .bind(id)
    .fetch_all(conn)
    .await
}

/// Everyone an audience has now, with what rendering needs (blocked users excluded).
pub async fn members(
    conn: &mut PgConnection,
    audience: &Audience,
    admins: &[i64],
) -> Result<Vec<Recipient>, sqlx::Error> {
    let (lang, days, kind) = audience_binds(audience);
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT u.user_id, u.first_name, u.username, u.language_code FROM users u \
         WHERE {AUDIENCE} ORDER BY u.user_id"
    )))
    .bind(admins)
    .bind(lang)
    .bind(days)
    .bind(kind)
    .fetch_all(conn)
    .await
}

/// One chat as a recipient: the user's details when the chat is a known user, else the bare
/// chat id (a group, or a user not seen yet).
pub async fn member(conn: &mut PgConnection, chat: i64) -> Result<Vec<Recipient>, sqlx::Error> {
    let known: Option<Recipient> = sqlx::query_as(
        "SELECT user_id, first_name, username, language_code FROM users WHERE user_id = $1",
    )
    .bind(chat)
    .fetch_optional(conn)
    .await?;
    Ok(vec![known.unwrap_or(Recipient {
        user_id: chat,
        first_name: String::new(),
        username: None,
        language_code: None,
    })])
}
