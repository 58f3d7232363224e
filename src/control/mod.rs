//! The supervisor: keeps the set of running bots equal to the panel's enabled bots.
//!
//! Loop ([`Supervisor::run`]): LISTEN on `bots_changed` / `reload_config` (registered before the
//! first load), then reconcile desired (panel rows) against running (slots) — fully at start,
//! after every listener reconnect and every `resync_interval`; for just the named bots on each
//! notification (a burst of notifications is coalesced into one pass). NOTIFY is only a hint:
//! a lost notification is repaired by the next full pass.
//!
//! Reconcile per bot: start new/enabled bots; stop disabled or removed ones; hand a changed row
//! to its slot (a token or database change restarts the run there, with the old poller fully
//! stopped first); reload manifest + texts when their fingerprint changed or a reload was
//! asked for — a validated snapshot swapped atomically, the poller untouched; an invalid one
//! keeps the previous snapshot and says why in `bot_status`.

pub mod policy;
pub mod slot;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::content::snapshot::{BotConfig, SharedConfig};
use crate::panel::listener::{PanelEvent, PanelListener};
use crate::panel::{BotRecord, PanelError, store};
use crate::runtime::{BotSpec, SharedDeps, sync_commands};
use crate::tasks::Tasks;
use crate::token::BotToken;
use slot::{Slot, SlotState, StatusReporter};

/// How long to keep collecting notifications after the first one before reconciling.
const COALESCE: Duration = Duration::from_millis(5);
/// Delay before retrying a reconcile that failed (panel unreachable).
const RETRY_RECONCILE: Duration = Duration::from_secs(2);

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
}

type ConfigFingerprint = (i64, i64, Option<chrono::DateTime<chrono::Utc>>);

struct SlotHandle {
    token: BotToken,
    version: i64,
    fingerprint: ConfigFingerprint,
    config: SharedConfig,
    respec: tokio::sync::watch::Sender<BotSpec>,
    stop: CancellationToken,
    done: CancellationToken,
    state: Arc<Mutex<SlotState>>,
}

/// What one pass must look at.
#[derive(Debug, Default)]
struct Pending {
    full: bool,
    bots: BTreeSet<i64>,
    reload: BTreeSet<i64>,
    reload_all: bool,
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
            PanelEvent::Resync => self.full = true,
        }
    }
}

/// The reconcile loop and the running set.
pub struct Supervisor {
    deps: SharedDeps,
    panel: PgPool,
    tasks: Tasks,
    instance: Arc<str>,
    slots: HashMap<i64, SlotHandle>,
    retiring: HashMap<BotToken, CancellationToken>,
    config_errors: HashMap<i64, ConfigFingerprint>,
    counts: tokio::sync::watch::Sender<BotCounts>,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
    reload_tx: mpsc::Sender<()>,
    reload_rx: mpsc::Receiver<()>,
    heartbeat: tokio::sync::watch::Sender<tokio::time::Instant>,
}

impl Supervisor {
    /// A supervisor over `panel`, spawning bot slots into `tasks`.
    pub fn new(deps: SharedDeps, panel: PgPool, tasks: Tasks) -> Self {
        let instance: Arc<str> = deps.settings.instance_name().into();
        let (reload_tx, reload_rx) = mpsc::channel(1);
        Self {
            reload_tx,
            reload_rx,
            heartbeat: tokio::sync::watch::channel(tokio::time::Instant::now()).0,
            deps,
            panel,
            tasks,
            instance,
            slots: HashMap::new(),
            retiring: HashMap::new(),
            config_errors: HashMap::new(),
            counts: tokio::sync::watch::channel(BotCounts::default()).0,
            ready: None,
        }
    }

