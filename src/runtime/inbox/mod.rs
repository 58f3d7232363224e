//! The durable update listener: botvisor's replacement for teloxide's polling listener.
//!
//! Loop ([`DurableListener::run`], handing updates to the unit of work's processor):
//! 1. replay: unprocessed inbox rows, oldest first, before anything new;
//! 2. fetch: `getUpdates` — a long poll *without* an offset, or, right after a batch was stored,
//!    a long poll with the offset that confirms it (Telegram applies an offset when the call
//!    starts, so it confirms that batch only); the `result` array comes back split into
//!    its elements' texts (`telegram::RawUpdate`), and each element is read on its own
//!    ([`read_element`]: its id, the payload to store, the update parsed with panics caught);
//! 3. store: the batch and the next offset in one transaction — only then is the offset sent
//!    (confirmed); an element that cannot be parsed is stored poisoned with its raw text; one
//!    without a readable `update_id` is logged with its raw text and left out of the offset
//!    arithmetic (a later update's offset confirms it). The processor stores it
//!    ([`super::dispatch::Fresh`]) — in the statement that also processes it when it can —
//!    and answers with what it stored; the listener waits for that answer.
//!
//! In a polling run's deferred start ([`Deferred`]) a long poll comes before step 1, while
//! the bot's database waits for its check; nothing is read or stored until the check is done.
//!
//! Two ways lead into the inbox: [`DurableListener`] polls; in webhook mode it only replays
//! and prunes, and the [`webhook`] entrance stores through the same
//! `botdb::store::store_batch` and hands on to the same processor. Parsing lives in [`parse`].
//! A polling run whose `getUpdates` meets Telegram's 409 because a webhook is set (the bot was
//! just switched from webhook mode) deletes the webhook — pending updates kept — and polls.
//!
//! Invariants: an update reaches a handler only after it is in the inbox; only ids Telegram
//! has just sent are ever confirmed, so a restart of the update ids (Telegram picks a new,
//! possibly lower, id after a week without updates; a fresh sandbox starts at 1) cannot drop
//! new updates — `store_batch` detects it, parks the old rows and resets the stored offset;
//! no element blocks the ones behind it; no call is repeated without a pause (errors back off
//! 1 s doubling to 30 s, `retry_after` honoured exactly; a call that brought nothing to
//! confirm waits up to 4 s); a 401 is reported as fatal. On stop the updates already stored
//! are still handed on (the processor drains them), then a last `getUpdates` confirms the
//! stored batch if it was not confirmed yet, so the next poller for this token starts cleanly.
//! Proved by `tests/intake_corpus.rs` and `tests/intake_restart.rs`.

mod parse;
pub mod webhook;

pub use parse::{
    Element, panic_message, parse_for_handlers, parse_update, payload_text, read_element,
};

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use teloxide::types::Update;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::dispatch::{Fresh, Work};
use super::{Failures, RunFailure};
use crate::botdb::PruneSchedule;
use crate::botdb::budget::BotPool;
use crate::botdb::store::{self, InboxRow, Stored};
use crate::content::snapshot::SharedSnapshot;
use crate::modules::Registry;
use crate::telegram::{RawUpdate, TelegramApi, TelegramError};
use crate::telemetry::metrics::{self, PoisonedAt};
use crate::token::BotToken;

/// Updates per getUpdates call (Telegram's maximum).
const BATCH_LIMIT: u8 = 100;
/// Inbox rows loaded per replay page.
const REPLAY_PAGE: i64 = 500;
/// First retry delay after a failed fetch or store.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Longest pause after a call that brought nothing to confirm (an element without a readable
/// id, a long poll answered empty at once): short, as a later update ends it.
const STALL_MAX: Duration = Duration::from_secs(4);
/// Consecutive failed fetches after which the bot reports itself degraded (about 7 s).
const DEGRADED_AFTER: u32 = 3;
/// Time the final confirming getUpdates gets on stop.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);

