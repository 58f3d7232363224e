//! The history module's SQL: messages in and out, `{role, content, timestamp}`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

/// Who wrote a history message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The user.
    User,
    /// The bot.
    Bot,
    /// An operator writing as the bot.
    Admin,
    /// The AI model's answer (the assistant module).
    Assistant,
}

impl Role {
    /// Its name in the `role` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Bot => "bot",
            Role::Admin => "admin",
            Role::Assistant => "assistant",
        }
    }
}

/// Appends a message to the history.
pub async fn add_message(
    conn: &mut PgConnection,
    chat_id: i64,
    user_id: Option<i64>,
    role: Role,
    content: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO messages (chat_id, user_id, role, content) VALUES ($1, $2, $3, $4)")
        .bind(chat_id)
        .bind(user_id)
        .bind(role.as_str())
        .bind(content)
        .execute(conn)
        .await?;
    Ok(())
}

/// Appends the bot's sent messages `(chat_id, user_id, text)` in one statement (the sender
/// records its results in groups; a row per statement was a round trip per message).
pub async fn add_bot_messages(
    conn: &mut PgConnection,
    sent: &[(i64, Option<i64>, &str)],
) -> Result<(), sqlx::Error> {
    if sent.is_empty() {
        return Ok(());
    }
    let chats: Vec<i64> = sent.iter().map(|s| s.0).collect();
    let users: Vec<Option<i64>> = sent.iter().map(|s| s.1).collect();
    let texts: Vec<&str> = sent.iter().map(|s| s.2).collect();
    sqlx::query(
        "INSERT INTO messages (chat_id, user_id, role, content) \
         SELECT c, u, $4, t FROM UNNEST($1::bigint[], $2::bigint[], $3::text[]) \
              WITH ORDINALITY AS m(c, u, t, n) ORDER BY n",
    )
    .bind(&chats)
    .bind(&users)
    .bind(&texts)
    .bind(Role::Bot.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// A history message: `{role, content, timestamp}`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct MessageRecord {
    /// user, bot, admin or assistant.
    pub role: String,
    /// The text.
    pub content: String,
    /// When it was stored.
    #[serde(rename = "timestamp")]
    pub created_at: DateTime<Utc>,
}

/// The latest `limit` messages of a chat, oldest first.
pub async fn chat_history(
    conn: &mut PgConnection,
    chat_id: i64,
    limit: i64,
) -> Result<Vec<MessageRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT role, content, created_at FROM ( \
            SELECT id, role, content, created_at FROM messages WHERE chat_id = $1 \
            ORDER BY id DESC LIMIT $2) m ORDER BY id",
    )
    .bind(chat_id)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Deletes history older than `days`; returns how many rows.
pub async fn prune_history(conn: &mut PgConnection, days: i64) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "DELETE FROM messages WHERE created_at < now() - make_interval(days => $1::int)",
    )
    .bind(days)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}
