//! Typed settings: a TOML file merged with `BOTVISOR__SECTION__KEY` environment variables.
//!
//! Precedence, lowest first: built-in defaults, the settings file (`--config FILE`, else
//! `/etc/botvisor/botvisor.toml` when it exists), `BOTVISOR__SECTION__KEY` variables, then the
//! documented shortcuts `BOTVISOR_PANEL_URL` (falling back to `DATABASE_URL`) and
//! `BOTVISOR_TELEGRAM_API_URL`. Unknown keys anywhere are an error, and [`Settings::validate`]
//! runs before anything starts. `deploy/botvisor.toml.example` documents every key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnectOptions;

use crate::mask::mask_url;

/// The settings file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/botvisor/botvisor.toml";

/// Errors while loading or validating settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named with `--config` does not exist.
    #[error("settings file {0} does not exist")]
    MissingFile(PathBuf),
    /// The file or the environment could not be parsed into the settings tree.
    #[error("invalid settings: {0}")]
    Parse(String),
    /// A value parsed but is not acceptable.
    #[error("invalid setting `{key}`: {reason}")]
    Invalid {
        /// Dotted key, e.g. `panel.url`.
        key: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
}

/// The whole settings tree.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The panel database: registered bots, their texts and status.
    pub panel: PanelSettings,
    /// Where each bot's own database lives and how it is named.
    pub bot_database: BotDatabaseSettings,
    /// The Telegram Bot API endpoint.
    pub telegram: TelegramSettings,
    /// The reconcile loop and shutdown.
    pub supervisor: SupervisorSettings,
    /// Logging.
    pub log: LogSettings,
    /// The web admin panel and HTTP API (`botvisor panel`).
    pub panel_http: PanelHttpSettings,
    /// Secrets at rest: the master key.
    pub secrets: SecretsSettings,
    /// Prometheus metrics served at `/metrics` by `serve`.
    pub metrics: MetricsSettings,
    /// The HTTP listener of `botvisor serve`: webhooks, health (and metrics).
    pub http: HttpSettings,
}

/// Shortest `metrics.idle_timeout_secs`: twice the refresh period of the bot state gauges.
pub const MIN_METRICS_IDLE_TIMEOUT_SECS: u64 = 10;

/// Prometheus metrics settings (docs/operations.md, "Metrics").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Seconds after which a series that was not updated (a removed bot's, a long-idle bot's
    /// counters) is dropped from `/metrics`; a bot's state gauge is refreshed while the bot
    /// exists, so it stays.
    pub idle_timeout_secs: u64,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            idle_timeout_secs: 3600,
        }
    }
}

impl MetricsSettings {
    /// [`Self::idle_timeout_secs`] as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
}

/// Settings of the HTTP listener of `botvisor serve` (webhooks, `/healthz`, `/readyz`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Address to listen on, e.g. `127.0.0.1:8090` (`BOTVISOR__HTTP__LISTEN`); empty (the
    /// default): no listener, so no webhooks and no health endpoints. Keep it on loopback
    /// behind a TLS reverse proxy.
    pub listen: String,
    /// The base URL Telegram reaches the listener at through the proxy, e.g.
    /// `https://bots.example.com` (`BOTVISOR__HTTP__PUBLIC_URL`); webhooks are set to
    /// `{public_url}/telegram/{bot id}`. Required for webhook mode.
    pub public_url: String,
}

/// Settings of `botvisor panel`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PanelHttpSettings {
    /// Address to listen on (`--listen` overrides it); keep it on loopback behind a TLS
    /// reverse proxy.
    pub listen: String,
    /// The URL operators open (behind the proxy), e.g. `https://panel.example.com`; printed
    /// at start and used in links. Empty: `http://<listen>`.
    pub public_base_url: String,
    /// Mark the session cookie `Secure` (sent over HTTPS only). Turn it off only for plain
    /// HTTP on loopback during development.
    pub cookie_secure: bool,
    /// Hours a session lasts after sign-in.
    pub session_hours: u64,
    /// Connections to bots' own databases (users, histories, broadcasts, schedules) this
    /// process opens at most at once; more requests wait their turn. Counted in
    /// [`AUTO_BUDGET_RESERVE`] at its default (1-16).
    pub bot_db_connections: u32,
}

impl Default for PanelHttpSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            public_base_url: String::new(),
            cookie_secure: true,
            session_hours: 12,
            bot_db_connections: 2,
        }
    }
}

/// Secrets-at-rest settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsSettings {
    /// The master key file sealing bot tokens and secrets (shortcut:
    /// `BOTVISOR_MASTER_KEY_FILE`); created by `botvisor keys init`, mode 0600.
    pub master_key_file: String,
}

impl Default for SecretsSettings {
    fn default() -> Self {
        Self {
            master_key_file: crate::crypto::DEFAULT_KEY_FILE.into(),
        }
    }
}

/// Panel database settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PanelSettings {
    /// PostgreSQL URL of the panel database (shortcut: `BOTVISOR_PANEL_URL`, then `DATABASE_URL`).
    pub url: String,
}

