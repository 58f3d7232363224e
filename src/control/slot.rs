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
use crate::runtime::inbox::webhook::{self, Doorbell};
use crate::runtime::{
    self, BotSpec, Ended, Resume, RunFailure, RunParts, SharedDeps, Traffic, Wakes,
};

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
    /// Counts what happens in the bot's runs (tells a bot falling asleep that an update came
    /// in meanwhile); made with the slot, like everything a sleeping bot keeps.
    pub activity: Arc<std::sync::atomic::AtomicU64>,
    /// Webhook mode: the bell its route holds while it sleeps ([`doorbell_for`]).
    pub doorbell: Option<Arc<Doorbell>>,
}

enum Next {
    Restart,
    Stop,
}

/// What a sleeping bot's webhook check found.
enum Checked {
    /// Set (or the check failed and is tried again later).
    InPlace,
    /// Telegram lost it, or it points elsewhere: wake to set it again.
    Lost,
    /// The token was revoked (or the bot left webhook mode): restart from scratch.
    Revoked,
}

/// What follows a run.
enum Step {
    Next(Next),
    /// Sleep until the deadline (if any), or until something needs a run.
    Doze(Option<Instant>),
}

/// How a dormant bot's wait ended.
enum Woken {
    /// Run again, taking over what the last run learned.
    Resume,
    /// Run again from scratch (the spec changed, or the token was revoked).
    Restart,
    Stop,
}

