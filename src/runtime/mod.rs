//! One hosted bot: a single run from provisioning to stop.
//!
//! [`run`] provisions the bot's database (create + migrate; nothing is answered before the
//! migrations are in), checks the token with `getMe`, registers the command list, then runs a
//! teloxide dispatcher fed by the [`listener::DurableListener`] until the run's stop token is
//! cancelled or a failure is reported. Restarting, backoff and status are the supervisor's job
//! (`supervisor::slot`).
//!
//! - [`config`]: the hot-swapped manifest + texts snapshot;
//! - [`telegram`]: the shared Bot API client and error classification;
//! - [`listener`]: the durable update listener (inbox before offset).

pub mod inbox;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use teloxide::dispatching::Dispatcher;
use teloxide::error_handlers::LoggingErrorHandler;
use teloxide::prelude::Requester;
use teloxide::types::{BotCommand, Me};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::botdb::budget::{BotPool, ConnectionBudget};
use crate::botdb::{BotDbError, BotDbTarget};
use crate::content::manifest::Manifest;
use crate::content::snapshot::SharedConfig;
use crate::settings::Settings;
use crate::telegram::{SendFailure, TelegramApi, classify_send_error};
use crate::token::BotToken;
use inbox::{DurableListener, FailureSlot};

/// Handlers of one bot running at once (across its chats).
const HANDLER_CONCURRENCY: usize = 16;

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
}

/// Why a bot run ended.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BotFailure {
    /// The token is invalid or revoked (fatal until it changes).
    #[error(
        "Telegram rejected the token (401 Unauthorized): set a valid token with `botvisor bot set-token`"
    )]
    Unauthorized,
    /// The database could not be created or migrated, or the override is invalid.
    #[error("{0}")]
    Database(String, bool),
    /// The manifest stored in the panel is invalid (fatal until it changes).
    #[error("{0}")]
    InvalidManifest(String),
    /// A transient failure (network, database connection, server error).
    #[error("{0}")]
    Transient(String),
}

impl BotFailure {
    /// Whether the bot should wait for a panel change instead of retrying.
    pub fn is_fatal(&self) -> bool {
        match self {
            BotFailure::Unauthorized | BotFailure::InvalidManifest(_) => true,
            BotFailure::Database(_, fatal) => *fatal,
            BotFailure::Transient(_) => false,
        }
    }

    /// The `bot_status.state` this failure leads to when fatal.
    pub fn fatal_state(&self) -> &'static str {
        match self {
            BotFailure::Unauthorized => "auth_failed",
            _ => "failed",
        }
    }
}

impl From<BotDbError> for BotFailure {
    fn from(e: BotDbError) -> Self {
        let fatal = e.is_fatal();
        BotFailure::Database(crate::mask::error_line(&e), fatal)
    }
}

/// Process-wide parts every bot run shares.
#[derive(Clone)]
pub struct SharedDeps {
    /// Settings.
    pub settings: Arc<Settings>,
    /// The Bot API client.
    pub api: TelegramApi,
    /// The global connection budget for bot databases.
    pub budget: ConnectionBudget,
}

/// What a handler needs besides the update, the `Bot` and `Me`.
pub struct BotContext {
    /// Panel id.
    pub bot_id: i64,
    /// The Telegram bot's user id (the token's numeric prefix); inbox rows are keyed by it.
    pub telegram_id: i64,
    /// The bot's database.
    pub db: BotPool,
    /// The current manifest + texts.
    pub config: SharedConfig,
    /// Where to report a failure that must end this run.
    pub failure: FailureSlot,
    /// This run's stop token (cancelled on failure).
    pub stop: CancellationToken,
    /// Bounds concurrent handlers of this bot.
    pub concurrency: Semaphore,
}

