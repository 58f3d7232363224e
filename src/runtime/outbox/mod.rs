//! The outbox's sender: delivers what a bot's units of work and jobs queued, after their
//! transactions committed, within Telegram's limits.
//!
//! Loop (part of the bot's run, beside the intake, the processor and the companion):
//! 1. load pending requests lane by lane (replies, then scheduled, then bulk), oldest first,
//!    each request read once — at start, after a pause, when a module job's commit wakes it
//!    ([`Sender::wake`]) and when the queue ran dry (a module's `on_sent` may have queued a
//!    follow-up, or a load filled its page); what a unit
//!    of work queued is handed over after its commit ([`Sender::handoff`]) and put in its
//!    place by lane and id without reading the outbox again, so a new reply goes ahead of a
//!    queued mailing;
//! 2. start each request whose chat has nothing in flight and whose limits allow it
//!    ([`limits::Limits`]); at most [`MAX_IN_FLIGHT`] at once, one per chat, so a chat's
//!    messages arrive in the order they were queued;
//! 3. record the results in short transactions — one statement marks a group of rows done
//!    with their outcomes and message ids, and every enabled module's `on_sent` step sees
//!    them all — so a module reads what it sent from the outbox, and history only records
//!    what Telegram accepted. A group is every result that is in when one arrives and, while
//!    the bot has more queued or in flight, what arrives within [`RECORD_LINGER`] after it
//!    (group commit under a backlog: at a bot's 30 sends a second, about three results a
//!    statement); a sender with nothing else to do records at once.
//!
//! Failures: a 429 pauses this bot's sender for exactly `retry_after` (other bots are not
//! affected); 403 → `blocked`; 400 "chat not found" → `chat_not_found`; 400 "message thread
//! not found" (a deleted forum topic) → `thread_not_found`; any other refusal →
//! `failed` with Telegram's text kept; network and server errors back off (1 s doubling to
//! 30 s) and retry; an error teloxide cannot name is retried [`MAX_UNKNOWN_ATTEMPTS`] times,
//! then `failed`; a revoked token ends the run. The bot's database out of reach pauses the
//! sender (1 s doubling to 30 s) and a result that could not be recorded is recorded later —
//! never sent twice for that — so the run does not end for it. A crash between a send and its mark repeats
//! that send (under a backlog, the sends of the last [`RECORD_LINGER`] at most); nothing
//! committed is lost, nothing uncommitted is sent.
//!
//! When the processor has stopped, the sender delivers the pending replies (lane 0), then
//! ends; scheduled and bulk requests wait for the next run, and so does everything when
//! Telegram asks to pause or fails while draining.

pub mod limits;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use teloxide::types::ChatId;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Failures, RunFailure, Wakes};
use crate::botdb::PruneSchedule;
use crate::botdb::budget::BotPool;
use crate::botdb::store::{self, OutboxRow};
use crate::content::snapshot::SharedSnapshot;
use crate::modules::{self, ModuleError, Queued, Quiet, Registry, SentCx};
use crate::telegram::{Delivery, DeliveryOutcome, Lane, Messenger, Request, TelegramError};
use crate::telemetry::metrics::{self, SendOutcome};
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
/// How long a result waits for others to be recorded with it while the bot has more to
/// send (group commit under a backlog; an idle sender records at once).
pub const RECORD_LINGER: Duration = Duration::from_millis(100);
/// Most results recorded in one statement.
const RECORD_GROUP_MAX: usize = 64;

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
    /// Notified after a job's commit that queued requests (the sender reloads the outbox).
    pub wake: Arc<Notify>,
    /// What committed units of work queued, handed over directly.
    pub handoff: mpsc::UnboundedReceiver<Box<(Instant, Vec<Queued>)>>,
    /// Per module: notified once a request it queued is recorded (its job may queue more).
    pub delivered: Wakes,
    /// Where a revoked token or a database failure is reported.
    pub failures: Failures,
    /// Cancelled when the run fails: stop at once.
    pub stop: CancellationToken,
    /// Cancelled when the processor has stopped: deliver pending replies, then end.
    pub drain: CancellationToken,
    /// Cancelled once the intake read its first page of stored updates: the first load of
    /// the outbox follows it (one connection for a starting bot's first reads). A run that
    /// drains before it (stopped during a deferred start, its database never read) leaves
    /// the outbox to the next run.
    pub after: CancellationToken,
    /// Dropped after the first load (the last of a start's reads): the start's hold on the
    /// bot's database ends then ([`crate::botdb::budget::StartHold`]).
    pub start_done: Option<tokio_util::sync::DropGuard>,
    /// Days finished requests are kept (`bot_database.inbox_retention_days`).
    pub retention_days: u32,
    /// When chats back at full capacity are forgotten by the limits, and finished requests
    /// past their retention deleted.
    pub prune: PruneSchedule,
    /// The run's traffic counters (messages Telegram accepted).
    pub traffic: Arc<super::Traffic>,
    /// Where the sender says it has nothing to do ([`QUIET_PART`]).
    pub quiet: Arc<Quiet>,
}

