//! Bots: register, inspect, change, remove; wake a module's job.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgConnectOptions;

use super::{Admin, AdminError};
use crate::botdb::{BotDbTarget, validate_override};
use crate::content::manifest::Manifest;
use crate::mask::{mask_token, mask_url};
use crate::panel::{BotRecord, BotStatus, store};
use crate::settings::UpdateMode;
use crate::token::BotToken;

/// The states a bot's status can have (`bot_status.state`), in the order lists show them.
pub const BOT_STATES: [&str; 7] = [
    "starting",
    "running",
    "backoff",
    "failed",
    "auth_failed",
    "quarantined",
    "stopped",
];

/// Longest bot name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// A bot to register.
#[derive(Debug, Clone, Default)]
pub struct NewBot<'a> {
    /// A unique name (letters, digits, spaces, `_ . -`; up to [`MAX_NAME_LEN`]).
    pub name: &'a str,
    /// The token BotFather gave.
    pub token: &'a str,
    /// The manifest as JSON text; `None`: an empty manifest.
    pub manifest: Option<&'a str>,
    /// Whether the daemon should start it.
    pub enabled: bool,
    /// A database name or URL overriding the naming rule.
    pub database: Option<&'a str>,
}

/// What removing a bot did to its database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseFate {
    /// Kept (named).
    Kept(String),
    /// Dropped (named).
    Dropped(String),
    /// Asked to drop, but it did not exist (named).
    Missing(String),
    /// Its database could not be resolved (an invalid override); nothing was touched.
    Unknown,
}

/// A bot as every interface shows it: the token masked, the status joined.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BotView {
    /// Panel id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// The token, masked (`123456:****`).
    pub token: String,
    /// Whether the daemon runs it.
    pub enabled: bool,
    /// Its database's name.
    pub database: String,
    /// The server its database lives on, as configured with the password masked (or
    /// `postgres://user@host:port` when the settings do not list it).
    pub server: String,
    /// The override, if any, its password masked.
    pub database_override: Option<String>,
    /// The row's version.
    pub version: i64,
    /// How many texts it has.
    pub texts: i64,
    /// `bot_status.state`.
    pub state: Option<String>,
    /// `bot_status.detail`.
    pub detail: Option<String>,
    /// Its Telegram username.
    pub telegram_username: Option<String>,
    /// The instance that reported the status.
    pub instance: Option<String>,
    /// When its current run started.
    pub started_at: Option<DateTime<Utc>>,
    /// When its status was last written.
    pub status_updated_at: Option<DateTime<Utc>>,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// When its row last changed.
    pub updated_at: DateTime<Utc>,
    /// How it gets its updates: `polling` or `webhook`.
    pub mode: String,
    /// Whether `mode` comes from the settings' `telegram.default_mode` (the row names none).
    pub mode_is_default: bool,
    /// Webhook mode: what `getWebhookInfo` said last (written by the instance running it).
    pub webhook: Option<WebhookView>,
    /// Traffic over the owner's latest interval (`supervisor.traffic_interval_secs`), once
    /// counted in the current run.
    pub traffic: Option<TrafficView>,
}

/// A bot's traffic as its owner last wrote it to `bot_status`.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct TrafficView {
    /// Updates handled per minute.
    pub updates_per_min: i32,
    /// Messages Telegram accepted per minute.
    pub sent_per_min: i32,
    /// When the figures were written.
    pub at: DateTime<Utc>,
}

/// What Telegram said about a bot's webhook at the last check.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    /// The URL Telegram has (empty: none set).
    pub url: String,
    /// Updates Telegram has not delivered yet.
    pub pending_update_count: Option<i64>,
    /// Telegram's latest delivery error.
    pub last_error_message: Option<String>,
    /// When that error happened.
    pub last_error_at: Option<DateTime<Utc>>,
    /// When getWebhookInfo was asked.
    pub checked_at: Option<DateTime<Utc>>,
}

/// Databases every PostgreSQL server has, never a bot's.
const RESERVED_DATABASES: [&str; 3] = ["postgres", "template0", "template1"];

/// Whether two connect options name the same database on the same server (loopback names
/// count as one host).
fn same_database(a: &PgConnectOptions, b: &PgConnectOptions) -> bool {
    let host = |o: &PgConnectOptions| match o.get_host() {
        "localhost" | "127.0.0.1" | "::1" | "[::1]" => "loopback".to_owned(),
        h => h.to_ascii_lowercase(),
    };
    host(a) == host(b) && a.get_port() == b.get_port() && a.get_database() == b.get_database()
}

