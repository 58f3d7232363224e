//! The outbox's sender: delivers what a bot's units of work and jobs queued, after their
//! transactions committed, within Telegram's limits.
//!
//! Loop (part of the bot's run, beside the dispatcher and the companion):
//! 1. load pending requests lane by lane (replies, then scheduled, then bulk), oldest first —
//!    again whenever a commit wakes it ([`Sender::wake`]), so a new reply goes ahead of a
//!    queued mailing;
//! 2. start each request whose chat has nothing in flight and whose limits allow it
//!    ([`limits::Limits`]); at most [`MAX_IN_FLIGHT`] at once, one per chat, so a chat's
//!    messages arrive in the order they were queued;
//! 3. record each result in a short transaction — the row marked done with its outcome and
//!    message id, and every enabled module's `on_sent` step — so a module reads what it sent
//!    from the outbox, and history only records what Telegram accepted.
//!
//! Failures: a 429 pauses this bot's sender for exactly `retry_after` (other bots are not
//! affected); 403 → `blocked`; 400 "chat not found" → `chat_not_found`; 400 "message thread
//! not found" (a deleted forum topic) → `thread_not_found`; any other refusal →
//! `failed` with Telegram's text kept; network and server errors back off (1 s doubling to
//! 30 s) and retry; an error teloxide cannot name is retried [`MAX_UNKNOWN_ATTEMPTS`] times,
//! then `failed`; a revoked token ends the run. The bot's database out of reach pauses the
//! sender (1 s doubling to 30 s) and a result that could not be recorded is recorded later —
//! never sent twice for that — so the run does not end for it. A crash between a send and its mark repeats
//! that one send; nothing committed is lost, nothing uncommitted is sent.
//!
//! When the dispatcher has stopped, the sender delivers the pending replies (lane 0), then
//! ends; scheduled and bulk requests wait for the next run, and so does everything when
//! Telegram asks to pause or fails while draining.

pub mod limits;

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use teloxide::types::ChatId;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Failures, RunFailure};
use crate::botdb::budget::BotPool;
use crate::botdb::store::{self, OutboxRow};
use crate::content::snapshot::SharedSnapshot;
use crate::modules::{ModuleError, Registry};
use crate::telegram::{Delivery, DeliveryOutcome, Lane, Messenger, Request, TelegramError};
use limits::{Limits, Wait};

/// Requests of one bot in flight at once (each to a different chat).
pub const MAX_IN_FLIGHT: usize = 8;
/// Pending requests loaded at once.
const PAGE: i64 = 256;
/// Attempts at a request that keeps failing with an error teloxide cannot name.
pub const MAX_UNKNOWN_ATTEMPTS: i32 = 4;
/// First pause after a network or server error.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest pause after repeated network or server errors.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often chats back at full capacity are forgotten by the limits, and finished requests
/// past their retention deleted (also once per run).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The sender of one bot run.
pub struct Sender {
    /// The panel id of the bot.
    pub bot_id: i64,
    /// The bot's database.
    pub db: BotPool,
    /// The bot's calls.
    pub telegram: Messenger,
    /// The modules (their `on_sent` steps).
    pub registry: Registry,
    /// The bot's content (which modules are enabled).
    pub snapshot: SharedSnapshot,
    /// Notified after every commit that queued requests.
    pub wake: Arc<Notify>,
    /// Where a revoked token or a database failure is reported.
    pub failures: Failures,
    /// Cancelled when the run fails: stop at once.
    pub stop: CancellationToken,
    /// Cancelled when the dispatcher has stopped: deliver pending replies, then end.
    pub drain: CancellationToken,
    /// Days finished requests are kept (`bot_database.inbox_retention_days`).
    pub retention_days: u32,
}

type Sent = (OutboxRow, Request, Result<Option<i32>, TelegramError>);

