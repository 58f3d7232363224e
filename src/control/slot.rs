//! The supervision loop of one bot (a task named `bot-<id>`).
//!
//! Loop: run the bot ([`crate::runtime::run`]) → on a transient failure back off and retry
//! (quarantine when failures come too often) → on a fatal failure (401, database cannot be
//! created, migration failed) wait for a panel change → on a token, database or update-mode
//! change (or a new webhook secret) stop the run completely (its last offset confirmed) and
//! start again with the new spec → on stop write
//! `stopped` and end. Every state goes to `bot_status` with a readable detail. While a run keeps
//! failing to fetch updates (Telegram or the bot's database) it reports the cause through
//! [`RunParts::health`] and the slot writes `degraded` with the cause and since when, then
//! `running` again once fetching works (test `resilience_status::a_failing_database_degrades_the_bot`).
//!
//! Invariants: at most one run of this bot at a time, and a new run for the same token starts
//! only after the previous one (in this slot or a retired slot) has fully ended, so Telegram
//! never sees two pollers (409).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::policy::{Decision, QUARANTINE_COOLDOWN, RestartPolicy};
use super::status::{BotState, StatusReporter};
use crate::content::snapshot::SharedSnapshot;
use crate::runtime::{self, BotSpec, RunParts, SharedDeps, Traffic, Wakes};

/// One bot's supervision loop.
pub struct Slot {
    /// Shared process parts.
    pub deps: SharedDeps,
    /// What to run.
    pub spec: BotSpec,
    /// The hot-swapped content.
    pub snapshot: SharedSnapshot,
    /// Operator wake-ups of the bot's module jobs.
    pub wakes: Wakes,
    /// New specs from the supervisor (the bot's panel row changed).
    pub respec: watch::Receiver<BotSpec>,
    /// Cancelled when the bot is disabled, removed, or the daemon shuts down.
    pub stop: CancellationToken,
    /// Status writer.
    pub status: StatusReporter,
    /// A previous slot still stopping for the same token: wait for it before polling.
    pub previous: Option<CancellationToken>,
    /// Where the supervisor reads this slot's state.
    pub state: Arc<std::sync::Mutex<BotState>>,
}

enum Next {
    Restart,
    Stop,
}

