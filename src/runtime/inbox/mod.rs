//! The durable update listener: botvisor's replacement for teloxide's polling listener.
//!
//! Loop, as a stream the dispatcher pulls from:
//! 1. replay: unprocessed inbox rows, oldest first, before anything new;
//! 2. fetch: `getUpdates(offset)` as raw JSON; each update is parsed on its own with panics
//!    caught (unparsable ones are stored poisoned and never dispatched);
//! 3. store: the batch and the next offset in one transaction — only then is the offset used
//!    (confirmed) in the next `getUpdates`;
//! 4. yield the newly stored updates.
//!
//! Invariants: an update reaches a handler only after it is in the inbox; the offset stored in
//! the bot database never passes an update that is not stored; on stop the updates already
//! stored are still yielded (the dispatcher drains them), then a last `getUpdates` confirms the
//! offset to Telegram so the next poller for this token starts cleanly. Errors back off
//! (1 s doubling to 30 s, `retry_after` honoured exactly); a 401 is reported as fatal.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::BoxStream;
use teloxide::stop::{StopToken, mk_stop_token};
use teloxide::types::{AllowedUpdate, Update, UpdateKind};
use teloxide::update_listeners::{AsUpdateStream, UpdateListener};
use tokio_util::sync::CancellationToken;

use super::BotFailure;
use crate::botdb::budget::BotPool;
use crate::botdb::store::{self, InboxRow};
use crate::telegram::{ApiCallError, TelegramApi};
use crate::token::BotToken;

/// Updates per getUpdates call (Telegram's maximum).
const BATCH_LIMIT: u8 = 100;
/// Inbox rows loaded per replay page.
const REPLAY_PAGE: i64 = 500;
/// First retry delay after a failed fetch or store.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Time the final confirming getUpdates gets on stop.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);
/// How often processed inbox rows and old history are pruned (also once per run start).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The update types botvisor handles; Telegram sends only these.
pub const ALLOWED_UPDATES: [&str; 3] = ["message", "edited_message", "callback_query"];

/// A failure the listener reports to the bot runtime.
pub type FailureSlot = Arc<Mutex<Option<BotFailure>>>;

/// Records `failure` (the first one wins) and stops the bot run.
pub fn report_failure(slot: &FailureSlot, stop: &CancellationToken, failure: BotFailure) {
    let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
    if guard.is_none() {
        *guard = Some(failure);
    }
    drop(guard);
    stop.cancel();
}

/// The durable listener of one bot run.
pub struct DurableListener {
    api: TelegramApi,
    token: BotToken,
    telegram_id: i64,
    bot_id: i64,
    db: BotPool,
    poll_timeout: Duration,
    stop: CancellationToken,
    failure: FailureSlot,
    stop_token: StopToken,
    buffer: VecDeque<Update>,
    offset: Option<i64>,
    replayed_up_to: Option<i64>,
    backoff: Duration,
    retention: Retention,
    last_prune: Option<tokio::time::Instant>,
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
    /// Retention of processed updates and history.
    pub retention: Retention,
}

/// How long data is kept in the bot database.
#[derive(Clone)]
pub struct Retention {
    /// Days processed inbox rows are kept.
    pub inbox_days: u32,
    /// The bot's settings (its manifest holds `history.retention_days`; 0 keeps forever).
    pub config: crate::content::snapshot::SharedConfig,
}

impl DurableListener {
    /// A listener that stops when `stop` is cancelled and reports fatal errors to `failure`.
    pub fn new(parts: ListenerParts, stop: CancellationToken, failure: FailureSlot) -> Self {
        let (stop_token, _flag) = mk_stop_token();
        Self {
            telegram_id: i64::try_from(parts.token.bot_user_id()).unwrap_or(i64::MAX),
            api: parts.api,
            token: parts.token,
            bot_id: parts.bot_id,
            db: parts.db,
            poll_timeout: parts.poll_timeout,
            stop,
            failure,
            stop_token,
            buffer: VecDeque::new(),
            offset: None,
            replayed_up_to: Some(i64::MIN),
            backoff: BACKOFF_START,
            retention: parts.retention,
            last_prune: None,
        }
    }

