//! `botvisor serve`: the daemon's parts wired together, with an ordered shutdown.
//!
//! Start: connect to the panel and apply its migrations — while the panel is unreachable, wait
//! for it with a capped backoff (one log line at most every [`WAIT_LOG_EVERY`], `STATUS=` and
//! `EXTEND_TIMEOUT_USEC=` to systemd so the start timeout follows the wait), then build the
//! shared Bot API client and the connection budget and run the supervisor. Shutdown
//! (the token passed to [`Daemon::run`] is cancelled): every bot stops fetching, in-flight
//! handlers finish within `shutdown_deadline`, offsets are confirmed; tasks still running after
//! the deadline are named in the [`ShutdownReport`].

pub mod http;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::botdb::budget::ConnectionBudget;
use crate::control::{BotCounts, Supervisor, SupervisorError};
use crate::modules::Registry;
use crate::panel::{self, PanelError};
use crate::runtime::SharedDeps;
use crate::schema::{self, MigrationError};
use crate::settings::Settings;
use crate::tasks::Tasks;
use crate::telegram::TelegramApi;
use crate::telemetry::metrics::Metrics;

/// Connections the daemon keeps to the panel database (LISTEN, reconcile, status writes).
const PANEL_CONNECTIONS: u32 = 4;
/// First delay between attempts to reach the panel at start; doubled up to [`WAIT_MAX`].
const WAIT_START: Duration = Duration::from_secs(1);
/// Longest delay between attempts to reach the panel at start.
const WAIT_MAX: Duration = Duration::from_secs(10);
/// At most one log line per this long while waiting for the panel.
pub const WAIT_LOG_EVERY: Duration = Duration::from_secs(30);
/// How far each attempt pushes systemd's start timeout (beyond the next attempt).
const WAIT_EXTEND: Duration = Duration::from_secs(30);

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The panel is unreachable.
    #[error(transparent)]
    Panel(#[from] PanelError),
    /// Panel migrations failed.
    #[error("cannot apply panel migrations")]
    Migrate(#[from] MigrationError),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    Http(#[from] reqwest::Error),
    /// The supervisor failed.
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    /// The connection budget could not be sized.
    #[error(transparent)]
    Budget(#[from] crate::botdb::BudgetSizeError),
    /// The master key is missing, unreadable, or not the panel's.
    #[error("cannot start without the master key: {0}")]
    Key(#[from] crate::crypto::CryptoError),
    /// The HTTP listener (`http.listen`) could not be bound.
    #[error(transparent)]
    Listener(#[from] http::HttpError),
    /// Shutdown was asked for while waiting for the panel.
    #[error("stopped while waiting for the panel database")]
    Cancelled,
}

/// How the daemon ended.
#[derive(Debug, Clone, Default)]
pub struct ShutdownReport {
    /// Tasks (e.g. `bot-42`) still running when the shutdown deadline passed.
    pub not_drained: Vec<String>,
}

impl ShutdownReport {
    /// Whether everything drained in time.
    pub fn clean(&self) -> bool {
        self.not_drained.is_empty()
    }
}

/// Handles to observe and steer a running daemon.
pub struct DaemonHandles {
    /// Fires once the first reconcile finished (systemd READY).
    pub ready: oneshot::Receiver<()>,
    /// Bot counts by state.
    pub counts: watch::Receiver<BotCounts>,
    /// Send `()` to reload every bot's configuration (SIGHUP).
    pub reload: mpsc::Sender<()>,
    /// The reconcile loop's latest turn.
    pub heartbeat: watch::Receiver<tokio::time::Instant>,
    /// The connection budget of the first bot-database server (its count of open connections
    /// is exact).
    pub budget: ConnectionBudget,
    /// Every server's budget, by server key (the first is [`Self::budget`]).
    pub budgets: crate::botdb::ServerBudgets,
    /// The process's Prometheus recorder (rendered at `/metrics`).
    pub metrics: Metrics,
    /// The address the HTTP listener is bound to (`None`: `http.listen` is empty).
    pub http_addr: Option<SocketAddr>,
}

/// The daemon, ready to run.
pub struct Daemon {
    settings: Arc<Settings>,
    supervisor: Supervisor,
    tasks: Tasks,
    budgets: crate::botdb::ServerBudgets,
    panel: sqlx::PgPool,
    instance: (String, String),
    metrics: Metrics,
    http: Option<http::HttpServer>,
}

impl Daemon {
    /// Connects to the panel, applies its migrations and builds every shared part, with
    /// botvisor's modules.
    pub async fn start(
        settings: Settings,
        shutdown: CancellationToken,
    ) -> Result<(Self, DaemonHandles), DaemonError> {
        Self::start_with(settings, Registry::standard(), shutdown).await
    }

    /// [`Daemon::start`] with the modules of `registry` (tests add their own).
    pub async fn start_with(
        settings: Settings,
        registry: Registry,
        shutdown: CancellationToken,
    ) -> Result<(Self, DaemonHandles), DaemonError> {
        let settings = Arc::new(settings);
        let metrics = crate::telemetry::metrics::install(settings.metrics.idle_timeout());
        // Without its key the daemon could open no token and no secret: refuse at once, before
        // waiting for anything.
        let keys = Arc::new(settings.keyring()?);
        let options = settings
            .panel_connect_options()
            .expect("validated in Settings::validate")
            .application_name("botvisor-panel");
        let panel = wait_for_panel(&options, &shutdown).await?;
        check_keys(&panel, &keys).await?;
        let api = TelegramApi::new(settings.telegram_api_url())?;
        let db = &settings.bot_database;
        let mut budgets = Vec::new();
        for (server, size) in crate::botdb::connection_budgets(&settings).await? {
            match size.server {
                Some((max_connections, superuser_reserved)) => tracing::info!(
                    server = %server.masked(),
                    budget = size.budget,
                    max_connections,
                    superuser_reserved,
                    reserve = crate::settings::AUTO_BUDGET_RESERVE,
                    "connection budget sized from the server"
                ),
                None => {
                    tracing::debug!(server = %server.masked(), budget = size.budget, "connection budget")
                }
            }
            let budget = ConnectionBudget::new(
                size.budget,
                std::time::Duration::from_secs(db.idle_timeout_secs),
                std::time::Duration::from_secs(db.acquire_timeout_secs),
            )
            .with_provision_concurrency(db.provision_concurrency);
            budgets.push((server.key, budget));
        }
        if budgets.len() > 1 {
            budgets = budgets
                .into_iter()
                .map(|(key, b)| (key, b.without_metrics()))
                .collect();
        }
        let budgets = crate::botdb::ServerBudgets::new(budgets);
        let budget = budgets.first().clone();
        let tasks = Tasks::new(shutdown);
        let deps = SharedDeps {
            settings: Arc::clone(&settings),
            api,
            budgets: budgets.clone(),
            registry,
            tasks: tasks.clone(),
            keys,
            webhooks: crate::runtime::inbox::webhook::WebhookRoutes::default(),
        };
        let deps_webhooks = deps.webhooks.clone();
        let mut supervisor = Supervisor::new(deps, panel.clone(), tasks.clone());
        let me = supervisor.instance_beat();
        let instance = (me.name.to_owned(), me.host.to_owned());
        // The first reconcile is told to systemd (the handles' `ready`) and to `/readyz`.
        let (ready_tx, ready) = oneshot::channel();
        let (reconciled_tx, reconciled) = watch::channel(false);
        let first_pass = supervisor.ready();
        tasks.spawn("ready", async move {
            if first_pass.await.is_ok() {
                reconciled_tx.send_replace(true);
                let _ = ready_tx.send(());
            }
        });
        let http = match settings.http.listen_addr() {
            Some(addr) => {
                let state = http::HttpState {
                    health: http::Health {
                        counts: supervisor.counts(),
                        heartbeat: supervisor.heartbeat(),
                        reconciled,
                        ownership: supervisor.ownership_health(),
                    },
                    metrics: metrics.clone(),
                    webhooks: deps_webhooks,
                };
                Some(http::HttpServer::bind(addr, state).await?)
            }
            None => None,
        };
        let handles = DaemonHandles {
            ready,
            counts: supervisor.counts(),
            reload: supervisor.reload_sender(),
            heartbeat: supervisor.heartbeat(),
            budget: budget.clone(),
            budgets: budgets.clone(),
            metrics: metrics.clone(),
            http_addr: http.as_ref().map(http::HttpServer::local_addr),
        };
        Ok((
            Self {
                settings,
                supervisor,
                tasks,
                budgets,
                panel,
                instance,
                metrics,
                http,
            },
            handles,
        ))
    }

    /// Runs until `shutdown` (given to [`Daemon::start`]) is cancelled, then drains.
    pub async fn run(self) -> Result<ShutdownReport, DaemonError> {
        let shutdown = self.tasks.shutdown_token();
        for (_, budget) in self.budgets.iter() {
            self.tasks
                .spawn("botdb-budget", budget.clone().run(shutdown.clone()));
        }
        if self.budgets.iter().count() > 1 {
            self.tasks.spawn(
                "botdb-budget-metrics",
                self.budgets.clone().report_metrics(shutdown.clone()),
            );
        }
        self.tasks
            .spawn("metrics-upkeep", self.metrics.clone().run(shutdown.clone()));
        if let Some(server) = self.http {
            let stop = shutdown.clone();
            self.tasks.spawn("http", async move {
                if let Err(e) = server.run(stop).await {
                    tracing::error!(error = %crate::mask::error_line(&e), "the HTTP listener stopped");
                }
            });
        }
        let supervisor = self
            .tasks
            .spawn("supervisor", self.supervisor.run(shutdown.clone()));
        let result = tokio::select! {
            () = shutdown.cancelled() => Ok(()),
            r = supervisor => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(DaemonError::from(e)),
                Err(join) => {
                    tracing::error!(error = %join, "supervisor task ended abnormally");
                    Ok(())
                }
            },
        };
        shutdown.cancel();
        tracing::info!("shutting down: draining bots");
        let not_drained = self.tasks.wait(self.settings.shutdown_deadline()).await;
        if not_drained.is_empty() {
            tracing::info!("shutdown complete");
        } else {
            tracing::error!(tasks = ?not_drained, "shutdown deadline passed with tasks still running");
        }
        // Remove this instance from `instances` (the others already saw its control session
        // end; this keeps `botvisor status` tidy).
        let me = crate::panel::store::InstanceBeat {
            name: &self.instance.0,
            pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
            host: &self.instance.1,
        };
        let release = crate::panel::store::release_instance(&self.panel, &me);
        match tokio::time::timeout(Duration::from_secs(5), release).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %crate::mask::error_line(&e), "cannot remove this instance from the panel; its row stays until removed by hand")
            }
            Err(_) => tracing::warn!(
                "timed out removing this instance from the panel; its row stays until removed by hand"
            ),
        }
        result.map(|()| ShutdownReport { not_drained })
    }
}

