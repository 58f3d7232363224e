//! The supervisor: keeps the set of running bots equal to the panel's enabled bots.
//!
//! Loop ([`Supervisor::run`]): LISTEN on `bots_changed` / `reload_config` / `bot_wake`
//! (registered before the first load), then reconcile desired (panel rows) against running
//! (slots) — fully at start, after every listener reconnect and every `resync_interval`; for
//! just the named bots on each notification (a burst of notifications is coalesced into one
//! pass). NOTIFY is only a hint: a lost notification is repaired by the next full pass.
//!
//! A pass loads the rows, asks the pure planner ([`plan::plan`]) for actions and carries them
//! out; the control plane never calls Telegram (a run keeps its own command list in step with
//! its snapshot). Per bot: start new/enabled bots; stop disabled or removed ones; hand a changed row
//! to its slot (a token or database change restarts the run there, with the old poller fully
//! stopped first); reload manifest + texts when their fingerprint changed or a reload was
//! asked for — a validated snapshot swapped atomically, the poller untouched; an invalid one
//! keeps the previous snapshot and says why in `bot_status`.
//!
//! Panel outages: a failed pass (or LISTEN connection) is retried with a capped backoff from
//! inside the loop, so the loop keeps turning — its heartbeat, which feeds systemd's watchdog,
//! says the loop is alive, not that the panel answers — and running bots keep serving
//! however long the outage lasts (test `resilience_panel::watchdog_and_bots_survive_a_panel_outage`).
//! One warning at most every [`OUTAGE_LOG_EVERY`]; `STATUS=` says the panel is unreachable.
//!
//! Instances: any number of `serve` processes share a panel. Every
//! [`ownership::PASS_EVERY`] the loop runs an ownership pass ([`ownership`]): heartbeat, fair
//! share by rendezvous hashing, advisory locks on a dedicated control connection; only owned
//! bots run here, and only an owned bot's slot writes its `bot_status` row. A bot that is now
//! another instance's share is handed over: its run stops completely (offset confirmed)
//! before its lock is released. When the control connection fails, the instance fences: every
//! bot it owned stops at once, status writes first (tests in `resilience_instances`). A lone
//! instance (no other live one at its latest pass) keeps serving through a panel outage
//! instead, as issue 13 promised, and takes its locks back on reconnect (see
//! docs/architecture.md, "Several instances").

pub mod ownership;
pub mod plan;
pub mod policy;
pub mod slot;
pub mod status;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::content::manifest::{Manifest, ManifestError};
use crate::content::snapshot::{Fingerprint, SharedSnapshot, Snapshot};
use crate::crypto::{Keyring, secret_aad};
use crate::modules::Registry;
use crate::panel::listener::{PanelEvent, PanelListener};
use crate::panel::{BotRecord, PanelError, SecretRecord, TextRecord, store};
use crate::runtime::inbox::webhook::{WebhookSecret, WebhookSpec};
use crate::runtime::{BotSpec, SharedDeps, Wakes};
use crate::settings::UpdateMode;
use crate::tasks::Tasks;
use crate::telemetry::metrics;
use crate::token::BotToken;
use plan::{Action, Asked, Desired, Running, Scope};
use slot::Slot;
use status::{BotState, StatusBatch, StatusReporter};

/// How long to keep collecting notifications after the first one before reconciling.
const COALESCE: Duration = Duration::from_millis(5);
/// First delay before retrying a pass that failed (panel unreachable); doubled up to
/// [`RETRY_MAX`].
const RETRY_START: Duration = Duration::from_secs(1);
/// Longest delay between attempts to reach the panel.
const RETRY_MAX: Duration = Duration::from_secs(15);
/// At most one warning per this long while the panel stays unreachable.
pub const OUTAGE_LOG_EVERY: Duration = Duration::from_secs(30);

/// Errors that stop the supervisor (the panel cannot be reached at start).
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The first LISTEN or load failed.
    #[error("cannot reach the panel database")]
    Panel(#[from] PanelError),
    /// LISTEN failed.
    #[error("cannot LISTEN on the panel database")]
    Listen(#[source] sqlx::Error),
}

/// Counts of bots by state, for systemd's STATUS and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BotCounts {
    /// Slots that exist (enabled bots).
    pub total: usize,
    /// Polling.
    pub running: usize,
    /// Starting or backing off.
    pub starting: usize,
    /// Waiting for a panel change.
    pub failed: usize,
    /// Running, but fetching updates keeps failing.
    pub degraded: usize,
    /// Running in webhook mode and asleep: idle, holding no run (counted in `running` too;
    /// docs/webhooks.md, "Dormant bots").
    pub dormant: usize,
    /// The panel cannot be reached right now (bots keep running).
    pub panel_unreachable: bool,
    /// Live instances sharing the panel at the latest ownership pass (this one included).
    pub instances: usize,
    /// Bots whose ownership lock this instance holds.
    pub owned: usize,
}