/// Per-bot database settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BotDatabaseSettings {
    /// Name of a bot's database; `{panel_db}` is the panel database's name, `{id}` the bot id.
    pub name_template: String,
    /// Server for bot databases (a PostgreSQL URL whose database part is ignored); empty means
    /// the panel's server. A one-server shorthand of [`Self::servers`]; setting both is an error.
    pub server_url: String,
    /// Several servers for bot databases, each a PostgreSQL URL (database part ignored) or a
    /// table `{ url = "…", weight = 2 }` (weight 1 when a plain URL). A new bot goes to the
    /// server with the fewest bots per weight (ties: the first listed); bots registered before
    /// servers were listed stay on the first one. Empty: [`Self::server_url`]
    /// (`BOTVISOR__BOT_DATABASE__SERVERS`: a TOML array, or URLs separated by commas).
    pub servers: Vec<ServerEntry>,
    /// Most connections the daemon holds to all bot databases together, whatever the bot
    /// count: a number, or `"auto"` (the default) to size it from the server's
    /// `max_connections` at start, keeping a reserve ([`BudgetSetting`]).
    pub connection_budget: BudgetSetting,
    /// Most connections one bot may hold at once (within the global budget).
    pub max_connections_per_bot: u32,
    /// Most bot databases created or migrated at once; the others wait their turn, and
    /// running bots are served before any of them (1 to `connection_budget`).
    pub provision_concurrency: u32,
    /// Seconds an idle bot-database connection is kept before it is closed.
    pub idle_timeout_secs: u64,
    /// Seconds to wait for a connection before a bot's database operation fails.
    pub acquire_timeout_secs: u64,
    /// Days processed updates stay in a bot's inbox before they are pruned (poisoned ones are
    /// kept for inspection).
    pub inbox_retention_days: u32,
    /// Seconds between two prunes of a running bot's inbox, outbox and history (past their
    /// retention). A run's first prune comes a fraction of this after its start, set by the
    /// bot id ([`crate::botdb::PruneSchedule`]), so starting many bots does not prune them all
    /// at once.
    pub prune_every_secs: u64,
}

/// One entry of `bot_database.servers`: a PostgreSQL URL and its placement weight.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServerEntry {
    /// The server's URL (its database part is ignored).
    pub url: String,
    /// Its share of new bots relative to the others (at least 1).
    pub weight: u32,
}

impl<'de> Deserialize<'de> for ServerEntry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            url: String,
            #[serde(default = "one")]
            weight: u32,
        }
        fn one() -> u32 {
            1
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Url(String),
            Table(Table),
        }
        match Either::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom(
                "a bot_database.servers entry must be a postgres:// URL or a table \
                 { url = \"postgres://…\", weight = N }",
            )
        })? {
            Either::Url(url) => Ok(Self { url, weight: 1 }),
            Either::Table(t) => Ok(Self {
                url: t.url,
                weight: t.weight,
            }),
        }
    }
}

/// The environment variable that overrides `bot_database.servers`.
pub const SERVERS_ENV: &str = "BOTVISOR__BOT_DATABASE__SERVERS";

/// Parses [`SERVERS_ENV`]: a TOML array (`["postgres://a/", {url = "postgres://b/", weight = 2}]`)
/// or URLs separated by commas.
fn parse_servers_env(value: &str) -> Result<Vec<ServerEntry>, ConfigError> {
    let value = value.trim();
    if value.starts_with('[') {
        #[derive(Deserialize)]
        struct Doc {
            servers: Vec<ServerEntry>,
        }
        let doc: Doc =
            toml::from_str(&format!("servers = {value}")).map_err(|e| ConfigError::Invalid {
                key: "bot_database.servers",
                reason: format!(
                    "{SERVERS_ENV} is not a TOML array of URLs or {{ url, weight }} tables: {}",
                    e.message()
                ),
            })?;
        return Ok(doc.servers);
    }
    Ok(value
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|url| ServerEntry {
            url: url.to_owned(),
            weight: 1,
        })
        .collect())
}

/// Telegram settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelegramSettings {
    /// Bot API base URL (shortcut: `BOTVISOR_TELEGRAM_API_URL`); point it at `botvisor sandbox`
    /// for local runs.
    pub api_url: String,
    /// Long-poll timeout of getUpdates, in seconds (kept under the HTTP client's timeout).
    pub poll_timeout_secs: u64,
    /// How bots whose panel row names no mode get their updates: `polling` (the default) or
    /// `webhook` (needs `http.listen` and `http.public_url`).
    pub default_mode: String,
    /// `max_connections` of every bot's `setWebhook`: simultaneous HTTPS connections Telegram
    /// opens for one bot (1-100; Telegram's default is 40).
    pub webhook_max_connections: u32,
    /// Seconds a bot in webhook mode stays idle (no update, nothing to send, no job due
    /// within as long) before its run ends into a dormant state that holds no run at all:
    /// its next update, its jobs' next deadline, an operator's wake-up or a content change
    /// starts it again (docs/webhooks.md, "Dormant bots"). 0: never (default 600).
    pub webhook_idle_after_secs: u64,
}

impl TelegramSettings {
    /// How long a bot in webhook mode idles before it sleeps (`None`: never).
    pub fn webhook_idle_after(&self) -> Option<Duration> {
        (self.webhook_idle_after_secs > 0)
            .then(|| Duration::from_secs(self.webhook_idle_after_secs))
    }
}

/// How a bot gets its updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateMode {
    /// `getUpdates` long polling.
    Polling,
    /// Telegram POSTs updates to `{http.public_url}/telegram/{bot id}`.
    Webhook,
}

impl UpdateMode {
    /// `polling` or `webhook` (as stored in `bots.mode`).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "polling" => Some(UpdateMode::Polling),
            "webhook" => Some(UpdateMode::Webhook),
            _ => None,
        }
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateMode::Polling => "polling",
            UpdateMode::Webhook => "webhook",
        }
    }
}

