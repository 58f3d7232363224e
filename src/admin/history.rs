//! A chat's message history, read from the bot's own database.

use sqlx::Connection;

use super::{Admin, AdminError};
use crate::modules::history::store::{self, MessageRecord};

impl Admin {
    /// The latest `limit` messages of `chat` in bot `id`'s database, oldest first.
    pub async fn chat_history(
        &self,
        id: i64,
        chat: i64,
        limit: i64,
    ) -> Result<Vec<MessageRecord>, AdminError> {
        let mut conn = self.bot_connection(id).await?;
        let messages = store::chat_history(&mut conn, chat, limit).await;
        let _ = conn.close().await;
        messages.map_err(AdminError::BotDbQuery)
    }
}