    async fn next_update(&mut self) -> Option<Update> {
        loop {
            if let Some(update) = self.buffer.pop_front() {
                return Some(update);
            }
            if self.stop.is_cancelled() {
                self.confirm_offset().await;
                return None;
            }
            let step = if let Some(after) = self.replayed_up_to {
                self.replay_page(after).await
            } else if self.last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                self.prune().await
            } else {
                self.fetch_batch().await
            };
            match step {
                Ok(()) => self.backoff = BACKOFF_START,
                Err(StepError::Fatal(f)) => {
                    report_failure(&self.failure, &self.stop, f);
                    return None;
                }
                Err(StepError::Retry(wait, why)) => {
                    tracing::warn!(bot_id = self.bot_id, error = %why, retry_in = ?wait, "update fetch failed");
                    tokio::select! {
                        () = self.stop.cancelled() => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
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
            .map_err(|e| self.retry(e.to_string()))?;
        if self.offset.is_none() {
            self.offset = store::load_offset(&mut conn, self.telegram_id)
                .await
                .map_err(|e| self.retry(e.to_string()))?;
        }
        let rows = store::pending_updates(&mut conn, self.telegram_id, after, REPLAY_PAGE)
            .await
            .map_err(|e| self.retry(e.to_string()))?;
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
            match parse_update(&payload.to_string()) {
                Ok(update) => self.buffer.push_back(update),
                Err(error) => {
                    tracing::warn!(bot_id = self.bot_id, update_id, %error, "poisoned update");
                    store::mark_poisoned(&mut conn, self.telegram_id, update_id, &error)
                        .await
                        .map_err(|e| self.retry(e.to_string()))?;
                }
            }
        }
        Ok(())
    }

    async fn fetch_batch(&mut self) -> Result<(), StepError> {
        let fetch = self.api.get_updates(
            &self.token,
            self.offset,
            BATCH_LIMIT,
            self.poll_timeout,
            &ALLOWED_UPDATES,
        );
        let raw = tokio::select! {
            () = self.stop.cancelled() => return Ok(()),
            r = fetch => r,
        };
        let raw = match raw {
            Ok(raw) => raw,
            Err(ApiCallError::Unauthorized) => {
                return Err(StepError::Fatal(BotFailure::Unauthorized));
            }
            Err(ApiCallError::RetryAfter(wait)) => {
                return Err(StepError::Retry(wait, "429 Too Many Requests".into()));
            }
            Err(e) => return Err(self.retry(e.to_string())),
        };
        if raw.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::with_capacity(raw.len());
        let mut parsed = Vec::with_capacity(raw.len());
        let mut max_id = None;
        for value in raw {
            let Some(update_id) = value.get("update_id").and_then(serde_json::Value::as_i64) else {
                tracing::error!(
                    bot_id = self.bot_id,
                    "Telegram sent an update without update_id"
                );
                continue;
            };
            max_id = max_id.max(Some(update_id));
            let payload = value.to_string();
            match parse_update(&payload) {
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
                    tracing::warn!(bot_id = self.bot_id, update_id, %error, "poisoned update");
                    rows.push(InboxRow {
                        update_id,
                        chat_id: None,
                        payload,
                        error: Some(error),
                    });
                }
            }
        }
        let Some(max_id) = max_id else {
            return Ok(());
        };
        let next_offset = max_id + 1;
        let mut conn = self
            .db
            .acquire()
            .await
            .map_err(|e| self.retry(e.to_string()))?;
        let inserted = store::store_batch(&mut conn, self.telegram_id, &rows, next_offset)
            .await
            .map_err(|e| self.retry(e.to_string()))?;
        drop(conn);
        self.offset = Some(next_offset);
        let inserted: std::collections::HashSet<i64> = inserted.into_iter().collect();
        self.buffer.extend(
            parsed
                .into_iter()
                .filter(|(id, _)| inserted.contains(id))
                .map(|(_, u)| u),
        );
        Ok(())
    }

    /// Deletes processed inbox rows and history past their retention.
    async fn prune(&mut self) -> Result<(), StepError> {
        let mut conn = self
            .db
            .acquire()
            .await
            .map_err(|e| self.retry(e.to_string()))?;
        let inbox = store::prune_inbox(&mut conn, i64::from(self.retention.inbox_days))
            .await
            .map_err(|e| self.retry(e.to_string()))?;
        let history_days = self.retention.config.load().manifest.history.retention_days;
        let history = if history_days > 0 {
            store::prune_history(&mut conn, i64::from(history_days))
                .await
                .map_err(|e| self.retry(e.to_string()))?
        } else {
            0
        };
        self.last_prune = Some(tokio::time::Instant::now());
        if inbox + history > 0 {
            tracing::info!(bot_id = self.bot_id, inbox, history, "pruned old rows");
        }
        Ok(())
    }

    /// Confirms the stored offset to Telegram, so the next poller does not get these again.
    async fn confirm_offset(&mut self) {
        let Some(offset) = self.offset else { return };
        let confirm = self.api.get_updates(
            &self.token,
            Some(offset),
            1,
            Duration::ZERO,
            &ALLOWED_UPDATES,
        );
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
    Fatal(BotFailure),
    Retry(Duration, String),
}

/// Parses one update on its own, catching the panics some legal updates cause in
/// teloxide-core's deserialisers.
///
/// It parses from text, not from a `serde_json::Value`: teloxide's `UpdateKind` visitor first
/// asks for a borrowed key and, when that fails (as it always does from a `Value`), the key is
/// already consumed and the update comes out as `UpdateKind::Error`.
pub fn parse_update(json: &str) -> Result<Update, String> {
    let result =
        std::panic::catch_unwind(AssertUnwindSafe(|| serde_json::from_str::<Update>(json)));
    match result {
        Ok(Ok(update)) => match &update.kind {
            UpdateKind::Error(raw) => Err(format!(
                "unsupported update: {}",
                truncate(&raw.to_string())
            )),
            _ => Ok(update),
        },
        Ok(Err(e)) => Err(format!("cannot parse update: {e}")),
        Err(panic) => Err(format!(
            "parsing the update panicked: {}",
            panic_message(&panic)
        )),
    }
}

/// The message of a caught panic.
pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

impl UpdateListener for DurableListener {
    type Err = Infallible;

    fn stop_token(&mut self) -> StopToken {
        self.stop_token.clone()
    }

    fn hint_allowed_updates(&mut self, _hint: &mut dyn Iterator<Item = AllowedUpdate>) {
        // We always ask for ALLOWED_UPDATES: our handlers need exactly those.
    }
}

impl<'a> AsUpdateStream<'a> for DurableListener {
    type StreamErr = Infallible;
    type Stream = BoxStream<'a, Result<Update, Infallible>>;

    fn as_stream(&'a mut self) -> Self::Stream {
        Box::pin(futures::stream::unfold(self, |this| async move {
            let update = this.next_update().await?;
            Some((Ok(update), this))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_updates_one_by_one_and_reports_bad_ones() {
        let good = r#"{"update_id": 5, "message": {"message_id": 1, "date": 0,
            "chat": {"id": 7, "type": "private", "first_name": "A"},
            "from": {"id": 7, "is_bot": false, "first_name": "A"}, "text": "/start"}}"#;
        let update = parse_update(good).unwrap();
        assert_eq!(update.id.0, 5);
        assert_eq!(update.chat().map(|c| c.id.0), Some(7));
        let cases = [
            (
                r#"{"update_id": 6, "message": {"message_id": "x"}}"#,
                "update",
            ),
            (r#"{"update_id": 7}"#, "unsupported update"),
            ("not json", "cannot parse"),
        ];
        for (json, needle) in cases {
            let err = parse_update(json).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }
}
