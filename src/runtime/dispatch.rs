//! The unit of work: what happens to one update, start to finish.
//!
//! [`handler`] is the dispatcher's single endpoint. For each update it:
//! 1. takes a slot of the bot's handler concurrency;
//! 2. opens one transaction on the bot database and claims the update's inbox row — one
//!    statement that locks it and marks it processed, undone if the transaction rolls back (an
//!    update already processed — a replay or a re-delivery — is skipped);
//! 3. runs the module chain: every module enabled for the snapshot, in registry order, until
//!    one says [`Flow::Stop`]; answers are queued in the outbox, inside the transaction;
//! 4. commits: the modules' effects, their queued answers and the mark are atomic; then wakes
//!    the bot's sender ([`super::outbox`]), which delivers the
//!    answers and lets the modules observe the results ([`Module::on_sent`]), and the jobs of
//!    the modules that left them work (`UpdateCx::wake_job`: the assistant's model calls).
//!
//! No Telegram call happens while the transaction is open.
//!
//! A panic or a poison error marks that one update poisoned and the bot goes on; any other
//! failure (database, network after retries) is reported to the run, which ends so the
//! control plane restarts it with backoff and the update is replayed; a revoked token ends it
//! as fatal.
//!
//! [`Module::on_sent`]: crate::modules::Module::on_sent

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use teloxide::dispatching::{DpHandlerDescription, UpdateHandler};
use teloxide::dptree;
use teloxide::types::{Me, Update};

use super::BotContext;
use super::inbox::panic_message;
use crate::botdb::store;
use crate::modules::{Flow, ModuleError, UpdateCx};

/// The dispatcher's handler tree: one endpoint for every update.
pub fn handler() -> UpdateHandler<Infallible> {
    let endpoint: dptree::Handler<'static, Result<(), Infallible>, DpHandlerDescription> =
        dptree::endpoint(handle);
    endpoint
}

async fn handle(me: Me, update: Update, ctx: Arc<BotContext>) -> Result<(), Infallible> {
    let _permit = ctx.concurrency.acquire().await;
    let bot_id = ctx.bot_id;
    let update_id = i64::from(update.id.0);
    let outcome = AssertUnwindSafe(process(&me, &update, &ctx))
        .catch_unwind()
        .await;
    let poison = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(ModuleError::Poison(reason))) => Some(reason),
        // Text PostgreSQL cannot store (a NUL, an invalid byte sequence) fails the same way on
        // every replay: poison it rather than restart the bot forever.
        Ok(Err(e)) if is_unstorable_text(&e) => Some(crate::mask::error_line(&e)),
        Ok(Err(e)) if e.is_unauthorized() => {
            ctx.failures.report(e);
            None
        }
        Ok(Err(e)) => {
            tracing::warn!(bot_id, update_id, error = %crate::mask::error_line(&e), "update failed; the bot restarts and replays it");
            ctx.failures.report(e);
            None
        }
        Err(panic) => Some(format!("handler panicked: {}", panic_message(&panic))),
    };
    if let Some(reason) = poison {
        tracing::error!(bot_id, update_id, error = %reason, "update poisoned");
        let marked = async {
            let mut conn = ctx.db.acquire().await?;
            store::mark_poisoned(&mut conn, ctx.telegram_id, update_id, &reason).await?;
            Ok::<(), ModuleError>(())
        }
        .await;
        if let Err(e) = marked {
            ctx.failures.report(e);
        }
    }
    Ok(())
}

/// Whether `e` is PostgreSQL refusing the text it was given (SQLSTATE 22021 character not in
/// repertoire, 22P05 untranslatable character).
fn is_unstorable_text(e: &ModuleError) -> bool {
    match e {
        ModuleError::Database(sqlx::Error::Database(db)) => {
            matches!(db.code().as_deref(), Some("22021" | "22P05"))
        }
        _ => false,
    }
}

async fn process(me: &Me, update: &Update, ctx: &BotContext) -> Result<(), ModuleError> {
    let update_id = i64::from(update.id.0);
    let snapshot = ctx.snapshot.load();
    let mut conn = ctx.db.acquire().await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    if !store::claim_update(&mut tx, ctx.telegram_id, update_id).await? {
        return Ok(());
    }
    let (queued, jobs) = {
        let mut cx = UpdateCx::new(ctx.bot_id, ctx.telegram_id, update, me, &snapshot, &mut tx);
        for module in ctx.registry.enabled(&snapshot) {
            cx.set_module(module.name());
            if module.on_update(&mut cx).await? == Flow::Stop {
                break;
            }
        }
        (cx.queued(), cx.jobs_to_wake().to_vec())
    };
    tx.commit().await?;
    if queued > 0 {
        ctx.outbox.notify_one();
    }
    for job in jobs {
        ctx.wakes.wake(job);
    }
    Ok(())
}