/// Supervisor settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorSettings {
    /// Seconds between full reconciles of the panel against the running bots.
    pub resync_interval_secs: u64,
    /// Seconds in-flight updates get to finish on shutdown before the daemon gives up on them.
    pub shutdown_deadline_secs: u64,
    /// Name of this instance, written to `bot_status.instance`; empty means the host name.
    pub instance: String,
    /// Seconds over which a bot's traffic is counted before the figures (scaled to a minute)
    /// are written to `bot_status` for the web panel's overview.
    pub traffic_interval_secs: u64,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Plain lines under systemd (`JOURNAL_STREAM` set), coloured text on a terminal.
    Auto,
    /// Plain text lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `auto`, `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `botvisor=debug,sqlx=warn`; `RUST_LOG` overrides it.
    pub filter: String,
}

/// `bot_database.connection_budget`: a number of connections, or `"auto"`.
///
/// `"auto"` reads the bot-database server's `max_connections` when the daemon starts and
/// keeps `superuser_reserved_connections` plus [`AUTO_BUDGET_RESERVE`] for everything else
/// that connects (see docs/performance.md, "Connection budget").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetSetting {
    /// Sized from the server at start.
    Auto,
    /// Exactly this many.
    Fixed(u32),
}

/// Connections `"auto"` leaves to others besides the superuser reserve: the daemon's panel
/// pool (4) and LISTEN connection (1), the web panel process (4: its panel pool of
/// [`PANEL_PROCESS_POOL`] and `panel_http.bot_db_connections`, default 2), a backup's
/// `pg_dump` (1) and an operator's `psql` or CLI call (2).
pub const AUTO_BUDGET_RESERVE: u32 = 12;

/// Connections of the web panel process's pool to the panel database.
pub const PANEL_PROCESS_POOL: u32 = 2;

impl BudgetSetting {
    /// The budget on a server with `max_connections` of which `superuser_reserved` are kept
    /// for superusers; `None` when "auto" leaves nothing.
    pub fn resolve(self, max_connections: u32, superuser_reserved: u32) -> Option<u32> {
        match self {
            BudgetSetting::Fixed(n) => Some(n),
            BudgetSetting::Auto => max_connections
                .checked_sub(superuser_reserved + AUTO_BUDGET_RESERVE)
                .filter(|n| *n > 0),
        }
    }
}