    /// Counts of bots by state, updated after every pass and on every slot change.
    pub fn counts(&self) -> tokio::sync::watch::Receiver<BotCounts> {
        self.counts.subscribe()
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

    /// Runs until `shutdown`; bots stop with it (their tokens are children of it).
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), SupervisorError> {
        let mut listener = PanelListener::connect(&self.panel)
            .await
            .map_err(SupervisorError::Listen)?;
        let mut pending = Pending {
            full: true,
            ..Pending::default()
        };
        let mut resync = tokio::time::interval(self.deps.settings.resync_interval());
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await;
        let mut refresh = tokio::time::interval(Duration::from_secs(1));
        loop {
            if pending.full
                || !pending.bots.is_empty()
                || !pending.reload.is_empty()
                || pending.reload_all
            {
                let work = std::mem::take(&mut pending);
                if let Err(e) = self.reconcile(&work, &shutdown).await {
                    tracing::warn!(error = %crate::mask::error_line(&e), "reconcile failed; retrying");
                    pending = work;
                    pending.full = true;
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(RETRY_RECONCILE) => continue,
                    }
                }
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(());
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                event = listener.next() => {
                    tracing::debug!(?event, "panel event");
                    pending.add(event);
                    // Coalesce a burst: take whatever else arrives right away.
                    while let Ok(event) = tokio::time::timeout(COALESCE, listener.next()).await {
                        tracing::debug!(?event, "panel event");
                        pending.add(event);
                    }
                }
                _ = resync.tick() => pending.full = true,
                Some(()) = self.reload_rx.recv() => pending.reload_all = true,
                _ = refresh.tick() => {
                    self.publish_counts();
                    self.heartbeat.send_replace(tokio::time::Instant::now());
                }
            }
        }
        for slot in self.slots.values() {
            slot.stop.cancel();
        }
        Ok(())
    }

    fn publish_counts(&self) {
        let mut c = BotCounts {
            total: self.slots.len(),
            ..BotCounts::default()
        };
        for slot in self.slots.values() {
            match *slot.state.lock().unwrap_or_else(|p| p.into_inner()) {
                SlotState::Running => c.running += 1,
                SlotState::Starting | SlotState::Backoff => c.starting += 1,
                SlotState::Failed => c.failed += 1,
            }
        }
        self.counts.send_if_modified(|old| {
            let changed = *old != c;
            *old = c;
            changed
        });
    }

    async fn reconcile(
        &mut self,
        work: &Pending,
        shutdown: &CancellationToken,
    ) -> Result<(), PanelError> {
        tracing::debug!(?work, "reconcile");
        self.retiring.retain(|_, done| !done.is_cancelled());
        if work.full || work.reload_all {
            let bots = store::list_bots(&self.panel).await?;
            let present: BTreeSet<i64> = bots.iter().map(|b| b.id).collect();
            let gone: Vec<i64> = self
                .slots
                .keys()
                .filter(|id| !present.contains(id))
                .copied()
                .collect();
            for id in gone {
                self.stop_slot(id);
            }
            for bot in &bots {
                let force_reload = work.reload_all || work.reload.contains(&bot.id);
                self.apply(bot, force_reload, shutdown).await?;
            }
        } else {
            let ids: BTreeSet<i64> = work.bots.union(&work.reload).copied().collect();
            for id in ids {
                match store::get_bot(&self.panel, id).await {
                    Ok(bot) => {
                        self.apply(&bot, work.reload.contains(&id), shutdown)
                            .await?
                    }
                    Err(PanelError::BotNotFound(_)) => self.stop_slot(id),
                    Err(e) => return Err(e),
                }
            }
        }
        self.publish_counts();
        Ok(())
    }

    /// Brings one bot's slot in line with its panel row.
    async fn apply(
        &mut self,
        bot: &BotRecord,
        force_reload: bool,
        shutdown: &CancellationToken,
    ) -> Result<(), PanelError> {
        if !bot.enabled {
            self.stop_slot(bot.id);
            return Ok(());
        }
        let token = match BotToken::parse(&bot.token) {
            Ok(t) => t,
            Err(e) => {
                self.stop_slot(bot.id);
                let status =
                    StatusReporter::new(self.panel.clone(), Arc::clone(&self.instance), bot.id);
                status.set("failed", &e.to_string(), None, false).await;
                return Ok(());
            }
        };
        let spec = BotSpec {
            id: bot.id,
            name: bot.name.clone(),
            token: token.clone(),
            database: bot.database.clone(),
        };
        if let Some(slot) = self.slots.get_mut(&bot.id) {
            if slot.version != bot.version {
                slot.version = bot.version;
                if slot.token != token {
                    // The old token's poller stops inside the slot before the new one starts.
                    slot.token = token;
                }
                slot.respec.send_replace(spec);
            }
            if force_reload || slot.fingerprint != bot.config_fingerprint() {
                let texts = store::list_texts(&self.panel, bot.id).await?;
                let status =
                    StatusReporter::new(self.panel.clone(), Arc::clone(&self.instance), bot.id);
                match BotConfig::build(bot, texts) {
                    Ok(config) => {
                        let manifest = config.manifest.clone();
                        let commands_changed = slot.config.load().manifest.commands
                            != manifest.commands
                            || slot.config.load().manifest.main_menu.is_some()
                                != manifest.main_menu.is_some();
                        slot.fingerprint = config.fingerprint;
                        slot.config.store(config);
                        tracing::info!(bot_id = bot.id, "configuration reloaded");
                        if commands_changed {
                            let bot_client = self.deps.api.bot(&slot.token);
                            let id = bot.id;
                            self.tasks.spawn(format!("bot-{id}-commands"), async move {
                                sync_commands(&bot_client, id, &manifest).await;
                            });
                        }
                    }
                    Err(e) => {
                        slot.fingerprint = bot.config_fingerprint();
                        tracing::warn!(bot_id = bot.id, error = %e, "invalid configuration; keeping the previous one");
                        let state = match *slot.state.lock().unwrap_or_else(|p| p.into_inner()) {
                            SlotState::Running => "running",
                            SlotState::Starting => "starting",
                            SlotState::Backoff => "backoff",
                            SlotState::Failed => "failed",
                        };
                        let detail = format!("{e}; still using the previous configuration");
                        status.set(state, &detail, None, false).await;
                    }
                }
            }
            return Ok(());
        }
        // A new slot.
        let texts = store::list_texts(&self.panel, bot.id).await?;
        let status = StatusReporter::new(self.panel.clone(), Arc::clone(&self.instance), bot.id);
        let config = match BotConfig::build(bot, texts) {
            Ok(c) => c,
            Err(e) => {
                // Without a valid first snapshot the bot cannot answer; a later change retries.
                // Written once per configuration, not on every resync.
                let fingerprint = bot.config_fingerprint();
                if self.config_errors.insert(bot.id, fingerprint) != Some(fingerprint) {
                    status.set("failed", &e.to_string(), None, false).await;
                }
                return Ok(());
            }
        };
        self.config_errors.remove(&bot.id);
        let fingerprint = config.fingerprint;
        let config = SharedConfig::new(config);
        let (tx, rx) = tokio::sync::watch::channel(spec.clone());
        let stop = shutdown.child_token();
        let done = CancellationToken::new();
        let state = Arc::new(Mutex::new(SlotState::Starting));
        let slot = Slot {
            deps: self.deps.clone(),
            spec,
            config: config.clone(),
            respec: rx,
            stop: stop.clone(),
            status,
            previous: self.retiring.get(&token).cloned(),
            state: Arc::clone(&state),
        };
        let done_guard = done.clone().drop_guard();
        let span = tracing::info_span!("bot", bot_id = bot.id, telegram_bot = %token.bot_user_id());
        self.tasks.spawn(
            format!("bot-{}", bot.id),
            async move {
                let _done = done_guard;
                slot.run().await;
            }
            .instrument(span),
        );
        self.slots.insert(
            bot.id,
            SlotHandle {
                token,
                version: bot.version,
                fingerprint,
                config,
                respec: tx,
                stop,
                done,
                state,
            },
        );
        Ok(())
    }

    fn stop_slot(&mut self, id: i64) {
        self.config_errors.remove(&id);
        if let Some(slot) = self.slots.remove(&id) {
            tracing::info!(bot_id = id, "stopping bot");
            slot.stop.cancel();
            self.retiring.insert(slot.token, slot.done);
        }
    }
}