impl Slot {
    fn set_state(&self, s: BotState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// Runs until stopped; see the module docs.
    ///
    /// Takes the slot boxed: an `async fn` keeps its arguments twice in its state (as passed
    /// and as the body's local), so a 432-byte `Slot` by value cost 864 bytes per idle bot.
    pub async fn run(mut self: Box<Self>) {
        let bot_id = self.spec.id;
        if let Some(previous) = self.previous.take() {
            tokio::select! {
                () = previous.cancelled() => {}
                () = self.stop.cancelled() => {}
            }
        }
        let mut policy = RestartPolicy::default();
        loop {
            if self.stop.is_cancelled() {
                break;
            }
            self.set_state(BotState::Starting);
            Box::pin(self.status.set(BotState::Starting, "", None, true)).await;
            let started = Instant::now();
            let run_stop = self.stop.child_token();
            // Boxed, like `pending` below: both live in the slot's state for the whole run.
            let spec = Box::new(self.spec.clone());
            let (outcome, respec) = {
                let status = self.status.clone();
                let state = Arc::clone(&self.state);
                let snapshot = self.snapshot.clone();
                let on_running = async move |username: &str| {
                    *state.lock().unwrap_or_else(|p| p.into_inner()) = BotState::Running;
                    // A running bot's detail is its content's warnings (texts missing, …).
                    let warning = snapshot.load().warning();
                    status
                        .set(BotState::Running, &warning, Some(username), false)
                        .await;
                };
                let (health_tx, mut health) = watch::channel(None::<String>);
                let mut health_open = true;
                let (webhook_tx, mut webhook) = watch::channel(None);
                let mut webhook_open = true;
                let mut degraded_since: Option<chrono::DateTime<chrono::Utc>> = None;
                let traffic = Arc::new(Traffic::default());
                let every =
                    Duration::from_secs(self.deps.settings.supervisor.traffic_interval_secs);
                let mut tally = tokio::time::interval_at(Instant::now() + every, every);
                tally.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // What was written last: unchanged figures (an idle bot's zeros) are not
                // written again.
                let mut written: Option<(i32, i32)> = None;
                let parts = RunParts {
                    snapshot: self.snapshot.clone(),
                    wakes: self.wakes.clone(),
                    health: health_tx,
                    webhook: webhook_tx,
                    traffic: Arc::clone(&traffic),
                };
                // Boxed, and so are the status writes awaited beside it: the slot's task holds
                // the run and only the write under way (docs/performance.md, "Idle memory per
                // bot").
                // Boxed straight from the call: a named local would stay in this task's state
                // after the move (a moved-from local keeps its place until its scope ends).
                let mut run = Box::pin(runtime::run(
                    &self.deps,
                    &spec,
                    parts,
                    run_stop.clone(),
                    on_running,
                ));
                tracing::debug!(
                    bot_id,
                    bytes = std::mem::size_of_val(&*run),
                    "bot run: future size"
                );
                let mut pending: Option<Box<BotSpec>> = None;
                let mut orphaned = false;
                let outcome = loop {
                    tokio::select! {
                        r = &mut run => break r,
                        changed = health.changed(), if health_open => {
                            if changed.is_err() {
                                health_open = false;
                                continue;
                            }
                            let cause = health.borrow_and_update().clone();
                            Box::pin(self.report_health(cause, &mut degraded_since)).await;
                        }
                        _ = tally.tick() => {
                            let figures = per_minute(traffic.take(), every);
                            if written != Some(figures) {
                                Box::pin(self.status.traffic(figures.0, figures.1)).await;
                                written = Some(figures);
                            }
                        }
                        changed = webhook.changed(), if webhook_open => {
                            if changed.is_err() {
                                webhook_open = false;
                                continue;
                            }
                            let info = webhook.borrow_and_update().clone();
                            if let Some(info) = info {
                                Box::pin(self.status.webhook(&info)).await;
                            }
                        }
                        changed = self.respec.changed(), if pending.is_none() && !orphaned => {
                            if changed.is_err() {
                                // The supervisor dropped this slot: stop.
                                orphaned = true;
                                run_stop.cancel();
                                continue;
                            }
                            let new = self.respec.borrow_and_update().clone();
                            if needs_restart(&spec, &new) {
                                tracing::info!(bot_id, "token, database or update mode changed; restarting the bot");
                                run_stop.cancel();
                                pending = Some(Box::new(new));
                            } else {
                                self.spec = new;
                            }
                        }
                    }
                };
                (outcome, pending)
            };
            if let Some(new) = respec {
                self.spec = *new;
                policy.reset();
                continue;
            }
            let next = match outcome {
                Ok(()) => {
                    if self.stop.is_cancelled() {
                        break;
                    }
                    Next::Restart
                }
                Err(failure) if failure.is_fatal() => {
                    let state = if failure.is_unauthorized() {
                        BotState::AuthFailed
                    } else {
                        BotState::Failed
                    };
                    self.set_state(state);
                    let detail = crate::mask::error_line(&failure);
                    tracing::error!(bot_id, error = %detail, "bot failed; waiting for a panel change");
                    Box::pin(self.status.set(state, &detail, None, false)).await;
                    self.wait_for_change(None).await
                }
                Err(failure) => {
                    let detail = crate::mask::error_line(&failure);
                    match policy.on_failure(started.elapsed(), Instant::now()) {
                        Decision::Retry(delay) => {
                            self.set_state(BotState::Backoff);
                            tracing::warn!(bot_id, error = %detail, retry_in = ?delay, "bot failed; restarting");
                            let text = format!("{detail} (retrying in {}s)", delay.as_secs());
                            Box::pin(self.status.set(BotState::Backoff, &text, None, false)).await;
                            self.wait_for_change(Some(delay)).await
                        }
                        Decision::Quarantine => {
                            self.set_state(BotState::Quarantined);
                            tracing::error!(bot_id, error = %detail, "bot quarantined after repeated failures");
                            let text = format!(
                                "failing repeatedly, last: {detail}; retrying in {} min or on any \
                                 panel change (e.g. `botvisor bot enable {bot_id}`)",
                                QUARANTINE_COOLDOWN.as_secs() / 60
                            );
                            Box::pin(self.status.set(BotState::Quarantined, &text, None, false))
                                .await;
                            self.wait_for_change(Some(QUARANTINE_COOLDOWN)).await
                        }
                    }
                }
            };
            match next {
                Next::Restart => {}
                Next::Stop => break,
            }
        }
        self.set_state(BotState::Stopped);
        Box::pin(self.status.set(BotState::Stopped, "", None, false)).await;
    }

    /// Writes `degraded` (with the cause and since when) or, once healthy again, `running`.
    async fn report_health(
        &self,
        cause: Option<String>,
        since: &mut Option<chrono::DateTime<chrono::Utc>>,
    ) {
        let bot_id = self.spec.id;
        match cause {
            Some(cause) => {
                let at = *since.get_or_insert_with(chrono::Utc::now);
                self.set_state(BotState::Degraded);
                tracing::warn!(bot_id, error = %cause, since = %at, "bot degraded: fetching updates keeps failing");
                let detail = format!(
                    "fetching updates failing since {}: {cause}",
                    at.format("%Y-%m-%d %H:%M:%S UTC")
                );
                self.status
                    .set(BotState::Degraded, &detail, None, false)
                    .await;
            }
            None => {
                if since.take().is_some() {
                    tracing::info!(bot_id, "fetching updates works again");
                }
                self.set_state(BotState::Running);
                self.status.set(BotState::Running, "", None, false).await;
            }
        }
    }

    /// Waits for a new spec (panel change), the optional delay, or stop.
    async fn wait_for_change(&mut self, delay: Option<std::time::Duration>) -> Next {
        let sleep = async {
            match delay {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = self.stop.cancelled() => Next::Stop,
            () = sleep => Next::Restart,
            changed = self.respec.changed() => match changed {
                Ok(()) => {
                    self.spec = self.respec.borrow_and_update().clone();
                    Next::Restart
                }
                Err(_) => Next::Stop,
            },
        }
    }
}

fn needs_restart(old: &BotSpec, new: &BotSpec) -> bool {
    old.token != new.token
        || old.database != new.database
        || old.db_server != new.db_server
        || old.webhook != new.webhook
}

/// Counts over `every`, scaled to a minute (rounded; saturating).
fn per_minute((updates, sent): (u64, u64), every: Duration) -> (i32, i32) {
    let scale = |n: u64| {
        let v = (n as f64 * 60.0 / every.as_secs_f64().max(1.0)).round();
        if v >= f64::from(i32::MAX) {
            i32::MAX
        } else {
            v as i32
        }
    };
    (scale(updates), scale(sent))
}