impl Slot {
    fn set_state(&self, s: BotState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// Takes a new spec; a new webhook secret (or mode) brings a new bell.
    fn set_spec(&mut self, new: BotSpec) {
        self.doorbell = doorbell_for(&new, self.doorbell.take());
        self.spec = new;
    }

    /// Takes the bot's bell out of its webhook route, if it is there.
    fn close_asleep(&self) {
        if let Some(doorbell) = &self.doorbell {
            self.deps.webhooks.close_asleep(self.spec.id, doorbell);
        }
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
        // A dormant bot's run to come: what the last one learned.
        let mut resume: Option<Resume> = None;
        loop {
            if self.stop.is_cancelled() {
                break;
            }
            // Wakes from here on reach the run's jobs; a dormant bot waits only for later ones.
            self.wakes.clear();
            if resume.is_none() {
                self.set_state(BotState::Starting);
                Box::pin(self.status.set(BotState::Starting, "", None, true)).await;
            }
            let started = Instant::now();
            let run_stop = self.stop.child_token();
            // The run is boxed with what a live run needs beside it (its status, health and
            // webhook reports, the traffic tally, spec changes): held only while it runs, so a
            // bot asleep keeps the slot's own state alone (docs/performance.md, "Dormant
            // bots"). Its outcome lives in this block only: the sleep below does not hold it
            // beside what it keeps of it.
            let step = {
                let (outcome, respec) = Box::pin(self.supervise(resume.take(), run_stop)).await;
                // Unless the bot is asleep, its route holds no bell: a resumed run that failed
                // before it opened its entrance leaves one.
                if respec.is_some() || !matches!(outcome, Ok(Ended::Dormant(_))) {
                    self.close_asleep();
                }
                if let Some(new) = respec {
                    self.set_spec(*new);
                    policy.reset();
                    continue;
                }
                match outcome {
                    Ok(Ended::Dormant(dormancy)) => {
                        let disturbed = dormancy.disturbed();
                        let until = dormancy.until;
                        resume = Some(dormancy.resume);
                        if disturbed {
                            // An update came in as the run fell asleep: run again at once.
                            Step::Next(Next::Restart)
                        } else {
                            Step::Doze(until)
                        }
                    }
                    Ok(Ended::Stopped) => {
                        if self.stop.is_cancelled() {
                            break;
                        }
                        Step::Next(Next::Restart)
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
                        Step::Next(self.wait_for_change(None).await)
                    }
                    Err(failure) => {
                        let detail = crate::mask::error_line(&failure);
                        match policy.on_failure(started.elapsed(), Instant::now()) {
                            Decision::Retry(delay) => {
                                self.set_state(BotState::Backoff);
                                tracing::warn!(bot_id, error = %detail, retry_in = ?delay, "bot failed; restarting");
                                let text = format!("{detail} (retrying in {}s)", delay.as_secs());
                                Box::pin(self.status.set(BotState::Backoff, &text, None, false))
                                    .await;
                                Step::Next(self.wait_for_change(Some(delay)).await)
                            }
                            Decision::Quarantine => {
                                self.set_state(BotState::Quarantined);
                                tracing::error!(bot_id, error = %detail, "bot quarantined after repeated failures");
                                let text = format!(
                                    "failing repeatedly, last: {detail}; retrying in {} min or on any \
                                 panel change (e.g. `botvisor bot enable {bot_id}`)",
                                    QUARANTINE_COOLDOWN.as_secs() / 60
                                );
                                Box::pin(self.status.set(
                                    BotState::Quarantined,
                                    &text,
                                    None,
                                    false,
                                ))
                                .await;
                                Step::Next(self.wait_for_change(Some(QUARANTINE_COOLDOWN)).await)
                            }
                        }
                    }
                }
            };
            let next = match step {
                Step::Next(next) => next,
                // Not boxed: a box made as the run ends would land among its freed memory and
                // keep those pages resident while the bot sleeps.
                Step::Doze(until) => {
                    let kept = resume
                        .as_mut()
                        .expect("a sleeping bot keeps what it learned");
                    match self.doze(until, kept).await {
                        Woken::Resume => Next::Restart,
                        Woken::Restart => {
                            resume = None;
                            self.close_asleep();
                            policy.reset();
                            Next::Restart
                        }
                        Woken::Stop => {
                            self.close_asleep();
                            Next::Stop
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

    /// One run, watched: its health, webhook and traffic reports written to the status, spec
    /// changes taken (one that needs a restart stops the run and is returned).
    async fn supervise(
        &mut self,
        resume: Option<Resume>,
        run_stop: CancellationToken,
    ) -> (Result<Ended, RunFailure>, Option<Box<BotSpec>>) {
        let bot_id = self.spec.id;
        // Boxed, like `pending` below: both live in the slot's state for the whole
        // run (and only for it: a bot asleep keeps nothing of its last run).
        let spec = Box::new(self.spec.clone());
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
        let every = Duration::from_secs(self.deps.settings.supervisor.traffic_interval_secs);
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
            resume,
            activity: Arc::clone(&self.activity),
            doorbell: self.doorbell.clone(),
        };
        // Pinned in place: this whole step is boxed by the slot and lives as long as the run;
        // the status writes awaited beside it are boxed, so it holds only the write under way
        // (docs/performance.md, "Idle memory per bot").
        let mut run = std::pin::pin!(runtime::run(
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
                        // Same webhook: the same bell.
                        self.spec = new;
                    }
                }
            }
        };
        (outcome, pending)
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

    /// A dormant bot (docs/webhooks.md, "Dormant bots"): holds no run until a webhook request
    /// rings, the earliest deadline of the last run's parts passes, an operator wakes a job,
    /// the content or the spec changes, or stop; checks `getWebhookInfo` meanwhile as the run
    /// would (reported to the status; a webhook Telegram lost wakes the bot to set it again).
    async fn doze(&mut self, until: Option<Instant>, resume: &mut Resume) -> Woken {
        let bot_id = self.spec.id;
        let Some(doorbell) = self.doorbell.clone() else {
            return Woken::Restart;
        };
        let mut content = self.snapshot.subscribe();
        content.mark_unchanged();
        let wake_at = until.map(|at| at.checked_sub(runtime::doze::WAKE_AHEAD).unwrap_or(at));
        let mut check_at = resume
            .kept
            .as_ref()
            .map_or_else(Instant::now, |k| k.next_check);
        // What the checks said last (a fingerprint): written to the status only when it changes.
        let mut reported = None;
        let woken = loop {
            // One timer: the deadline or the next webhook check, whichever comes first.
            let next = wake_at.map_or(check_at, |w| w.min(check_at));
            tokio::select! {
                () = self.stop.cancelled() => break Woken::Stop,
                () = doorbell.rung() => {
                    tracing::debug!(bot_id, "a webhook request wakes the bot");
                    break Woken::Resume;
                }
                () = self.wakes.any() => break Woken::Resume,
                _ = content.changed() => break Woken::Resume,
                changed = self.respec.changed() => {
                    if changed.is_err() {
                        break Woken::Stop;
                    }
                    let new = self.respec.borrow_and_update().clone();
                    if needs_restart(&self.spec, &new) {
                        tracing::info!(bot_id, "token, database or update mode changed; restarting the bot");
                        self.close_asleep();
                        self.set_spec(new);
                        break Woken::Restart;
                    }
                    self.spec = new;
                }
                () = tokio::time::sleep_until(next) => {
                    if wake_at.is_some_and(|w| Instant::now() >= w) {
                        break Woken::Resume;
                    }
                    check_at = Instant::now() + webhook::CHECK_EVERY;
                    // Boxed: the sleeping state holds only its waits.
                    match Box::pin(self.check_asleep(&mut reported)).await {
                        Checked::InPlace => {}
                        Checked::Lost => {
                            resume.kept = None;
                            break Woken::Resume;
                        }
                        Checked::Revoked => break Woken::Restart,
                    }
                }
            }
        };
        if let Some(kept) = &mut resume.kept {
            kept.next_check = check_at;
        }
        woken
    }

    /// A sleeping bot's `getWebhookInfo`: written to the status when it changed (`reported`
    /// is the fingerprint of what was written last).
    async fn check_asleep(&self, reported: &mut Option<u64>) -> Checked {
        let Some(spec) = &self.spec.webhook else {
            return Checked::Revoked;
        };
        match webhook::look(&self.deps.api, &self.spec.token, self.spec.id, spec).await {
            webhook::Look::Seen(state, in_place) => {
                let seen = Some(state.fingerprint());
                if *reported != seen {
                    self.status.webhook(&state).await;
                    *reported = seen;
                }
                if in_place {
                    Checked::InPlace
                } else {
                    Checked::Lost
                }
            }
            webhook::Look::Revoked => Checked::Revoked,
            // Logged by the check; tried again at the next.
            webhook::Look::Failed => Checked::InPlace,
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
                    let new = self.respec.borrow_and_update().clone();
                    self.set_spec(new);
                    Next::Restart
                }
                Err(_) => Next::Stop,
            },
        }
    }
}

/// The bell of a bot with `spec`: none in polling mode, `kept` if it opens to the spec's
/// secret, a new one otherwise.
pub fn doorbell_for(spec: &BotSpec, kept: Option<Arc<Doorbell>>) -> Option<Arc<Doorbell>> {
    let secret = &spec.webhook.as_ref()?.secret;
    match kept {
        Some(d) if d.is_for(secret) => Some(d),
        _ => Some(Arc::new(Doorbell::new(secret.clone()))),
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
