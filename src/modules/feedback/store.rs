//! The feedback module's SQL: users' topics and bans, what each queued request is for, and
//! which admin-chat message stands for which user.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// A user as the feedback module knows them.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FeedbackUser {
    /// Telegram user id.
    pub user_id: i64,
    /// Their topic in the admin chat, once created.
    pub thread_id: Option<i32>,
    /// The outbox row of a topic creation in flight.
    pub topic_request: Option<i64>,
    /// Whether an admin banned them.
    pub banned: bool,
    /// Messages they sent.
    pub messages: i64,
    /// When they last got the auto-reply (cleared by an admin's answer).
    pub auto_replied_at: Option<DateTime<Utc>>,
}

const USER_COLUMNS: &str = "user_id, thread_id, topic_request, banned, messages, auto_replied_at";

/// Counts a message from `user_id` (creating their row); returns the row after it.
pub async fn count_message(
    conn: &mut PgConnection,
    user_id: i64,
) -> Result<FeedbackUser, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO feedback_users (user_id, messages, last_message_at) VALUES ($1, 1, now()) \
         ON CONFLICT (user_id) DO UPDATE SET messages = feedback_users.messages + 1, \
            last_message_at = now() \
         RETURNING {USER_COLUMNS}"
    )))
    .bind(user_id)
    .fetch_one(conn)
    .await
}

/// One user, if they ever wrote (or were banned).
pub async fn get_user(
    conn: &mut PgConnection,
    user_id: i64,
) -> Result<Option<FeedbackUser>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM feedback_users WHERE user_id = $1"
    )))
    .bind(user_id)
    .fetch_optional(conn)
    .await
}

/// The user whose topic is `thread_id`.
pub async fn user_by_thread(
    conn: &mut PgConnection,
    thread_id: i32,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT user_id FROM feedback_users WHERE thread_id = $1")
        .bind(thread_id)
        .fetch_optional(conn)
        .await
}

/// The user admin-chat message `message_id` of `chat_id` stands for.
pub async fn user_by_message(
    conn: &mut PgConnection,
    chat_id: i64,
    message_id: i32,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT user_id FROM feedback_messages WHERE chat_id = $1 AND message_id = $2",
    )
    .bind(chat_id)
    .bind(message_id)
    .fetch_optional(conn)
    .await
}

/// Records that admin-chat message `message_id` of `chat_id` stands for `user_id`.
pub async fn map_message(
    conn: &mut PgConnection,
    chat_id: i64,
    message_id: i32,
    user_id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO feedback_messages (chat_id, message_id, user_id) VALUES ($1, $2, $3) \
         ON CONFLICT (chat_id, message_id) DO UPDATE SET user_id = EXCLUDED.user_id",
    )
    .bind(chat_id)
    .bind(message_id)
    .bind(user_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Bans or unbans `user_id` (creating their row).
pub async fn set_banned(
    conn: &mut PgConnection,
    user_id: i64,
    banned: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO feedback_users (user_id, banned) VALUES ($1, $2) \
         ON CONFLICT (user_id) DO UPDATE SET banned = EXCLUDED.banned",
    )
    .bind(user_id)
    .bind(banned)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records the topic creation in flight for `user_id` (None: none is).
pub async fn set_topic_request(
    conn: &mut PgConnection,
    user_id: i64,
    outbox_id: Option<i64>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE feedback_users SET topic_request = $2 WHERE user_id = $1")
        .bind(user_id)
        .bind(outbox_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Sets `user_id`'s topic (None: it is gone); no creation is in flight any more.
pub async fn set_thread(
    conn: &mut PgConnection,
    user_id: i64,
    thread_id: Option<i32>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE feedback_users SET thread_id = $2, topic_request = NULL WHERE user_id = $1",
    )
    .bind(user_id)
    .bind(thread_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets topic `thread_id` (an admin deleted it) if it is still `user_id`'s.
pub async fn forget_thread(
    conn: &mut PgConnection,
    user_id: i64,
    thread_id: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE feedback_users SET thread_id = NULL WHERE user_id = $1 AND thread_id = $2")
        .bind(user_id)
        .bind(thread_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Marks that `user_id` got the auto-reply now (`true`), or clears it (`false`: an admin
/// answered, the next message out of hours gets it again).
pub async fn set_auto_replied(
    conn: &mut PgConnection,
    user_id: i64,
    replied: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE feedback_users SET auto_replied_at = CASE WHEN $2 THEN now() END \
         WHERE user_id = $1",
    )
    .bind(user_id)
    .bind(replied)
    .execute(conn)
    .await?;
    Ok(())
}

/// Keeps user message `message_id` of `user_id` until their topic exists.
pub async fn add_pending(
    conn: &mut PgConnection,
    user_id: i64,
    message_id: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO feedback_pending (user_id, message_id) VALUES ($1, $2)")
        .bind(user_id)
        .bind(message_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes every message of `user_id` waiting for their topic, oldest first.
pub async fn take_pending(conn: &mut PgConnection, user_id: i64) -> Result<Vec<i32>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH taken AS (DELETE FROM feedback_pending WHERE user_id = $1 \
                        RETURNING id, message_id) \
         SELECT message_id FROM taken ORDER BY id",
    )
    .bind(user_id)
    .fetch_all(conn)
    .await
}

/// What a request the module queued is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A user's new topic.
    Topic,
    /// A user's message (or its header) copied to the admin chat.
    Forward,
    /// An admin's answer copied to the user.
    Reply,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Topic => "topic",
            Kind::Forward => "forward",
            Kind::Reply => "reply",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "topic" => Some(Kind::Topic),
            "forward" => Some(Kind::Forward),
            "reply" => Some(Kind::Reply),
            _ => None,
        }
    }
}

/// A queued request's purpose, read back with its result.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// What it is for.
    pub kind: Kind,
    /// The user it concerns.
    pub user_id: i64,
    /// forward: the user's message; reply: the admin's message.
    pub source_message: Option<i32>,
    /// reply: the admin chat the answer came from.
    pub source_chat: Option<i64>,
    /// forward: the topic the copy went to; reply: the topic the answer came from.
    pub source_thread: Option<i32>,
    /// reply: the answer's text, for the history.
    pub content: Option<String>,
}

/// Records what outbox request `outbox_id` is for (in the transaction that queued it).
pub async fn add_request(
    conn: &mut PgConnection,
    outbox_id: i64,
    r: &RequestRecord,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO feedback_requests \
            (outbox_id, kind, user_id, source_message, source_chat, source_thread, content) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(outbox_id)
    .bind(r.kind.as_str())
    .bind(r.user_id)
    .bind(r.source_message)
    .bind(r.source_chat)
    .bind(r.source_thread)
    .bind(r.content.as_deref())
    .execute(conn)
    .await?;
    Ok(())
}

/// Takes the purpose of outbox request `outbox_id` (once: its result is handled once).
pub async fn take_request(
    conn: &mut PgConnection,
    outbox_id: i64,
) -> Result<Option<RequestRecord>, sqlx::Error> {
    type Row = (
        String,
        i64,
        Option<i32>,
        Option<i64>,
        Option<i32>,
        Option<String>,
    );
    let row: Option<Row> = sqlx::query_as(
        "DELETE FROM feedback_requests WHERE outbox_id = $1 \
         RETURNING kind, user_id, source_message, source_chat, source_thread, content",
    )
    .bind(outbox_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.and_then(
        |(kind, user_id, source_message, source_chat, source_thread, content)| {
            Some(RequestRecord {
                kind: Kind::parse(&kind)?,
                user_id,
                source_message,
                source_chat,
                source_thread,
                content,
            })
        },
    ))
}
