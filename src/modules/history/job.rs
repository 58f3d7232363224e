//! The history module's job: retention pruning.
//!
//! Loop: sleep until the next prune (the bot's [`crate::botdb::PruneSchedule`]: its first
//! a fraction of the period after the start, then every period), a reload or stop → prune. A
//! reload that shortened the retention and an operator's wake prune at once. A failed prune
//! is logged and tried again at the next turn; it never stops the bot.

use tokio::time::Instant;

use super::{JobCx, ModuleError, retention_days, store};
use crate::modules::Wake;

/// Runs until the job's stop token is cancelled.
pub async fn prune(mut cx: JobCx) -> Result<(), ModuleError> {
    let mut days = retention_days(&cx);
    let mut next = Instant::now() + cx.prune.first;
    loop {
        loop {
            match cx.woken(Some(next)).await {
                Wake::Stop => return Ok(()),
                Wake::Timer | Wake::Operator => break,
                // History queues nothing; nothing of its own is ever delivered.
                Wake::Delivered => {}
                Wake::Snapshot => {
                    let now = retention_days(&cx);
                    let shorter = now != 0 && (days == 0 || now < days);
                    days = now;
                    if shorter {
                        break;
                    }
                }
            }
        }
        if days > 0 {
            // Boxed: the job's idle state holds only its wait (docs/performance.md).
            match Box::pin(prune_once(&cx, days)).await {
                Ok(0) => {}
                Ok(deleted) => {
                    tracing::info!(bot_id = cx.bot_id, deleted, days, "pruned old history")
                }
                Err(e) => {
                    tracing::warn!(bot_id = cx.bot_id, error = %crate::mask::error_line(&e), "pruning history failed; trying again later")
                }
            }
        }
        next = Instant::now() + cx.prune.every;
    }
}

async fn prune_once(cx: &JobCx, days: u32) -> Result<u64, ModuleError> {
    let mut conn = cx.db.acquire().await?;
    Ok(store::prune_history(&mut conn, i64::from(days)).await?)
}
