//! What a bot's own database holds about its users: the users and each chat's history.

use super::{Admin, AdminError};
use crate::modules::core::store::{self as users, UserRecord};
use crate::modules::history::store::{self, MessageRecord};

impl Admin {
    /// The latest `limit` messages of `chat` in bot `id`'s database, oldest first.
    pub async fn chat_history(
        &self,
        id: i64,
        chat: i64,
        limit: i64,
    ) -> Result<Vec<MessageRecord>, AdminError> {
        let (mut conn, _) = self.bot_conn(id).await?;
        let messages = store::chat_history(&mut conn, chat, limit).await;
        conn.close().await;
        messages.map_err(AdminError::BotDbQuery)
    }

    /// Bot `id`'s users, the latest seen first (a page of `limit` after `offset`), only those
    /// matching `search` (a part of the name, username or id) when given.
    pub async fn list_users(
        &self,
        id: i64,
        search: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<UserRecord>, AdminError> {
        let (mut conn, _) = self.bot_conn(id).await?;
        let list = users::list_users(&mut conn, search, limit.clamp(1, 1000), offset.max(0)).await;
        conn.close().await;
        list.map_err(AdminError::BotDbQuery)
    }

    /// Bot `id`'s traffic over the last hour, from its own database.
    pub async fn traffic(&self, id: i64) -> Result<crate::botdb::store::Traffic, AdminError> {
        let (mut conn, _) = self.bot_conn(id).await?;
        let traffic = crate::botdb::store::traffic(&mut conn).await;
        conn.close().await;
        traffic.map_err(AdminError::BotDbQuery)
    }
}
