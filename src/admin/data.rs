//! A bot's data out and gone: erase a bot completely; export or erase everything about one
//! user in a bot's database.
//!
//! `bot erase` works in this order, so that a failure leaves nothing half-deleted and running
//! it again finishes the job: (1) the bot is disabled (the daemon stops it); (2) its database
//! is dropped (`WITH (FORCE)`; an absent one counts as done); (3) its panel row is deleted, and
//! with it its texts, secrets and status (`ON DELETE CASCADE`). Until (3) the bot is still
//! listed, disabled, so the operator sees what is left.
//!
//! Per user, the tables are found in the bot database's catalogue (every table with a
//! `user_id` or `chat_id` column; `jsonb` columns are searched for the user's id as `from`,
//! `chat` or `user`), so a module's own table is covered without a change here.

use serde::Serialize;

use super::bots::DatabaseFate;
use super::{Admin, AdminError};
use crate::botdb::store as botdb;
use crate::panel::{PanelError, store};

/// Rows removed per table by a user erase.
#[derive(Debug, Clone, Serialize)]
pub struct ErasedRows {
    /// The table.
    pub table: String,
    /// Rows deleted.
    pub rows: u64,
}

impl Admin {
    /// Erases bot `id`: disabled, its database dropped, then its panel rows deleted (see the
    /// module docs). Unconfirmed, the error says what would happen.
    pub async fn erase_bot(&self, id: i64, confirmed: bool) -> Result<DatabaseFate, AdminError> {
        let bot = store::get_bot(&self.pool, id).await?;
        let target = self.bot_target(&bot);
        if !confirmed {
            let database = match &target {
                Ok(t) => format!("drop its database {}", t.database),
                Err(_) => "leave its database (its override is invalid)".into(),
            };
            return Err(AdminError::NotConfirmed(format!(
                "this would erase bot {id} ({}): disable it, {database}, then delete it with its \
                 texts and secrets, for good; add --yes to confirm",
                bot.name
            )));
        }
        if bot.enabled {
            store::set_enabled(&self.pool, id, false).await?;
        }
        let fate = match target {
            Ok(target) => {
                if target.drop_database().await? {
                    DatabaseFate::Dropped(target.database)
                } else {
                    DatabaseFate::Missing(target.database)
                }
            }
            Err(_) => DatabaseFate::Unknown,
        };
        match store::remove_bot(&self.pool, id).await {
            Ok(_) | Err(PanelError::BotNotFound(_)) => Ok(fate),
            Err(e) => Err(e.into()),
        }
    }

    /// Everything about user `user_id` in bot `id`'s database, as `{table: [rows]}`.
    pub async fn export_user(
        &self,
        id: i64,
        user_id: i64,
    ) -> Result<serde_json::Map<String, serde_json::Value>, AdminError> {
        let mut conn = self.bot_conn(id).await?.0;
        let rows = botdb::user_rows(&mut conn, user_id).await;
        conn.close().await;
        Ok(rows
            .map_err(AdminError::BotDbQuery)?
            .into_iter()
            .map(|(table, rows)| (table, serde_json::Value::from(rows)))
            .collect())
    }

    /// Deletes every row about user `user_id` in bot `id`'s database, in one transaction;
    /// returns the count per table. Unconfirmed, the error says what would happen.
    pub async fn erase_user(
        &self,
        id: i64,
        user_id: i64,
        confirmed: bool,
    ) -> Result<Vec<ErasedRows>, AdminError> {
        if !confirmed {
            store::get_bot(&self.pool, id).await?;
            return Err(AdminError::NotConfirmed(format!(
                "this would delete every row about user {user_id} in bot {id}'s database, for \
                 good; add --yes to confirm"
            )));
        }
        let mut conn = self.bot_conn(id).await?.0;
        let erased = botdb::erase_user(&mut conn, user_id).await;
        conn.close().await;
        Ok(erased
            .map_err(AdminError::BotDbQuery)?
            .into_iter()
            .map(|(table, rows)| ErasedRows { table, rows })
            .collect())
    }
}
