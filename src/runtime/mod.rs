//! One hosted bot: a single run from provisioning to stop.
//!
//! [`run`] provisions the bot's database (create + migrate; nothing is answered before the
//! migrations are in), checks the token with `getMe`, then runs three things side by side
//! until the run's stop token is cancelled or a failure is reported:
//! - the update intake ([`inbox::DurableListener`]) feeding the unit of work's processor
//!   ([`dispatch::Processor`]) through a bounded channel — in webhook mode the listener only
//!   replays, and the webhook entrance ([`inbox::webhook`]) feeds the same channel while the
//!   run keeps the webhook set;
//! - the companion ([`companion`]): the bot's command list kept in step with its snapshot,
//!   and the module jobs (`bot-<id>-<module>`) started, woken and stopped;
//! - nothing else: restarting, backoff and status belong to the control plane, which talks to
//!   a run only through its stop token, its snapshot and its [`Wakes`].
//!
//! A failure is a typed [`RunFailure`] sent on a channel (the first one wins) by whichever part
//! met it; the run then stops and returns it.
//!
//! In webhook mode one more part, the dozer ([`doze`]), ends an idle run into a dormant state
//! ([`Ended::Dormant`]): the slot then holds no run until something needs one, and starts the
//! next from what this one learned ([`Resume`]).

mod companion;
pub mod dispatch;
pub mod doze;
pub mod inbox;
pub mod outbox;
mod start;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::Either;
use teloxide::prelude::Requester;
use teloxide::types::Me;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::botdb::ServerBudgets;
use crate::botdb::budget::{BotPool, BudgetError};
use crate::botdb::{BotDbError, BotDbTarget};
use crate::content::snapshot::SharedSnapshot;
use crate::modules::{ModuleError, Queued, Quiet, Registry};
use crate::settings::Settings;
use crate::tasks::Tasks;
use crate::telegram::{Messenger, TelegramApi, TelegramError};
use crate::token::BotToken;
use inbox::DurableListener;

/// Stored updates waiting for the processor before the intake waits for it (backpressure:
/// beyond this the intake stops fetching; everything it fetched is in the inbox already).
const INTAKE_QUEUE: usize = 1024;

/// What a bot is, as far as running it goes (from its panel row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotSpec {
    /// Panel id.
    pub id: i64,
    /// Panel name.
    pub name: String,
    /// Validated token.
    pub token: BotToken,
    /// Database override from the panel.
    pub database: Option<String>,
    /// The server its database lives on (`bots.db_server`; `None`: the first configured).
    pub db_server: Option<String>,
    /// Webhook mode: the webhook to keep set (`None`: polling).
    pub webhook: Option<inbox::webhook::WebhookSpec>,
}

