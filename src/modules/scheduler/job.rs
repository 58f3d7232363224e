//! The scheduler's job: claims due occurrences, then sleeps until the next one.
//!
//! Loop: [`fire_due`] at the clock's now → wake the sender (messages queued) and the
//! broadcast job (broadcasts started) → sleep until the earliest `next_due`, an operator's
//! wake (a job added, removed, paused or resumed), or stop. A failed pass (the database out of
//! reach) is logged and tried again after a pause; it never ends the bot's run.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use tokio::time::Instant;

use super::{Clock, NAME, fire_due, store};
use crate::modules::{JobCx, ModuleError, Wake, broadcast};

/// Pause after a failed pass.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// An occurrence this close ahead is claimed now rather than after another sleep (timers and
/// clocks disagree by a few milliseconds; a run is due at its time ± 1 s).
const EARLY: TimeDelta = TimeDelta::milliseconds(20);

/// Runs until the job's stop token is cancelled.
pub async fn run(mut cx: JobCx, clock: Arc<dyn Clock>) -> Result<(), ModuleError> {
    loop {
        // Boxed, like every long-lived loop's heavy step: the job's idle state then holds only
        // its wait (docs/performance.md, "Idle memory per bot").
        let deadline = match Box::pin(pass(&cx, clock.as_ref())).await {
            Ok(deadline) => deadline,
            Err(e) => {
                tracing::warn!(bot_id = cx.bot_id, error = %crate::mask::error_line(&e), retry_in = ?RETRY_AFTER, "scheduler pass failed; trying again");
                Some(Instant::now() + RETRY_AFTER)
            }
        };
        if cx.woken(deadline).await == Wake::Stop {
            return Ok(());
        }
    }
}

async fn pass(cx: &JobCx, clock: &dyn Clock) -> Result<Option<Instant>, ModuleError> {
    let snapshot = cx.snapshot.borrow().clone();
    let mut conn = cx.db.acquire().await?;
    let at = |t: chrono::DateTime<chrono::Utc>| {
        let wait = (t - clock.now()).to_std().unwrap_or_default();
        Instant::now() + wait
    };
    // Nothing due (a bot without schedules: most bots, at every start): one statement.
    match store::next_due(&mut conn).await? {
        None => return Ok(None),
        Some(t) if t > clock.now() + EARLY => return Ok(Some(at(t))),
        Some(_) => {}
    }
    loop {
        let done = fire_due(&mut conn, clock.now() + EARLY, &snapshot, NAME).await?;
        for f in &done.fired {
            tracing::info!(bot_id = cx.bot_id, job = f.job_id, due = %f.due_at, outcome = %f.outcome, late_ms = f.late_ms, "scheduled job ran");
        }
        if done.queued {
            cx.wake_sender();
        }
        if done.broadcasts {
            cx.peers.wake(broadcast::NAME);
        }
        if done.fired.is_empty() {
            break;
        }
    }
    Ok(store::next_due(&mut conn).await?.map(at))
}