/// Checks a bot name against the naming rule.
pub fn validate_name(name: &str) -> Result<(), AdminError> {
    let ok = !name.trim().is_empty()
        && name.chars().count() <= MAX_NAME_LEN
        && name.trim() == name
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(AdminError::InvalidName(name.to_owned()))
    }
}

/// What `botvisor status` shows.
#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    /// The `serve` instances registered on the panel (live or not), freshest first.
    pub instances: Vec<crate::panel::InstanceRecord>,
    /// Bots by state (`disabled`, `unknown` when no instance wrote a status yet).
    pub states: BTreeMap<String, usize>,
    /// Bots by the server their database lives on (masked URL; see [`BotView::server`]).
    pub servers: BTreeMap<String, usize>,
}

impl Admin {
    /// Registers a bot and returns its id.
    pub async fn add_bot(&self, bot: &NewBot<'_>) -> Result<i64, AdminError> {
        validate_name(bot.name)?;
        let token = BotToken::parse(bot.token)?;
        let manifest = match bot.manifest {
            Some(text) => self.validate_manifest(text)?,
            None => Manifest::default(),
        };
        if let Some(db) = bot.database {
            validate_override(db).map_err(AdminError::InvalidDatabase)?;
            self.check_database_free(db).await?;
        }
        let keys = self.keys()?;
        let after = serde_json::json!({
            "name": bot.name,
            "token": token.to_string(),
            "enabled": bot.enabled,
        });
        // A bot whose override URL names its own server is placed nowhere.
        let placement = match bot.database {
            Some(db) if db.contains("://") => Vec::new(),
            _ => crate::botdb::placement(&self.settings),
        };
        let id = store::add_bot_audited(
            &self.pool,
            &keys,
            &store::NewBot {
                name: bot.name,
                token: &token,
                enabled: bot.enabled,
                database: bot.database,
                manifest: &manifest,
            },
            &placement,
            &self.actor,
            |id| self.audit_entry("bot.add", Some(id), bot.name, None, Some(after)),
        )
        .await?;
        Ok(id)
    }

    /// Every bot with its status, by id.
    pub async fn list_bots(&self) -> Result<Vec<BotView>, AdminError> {
        let bots = store::list_bots(&self.pool).await?;
        let statuses: BTreeMap<i64, BotStatus> = store::list_statuses(&self.pool)
            .await?
            .into_iter()
            .map(|s| (s.bot_id, s))
            .collect();
        Ok(bots
            .iter()
            .map(|b| self.view(b, statuses.get(&b.id)))
            .collect())
    }

    /// The daemon instances and their latest heartbeats (a live daemon beats every few
    /// seconds; a stopped one has no row).
    pub async fn instances(&self) -> Result<Vec<crate::panel::InstanceRecord>, AdminError> {
        Ok(store::list_instances(&self.pool).await?)
    }

    /// One bot with its status.
    pub async fn show_bot(&self, id: i64) -> Result<BotView, AdminError> {
        let bot = store::get_bot(&self.pool, id).await?;
        let status = store::get_status(&self.pool, id).await?;
        Ok(self.view(&bot, status.as_ref()))
    }

    /// Enables or disables a bot (the daemon starts or stops it).
    pub async fn set_enabled(&self, id: i64, enabled: bool) -> Result<(), AdminError> {
        let before = store::get_bot(&self.pool, id).await?.enabled;
        let action = if enabled { "bot.enable" } else { "bot.disable" };
        let value = |v: bool| Some(serde_json::json!({ "enabled": v }));
        let entry = self.audit_entry(action, Some(id), "", value(before), value(enabled));
        Ok(store::set_enabled_audited(&self.pool, id, enabled, &entry).await?)
    }

    /// Replaces a bot's token (the daemon restarts it with the new one); returns it validated.
    pub async fn set_token(&self, id: i64, token: &str) -> Result<BotToken, AdminError> {
        let token = BotToken::parse(token)?;
        let keys = self.keys()?;
        let before = self.masked_token(&store::get_bot(&self.pool, id).await?);
        let value = |v: String| Some(serde_json::json!({ "token": v }));
        let entry = self.audit_entry(
            "bot.set_token",
            Some(id),
            "",
            value(before),
            value(token.masked()),
        );
        store::set_token_audited(&self.pool, &keys, id, &token, &entry).await?;
        Ok(token)
    }

