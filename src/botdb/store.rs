//! The bot database's own SQL: the inbox and offset of the durable update pipeline, and the
//! outbox its sender delivers.
//!
//! Each module keeps the SQL of its tables in its own `store.rs` (`modules::core::store` for
//! users, `modules::history::store` for messages).

use sqlx::PgConnection;

/// Key of the next getUpdates offset of Telegram bot `telegram_bot_id` in `bot_state`.
pub fn offset_key(telegram_bot_id: i64) -> String {
    format!("offset:{telegram_bot_id}")
}

/// The parameters of [`store_ctes`], by number.
pub struct StoreParams {
    /// `bigint[]`: the update ids.
    pub ids: u8,
    /// `bigint[]`: their chats.
    pub chats: u8,
    /// `text[]`: their payloads.
    pub payloads: u8,
    /// `text[]`: their errors (poisoned when set).
    pub errors: u8,
    /// `bigint`: the Telegram bot id.
    pub bot: u8,
    /// `text`: the offset's key ([`offset_key`]).
    pub key: u8,
    /// `bigint` or NULL: the next offset.
    pub next: u8,
}

/// The common case of [`store_batch`] as the CTEs `u`, `suspicious`, `ins` (returning
/// `update_id, error` of the rows inserted) and `off`, without the `WITH`: the batch and its
/// next offset are written only if no id looks like a restart of the ids (`suspicious` is
/// empty). `processed` is the inserted rows' `processed_at`. Shared with the intake's
/// statement that also processes the batch (`modules::store::apply_deferred`).
pub fn store_ctes(p: &StoreParams, processed: &str) -> String {
    let StoreParams {
        ids,
        chats,
        payloads,
        errors,
        bot,
        key,
        next,
    } = p;
    format!(
        "u AS (SELECT * FROM UNNEST(${ids}::bigint[], ${chats}::bigint[], ${payloads}::text[], \
                                    ${errors}::text[]) AS u(id, chat, payload, error)), \
         suspicious AS ( \
            SELECT u.id FROM u LEFT JOIN inbox i \
                ON i.telegram_bot_id = ${bot} AND i.update_id = u.id \
            WHERE u.id >= 1 AND CASE WHEN i.update_id IS NOT NULL \
                  THEN i.payload <> u.payload::jsonb \
                  ELSE u.id < (SELECT value FROM bot_state WHERE key = ${key}) END), \
         ins AS ( \
            INSERT INTO inbox (telegram_bot_id, update_id, chat_id, payload, error, \
                               processed_at) \
            SELECT ${bot}, u.id, u.chat, u.payload::jsonb, u.error, {processed} \
            FROM u WHERE NOT EXISTS (SELECT 1 FROM suspicious) \
            ON CONFLICT (telegram_bot_id, update_id) DO NOTHING RETURNING update_id, error), \
         off AS ( \
            INSERT INTO bot_state (key, value) \
            SELECT ${key}, ${next} WHERE ${next} IS NOT NULL \
                AND NOT EXISTS (SELECT 1 FROM suspicious) \
            ON CONFLICT (key) DO UPDATE SET \
            value = GREATEST(bot_state.value, EXCLUDED.value), updated_at = now() \
            WHERE bot_state.value < EXCLUDED.value)"
    )
}

/// One update to store: its id, chat (when parsed), payload, and the error if poisoned.
#[derive(Debug, Clone)]
pub struct InboxRow {
    /// Telegram's update_id.
    pub update_id: i64,
    /// The chat, when the update parsed and has one.
    pub chat_id: Option<i64>,
    /// The update as Telegram sent it, as JSON text PostgreSQL's `jsonb` accepts: the element
    /// itself, or — when it is not valid JSON for `jsonb` (a lone surrogate, `\u0000`, not
    /// UTF-8, truncated) — a JSON string holding its exact text.
    pub payload: String,
    /// Why it is poisoned (could not be parsed), if it is.
    pub error: Option<String>,
}

/// The stored next offset, if any batch was ever stored.
pub async fn load_offset(
    conn: &mut PgConnection,
    telegram_bot_id: i64,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT value FROM bot_state WHERE key = $1")
        .bind(offset_key(telegram_bot_id))
        .fetch_optional(conn)
        .await
}