/// The durable listener of one bot run.
pub struct DurableListener {
    api: TelegramApi,
    token: BotToken,
    telegram_id: i64,
    bot_id: i64,
    db: BotPool,
    poll_timeout: Duration,
    stop: CancellationToken,
    failures: Failures,
    buffer: VecDeque<Update>,
    /// The offset that confirms the last stored batch, until a call carried it.
    to_confirm: Option<i64>,
    /// Elements without a readable id already logged (cleared when the offset moves).
    idless_logged: HashSet<String>,
    replayed_up_to: Option<i64>,
    backoff: Duration,
    inbox_retention_days: u32,
    snapshot: SharedSnapshot,
    registry: Registry,
    prune: PruneSchedule,
    next_prune: tokio::time::Instant,
    first_read: CancellationToken,
    health: tokio::sync::watch::Sender<Option<String>>,
    failing: u32,
    /// Webhook mode: no polling; fired once the stored updates were handed on.
    webhook: Option<Option<tokio::sync::oneshot::Sender<()>>>,
    /// Inside a burst of 409 answers (logged once; cleared by the next successful fetch).
    conflicting: bool,
    /// A deferred start whose database is not checked yet: poll, read nothing.
    deferred: Option<Deferred>,
    /// Where fetched batches go to be stored and processed (set by [`Self::run`]).
    processor: Option<mpsc::Sender<Work>>,
}

/// A polling bot's deferred start, as its listener sees it (docs/architecture.md, "Deferred
/// start"): the listener polls before the bot's database is checked, and reads or stores
/// nothing until it is.
#[derive(Debug, Clone, Default)]
pub struct Deferred {
    /// Cancelled once the database is checked (and created or migrated if it had to be).
    pub ready: CancellationToken,
    /// Cancelled by the listener when a poll brought updates before `ready`: the check
    /// then goes ahead of the queue.
    pub urgent: CancellationToken,
}

/// What a listener works with.
pub struct ListenerParts {
    /// The Bot API client.
    pub api: TelegramApi,
    /// The bot's token.
    pub token: BotToken,
    /// Panel id (for logs).
    pub bot_id: i64,
    /// The bot's database.
    pub db: BotPool,
    /// getUpdates long-poll timeout.
    pub poll_timeout: Duration,
    /// Days processed inbox rows are kept.
    pub inbox_retention_days: u32,
    /// When processed inbox rows past their retention are deleted.
    pub prune: PruneSchedule,
    /// Cancelled once the first page of stored updates was read (or its read failed): the
    /// sender's first look at the outbox waits for it, so a starting bot's two first reads
    /// take turns on one connection instead of opening two at once.
    pub first_read: CancellationToken,
    /// The bot's content (its enabled modules decide `allowed_updates`).
    pub snapshot: SharedSnapshot,
    /// The modules.
    pub registry: Registry,
    /// Where the listener says fetching keeps failing ([`crate::runtime::RunParts::health`]).
    pub health: tokio::sync::watch::Sender<Option<String>>,
    /// Webhook mode: never poll; send `()` here once the replay is handed on (the webhook
    /// entrance opens then).
    pub webhook: Option<tokio::sync::oneshot::Sender<()>>,
    /// A deferred start: poll at once, touch the database only once it is checked.
    pub deferred: Option<Deferred>,
}

impl DurableListener {
    /// A listener that stops when `stop` is cancelled and reports fatal errors to `failures`.
    pub fn new(parts: ListenerParts, stop: CancellationToken, failures: Failures) -> Self {
        Self {
            telegram_id: i64::try_from(parts.token.bot_user_id()).unwrap_or(i64::MAX),
            api: parts.api,
            token: parts.token,
            bot_id: parts.bot_id,
            db: parts.db,
            poll_timeout: parts.poll_timeout,
            stop,
            failures,
            buffer: VecDeque::new(),
            to_confirm: None,
            idless_logged: HashSet::new(),
            replayed_up_to: Some(i64::MIN),
            backoff: BACKOFF_START,
            inbox_retention_days: parts.inbox_retention_days,
            snapshot: parts.snapshot,
            registry: parts.registry,
            prune: parts.prune,
            next_prune: tokio::time::Instant::now() + parts.prune.first,
            first_read: parts.first_read,
            health: parts.health,
            failing: 0,
            webhook: parts.webhook.map(Some),
            conflicting: false,
            deferred: parts.deferred,
            processor: None,
        }
    }

