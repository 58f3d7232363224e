//! The seam's own SQL: a unit of work whose modules only wrote, as one statement.
//!
//! When no module of a batch's chains read the bot database (a plain `/start`: history
//! records the message, core touches the user and queues the answer), the runtime runs the
//! chains first and then claims the batch and writes everything they deferred in one
//! data-modifying statement — one round trip and one commit instead of BEGIN, a claim, a
//! statement per write and COMMIT (docs/architecture.md, "One statement per batch"). Every
//! write of an update applies only if that update was claimed in the same statement.
//!
//! The sender does the same with the results it records together ([`finish_deferred`]):
//! when no module's `on_sent` step reads, the results and the bot's messages history keeps
//! are one statement.

use sqlx::PgConnection;

use super::core::store::TOUCH_CONFLICT;
use crate::botdb::store::{
    CLAIM_UPDATES, FINISH_OUTBOX, FinishedSends, InboxRow, StoreParams, offset_key, store_ctes,
};

/// The writes a batch's chains deferred, column by column; each row names its update.
#[derive(Debug, Default)]
pub struct Deferred {
    /// History messages, in the order they were made.
    pub messages: MessageColumns,
    /// Users who wrote.
    pub users: UserColumns,
    /// Outbox requests, in the order they were queued.
    pub requests: RequestColumns,
}

impl Deferred {
    /// Whether nothing was deferred.
    pub fn is_empty(&self) -> bool {
        self.messages.update.is_empty()
            && self.users.update.is_empty()
            && self.requests.update.is_empty()
    }
}

/// History rows, column by column.
#[derive(Debug, Default)]
pub struct MessageColumns {
    /// The update each row belongs to (a unit of work's rows; the sender's have none).
    pub update: Vec<i64>,
    /// Chat.
    pub chat: Vec<i64>,
    /// User.
    pub user: Vec<Option<i64>>,
    /// Role (`history::store::Role`).
    pub role: Vec<&'static str>,
    /// Content.
    pub content: Vec<String>,
}

/// Users rows, column by column.
#[derive(Debug, Default)]
pub struct UserColumns {
    /// The update each row belongs to.
    pub update: Vec<i64>,
    /// Telegram user id.
    pub user_id: Vec<i64>,
    /// Username without `@`.
    pub username: Vec<Option<String>>,
    /// First name.
    pub first_name: Vec<String>,
    /// Last name.
    pub last_name: Vec<Option<String>>,
    /// Language code.
    pub language_code: Vec<Option<String>>,
}

/// Outbox rows, column by column.
#[derive(Debug, Default)]
pub struct RequestColumns {
    /// The update each row belongs to.
    pub update: Vec<i64>,
    /// Lane.
    pub lane: Vec<i16>,
    /// Chat.
    pub chat: Vec<i64>,
    /// User.
    pub user: Vec<Option<i64>>,
    /// The module that queued it.
    pub origin: Vec<&'static str>,
    /// The request, as JSON text.
    pub request: Vec<String>,
}

/// Which updates the one statement claims.
#[derive(Debug, Clone, Copy)]
pub enum Claim<'a> {
    /// Updates in the inbox: those of these ids not processed yet.
    Stored(&'a [i64]),
    /// A batch just fetched, not stored yet: stored with its next offset, already processed
    /// (`botdb::store::store_ctes`); the new rows that are not poisoned are claimed. Nothing is
    /// written if an id looks like a restart of the ids ([`Applied::suspicious`]).
    Fresh {
        /// The batch's rows, poisoned ones included.
        rows: &'a [InboxRow],
        /// The offset that confirms the batch.
        next_offset: Option<i64>,
    },
}

/// What the one statement did.
#[derive(Debug)]
pub struct Applied {
    /// The updates it claimed (the others were processed before: their writes were dropped).
    pub claimed: Vec<i64>,
    /// The outbox ids of the requests of claimed updates, in the order they were queued.
    pub outbox_ids: Vec<i64>,
    /// [`Claim::Fresh`]: the ids stored anew, poisoned ones included (an id already stored is
    /// a re-delivery). [`Claim::Stored`]: the claimed ones.
    pub inserted: Vec<i64>,
    /// [`Claim::Fresh`]: an id looks like a restart of the ids, so nothing was written; the
    /// batch takes `botdb::store::store_batch`'s checked path.
    pub suspicious: bool,
}