/// What [`store_batch`] did with a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// The batch is stored; `inserted` are the ids that were new (an id already stored with
    /// the same payload is a re-delivery and skipped, so it is never queued twice).
    Stored {
        /// The ids inserted, to be dispatched.
        inserted: Vec<i64>,
        /// Set when the batch showed that Telegram restarted the update ids lower.
        restart: Option<IdRestart>,
    },
    /// The ids restarted, but inbox rows from before the restart that would collide with the
    /// new ids are still unprocessed: nothing was stored; try again once they are processed.
    Blocked(IdRestart),
}

/// Telegram restarted the bot's update ids below the stored offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdRestart {
    /// The offset stored before the restart (`None`: no offset was stored yet).
    pub stored_offset: Option<i64>,
    /// The lowest id of the batch that showed the restart.
    pub first_new_id: i64,
    /// How many old inbox rows were parked (moved to `inbox_parked`).
    pub parked: u64,
    /// Old rows still unprocessed among those to park (only in [`Stored::Blocked`]).
    pub unprocessed: i64,
}

/// Stores a fetched batch and the next offset in one transaction.
///
/// It also detects a restart of the update ids (Telegram picks a new, possibly lower, id after
/// a week without updates; a fresh sandbox starts at 1): an id of the batch that is stored
/// already with a different payload, or that lies below the stored offset without being
/// stored, is a new update. Then the old rows from the lowest such id up are parked in
/// `inbox_parked` (so they cannot make new updates look like duplicates) and the offset is
/// set to `next_offset` even though it is lower. Ids below 1 never count (no offset can be
/// built from them). `next_offset: None` leaves the stored offset as it is.
///
/// The common case — no id stored with another payload, none below the stored offset — is
/// one statement (one round trip, no explicit transaction, no row lock on the offset): the
/// intake pays it for every getUpdates answer. Only a batch that looks like a restart takes
/// the checked path with its locks and parking.
pub async fn store_batch(
    conn: &mut PgConnection,
    telegram_bot_id: i64,
    rows: &[InboxRow],
    next_offset: Option<i64>,
) -> Result<Stored, sqlx::Error> {
    let ids: Vec<i64> = rows.iter().map(|r| r.update_id).collect();
    let chats: Vec<Option<i64>> = rows.iter().map(|r| r.chat_id).collect();
    let payloads: Vec<&str> = rows.iter().map(|r| r.payload.as_str()).collect();
    let errors: Vec<Option<&str>> = rows.iter().map(|r| r.error.as_deref()).collect();
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let ctes = store_ctes(
            &StoreParams {
                ids: 1,
                chats: 2,
                payloads: 3,
                errors: 4,
                bot: 5,
                key: 6,
                next: 7,
            },
            "CASE WHEN u.error IS NULL THEN NULL ELSE now() END",
        );
        format!(
            "WITH {ctes} SELECT (SELECT count(*) FROM suspicious), \
                                ARRAY(SELECT update_id FROM ins ORDER BY update_id)"
        )
    });
    let (suspicious, inserted): (i64, Vec<i64>) = sqlx::query_as(SQL.as_str())
        .bind(&ids)
        .bind(&chats)
        .bind(&payloads)
        .bind(&errors)
        .bind(telegram_bot_id)
        .bind(offset_key(telegram_bot_id))
        .bind(next_offset)
        .fetch_one(&mut *conn)
        .await?;
    if suspicious == 0 {
        return Ok(Stored::Stored {
            inserted,
            restart: None,
        });
    }
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let stored_offset: Option<i64> =
        sqlx::query_scalar("SELECT value FROM bot_state WHERE key = $1 FOR UPDATE")
            .bind(offset_key(telegram_bot_id))
            .fetch_optional(&mut *tx)
            .await?;
    let known: Vec<(i64, bool)> = sqlx::query_as(
        "SELECT i.update_id, i.payload = u.payload::jsonb \
         FROM inbox i JOIN UNNEST($2::bigint[], $3::text[]) AS u(id, payload) \
              ON i.update_id = u.id \
         WHERE i.telegram_bot_id = $1",
    )
    .bind(telegram_bot_id)
    .bind(&ids)
    .bind(&payloads)
    .fetch_all(&mut *tx)
    .await?;
    let first_new_id = ids
        .iter()
        .copied()
        .filter(|&id| id >= 1)
        .filter(|id| match known.iter().find(|(k, _)| k == id) {
            Some((_, same)) => !same,
            None => stored_offset.is_some_and(|o| *id < o),
        })
        .min();
    let mut restart = None;
    if let Some(first_new_id) = first_new_id {
        let unprocessed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM inbox WHERE telegram_bot_id = $1 AND update_id >= $2 \
             AND processed_at IS NULL",
        )
        .bind(telegram_bot_id)
        .bind(first_new_id)
        .fetch_one(&mut *tx)
        .await?;
        let mut found = IdRestart {
            stored_offset,
            first_new_id,
            parked: 0,
            unprocessed,
        };
        if unprocessed > 0 {
            return Ok(Stored::Blocked(found));
        }
        found.parked = sqlx::query(
            "WITH moved AS (DELETE FROM inbox WHERE telegram_bot_id = $1 AND update_id >= $2 \
                 RETURNING telegram_bot_id, update_id, chat_id, payload, received_at, \
                           processed_at, error) \
             INSERT INTO inbox_parked (telegram_bot_id, update_id, chat_id, payload, \
                                       received_at, processed_at, error) \
             SELECT * FROM moved",
        )
        .bind(telegram_bot_id)
        .bind(first_new_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        restart = Some(found);
    }
    let inserted: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO inbox (telegram_bot_id, update_id, chat_id, payload, error, processed_at) \
         SELECT $5, u.id, u.chat, u.payload::jsonb, u.error, \
                CASE WHEN u.error IS NULL THEN NULL ELSE now() END \
         FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[]) \
              AS u(id, chat, payload, error) \
         ON CONFLICT (telegram_bot_id, update_id) DO NOTHING RETURNING update_id",
    )
    .bind(&ids)
    .bind(&chats)
    .bind(&payloads)
    .bind(&errors)
    .bind(telegram_bot_id)
    .fetch_all(&mut *tx)
    .await?;
    if let Some(next_offset) = next_offset {
        // After a restart the offset goes down; otherwise it only ever goes up.
        sqlx::query(
            "INSERT INTO bot_state (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET \
             value = CASE WHEN $3 THEN EXCLUDED.value \
                          ELSE GREATEST(bot_state.value, EXCLUDED.value) END, \
             updated_at = now()",
        )
        .bind(offset_key(telegram_bot_id))
        .bind(next_offset)
        .bind(restart.is_some())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Stored::Stored { inserted, restart })
}