/// Connects to the panel and applies its migrations, retrying while the panel is unreachable
/// (test `resilience_panel::serve_waits_for_an_unreachable_panel`). A migration that cannot
/// Seals the tokens still in clear (rows of an older binary, or written by hand), then checks
/// that the key file holds every key the panel's tokens and secrets were sealed with: a wrong
/// key file stops the start here, with one line, instead of failing every bot.
async fn check_keys(
    panel: &sqlx::PgPool,
    keys: &crate::crypto::Keyring,
) -> Result<(), DaemonError> {
    for id in panel::store::sealing_key_ids(panel).await? {
        keys.key(id)?;
    }
    let sealed = panel::store::seal_clear_tokens(panel, keys).await?;
    if sealed > 0 {
        tracing::info!(sealed, "sealed bot tokens that were still in clear");
    }
    Ok(())
}

/// succeed without a change (an edited or failing migration) ends the wait with an error.
async fn wait_for_panel(
    options: &sqlx::postgres::PgConnectOptions,
    shutdown: &CancellationToken,
) -> Result<sqlx::PgPool, DaemonError> {
    let mut delay = WAIT_START;
    let mut attempt: u64 = 0;
    let mut last_log: Option<tokio::time::Instant> = None;
    let started = tokio::time::Instant::now();
    loop {
        attempt += 1;
        let error = match panel::connect(options, PANEL_CONNECTIONS).await {
            Ok(pool) => match schema::apply(&schema::PANEL, options).await {
                Ok(_) => {
                    if attempt > 1 {
                        tracing::info!(attempts = attempt, waited = ?started.elapsed(), "panel database reachable; starting");
                    }
                    return Ok(pool);
                }
                Err(e) if e.is_fatal() => return Err(e.into()),
                Err(e) => crate::mask::error_line(&e),
            },
            Err(e) => crate::mask::error_line(&e),
        };
        if last_log.is_none_or(|t| t.elapsed() >= WAIT_LOG_EVERY) {
            last_log = Some(tokio::time::Instant::now());
            tracing::warn!(error = %error, attempt, retry_in = ?delay, "panel database unreachable; waiting for it before starting bots");
        }
        let status = format!("waiting for the panel database (attempt {attempt}): {error}");
        let extend = u32::try_from((delay + WAIT_EXTEND).as_micros()).unwrap_or(u32::MAX);
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Status(&status),
            sd_notify::NotifyState::ExtendTimeoutUsec(extend),
        ]);
        tokio::select! {
            () = shutdown.cancelled() => return Err(DaemonError::Cancelled),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(WAIT_MAX);
    }
}