/// Runs the bot until `stop` is cancelled (Ok) or a failure ends the run (Err).
///
/// `on_running` is called with the bot's Telegram username once the token is checked.
pub async fn run(
    deps: &SharedDeps,
    spec: &BotSpec,
    config: SharedConfig,
    stop: CancellationToken,
    on_running: impl AsyncFnOnce(&str),
) -> Result<(), BotFailure> {
    let target = BotDbTarget::resolve(&deps.settings, spec.id, spec.database.as_deref())?;
    let provision = target.provision_within(
        &deps.budget,
        deps.settings.bot_database.max_connections_per_bot,
    );
    let (created, db) = tokio::select! {
        () = stop.cancelled() => return Ok(()),
        r = provision => r?,
    };
    if created {
        tracing::info!(bot_id = spec.id, database = %target.database, "bot database created");
    }
    let result = dispatch(deps, spec, config, stop, db.clone(), on_running).await;
    db.close().await;
    result
}

async fn dispatch(
    deps: &SharedDeps,
    spec: &BotSpec,
    config: SharedConfig,
    stop: CancellationToken,
    db: BotPool,
    on_running: impl AsyncFnOnce(&str),
) -> Result<(), BotFailure> {
    let bot = deps.api.bot(&spec.token);
    let me = tokio::select! {
        () = stop.cancelled() => return Ok(()),
        r = bot.get_me() => r,
    };
    let me: Me = me.map_err(|e| match classify_send_error(&e) {
        SendFailure::Unauthorized => BotFailure::Unauthorized,
        other => BotFailure::Transient(format!("getMe failed: {other:?}")),
    })?;
    let username = me.username.clone().unwrap_or_default();
    sync_commands(&bot, spec.id, &config.load().manifest).await;
    on_running(&username).await;

    let failure: FailureSlot = Arc::new(Mutex::new(None));
    let run_stop = stop.child_token();
    let listener = DurableListener::new(
        inbox::ListenerParts {
            api: deps.api.clone(),
            token: spec.token.clone(),
            bot_id: spec.id,
            db: db.clone(),
            poll_timeout: Duration::from_secs(deps.settings.telegram.poll_timeout_secs),
            retention: inbox::Retention {
                inbox_days: deps.settings.bot_database.inbox_retention_days,
                config: config.clone(),
            },
        },
        run_stop.clone(),
        Arc::clone(&failure),
    );
    let context = Arc::new(BotContext {
        bot_id: spec.id,
        telegram_id: i64::try_from(spec.token.bot_user_id()).unwrap_or(i64::MAX),
        db,
        config,
        failure: Arc::clone(&failure),
        stop: run_stop.clone(),
        concurrency: Semaphore::new(HANDLER_CONCURRENCY),
    });
    let mut dispatcher = Dispatcher::builder(bot, crate::modules::handler())
        .dependencies(teloxide::dptree::deps![context])
        .build();
    let dispatched = dispatcher
        .try_dispatch_with_listener(listener, LoggingErrorHandler::new())
        .await;
    if let Err(e) = dispatched {
        return Err(match classify_send_error(&e) {
            SendFailure::Unauthorized => BotFailure::Unauthorized,
            other => BotFailure::Transient(format!("dispatcher failed to start: {other:?}")),
        });
    }
    let reported = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
    match reported {
        Some(f) => Err(f),
        None if stop.is_cancelled() => Ok(()),
        None => Err(BotFailure::Transient(
            "the update listener ended unexpectedly".into(),
        )),
    }
}

/// Registers the bot's command list (`setMyCommands`) from its manifest; failures are logged.
pub async fn sync_commands(bot: &teloxide::Bot, bot_id: i64, manifest: &Manifest) {
    let mut commands = vec![
        BotCommand::new("start", "Start"),
        BotCommand::new("help", "Help"),
    ];
    if manifest.main_menu.is_some() {
        commands.push(BotCommand::new("menu", "Menu"));
    }
    commands.extend(
        manifest
            .commands
            .iter()
            .map(|c| BotCommand::new(&c.command, &c.description)),
    );
    if let Err(e) = bot.set_my_commands(commands).await {
        tracing::warn!(bot_id, error = %crate::mask::redact(&e.to_string()), "setMyCommands failed");
    }
}
