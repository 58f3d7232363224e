//! Operators' rules, in one place: every validated write an operator can make, shared by the
//! CLI and (to come) the HTTP API and web panel.
//!
//! [`Admin`] holds the panel pool, the settings and the module registry; its methods validate
//! input at the edge with clear, typed errors ([`AdminError`]) and then call the stores. The
//! daemon picks every change up through the panel's NOTIFY contract (docs/panel.md).
//!
//! - [`bots`]: add, list, show, enable/disable, set the token, rename, remove, wake a job;
//! - [`texts`]: set, get, list, delete, import, export;
//! - [`manifests`]: show, validate, replace;
//! - [`history`]: a chat's message history from the bot's database;
//! - [`broadcasts`]: start, list, show, pause, resume, cancel and report mailings;
//! - [`schedules`]: add, list, remove, pause and resume scheduled jobs, and their runs;
//! - [`secrets`]: a bot's named secrets, sealed with the master key;
//! - [`keys`]: rotating the master key;
//! - [`data`]: erasing a bot; exporting and erasing one user's rows;
//! - [`operators`]: operators, roles, passwords, sessions, API keys, the audit log;
//! - [`versions`]: the history of texts and manifests, and rollback;
//! - [`archive`]: a bot exported to one archive file and imported again as a new bot or in
//!   place over an existing one;
//! - [`moving`]: a bot's database moved to another of the configured servers.
//!
//! The master key file is read when an operation first needs it (so commands that touch no
//! secret work without it) and kept; see [`crate::crypto`].
//!
//! Every change is written to the audit log as the service's actor ([`Admin::acting_as`]),
//! and the version triggers record the same actor.