/// Unprocessed updates with ids above `after`, oldest first, at most `limit`.
pub async fn pending_updates(
    conn: &mut PgConnection,
    telegram_bot_id: i64,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, serde_json::Value)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT update_id, payload FROM inbox \
         WHERE telegram_bot_id = $3 AND processed_at IS NULL AND update_id > $1 \
         ORDER BY update_id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .bind(telegram_bot_id)
    .fetch_all(conn)
    .await
}

/// Claims an update for this transaction in one statement: locks its inbox row and marks it
/// processed — a mark the transaction's rollback undoes, so the effects and the mark stay
/// atomic. Returns whether it still needed processing (false when it was processed already,
/// or is not in the inbox); a concurrent claim waits for this transaction and then finds it
/// processed.
pub async fn claim_update(
    conn: &mut PgConnection,
    telegram_bot_id: i64,
    update_id: i64,
) -> Result<bool, sqlx::Error> {
    let claimed: Option<i64> = sqlx::query_scalar(
        "UPDATE inbox SET processed_at = now() \
         WHERE telegram_bot_id = $1 AND update_id = $2 AND processed_at IS NULL \
         RETURNING update_id",
    )
    .bind(telegram_bot_id)
    .bind(update_id)
    .fetch_optional(conn)
    .await?;
    Ok(claimed.is_some())
}

/// Claims updates `$2` of Telegram bot `$1`: marks the unprocessed ones processed (undone by
/// a rollback) and returns their ids. Also the first step of `modules::store::apply_deferred`.
pub const CLAIM_UPDATES: &str = "UPDATE inbox SET processed_at = now() \
     WHERE telegram_bot_id = $1 AND update_id = ANY($2) AND processed_at IS NULL \
     RETURNING update_id";

/// Claims several updates at once (a batch's group commit): marks those not processed yet
/// as processed and returns their ids. Undone if the transaction rolls back.
pub async fn claim_updates(
    conn: &mut PgConnection,
    telegram_bot_id: i64,
    update_ids: &[i64],
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(CLAIM_UPDATES)
        .bind(telegram_bot_id)
        .bind(update_ids)
        .fetch_all(conn)
        .await
}

