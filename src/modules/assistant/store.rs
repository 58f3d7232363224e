//! The assistant module's SQL: queued model requests, `/reset` marks, and the context read
//! from the history.

use sqlx::PgConnection;

/// A question waiting for the model.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingRequest {
    /// Its id.
    pub id: i64,
    /// The chat to answer in.
    pub chat_id: i64,
    /// Who asked.
    pub user_id: Option<i64>,
    /// Their client's language.
    pub language_code: Option<String>,
    /// The history message it answers (the context ends there).
    pub until_message: i64,
    /// Failed attempts so far.
    pub attempts: i32,
}

/// The newest history message of `chat_id` (0 when none).
pub async fn last_message(conn: &mut PgConnection, chat_id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COALESCE(max(id), 0) FROM messages WHERE chat_id = $1")
        .bind(chat_id)
        .fetch_one(conn)
        .await
}

/// Questions `user_id` asked since midnight (server time zone).
pub async fn asked_today(conn: &mut PgConnection, user_id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM assistant_requests \
         WHERE user_id = $1 AND created_at >= date_trunc('day', now())",
    )
    .bind(user_id)
    .fetch_one(conn)
    .await
}

/// Queues a question (inside the update's transaction); returns its id.
pub async fn queue_request(
    conn: &mut PgConnection,
    chat_id: i64,
    user_id: Option<i64>,
    language_code: Option<&str>,
    until_message: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO assistant_requests (chat_id, user_id, language_code, until_message) \
         VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(chat_id)
    .bind(user_id)
    .bind(language_code)
    .bind(until_message)
    .fetch_one(conn)
    .await
}

/// Starts a new context in `chat_id` after history message `since_message`.
pub async fn reset_context(
    conn: &mut PgConnection,
    chat_id: i64,
    since_message: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO assistant_contexts (chat_id, since_message) VALUES ($1, $2) \
         ON CONFLICT (chat_id) DO UPDATE SET since_message = EXCLUDED.since_message, \
            reset_at = now()",
    )
    .bind(chat_id)
    .bind(since_message)
    .execute(conn)
    .await?;
    Ok(())
}

/// Due questions, oldest first, at most `limit`.
pub async fn due_requests(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<PendingRequest>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, chat_id, user_id, language_code, until_message, attempts \
         FROM assistant_requests WHERE done_at IS NULL AND next_attempt_at <= now() \
         ORDER BY id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// How long until the next pending question that is not due yet (None: there is none).
pub async fn next_due_in(conn: &mut PgConnection) -> Result<Option<f64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT GREATEST(EXTRACT(EPOCH FROM min(next_attempt_at) - now()), 0)::float8 \
         FROM assistant_requests WHERE done_at IS NULL",
    )
    .fetch_one(conn)
    .await
}

/// The user and assistant messages of `chat_id`'s current context up to `until_message`,
/// newest first, at most `limit`, as (role, content).
pub async fn context(
    conn: &mut PgConnection,
    chat_id: i64,
    until_message: i64,
    limit: i64,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT role, content FROM messages \
         WHERE chat_id = $1 AND id <= $2 AND role IN ('user', 'assistant') \
           AND id > COALESCE((SELECT since_message FROM assistant_contexts \
                              WHERE chat_id = $1), 0) \
         ORDER BY id DESC LIMIT $3",
    )
    .bind(chat_id)
    .bind(until_message)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Counts a failed attempt; the question is tried again after `retry_in_ms`.
pub async fn retry_later(
    conn: &mut PgConnection,
    id: i64,
    retry_in_ms: i64,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE assistant_requests SET attempts = attempts + 1, error = $3, \
            next_attempt_at = now() + make_interval(secs => $2::float8 / 1000) \
         WHERE id = $1",
    )
    .bind(id)
    .bind(retry_in_ms)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks a pending question done (`answered` or `failed`), in the transaction that queues
/// its answer; false when it was done already (its answer must not be queued twice).
pub async fn finish_request(
    conn: &mut PgConnection,
    id: i64,
    outcome: &str,
    error: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE assistant_requests SET done_at = now(), outcome = $2, error = COALESCE($3, error) \
         WHERE id = $1 AND done_at IS NULL",
    )
    .bind(id)
    .bind(outcome)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}