    /// Sets how a bot gets its updates: `webhook`, `polling`, or `default` (the settings'
    /// `telegram.default_mode`). The daemon restarts the bot: polling → webhook sets the
    /// webhook after the poller stopped with its offset confirmed; webhook → polling deletes
    /// the webhook (pending updates kept) and polls.
    pub async fn set_mode(&self, id: i64, mode: &str) -> Result<(), AdminError> {
        let stored = match mode {
            "default" => None,
            m => Some(UpdateMode::parse(m).ok_or_else(|| {
                AdminError::Invalid(format!(
                    "unknown mode {m:?}: use webhook, polling or default"
                ))
            })?),
        };
        let effective = stored.unwrap_or_else(|| self.settings.default_mode());
        if effective == UpdateMode::Webhook
            && let Some(missing) = self.settings.webhook_unavailable()
        {
            return Err(AdminError::Invalid(missing.into()));
        }
        let before = store::get_bot(&self.pool, id).await?.mode;
        let value = |v: Option<&str>| Some(serde_json::json!({ "mode": v }));
        let entry = self.audit_entry(
            "bot.set_mode",
            Some(id),
            "",
            value(before.as_deref()),
            value(stored.map(UpdateMode::as_str)),
        );
        Ok(store::set_mode_audited(&self.pool, id, stored.map(UpdateMode::as_str), &entry).await?)
    }

    /// Renames a bot.
    pub async fn rename_bot(&self, id: i64, name: &str) -> Result<(), AdminError> {
        validate_name(name)?;
        let before = store::get_bot(&self.pool, id).await?.name;
        let value = |v: &str| Some(serde_json::json!({ "name": v }));
        let entry = self.audit_entry("bot.rename", Some(id), "", value(&before), value(name));
        Ok(store::rename_bot_audited(&self.pool, id, name, &entry).await?)
    }

    /// Removes a bot and its texts once `confirmed`; its database is dropped only with
    /// `drop_database`, otherwise kept. Unconfirmed, the error says what would happen.
    pub async fn remove_bot(
        &self,
        id: i64,
        drop_database: bool,
        confirmed: bool,
    ) -> Result<DatabaseFate, AdminError> {
        let bot = store::get_bot(&self.pool, id).await?;
        let target = self.bot_target(&bot);
        if !confirmed {
            let database = match &target {
                Ok(t) => format!("its database {}", t.database),
                Err(_) => "its database".to_owned(),
            };
            let name = &bot.name;
            return Err(AdminError::NotConfirmed(if drop_database {
                format!(
                    "this would remove bot {id} ({name}) and its texts, and drop {database} \
                     for good; add --yes to confirm"
                )
            } else {
                format!(
                    "this would remove bot {id} ({name}) and its texts; {database} is kept \
                     (add --drop-database to drop it too); add --yes to confirm"
                )
            }));
        }
        if drop_database && let Err(e) = &target {
            return Err(AdminError::InvalidDatabase(crate::mask::error_line(e)));
        }
        let entry = self.audit_entry(
            "bot.remove",
            Some(id),
            &bot.name,
            Some(serde_json::json!({"name": bot.name, "token": self.masked_token(&bot)})),
            Some(serde_json::json!({ "drop_database": drop_database })),
        );
        store::remove_bot_audited(&self.pool, id, &entry).await?;
        Ok(match (drop_database, target) {
            (true, Ok(target)) => {
                if target.drop_database().await? {
                    DatabaseFate::Dropped(target.database)
                } else {
                    DatabaseFate::Missing(target.database)
                }
            }
            (false, Ok(target)) => DatabaseFate::Kept(target.database),
            (_, Err(_)) => DatabaseFate::Unknown,
        })
    }

    /// Refuses a database override that PostgreSQL itself, the panel or another bot uses.
    async fn check_database_free(&self, database: &str) -> Result<(), AdminError> {
        let refuse = |reason: String| Err(AdminError::InvalidDatabase(reason));
        let target = BotDbTarget::resolve(&self.settings, 0, Some(database))
            .map_err(|e| AdminError::InvalidDatabase(crate::mask::error_line(&e)))?;
        let name = target.database.as_str();
        if RESERVED_DATABASES.contains(&name) {
            return refuse(format!(
                "database {name} belongs to PostgreSQL itself; choose another name"
            ));
        }
        let any_server =
            !self.settings.bot_database.servers.is_empty() && !database.contains("://");
        if let Ok(panel) = self.settings.panel_connect_options()
            && (same_database(&target.options, &panel)
                || (any_server && panel.get_database() == Some(name)))
        {
            return refuse(format!(
                "database {name} is the panel's own database; choose another name"
            ));
        }
        // With several servers the new bot's server is chosen only as it is inserted, and a
        // move keeps the name: a plain name must then be free on every server.
        for (id, other, server) in store::list_database_overrides(&self.pool).await? {
            if let Ok(other) =
                BotDbTarget::resolve_on(&self.settings, id, server.as_deref(), other.as_deref())
                && (same_database(&target.options, &other.options)
                    || (any_server && other.database == target.database))
            {
                return refuse(format!(
                    "database {name} is already used by bot {id}; choose another name"
                ));
            }
        }
        Ok(())
    }