/// The stored payload of an update, as Telegram sent it (for what teloxide could not read).
pub async fn inbox_payload(
    conn: &mut PgConnection,
    telegram_bot_id: i64,
    update_id: i64,
) -> Result<Option<serde_json::Value>, sqlx::Error> {
    sqlx::query_scalar("SELECT payload FROM inbox WHERE telegram_bot_id = $1 AND update_id = $2")
        .bind(telegram_bot_id)
        .bind(update_id)
        .fetch_optional(conn)
        .await
}

/// Marks an update poisoned: processed, with the error kept for inspection.
pub async fn mark_poisoned(
    conn: &mut PgConnection,
    telegram_bot_id: i64,
    update_id: i64,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE inbox SET processed_at = now(), error = $3 \
         WHERE telegram_bot_id = $1 AND update_id = $2 AND processed_at IS NULL",
    )
    .bind(telegram_bot_id)
    .bind(update_id)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes processed, unpoisoned updates older than `days` (parked ones included); returns
/// how many.
pub async fn prune_inbox(conn: &mut PgConnection, days: i64) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "DELETE FROM inbox WHERE processed_at < now() - make_interval(days => $1::int) \
         AND error IS NULL",
    )
    .bind(days)
    .execute(&mut *conn)
    .await?;
    let parked = sqlx::query(
        "DELETE FROM inbox_parked WHERE parked_at < now() - make_interval(days => $1::int) \
         AND error IS NULL",
    )
    .bind(days)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() + parked.rows_affected())
}

/// Counts of the inbox, for tests and status: (total, processed, poisoned).
pub async fn inbox_counts(conn: &mut PgConnection) -> Result<(i64, i64, i64), sqlx::Error> {
    sqlx::query_as("SELECT count(*), count(processed_at), count(error) FROM inbox")
        .fetch_one(conn)
        .await
}

/// A request waiting in the outbox.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    /// Its id (the order of a chat's requests).
    pub id: i64,
    /// Its lane (0 replies, 1 scheduled, 2 bulk).
    pub lane: i16,
    /// The chat.
    pub chat_id: i64,
    /// The user it is for, when known.
    pub user_id: Option<i64>,
    /// The module that queued it.
    pub origin: String,
    /// The Bot API call as JSON.
    pub request: sqlx::types::Json<serde_json::Value>,
    /// Failed attempts so far.
    pub attempts: i32,
}

/// Queues a request (inside the caller's transaction); returns its id.
pub async fn enqueue(
    conn: &mut PgConnection,
    lane: i16,
    chat_id: i64,
    user_id: Option<i64>,
    origin: &str,
    request: &serde_json::Value,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO outbox (lane, chat_id, user_id, origin, request) \
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(lane)
    .bind(chat_id)
    .bind(user_id)
    .bind(origin)
    .bind(sqlx::types::Json(request))
    .fetch_one(conn)
    .await
}

/// The oldest pending requests, lane by lane, at most `limit`.
pub async fn pending_outbox(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, lane, chat_id, user_id, origin, request, attempts FROM outbox \
         WHERE done_at IS NULL ORDER BY lane, id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Results of sends, to be recorded together ([`finish_outbox`]).
#[derive(Debug, Default)]
pub struct FinishedSends {
    ids: Vec<i64>,
    outcomes: Vec<&'static str>,
    message_ids: Vec<Option<i64>>,
    errors: Vec<Option<String>>,
}

impl FinishedSends {
    /// Room for `n` results.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            ids: Vec::with_capacity(n),
            outcomes: Vec::with_capacity(n),
            message_ids: Vec::with_capacity(n),
            errors: Vec::with_capacity(n),
        }
    }

    /// Adds the result of outbox row `id`.
    pub fn push(
        &mut self,
        id: i64,
        outcome: &'static str,
        message_id: Option<i64>,
        error: Option<String>,
    ) {
        self.ids.push(id);
        self.outcomes.push(outcome);
        self.message_ids.push(message_id);
        self.errors.push(error);
    }
}

/// Marks requests `$1` done with their outcomes `$2`, message ids `$3` and errors `$4`. Also
/// the first step of `modules::store::finish_deferred`.
pub const FINISH_OUTBOX: &str = "UPDATE outbox o SET done_at = now(), outcome = v.outcome, \
     message_id = v.message_id, error = v.error, attempts = o.attempts + 1 \
     FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[]) \
          AS v(id, outcome, message_id, error) \
     WHERE o.id = v.id";

