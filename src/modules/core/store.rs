//! The core module's SQL: the user registry and the admin `/stats` figures.
//!
//! `/stats` also counts today's messages, which the history module writes; it reads that
//! table without importing the history module.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

/// A user seen in an update.
#[derive(Debug, Clone)]
pub struct SeenUser<'a> {
    /// Telegram user id.
    pub user_id: i64,
    /// Username without `@`.
    pub username: Option<&'a str>,
    /// First name.
    pub first_name: &'a str,
    /// Last name.
    pub last_name: Option<&'a str>,
    /// IETF language code from the client.
    pub language_code: Option<&'a str>,
}

/// How stale `users.last_seen` may be: a touch within this of the last one writes nothing.
pub const LAST_SEEN_RESOLUTION: std::time::Duration = std::time::Duration::from_secs(60);

/// Records that a user wrote: inserts or refreshes them and clears `blocked`.
///
/// A user who writes again within [`LAST_SEEN_RESOLUTION`] with the same profile leaves the
/// row as it is: no new row version, no WAL for it (a chat's every message used to rewrite
/// its user). `last_seen` is therefore exact to that resolution.
pub async fn touch_user(conn: &mut PgConnection, u: &SeenUser<'_>) -> Result<(), sqlx::Error> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "INSERT INTO users (user_id, username, first_name, last_name, language_code) \
             VALUES ($1, $2, $3, $4, $5) {}",
            *TOUCH_CONFLICT
        )
    });
    sqlx::query(SQL.as_str())
        .bind(u.user_id)
        .bind(u.username)
        .bind(u.first_name)
        .bind(u.last_name)
        .bind(u.language_code)
        .execute(conn)
        .await?;
    Ok(())
}

/// The conflict clause of every users upsert ([`touch_user`], and the unit of work's one
/// statement, `modules::store::apply_deferred`): refresh a known user only when something
/// changed or [`LAST_SEEN_RESOLUTION`] passed.
pub(crate) static TOUCH_CONFLICT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "ON CONFLICT (user_id) DO UPDATE SET username = EXCLUDED.username, \
            first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name, \
            language_code = COALESCE(EXCLUDED.language_code, users.language_code), \
            last_seen = now(), blocked = FALSE \
         WHERE users.blocked \
            OR users.last_seen < now() - make_interval(secs => {}) \
            OR (users.username, users.first_name, users.last_name) \
               IS DISTINCT FROM (EXCLUDED.username, EXCLUDED.first_name, EXCLUDED.last_name) \
            OR (EXCLUDED.language_code IS NOT NULL \
                AND EXCLUDED.language_code IS DISTINCT FROM users.language_code)",
        LAST_SEEN_RESOLUTION.as_secs()
    )
});

/// Sets a user's `blocked` flag (Telegram answered 403).
pub async fn set_user_blocked(
    conn: &mut PgConnection,
    user_id: i64,
    blocked: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET blocked = $2 WHERE user_id = $1")
        .bind(user_id)
        .bind(blocked)
        .execute(conn)
        .await?;
    Ok(())
}

/// A user of the registry.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct UserRecord {
    /// Telegram user id.
    pub user_id: i64,
    /// Username.
    pub username: Option<String>,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: Option<String>,
    /// Language code.
    pub language_code: Option<String>,
    /// First update seen.
    pub first_seen: DateTime<Utc>,
    /// Latest update seen.
    pub last_seen: DateTime<Utc>,
    /// Whether Telegram said the user blocked the bot.
    pub blocked: bool,
}

/// One user.
pub async fn get_user(
    conn: &mut PgConnection,
    user_id: i64,
) -> Result<Option<UserRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT user_id, username, first_name, last_name, language_code, first_seen, \
         last_seen, blocked FROM users WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(conn)
    .await
}

/// Users, the latest seen first: `limit` of them after `offset`, only those whose name,
/// username or id contains `search` when it is given.
pub async fn list_users(
    conn: &mut PgConnection,
    search: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<Vec<UserRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT user_id, username, first_name, last_name, language_code, first_seen, \
         last_seen, blocked FROM users \
         WHERE $1::text IS NULL \
            OR strpos(lower(concat_ws(' ', user_id::text, username, first_name, last_name)), \
                      lower($1)) > 0 \
         ORDER BY last_seen DESC, user_id LIMIT $2 OFFSET $3",
    )
    .bind(search)
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await
}

/// Figures for the admin `/stats` command.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Stats {
    /// Users ever seen.
    pub users_total: i64,
    /// Users seen since midnight (server time zone).
    pub active_today: i64,
    /// Users seen in the last 7 days.
    pub active_7d: i64,
    /// Users who blocked the bot.
    pub blocked: i64,
    /// Messages in and out since midnight.
    pub messages_today: i64,
}

/// Computes [`Stats`].
pub async fn stats(conn: &mut PgConnection) -> Result<Stats, sqlx::Error> {
    sqlx::query_as(
        "SELECT \
            (SELECT count(*) FROM users) AS users_total, \
            (SELECT count(*) FROM users WHERE last_seen >= date_trunc('day', now())) AS active_today, \
            (SELECT count(*) FROM users WHERE last_seen >= now() - interval '7 days') AS active_7d, \
            (SELECT count(*) FROM users WHERE blocked) AS blocked, \
            (SELECT count(*) FROM messages WHERE created_at >= date_trunc('day', now())) AS messages_today",
    )
    .fetch_one(conn)
    .await
}