pub mod archive;
pub mod bots;
pub mod broadcasts;
pub mod data;
pub mod history;
pub mod keys;
pub mod manifests;
pub mod moving;
pub mod operators;
pub mod schedules;
pub mod secrets;
pub mod texts;
pub mod versions;

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use sqlx::{PgConnection, PgPool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::botdb::BotDbError;
use crate::content::manifest::ManifestError;
use crate::crypto::{CryptoError, Keyring};
use crate::modules::Registry;
use crate::panel::PanelError;
use crate::settings::Settings;
use crate::token::TokenError;

/// Why an operator's request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The bot name breaks the naming rule.
    #[error("invalid bot name {0:?}: use 1-{max} letters, digits, spaces, _ . -", max = bots::MAX_NAME_LEN)]
    InvalidName(String),
    /// The token is malformed (the message never shows it).
    #[error(transparent)]
    InvalidToken(#[from] TokenError),
    /// The database override is neither a valid name nor a valid URL.
    #[error("invalid database override: {0}")]
    InvalidDatabase(String),
    /// The manifest is invalid (the message names the JSON path).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A texts document could not be read as a map of texts.
    #[error("{0}")]
    InvalidTexts(String),
    /// A text asked for does not exist.
    #[error("bot {id} has no text {key} [{lang}]")]
    NoSuchText {
        /// The bot.
        id: i64,
        /// The key.
        key: String,
        /// The language.
        lang: String,
    },
    /// A secret's name or value is not acceptable (the message never shows the value).
    #[error("{0}")]
    InvalidSecret(String),
    /// A secret asked for does not exist.
    #[error("bot {id} has no secret {name:?}")]
    NoSuchSecret {
        /// The bot.
        id: i64,
        /// The secret's name.
        name: String,
    },
    /// The master key is missing or wrong, or a sealed value cannot be opened.
    #[error(transparent)]
    Key(#[from] CryptoError),
    /// Removing a bot or its data needs an explicit confirmation (the message says what would
    /// happen).
    #[error("{0}")]
    NotConfirmed(String),
    /// The bot's database does not exist yet.
    #[error("bot {id} has no database yet ({database}): it is created on the bot's first start")]
    NoDatabase {
        /// The bot.
        id: i64,
        /// The database that would be created.
        database: String,
    },
    /// An operator's request is invalid (the message says what and what to do).
    #[error("{0}")]
    Invalid(String),
    /// A bot archive is unreadable, corrupt or not a bot archive (nothing was written).
    #[error("{0}")]
    InvalidArchive(String),
    /// Writing an archive or restoring one failed (the message says what was undone).
    #[error("{0}")]
    ArchiveFailed(String),
    /// No such broadcast or scheduled job in the bot's database.
    #[error("bot {id} has no {what} {item}")]
    NotFound {
        /// The bot.
        id: i64,
        /// `broadcast` or `job`.
        what: &'static str,
        /// The broadcast's or job's id.
        item: i64,
    },
    /// The panel refused or failed.
    #[error(transparent)]
    Panel(#[from] PanelError),
    /// The bot's database could not be resolved, reached or managed.
    #[error(transparent)]
    BotDb(#[from] BotDbError),
    /// Reading the bot's database failed.
    #[error("cannot read the bot's database")]
    BotDbQuery(#[source] sqlx::Error),
    /// An operator's login, role, password or bot list is not acceptable.
    #[error("{0}")]
    InvalidOperator(String),
    /// The login or password is wrong (which one is not said).
    #[error("wrong login or password")]
    BadCredentials,
    /// The operator's role does not allow this.
    #[error("{0}")]
    Forbidden(String),
    /// A version asked for does not exist.
    #[error("{0}")]
    NoSuchVersion(String),
}

impl AdminError {
    /// Whether the caller's input is at fault (exit code 2, HTTP 4xx) rather than the system.
    pub fn is_bad_input(&self) -> bool {
        match self {
            AdminError::Panel(e) => e.is_bad_input(),
            AdminError::BotDb(e) => matches!(
                e,
                BotDbError::InvalidTarget { .. } | BotDbError::Connect { .. }
            ),
            AdminError::BotDbQuery(_) | AdminError::Key(_) | AdminError::ArchiveFailed(_) => false,
            _ => true,
        }
    }
}

/// The operators' service: the rules every interface applies.
#[derive(Debug, Clone)]
pub struct Admin {
    pool: PgPool,
    settings: Arc<Settings>,
    registry: Registry,
    actor: String,
    keys: Arc<Mutex<Option<Arc<Keyring>>>>,
    /// Permits for connections to bots' own databases: at most
    /// `panel_http.bot_db_connections` are open at once in this process (the web panel's
    /// share of `settings::AUTO_BUDGET_RESERVE`); more requests wait their turn.
    bot_db: Arc<Semaphore>,
}

/// A connection to a bot's own database, holding one of the process's bot-database permits
/// until it is closed or dropped.
#[derive(Debug)]
pub(crate) struct BotConn {
    conn: PgConnection,
    _permit: OwnedSemaphorePermit,
}

impl BotConn {
    /// Closes the connection (politely; a failure only means it was gone already) and gives
    /// the permit back.
    pub(crate) async fn close(self) {
        let _ = sqlx::Connection::close(self.conn).await;
    }
}

impl Deref for BotConn {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for BotConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

impl Admin {
    /// A service over the panel `pool`, validating manifests with botvisor's modules.
    pub fn new(pool: PgPool, settings: Arc<Settings>) -> Self {
        Self::with_registry(pool, settings, Registry::standard())
    }

    /// A service validating manifests with `registry`.
    pub fn with_registry(pool: PgPool, settings: Arc<Settings>, registry: Registry) -> Self {
        let permits = settings.panel_http.bot_db_connections.max(1) as usize;
        Self {
            bot_db: Arc::new(Semaphore::new(permits)),
            pool,
            settings,
            registry,
            actor: "cli".to_owned(),
            keys: Arc::default(),
        }
    }

    /// The same service, recording its changes (audit log, versions) as `actor`, e.g.
    /// `panel:alice` or `cli:root`.
    pub fn acting_as(&self, actor: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            ..self.clone()
        }
    }

    /// Who this service's changes are recorded as.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// The master keys, read from `secrets.master_key_file` on first use.
    pub fn keys(&self) -> Result<Arc<Keyring>, AdminError> {
        let mut slot = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(keys) = slot.as_ref() {
            return Ok(Arc::clone(keys));
        }
        let keys = Arc::new(self.settings.keyring()?);
        *slot = Some(Arc::clone(&keys));
        Ok(keys)
    }

    /// The panel pool (for callers that close it).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A connection to bot `id`'s own database (which must exist already), with its row.
    /// It waits for one of the process's bot-database permits first, so this process never
    /// holds more than `panel_http.bot_db_connections` of them
    /// (`admin::tests::bot_database_connections_are_bounded`).
    pub(crate) async fn bot_conn(
        &self,
        id: i64,
    ) -> Result<(BotConn, crate::panel::BotRecord), AdminError> {
        use sqlx::ConnectOptions;
        let bot = crate::panel::store::get_bot(&self.pool, id).await?;
        let permit = Arc::clone(&self.bot_db)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let target = self.bot_target(&bot)?;
        if !target.exists().await? {
            return Err(AdminError::NoDatabase {
                id,
                database: target.database,
            });
        }
        let conn =
            target
                .options
                .connect()
                .await
                .map_err(|source| crate::botdb::BotDbError::Connect {
                    url: target.describe(),
                    database: target.database.clone(),
                    source,
                })?;
        Ok((
            BotConn {
                conn,
                _permit: permit,
            },
            bot,
        ))
    }

    /// Bot-database permits free now (for tests of the bound).
    pub fn bot_db_permits_free(&self) -> usize {
        self.bot_db.available_permits()
    }
}
