//! `botvisor serve`: the daemon's parts wired together, with an ordered shutdown.
//!
//! Start: connect to the panel (fail fast with the masked URL), apply panel migrations, build
//! the shared Bot API client and the connection budget, then run the supervisor. Shutdown
//! (the token passed to [`Daemon::run`] is cancelled): every bot stops fetching, in-flight
//! handlers finish within `shutdown_deadline`, offsets are confirmed; tasks still running after
//! the deadline are named in the [`ShutdownReport`].

use std::sync::Arc;

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

/// Connections the daemon keeps to the panel database (LISTEN, reconcile, status writes).
const PANEL_CONNECTIONS: u32 = 4;

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
    /// The connection budget of bot databases (its count of open connections is exact).
    pub budget: ConnectionBudget,
}

/// The daemon, ready to run.
pub struct Daemon {
    settings: Arc<Settings>,
    supervisor: Supervisor,
    tasks: Tasks,
    budget: ConnectionBudget,
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
        let options = settings
            .panel_connect_options()
            .expect("validated in Settings::validate")
            .application_name("botvisor-panel");
        let panel = panel::connect(&options, PANEL_CONNECTIONS).await?;
        schema::apply(&schema::PANEL, &options).await?;
        let api = TelegramApi::new(settings.telegram_api_url())?;
        let db = &settings.bot_database;
        let budget = ConnectionBudget::new(
            db.connection_budget,
            std::time::Duration::from_secs(db.idle_timeout_secs),
            std::time::Duration::from_secs(db.acquire_timeout_secs),
        )
        .with_provision_concurrency(db.provision_concurrency);
        let tasks = Tasks::new(shutdown);
        let deps = SharedDeps {
            settings: Arc::clone(&settings),
            api,
            budget: budget.clone(),
            registry,
            tasks: tasks.clone(),
        };
        let mut supervisor = Supervisor::new(deps, panel, tasks.clone());
        let handles = DaemonHandles {
            ready: supervisor.ready(),
            counts: supervisor.counts(),
            reload: supervisor.reload_sender(),
            heartbeat: supervisor.heartbeat(),
            budget: budget.clone(),
        };
        Ok((
            Self {
                settings,
                supervisor,
                tasks,
                budget,
            },
            handles,
        ))
    }

    /// Runs until `shutdown` (given to [`Daemon::start`]) is cancelled, then drains.
    pub async fn run(self) -> Result<ShutdownReport, DaemonError> {
        let shutdown = self.tasks.shutdown_token();
        self.tasks
            .spawn("botdb-budget", self.budget.clone().run(shutdown.clone()));
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
        result.map(|()| ShutdownReport { not_drained })
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
    tokio::select! {
        r = ready => if r.is_err() { return },
        () = shutdown.cancelled() => return,
    }
    let status = |c: &BotCounts| {
        format!(
            "bots: {} running, {} starting, {} failed",
            c.running, c.starting, c.failed
        )
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
                // Fed only while the reconcile loop turns: a stuck loop gets the daemon
                // restarted by systemd.
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