impl std::fmt::Display for BudgetSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BudgetSetting::Auto => f.write_str("\"auto\""),
            BudgetSetting::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for BudgetSetting {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            BudgetSetting::Auto => serializer.serialize_str("auto"),
            BudgetSetting::Fixed(n) => serializer.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for BudgetSetting {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = BudgetSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number of connections or \"auto\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                u32::try_from(v)
                    .map(BudgetSetting::Fixed)
                    .map_err(|_| E::custom(format!("{v} is too large for a number of connections")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("{v} is not a number of connections")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                let v = v.trim();
                if v.eq_ignore_ascii_case("auto") {
                    return Ok(BudgetSetting::Auto);
                }
                v.parse::<u32>().map(BudgetSetting::Fixed).map_err(|_| {
                    E::custom(format!(
                        "{v:?} is neither a number of connections nor \"auto\""
                    ))
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl BotDatabaseSettings {
    /// Checks the settings bounded by the budget against `budget` connections.
    pub fn check_budget(&self, budget: u32) -> Result<(), ConfigError> {
        let per_bot = self.max_connections_per_bot;
        if per_bot == 0 || per_bot > budget {
            return Err(ConfigError::Invalid {
                key: "bot_database.max_connections_per_bot",
                reason: format!("must be between 1 and connection_budget ({budget})"),
            });
        }
        let provisions = self.provision_concurrency;
        if provisions == 0 || provisions > budget {
            return Err(ConfigError::Invalid {
                key: "bot_database.provision_concurrency",
                reason: format!("must be between 1 and connection_budget ({budget})"),
            });
        }
        Ok(())
    }
}

/// Names a bot-database server without its password or database: `postgres://user@host:port`
/// (what `bots.db_server` records, and how a `--server` argument is matched).
pub fn server_key(options: &PgConnectOptions) -> String {
    let host = match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => options.get_host().to_ascii_lowercase(),
    };
    format!(
        "postgres://{}@{host}:{}",
        options.get_username(),
        options.get_port()
    )
}

/// Where a new bot's database goes, as an index into `servers` (`(key, weight)`): the server
/// with the fewest bots per weight, ties to the first listed. `counts` are the bots per
/// recorded server key, `None` for bots without one (they count for the first server).
pub fn place(servers: &[(String, u32)], counts: &[(Option<String>, i64)]) -> usize {
    let count = |i: usize, key: &str| -> i64 {
        counts
            .iter()
            .filter(|(k, _)| match k {
                Some(k) => k == key,
                None => i == 0,
            })
            .map(|(_, n)| *n)
            .sum()
    };
    let mut best = 0;
    let mut best_load = (i64::MAX, 1i64);
    for (i, (key, weight)) in servers.iter().enumerate() {
        let load = (count(i, key), i64::from((*weight).max(1)));
        // a/b < c/d  <=>  a*d < c*b (weights are positive); ties keep the earlier server.
        if i == 0 || load.0 * best_load.1 < best_load.0 * load.1 {
            best = i;
            best_load = load;
        }
    }
    best
}

impl BotDatabaseSettings {
    /// Checks `servers`: valid URLs, weights of at least 1, no server twice, not together with
    /// `server_url`.
    fn validate_servers(&self) -> Result<(), ConfigError> {
        const KEY: &str = "bot_database.servers";
        if self.servers.is_empty() {
            return Ok(());
        }
        if !self.server_url.is_empty() {
            return Err(ConfigError::Invalid {
                key: KEY,
                reason: "set either bot_database.server_url (one server) or \
                         bot_database.servers (several), not both"
                    .into(),
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for server in &self.servers {
            let options = parse_pg_url(KEY, &server.url)?;
            // The panel records each bot's server by user, host and port: every process
            // (daemon, CLI, web panel) must derive the same, whatever its PGUSER or PGPORT.
            let explicit = url::Url::parse(&server.url)
                .is_ok_and(|u| !u.username().is_empty() && u.port().is_some());
            if !explicit {
                return Err(ConfigError::Invalid {
                    key: KEY,
                    reason: format!(
                        "{} must name its user and port (postgres://USER@HOST:PORT/): bots \
                         are recorded on a server by user, host and port",
                        mask_url(&server.url)
                    ),
                });
            }
            if server.weight == 0 {
                return Err(ConfigError::Invalid {
                    key: KEY,
                    reason: format!("{}: weight must be at least 1", mask_url(&server.url)),
                });
            }
            let key = server_key(&options);
            if !seen.insert(key.clone()) {
                return Err(ConfigError::Invalid {
                    key: KEY,
                    reason: format!("{key} is listed twice"),
                });
            }
        }
        Ok(())
    }
}

impl Default for BotDatabaseSettings {
    fn default() -> Self {
        Self {
            name_template: "{panel_db}_bot_{id}".into(),
            server_url: String::new(),
            servers: Vec::new(),
            connection_budget: BudgetSetting::Auto,
            max_connections_per_bot: 2,
            provision_concurrency: 2,
            idle_timeout_secs: 30,
            acquire_timeout_secs: 10,
            inbox_retention_days: 7,
            prune_every_secs: 3600,
        }
    }
}

impl Default for TelegramSettings {
    fn default() -> Self {
        Self {
            api_url: "https://api.telegram.org".into(),
            poll_timeout_secs: 10,
            default_mode: "polling".into(),
            webhook_max_connections: 40,
            webhook_idle_after_secs: 600,
        }
    }
}

impl Default for SupervisorSettings {
    fn default() -> Self {
        Self {
            resync_interval_secs: 30,
            traffic_interval_secs: 60,
            shutdown_deadline_secs: 20,
            instance: String::new(),
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            filter: "info,sqlx=warn".into(),
        }
    }
}

impl Settings {
    /// Loads settings from `file` (or the default path if it exists) and `env`, then validates.
    ///
    /// `env` is passed in rather than read here so tests never depend on the process
    /// environment; the binary passes `std::env::vars()`.
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        match file {
            Some(path) if !path.exists() => return Err(ConfigError::MissingFile(path.into())),
            Some(path) => builder = builder.add_source(toml_file(path)),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                builder = builder.add_source(toml_file(Path::new(DEFAULT_CONFIG_PATH)));
            }
            None => {}
        }
        let nested: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("BOTVISOR__") && k.as_str() != SERVERS_ENV)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("BOTVISOR")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(nested)),
        );
        let panel_url = env
            .get("BOTVISOR_PANEL_URL")
            .or_else(|| env.get("DATABASE_URL"))
            .filter(|v| !v.is_empty());
        if let Some(url) = panel_url {
            builder = builder
                .set_override("panel.url", url.as_str())
                .map_err(|e| ConfigError::Parse(e.to_string()))?;
        }
        if let Some(url) = env
            .get("BOTVISOR_TELEGRAM_API_URL")
            .filter(|v| !v.is_empty())
        {
            builder = builder
                .set_override("telegram.api_url", url.as_str())
                .map_err(|e| ConfigError::Parse(e.to_string()))?;
        }
        if let Some(file) = env
            .get(crate::crypto::KEY_FILE_ENV)
            .filter(|v| !v.is_empty())
        {
            builder = builder
                .set_override("secrets.master_key_file", file.as_str())
                .map_err(|e| ConfigError::Parse(e.to_string()))?;
        }
        let mut settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        if let Some(value) = env.get(SERVERS_ENV) {
            settings.bot_database.servers = parse_servers_env(value)?;
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every value; the daemon and the CLI call this before doing anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.panel.url.is_empty() {
            return Err(ConfigError::Invalid {
                key: "panel.url",
                reason: "not set: set BOTVISOR_PANEL_URL (or DATABASE_URL, or panel.url in the \
                         settings file) to the panel database's PostgreSQL URL"
                    .into(),
            });
        }
        let panel = self.panel_connect_options()?;
        if panel.get_database().is_none() {
            return Err(ConfigError::Invalid {
                key: "panel.url",
                reason: format!("{} names no database", mask_url(&self.panel.url)),
            });
        }
        if !self.bot_database.server_url.is_empty() {
            parse_pg_url("bot_database.server_url", &self.bot_database.server_url)?;
        }
        self.bot_database.validate_servers()?;
        let t = &self.bot_database.name_template;
        if !t.contains("{id}") {
            return Err(ConfigError::Invalid {
                key: "bot_database.name_template",
                reason: format!("{t:?} must contain {{id}} so every bot gets its own database"),
            });
        }
        let sample = render_name_template(t, "panel", 1);
        if sample.contains('{') || sample.contains('}') {
            return Err(ConfigError::Invalid {
                key: "bot_database.name_template",
                reason: format!("{t:?} has a placeholder other than {{panel_db}} and {{id}}"),
            });
        }
        // With "auto", the bounds are checked again once the budget is known
        // ([`BotDatabaseSettings::check_budget`]).
        let budget = match self.bot_database.connection_budget {
            BudgetSetting::Fixed(0) => {
                return Err(ConfigError::Invalid {
                    key: "bot_database.connection_budget",
                    reason: "must be at least 1 (or \"auto\")".into(),
                });
            }
            BudgetSetting::Fixed(n) => n,
            BudgetSetting::Auto => u32::MAX,
        };
        self.bot_database.check_budget(budget)?;
        if self.bot_database.inbox_retention_days == 0 {
            return Err(ConfigError::Invalid {
                key: "bot_database.inbox_retention_days",
                reason: "must be at least 1 (processed updates are needed to skip re-deliveries)"
                    .into(),
            });
        }
        if self.bot_database.prune_every_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "bot_database.prune_every_secs",
                reason: "must be at least 1".into(),
            });
        }
        if self.bot_database.acquire_timeout_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "bot_database.acquire_timeout_secs",
                reason: "must be at least 1".into(),
            });
        }
        let api = url::Url::parse(&self.telegram.api_url).map_err(|e| ConfigError::Invalid {
            key: "telegram.api_url",
            reason: format!("{:?} is not a URL: {e}", self.telegram.api_url),
        })?;
        if !matches!(api.scheme(), "http" | "https") {
            return Err(ConfigError::Invalid {
                key: "telegram.api_url",
                reason: "must be an http:// or https:// URL".into(),
            });
        }
        if !(1..=15).contains(&self.telegram.poll_timeout_secs) {
            return Err(ConfigError::Invalid {
                key: "telegram.poll_timeout_secs",
                reason: "must be between 1 and 15 (under the HTTP client's 17 s timeout)".into(),
            });
        }
        if self
            .panel_http
            .listen
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            return Err(ConfigError::Invalid {
                key: "panel_http.listen",
                reason: format!(
                    "{:?} is not an address such as 127.0.0.1:8080",
                    self.panel_http.listen
                ),
            });
        }
        if !self.panel_http.public_base_url.is_empty()
            && !url::Url::parse(&self.panel_http.public_base_url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
        {
            return Err(ConfigError::Invalid {
                key: "panel_http.public_base_url",
                reason: "must be an http:// or https:// URL".into(),
            });
        }
        if !(1..=24 * 90).contains(&self.panel_http.session_hours) {
            return Err(ConfigError::Invalid {
                key: "panel_http.session_hours",
                reason: "must be between 1 and 2160 (90 days)".into(),
            });
        }
        if !(1..=16).contains(&self.panel_http.bot_db_connections) {
            return Err(ConfigError::Invalid {
                key: "panel_http.bot_db_connections",
                reason: "must be between 1 and 16".into(),
            });
        }
        if self.secrets.master_key_file.trim().is_empty() {
            return Err(ConfigError::Invalid {
                key: "secrets.master_key_file",
                reason: "must name the master key file (default /etc/botvisor/master.key)".into(),
            });
        }
        self.http.validate()?;
        match UpdateMode::parse(&self.telegram.default_mode) {
            None => {
                return Err(ConfigError::Invalid {
                    key: "telegram.default_mode",
                    reason: format!(
                        "{:?} is neither \"polling\" nor \"webhook\"",
                        self.telegram.default_mode
                    ),
                });
            }
            Some(UpdateMode::Webhook) => {
                if let Some(missing) = self.webhook_unavailable() {
                    return Err(ConfigError::Invalid {
                        key: "telegram.default_mode",
                        reason: missing.into(),
                    });
                }
            }
            Some(UpdateMode::Polling) => {}
        }
        if !(1..=100).contains(&self.telegram.webhook_max_connections) {
            return Err(ConfigError::Invalid {
                key: "telegram.webhook_max_connections",
                reason: "must be between 1 and 100".into(),
            });
        }
        if self.telegram.webhook_idle_after_secs > 7 * 86_400 {
            return Err(ConfigError::Invalid {
                key: "telegram.webhook_idle_after_secs",
                reason: "must be at most 604800 (a week); 0 turns dormancy off".into(),
            });
        }
        if !(1..=3600).contains(&self.supervisor.traffic_interval_secs) {
            return Err(ConfigError::Invalid {
                key: "supervisor.traffic_interval_secs",
                reason: "must be between 1 and 3600".into(),
            });
        }
        if self.supervisor.resync_interval_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "supervisor.resync_interval_secs",
                reason: "must be at least 1".into(),
            });
        }
        if self.metrics.idle_timeout_secs < MIN_METRICS_IDLE_TIMEOUT_SECS {
            return Err(ConfigError::Invalid {
                key: "metrics.idle_timeout_secs",
                reason: format!(
                    "must be at least {MIN_METRICS_IDLE_TIMEOUT_SECS} (bot state series are \
                     refreshed every 5 s and must not expire in between)"
                ),
            });
        }
        Ok(())
    }

    /// Connection options of the panel database.
    pub fn panel_connect_options(&self) -> Result<PgConnectOptions, ConfigError> {
        parse_pg_url("panel.url", &self.panel.url)
    }

    /// The panel database's name (used by the default bot database naming rule).
    pub fn panel_database_name(&self) -> String {
        self.panel_connect_options()
            .ok()
            .and_then(|o| o.get_database().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The Telegram API base URL, parsed (validated in [`Settings::validate`]).
    pub fn telegram_api_url(&self) -> url::Url {
        url::Url::parse(&self.telegram.api_url).expect("validated in Settings::validate")
    }

    /// The mode of bots whose panel row names none.
    pub fn default_mode(&self) -> UpdateMode {
        UpdateMode::parse(&self.telegram.default_mode).unwrap_or(UpdateMode::Polling)
    }

    /// Why webhook mode cannot work with these settings (`None`: it can).
    pub fn webhook_unavailable(&self) -> Option<&'static str> {
        if self.http.listen_addr().is_none() {
            Some("webhook mode needs the HTTP listener: set http.listen (BOTVISOR__HTTP__LISTEN)")
        } else if self.http.public_base().is_none() {
            Some(
                "webhook mode needs the URL Telegram reaches the listener at: set \
                 http.public_url (BOTVISOR__HTTP__PUBLIC_URL)",
            )
        } else {
            None
        }
    }

    /// The webhook URL of bot `bot_id` (`None` without `http.public_url`).
    pub fn webhook_url(&self, bot_id: i64) -> Option<String> {
        self.http
            .public_base()
            .map(|base| format!("{base}/telegram/{bot_id}"))
    }

    /// The name this instance writes into `bot_status.instance`.
    pub fn instance_name(&self) -> String {
        if !self.supervisor.instance.is_empty() {
            return self.supervisor.instance.clone();
        }
        std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "botvisor".into())
    }

    /// The master key file.
    pub fn master_key_file(&self) -> PathBuf {
        PathBuf::from(&self.secrets.master_key_file)
    }

    /// Loads the master keys (see [`crate::crypto::Keyring::load`]).
    pub fn keyring(&self) -> Result<crate::crypto::Keyring, crate::crypto::CryptoError> {
        crate::crypto::Keyring::load(&self.master_key_file())
    }

    /// How long to wait for a full reconcile when nothing notifies.
    pub fn resync_interval(&self) -> Duration {
        Duration::from_secs(self.supervisor.resync_interval_secs)
    }

    /// How long in-flight work gets on shutdown.
    pub fn shutdown_deadline(&self) -> Duration {
        Duration::from_secs(self.supervisor.shutdown_deadline_secs)
    }

    /// The effective settings as TOML, with every password in a URL masked.
    pub fn to_masked_toml(&self) -> String {
        let mut masked = self.clone();
        masked.panel.url = mask_url(&masked.panel.url);
        masked.bot_database.server_url = mask_url(&masked.bot_database.server_url);
        for server in &mut masked.bot_database.servers {
            server.url = mask_url(&server.url);
        }
        toml::to_string_pretty(&masked).expect("settings always serialise")
    }
}