/// Tells systemd (when `NOTIFY_SOCKET` is set) `READY=1` after the first reconcile, `STATUS=`
/// with the bot counts whenever they change, `WATCHDOG=1` while the reconcile loop turns, and
/// `STOPPING=1` on shutdown. Without `NOTIFY_SOCKET` it sends nothing.
pub async fn notify_systemd(
    ready: oneshot::Receiver<()>,
    mut counts: watch::Receiver<BotCounts>,
    heartbeat: watch::Receiver<tokio::time::Instant>,
    shutdown: CancellationToken,
) {
    use sd_notify::NotifyState;
    let send = |states: &[NotifyState<'_>]| {
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    };
    // Until READY, keep pushing the start timeout while the loop turns (the panel may be
    // unreachable before the first pass is done); a stuck loop is still killed.
    let mut ready = ready;
    let mut extend = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            r = &mut ready => if r.is_err() { return } else { break },
            () = shutdown.cancelled() => return,
            _ = extend.tick() => {
                if heartbeat.borrow().elapsed() < Duration::from_secs(10) {
                    let usec = u32::try_from(WAIT_EXTEND.as_micros()).unwrap_or(u32::MAX);
                    let mut states = vec![NotifyState::ExtendTimeoutUsec(usec)];
                    let text;
                    if counts.borrow().panel_unreachable {
                        text = "waiting for the panel database before the first reconcile".to_owned();
                        states.push(NotifyState::Status(&text));
                    }
                    send(&states);
                }
            }
        }
    }
    let status = |c: &BotCounts| {
        let mut text = format!(
            "bots: {} running, {} starting, {} failed",
            c.running, c.starting, c.failed
        );
        if c.degraded > 0 {
            text.push_str(&format!(", {} degraded", c.degraded));
        }
        if c.dormant > 0 {
            text.push_str(&format!(" ({} of them asleep)", c.dormant));
        }
        if c.instances > 1 {
            text.push_str(&format!(
                "; {} bots owned here, {} instances share the panel",
                c.owned, c.instances
            ));
        }
        if c.panel_unreachable {
            text.push_str("; panel database unreachable, retrying (bots keep running)");
        }
        text
    };
    let text = status(&counts.borrow_and_update());
    send(&[NotifyState::Ready, NotifyState::Status(&text)]);
    let watchdog = sd_notify::watchdog_enabled();
    let period = watchdog
        .map(|w| w / 3)
        .unwrap_or(std::time::Duration::from_secs(5))
        .clamp(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(5),
        );
    let mut tick = tokio::time::interval(period);
    let mut counts_open = true;
    loop {
        tokio::select! {
            // Shutdown first: the supervisor drops the counts sender as it stops, and that
            // must not end this loop before STOPPING=1 is sent.
            biased;
            () = shutdown.cancelled() => break,
            changed = counts.changed(), if counts_open => {
                if changed.is_err() {
                    counts_open = false;
                    continue;
                }
                let text = status(&counts.borrow_and_update());
                send(&[NotifyState::Status(&text)]);
            }
            _ = tick.tick() => {
                // Fed only while the reconcile loop turns (it does during a panel outage
                // too): a stuck loop gets the daemon restarted by systemd.
                if let Some(w) = watchdog
                    && heartbeat.borrow().elapsed() < w / 2
                {
                    send(&[NotifyState::Watchdog]);
                }
            }
        }
    }
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("shutting down: draining bots"),
    ]);
}