impl FinishedSends {
    /// Binds the results as `$1`–`$4` of [`FINISH_OUTBOX`] (the next four of `query`).
    pub fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(&self.ids)
            .bind(&self.outcomes)
            .bind(&self.message_ids)
            .bind(&self.errors)
    }
}

/// Marks requests done with their outcomes, message ids and errors, in one statement.
pub async fn finish_outbox(
    conn: &mut PgConnection,
    done: &FinishedSends,
) -> Result<(), sqlx::Error> {
    done.bind(sqlx::query(FINISH_OUTBOX)).execute(conn).await?;
    Ok(())
}

/// Counts a failed attempt of a request that stays pending, keeping the error.
pub async fn retry_outbox(
    conn: &mut PgConnection,
    id: i64,
    error: &str,
) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE outbox SET attempts = attempts + 1, error = $2 WHERE id = $1 RETURNING attempts",
    )
    .bind(id)
    .bind(error)
    .fetch_one(conn)
    .await
}

/// The result of a request: (outcome, message id), once it is done.
pub async fn outbox_result(
    conn: &mut PgConnection,
    id: i64,
) -> Result<Option<(String, Option<i64>)>, sqlx::Error> {
    let row: Option<(Option<String>, Option<i64>)> = sqlx::query_as(
        "SELECT outcome, message_id FROM outbox WHERE id = $1 AND done_at IS NOT NULL",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(o, m)| (o.unwrap_or_default(), m)))
}

/// Deletes requests done more than `days` ago; returns how many.
pub async fn prune_outbox(conn: &mut PgConnection, days: i64) -> Result<u64, sqlx::Error> {
    let r =
        sqlx::query("DELETE FROM outbox WHERE done_at < now() - make_interval(days => $1::int)")
            .bind(days)
            .execute(conn)
            .await?;
    Ok(r.rows_affected())
}

/// The server's `max_connections` and `superuser_reserved_connections`.
pub async fn server_connection_limits(conn: &mut PgConnection) -> Result<(u32, u32), sqlx::Error> {
    let (max, reserved): (i32, i32) = sqlx::query_as(
        "SELECT current_setting('max_connections')::int, \
                current_setting('superuser_reserved_connections')::int",
    )
    .fetch_one(conn)
    .await?;
    Ok((max.max(0) as u32, reserved.max(0) as u32))
}

/// The tables of a bot database that hold rows about a user: those with a `user_id` or
/// `chat_id` column (a private chat's id is the user's id), with the matching columns and
/// their `jsonb` columns (an update or a request names the user inside), by table name.
/// Found in the catalogue, so a module's new table is covered without a change here.
pub async fn user_tables(
    conn: &mut sqlx::PgConnection,
) -> Result<Vec<(String, Vec<String>, Vec<String>)>, sqlx::Error> {
    let rows: Vec<(String, Vec<String>, Vec<String>)> = sqlx::query_as(
        "SELECT table_name::text, \
                COALESCE(array_agg(column_name::text ORDER BY column_name) \
                    FILTER (WHERE column_name IN ('user_id', 'chat_id') \
                            AND data_type = 'bigint'), '{}'), \
                COALESCE(array_agg(column_name::text ORDER BY column_name) \
                    FILTER (WHERE data_type = 'jsonb'), '{}') \
         FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name NOT LIKE '\\_sqlx%' \
         GROUP BY table_name \
         HAVING bool_or(column_name IN ('user_id', 'chat_id') AND data_type = 'bigint') \
         ORDER BY table_name",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows)
}