/// What the latest ownership pass found, for `/readyz` ("the instance owns what it should").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnershipHealth {
    /// When the latest successful ownership pass ended (`None`: none yet).
    pub passed_at: Option<tokio::time::Instant>,
    /// Bots in this instance's fair share ([`ownership::assign`]).
    pub assigned: usize,
    /// Bots of the share whose lock this instance does not hold, lowest ids first.
    pub unowned: Vec<i64>,
    /// Since when the share has not been fully held (`None`: it is).
    pub short_since: Option<tokio::time::Instant>,
    /// Another live instance uses this instance's name (this one owns nothing).
    pub name_clash: bool,
    /// The panel server's lock table was full at the latest pass (docs/operations.md,
    /// "Thousands of bots").
    pub lock_table_full: bool,
}

struct SlotHandle {
    token: BotToken,
    version: i64,
    fingerprint: Fingerprint,
    snapshot: SharedSnapshot,
    wakes: Wakes,
    respec: tokio::sync::watch::Sender<BotSpec>,
    stop: CancellationToken,
    done: CancellationToken,
    state: Arc<Mutex<BotState>>,
    writing: Arc<AtomicBool>,
}

/// What one pass must look at.
#[derive(Debug, Default)]
struct Pending {
    full: bool,
    bots: BTreeSet<i64>,
    reload: BTreeSet<i64>,
    reload_all: bool,
    wake: Vec<(i64, String)>,
}

impl Pending {
    fn add(&mut self, event: PanelEvent) {
        match event {
            PanelEvent::BotChanged(id) => {
                self.bots.insert(id);
            }
            PanelEvent::Reload(Some(id)) => {
                self.reload.insert(id);
            }
            PanelEvent::Reload(None) => self.reload_all = true,
            PanelEvent::Wake(id, module) => {
                if !self.wake.contains(&(id, module.clone())) {
                    self.wake.push((id, module));
                }
            }
            PanelEvent::Resync => self.full = true,
        }
    }

    fn is_empty(&self) -> bool {
        !self.full
            && self.bots.is_empty()
            && self.reload.is_empty()
            && !self.reload_all
            && self.wake.is_empty()
    }
}

/// Builds a bot's content snapshot from its panel rows, with its modules' sections.
pub fn build_snapshot(
    registry: &Registry,
    bot: &BotRecord,
    texts: Vec<TextRecord>,
) -> Result<Snapshot, ManifestError> {
    let manifest = Manifest::from_value(&bot.manifest.0)?;
    let texts = texts.into_iter().map(|t| (t.key, t.lang, t.value));
    registry.load(Snapshot::new(
        bot.config_fingerprint(),
        bot.name.clone(),
        manifest,
        texts,
    ))
}

/// Opens a bot's sealed secrets for its snapshot; the error names the secret that cannot be
/// opened (wrong key, altered row), never a value.
pub fn open_secrets(
    keys: &Keyring,
    secrets: &[SecretRecord],
) -> Result<Vec<(String, secrecy::SecretString)>, String> {
    secrets
        .iter()
        .map(|s| {
            keys.open_string(&secret_aad(s.bot_id, &s.name), &s.sealed)
                .map(|v| (s.name.clone(), v))
                .map_err(|e| format!("secret {:?}: {}", s.name, crate::mask::error_line(&e)))
        })
        .collect()
}

/// Bookkeeping of a panel outage: backoff and rate-limited logging.
#[derive(Debug, Default)]
struct Outage {
    since: Option<tokio::time::Instant>,
    last_log: Option<tokio::time::Instant>,
    delay: Option<Duration>,
    attempts: u64,
}

impl Outage {
    /// Records a failed attempt; returns the delay before the next one.
    fn failed(&mut self, error: &(dyn std::error::Error + 'static)) -> Duration {
        let now = tokio::time::Instant::now();
        let since = *self.since.get_or_insert(now);
        self.attempts += 1;
        let delay = self.delay.map_or(RETRY_START, |d| (d * 2).min(RETRY_MAX));
        self.delay = Some(delay);
        if self.last_log.is_none_or(|t| now - t >= OUTAGE_LOG_EVERY) {
            self.last_log = Some(now);
            tracing::warn!(
                error = %crate::mask::error_line(error),
                attempts = self.attempts,
                down_for = ?(now - since),
                retry_in = ?delay,
                "panel database unreachable; running bots keep serving, retrying"
            );
        }
        delay
    }

    /// Records a successful attempt.
    fn recovered(&mut self) {
        if let Some(since) = self.since {
            tracing::info!(down_for = ?since.elapsed(), attempts = self.attempts, "panel database reachable again");
        }
        *self = Self::default();
    }
}

/// The host name written to `instances.host`.
fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Whether process `pid` on this host has ended (no such process, or a zombie).
pub(crate) fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state == 'Z' || state == 'X'),
    }
}

/// The next panel event, or never while there is no LISTEN connection.
async fn next_event(listener: &mut Option<PanelListener>) -> PanelEvent {
    match listener {
        Some(l) => l.next().await,
        None => std::future::pending().await,
    }
}