/// Why recording a result failed.
#[derive(Debug, thiserror::Error)]
enum RecordError {
    #[error("cannot record a send's result")]
    Module(#[from] ModuleError),
    #[error("cannot record a send's result")]
    Database(#[from] sqlx::Error),
}

impl Sender {
    /// Delivers until stopped (see the module docs).
    pub async fn run(self) {
        let limits = Limits::new();
        let mut queue: VecDeque<OutboxRow> = VecDeque::new();
        let mut reload = true;
        let mut in_flight = FuturesUnordered::new();
        let mut busy: HashSet<i64> = HashSet::new();
        let mut flying: HashSet<i64> = HashSet::new();
        let mut paused_until: Option<Instant> = None;
        let mut backoff = BACKOFF_START;
        let mut last_prune: Option<Instant> = None;
        loop {
            if self.stop.is_cancelled() {
                break;
            }
            let draining = self.drain.is_cancelled();
            let now = Instant::now();
            let paused = paused_until.is_some_and(|t| t > now);
            let mut next_ready: Option<Instant> = paused_until.filter(|_| paused);
            if !paused {
                paused_until = None;
                if reload {
                    reload = false;
                    match self.load(&flying).await {
                        Ok(rows) => queue = rows,
                        // The database is out of reach: back off and load again; a run that
                        // is draining leaves what is left for the next run.
                        Err(e) => {
                            if draining {
                                break;
                            }
                            let wait = self.trouble(&e, &mut backoff);
                            paused_until = Some(Instant::now() + wait);
                            reload = true;
                            continue;
                        }
                    }
                }
                if draining {
                    queue.retain(|r| Lane::from_i16(r.lane) == Lane::Reply);
                    if queue.is_empty() && in_flight.is_empty() {
                        break;
                    }
                }
                let mut blocked = busy.clone();
                let mut rest = VecDeque::with_capacity(queue.len());
                let mut bot_full = false;
                while let Some(row) = queue.pop_front() {
                    if in_flight.len() >= MAX_IN_FLIGHT || blocked.contains(&row.chat_id) {
                        rest.push_back(row);
                        continue;
                    }
                    blocked.insert(row.chat_id);
                    let request: Request = match serde_json::from_value(row.request.0.clone()) {
                        Ok(r) => r,
                        Err(e) => {
                            let outcome =
                                DeliveryOutcome::Failed(format!("unreadable request: {e}"));
                            if self.record_retrying(&row, None, outcome).await.is_err() {
                                return;
                            }
                            continue;
                        }
                    };
                    if request.is_rate_limited() {
                        if bot_full {
                            rest.push_back(row);
                            continue;
                        }
                        if let Err(wait) = limits.try_send(row.chat_id) {
                            bot_full = matches!(wait, Wait::Bot(_));
                            let ready = now + wait.duration();
                            next_ready = Some(next_ready.map_or(ready, |t| t.min(ready)));
                            rest.push_back(row);
                            continue;
                        }
                    }
                    busy.insert(row.chat_id);
                    flying.insert(row.id);
                    let telegram = self.telegram.clone();
                    in_flight.push(async move {
                        let result = telegram.attempt(ChatId(row.chat_id), &request).await;
                        (row, request, result)
                    });
                }
                queue = rest;
            }
            if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                limits.prune();
                self.prune().await;
                last_prune = Some(Instant::now());
            }
            let timer = async {
                match next_ready {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                Some(sent) = in_flight.next(), if !in_flight.is_empty() => {
                    let (row, _, _): &Sent = &sent;
                    busy.remove(&row.chat_id);
                    flying.remove(&row.id);
                    let id = row.id;
                    queue.retain(|r| r.id != id);
                    match self.finish(sent, &mut backoff).await {
                        Ok(Next::Go) => {}
                        // While draining, a pause ends the sender: what is left waits for the
                        // next run rather than holding this one's stop.
                        Ok(Next::Pause(_)) if draining => break,
                        Ok(Next::Pause(d)) => {
                            paused_until = Some(Instant::now() + d);
                            reload = true;
                        }
                        // Stopped before the result could be recorded: the request stays
                        // pending and is sent again by the next run.
                        Err(_) => break,
                    }
                    if queue.is_empty() {
                        reload = true;
                    }
                }
                () = self.wake.notified() => reload = true,
                () = self.drain.cancelled(), if !draining => reload = true,
                () = timer => {}
            }
        }
    }

    /// Pending requests, minus those in flight (they are pending too until recorded, and
    /// must not start twice; their chats' later requests wait behind them).
    async fn load(&self, flying: &HashSet<i64>) -> Result<VecDeque<OutboxRow>, RecordError> {
        let mut conn = self
            .db
            .acquire()
            .await
            .map_err(|e| RecordError::Module(e.into()))?;
        let rows = store::pending_outbox(&mut conn, PAGE).await?;
        Ok(rows
            .into_iter()
            .filter(|r| !flying.contains(&r.id))
            .collect())
    }

    /// Records what one request came to; says whether the sender must pause.
    async fn finish(&self, sent: Sent, backoff: &mut Duration) -> Result<Next, RecordError> {
        let bot_id = self.bot_id;
        let (row, request, result) = sent;
        let method = request.method();
        let outcome = match result {
            Ok(message_id) => {
                *backoff = BACKOFF_START;
                DeliveryOutcome::Sent(message_id)
            }
            Err(TelegramError::Blocked(_)) => DeliveryOutcome::Blocked,
            Err(e @ (TelegramError::ChatNotFound | TelegramError::ThreadNotFound)) => {
                tracing::warn!(bot_id, chat_id = row.chat_id, method, error = %e, "Telegram refused the request");
                if e == TelegramError::ChatNotFound {
                    DeliveryOutcome::ChatNotFound
                } else {
                    DeliveryOutcome::ThreadNotFound
                }
            }
            Err(
                TelegramError::Rejected { description, .. } | TelegramError::Conflict(description),
            ) => {
                tracing::warn!(bot_id, chat_id = row.chat_id, method, error = %description, "Telegram refused the request");
                DeliveryOutcome::Failed(description)
            }
            Err(TelegramError::Unauthorized) => {
                self.failures.report(RunFailure::Unauthorized);
                return Ok(Next::Go);
            }
            Err(TelegramError::RetryAfter(wait)) => {
                tracing::warn!(bot_id, method, retry_after = ?wait, "Telegram asked to slow down; the sender pauses");
                return Ok(Next::Pause(wait));
            }
            Err(e @ (TelegramError::Transient(_) | TelegramError::Unknown(_))) => {
                let text = e.to_string();
                let counted = async {
                    let mut conn = self
                        .db
                        .acquire()
                        .await
                        .map_err(|e| RecordError::Module(e.into()))?;
                    Ok::<i32, RecordError>(store::retry_outbox(&mut conn, row.id, &text).await?)
                }
                .await;
                let attempts = match counted {
                    Ok(n) => n,
                    // Not counted: the attempt is tried again all the same.
                    Err(e) => {
                        let wait = self.trouble(&e, backoff);
                        return Ok(Next::Pause(wait));
                    }
                };
                if matches!(e, TelegramError::Unknown(_)) && attempts >= MAX_UNKNOWN_ATTEMPTS {
                    tracing::error!(bot_id, method, error = %text, attempts, "Telegram kept refusing the request; giving up on it");
                    DeliveryOutcome::Failed(text)
                } else {
                    let wait = *backoff;
                    *backoff = (*backoff * 2).min(BACKOFF_MAX);
                    tracing::warn!(bot_id, method, error = %text, retry_in = ?wait, "send failed; retrying");
                    return Ok(Next::Pause(wait));
                }
            }
        };
        self.record_retrying(&row, request.text(), outcome).await?;
        Ok(Next::Go)
    }

    /// Marks a request done and lets every enabled module observe it, in one transaction.
    async fn record(
        &self,
        row: &OutboxRow,
        text: Option<&str>,
        outcome: DeliveryOutcome,
    ) -> Result<(), RecordError> {
        let (message_id, error) = match &outcome {
            DeliveryOutcome::Sent(id) => (id.map(i64::from), None),
            DeliveryOutcome::Failed(e) => (None, Some(e.as_str())),
            _ => (None, None),
        };
        let delivery = Delivery {
            outbox_id: row.id,
            origin: row.origin.clone(),
            lane: Lane::from_i16(row.lane),
            chat_id: row.chat_id,
            user_id: row.user_id,
            text: text.map(str::to_owned),
            outcome: outcome.clone(),
        };
        let snapshot = self.snapshot.load();
        let mut conn = self
            .db
            .acquire()
            .await
            .map_err(|e| RecordError::Module(e.into()))?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        store::finish_outbox(&mut tx, row.id, outcome.as_str(), message_id, error).await?;
        for module in self.registry.enabled(&snapshot) {
            module
                .on_sent(&mut tx, std::slice::from_ref(&delivery))
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes finished requests past their retention; a failure is logged and retried at
    /// the next turn.
    async fn prune(&self) {
        let pruned = async {
            let mut conn = self
                .db
                .acquire()
                .await
                .map_err(|e| RecordError::Module(e.into()))?;
            Ok::<u64, RecordError>(
                store::prune_outbox(&mut conn, i64::from(self.retention_days)).await?,
            )
        }
        .await;
        match pruned {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(bot_id = self.bot_id, deleted, "pruned finished sends"),
            Err(e) => {
                tracing::warn!(bot_id = self.bot_id, error = %crate::mask::error_line(&e), "pruning the outbox failed")
            }
        }
    }

    /// Records a result, retrying while the database is out of reach (the send happened:
    /// recording it later beats sending it twice). Gives up only when the run stops or
    /// drains; the request then stays pending and the next run sends it again.
    async fn record_retrying(
        &self,
        row: &OutboxRow,
        text: Option<&str>,
        outcome: DeliveryOutcome,
    ) -> Result<(), RecordError> {
        let mut backoff = BACKOFF_START;
        loop {
            let error = match self.record(row, text, outcome.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if self.drain.is_cancelled() {
                return Err(error);
            }
            let wait = self.trouble(&error, &mut backoff);
            tokio::select! {
                () = self.stop.cancelled() => return Err(error),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Logs a database failure and says how long to wait before trying again.
    fn trouble(&self, e: &RecordError, backoff: &mut Duration) -> Duration {
        let wait = *backoff;
        *backoff = (*backoff * 2).min(BACKOFF_MAX);
        tracing::warn!(bot_id = self.bot_id, error = %crate::mask::error_line(e), retry_in = ?wait, "the sender cannot reach the bot's database; retrying");
        wait
    }
}

/// What the loop does after recording a result.
enum Next {
    /// Carry on.
    Go,
    /// Pause the whole sender this long (429, or a backoff after an error).
    Pause(Duration),
}
