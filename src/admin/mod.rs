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
//! - [`operators`]: operators, roles, passwords, sessions, API keys, the audit log;
//! - [`versions`]: the history of texts and manifests, and rollback.
//!
//! Every change is written to the audit log as the service's actor ([`Admin::acting_as`]),
//! and the version triggers record the same actor.

pub mod bots;
pub mod history;
pub mod manifests;
pub mod operators;
pub mod texts;
pub mod versions;

use std::sync::Arc;

use sqlx::PgPool;

use crate::botdb::BotDbError;
use crate::content::manifest::ManifestError;
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
            AdminError::BotDbQuery(_) => false,
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
}

impl Admin {
    /// A service over the panel `pool`, validating manifests with botvisor's modules.
    pub fn new(pool: PgPool, settings: Arc<Settings>) -> Self {
        Self::with_registry(pool, settings, Registry::standard())
    }

    /// A service validating manifests with `registry`.
    pub fn with_registry(pool: PgPool, settings: Arc<Settings>, registry: Registry) -> Self {
        Self {
            pool,
            settings,
            registry,
            actor: "cli".to_owned(),
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

    /// The panel pool (for callers that close it).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}
