//! Bot behaviour: what a hosted bot does with each update.
//!
//! [`handler`] is the dispatcher's single endpoint. For each update it:
//! 1. takes a slot of the bot's handler concurrency;
//! 2. opens one transaction on the bot database and claims the update's inbox row (an update
//!    already processed — a replay or a re-delivery — is skipped);
//! 3. runs the core module (users, history, commands, menus, admin stats);
//! 4. marks the row processed and commits: the handler's effects and the mark are atomic.
//!
//! A panic or a poison error marks that one update poisoned and the bot goes on; a transient
//! failure (database, network) ends the bot run so the supervisor restarts it with backoff
//! and the update is replayed; a 401 ends it as fatal.

pub mod core;

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use teloxide::Bot;
use teloxide::dispatching::{DpHandlerDescription, UpdateHandler};
use teloxide::dptree;
use teloxide::types::{Me, Update};

use crate::botdb::store;
use crate::runtime::inbox::{panic_message, report_failure};
use crate::runtime::{BotContext, BotFailure};

/// Why handling one update failed.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// This update can never be handled; keep it poisoned with the reason.
    #[error("{0}")]
    Poison(String),
    /// Retrying later may work (database or network trouble).
    #[error("{0}")]
    Transient(String),
    /// The token was revoked.
    #[error("Telegram rejected the token")]
    Unauthorized,
}

impl From<sqlx::Error> for HandleError {
    fn from(e: sqlx::Error) -> Self {
        HandleError::Transient(format!("bot database error: {e}"))
    }
}

impl From<crate::botdb::budget::BudgetError> for HandleError {
    fn from(e: crate::botdb::budget::BudgetError) -> Self {
        HandleError::Transient(crate::mask::error_line(&e))
    }
}

/// The dispatcher's handler tree: one endpoint for every update.
pub fn handler() -> UpdateHandler<Infallible> {
    let endpoint: dptree::Handler<'static, Result<(), Infallible>, DpHandlerDescription> =
        dptree::endpoint(handle);
    endpoint
}

async fn handle(bot: Bot, me: Me, update: Update, ctx: Arc<BotContext>) -> Result<(), Infallible> {
    let _permit = ctx.concurrency.acquire().await;
    let update_id = i64::from(update.id.0);
    let outcome = AssertUnwindSafe(process(&bot, &me, &update, &ctx))
        .catch_unwind()
        .await;
    let poison = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(HandleError::Poison(reason))) => Some(reason),
        Ok(Err(HandleError::Unauthorized)) => {
            report_failure(&ctx.failure, &ctx.stop, BotFailure::Unauthorized);
            None
        }
        Ok(Err(HandleError::Transient(reason))) => {
            tracing::warn!(bot_id = ctx.bot_id, update_id, error = %reason, "update failed; the bot restarts and replays it");
            report_failure(&ctx.failure, &ctx.stop, BotFailure::Transient(reason));
            None
        }
        Err(panic) => Some(format!("handler panicked: {}", panic_message(&panic))),
    };
    if let Some(reason) = poison {
        tracing::error!(bot_id = ctx.bot_id, update_id, error = %reason, "update poisoned");
        let marked = async {
            let mut conn = ctx.db.acquire().await?;
            store::mark_poisoned(&mut conn, ctx.telegram_id, update_id, &reason).await?;
            Ok::<(), HandleError>(())
        }
        .await;
        if let Err(e) = marked {
            report_failure(
                &ctx.failure,
                &ctx.stop,
                BotFailure::Transient(e.to_string()),
            );
        }
    }
    Ok(())
}

async fn process(bot: &Bot, me: &Me, update: &Update, ctx: &BotContext) -> Result<(), HandleError> {
    let update_id = i64::from(update.id.0);
    let config = ctx.config.load();
    let mut conn = ctx.db.acquire().await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    if !store::claim_update(&mut tx, ctx.telegram_id, update_id).await? {
        return Ok(());
    }
    core::handle(bot, me, update, &config, &mut tx).await?;
    store::mark_processed(&mut tx, ctx.telegram_id, update_id).await?;
    tx.commit().await?;
    Ok(())
}