/// The `WHERE` clause matching rows about user `$1` in a table with `ids` and `jsonb` columns.
fn about_user(ids: &[String], jsonb: &[String]) -> String {
    let mut terms: Vec<String> = ids
        .iter()
        .map(|c| format!("{} = $1", quote_ident(c)))
        .collect();
    for c in jsonb {
        terms.push(format!(
            "jsonb_path_exists({}, '$.** ? (@.from.id == $u || @.chat.id == $u || @.user.id == $u)', \
             jsonb_build_object('u', $1))",
            quote_ident(c)
        ));
    }
    terms.join(" OR ")
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Every row about user `user_id`, as JSON, by table.
pub async fn user_rows(
    conn: &mut sqlx::PgConnection,
    user_id: i64,
) -> Result<Vec<(String, Vec<serde_json::Value>)>, sqlx::Error> {
    let mut out = Vec::new();
    for (table, ids, jsonb) in user_tables(conn).await? {
        let sql = format!(
            "SELECT to_jsonb(t) FROM {} t WHERE {}",
            quote_ident(&table),
            about_user(&ids, &jsonb)
        );
        let rows: Vec<serde_json::Value> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .fetch_all(&mut *conn)
            .await?;
        out.push((table, rows));
    }
    Ok(out)
}

/// Deletes every row about user `user_id` in one transaction; the count per table.
pub async fn erase_user(
    conn: &mut sqlx::PgConnection,
    user_id: i64,
) -> Result<Vec<(String, u64)>, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let mut out = Vec::new();
    for (table, ids, jsonb) in user_tables(&mut tx).await? {
        let sql = format!(
            "DELETE FROM {} WHERE {}",
            quote_ident(&table),
            about_user(&ids, &jsonb)
        );
        let r = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        out.push((table, r.rows_affected()));
    }
    tx.commit().await?;
    Ok(out)
}

// ---- Whole databases: archives and in-place restores (admin::archive) ----

/// Starts a read-only repeatable-read transaction on `conn` and exports its snapshot, so
/// `pg_dump --snapshot` and [`table_counts`] on the same connection see the same rows; the
/// transaction ends when the connection is closed.
pub async fn begin_exported_snapshot(conn: &mut PgConnection) -> Result<String, sqlx::Error> {
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *conn)
        .await?;
    sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut *conn)
        .await
}

/// The row count of every ordinary table outside the system schemas, as `schema.table`.
pub async fn table_counts(
    conn: &mut PgConnection,
) -> Result<std::collections::BTreeMap<String, i64>, sqlx::Error> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
           AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
         ORDER BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut counts = std::collections::BTreeMap::new();
    for (schema, table) in tables {
        let sql = format!(
            "SELECT count(*) FROM {}.{}",
            quote_ident(&schema),
            quote_ident(&table)
        );
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *conn)
            .await?;
        counts.insert(format!("{schema}.{table}"), n);
    }
    Ok(counts)
}

/// Whether database `name` exists on the server of `conn`, and its comment.
pub async fn database_comment(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<Option<String>>, sqlx::Error> {
    let row: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
    )
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|(c,)| c))
}

/// Sets (or with `None` removes) database `name`'s comment.
pub async fn set_database_comment(
    conn: &mut PgConnection,
    name: &str,
    comment: Option<&str>,
) -> Result<(), sqlx::Error> {
    let value = match comment {
        Some(c) => format!("'{}'", c.replace('\'', "''")),
        None => "NULL".to_owned(),
    };
    let sql = format!("COMMENT ON DATABASE {} IS {value}", quote_ident(name));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Ends every other session connected to database `name` (waiting up to 5 s for each).
pub async fn terminate_sessions(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Renames database `from` to `to`; fails with SQLSTATE 55006 while sessions use `from`.
pub async fn rename_database(
    conn: &mut PgConnection,
    from: &str,
    to: &str,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "ALTER DATABASE {} RENAME TO {}",
        quote_ident(from),
        quote_ident(to)
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A bot's traffic over the last hour, as its own database records it.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Traffic {
    /// Updates handled (or set aside as poisoned) in the last hour.
    pub updates_last_hour: i64,
    /// Messages Telegram accepted from the bot in the last hour.
    pub sent_last_hour: i64,
    /// Messages waiting in the outbox now.
    pub outbox_pending: i64,
}

/// The bot's traffic over the last hour (inbox and outbox, by their time indexes).
pub async fn traffic(conn: &mut PgConnection) -> Result<Traffic, sqlx::Error> {
    sqlx::query_as(
        "SELECT \
           (SELECT count(*) FROM inbox WHERE processed_at > now() - interval '1 hour') \
             AS updates_last_hour, \
           (SELECT count(*) FROM outbox WHERE done_at > now() - interval '1 hour' \
              AND outcome = 'sent') AS sent_last_hour, \
           (SELECT count(*) FROM outbox WHERE done_at IS NULL) AS outbox_pending",
    )
    .fetch_one(conn)
    .await
}
