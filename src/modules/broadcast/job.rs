//! The broadcast job: starts scheduled broadcasts when due and keeps each running one's
//! window of sends queued in the outbox.
//!
//! Loop: start the scheduled broadcasts that are due (freeze their audience) → for each
//! running broadcast, top its queued recipients up to [`WINDOW`] (one transaction: outbox rows
//! in the bulk lane and the recipients marked `queued`), finish it when nobody is left, and
//! edit the admin's progress message at most every [`PROGRESS_EVERY`] → sleep until a
//! delivery of ours was recorded, an operator wakes us, the next scheduled start or progress
//! edit, or stop. No polling: with nothing running or scheduled it sleeps until woken.
//!
//! A failed turn (the database out of reach) is logged and tried again after a pause; it
//! never ends the bot's run.

use std::time::Duration;

use chrono::Utc;
use teloxide::types::{ChatId, InlineKeyboardButton, InlineKeyboardMarkup, ReplyMarkup};
use tokio::time::Instant;

use super::store::{self, BroadcastRow, Counts};
use super::{Audience, render_for, vars};
use crate::content::texts::Vars;
use crate::modules::{JobCx, ModuleError, Wake};
use crate::telegram::{Lane, Request};

/// Recipients of one broadcast queued in the outbox at once: about two seconds of sends at
/// Telegram's 30/s, so a pause or cancel takes effect quickly and the outbox stays small.
pub const WINDOW: i64 = 60;
/// The window is topped up once fewer than this many are queued (fewer, larger commits).
const REFILL_BELOW: i64 = WINDOW / 2;
/// Shortest time between two edits of an admin's progress message.
const PROGRESS_EVERY: Duration = Duration::from_secs(3);
/// Pause after a turn failed (the database out of reach).
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Runs until the job's stop token is cancelled.
pub async fn run(mut cx: JobCx) -> Result<(), ModuleError> {
    let mut progress = Progress::default();
    // The first turn counts the resumption of the broadcasts this run takes over.
    let mut resuming = true;
    loop {
        // Boxed: the job's idle state holds only its wait (docs/performance.md, "Idle memory
        // per bot").
        let deadline = match Box::pin(turn(&cx, &mut progress, &mut resuming)).await {
            Ok(deadline) => deadline,
            Err(e) => {
                tracing::warn!(bot_id = cx.bot_id, error = %crate::mask::error_line(&e), retry_in = ?RETRY_AFTER, "broadcast turn failed; trying again");
                Some(Instant::now() + RETRY_AFTER)
            }
        };
        if cx.woken(deadline).await == Wake::Stop {
            return Ok(());
        }
    }
}

/// When each admin's progress message was last edited, by broadcast.
#[derive(Default)]
struct Progress {
    edited: std::collections::HashMap<i64, (Instant, Counts)>,
}