fn toml_file(path: &Path) -> config::File<config::FileSourceFile, config::FileFormat> {
    config::File::from(path)
        .format(config::FileFormat::Toml)
        .required(true)
}

fn parse_pg_url(key: &'static str, url: &str) -> Result<PgConnectOptions, ConfigError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(ConfigError::Invalid {
            key,
            reason: format!("{} is not a postgres:// URL", mask_url(url)),
        });
    }
    let options = url
        .parse::<PgConnectOptions>()
        .map_err(|e| ConfigError::Invalid {
            key,
            reason: format!("{} is not a valid PostgreSQL URL: {e}", mask_url(url)),
        })?;
    Ok(without_loopback_tls(url, options))
}

/// Turns TLS off for a loopback server unless the URL asks for an `sslmode`.
///
/// sqlx's default (`prefer`) negotiates TLS on every connection; to a server on the same host
/// that buys nothing and costs a handshake per connect (measured here: ~95 ms instead of
/// ~10 ms in a debug build), which the connection budget pays on every reconnect.
pub fn without_loopback_tls(url: &str, options: PgConnectOptions) -> PgConnectOptions {
    let host = options.get_host();
    let loopback = host == "localhost"
        || host.starts_with('/')
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback && !url.contains("sslmode") {
        options.ssl_mode(sqlx::postgres::PgSslMode::Disable)
    } else {
        options
    }
}

