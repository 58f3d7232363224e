//! Bot states, and the writer of `bot_status` rows.
//!
//! Only the instance that owns a bot writes its row: each slot's reporter has its own flag,
//! switched off when the instance fences (its control connection, and so its lock, is gone)
//! or finds another instance holding the bot; then it writes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::PgPool;

use crate::panel::store::{self, StatusUpdate};

/// What a bot is doing, as `bot_status.state` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BotState {
    /// Provisioning its database or checking its token.
    Starting,
    /// Polling and handling updates.
    Running,
    /// Still running, but fetching updates keeps failing (Telegram or the bot's database); the
    /// detail names the cause and since when.
    Degraded,
    /// Waiting to retry after a failure.
    Backoff,
    /// Waiting for a panel change (database, manifest or token problem).
    Failed,
    /// Telegram rejected the token; waiting for a new one.
    AuthFailed,
    /// Failing too often; retried after a cool-down or on any panel change.
    Quarantined,
    /// Not running (disabled, removed, or the daemon stopped).
    Stopped,
}

impl BotState {
    /// The state's name in `bot_status.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            BotState::Starting => "starting",
            BotState::Running => "running",
            BotState::Degraded => "degraded",
            BotState::Backoff => "backoff",
            BotState::Failed => "failed",
            BotState::AuthFailed => "auth_failed",
            BotState::Quarantined => "quarantined",
            BotState::Stopped => "stopped",
        }
    }

    /// Whether the bot waits for a panel change (or a cool-down) before trying again.
    pub fn is_failed(self) -> bool {
        matches!(
            self,
            BotState::Failed | BotState::AuthFailed | BotState::Quarantined
        )
    }
}

impl std::fmt::Display for BotState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Writes a bot's status rows; failures to write are logged, never fatal.
#[derive(Clone)]
pub struct StatusReporter {
    panel: PgPool,
    instance: Arc<str>,
    bot_id: i64,
    writing: Arc<AtomicBool>,
}

impl StatusReporter {
    /// A reporter for `bot_id`; it writes only while `writing` is set (this instance owns
    /// the bot).
    pub fn new(panel: PgPool, instance: Arc<str>, bot_id: i64, writing: Arc<AtomicBool>) -> Self {
        Self {
            panel,
            instance,
            bot_id,
            writing,
        }
    }

    /// Writes the run's traffic over the latest interval, scaled to a minute.
    pub async fn traffic(&self, updates_per_min: i32, sent_per_min: i32) {
        if !self.writing.load(Ordering::Acquire) {
            return;
        }
        // Each write's query future is boxed: a slot awaits these writes for the bot's whole
        // life, and its task would otherwise be as large as the largest of them.
        let write = store::set_traffic(&self.panel, self.bot_id, updates_per_min, sent_per_min);
        if let Err(e) = Box::pin(write).await {
            tracing::warn!(bot_id = self.bot_id, error = %e, "cannot write the bot's traffic");
        }
    }

    /// Writes what `getWebhookInfo` said last (a new run's first status clears it).
    pub async fn webhook(&self, w: &crate::runtime::inbox::webhook::WebhookState) {
        if !self.writing.load(Ordering::Acquire) {
            return;
        }
        let update = store::WebhookStatusUpdate {
            bot_id: self.bot_id,
            url: &w.url,
            pending_update_count: w.pending_update_count,
            last_error: w.last_error.as_ref().map(|(at, e)| (*at, e.as_str())),
        };
        if let Err(e) = Box::pin(store::set_webhook_status(&self.panel, &update)).await {
            tracing::warn!(bot_id = self.bot_id, error = %e, "cannot write the webhook status");
        }
    }

    /// Writes the state, a detail, and (when known) the Telegram username.
    pub async fn set(&self, state: BotState, detail: &str, username: Option<&str>, started: bool) {
        if !self.writing.load(Ordering::Acquire) {
            tracing::debug!(
                bot_id = self.bot_id,
                state = state.as_str(),
                "not the owner any more; bot status not written"
            );
            return;
        }
        let update = StatusUpdate {
            bot_id: self.bot_id,
            instance: &self.instance,
            state: state.as_str(),
            detail,
            telegram_username: username,
            started,
        };
        match Box::pin(store::upsert_status(&self.panel, &update)).await {
            Ok(()) if detail.is_empty() => {
                tracing::info!(bot_id = self.bot_id, state = state.as_str(), "bot status")
            }
            Ok(()) => {
                tracing::info!(
                    bot_id = self.bot_id,
                    state = state.as_str(),
                    detail,
                    "bot status"
                )
            }
            Err(e) => {
                tracing::warn!(bot_id = self.bot_id, state = state.as_str(), error = %e, "cannot write bot status")
            }
        }
    }
}