/// The reconcile loop and the running set.
pub struct Supervisor {
    deps: SharedDeps,
    panel: PgPool,
    tasks: Tasks,
    instance: Arc<str>,
    host: String,
    ownership: ownership::Ownership,
    handing_over: HashMap<i64, CancellationToken>,
    slots: HashMap<i64, SlotHandle>,
    retiring: HashMap<BotToken, CancellationToken>,
    retired_by_id: HashMap<i64, CancellationToken>,
    config_errors: HashMap<i64, Fingerprint>,
    counts: tokio::sync::watch::Sender<BotCounts>,
    ownership_health: tokio::sync::watch::Sender<OwnershipHealth>,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
    reload_tx: mpsc::Sender<()>,
    reload_rx: mpsc::Receiver<()>,
    heartbeat: tokio::sync::watch::Sender<tokio::time::Instant>,
    /// What the per-bot state gauges say, and when they were last refreshed.
    gauges: StateGauges,
    /// Every bot's state writes, batched.
    statuses: Arc<StatusBatch>,
}

/// The per-bot state gauges as last exported ([`metrics::bot_state`]).
#[derive(Default)]
struct StateGauges {
    states: HashMap<i64, &'static str>,
    refreshed: Option<tokio::time::Instant>,
    /// Bots asleep when what the allocator holds was last logged, and when that was.
    released: Option<(usize, tokio::time::Instant)>,
}

/// Shortest time between two logs of what the allocator holds.
const MEMORY_LOG_EVERY: Duration = Duration::from_secs(10);

/// How often every bot's state gauge is set again although it did not change, so that series
/// of live bots never reach the metrics idle timeout (a removed bot's do).
const STATE_GAUGE_REFRESH: Duration = Duration::from_secs(5);

impl Supervisor {
    /// A supervisor over `panel`, spawning bot slots into `tasks`.
    pub fn new(deps: SharedDeps, panel: PgPool, tasks: Tasks) -> Self {
        let instance: Arc<str> = deps.settings.instance_name().into();
        let (reload_tx, reload_rx) = mpsc::channel(1);
        let deps_panel = panel.clone();
        let statuses = StatusBatch::new(panel.clone(), Arc::clone(&instance), tasks.clone());
        Self {
            statuses,
            reload_tx,
            reload_rx,
            heartbeat: tokio::sync::watch::channel(tokio::time::Instant::now()).0,
            deps,
            panel,
            tasks,
            instance,
            host: host_name(),
            ownership: ownership::Ownership::new(deps_panel),
            handing_over: HashMap::new(),
            slots: HashMap::new(),
            retiring: HashMap::new(),
            retired_by_id: HashMap::new(),
            config_errors: HashMap::new(),
            counts: tokio::sync::watch::channel(BotCounts::default()).0,
            ownership_health: tokio::sync::watch::channel(OwnershipHealth::default()).0,
            ready: None,
            gauges: StateGauges::default(),
        }
    }

    /// Counts of bots by state, updated after every pass and on every slot change.
    pub fn counts(&self) -> tokio::sync::watch::Receiver<BotCounts> {
        self.counts.subscribe()
    }

    /// What the latest ownership pass found (updated after every successful pass).
    pub fn ownership_health(&self) -> tokio::sync::watch::Receiver<OwnershipHealth> {
        self.ownership_health.subscribe()
    }

    /// The time of the reconcile loop's latest turn (at least every second while it is
    /// healthy); systemd's watchdog is fed only while it moves.
    pub fn heartbeat(&self) -> tokio::sync::watch::Receiver<tokio::time::Instant> {
        self.heartbeat.subscribe()
    }

    /// A sender that asks for a reload of every bot (SIGHUP, `systemctl reload`).
    pub fn reload_sender(&self) -> mpsc::Sender<()> {
        self.reload_tx.clone()
    }

    /// A signal fired once the first full reconcile finished.
    pub fn ready(&mut self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.ready = Some(tx);
        rx
    }