/// Claims updates of Telegram bot `telegram_bot_id` as `claim` says and applies `writes` for
/// the claimed ones, in one statement (its own transaction).
pub async fn apply_deferred(
    conn: &mut PgConnection,
    telegram_bot_id: i64,
    claim: Claim<'_>,
    writes: &Deferred,
) -> Result<Applied, sqlx::Error> {
    // Parameters: $1 the bot, $2 the ids, $3–$19 the writes, $20–$24 (fresh) the batch.
    static STORED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        writes_sql(
            &format!("claimed AS ({CLAIM_UPDATES})"),
            "ARRAY(SELECT update_id FROM claimed), 0::bigint",
        )
    });
    static FRESH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let ctes = store_ctes(
            &StoreParams {
                ids: 2,
                chats: 20,
                payloads: 21,
                errors: 22,
                bot: 1,
                key: 23,
                next: 24,
            },
            "now()",
        );
        writes_sql(
            &format!("{ctes}, claimed AS (SELECT update_id FROM ins WHERE error IS NULL)"),
            "ARRAY(SELECT update_id FROM ins ORDER BY update_id), \
             (SELECT count(*) FROM suspicious)",
        )
    });
    let Deferred {
        messages: m,
        users: u,
        requests: r,
    } = writes;
    let (sql, ids, fresh) = match claim {
        Claim::Stored(ids) => (STORED.as_str(), ids.to_vec(), None),
        Claim::Fresh { rows, next_offset } => (
            FRESH.as_str(),
            rows.iter().map(|r| r.update_id).collect(),
            Some((rows, next_offset)),
        ),
    };
    let query = sqlx::query_as(sql)
        .bind(telegram_bot_id)
        .bind(ids)
        .bind(&m.update)
        .bind(&m.chat)
        .bind(&m.user)
        .bind(&m.role)
        .bind(&m.content)
        .bind(&u.update)
        .bind(&u.user_id)
        .bind(&u.username)
        .bind(&u.first_name)
        .bind(&u.last_name)
        .bind(&u.language_code)
        .bind(&r.update)
        .bind(&r.lane)
        .bind(&r.chat)
        .bind(&r.user)
        .bind(&r.origin)
        .bind(&r.request);
    let query = match fresh {
        None => query,
        Some((rows, next_offset)) => query
            .bind(rows.iter().map(|r| r.chat_id).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.payload.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.error.as_deref()).collect::<Vec<_>>())
            .bind(offset_key(telegram_bot_id))
            .bind(next_offset),
    };
    let (claimed, outbox_ids, inserted, suspicious): (Vec<i64>, Vec<i64>, Vec<i64>, i64) =
        query.fetch_one(conn).await?;
    Ok(Applied {
        claimed,
        outbox_ids,
        inserted,
        suspicious: suspicious > 0,
    })
}

/// The writes of [`apply_deferred`] after the CTEs `claims` (which define `claimed`), and a
/// final SELECT of the claimed ids, the outbox ids and `tail`.
fn writes_sql(claims: &str, tail: &str) -> String {
    format!(
        "WITH {claims}, \
             m AS ( \
                INSERT INTO messages (chat_id, user_id, role, content) \
                SELECT x.c, x.u, x.r, x.t \
                FROM unnest($3::bigint[], $4::bigint[], $5::bigint[], $6::text[], $7::text[]) \
                     WITH ORDINALITY AS x(up, c, u, r, t, n) \
                WHERE x.up IN (SELECT update_id FROM claimed) ORDER BY x.n), \
             us AS ( \
                INSERT INTO users (user_id, username, first_name, last_name, language_code) \
                SELECT DISTINCT ON (x.id) x.id, x.un, x.fn, x.ln, x.lc \
                FROM unnest($8::bigint[], $9::bigint[], $10::text[], $11::text[], \
                            $12::text[], $13::text[]) \
                     WITH ORDINALITY AS x(up, id, un, fn, ln, lc, n) \
                WHERE x.up IN (SELECT update_id FROM claimed) ORDER BY x.id, x.n DESC \
                {conflict}), \
             o AS ( \
                INSERT INTO outbox (lane, chat_id, user_id, origin, request) \
                SELECT x.lane, x.chat, x.usr, x.origin, x.request::jsonb \
                FROM unnest($14::bigint[], $15::smallint[], $16::bigint[], $17::bigint[], \
                            $18::text[], $19::text[]) \
                     WITH ORDINALITY AS x(up, lane, chat, usr, origin, request, n) \
                WHERE x.up IN (SELECT update_id FROM claimed) ORDER BY x.n \
                RETURNING id) \
             SELECT ARRAY(SELECT update_id FROM claimed), ARRAY(SELECT id FROM o ORDER BY id), \
                    {tail}",
        conflict = *TOUCH_CONFLICT
    )
}

/// Records the sender's results `done` and appends the history rows its modules deferred
/// (`messages`, without updates), in one statement (its own transaction).
pub async fn finish_deferred(
    conn: &mut PgConnection,
    done: &FinishedSends,
    messages: &MessageColumns,
) -> Result<(), sqlx::Error> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH done AS ({FINISH_OUTBOX}) \
             INSERT INTO messages (chat_id, user_id, role, content) \
             SELECT x.c, x.u, x.r, x.t \
             FROM unnest($5::bigint[], $6::bigint[], $7::text[], $8::text[]) \
                  WITH ORDINALITY AS x(c, u, r, t, n) \
             ORDER BY x.n"
        )
    });
    done.bind(sqlx::query(SQL.as_str()))
        .bind(&messages.chat)
        .bind(&messages.user)
        .bind(&messages.role)
        .bind(&messages.content)
        .execute(conn)
        .await?;
    Ok(())
}
