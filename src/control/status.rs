//! Bot states, and the writer of `bot_status` rows.
//!
//! Only the instance that owns a bot writes its row: each slot's reporter has its own flag,
//! switched off when the instance fences (its control connection, and so its lock, is gone)
//! or finds another instance holding the bot; then it writes nothing.
//!
//! State writes of all bots go through one [`StatusBatch`]: the writes that wait while one
//! statement is under way go out together in the next (`store::upsert_statuses`), and a
//! write that failed is kept and written again — with the next write of any bot, or by a
//! retry task — unless a later state of the same bot replaced it. A cold start of 1,000 bots
//! makes 2,000 state writes within seconds; one statement each timed out on the panel pool
//! and left bots shown `starting` while they ran (test
//! `status_writes_of_many_bots_at_once_are_all_written`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;

use crate::panel::store::{self, StatusUpdate};
use crate::tasks::Tasks;

/// First wait before a failed state write is tried again; it doubles up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two tries of failed state writes.
const RETRY_MAX: Duration = Duration::from_secs(30);

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

/// The state writes of every bot of this process (see the module docs).
pub struct StatusBatch {
    panel: PgPool,
    instance: Arc<str>,
    tasks: Tasks,
    pending: std::sync::Mutex<Pending>,
    /// Held by the one write under way.
    turn: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Pending {
    rows: HashMap<i64, Row>,
    next: u64,
    /// A retry task is scheduled.
    retrying: bool,
}

/// A bot's state not written yet.
struct Row {
    /// Which submission it is (a later one of the same bot replaces it).
    seq: u64,
    state: BotState,
    detail: String,
    username: Option<String>,
    started: bool,
    writing: Arc<AtomicBool>,
}

/// What became of a submitted state.
enum Outcome {
    /// Written (or dropped: the instance no longer owns the bot).
    Written,
    /// A later state of the same bot replaced it; that one's writer reports.
    Replaced,
    /// The write failed; it is kept and tried again.
    Failed(crate::panel::PanelError),
    /// Kept for the retry task, which is already waiting to write after a failure.
    Kept,
}

impl StatusBatch {
    /// The batch of `instance`'s state writes to `panel`; retries run in `tasks`.
    pub fn new(panel: PgPool, instance: Arc<str>, tasks: Tasks) -> Arc<Self> {
        Arc::new(Self {
            panel,
            instance,
            tasks,
            pending: std::sync::Mutex::new(Pending::default()),
            turn: tokio::sync::Mutex::new(()),
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `row` for `bot_id`, merged into a state of the same bot not written yet (the
    /// later state wins; a run start and a known username are kept); returns its number.
    fn submit(&self, bot_id: i64, mut row: Row) -> u64 {
        let mut pending = self.pending();
        pending.next += 1;
        row.seq = pending.next;
        if let Some(old) = pending.rows.remove(&bot_id) {
            row.started |= old.started;
            row.username = row.username.or(old.username);
        }
        let seq = row.seq;
        pending.rows.insert(bot_id, row);
        seq
    }

    /// Waits for the write that carries submission `seq` of `bot_id`: the one under way
    /// finishes, then whoever comes next writes everything pending in one statement.
    async fn written(self: &Arc<Self>, bot_id: i64, seq: u64) -> Outcome {
        let _turn = self.turn.lock().await;
        {
            let pending = self.pending();
            match pending.rows.get(&bot_id) {
                None => return Outcome::Written,
                Some(row) if row.seq != seq => return Outcome::Replaced,
                // A write failed a moment ago: the retry task writes this one with the rest,
                // rather than every waiting bot paying the panel's timeout in turn.
                Some(_) if pending.retrying => return Outcome::Kept,
                Some(_) => {}
            }
        }
        match self.write_pending().await {
            Ok(()) => Outcome::Written,
            Err(e) => {
                self.retry_later();
                Outcome::Failed(e)
            }
        }
    }

    /// Writes every pending state in one statement (call with the turn held); on failure
    /// they are pending again, unless a later state of the same bot came meanwhile.
    async fn write_pending(&self) -> Result<(), crate::panel::PanelError> {
        let rows: Vec<(i64, Row)> = self
            .pending()
            .rows
            .drain()
            .filter(|(_, row)| row.writing.load(Ordering::Acquire))
            .collect();
        let updates: Vec<StatusUpdate<'_>> = rows
            .iter()
            .map(|(bot_id, row)| StatusUpdate {
                bot_id: *bot_id,
                instance: &self.instance,
                state: row.state.as_str(),
                detail: &row.detail,
                telegram_username: row.username.as_deref(),
                started: row.started,
            })
            .collect();
        let written = Box::pin(store::upsert_statuses(&self.panel, &updates)).await;
        drop(updates);
        if written.is_err() {
            let mut pending = self.pending();
            for (bot_id, old) in rows {
                match pending.rows.get_mut(&bot_id) {
                    Some(newer) => {
                        newer.started |= old.started;
                        if newer.username.is_none() {
                            newer.username = old.username;
                        }
                    }
                    None => {
                        pending.rows.insert(bot_id, old);
                    }
                }
            }
        }
        written
    }

    /// Schedules one task that writes what failed, with a growing pause, until it is
    /// written (or replaced and written by its bot's next write) or the daemon stops.
    fn retry_later(self: &Arc<Self>) {
        {
            let mut pending = self.pending();
            if pending.retrying {
                return;
            }
            pending.retrying = true;
        }
        let batch = Arc::clone(self);
        let shutdown = self.tasks.shutdown_token();
        self.tasks.spawn("bot-status-retry", async move {
            let mut wait = RETRY_FIRST;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(wait) => {}
                }
                let _turn = batch.turn.lock().await;
                let written = if batch.pending().rows.is_empty() {
                    Ok(())
                } else {
                    batch.write_pending().await
                };
                match written {
                    Ok(()) => {
                        tracing::info!("bot states written after an earlier failure");
                        // Still in the turn: a write waiting for it must not find the flag
                        // set with nobody left to retry.
                        batch.pending().retrying = false;
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?wait, "cannot write bot states");
                        wait = (wait * 2).min(RETRY_MAX);
                    }
                }
            }
            batch.pending().retrying = false;
        });
    }
}

/// Writes a bot's status rows; failures to write are logged, never fatal.
#[derive(Clone)]
pub struct StatusReporter {
    panel: PgPool,
    batch: Arc<StatusBatch>,
    bot_id: i64,
    writing: Arc<AtomicBool>,
}

impl StatusReporter {
    /// A reporter for `bot_id` whose state writes go through `batch`; it writes only while
    /// `writing` is set (this instance owns the bot).
    pub fn new(batch: Arc<StatusBatch>, bot_id: i64, writing: Arc<AtomicBool>) -> Self {
        Self {
            panel: batch.panel.clone(),
            batch,
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
        let seq = self.batch.submit(
            self.bot_id,
            Row {
                seq: 0,
                state,
                detail: detail.to_owned(),
                username: username.map(str::to_owned),
                started,
                writing: Arc::clone(&self.writing),
            },
        );
        match Box::pin(self.batch.written(self.bot_id, seq)).await {
            Outcome::Written if detail.is_empty() => {
                tracing::info!(bot_id = self.bot_id, state = state.as_str(), "bot status")
            }
            Outcome::Written => {
                tracing::info!(
                    bot_id = self.bot_id,
                    state = state.as_str(),
                    detail,
                    "bot status"
                )
            }
            Outcome::Replaced => {}
            Outcome::Kept => tracing::debug!(
                bot_id = self.bot_id,
                state = state.as_str(),
                "bot status kept for the retry of failed writes"
            ),
            Outcome::Failed(e) => {
                tracing::warn!(bot_id = self.bot_id, state = state.as_str(), error = %e, "cannot write bot status; it is written again later")
            }
        }
    }
}