    /// Wakes module `module`'s job of bot `id` in the daemon that runs it.
    pub async fn wake(&self, id: i64, module: &str) -> Result<(), AdminError> {
        Ok(store::notify_wake(&self.pool, id, module).await?)
    }

    /// Asks the daemon to reload one bot's content, or every bot's.
    pub async fn reload(&self, id: Option<i64>) -> Result<(), AdminError> {
        Ok(store::notify_reload(&self.pool, id).await?)
    }

    /// The instances sharing the panel and the bots by state, for `botvisor status`.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, AdminError> {
        let instances = store::list_instances(&self.pool).await?;
        let bots = store::list_bots(&self.pool).await?;
        let statuses: BTreeMap<i64, BotStatus> = store::list_statuses(&self.pool)
            .await?
            .into_iter()
            .map(|s| (s.bot_id, s))
            .collect();
        let mut states: BTreeMap<String, usize> = BTreeMap::new();
        for bot in &bots {
            let state = match (bot.enabled, statuses.get(&bot.id)) {
                (false, _) => "disabled".to_owned(),
                (true, Some(s)) => s.state.clone(),
                (true, None) => "unknown".to_owned(),
            };
            *states.entry(state).or_default() += 1;
        }
        let mut servers: BTreeMap<String, usize> = BTreeMap::new();
        for bot in &bots {
            let server = match self.bot_target(bot) {
                Ok(t) => self.server_masked(&t.server_key),
                Err(_) => bot.db_server.clone().unwrap_or_else(|| "<invalid>".into()),
            };
            *servers.entry(server).or_default() += 1;
        }
        Ok(ClusterStatus {
            instances,
            states,
            servers,
        })
    }

    /// The database of a bot, resolved by the settings' naming rule or its override.
    pub fn bot_target(&self, bot: &BotRecord) -> Result<BotDbTarget, AdminError> {
        Ok(BotDbTarget::resolve_on(
            &self.settings,
            bot.id,
            bot.db_server.as_deref(),
            bot.database.as_deref(),
        )?)
    }

    /// The configured URL (masked) of the server with key `key`, else the key itself.
    pub(super) fn server_masked(&self, key: &str) -> String {
        crate::botdb::servers(&self.settings)
            .ok()
            .and_then(|list| list.into_iter().find(|s| s.key == key))
            .map_or_else(|| key.to_owned(), |s| s.masked())
    }

    /// The bot's token masked (`123456:****`); `****` when it cannot be opened (no key file).
    fn masked_token(&self, bot: &BotRecord) -> String {
        match &bot.token_clear {
            Some(clear) if bot.token_sealed.is_none() => mask_token(clear),
            _ => self
                .keys()
                .ok()
                .and_then(|keys| bot.open_token(&keys).ok())
                .map_or_else(|| "****".to_owned(), |t| t.masked()),
        }
    }

    fn view(&self, bot: &BotRecord, status: Option<&BotStatus>) -> BotView {
        let (database, server) = match self.bot_target(bot) {
            Ok(t) => (t.database, self.server_masked(&t.server_key)),
            Err(e) => (format!("<{e}>"), bot.db_server.clone().unwrap_or_default()),
        };
        BotView {
            id: bot.id,
            name: bot.name.clone(),
            token: self.masked_token(bot),
            enabled: bot.enabled,
            database,
            server,
            database_override: bot.database.as_deref().map(mask_url),
            version: bot.version,
            texts: bot.texts_count,
            state: status.map(|s| s.state.clone()),
            detail: status.map(|s| s.detail.clone()),
            telegram_username: status.and_then(|s| s.telegram_username.clone()),
            instance: status.map(|s| s.instance.clone()),
            started_at: status.and_then(|s| s.started_at),
            status_updated_at: status.map(|s| s.updated_at),
            created_at: bot.created_at,
            updated_at: bot.updated_at,
            mode: bot
                .mode
                .as_deref()
                .and_then(UpdateMode::parse)
                .unwrap_or_else(|| self.settings.default_mode())
                .as_str()
                .to_owned(),
            mode_is_default: bot.mode.is_none(),
            webhook: status.and_then(|s| {
                Some(WebhookView {
                    url: s.webhook_url.clone()?,
                    pending_update_count: s.webhook_pending_update_count,
                    last_error_message: s.webhook_last_error.clone(),
                    last_error_at: s.webhook_last_error_at,
                    checked_at: s.webhook_checked_at,
                })
            }),
            traffic: status.and_then(|s| {
                Some(TrafficView {
                    updates_per_min: s.updates_per_min?,
                    sent_per_min: s.sent_per_min?,
                    at: s.traffic_at?,
                })
            }),
        }
    }
}