/// One pass; returns when the job must look again without being woken. `resuming` (the run's
/// first pass) counts a resumption of every started, unfinished broadcast, and is cleared once
/// that is done.
///
/// It begins with one read of every unfinished broadcast: a bot with none — most bots, at every
/// start — costs one statement on one table (a fresh connection's first touch of a table is
/// most of a start's cost on PostgreSQL; docs/performance.md, "Cold start of 1,000 bots").
async fn turn(
    cx: &JobCx,
    progress: &mut Progress,
    resuming: &mut bool,
) -> Result<Option<Instant>, ModuleError> {
    let snapshot = cx.snapshot.borrow().clone();
    let admins = snapshot.manifest.admins.clone();
    let mut conn = cx.db.acquire().await?;
    let mut deadline: Option<Instant> = None;
    let mut later = |at: Instant| {
        deadline = Some(deadline.map_or(at, |d: Instant| d.min(at)));
    };

    let unfinished = store::unfinished(&mut conn).await?;
    if *resuming {
        let started = |b: &BroadcastRow| {
            matches!(b.state.as_str(), "running" | "paused") && b.started_at.is_some()
        };
        if unfinished.iter().any(started) {
            let n = store::note_resumed(&mut conn).await?;
            tracing::info!(bot_id = cx.bot_id, broadcasts = n, "resuming broadcasts");
        }
        *resuming = false;
    }
    let mut next_start = None;
    let mut started_any = false;
    for b in unfinished.iter().filter(|b| b.state == "scheduled") {
        if b.start_at > Utc::now() {
            next_start =
                Some(next_start.map_or(b.start_at, |n: chrono::DateTime<Utc>| n.min(b.start_at)));
            continue;
        }
        started_any = true;
        let audience: Audience = b.audience.parse().unwrap_or(Audience::All);
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        if let Some(total) = store::freeze(&mut tx, b.id, &audience, &admins).await? {
            tracing::info!(
                bot_id = cx.bot_id,
                broadcast = b.id,
                total,
                "broadcast started"
            );
        }
        tx.commit().await?;
    }
    if let Some(next) = next_start {
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        later(Instant::now() + wait);
    }

    // Those just started are running now: read them again only then.
    let running = if started_any {
        store::in_state(&mut conn, "running").await?
    } else {
        unfinished
            .into_iter()
            .filter(|b| b.state == "running")
            .collect()
    };
    for b in running {
        let queued = store::queued(&mut conn, b.id).await?;
        if queued < REFILL_BELOW {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            let recipients = store::take_pending(&mut tx, b.id, WINDOW - queued).await?;
            let mut queued_now = 0;
            for r in &recipients {
                let vars = vars(r, &snapshot);
                match request(&b, &snapshot, r.language_code.as_deref(), &vars) {
                    Ok(req) => {
                        let outbox = cx
                            .queue(
                                &mut tx,
                                Lane::Bulk,
                                ChatId(r.user_id),
                                Some(r.user_id),
                                &req,
                            )
                            .await?;
                        store::mark_queued(&mut tx, b.id, r.user_id, outbox).await?;
                        queued_now += 1;
                    }
                    Err(reason) => store::mark_unsent(&mut tx, b.id, r.user_id, &reason).await?,
                }
            }
            let finished = recipients.is_empty()
                && queued == 0
                && store::finish_if_done(&mut tx, b.id).await?;
            if finished {
                let counts = store::counts(&mut tx, b.id).await?;
                tracing::info!(
                    bot_id = cx.bot_id,
                    broadcast = b.id,
                    total = counts.total,
                    sent = counts.sent,
                    blocked = counts.blocked,
                    failed = counts.failed,
                    "broadcast done"
                );
                edit_progress(cx, &mut tx, &b, &counts, true).await?;
                progress.edited.remove(&b.id);
            }
            tx.commit().await?;
            if queued_now > 0 || finished {
                cx.wake_sender();
            }
            if finished {
                continue;
            }
        }
        if b.progress_chat.is_some() {
            let now = Instant::now();
            let last = progress.edited.get(&b.id).copied();
            let due = last.map_or(now, |(t, _)| t + PROGRESS_EVERY);
            if due <= now {
                let counts = store::counts(&mut conn, b.id).await?;
                // Telegram refuses an edit that changes nothing.
                if last.is_none_or(|(_, c)| c != counts) {
                    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                    edit_progress(cx, &mut tx, &b, &counts, false).await?;
                    tx.commit().await?;
                    cx.wake_sender();
                    progress.edited.insert(b.id, (now, counts));
                    later(now + PROGRESS_EVERY);
                }
            } else {
                later(due);
            }
        }
    }
    Ok(deadline)
}

/// The request for one recipient, or why there is none.
fn request(
    b: &BroadcastRow,
    snapshot: &crate::content::snapshot::Snapshot,
    lang: Option<&str>,
    vars: &Vars<'_>,
) -> Result<Request, String> {
    let keyboard = match &b.buttons {
        Some(rows) => Some(
            serde_json::from_value::<Vec<Vec<InlineKeyboardButton>>>(rows.0.clone())
                .map(InlineKeyboardMarkup::new)
                .map_err(|e| format!("unreadable buttons: {e}"))?,
        ),
        None => None,
    };
    if let (Some(chat), Some(message)) = (b.copy_from_chat, b.copy_message_id) {
        return Ok(Request::CopyMessage {
            from_chat_id: chat,
            message_id: i32::try_from(message).map_err(|_| "message id out of range")?,
            message_thread_id: None,
            caption: None,
            reply_to_message_id: None,
            reply_markup: keyboard,
        });
    }
    match render_for(
        snapshot,
        b.text.as_deref(),
        b.text_key.as_deref(),
        lang,
        vars,
    ) {
        Some(text) => Ok(Request::SendMessage {
            text,
            reply_markup: keyboard.map(ReplyMarkup::InlineKeyboard),
            message_thread_id: None,
            reply_to_message_id: None,
            in_history: false,
        }),
        None => Err(format!(
            "text {} has no value in {} or the default language",
            b.text_key.as_deref().unwrap_or("-"),
            lang.unwrap_or("-")
        )),
    }
}

/// Queues an edit of the admin's progress message (an in-bot broadcast).
async fn edit_progress(
    cx: &JobCx,
    tx: &mut sqlx::PgConnection,
    b: &BroadcastRow,
    c: &Counts,
    done: bool,
) -> Result<(), ModuleError> {
    let (Some(chat), Some(message)) = (b.progress_chat, b.progress_message_id) else {
        return Ok(());
    };
    let text = if done {
        let took = b
            .started_at
            .map(|s| (Utc::now() - s).num_seconds().max(0))
            .unwrap_or(0);
        format!(
            "Broadcast #{} done in {took} s: sent {} of {}, blocked {}, failed {}.",
            b.id, c.sent, c.total, c.blocked, c.failed
        )
    } else {
        format!(
            "Broadcast #{}: sent {} of {}, blocked {}, failed {}, pending {}…",
            b.id, c.sent, c.total, c.blocked, c.failed, c.pending
        )
    };
    let request = Request::EditMessageText {
        message_id: i32::try_from(message).unwrap_or(0),
        text,
        reply_markup: None,
    };
    cx.queue(tx, Lane::Reply, ChatId(chat), Some(chat), &request)
        .await?;
    Ok(())
}
