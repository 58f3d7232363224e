//! A chat's message history, read from the bot's own database.

use sqlx::{ConnectOptions, Connection};

use super::{Admin, AdminError};
use crate::modules::history::store::{self, MessageRecord};
use crate::panel::store as panel;

impl Admin {
    /// The latest `limit` messages of `chat` in bot `id`'s database, oldest first.
    pub async fn chat_history(
        &self,
        id: i64,
        chat: i64,
        limit: i64,
    ) -> Result<Vec<MessageRecord>, AdminError> {
        let bot = panel::get_bot(&self.pool, id).await?;
        let target = self.bot_target(&bot)?;
        if !target.exists().await? {
            return Err(AdminError::NoDatabase {
                id,
                database: target.database,
            });
        }
        let mut conn =
            target
                .options
                .connect()
                .await
                .map_err(|source| crate::botdb::BotDbError::Connect {
                    url: target.describe(),
                    database: target.database.clone(),
                    source,
                })?;
        let messages = store::chat_history(&mut conn, chat, limit).await;
        let _ = conn.close().await;
        messages.map_err(AdminError::BotDbQuery)
    }
}
