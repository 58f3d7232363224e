//! The panel database: registered bots, their texts, and their reported status.
//!
//! - [`store`] holds all panel SQL;
//! - [`listener`] keeps the LISTEN connection for `bots_changed` / `reload_config` /
//!   `bot_wake`.
//!
//! Every write to `bots` or `bot_texts` notifies through triggers (migrations/panel), so the
//! CLI, an external admin panel and plain psql all wake the supervisor the same way.

pub mod access;
pub mod listener;
pub mod store;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

use crate::content::manifest::ManifestError;
use crate::content::texts::TextError;
use crate::crypto::{CryptoError, Keyring, token_aad};
use crate::schema::describe;
use crate::token::BotToken;

/// Channel notified with a bot id on every insert, update or delete of `bots`.
pub const BOTS_CHANGED: &str = "bots_changed";
/// Channel notified with a bot id (or an empty payload: every bot) when texts or a manifest
/// change.
pub const RELOAD_CONFIG: &str = "reload_config";
/// Channel notified with `<bot id>:<module>` when an operator action concerns a module's job
/// (e.g. a broadcast was queued in the bot's database): the owning daemon wakes that job.
pub const BOT_WAKE: &str = "bot_wake";

/// Errors of panel operations. Messages are written for operators.
#[derive(Debug, thiserror::Error)]
pub enum PanelError {
    /// The panel database is unreachable.
    #[error("cannot connect to the panel database at {url}: {source}")]
    Connect {
        /// The masked URL.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The panel database did not answer in time.
    #[error(
        "cannot connect to the panel database at {url}: no answer within {}s",
        CONNECT_TIMEOUT.as_secs()
    )]
    ConnectTimeout {
        /// The masked URL.
        url: String,
    },
    /// No bot has this id.
    #[error("no bot with id {0}")]
    BotNotFound(i64),
    /// The name is taken.
    #[error("a bot named {0:?} already exists")]
    DuplicateName(String),
    /// The token is registered for another bot (the message never shows it).
    #[error("this token is already registered for {holder}")]
    DuplicateToken {
        /// The bot that has it, `bot 3 (shop)`, or `another bot` when it could not be read.
        holder: String,
    },
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// No operator has this login.
    #[error("no operator with login {0:?}")]
    OperatorNotFound(String),
    /// The login is taken.
    #[error("an operator with login {0:?} already exists")]
    DuplicateLogin(String),
    /// A text is invalid.
    #[error("{key} [{lang}]: {source}")]
    Text {
        /// The text's key.
        key: String,
        /// Its language.
        lang: String,
        /// What is wrong.
        #[source]
        source: TextError,
    },
    /// A token or secret could not be sealed or opened (missing or wrong master key).
    #[error(transparent)]
    Key(#[from] CryptoError),
    /// Any other database error.
    #[error("panel database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl PanelError {
    /// Whether the error is the caller's input (exit code 2 in the CLI) rather than a failure.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, PanelError::Database(_) | PanelError::Key(_))
    }
}

/// A registered bot, as stored. Its token is sealed ([`BotRecord::open_token`]); `Debug`
/// shows neither form of it.
#[derive(Clone, sqlx::FromRow)]
pub struct BotRecord {
    /// Panel id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// A token still in clear: written by a binary older than sealed tokens, or by hand;
    /// sealed and emptied by `botvisor migrate` and at the daemon's start.
    pub token_clear: Option<String>,
    /// The sealed token ([`crate::crypto`], associated data: the bot id).
    pub token_sealed: Option<Vec<u8>>,
    /// Whether the bot should run.
    pub enabled: bool,
    /// Database override: a name on the default server or a full URL.
    pub database: Option<String>,
    /// The server its database lives on, `postgres://user@host:port` (no password; see
    /// migrations/panel/0010); `None`: the first configured server.
    pub db_server: Option<String>,
    /// The manifest as stored.
    pub manifest: sqlx::types::Json<serde_json::Value>,
    /// Bumped on every change of the row.
    pub version: i64,
    /// Number of texts.
    pub texts_count: i64,
    /// Latest text change.
    pub texts_updated_at: Option<DateTime<Utc>>,
    /// Number of secrets.
    pub secrets_count: i64,
    /// Latest secret change.
    pub secrets_updated_at: Option<DateTime<Utc>>,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
    /// `polling`, `webhook`, or `None`: the daemon's `telegram.default_mode`.
    pub mode: Option<String>,
    /// The sealed webhook secret (associated data [`webhook_secret_aad`]); `None` until the
    /// daemon first runs the bot in webhook mode, and again after a token change.
    pub webhook_secret_sealed: Option<Vec<u8>>,
}

/// Associated data sealing a bot's webhook secret.
pub fn webhook_secret_aad(bot_id: i64) -> Vec<u8> {
    crate::crypto::secret_aad(bot_id, "telegram.webhook_secret")
}