impl HttpSettings {
    /// The listen address, if the listener is enabled (validated in [`Settings::validate`]).
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        let listen = self.listen.trim();
        (!listen.is_empty()).then(|| listen.parse().expect("validated in Settings::validate"))
    }

    /// The public base URL without a trailing slash; `None` when not set.
    pub fn public_base(&self) -> Option<&str> {
        let url = self.public_url.trim().trim_end_matches('/');
        (!url.is_empty()).then_some(url)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let listen = self.listen.trim();
        if !listen.is_empty() && listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Invalid {
                key: "http.listen",
                reason: format!(
                    "{listen:?} is not an address such as 127.0.0.1:8090 (empty: no listener)"
                ),
            });
        }
        if let Some(base) = self.public_base() {
            let ok = url::Url::parse(base).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.query().is_none()
                    && u.fragment().is_none()
            });
            if !ok {
                return Err(ConfigError::Invalid {
                    key: "http.public_url",
                    reason: format!(
                        "{base:?} must be an https:// URL without query or fragment, such as \
                         https://bots.example.com (Telegram sends webhooks only over HTTPS)"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Fills `{panel_db}` and `{id}` in a bot database name template.
pub fn render_name_template(template: &str, panel_db: &str, id: i64) -> String {
    template
        .replace("{panel_db}", panel_db)
        .replace("{id}", &id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn shortcuts_and_nested_variables_are_merged() {
        let s = Settings::load(
            None,
            &env(&[
                ("DATABASE_URL", "postgres://u@h/fallback"),
                ("BOTVISOR_PANEL_URL", "postgres://u@h/panel"),
                ("BOTVISOR__BOT_DATABASE__CONNECTION_BUDGET", "8"),
                ("BOTVISOR_TELEGRAM_API_URL", "http://127.0.0.1:8081"),
            ]),
        )
        .unwrap();
        assert_eq!(s.panel.url, "postgres://u@h/panel");
        assert_eq!(s.bot_database.connection_budget, BudgetSetting::Fixed(8));
        assert_eq!(s.telegram.api_url, "http://127.0.0.1:8081");
        assert_eq!(s.panel_database_name(), "panel");
        assert_eq!(s.master_key_file(), Path::new("/etc/botvisor/master.key"));
        let s = Settings::load(
            None,
            &env(&[
                ("DATABASE_URL", "postgres://u@h/p"),
                ("BOTVISOR_MASTER_KEY_FILE", "/k/master.key"),
            ]),
        )
        .unwrap();
        assert_eq!(s.master_key_file(), Path::new("/k/master.key"));
    }

    #[test]
    fn database_url_is_the_fallback() {
        let s = Settings::load(None, &env(&[("DATABASE_URL", "postgres://u@h/fb")])).unwrap();
        assert_eq!(s.panel.url, "postgres://u@h/fb");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Settings::load(
            None,
            &env(&[
                ("BOTVISOR_PANEL_URL", "postgres://u@h/p"),
                ("BOTVISOR__PANEL__URLL", "x"),
            ]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("urll"), "{err}");
    }

    #[test]
    fn unknown_keys_in_a_file_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(&path, "[supervisor]\nresync_interval = 3\n").unwrap();
        let err =
            Settings::load(Some(&path), &env(&[("DATABASE_URL", "postgres://u@h/p")])).unwrap_err();
        assert!(err.to_string().contains("resync_interval"), "{err}");
    }

    #[test]
    fn missing_file_named_explicitly_is_an_error() {
        let err = Settings::load(Some(Path::new("/nonexistent/b.toml")), &env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::MissingFile(_)));
    }

    #[test]
    fn invalid_values_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "BOTVISOR__BOT_DATABASE__NAME_TEMPLATE",
                "bots",
                "name_template",
            ),
            (
                "BOTVISOR__BOT_DATABASE__NAME_TEMPLATE",
                "b_{id}_{x}",
                "name_template",
            ),
            (
                "BOTVISOR__BOT_DATABASE__CONNECTION_BUDGET",
                "0",
                "connection_budget",
            ),
            (
                "BOTVISOR__BOT_DATABASE__PROVISION_CONCURRENCY",
                "0",
                "provision_concurrency",
            ),
            ("BOTVISOR__TELEGRAM__API_URL", "ftp://x", "api_url"),
            (
                "BOTVISOR__TELEGRAM__POLL_TIMEOUT_SECS",
                "30",
                "poll_timeout_secs",
            ),
            (
                "BOTVISOR__SUPERVISOR__RESYNC_INTERVAL_SECS",
                "0",
                "resync_interval_secs",
            ),
            (
                "BOTVISOR__SUPERVISOR__TRAFFIC_INTERVAL_SECS",
                "0",
                "traffic_interval_secs",
            ),
            ("BOTVISOR__HTTP__LISTEN", "8090", "http.listen"),
            ("BOTVISOR__TELEGRAM__DEFAULT_MODE", "push", "default_mode"),
            ("BOTVISOR__TELEGRAM__DEFAULT_MODE", "webhook", "http.listen"),
            (
                "BOTVISOR__TELEGRAM__WEBHOOK_MAX_CONNECTIONS",
                "0",
                "webhook_max_connections",
            ),
            (
                "BOTVISOR__HTTP__PUBLIC_URL",
                "bots.example.com",
                "http.public_url",
            ),
            (
                "BOTVISOR__HTTP__PUBLIC_URL",
                "https://bots.example.com/?a=1",
                "http.public_url",
            ),
        ];
        for (k, v, needle) in cases {
            let err = Settings::load(None, &env(&[("DATABASE_URL", "postgres://u@h/p"), (k, v)]))
                .unwrap_err();
            assert!(err.to_string().contains(needle), "{k}={v}: {err}");
        }
        let err = Settings::load(None, &env(&[])).unwrap_err();
        assert!(err.to_string().contains("BOTVISOR_PANEL_URL"), "{err}");
        let err = Settings::load(None, &env(&[("DATABASE_URL", "mysql://x/y")])).unwrap_err();
        assert!(err.to_string().contains("postgres://"), "{err}");
    }

    #[test]
    fn masked_output_hides_passwords() {
        let s =
            Settings::load(None, &env(&[("DATABASE_URL", "postgres://u:hunter2@h/p")])).unwrap();
        let out = s.to_masked_toml();
        assert!(!out.contains("hunter2"), "{out}");
        assert!(out.contains("postgres://u:****@h/p"), "{out}");
    }

    #[test]
    fn tls_is_off_for_loopback_unless_asked_for() {
        use sqlx::postgres::PgSslMode;
        let cases = [
            ("postgres://u@127.0.0.1/p", PgSslMode::Disable),
            ("postgres://u@localhost/p", PgSslMode::Disable),
            ("postgres://u@[::1]/p", PgSslMode::Disable),
            (
                "postgres://u@127.0.0.1/p?sslmode=require",
                PgSslMode::Require,
            ),
            ("postgres://u@db.example/p", PgSslMode::Prefer),
        ];
        for (url, mode) in cases {
            let o = parse_pg_url("panel.url", url).unwrap();
            assert_eq!(
                format!("{:?}", o.get_ssl_mode()),
                format!("{mode:?}"),
                "{url}"
            );
        }
    }

    #[test]
    fn the_http_listener_is_off_unless_an_address_is_given() {
        let base = ("DATABASE_URL", "postgres://u@h/p");
        let s = Settings::load(None, &env(&[base])).unwrap();
        assert_eq!(s.http.listen_addr(), None);
        assert_eq!(s.http.public_base(), None);
        let s = Settings::load(
            None,
            &env(&[
                base,
                ("BOTVISOR__HTTP__LISTEN", "127.0.0.1:8090"),
                ("BOTVISOR__HTTP__PUBLIC_URL", "https://bots.example.com/"),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.http.listen_addr(),
            Some("127.0.0.1:8090".parse().unwrap())
        );
        assert_eq!(s.http.public_base(), Some("https://bots.example.com"));
    }

    #[test]
    fn name_template_renders() {
        assert_eq!(
            render_name_template("{panel_db}_bot_{id}", "botvisor", 42),
            "botvisor_bot_42"
        );
    }

    #[test]
    fn the_connection_budget_is_a_number_or_auto() {
        let load = |v: &str| {
            Settings::load(
                None,
                &env(&[
                    ("DATABASE_URL", "postgres://u@h/p"),
                    ("BOTVISOR__BOT_DATABASE__CONNECTION_BUDGET", v),
                ]),
            )
        };
        assert_eq!(
            Settings::load(None, &env(&[("DATABASE_URL", "postgres://u@h/p")]))
                .unwrap()
                .bot_database
                .connection_budget,
            BudgetSetting::Auto
        );
        assert_eq!(
            load("auto").unwrap().bot_database.connection_budget,
            BudgetSetting::Auto
        );
        assert_eq!(
            load("40").unwrap().bot_database.connection_budget,
            BudgetSetting::Fixed(40)
        );
        let err = load("lots").unwrap_err().to_string();
        assert!(err.contains("connection_budget"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        for (text, want) in [
            ("connection_budget = 24", BudgetSetting::Fixed(24)),
            ("connection_budget = \"auto\"", BudgetSetting::Auto),
        ] {
            std::fs::write(&path, format!("[bot_database]\n{text}\n")).unwrap();
            let s =
                Settings::load(Some(&path), &env(&[("DATABASE_URL", "postgres://u@h/p")])).unwrap();
            assert_eq!(s.bot_database.connection_budget, want, "{text}");
            assert!(s.to_masked_toml().contains(text), "{text}");
        }
    }

    #[test]
    fn bot_database_servers_from_the_file_or_the_environment() {
        let base = ("DATABASE_URL", "postgres://u@h/p");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(
            &path,
            "[bot_database]\nservers = [\"postgres://u:secret1@a:5432/\", \
             { url = \"postgres://u@b:5433/\", weight = 2 }]\n",
        )
        .unwrap();
        let s = Settings::load(Some(&path), &env(&[base])).unwrap();
        let want = |a: &str, b: &str| {
            vec![
                ServerEntry {
                    url: a.into(),
                    weight: 1,
                },
                ServerEntry {
                    url: b.into(),
                    weight: 2,
                },
            ]
        };
        assert_eq!(
            s.bot_database.servers,
            want("postgres://u:secret1@a:5432/", "postgres://u@b:5433/")
        );
        let masked = s.to_masked_toml();
        assert!(!masked.contains("secret1"), "{masked}");
        assert!(masked.contains("postgres://u:****@a:5432/"), "{masked}");
        // The environment overrides the file: a TOML array, or URLs separated by commas.
        let s = Settings::load(
            Some(&path),
            &env(&[
                base,
                (
                    SERVERS_ENV,
                    "[\"postgres://u@c:5432/\", {url = \"postgres://u@d:5432/\", weight = 2}]",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.bot_database.servers,
            want("postgres://u@c:5432/", "postgres://u@d:5432/")
        );
        let s = Settings::load(
            None,
            &env(&[
                base,
                (SERVERS_ENV, "postgres://u@c:5432/, postgres://u@d:5432/"),
            ]),
        )
        .unwrap();
        assert_eq!(s.bot_database.servers.len(), 2);
        assert_eq!(s.bot_database.servers[1].url, "postgres://u@d:5432/");
    }

    #[test]
    fn invalid_bot_database_servers_are_refused_clearly() {
        let load = |servers: &str, extra: &[(&str, &str)]| {
            let mut pairs = vec![("DATABASE_URL", "postgres://u@h/p"), (SERVERS_ENV, servers)];
            pairs.extend_from_slice(extra);
            Settings::load(None, &env(&pairs)).unwrap_err().to_string()
        };
        let e = load("postgres://u:hunter2@a:5432/, mysql://u:hunter2@b/", &[]);
        assert!(
            e.contains("bot_database.servers") && e.contains("postgres://"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        let e = load("[{url = \"postgres://u@a:5432/\", weight = 0}]", &[]);
        assert!(e.contains("weight must be at least 1"), "{e}");
        let e = load("postgres://u@a:5432/x, postgres://u:pw@A:5432/y", &[]);
        assert!(e.contains("listed twice"), "{e}");
        let e = load("postgres://u:hunter2@a/", &[]);
        assert!(
            e.contains("must name its user and port") && !e.contains("hunter2"),
            "{e}"
        );
        let e = load("postgres://a:5432/", &[]);
        assert!(e.contains("must name its user and port"), "{e}");
        let e = load("[{url = \"postgres://u@a:5432/\", wieght = 2}]", &[]);
        assert!(e.contains("bot_database.servers"), "{e}");
        let e = load(
            "postgres://u@a:5432/",
            &[("BOTVISOR__BOT_DATABASE__SERVER_URL", "postgres://u@b:5432/")],
        );
        assert!(e.contains("not both"), "{e}");
    }

    #[test]
    fn auto_keeps_the_reserve() {
        assert_eq!(BudgetSetting::Auto.resolve(100, 3), Some(85));
        assert_eq!(BudgetSetting::Auto.resolve(15, 3), None);
        assert_eq!(BudgetSetting::Fixed(7).resolve(15, 3), Some(7));
    }
}