/// Why a bot run ended.
#[derive(Debug, thiserror::Error)]
pub enum RunFailure {
    /// The token is invalid or revoked (fatal until it changes).
    #[error(
        "Telegram rejected the token (401 Unauthorized): set a valid token with `botvisor bot set-token`"
    )]
    Unauthorized,
    /// The database could not be resolved, created or migrated.
    #[error("the bot's database is not usable")]
    Database(#[source] BotDbError),
    /// No connection to the bot's database could be had.
    #[error("no connection to the bot's database")]
    Connection(#[source] BudgetError),
    /// A Bot API call failed (network, server error).
    #[error("a Bot API call failed")]
    Telegram(#[source] TelegramError),
    /// Handling an update failed in a way that may pass (the update is replayed).
    #[error("handling an update failed")]
    Update(#[source] ModuleError),
    /// The update stream ended although nobody stopped the run.
    #[error("the update listener ended unexpectedly")]
    ListenerEnded,
}

impl RunFailure {
    /// Whether the bot should wait for a panel change instead of retrying.
    pub fn is_fatal(&self) -> bool {
        match self {
            RunFailure::Unauthorized => true,
            RunFailure::Database(e) => e.is_fatal(),
            _ => false,
        }
    }

    /// Whether the failure is a rejected token.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, RunFailure::Unauthorized)
    }
}

impl From<BotDbError> for RunFailure {
    fn from(e: BotDbError) -> Self {
        RunFailure::Database(e)
    }
}

impl From<TelegramError> for RunFailure {
    fn from(e: TelegramError) -> Self {
        match e {
            TelegramError::Unauthorized => RunFailure::Unauthorized,
            other => RunFailure::Telegram(other),
        }
    }
}

impl From<ModuleError> for RunFailure {
    fn from(e: ModuleError) -> Self {
        if e.is_unauthorized() {
            RunFailure::Unauthorized
        } else {
            RunFailure::Update(e)
        }
    }
}

/// Where the parts of a run report the failure that must end it: the first report wins and
/// stops the run.
///
/// The first failure is kept in a shared slot rather than a channel: a tokio channel allocates
/// its first block of 32 slots when it is created (32 × `RunFailure`, ≈ 3 KiB per run).
#[derive(Debug, Clone)]
pub struct Failures {
    first: Arc<Mutex<Option<RunFailure>>>,
    stop: CancellationToken,
    failed: CancellationToken,
}

impl Failures {
    fn new(stop: CancellationToken) -> (Self, FirstFailure) {
        let first = Arc::new(Mutex::new(None));
        let failed = CancellationToken::new();
        let failures = Self {
            first: Arc::clone(&first),
            stop,
            failed,
        };
        (failures, FirstFailure(first))
    }

    /// Records `failure` (unless one was already reported) and stops the run.
    pub fn report(&self, failure: impl Into<RunFailure>) {
        {
            let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
            if first.is_none() {
                *first = Some(failure.into());
            }
        }
        self.failed.cancel();
        self.stop.cancel();
    }

    /// Cancelled once a failure was reported (a plain stop does not cancel it).
    pub fn failed(&self) -> CancellationToken {
        self.failed.clone()
    }
}

/// The run's end of [`Failures`]: the first failure reported, if any.
struct FirstFailure(Arc<Mutex<Option<RunFailure>>>);

impl FirstFailure {
    fn take(&self) -> Option<RunFailure> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Wake-ups of a bot's module jobs by operator actions, kept across the bot's runs: a wake
/// sent while no job waits is kept until the job next waits.
#[derive(Debug, Clone, Default)]
pub struct Wakes {
    jobs: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
    /// Notified with every wake: a dormant bot's slot waits for it.
    any: Arc<Notify>,
}

impl Wakes {
    /// Wakes with the notifiers of the jobs `names` made at once, with the bot's other
    /// lasting parts (made later, in a run, they would pin the run's freed memory while the
    /// bot sleeps; docs/webhooks.md, "Dormant bots").
    pub fn with_jobs<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let wakes = Self::default();
        for name in names {
            wakes.get(name);
        }
        wakes
    }

    /// The notifier of module `name`'s job.
    pub fn get(&self, name: &str) -> Arc<Notify> {
        let mut map = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(name.to_owned()).or_default())
    }

    /// Wakes module `name`'s job (or the next one to wait).
    pub fn wake(&self, name: &str) {
        self.get(name).notify_one();
        self.any.notify_one();
    }

    /// Resolves at the next wake of any job (or at once, for one since [`Wakes::clear`]).
    pub async fn any(&self) {
        self.any.notified().await;
    }

    /// Forgets the wakes [`Wakes::any`] would see: a run starts, and its jobs see them.
    pub fn clear(&self) {
        let _ = self.any.notified().now_or_never();
    }
}

/// How a run ended without failing.
#[derive(Debug)]
pub enum Ended {
    /// Its stop token was cancelled.
    Stopped,
    /// It fell asleep, idle in webhook mode ([`doze`]). Not boxed: an allocation made as the
    /// run ends would land among its freed memory and keep those pages resident while the
    /// bot sleeps.
    Dormant(Dormancy),
}

/// A bot asleep: what wakes it, and what its next run takes over.
#[derive(Debug)]
pub struct Dormancy {
    /// The earliest deadline a part of the run waited for.
    pub until: Option<tokio::time::Instant>,
    /// What the next run of the same spec takes over.
    pub resume: Resume,
    activity: Arc<AtomicU64>,
    seen: u64,
}

impl Dormancy {
    /// Whether an update came in as the run fell asleep (it must run again at once).
    pub fn disturbed(&self) -> bool {
        self.activity.load(std::sync::atomic::Ordering::SeqCst) != self.seen
    }
}

/// What a run of a spec learned that the next run of the same spec need not ask Telegram
/// again.
#[derive(Debug)]
pub struct Resume {
    /// `getMe`.
    pub me: Me,
    /// The command list registered ([`companion::fingerprint`]).
    pub commands: u64,
    /// The webhook as set (`None`: set it again).
    pub kept: Option<inbox::webhook::Kept>,
}

/// Process-wide parts every bot run shares.
#[derive(Clone)]
pub struct SharedDeps {
    /// Settings.
    pub settings: Arc<Settings>,
    /// The Bot API client.
    pub api: TelegramApi,
    /// The connection budgets for bot databases, one per server.
    pub budgets: ServerBudgets,
    /// The modules every bot is made of.
    pub registry: Registry,
    /// Where runs spawn their module jobs.
    pub tasks: Tasks,
    /// The master keys: the control plane opens tokens and secrets with them.
    pub keys: Arc<crate::crypto::Keyring>,
    /// The webhook entrances of the bots running here in webhook mode.
    pub webhooks: inbox::webhook::WebhookRoutes,
}

/// What the unit of work of one bot run needs besides the update and `Me`.
pub struct BotContext {
    /// Panel id.
    pub bot_id: i64,
    /// The Telegram bot's user id (the token's numeric prefix); inbox rows are keyed by it.
    pub telegram_id: i64,
    /// The bot's database.
    pub db: BotPool,
    /// The current content.
    pub snapshot: SharedSnapshot,
    /// The modules.
    pub registry: Registry,
    /// Hands the requests a committed unit of work queued to the bot's sender.
    ///
    /// Boxed: a tokio channel allocates its first block of 32 slots when it is created, so an
    /// idle bot's channel holds 32 pointers rather than 32 `(Instant, Vec)` (1.3 KiB).
    pub handoff: mpsc::UnboundedSender<Box<(tokio::time::Instant, Vec<Queued>)>>,
    /// Wakes module jobs after a commit that left them work ([`UpdateCx::wake_job`]).
    ///
    /// [`UpdateCx::wake_job`]: crate::modules::UpdateCx::wake_job
    pub wakes: Wakes,
    /// Where to report a failure that must end this run.
    pub failures: Failures,
    /// The run's traffic counters.
    pub traffic: Arc<Traffic>,
    /// The run's idleness: a committed unit of work counts as activity.
    pub quiet: Arc<Quiet>,
}

impl BotContext {
    /// After a commit: gives the sender what it queued (with the moment the unit of work took
    /// its updates, for the update → reply latency), and wakes the jobs it left work.
    pub fn hand_over(
        &self,
        queued: Vec<Queued>,
        jobs: &[&'static str],
        taken: tokio::time::Instant,
    ) {
        if !queued.is_empty() {
            // A closed channel means the sender ended (the run fails or drains): the rows are
            // in the outbox and the next run sends them.
            let _ = self.handoff.send(Box::new((taken, queued)));
        }
        for job in jobs {
            self.wakes.wake(job);
        }
    }
}

/// The per-run handles a bot's slot gives it.
pub struct RunParts {
    /// The bot's content, swapped by the control plane on reload.
    pub snapshot: SharedSnapshot,
    /// Operator wake-ups of its module jobs.
    pub wakes: Wakes,
    /// Set by the run to the cause while fetching updates keeps failing, cleared (`None`)
    /// once it works again; the slot reports it as `degraded`.
    pub health: tokio::sync::watch::Sender<Option<String>>,
    /// Webhook mode: what `getWebhookInfo` said last (the slot writes it to the status).
    pub webhook: tokio::sync::watch::Sender<Option<inbox::webhook::WebhookState>>,
    /// The run counts its traffic here; the slot reads and resets it every traffic interval.
    pub traffic: Arc<Traffic>,
    /// A run woken from dormancy: what the last run learned (`None`: start from scratch).
    pub resume: Option<Resume>,
    /// Counts what happened in the bot's runs ([`Quiet::touch`]); the slot's, so a bot
    /// asleep holds nothing of its last run to tell whether an update came in as it fell
    /// asleep.
    pub activity: Arc<AtomicU64>,
    /// The bell the bot's webhook route holds while it sleeps (webhook mode); the slot's.
    pub doorbell: Option<Arc<inbox::webhook::Doorbell>>,
}

/// A run's traffic: updates its units of work committed and messages Telegram accepted.
#[derive(Debug, Default)]
pub struct Traffic {
    updates: std::sync::atomic::AtomicU64,
    sent: std::sync::atomic::AtomicU64,
}

impl Traffic {
    /// `n` updates were handled (their unit of work committed).
    pub fn handled(&self, n: usize) {
        self.updates
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Telegram accepted `n` messages.
    pub fn sent(&self, n: usize) {
        self.sent
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// The counts since the last call: `(updates, sent)`.
    pub fn take(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.updates.swap(0, Relaxed), self.sent.swap(0, Relaxed))
    }
}

/// Runs the bot until `stop` is cancelled or it falls asleep (Ok) or a failure ends the run
/// (Err).
///
/// `on_running` is called with the bot's Telegram username once the token is checked (not
/// by a run resumed from dormancy: the bot was running all along).
pub async fn run(
    deps: &SharedDeps,
    spec: &BotSpec,
    parts: RunParts,
    stop: CancellationToken,
    on_running: impl AsyncFnOnce(&str),
) -> Result<Ended, RunFailure> {
    let begun = tokio::time::Instant::now();
    // Cancelled by the sender after its first load: the start's hold on the database ends.
    let loaded = CancellationToken::new();
    let resolve = || {
        BotDbTarget::resolve_on(
            &deps.settings,
            spec.id,
            spec.db_server.as_deref(),
            spec.database.as_deref(),
        )
    };
    let (db, deferred) = if spec.webhook.is_none() {
        // Polling: the database is checked beside the first long poll ([`start`]). No await
        // in this block: the target moves into the start, and the run's state keeps none.
        let target = resolve()?;
        let budget = deps.budgets.for_server(&target.server_key).clone();
        let db = target.pool_within(&budget, deps.settings.bot_database.max_connections_per_bot);
        let deferred =
            start::DeferredStart::new(spec.id, target, budget, db.clone(), loaded.clone());
        (db, Some(deferred))
    } else {
        // Boxed, as every step that is over once the bot runs (the migrations, `getMe`, the
        // first `setMyCommands`): the run's future, which lives as long as the bot, then
        // holds none of them (docs/performance.md, "Idle memory per bot"). The target (744
        // bytes) lives inside the step: a local borrowed across an await would stay in the
        // run's state to its end.
        let provision = Box::pin(async {
            let target = resolve()?;
            let (created, db) = target
                .provision_within(
                    deps.budgets.for_server(&target.server_key),
                    deps.settings.bot_database.max_connections_per_bot,
                )
                .await?;
            if created {
                tracing::info!(bot_id = spec.id, database = %target.database, "bot database created");
            }
            Ok::<_, BotDbError>(db)
        });
        let db = tokio::select! {
            () = stop.cancelled() => return Ok(Ended::Stopped),
            r = provision => r?,
        };
        // The start's reads share the check's connection (docs/performance.md, "Cold start
        // of 1,000 bots").
        start::hold_for_start(&deps.tasks, spec.id, &db, &loaded, &stop);
        (db, None)
    };
    let provisioned = begun.elapsed();
    let on_running = async move |username: &str| {
        // What each step of a start took (`botvisor::runtime=debug`; docs/performance.md,
        // "Cold start of 1,000 bots"). In a deferred start `provision_ms` is 0 and the
        // second figure includes the check, logged on its own as `bot start: database
        // checked`.
        let checked = begun.elapsed();
        on_running(username).await;
        tracing::debug!(
            bot_id = spec.id,
            provision_ms = provisioned.as_millis() as u64,
            token_and_commands_ms = (checked - provisioned).as_millis() as u64,
            status_ms = (begun.elapsed() - checked).as_millis() as u64,
            "bot start: steps"
        );
    };
    let result = dispatch_run(
        deps,
        spec,
        parts,
        stop,
        (db.clone(), loaded.drop_guard(), deferred),
        on_running,
    )
    .await;
    db.close().await;
    result
}

async fn dispatch_run(
    deps: &SharedDeps,
    spec: &BotSpec,
    parts: RunParts,
    stop: CancellationToken,
    (db, start_done, deferred): (
        BotPool,
        tokio_util::sync::DropGuard,
        Option<start::DeferredStart>,
    ),
    on_running: impl AsyncFnOnce(&str),
) -> Result<Ended, RunFailure> {
    let bot = deps.api.bot(&spec.token);
    let mut parts = parts;
    let resume = parts.resume.take();
    let (me, registered, kept) = match resume {
        Some(Resume { me, commands, kept }) => (me, Some(commands), kept),
        None => {
            let asked = tokio::time::Instant::now();
            let me = tokio::select! {
                () = stop.cancelled() => return Ok(Ended::Stopped),
                r = Box::pin(bot.get_me().into_future()) => r,
            };
            let me: Me = me.map_err(|e| RunFailure::from(TelegramError::from_request(&e)))?;
            tracing::debug!(
                bot_id = spec.id,
                get_me_ms = asked.elapsed().as_millis() as u64,
                "bot start: token checked"
            );
            (me, None, None)
        }
    };
    let resumed = registered.is_some();
    let username = me.username.clone().unwrap_or_default();
    let telegram = Messenger::new(bot.clone(), spec.id);
    let quiet = Arc::new(Quiet::new(Arc::clone(&parts.activity)));
    if let Some(doorbell) = &parts.doorbell {
        // Rings from before this run are answered by it.
        doorbell.clear();
    }

    let prune = crate::botdb::PruneSchedule::from_settings(&deps.settings, spec.id);
    let first_read = CancellationToken::new();
    let run_stop = stop.child_token();
    let (failures, failed) = Failures::new(run_stop.clone());
    let outbox_wake = Arc::new(Notify::new());
    let (handoff_tx, handoff_rx) = mpsc::unbounded_channel();
    let delivered = Wakes::default();
    let companion = companion::Companion {
        bot_id: spec.id,
        deps: deps.clone(),
        db: db.clone(),
        telegram: telegram.clone(),
        snapshot: parts.snapshot.clone(),
        wakes: parts.wakes.clone(),
        delivered: delivered.clone(),
        failures: failures.clone(),
        stop: run_stop.clone(),
        outbox: Arc::clone(&outbox_wake),
        quiet: Arc::clone(&quiet),
        ready: deferred.as_ref().map(|d| d.signals().ready),
    };
    // Commands are registered before the bot reports itself running; a deferred start
    // reports it once its database is checked (`starting` below).
    let companion = Box::pin(companion.start(registered)).await;
    let mut on_running = Some(on_running);
    if !resumed
        && deferred.is_none()
        && let Some(on_running) = on_running.take()
    {
        Box::pin(on_running(&username)).await;
    }

    let (webhook_ready, replayed) = match spec.webhook {
        Some(_) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let listener = DurableListener::new(
        inbox::ListenerParts {
            api: deps.api.clone(),
            token: spec.token.clone(),
            bot_id: spec.id,
            db: db.clone(),
            poll_timeout: Duration::from_secs(deps.settings.telegram.poll_timeout_secs),
            inbox_retention_days: deps.settings.bot_database.inbox_retention_days,
            prune,
            first_read: first_read.clone(),
            snapshot: parts.snapshot.clone(),
            registry: deps.registry.clone(),
            health: parts.health,
            webhook: webhook_ready,
            deferred: deferred.as_ref().map(start::DeferredStart::signals),
        },
        run_stop.clone(),
        failures.clone(),
    );
    let drain = CancellationToken::new();
    let sender = outbox::Sender {
        bot_id: spec.id,
        db: db.clone(),
        telegram,
        registry: deps.registry.clone(),
        snapshot: parts.snapshot.clone(),
        wake: Arc::clone(&outbox_wake),
        handoff: handoff_rx,
        delivered,
        failures: failures.clone(),
        stop: failures.failed(),
        drain: drain.clone(),
        retention_days: deps.settings.bot_database.inbox_retention_days,
        prune,
        after: first_read,
        start_done: Some(start_done),
        traffic: Arc::clone(&parts.traffic),
        quiet: Arc::clone(&quiet),
    };
    quiet.enter(outbox::QUIET_PART);
    let telegram_id = i64::try_from(spec.token.bot_user_id()).unwrap_or(i64::MAX);
    let keeper = spec.webhook.clone().map(|webhook| inbox::webhook::Keeper {
        api: deps.api.clone(),
        token: spec.token.clone(),
        bot_id: spec.id,
        telegram_id,
        spec: webhook,
        db: db.clone(),
        routes: deps.webhooks.clone(),
        snapshot: parts.snapshot.clone(),
        registry: deps.registry.clone(),
        report: parts.webhook,
        failures: failures.clone(),
        stop: run_stop.clone(),
        quiet: Arc::clone(&quiet),
        kept,
    });
    if keeper.is_some() {
        quiet.enter(inbox::webhook::QUIET_PART);
    }
    // In webhook mode, with dormancy on: the part that puts the idle run to sleep.
    let dozer = match (
        &spec.webhook,
        &parts.doorbell,
        deps.settings.telegram.webhook_idle_after(),
    ) {
        (Some(_), Some(doorbell), Some(idle_after)) => Some(doze::Dozer {
            bot_id: spec.id,
            quiet: Arc::clone(&quiet),
            idle_after,
            stop: run_stop.clone(),
            routes: deps.webhooks.clone(),
            doorbell: Arc::clone(doorbell),
        }),
        _ => None,
    };
    let (parts_activity, parts_doorbell) = (parts.activity, parts.doorbell);
    let (failures_for_start, wakes_for_start) = (failures.clone(), parts.wakes.clone());
    let context = Arc::new(BotContext {
        bot_id: spec.id,
        telegram_id,
        db,
        snapshot: parts.snapshot,
        registry: deps.registry.clone(),
        handoff: handoff_tx,
        wakes: parts.wakes,
        failures,
        traffic: parts.traffic,
        quiet,
    });
    // Boxed updates: a tokio channel allocates its first block of 32 slots when it is created,
    // and an `Update` is 1,944 bytes (62 KiB per bot unboxed, 256 bytes boxed).
    let (to_processor, updates) = mpsc::channel::<dispatch::Work>(INTAKE_QUEUE);
    let processor = dispatch::Processor {
        me: me.clone(),
        ctx: context,
    };
    // Cancelled when the listener ended: the webhook entrance closes then, so the processor
    // sees its channel close once both are gone.
    let intake_done = CancellationToken::new();
    let entrance_tx = to_processor.clone();
    let entrance_done = intake_done.clone();
    // The five long-lived parts are boxed straight from their construction: a future kept in
    // a named local stays in this function's state after it is moved into `join!` (a
    // moved-from local keeps its place until its scope ends), so each part was stored two or
    // three times over; boxed, each is stored once and the locals are pointers.
    // Built from the parts' own futures (`map`, `Either`), not async blocks around them: a
    // block keeps what it captured besides the future it awaits, so the listener and the
    // keeper were stored twice.
    let entrance = Box::pin(match (keeper, replayed) {
        (Some(keeper), Some(replayed)) => {
            Either::Left(keeper.run(entrance_tx, replayed, entrance_done))
        }
        _ => {
            // Polling: no entrance; its sender must not keep the processor's channel open.
            drop((entrance_tx, entrance_done));
            Either::Right(std::future::ready(None))
        }
    });
    let intake = Box::pin(
        listener
            .run(to_processor)
            .map(move |()| intake_done.cancel()),
    );
    let processing = Box::pin(processor.run(updates));
    let following = Box::pin(companion.run());
    let sending = Box::pin(sender.run());
    let dozing = Box::pin(match dozer {
        Some(dozer) => Either::Left(dozer.run()),
        None => Either::Right(std::future::ready(None)),
    });
    // What an idle bot's run holds, part by part (`RUST_LOG`-style filter
    // `botvisor::runtime=debug`; docs/performance.md, "Idle memory per bot").
    tracing::debug!(
        bot_id = spec.id,
        intake = std::mem::size_of_val(&*intake),
        entrance = std::mem::size_of_val(&*entrance),
        processor = std::mem::size_of_val(&*processing),
        companion = std::mem::size_of_val(&*following),
        sender = std::mem::size_of_val(&*sending),
        "bot run: future sizes in bytes"
    );
    let dispatch = async {
        let ((), kept, ()) = tokio::join!(intake, entrance, processing);
        // The processor ends only when the intake did (stop or failure) and it drained what
        // was stored, or after a failure; either way the companion's jobs end with it, and the
        // sender delivers the replies the last updates queued (or stops at once after a
        // failure).
        run_stop.cancel();
        drain.cancel();
        kept
    };
    // A deferred start's check, then the report that the bot runs.
    let starting = Box::pin({
        let (stop, failures, wakes) = (run_stop.clone(), failures_for_start, wakes_for_start);
        async move {
            let Some(deferred) = deferred else { return };
            if deferred.run(&deps.tasks, &wakes, stop, failures).await
                && let (false, Some(on_running)) = (resumed, on_running)
            {
                on_running(&username).await;
            }
        }
    });
    let (kept, commands, (), asleep, ()) =
        tokio::join!(dispatch, following, sending, dozing, starting);
    match (failed.take(), asleep) {
        (None, Some(asleep)) if !stop.is_cancelled() => Ok(Ended::Dormant(Dormancy {
            until: asleep.until,
            resume: Resume {
                me,
                commands: companion::fingerprint(&commands),
                kept,
            },
            activity: parts_activity,
            seen: asleep.activity,
        })),
        (failure, asleep) => {
            // Not asleep after all (stopped or failed meanwhile): the bell goes.
            if let (Some(_), Some(doorbell)) = (asleep, &parts_doorbell) {
                deps.webhooks.close_asleep(spec.id, doorbell);
            }
            match failure {
                Some(f) => Err(f),
                None if stop.is_cancelled() => Ok(Ended::Stopped),
                None => Err(RunFailure::ListenerEnded),
            }
        }
    }
}