impl std::fmt::Debug for BotRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("token_sealed", &self.token_sealed.is_some())
            .field("enabled", &self.enabled)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl BotRecord {
    /// The bot's token: the sealed one opened with `keys`, or a clear one not sealed yet.
    /// The error says what is wrong in words, never with the token.
    pub fn open_token(&self, keys: &Keyring) -> Result<BotToken, String> {
        match (&self.token_sealed, &self.token_clear) {
            (Some(sealed), _) => {
                let secret = keys.open_string(&token_aad(self.id), sealed).map_err(|e| {
                    format!(
                        "cannot open the bot's token: {}",
                        crate::mask::error_line(&e)
                    )
                })?;
                BotToken::parse(secrecy::ExposeSecret::expose_secret(&secret))
                    .map_err(|e| e.to_string())
            }
            (None, Some(clear)) => BotToken::parse(clear).map_err(|e| e.to_string()),
            (None, None) => Err("the bot has no token".into()),
        }
    }

    /// A value that changes whenever the bot's manifest, texts or secrets change: the row's
    /// version, the number of texts and secrets, and the latest change of either.
    pub fn config_fingerprint(&self) -> (i64, i64, Option<DateTime<Utc>>) {
        (
            self.version,
            self.texts_count + self.secrets_count,
            self.texts_updated_at.max(self.secrets_updated_at),
        )
    }
}

/// What a bot's owner last reported.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct BotStatus {
    /// The bot.
    pub bot_id: i64,
    /// The instance running it.
    pub instance: String,
    /// starting, running, degraded, backoff, quarantined, auth_failed, failed, stopped.
    pub state: String,
    /// A readable explanation.
    pub detail: String,
    /// The bot's Telegram username, once known.
    pub telegram_username: Option<String>,
    /// When the current run started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the status was written.
    pub updated_at: DateTime<Utc>,
    /// Webhook mode: the URL Telegram has (empty: none), as of `webhook_checked_at`.
    pub webhook_url: Option<String>,
    /// Webhook mode: updates Telegram has not delivered yet.
    pub webhook_pending_update_count: Option<i64>,
    /// Webhook mode: when Telegram's latest delivery error happened.
    pub webhook_last_error_at: Option<DateTime<Utc>>,
    /// Webhook mode: Telegram's latest delivery error.
    pub webhook_last_error: Option<String>,
    /// Webhook mode: when getWebhookInfo was last asked.
    pub webhook_checked_at: Option<DateTime<Utc>>,
    /// Updates handled per minute over the owner's latest traffic interval.
    pub updates_per_min: Option<i32>,
    /// Messages Telegram accepted per minute over that interval.
    pub sent_per_min: Option<i32>,
    /// When those figures were written.
    pub traffic_at: Option<DateTime<Utc>>,
}

/// A daemon instance, as its latest heartbeat left it in `instances`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct InstanceRecord {
    /// The instance's name (`supervisor.instance`, default the host name).
    pub name: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its latest heartbeat.
    pub heartbeat_at: DateTime<Utc>,
    /// Its process id.
    pub pid: i32,
    /// The host it runs on.
    pub host: String,
    /// The backend pid of its control connection (the session holding its bots' locks).
    pub control_pid: Option<i32>,
    /// How many bots it owned at its latest heartbeat.
    pub bots_owned: i32,
    /// Whether its control session is open right now (seen in `pg_stat_activity`).
    pub live: bool,
}

/// A text row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct TextRecord {
    /// Key.
    pub key: String,
    /// Language.
    pub lang: String,
    /// Value with placeholders.
    pub value: String,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A bot's secret as stored: sealed (see [`crate::crypto`]); only its name is readable.
#[derive(Clone, sqlx::FromRow)]
pub struct SecretRecord {
    /// The bot.
    pub bot_id: i64,
    /// The secret's name.
    pub name: String,
    /// The sealed value.
    pub sealed: Vec<u8>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for SecretRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRecord")
            .field("bot_id", &self.bot_id)
            .field("name", &self.name)
            .field("updated_at", &self.updated_at)
            .finish_non_exhaustive()
    }
}

/// How long opening the first panel connection may take before we give up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A daemon instance whose heartbeat in `instances` is younger than this is alive (three
/// missed beats of the control loop's 5 s): the rule for a standby's takeover, for an
/// in-place import waiting for a bot to stop, and for the web panel's "daemon gone" mark.
pub const INSTANCE_LIVE: Duration = Duration::from_secs(15);

/// Opens a small pool to the panel database, failing fast with the (masked) URL and the real
/// cause when it is unreachable.
///
/// One connection is opened first, outside the pool: a pool retries a refused connection until
/// its acquire timeout and then reports only `pool timed out`, hiding the cause. Proven by
/// `tests/cli_panel_errors.rs`.
pub async fn connect(options: &PgConnectOptions, max: u32) -> Result<PgPool, PanelError> {
    let url = describe(options);
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Err(_) => return Err(PanelError::ConnectTimeout { url }),
        Ok(Err(source)) => return Err(PanelError::Connect { url, source }),
        Ok(Ok(probe)) => {
            let _ = probe.close().await;
        }
    }
    PgPoolOptions::new()
        .max_connections(max)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .idle_timeout(Duration::from_secs(60))
        .connect_with(options.clone())
        .await
        .map_err(|source| PanelError::Connect {
            url: describe(options),
            source,
        })
}