    /// Stores and hands on updates until stopped: every update it hands to `processor` is in
    /// the inbox first. Ends when the run stops (after handing on what it stored) or the
    /// processor is gone.
    pub async fn run(mut self, processor: mpsc::Sender<Work>) {
        self.processor = Some(processor);
        // The update is boxed where it leaves the buffer: an `Update` (1,944 bytes) named in
        // this loop would keep its place in the listener's state while the send waits.
        while let Some(update) = self.next_update().await {
            if !self.hand_on(Work::Stored(update)).await {
                break;
            }
        }
    }

    /// Hands `work` to the processor; false when it is gone (the run is ending).
    async fn hand_on(&self, work: Work) -> bool {
        match &self.processor {
            Some(processor) => processor.send(work).await.is_ok(),
            None => false,
        }
    }

    async fn next_update(&mut self) -> Option<Box<Update>> {
        loop {
            if let Some(update) = self.buffer.pop_front() {
                return Some(Box::new(update));
            }
            if self.stop.is_cancelled() {
                Box::pin(self.confirm_offset()).await;
                return None;
            }
            // The steps that talk to the database or Telegram are boxed: the listener's state
            // between them (a webhook-mode listener waits in `webhook_idle` for an hour) holds
            // only the wait, not the largest step's future (docs/performance.md, "Idle memory
            // per bot").
            let step = if let Some(deferred) = &self.deferred {
                let deferred = deferred.clone();
                Box::pin(self.poll_before_ready(deferred)).await
            } else if let Some(after) = self.replayed_up_to {
                let read = Box::pin(self.replay_page(after)).await;
                self.first_read.cancel();
                read
            } else if tokio::time::Instant::now() >= self.next_prune {
                Box::pin(self.prune()).await
            } else if self.webhook.is_some() {
                self.webhook_idle().await
            } else {
                Box::pin(self.fetch_batch()).await
            };
            match step {
                Ok(()) => {
                    self.backoff = BACKOFF_START;
                    self.failing = 0;
                    self.health.send_if_modified(|h| h.take().is_some());
                }
                Err(StepError::Fatal(f)) => {
                    self.failures.report(f);
                    return None;
                }
                Err(StepError::Retry(wait, why)) => {
                    tracing::warn!(bot_id = self.bot_id, error = %why, retry_in = ?wait, "update fetch failed");
                    self.failing += 1;
                    if self.failing >= DEGRADED_AFTER {
                        self.health.send_if_modified(|h| {
                            let changed = h.as_deref() != Some(why.as_str());
                            *h = Some(why);
                            changed
                        });
                    }
                    self.pause(wait).await;
                }
                Err(StepError::Wait(wait)) => self.pause(wait).await,
            }
        }
    }