/// The sender's name in the run's [`Quiet`].
pub const QUIET_PART: &str = "sender";

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
    pub async fn run(mut self) {
        tokio::select! {
            biased;
            () = self.after.cancelled() => {}
            () = self.drain.cancelled() => return,
            () = self.stop.cancelled() => return,
        }
        // Created with the first rate-limited send: an idle bot holds none (two keyed
        // governor limiters are two DashMaps of 8 shards each).
        let mut limits: Option<Limits> = None;
        let mut queue: VecDeque<Entry> = VecDeque::new();
        // Whether the outbox may hold pending requests the queue does not: at start, after a
        // load that filled a page, after a job's wake-up or a pause.
        let mut reload = true;
        let mut more_in_db = false;
        let mut in_flight = FuturesUnordered::new();
        let mut busy: HashSet<i64> = HashSet::new();
        let mut flying: HashSet<i64> = HashSet::new();
        let mut recent = Recent::default();
        let mut paused_until: Option<Instant> = None;
        let mut backoff = BACKOFF_START;
        let mut next_prune = Instant::now() + self.prune.first;
        // When the unit of work took the update a handed-over reply answers (for the update →
        // reply latency); requests loaded from the outbox after a restart have none.
        let mut taken_at: HashMap<i64, Instant> = HashMap::new();
        let mut depth: Option<usize> = None;
        let mut said_idle: Option<(bool, Instant)> = None;
        // Whether the outbox was read since the drain began.
        let mut loaded_in_drain = false;
        // Results not recorded yet (their rows stay in `flying`), and when they must be.
        let mut waiting: Vec<Record> = Vec::new();
        let mut record_due: Option<Instant> = None;
        loop {
            if self.stop.is_cancelled() {
                break;
            }
            let draining = self.drain.is_cancelled();
            // A group is recorded when due, when nothing else is queued or in flight to join
            // it, and at once while draining. Before this turn's sends, not after them: a send
            // the limits allowed starts only when the select below polls it, so a record
            // between the two would hold it back and let it reach Telegram bunched with the
            // next slot's (a 429 from the rate-limited sandbox, seen in
            // `broadcast::measure_broadcast_throughput_and_reply_latency`).
            let due = record_due.is_some_and(|t| t <= Instant::now())
                || (queue.is_empty() && in_flight.is_empty());
            if !waiting.is_empty() && (draining || due) {
                record_due = None;
                let recorded =
                    Box::pin(self.record_group(&mut waiting, &mut flying, &mut recent)).await;
                match recorded {
                    Ok(follow_ups) => reload |= follow_ups,
                    // Stopped before the results could be recorded: those requests stay
                    // pending and are sent again by the next run.
                    Err(_) => break,
                }
            }
            // The drain begins after the processor's last commit and hand-over, but the
            // hand-over may still wait in its channel while the sender was busy elsewhere (a
            // record): read the outbox once before deciding that nothing is left.
            if draining && !loaded_in_drain {
                loaded_in_drain = true;
                reload = true;
            }
            let now = Instant::now();
            let paused = paused_until.is_some_and(|t| t > now);
            let mut next_ready: Option<Instant> = paused_until.filter(|_| paused);
            if !paused {
                paused_until = None;
                if reload {
                    reload = false;
                    // The database steps are boxed: the sender's idle state (the select below)
                    // holds only its waits (docs/performance.md, "Idle memory per bot").
                    let loaded = Box::pin(self.load(&flying)).await;
                    drop(self.start_done.take());
                    match loaded {
                        Ok((rows, full)) => {
                            queue = rows;
                            more_in_db = full;
                        }
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
                    queue.retain(|e| Lane::from_i16(e.row.lane) == Lane::Reply);
                    if queue.is_empty() && in_flight.is_empty() {
                        break;
                    }
                }
                let mut blocked = busy.clone();
                let mut rest = VecDeque::with_capacity(queue.len());
                let mut bot_full = false;
                while let Some(entry) = queue.pop_front() {
                    let chat = entry.row.chat_id;
                    if in_flight.len() >= MAX_IN_FLIGHT || blocked.contains(&chat) {
                        rest.push_back(entry);
                        continue;
                    }
                    blocked.insert(chat);
                    let request = match &entry.request {
                        Ok(r) => r,
                        Err(e) => {
                            let record = Record {
                                outcome: DeliveryOutcome::Failed(format!(
                                    "unreadable request: {e}"
                                )),
                                row: entry.row,
                                text: None,
                            };
                            match Box::pin(self.record_retrying(std::slice::from_ref(&record)))
                                .await
                            {
                                Ok(follow_ups) => reload |= follow_ups,
                                Err(_) => return,
                            }
                            recent.insert(record.row.id);
                            continue;
                        }
                    };
                    if request.is_rate_limited() {
                        if bot_full {
                            rest.push_back(entry);
                            continue;
                        }
                        if let Err(wait) = limits.get_or_insert_with(Limits::new).try_send(chat) {
                            bot_full = matches!(wait, Wait::Bot(_));
                            let ready = now + wait.duration();
                            next_ready = Some(next_ready.map_or(ready, |t| t.min(ready)));
                            rest.push_back(entry);
                            continue;
                        }
                    }
                    let Entry { row, request } = entry;
                    let Ok(request) = request else {
                        unreachable!("an unreadable request was recorded above")
                    };
                    busy.insert(chat);
                    flying.insert(row.id);
                    let telegram = self.telegram.clone();
                    in_flight.push(async move {
                        let started = Instant::now();
                        let result = telegram.attempt(ChatId(row.chat_id), &request).await;
                        metrics::send_took(started.elapsed());
                        (row, request, result)
                    });
                }
                queue = rest;
            }
            if Instant::now() >= next_prune {
                if let Some(limits) = &limits {
                    limits.prune();
                }
                Box::pin(self.prune()).await;
                next_prune = Instant::now() + self.prune.every;
            }
            let now_depth = queue.len() + in_flight.len();
            if depth != Some(now_depth) {
                depth = Some(now_depth);
                metrics::outbox_depth(self.bot_id, now_depth);
            }
            // Nothing queued, in flight, paused or left to load: the sender waits for a
            // hand-over, a wake-up or its next prune.
            let idle = queue.is_empty()
                && in_flight.is_empty()
                && waiting.is_empty()
                && paused_until.is_none()
                && !reload
                && !more_in_db;
            if said_idle != Some((idle, next_prune)) {
                said_idle = Some((idle, next_prune));
                if idle {
                    self.quiet.waiting(QUIET_PART, Some(next_prune));
                } else {
                    self.quiet.busy(QUIET_PART);
                }
            }
            // The next prune is due even if nothing else happens until then.
            let wake_at = [next_ready, record_due]
                .into_iter()
                .flatten()
                .fold(next_prune, Instant::min);
            let timer = tokio::time::sleep_until(wake_at);
            tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                // Checked before results, so a handed-over request that a load already
                // brought is still in the queue or in flight when it arrives (and skipped).
                Some(boxed) = self.handoff.recv() => {
                    let (taken, handed) = *boxed;
                    for q in &handed {
                        if Lane::from_i16(q.row.lane) == Lane::Reply {
                            taken_at.insert(q.row.id, taken);
                        }
                    }
                    if more_in_db || reload {
                        // The queue is not the whole outbox: older requests of the same chats
                        // may wait there, so the outbox decides the order.
                        reload = true;
                    } else {
                        for q in handed {
                            if flying.contains(&q.row.id) || recent.contains(q.row.id) {
                                continue;
                            }
                            insert_ordered(&mut queue, Entry { row: q.row, request: Ok(q.request) });
                        }
                    }
                }
                Some(sent) = in_flight.next(), if !in_flight.is_empty() => {
                    // Every result that is in already joins the group to record (group
                    // commit); a sent request stays in `flying` until it is recorded.
                    let mut done = vec![sent];
                    while let Some(Some(more)) = in_flight.next().now_or_never() {
                        done.push(more);
                    }
                    let mut pause: Option<Duration> = None;
                    let before = waiting.len();
                    for sent in done {
                        let (row, _, _): &Sent = &sent;
                        busy.remove(&row.chat_id);
                        let id = row.id;
                        queue.retain(|e| e.row.id != id);
                        match Box::pin(self.finish(sent, &mut backoff)).await {
                            Next::Go => {
                                flying.remove(&id);
                            }
                            Next::Record(record) => {
                                let taken = taken_at.remove(&id);
                                if let (Some(taken), DeliveryOutcome::Sent(_)) = (taken, &record.outcome) {
                                    metrics::update_replied(taken.elapsed());
                                }
                                waiting.push(record);
                            }
                            Next::Pause(d) => {
                                flying.remove(&id);
                                pause = Some(pause.map_or(d, |p| p.max(d)));
                            }
                        }
                    }
                    // The group waits for company while the bot has more to send: up to
                    // RECORD_LINGER, one statement for many results under a backlog. An idle
                    // sender, a pause, a drain or a result a module follows up on (a feedback
                    // topic's first message) records at once.
                    if !waiting.is_empty() {
                        let linger = pause.is_none()
                            && !draining
                            && waiting.len() < RECORD_GROUP_MAX
                            && (!queue.is_empty() || !in_flight.is_empty())
                            && !self.follows_up(&waiting[before..]);
                        let due = Instant::now() + if linger { RECORD_LINGER } else { Duration::ZERO };
                        record_due = Some(record_due.map_or(due, |t| t.min(due)));
                    }
                    if let Some(d) = pause {
                        // While draining, a pause ends the sender (after recording what was
                        // sent): what is left waits for the next run rather than holding this
                        // one's stop.
                        if draining {
                            let _ = Box::pin(self.record_group(&mut waiting, &mut flying, &mut recent)).await;
                            break;
                        }
                        paused_until = Some(Instant::now() + d);
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
    /// must not start twice; their chats' later requests wait behind them), each request read
    /// once; and whether the page was full (more may wait).
    async fn load(&self, flying: &HashSet<i64>) -> Result<(VecDeque<Entry>, bool), RecordError> {
        let mut conn = self
            .db
            .acquire()
            .await
            .map_err(|e| RecordError::Module(e.into()))?;
        let rows = store::pending_outbox(&mut conn, PAGE).await?;
        conn.vouch();
        let full = rows.len() as i64 >= PAGE;
        let queue = rows
            .into_iter()
            .filter(|r| !flying.contains(&r.id))
            .map(|row| {
                let request = serde_json::from_value::<Request>(row.request.0.clone())
                    .map_err(|e| e.to_string());
                Entry { row, request }
            })
            .collect();
        Ok((queue, full))
    }

    /// Reads what one request came to: a result to record, a pause, or nothing to do.
    async fn finish(&self, sent: Sent, backoff: &mut Duration) -> Next {
        let bot_id = self.bot_id;
        let (row, request, result) = sent;
        let method = request.method();
        let outcome = match result {
            Ok(message_id) => {
                *backoff = BACKOFF_START;
                metrics::send_attempt(bot_id, SendOutcome::Sent);
                DeliveryOutcome::Sent(message_id)
            }
            Err(TelegramError::Blocked(_)) => {
                metrics::send_attempt(bot_id, SendOutcome::Blocked);
                DeliveryOutcome::Blocked
            }
            Err(e @ (TelegramError::ChatNotFound | TelegramError::ThreadNotFound)) => {
                let (counted, outcome) = if e == TelegramError::ChatNotFound {
                    (SendOutcome::ChatNotFound, DeliveryOutcome::ChatNotFound)
                } else {
                    (SendOutcome::ThreadNotFound, DeliveryOutcome::ThreadNotFound)
                };
                metrics::send_refused(bot_id, row.chat_id, method, counted, &e.to_string());
                outcome
            }
            Err(
                TelegramError::Rejected { description, .. } | TelegramError::Conflict(description),
            ) => {
                metrics::send_refused(
                    bot_id,
                    row.chat_id,
                    method,
                    SendOutcome::Failed,
                    &description,
                );
                DeliveryOutcome::Failed(description)
            }
            Err(TelegramError::Unauthorized) => {
                self.failures.report(RunFailure::Unauthorized);
                return Next::Go;
            }
            Err(TelegramError::RetryAfter(wait)) => {
                metrics::rate_limited(bot_id, method, wait);
                return Next::Pause(wait);
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
                        return Next::Pause(wait);
                    }
                };
                if matches!(e, TelegramError::Unknown(_)) && attempts >= MAX_UNKNOWN_ATTEMPTS {
                    metrics::send_given_up(bot_id, method, &text, attempts);
                    DeliveryOutcome::Failed(text)
                } else {
                    let wait = *backoff;
                    *backoff = (*backoff * 2).min(BACKOFF_MAX);
                    metrics::send_retry(bot_id, method, &text, wait);
                    return Next::Pause(wait);
                }
            }
        };
        Next::Record(Record {
            text: request.text().map(str::to_owned),
            row,
            outcome,
        })
    }

    /// Records the group of results `waiting` (emptied), then forgets their rows in flight.
    /// Returns whether a module may have queued follow-ups; an error when the run stopped or
    /// drained before they could be recorded (they stay pending for the next run).
    async fn record_group(
        &self,
        waiting: &mut Vec<Record>,
        flying: &mut HashSet<i64>,
        recent: &mut Recent,
    ) -> Result<bool, RecordError> {
        let records = std::mem::take(waiting);
        let follow_ups = self.record_retrying(&records).await?;
        for record in &records {
            flying.remove(&record.row.id);
            recent.insert(record.row.id);
        }
        Ok(follow_ups)
    }

    /// Whether a module queues follow-ups when it sees one of `records`.
    fn follows_up(&self, records: &[Record]) -> bool {
        let snapshot = self.snapshot.load();
        let deliveries: Vec<Delivery> = records.iter().map(Record::delivery).collect();
        self.registry
            .enabled(&snapshot)
            .any(|module| deliveries.iter().any(|d| module.queues_on_sent(d)))
    }

    /// Marks requests done and lets every enabled module observe them, in one transaction.
    /// Returns whether a module may have queued follow-ups ([`Module::queues_on_sent`]).
    ///
    /// [`Module::queues_on_sent`]: crate::modules::Module::queues_on_sent
    async fn record(&self, records: &[Record]) -> Result<bool, RecordError> {
        let mut done = store::FinishedSends::with_capacity(records.len());
        let mut deliveries = Vec::with_capacity(records.len());
        for record in records {
            let (message_id, error) = match &record.outcome {
                DeliveryOutcome::Sent(id) => (id.map(i64::from), None),
                DeliveryOutcome::Failed(e) => (None, Some(e.clone())),
                _ => (None, None),
            };
            done.push(record.row.id, record.outcome.as_str(), message_id, error);
            deliveries.push(record.delivery());
        }
        let snapshot = self.snapshot.load();
        let follow_ups = self
            .registry
            .enabled(&snapshot)
            .any(|module| deliveries.iter().any(|d| module.queues_on_sent(d)));
        // First with the modules' history rows deferred: results and rows in one statement.
        let mut messages = modules::store::MessageColumns::default();
        let deferred = async {
            let mut cx = SentCx::deferred(&mut messages);
            for module in self.registry.enabled(&snapshot) {
                module.on_sent(&mut cx, &deliveries).await?;
            }
            Ok::<(), ModuleError>(())
        }
        .await;
        let mut conn = self
            .db
            .acquire()
            .await
            .map_err(|e| RecordError::Module(e.into()))?;
        match deferred {
            Ok(()) => modules::store::finish_deferred(&mut conn, &done, &messages).await?,
            // A step reads or writes more: all of it inside one transaction.
            Err(ModuleError::NeedsTransaction) => {
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                store::finish_outbox(&mut tx, &done).await?;
                let mut cx = SentCx::new(&mut tx);
                for module in self.registry.enabled(&snapshot) {
                    module.on_sent(&mut cx, &deliveries).await?;
                }
                tx.commit().await?;
            }
            Err(e) => return Err(e.into()),
        }
        conn.vouch();
        let sent = records
            .iter()
            .filter(|r| matches!(r.outcome, DeliveryOutcome::Sent(_)))
            .count();
        self.traffic.sent(sent);
        let mut origins: Vec<&str> = records.iter().map(|r| r.row.origin.as_str()).collect();
        origins.sort_unstable();
        origins.dedup();
        for origin in origins {
            self.delivered.wake(origin);
        }
        Ok(follow_ups)
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
    async fn record_retrying(&self, records: &[Record]) -> Result<bool, RecordError> {
        let mut backoff = BACKOFF_START;
        loop {
            let error = match self.record(records).await {
                Ok(follow_ups) => return Ok(follow_ups),
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

/// What the loop does with a request's result.
enum Next {
    /// Nothing to record (the run ends, or the request stays pending).
    Go,
    /// Record it.
    Record(Record),
    /// Pause the whole sender this long (429, or a backoff after an error).
    Pause(Duration),
}

/// A pending request in the sender's queue, its request read once.
struct Entry {
    row: OutboxRow,
    request: Result<Request, String>,
}

/// Puts `entry` in its place in a queue ordered by lane, then id.
fn insert_ordered(queue: &mut VecDeque<Entry>, entry: Entry) {
    let key = (entry.row.lane, entry.row.id);
    let at = queue.partition_point(|e| (e.row.lane, e.row.id) < key);
    if queue.get(at).is_some_and(|e| e.row.id == entry.row.id) {
        return;
    }
    queue.insert(at, entry);
}

/// Ids of the requests this run recorded lately (the last [`RECENT`]), so a hand-over that
/// arrives after a load already sent and recorded its request cannot send it twice.
#[derive(Default)]
struct Recent {
    order: VecDeque<i64>,
    ids: HashSet<i64>,
}

/// How many recorded ids [`Recent`] remembers: far more than can be handed over between a
/// commit and its hand-over being read.
const RECENT: usize = 4096;

impl Recent {
    fn insert(&mut self, id: i64) {
        if self.ids.insert(id) {
            self.order.push_back(id);
            if self.order.len() > RECENT
                && let Some(old) = self.order.pop_front()
            {
                self.ids.remove(&old);
            }
        }
    }

    fn contains(&self, id: i64) -> bool {
        self.ids.contains(&id)
    }
}

/// A result to record: the row, the text the chat sees, and what Telegram made of it.
struct Record {
    row: OutboxRow,
    text: Option<String>,
    outcome: DeliveryOutcome,
}

impl Record {
    /// What the modules see of it.
    fn delivery(&self) -> Delivery {
        Delivery {
            outbox_id: self.row.id,
            origin: self.row.origin.clone(),
            lane: Lane::from_i16(self.row.lane),
            chat_id: self.row.chat_id,
            user_id: self.row.user_id,
            text: self.text.clone(),
            outcome: self.outcome.clone(),
        }
    }
}