    /// Who this instance is in `instances`.
    pub fn instance_beat(&self) -> store::InstanceBeat<'_> {
        store::InstanceBeat {
            name: &self.instance,
            pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
            host: &self.host,
        }
    }

    /// Runs until `shutdown`; bots stop with it (their tokens are children of it). Never
    /// fails: an unreachable panel is retried (see the module docs).
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), SupervisorError> {
        let mut listener: Option<PanelListener> = None;
        let mut pending = Pending {
            full: true,
            ..Pending::default()
        };
        let mut outage = Outage::default();
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut resync = tokio::time::interval(self.deps.settings.resync_interval());
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await;
        let mut beat = tokio::time::interval(ownership::PASS_EVERY);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        beat.tick().await;
        let mut connected = false;
        let mut refresh = tokio::time::interval(Duration::from_secs(1));
        loop {
            let needed = listener.is_none() || !connected || !pending.is_empty();
            if retry_at.is_none() && needed {
                match self
                    .attempt(&mut listener, &mut pending, &mut connected, &shutdown)
                    .await
                {
                    Ok(()) => {
                        outage.recovered();
                        self.set_panel_unreachable(false);
                        if let Some(ready) = self.ready.take() {
                            let _ = ready.send(());
                        }
                    }
                    Err(e) => {
                        let delay = outage.failed(&*e);
                        retry_at = Some(tokio::time::Instant::now() + delay);
                        self.set_panel_unreachable(true);
                    }
                }
            }
            let retry = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                event = next_event(&mut listener) => {
                    tracing::debug!(?event, "panel event");
                    pending.add(event);
                    // Coalesce a burst: take whatever else arrives right away.
                    while let Ok(event) = tokio::time::timeout(COALESCE, next_event(&mut listener)).await {
                        tracing::debug!(?event, "panel event");
                        pending.add(event);
                    }
                }
                () = retry => retry_at = None,
                _ = resync.tick() => pending.full = true,
                Some(()) = self.reload_rx.recv() => pending.reload_all = true,
                _ = beat.tick(), if retry_at.is_none() && connected => {
                    match self.ownership_step(&mut pending).await {
                        Ok(()) => {
                            outage.recovered();
                            self.set_panel_unreachable(false);
                        }
                        Err(e) => {
                            connected = false;
                            let delay = outage.failed(&e);
                            retry_at = Some(tokio::time::Instant::now() + delay);
                            self.set_panel_unreachable(true);
                        }
                    }
                }
                _ = refresh.tick() => {
                    self.publish_counts();
                    self.heartbeat.send_replace(tokio::time::Instant::now());
                }
            }
        }
        // Hand-over on shutdown: every run stops completely (offset confirmed) before the
        // control connection, and with it every lock, goes away.
        let done: Vec<CancellationToken> = self.slots.values().map(|s| s.done.clone()).collect();
        for slot in self.slots.values() {
            slot.stop.cancel();
        }
        let all_done = async {
            for d in done.iter().chain(self.handing_over.values()) {
                d.cancelled().await;
            }
        };
        if tokio::time::timeout(self.deps.settings.shutdown_deadline(), all_done)
            .await
            .is_err()
        {
            tracing::warn!("bots still stopping at the shutdown deadline; releasing their locks");
        }
        drop(self.ownership);
        Ok(())
    }

    /// One attempt at the panel: LISTEN (before any load, so nothing falls in between), the
    /// ownership pass, then the pending pass over the owned bots.
    async fn attempt(
        &mut self,
        listener: &mut Option<PanelListener>,
        pending: &mut Pending,
        connected: &mut bool,
        shutdown: &CancellationToken,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if listener.is_none() {
            *listener = Some(PanelListener::connect(&self.panel).await?);
            pending.full = true;
        }
        if !*connected {
            self.ownership_step(pending).await?;
            *connected = true;
            pending.full = true;
        } else if pending
            .bots
            .iter()
            .any(|id| !self.ownership.owned().contains(id) && !self.handing_over.contains_key(id))
        {
            // A bot nobody here owns changed — most often a bot just added: the ownership pass
            // runs now rather than at its next beat, so a new bot answers within its start
            // instead of up to a beat (1 s) later (bench `add_to_answer_*`).
            if let Err(e) = self.ownership_step(pending).await {
                *connected = false;
                return Err(e.into());
            }
        }
        let work = std::mem::take(pending);
        if let Err(e) = self.reconcile(&work, shutdown).await {
            *pending = work;
            pending.full = true;
            return Err(e.into());
        }
        Ok(())
    }

    /// One ownership pass: locks of finished hand-overs released, heartbeat, share; bots
    /// newly owned are queued for the next reconcile, bots to hand over are stopped. On a
    /// control connection error, fences (see [`Self::fence`]).
    async fn ownership_step(
        &mut self,
        pending: &mut Pending,
    ) -> Result<(), ownership::OwnershipError> {
        let finished: Vec<i64> = self
            .handing_over
            .iter()
            .filter(|(_, done)| done.is_cancelled())
            .map(|(id, _)| *id)
            .collect();
        if !finished.is_empty() {
            if let Err(e) = self.ownership.release(&finished).await {
                self.fence(&e);
                return Err(e);
            }
            for id in &finished {
                self.handing_over.remove(id);
                tracing::info!(bot_id = *id, "bot handed over: run stopped, lock released");
            }
        }
        let running: BTreeSet<i64> = self.slots.keys().copied().collect();
        let me = store::InstanceBeat {
            name: &self.instance,
            pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
            host: &self.host,
        };
        let outcome = match self.ownership.pass(&me, &running).await {
            Ok(o) => o,
            Err(e) => {
                self.fence(&e);
                return Err(e);
            }
        };
        for id in &outcome.lost {
            tracing::warn!(
                bot_id = *id,
                "another instance owns this bot now; stopping it here"
            );
            if let Some(slot) = self.slots.get(id) {
                slot.writing.store(false, Ordering::Release);
            }
            self.stop_slot(*id);
        }
        for id in &outcome.give {
            tracing::info!(bot_id = *id, "handing the bot over to another instance");
            self.stop_slot(*id);
            let done = self.retiring_done(*id);
            self.handing_over.insert(*id, done);
        }
        if !outcome.taken.is_empty() {
            tracing::info!(bots = outcome.taken.len(), "took ownership of bots");
            pending.bots.extend(outcome.taken.iter().copied());
        }
        let owned = self.ownership.owned().len();
        let now = tokio::time::Instant::now();
        self.ownership_health.send_modify(|h| {
            let short = outcome.name_clash || !outcome.unowned.is_empty();
            h.short_since = if short {
                h.short_since.or(Some(now))
            } else {
                None
            };
            h.passed_at = Some(now);
            h.assigned = outcome.assigned;
            h.unowned.clone_from(&outcome.unowned);
            h.name_clash = outcome.name_clash;
            h.lock_table_full = outcome.lock_table_full;
        });
        metrics::instances(outcome.instances);
        self.counts.send_if_modified(|c| {
            let changed = c.instances != outcome.instances || c.owned != owned;
            c.instances = outcome.instances;
            c.owned = owned;
            changed
        });
        Ok(())
    }

    /// The token cancelled once bot `id`'s last slot ended (already cancelled if none runs).
    fn retiring_done(&self, id: i64) -> CancellationToken {
        self.retired_by_id.get(&id).cloned().unwrap_or_else(|| {
            let t = CancellationToken::new();
            t.cancel();
            t
        })
    }

    /// The control connection failed: its session, and every lock with it, is gone. With
    /// another live instance around, stop every bot at once — status writes first, so a
    /// stopping run never overwrites the new owner's row — before anyone else may take them.
    /// Alone, keep serving (issue 13's outage promise) and take the locks back on reconnect.
    fn fence(&mut self, error: &ownership::OwnershipError) {
        self.handing_over.clear();
        if self.slots.is_empty() {
            return;
        }
        if !self.ownership.had_peers() {
            tracing::warn!(
                error = %crate::mask::error_line(error),
                bots = self.slots.len(),
                "control connection to the panel lost while no other instance was live; bots \
                 keep serving and their locks are taken back on reconnect"
            );
            return;
        }
        for slot in self.slots.values() {
            slot.writing.store(false, Ordering::Release);
        }
        let ids: Vec<i64> = self.slots.keys().copied().collect();
        tracing::error!(
            error = %crate::mask::error_line(error),
            bots = ids.len(),
            "control connection to the panel lost: fencing, every bot of this instance stops \
             now (another instance may take them)"
        );
        for id in ids {
            self.stop_slot(id);
        }
    }

    fn set_panel_unreachable(&self, down: bool) {
        self.counts.send_if_modified(|c| {
            let changed = c.panel_unreachable != down;
            c.panel_unreachable = down;
            changed
        });
    }

    fn publish_counts(&mut self) {
        let old = *self.counts.borrow();
        let mut c = BotCounts {
            total: self.slots.len(),
            panel_unreachable: old.panel_unreachable,
            instances: old.instances,
            owned: old.owned,
            dormant: self.deps.webhooks.asleep(),
            ..BotCounts::default()
        };
        for slot in self.slots.values() {
            match *slot.state.lock().unwrap_or_else(|p| p.into_inner()) {
                BotState::Running => c.running += 1,
                BotState::Degraded => {
                    c.running += 1;
                    c.degraded += 1;
                }
                BotState::Starting | BotState::Backoff => c.starting += 1,
                BotState::Failed | BotState::AuthFailed | BotState::Quarantined => c.failed += 1,
                BotState::Stopped => {}
            }
        }
        self.counts.send_if_modified(|old| {
            let changed = *old != c;
            *old = c;
            changed
        });
        self.export_states();
    }

    /// Sets the state gauges: bots by state, and each bot's own (every change at once, and
    /// every [`STATE_GAUGE_REFRESH`] all of them; a bot gone from the slots is set to 0 and
    /// left to the idle timeout).
    fn export_states(&mut self) {
        let now = tokio::time::Instant::now();
        let refresh = self
            .gauges
            .refreshed
            .is_none_or(|t| now.duration_since(t) >= STATE_GAUGE_REFRESH);
        if refresh {
            self.gauges.refreshed = Some(now);
        }
        let mut by_state: Vec<(&'static str, usize)> = Vec::new();
        for (&id, slot) in &self.slots {
            let state = slot
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_str();
            match by_state.iter_mut().find(|(s, _)| *s == state) {
                Some((_, n)) => *n += 1,
                None => by_state.push((state, 1)),
            }
            let old = self.gauges.states.insert(id, state);
            if refresh || old != Some(state) {
                metrics::bot_state(id, old, Some(state));
            }
        }
        let slots = &self.slots;
        self.gauges.states.retain(|&id, state| {
            let kept = slots.contains_key(&id);
            if !kept {
                metrics::bot_state(id, Some(*state), None);
            }
            kept
        });
        metrics::bots_by_state(&by_state);
        let asleep = self.counts.borrow().dormant;
        metrics::bots_dormant(asleep);
        self.release_memory(asleep, now);
    }

    /// After more bots fell asleep (each freed its run), logs what the allocator holds (debug
    /// level), at most every [`MEMORY_LOG_EVERY`]: the pages they freed go back to the system
    /// over jemalloc's decay time (`crate::memory`).
    fn release_memory(&mut self, asleep: usize, now: tokio::time::Instant) {
        match self.gauges.released {
            Some((before, at)) if asleep <= before || now.duration_since(at) < MEMORY_LOG_EVERY => {
                // Fewer asleep: count from there, so the next that fall asleep log again.
                if asleep < before {
                    self.gauges.released = Some((asleep, at));
                }
            }
            None if asleep == 0 => {}
            _ => {
                if let Some(m) = crate::memory::stats() {
                    tracing::debug!(
                        asleep,
                        allocated = m.allocated,
                        active = m.active,
                        resident = m.resident,
                        metadata = m.metadata,
                        "memory held by the allocator"
                    );
                }
                self.gauges.released = Some((asleep, now));
            }
        }
    }

    /// One pass: load the rows in scope, plan, carry the plan out.
    async fn reconcile(
        &mut self,
        work: &Pending,
        shutdown: &CancellationToken,
    ) -> Result<(), PanelError> {
        tracing::debug!(?work, "reconcile");
        let started = tokio::time::Instant::now();
        let passed = self.reconcile_pass(work, shutdown).await;
        metrics::reconcile_took(started.elapsed());
        passed
    }

    async fn reconcile_pass(
        &mut self,
        work: &Pending,
        shutdown: &CancellationToken,
    ) -> Result<(), PanelError> {
        self.retiring.retain(|_, done| !done.is_cancelled());
        self.retired_by_id.retain(|_, done| !done.is_cancelled());
        let (scope, rows) = if work.full || work.reload_all {
            (Scope::All, store::list_bots(&self.panel).await?)
        } else {
            let ids: BTreeSet<i64> = work.bots.union(&work.reload).copied().collect();
            let mut rows = Vec::with_capacity(ids.len());
            for &id in &ids {
                match store::get_bot(&self.panel, id).await {
                    Ok(bot) => rows.push(bot),
                    Err(PanelError::BotNotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            (Scope::Only(ids), rows)
        };
        let desired: Vec<Desired> = rows.iter().map(|b| desired(b, &self.deps.keys)).collect();
        let running: BTreeMap<i64, Running> = self
            .slots
            .iter()
            .map(|(id, s)| {
                let r = Running {
                    version: s.version,
                    fingerprint: s.fingerprint,
                };
                (*id, r)
            })
            .collect();
        let asked = Asked {
            reload_all: work.reload_all,
            reload: work.reload.clone(),
            wake: work.wake.clone(),
        };
        let rows: HashMap<i64, BotRecord> = rows.into_iter().map(|b| (b.id, b)).collect();
        let owned = self.ownership.owned().clone();
        let actions = plan::plan(&scope, &desired, &running, &asked, &owned);
        // The content of every bot this pass starts, read in two statements rather than two
        // per bot: a cold start of 1,000 bots spawned 150 slots a second reading them one by
        // one (docs/performance.md, "Cold start of 1,000 bots").
        let starting: Vec<i64> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Start(id) => Some(*id),
                _ => None,
            })
            .collect();
        let mut contents = store::list_contents(&self.panel, &starting).await?;
        for action in actions {
            tracing::debug!(?action, "plan");
            // A long pass that makes progress is a loop that turns.
            self.heartbeat.send_replace(tokio::time::Instant::now());
            match action {
                Action::Stop(id) => self.stop_slot(id),
                Action::Reject(id, reason) => {
                    self.status(id, Arc::new(AtomicBool::new(true)))
                        .set(BotState::Failed, &reason, None, false)
                        .await;
                }
                Action::Start(id) => {
                    let content = contents.remove(&id).unwrap_or_default();
                    self.start_slot(&rows[&id], content, shutdown).await?
                }
                Action::Respec(id) => self.respec(&rows[&id]).await?,
                Action::Reload(id) => self.reload(&rows[&id]).await?,
                Action::Wake(id, module) => {
                    if let Some(slot) = self.slots.get(&id) {
                        slot.wakes.wake(&module);
                    }
                }
            }
        }
        self.publish_counts();
        Ok(())
    }

    /// A status writer for bot `id` that writes while `writing` is set (this instance owns
    /// the bot).
    fn status(&self, id: i64, writing: Arc<AtomicBool>) -> StatusReporter {
        StatusReporter::new(Arc::clone(&self.statuses), id, writing)
    }

    /// Hands a changed row to its slot; a token or database change restarts the run there,
    /// with the old poller fully stopped first.
    async fn respec(&mut self, bot: &BotRecord) -> Result<(), PanelError> {
        if !self.slots.contains_key(&bot.id) {
            return Ok(());
        }
        let Ok(token) = bot.open_token(&self.deps.keys) else {
            return Ok(());
        };
        let webhook = match self.webhook_spec(bot).await? {
            Ok(w) => w,
            Err(reason) => {
                tracing::error!(bot_id = bot.id, error = %reason, "cannot run the bot in webhook mode; stopping it");
                // Taken before the slot goes: only the owner writes the bot's status.
                let writing = self.slots.get(&bot.id).map(|s| Arc::clone(&s.writing));
                self.stop_slot(bot.id);
                self.status(bot.id, writing.unwrap_or_default())
                    .set(BotState::Failed, &reason, None, false)
                    .await;
                return Ok(());
            }
        };
        let Some(slot) = self.slots.get_mut(&bot.id) else {
            return Ok(());
        };
        slot.version = bot.version;
        slot.token = token.clone();
        slot.respec.send_replace(spec(bot, token, webhook));
        Ok(())
    }

    /// The webhook a bot in webhook mode keeps set (`Ok(None)`: polling); makes and stores
    /// its secret when it has none (new, or cleared by a token change) or it cannot be opened.
    /// `Ok(Err)` says why the bot cannot run in webhook mode.
    async fn webhook_spec(
        &self,
        bot: &BotRecord,
    ) -> Result<Result<Option<WebhookSpec>, String>, PanelError> {
        let settings = &self.deps.settings;
        let mode = match bot.mode.as_deref() {
            None => settings.default_mode(),
            Some(m) => match UpdateMode::parse(m) {
                Some(mode) => mode,
                None => {
                    return Ok(Err(format!(
                        "unknown update mode {m:?} in the panel (bots.mode): set it with \
                         `botvisor bot set-mode {} webhook|polling|default`",
                        bot.id
                    )));
                }
            },
        };
        if mode == UpdateMode::Polling {
            return Ok(Ok(None));
        }
        let (Some(url), None) = (settings.webhook_url(bot.id), settings.webhook_unavailable())
        else {
            let reason = settings
                .webhook_unavailable()
                .unwrap_or("webhook mode needs http.public_url");
            return Ok(Err(format!("{reason}; or switch the bot to polling")));
        };
        let aad = crate::panel::webhook_secret_aad(bot.id);
        let stored = bot.webhook_secret_sealed.as_deref().and_then(|sealed| {
            use secrecy::ExposeSecret;
            let opened = self.deps.keys.open_string(&aad, sealed).ok()?;
            WebhookSecret::from_stored(opened.expose_secret().to_owned())
        });
        let secret = match stored {
            Some(secret) => secret,
            None => {
                let secret = WebhookSecret::generate();
                let sealed = self
                    .deps
                    .keys
                    .seal(&aad, secret.expose().as_bytes())
                    .map_err(PanelError::Key)?;
                let stored = store::store_webhook_secret(
                    &self.panel,
                    bot.id,
                    bot.webhook_secret_sealed.as_deref(),
                    &sealed,
                )
                .await?;
                tracing::info!(bot_id = bot.id, stored, "new webhook secret");
                secret
            }
        };
        Ok(Ok(Some(WebhookSpec {
            url,
            secret,
            max_connections: settings.telegram.webhook_max_connections,
        })))
    }

    /// Loads a bot's content (manifest, texts, secrets) into a validated snapshot; `Ok(Err)`
    /// says why the content is not usable.
    async fn content(&self, bot: &BotRecord) -> Result<Result<Snapshot, String>, PanelError> {
        let texts = store::list_texts(&self.panel, bot.id).await?;
        let secrets = store::list_secrets(&self.panel, bot.id).await?;
        Ok(self.snapshot_of(bot, texts, &secrets))
    }

    /// A validated snapshot of `bot` with these texts and secrets, or why it is not usable.
    fn snapshot_of(
        &self,
        bot: &BotRecord,
        texts: Vec<TextRecord>,
        secrets: &[SecretRecord],
    ) -> Result<Snapshot, String> {
        build_snapshot(&self.deps.registry, bot, texts)
            .map_err(|e| e.to_string())
            .and_then(|mut snapshot| {
                snapshot.set_secrets(open_secrets(&self.deps.keys, secrets)?);
                Ok(snapshot)
            })
    }

    /// Rebuilds a running bot's snapshot; an invalid one keeps the previous snapshot and says
    /// why in `bot_status`. The run re-syncs its own commands from the new snapshot.
    async fn reload(&mut self, bot: &BotRecord) -> Result<(), PanelError> {
        let built = self.content(bot).await?;
        let Some(writing) = self.slots.get(&bot.id).map(|s| Arc::clone(&s.writing)) else {
            return Ok(());
        };
        let status = self.status(bot.id, writing);
        let Some(slot) = self.slots.get_mut(&bot.id) else {
            return Ok(());
        };
        slot.fingerprint = bot.config_fingerprint();
        match built {
            Ok(snapshot) => {
                // A running bot's detail shows the new snapshot's warnings (texts missing in
                // the default language, …), or clears an earlier one; other states keep the
                // detail their failure wrote.
                let warning = snapshot.warning();
                slot.snapshot.store(snapshot);
                tracing::info!(bot_id = bot.id, "configuration reloaded");
                let state = *slot.state.lock().unwrap_or_else(|p| p.into_inner());
                if state == BotState::Running {
                    status.set(state, &warning, None, false).await;
                }
            }
            Err(e) => {
                tracing::warn!(bot_id = bot.id, error = %e, "invalid configuration; keeping the previous one");
                let state = *slot.state.lock().unwrap_or_else(|p| p.into_inner());
                let detail = format!("{e}; still using the previous configuration");
                status.set(state, &detail, None, false).await;
            }
        }
        Ok(())
    }

    /// Starts a slot for a new bot (its first snapshot, of these texts and secrets, must be
    /// valid).
    async fn start_slot(
        &mut self,
        bot: &BotRecord,
        (texts, secrets): (Vec<TextRecord>, Vec<SecretRecord>),
        shutdown: &CancellationToken,
    ) -> Result<(), PanelError> {
        let Ok(token) = bot.open_token(&self.deps.keys) else {
            return Ok(());
        };
        let built = self.snapshot_of(bot, texts, &secrets);
        let writing = Arc::new(AtomicBool::new(true));
        let status = self.status(bot.id, Arc::clone(&writing));
        let snapshot = match built {
            Ok(s) => s,
            Err(e) => {
                // Without a valid first snapshot the bot cannot answer; a later change retries.
                // Written once per configuration, not on every resync.
                let fingerprint = bot.config_fingerprint();
                if self.config_errors.insert(bot.id, fingerprint) != Some(fingerprint) {
                    status.set(BotState::Failed, &e, None, false).await;
                }
                return Ok(());
            }
        };
        let webhook = match self.webhook_spec(bot).await? {
            Ok(w) => w,
            Err(reason) => {
                let fingerprint = bot.config_fingerprint();
                if self.config_errors.insert(bot.id, fingerprint) != Some(fingerprint) {
                    tracing::error!(bot_id = bot.id, error = %reason, "cannot run the bot in webhook mode");
                    status.set(BotState::Failed, &reason, None, false).await;
                }
                return Ok(());
            }
        };
        self.config_errors.remove(&bot.id);
        let fingerprint = snapshot.fingerprint;
        let snapshot = SharedSnapshot::new(snapshot);
        // Everything a sleeping bot keeps is made here, at once, rather than in its first run
        // (docs/webhooks.md, "Dormant bots").
        let wakes = Wakes::with_jobs(self.deps.registry.modules().iter().map(|m| m.name()));
        let spec = spec(bot, token.clone(), webhook);
        let doorbell = slot::doorbell_for(&spec, None);
        metrics::bot_series(bot.id);
        let (tx, rx) = tokio::sync::watch::channel(spec.clone());
        let stop = shutdown.child_token();
        let done = CancellationToken::new();
        let state = Arc::new(Mutex::new(BotState::Starting));
        let slot = Slot {
            deps: self.deps.clone(),
            spec,
            snapshot: snapshot.clone(),
            wakes: wakes.clone(),
            respec: rx,
            stop: stop.clone(),
            status,
            previous: self.retiring.get(&token).cloned(),
            state: Arc::clone(&state),
            activity: Arc::default(),
            doorbell,
        };
        let done_guard = done.clone().drop_guard();
        // A root span: created in the supervisor's task, it would otherwise show `task=supervisor`
        // on every line of the bot.
        let span = tracing::info_span!(parent: None, "bot", bot_id = bot.id, telegram_bot = %token.bot_user_id());
        // `map`, not an async block around `slot.run().await`: the block would store the slot
        // twice (its capture and the run's `self`) and the run's future beside it.
        let task = Box::new(slot)
            .run()
            .map(move |()| drop(done_guard))
            .instrument(span);
        // What every bot holds for its slot's task, asleep or not (docs/performance.md).
        tracing::debug!(
            bot_id = bot.id,
            bytes = std::mem::size_of_val(&task),
            "slot: future size"
        );
        self.tasks.spawn(format!("bot-{}", bot.id), task);
        self.slots.insert(
            bot.id,
            SlotHandle {
                token,
                version: bot.version,
                fingerprint,
                snapshot,
                wakes,
                respec: tx,
                stop,
                done,
                state,
                writing,
            },
        );
        Ok(())
    }

    fn stop_slot(&mut self, id: i64) {
        self.config_errors.remove(&id);
        if let Some(slot) = self.slots.remove(&id) {
            tracing::info!(bot_id = id, "stopping bot");
            slot.stop.cancel();
            self.retired_by_id.insert(id, slot.done.clone());
            self.retiring.insert(slot.token, slot.done);
        }
    }
}

/// What the planner needs of a panel row.
fn desired(bot: &BotRecord, keys: &Keyring) -> Desired {
    Desired {
        id: bot.id,
        enabled: bot.enabled,
        version: bot.version,
        fingerprint: bot.config_fingerprint(),
        invalid_token: bot.open_token(keys).err(),
    }
}

fn spec(bot: &BotRecord, token: BotToken, webhook: Option<WebhookSpec>) -> BotSpec {
    BotSpec {
        id: bot.id,
        name: bot.name.clone(),
        token,
        database: bot.database.clone(),
        db_server: bot.db_server.clone(),
        webhook,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_process_is_not_gone_and_an_absent_one_is() {
        assert!(!process_gone(i32::try_from(std::process::id()).unwrap()));
        assert!(process_gone(i32::MAX));
    }

    #[test]
    fn outage_backoff_doubles_to_the_cap_and_resets_on_recovery() {
        let mut outage = Outage::default();
        let e = || PanelError::BotNotFound(1);
        let delays: Vec<u64> = (0..7).map(|_| outage.failed(&e()).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 15, 15, 15]);
        outage.recovered();
        assert_eq!(outage.failed(&e()), RETRY_START);
    }
}