    async fn pause(&self, wait: Duration) {
        tokio::select! {
            () = self.stop.cancelled() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }

    fn retry(&mut self, why: String) -> StepError {
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        StepError::Retry(wait, why)
    }

    async fn replay_page(&mut self, after: i64) -> Result<(), StepError> {
        let mut conn = self
            .db
            .acquire()
            .await
            .map_err(|e| self.retry(crate::mask::error_line(&e)))?;
        let rows = store::pending_updates(&mut conn, self.telegram_id, after, REPLAY_PAGE)
            .await
            .map_err(|e| self.retry(crate::mask::error_line(&e)))?;
        if (rows.len() as i64) < REPLAY_PAGE {
            self.replayed_up_to = None;
        } else if let Some((last, _)) = rows.last() {
            self.replayed_up_to = Some(*last);
        }
        if !rows.is_empty() {
            tracing::info!(
                bot_id = self.bot_id,
                count = rows.len(),
                "replaying stored updates"
            );
        }
        for (update_id, payload) in rows {
            match parse_for_handlers(&payload_text(&payload)) {
                Ok(update) => self.buffer.push_back(update),
                Err(error) => {
                    metrics::update_poisoned(
                        self.bot_id,
                        update_id,
                        PoisonedAt::Intake,
                        &error,
                        None,
                    );
                    store::mark_poisoned(&mut conn, self.telegram_id, update_id, &error)
                        .await
                        .map_err(|e| self.retry(crate::mask::error_line(&e)))?;
                }
            }
        }
        Ok(())
    }

    /// A deferred start's first step: a long poll while the database waits for its check.
    /// Once the check is done the poll is dropped (it carried no offset, so Telegram keeps
    /// whatever it was about to bring) and the listener goes on as any: replay, then poll.
    /// A poll that brings updates first makes the check urgent, waits for it, replays what
    /// an earlier run left, and only then stores the new batch, so the order of a chat's
    /// updates holds (test `deferred_start::*`).
    async fn poll_before_ready(&mut self, deferred: Deferred) -> Result<(), StepError> {
        let fetched = tokio::select! {
            () = deferred.ready.cancelled() => None,
            fetched = self.fetch() => match fetched? {
                Some(raw) => Some(raw),
                // Stopped, or an empty poll: poll again.
                None => return Ok(()),
            },
        };
        let Some(raw) = fetched else {
            self.deferred = None;
            return Ok(());
        };
        deferred.urgent.cancel();
        tokio::select! {
            // Neither stored nor confirmed: the next poller gets these again.
            () = self.stop.cancelled() => return Ok(()),
            () = deferred.ready.cancelled() => {}
        }
        self.deferred = None;
        while let Some(after) = self.replayed_up_to {
            let read = Box::pin(self.replay_page(after)).await;
            self.first_read.cancel();
            read?;
        }
        self.store_fetched(raw).await
    }

    /// One getUpdates call: a long poll without an offset, or — right after a batch was
    /// stored — a long poll with the offset that confirms it (and that brings the next batch).
    ///
    /// Only the call right after a store carries an offset, so that a restart of the update
    /// ids can never make Telegram drop new updates as "confirmed": the offset is applied when
    /// the call starts, and only ids we have just been given are ever confirmed. An empty
    /// answer clears it, so the next wait (which may last a week) carries none.
    async fn fetch_batch(&mut self) -> Result<(), StepError> {
        match self.fetch().await? {
            Some(raw) => self.store_fetched(raw).await,
            None => Ok(()),
        }
    }

    /// The call of [`Self::fetch_batch`]: what it brought (`None`: nothing, or the run
    /// stopped).
    async fn fetch(&mut self) -> Result<Option<Vec<RawUpdate>>, StepError> {
        let allowed = self.allowed_updates();
        // The confirming call is a long poll too: the offset is applied when the call
        // starts, so it confirms exactly the batch just stored, and the wait brings the next
        // one without a second call per batch.
        let offset = self.to_confirm;
        let timeout = self.poll_timeout;
        let started = tokio::time::Instant::now();
        let fetch = self
            .api
            .get_updates(&self.token, offset, BATCH_LIMIT, timeout, &allowed);
        let raw = tokio::select! {
            () = self.stop.cancelled() => return Ok(None),
            r = fetch => r,
        };
        let raw = match raw {
            Ok(raw) => raw,
            Err(e) => {
                // Whatever happened (the server may even be a new one), poll afresh.
                self.to_confirm = None;
                return Err(match e {
                    TelegramError::Unauthorized => StepError::Fatal(RunFailure::Unauthorized),
                    // A webhook is set (the bot was in webhook mode): delete it, then poll.
                    TelegramError::Conflict(d) if d.contains("webhook") => {
                        return self.delete_webhook().await.map(|()| None);
                    }
                    TelegramError::RetryAfter(wait) => {
                        metrics::rate_limited(self.bot_id, "getUpdates", wait);
                        StepError::Wait(wait)
                    }
                    TelegramError::Conflict(description) => {
                        // Once per burst: another getUpdates on this token is a second poller
                        // (another instance during a hand-over or a split brain, or another
                        // program using the token).
                        if !self.conflicting {
                            self.conflicting = true;
                            tracing::warn!(
                                bot_id = self.bot_id,
                                description = %description,
                                "Telegram answered 409 Conflict: a second poller uses this bot's \
                                 token (another botvisor instance, or another program)"
                            );
                        }
                        self.retry(format!("409 Conflict: {description}"))
                    }
                    e => self.retry(crate::mask::error_line(&e)),
                });
            }
        };
        self.conflicting = false;
        if raw.is_empty() {
            self.to_confirm = None;
            if !timeout.is_zero() && started.elapsed() < timeout / 2 {
                // A long poll that came back empty at once (a server going down does that):
                // never poll again without a pause.
                return Err(self.stall());
            }
            return Ok(None);
        }
        Ok(Some(raw))
    }

    /// Stores what [`Self::fetch`] brought and buffers the updates stored anew.
    async fn store_fetched(&mut self, raw: Vec<RawUpdate>) -> Result<(), StepError> {
        let mut rows = Vec::with_capacity(raw.len());
        let mut parsed = Vec::with_capacity(raw.len());
        let mut max_id: Option<i64> = None;
        for element in &raw {
            let Element {
                update_id,
                payload,
                update,
            } = read_element(element);
            let Some(update_id) = update_id else {
                // Nothing can be stored or confirmed by id: say it once. A later update's
                // offset confirms it.
                if self.idless_logged.insert(element.text.clone()) {
                    tracing::error!(
                        bot_id = self.bot_id,
                        raw = %truncate(&element.text),
                        "Telegram sent an update without a readable update_id; skipped"
                    );
                }
                continue;
            };
            if (1..i64::MAX).contains(&update_id) {
                max_id = max_id.max(Some(update_id));
            }
            match update {
                Ok(update) => {
                    rows.push(InboxRow {
                        update_id,
                        chat_id: update.chat().map(|c| c.id.0),
                        payload,
                        error: None,
                    });
                    parsed.push((update_id, update));
                }
                Err(error) => {
                    metrics::update_poisoned(
                        self.bot_id,
                        update_id,
                        PoisonedAt::Intake,
                        &error,
                        Some(&truncate(&element.text)),
                    );
                    rows.push(InboxRow {
                        update_id,
                        chat_id: None,
                        payload,
                        error: Some(error),
                    });
                }
            }
        }
        let next_offset = max_id.map(|id| id + 1);
        if !rows.is_empty() {
            // The processor stores the batch (and processes it in the same statement when it
            // can) and answers once it is stored.
            let (answer, stored) = oneshot::channel();
            let fresh = Fresh {
                rows,
                parsed,
                next_offset,
                stored: answer,
            };
            let gone = || "the bot's processor ended".to_string();
            // Replayed updates still buffered (a deferred start replays right before it
            // stores what its first poll brought) go first, so a chat's order holds.
            while let Some(update) = self.buffer.pop_front() {
                if !self.hand_on(Work::Stored(Box::new(update))).await {
                    return Err(self.retry(gone()));
                }
            }
            if !self.hand_on(Work::Fresh(Box::new(fresh))).await {
                return Err(self.retry(gone()));
            }
            let stored = stored
                .await
                .unwrap_or_else(|_| Err(gone()))
                .map_err(|e| self.retry(e))?;
            let inserted = match stored {
                Stored::Stored { inserted, restart } => {
                    if let Some(r) = restart {
                        tracing::warn!(
                            bot_id = self.bot_id,
                            stored_offset = ?r.stored_offset,
                            first_new_id = r.first_new_id,
                            parked = r.parked,
                            "update ids restarted below the stored offset (Telegram does after a week without updates; a fresh sandbox starts at 1): old inbox rows parked, offset reset"
                        );
                    }
                    inserted
                }
                Stored::Blocked(r) => {
                    self.to_confirm = None;
                    return Err(self.retry(format!(
                        "update ids restarted at {} below the stored offset {:?}; waiting for {} updates from before the restart to be processed",
                        r.first_new_id, r.stored_offset, r.unprocessed
                    )));
                }
            };
            metrics::updates_received(self.bot_id, inserted.len() as u64);
        }
        match next_offset {
            Some(next) => {
                self.to_confirm = Some(next);
                self.idless_logged.clear();
                Ok(())
            }
            None => {
                // Nothing here can be confirmed by an offset: the same call would bring the
                // same elements back at once. Wait before asking again.
                self.to_confirm = None;
                Err(self.stall())
            }
        }
    }

    /// Webhook mode: says once that the replay is handed on, then waits for stop or the next
    /// prune (updates come in through the webhook entrance).
    async fn webhook_idle(&mut self) -> Result<(), StepError> {
        if let Some(ready) = self.webhook.as_mut().and_then(Option::take) {
            let _ = ready.send(());
        }
        let next_prune = self
            .next_prune
            .saturating_duration_since(tokio::time::Instant::now());
        self.pause(next_prune).await;
        Ok(())
    }

    /// Deletes the webhook that makes `getUpdates` answer 409 (pending updates are kept).
    async fn delete_webhook(&mut self) -> Result<(), StepError> {
        match self.api.delete_webhook(&self.token).await {
            Ok(()) => {
                tracing::info!(
                    bot_id = self.bot_id,
                    "webhook deleted (pending updates kept); polling"
                );
                Ok(())
            }
            Err(TelegramError::Unauthorized) => Err(StepError::Fatal(RunFailure::Unauthorized)),
            Err(e) => Err(self.retry(format!(
                "cannot delete the webhook: {}",
                crate::mask::error_line(&e)
            ))),
        }
    }

    /// A pause before the next call when the last one brought nothing to confirm.
    fn stall(&mut self) -> StepError {
        let wait = self.backoff.min(STALL_MAX);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        StepError::Wait(wait)
    }

    /// Deletes processed inbox rows past their retention.
    async fn prune(&mut self) -> Result<(), StepError> {
        let mut conn = self
            .db
            .acquire()
            .await
            .map_err(|e| self.retry(crate::mask::error_line(&e)))?;
        let inbox = store::prune_inbox(&mut conn, i64::from(self.inbox_retention_days))
            .await
            .map_err(|e| self.retry(crate::mask::error_line(&e)))?;
        self.next_prune = tokio::time::Instant::now() + self.prune.every;
        if inbox > 0 {
            tracing::info!(bot_id = self.bot_id, inbox, "pruned processed updates");
        }
        Ok(())
    }

    /// The update kinds the bot's enabled modules need.
    fn allowed_updates(&self) -> Vec<&'static str> {
        self.registry.allowed_updates(&self.snapshot.load())
    }

    /// Confirms the stored offset to Telegram, so the next poller does not get these again.
    async fn confirm_offset(&mut self) {
        // Only a stored batch not yet confirmed needs it; everything else is confirmed.
        let Some(offset) = self.to_confirm else {
            return;
        };
        let allowed = self.allowed_updates();
        let confirm = self
            .api
            .get_updates(&self.token, Some(offset), 1, Duration::ZERO, &allowed);
        match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
            Ok(Ok(_)) => tracing::debug!(bot_id = self.bot_id, offset, "offset confirmed"),
            Ok(Err(e)) => {
                tracing::warn!(bot_id = self.bot_id, error = %e, "could not confirm the offset")
            }
            Err(_) => tracing::warn!(bot_id = self.bot_id, "confirming the offset timed out"),
        }
    }
}

enum StepError {
    Fatal(RunFailure),
    Retry(Duration, String),
    /// Wait this long without a warning (the reason was logged already).
    Wait(Duration),
}

/// At most 200 characters of an element, for a log line.
fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}
