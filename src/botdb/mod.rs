//! Per-bot databases: where each one lives, creating and dropping it, and its schema.
//!
//! A bot's database is named by `bot_database.name_template` (default
//! `{panel_db}_bot_{id}`) on the panel's server (or `bot_database.server_url`); the panel's
//! `bots.database` column overrides it per bot with a plain name on that server or a full
//! `postgres://` URL for a bot living on another server.

pub mod budget;
pub mod store;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

use crate::schema::{self, MigrationError, describe};
use crate::settings::{BudgetSetting, Settings, render_name_template};
use budget::{BotPool, ConnectionBudget};

/// PostgreSQL's limit on identifier length, in bytes.
const MAX_IDENTIFIER_LEN: usize = 63;

/// Errors about a bot's database.
#[derive(Debug, thiserror::Error)]
pub enum BotDbError {
    /// The override in `bots.database` is neither a valid name nor a valid URL.
    #[error("invalid database for bot {bot_id}: {reason}")]
    InvalidTarget {
        /// The bot.
        bot_id: i64,
        /// What is wrong.
        reason: String,
    },
    /// The server could not be reached to create or drop the database.
    #[error("cannot connect to {url} to manage database {database}")]
    Connect {
        /// The masked URL of the maintenance connection.
        url: String,
        /// The database in question.
        database: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// CREATE or DROP DATABASE failed.
    #[error("cannot {action} database {database}")]
    Manage {
        /// `create` or `drop`.
        action: &'static str,
        /// The database.
        database: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// No connection within the budget.
    #[error(transparent)]
    Budget(#[from] budget::BudgetError),
    /// Applying migrations failed.
    #[error("cannot migrate database {database}")]
    Migrate {
        /// The database.
        database: String,
        /// What failed.
        #[source]
        source: MigrationError,
    },
}

impl BotDbError {
    /// Whether retrying without a change to the panel or the server cannot help: the bot
    /// should wait for a panel change instead of retrying.
    pub fn is_fatal(&self) -> bool {
        match self {
            BotDbError::InvalidTarget { .. } | BotDbError::Manage { .. } => true,
            BotDbError::Migrate { source, .. } => source.is_fatal(),
            BotDbError::Connect { .. } | BotDbError::Budget(_) => false,
        }
    }
}

/// The connection budget the daemon runs with, and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetSize {
    /// Connections to all bot databases together.
    pub budget: u32,
    /// The server's `max_connections` and `superuser_reserved_connections`, when "auto" read
    /// them.
    pub server: Option<(u32, u32)>,
}

/// Resolves `bot_database.connection_budget` for the first bot-database server: a number as
/// it is; `"auto"` from the server's `max_connections`, minus `superuser_reserved_connections`
/// and [`crate::settings::AUTO_BUDGET_RESERVE`]. Checks the settings the budget bounds.
pub async fn connection_budget(settings: &Settings) -> Result<BudgetSize, BudgetSizeError> {
    let first = servers(settings)?
        .into_iter()
        .next()
        .expect("servers() lists at least one");
    server_budget(settings, &first).await
}

/// [`connection_budget`] for every server, in the settings' order: each server has its own
/// budget (an explicit number applies to each; "auto" is sized from each server).
pub async fn connection_budgets(
    settings: &Settings,
) -> Result<Vec<(DbServer, BudgetSize)>, BudgetSizeError> {
    let mut sized = Vec::new();
    for server in servers(settings)? {
        let size = server_budget(settings, &server).await?;
        sized.push((server, size));
    }
    Ok(sized)
}

async fn server_budget(
    settings: &Settings,
    server: &DbServer,
) -> Result<BudgetSize, BudgetSizeError> {
    let setting = settings.bot_database.connection_budget;
    let server = match setting {
        BudgetSetting::Fixed(_) => None,
        BudgetSetting::Auto => {
            let target = BotDbTarget::on_server(settings, 0, server, None)
                .map_err(|reason| BotDbError::InvalidTarget { bot_id: 0, reason })?;
            let mut conn = target.maintenance_connection().await?;
            let limits = store::server_connection_limits(&mut conn).await;
            let _ = conn.close().await;
            let limits = limits.map_err(|source| BotDbError::Manage {
                action: "inspect the connection limits of",
                database: "postgres".into(),
                source,
            })?;
            Some(limits)
        }
    };
    let (max, reserved) = server.unwrap_or((0, 0));
    let budget = setting
        .resolve(max, reserved)
        .ok_or(BudgetSizeError::TooSmall { max, reserved })?;
    settings.bot_database.check_budget(budget)?;
    Ok(BudgetSize { budget, server })
}

/// One connection budget per bot-database server, first the first server's.
#[derive(Clone)]
pub struct ServerBudgets(std::sync::Arc<Vec<(String, ConnectionBudget)>>);

impl ServerBudgets {
    /// Budgets by server key ([`DbServer::key`]); `list` must not be empty.
    pub fn new(list: Vec<(String, ConnectionBudget)>) -> Self {
        assert!(!list.is_empty(), "at least one server");
        Self(std::sync::Arc::new(list))
    }

    /// The first server's budget (also serving bots whose override URL names an unlisted
    /// server).
    pub fn first(&self) -> &ConnectionBudget {
        &self.0[0].1
    }

    /// The budget of the server with key `key`, else the first.
    pub fn for_server(&self, key: &str) -> &ConnectionBudget {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map_or_else(|| self.first(), |(_, b)| b)
    }

    /// Every `(server key, budget)`.
    pub fn iter(&self) -> impl Iterator<Item = &(String, ConnectionBudget)> {
        self.0.iter()
    }

    /// Sets the connection gauges to the sum over every server every
    /// [`BUDGET_METRICS_PERIOD`] until `shutdown` (the budgets were built
    /// [`ConnectionBudget::without_metrics`]).
    pub async fn report_metrics(self, shutdown: tokio_util::sync::CancellationToken) {
        let mut ticks = tokio::time::interval(BUDGET_METRICS_PERIOD);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => {
                    let (open, budget) = self.iter().fold((0, 0), |(o, b), (_, budget)| {
                        let s = budget.stats();
                        (o + s.open, b + s.budget)
                    });
                    crate::telemetry::metrics::db_connections(
                        open,
                        u32::try_from(budget).unwrap_or(u32::MAX),
                    );
                }
            }
        }
    }
}

/// How often the connection gauges are set with several servers.
pub const BUDGET_METRICS_PERIOD: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the connection budget could not be sized.
#[derive(Debug, thiserror::Error)]
pub enum BudgetSizeError {
    /// The server could not be asked.
    #[error("cannot size bot_database.connection_budget = \"auto\"")]
    Server(#[from] BotDbError),
    /// "auto" leaves nothing.
    #[error(
        "bot_database.connection_budget = \"auto\" leaves no connection: the server allows {max} (max_connections), {reserved} are reserved for superusers and {reserve} for the panel, backups and operators; raise max_connections or set a number",
        reserve = crate::settings::AUTO_BUDGET_RESERVE
    )]
    TooSmall {
        /// `max_connections`.
        max: u32,
        /// `superuser_reserved_connections`.
        reserved: u32,
    },
    /// A setting bounded by the budget is out of bounds.
    #[error(transparent)]
    Settings(#[from] crate::settings::ConfigError),
}

/// How a start's quick check of its database gets its connection
/// ([`BotDbTarget::make_current_within`]).
#[derive(Debug)]
pub enum CheckTurn {
    /// In a check turn ([`ConnectionBudget::check_turn`], held until the check is done),
    /// acquiring as a provisioning: running bots are served first.
    Turn(budget::ProvisionTurn),
    /// At once, acquiring as a running bot: the bot has an update to answer.
    Urgent,
}

/// Where one bot's database lives.
#[derive(Clone)]
pub struct BotDbTarget {
    /// The bot.
    pub bot_id: i64,
    /// The database name.
    pub database: String,
    /// Options connecting to the bot's database.
    pub options: PgConnectOptions,
    /// Options connecting to the same server's `postgres` database, for CREATE/DROP.
    pub maintenance: PgConnectOptions,
    /// The server's password, if its URL has one (for the PostgreSQL client programs, which
    /// take it from `PGPASSWORD`; [`PgConnectOptions`] does not give it back). Its `Debug`
    /// is redacted.
    pub password: Option<secrecy::SecretString>,
    /// The server's key ([`crate::settings::server_key`]): which connection budget serves it.
    pub server_key: String,
}

/// Names the server by its masked URL: sqlx's `PgConnectOptions` prints the password in its
/// own `Debug`.
impl std::fmt::Debug for BotDbTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotDbTarget")
            .field("bot_id", &self.bot_id)
            .field("database", &self.database)
            .field("server", &describe(&self.options))
            .finish_non_exhaustive()
    }
}

/// One server bot databases live on (`bot_database.servers`, or the one-server settings).
#[derive(Clone)]
pub struct DbServer {
    /// `postgres://user@host:port`, without password ([`crate::settings::server_key`]): what
    /// `bots.db_server` records.
    pub key: String,
    /// The URL as configured (it may hold a password: never print it; [`Self::masked`]).
    url: String,
    /// Connect options (database not set).
    pub options: PgConnectOptions,
    /// Its placement weight.
    pub weight: u32,
}

impl std::fmt::Debug for DbServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbServer")
            .field("key", &self.key)
            .field("weight", &self.weight)
            .finish_non_exhaustive()
    }
}

impl DbServer {
    /// The configured URL with its password masked.
    pub fn masked(&self) -> String {
        crate::mask::mask_url(&self.url)
    }
}

/// The servers bot databases live on, first the one bots without a recorded server use:
/// `bot_database.servers`, else `bot_database.server_url`, else the panel's server.
pub fn servers(settings: &Settings) -> Result<Vec<DbServer>, crate::settings::ConfigError> {
    let db = &settings.bot_database;
    let entries: Vec<(&'static str, &str, u32)> = if !db.servers.is_empty() {
        db.servers
            .iter()
            .map(|s| ("bot_database.servers", s.url.as_str(), s.weight))
            .collect()
    } else if !db.server_url.is_empty() {
        vec![("bot_database.server_url", db.server_url.as_str(), 1)]
    } else {
        vec![("panel.url", settings.panel.url.as_str(), 1)]
    };
    entries
        .into_iter()
        .map(|(key, url, weight)| {
            let options = url
                .parse::<PgConnectOptions>()
                .map(|o| crate::settings::without_loopback_tls(url, o))
                .map_err(|e| crate::settings::ConfigError::Invalid {
                    key,
                    reason: format!("{}: {e}", crate::mask::mask_url(url)),
                })?;
            Ok(DbServer {
                key: crate::settings::server_key(&options),
                url: url.to_owned(),
                options,
                weight,
            })
        })
        .collect()
}

/// The configured server a URL names (matched by user, host and port; its password and
/// database do not matter); `None` when it is not one of them.
pub fn find_server(settings: &Settings, url: &str) -> Result<Option<DbServer>, String> {
    let options = parse_server_url(url)?;
    let key = crate::settings::server_key(&options);
    let list = servers(settings).map_err(|e| e.to_string())?;
    Ok(list.into_iter().find(|s| s.key == key))
}

fn parse_server_url(url: &str) -> Result<PgConnectOptions, String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(format!(
            "{} is not a postgres:// URL",
            crate::mask::mask_url(url)
        ));
    }
    url.parse::<PgConnectOptions>()
        .map(|o| crate::settings::without_loopback_tls(url, o))
        .map_err(|e| format!("{}: {e}", crate::mask::mask_url(url)))
}

/// The `(key, weight)` of every server a new bot may be placed on: empty (no server
/// recorded, the first one used) unless `bot_database.servers` lists them.
pub fn placement(settings: &Settings) -> Vec<(String, u32)> {
    if settings.bot_database.servers.is_empty() {
        return Vec::new();
    }
    servers(settings)
        .map(|list| list.into_iter().map(|s| (s.key, s.weight)).collect())
        .unwrap_or_default()
}

impl BotDbTarget {
    /// Resolves the database of bot `bot_id` with optional override `database`, on the first
    /// configured server.
    pub fn resolve(
        settings: &Settings,
        bot_id: i64,
        database: Option<&str>,
    ) -> Result<Self, BotDbError> {
        Self::resolve_on(settings, bot_id, None, database)
    }

    /// Resolves the database of bot `bot_id` on server `server` (a key recorded in
    /// `bots.db_server`; `None`: the first configured server) with optional override
    /// `database` (a name on that server, or a full URL naming its own server).
    pub fn resolve_on(
        settings: &Settings,
        bot_id: i64,
        server: Option<&str>,
        database: Option<&str>,
    ) -> Result<Self, BotDbError> {
        let invalid = |reason: String| BotDbError::InvalidTarget { bot_id, reason };
        let list = servers(settings).map_err(|e| invalid(e.to_string()))?;
        let chosen = match server {
            None => list.into_iter().next(),
            Some(key) => {
                let found = list.into_iter().find(|s| s.key == key);
                if found.is_none() {
                    return Err(invalid(format!(
                        "its server {key} is not in bot_database.servers; list it again \
                         (then `botvisor bot move` can take the bot elsewhere)"
                    )));
                }
                found
            }
        }
        .ok_or_else(|| invalid("no bot database server is configured".into()))?;
        Self::on_server(settings, bot_id, &chosen, database).map_err(invalid)
    }

    /// Resolves bot `bot_id`'s database on `server` (see [`Self::resolve_on`]).
    pub fn on_server(
        settings: &Settings,
        bot_id: i64,
        server: &DbServer,
        database: Option<&str>,
    ) -> Result<Self, String> {
        let (options, name, url) = match database.map(str::trim).filter(|d| !d.is_empty()) {
            Some(url) if url.contains("://") => {
                let opts = parse_database_url(url)?;
                let name = opts.get_database().unwrap_or_default().to_owned();
                (opts, name, url)
            }
            Some(name) => (server.options.clone(), name.to_owned(), server.url.as_str()),
            None => {
                let panel_db = settings.panel_database_name();
                let name =
                    render_name_template(&settings.bot_database.name_template, &panel_db, bot_id);
                (server.options.clone(), name, server.url.as_str())
            }
        };
        let password = url::Url::parse(url).ok().and_then(|u| {
            let p = u.password()?;
            let p = url::form_urlencoded::parse(format!("p={}", p.replace('+', "%2B")).as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())?;
            Some(secrecy::SecretString::from(p))
        });
        validate_database_name(&name)?;
        Ok(Self {
            bot_id,
            server_key: crate::settings::server_key(&options),
            options: options.clone().database(&name),
            maintenance: options.database("postgres"),
            database: name,
            password,
        })
    }

    /// The environment the PostgreSQL client programs (`pg_dump`, `pg_restore`) need to reach
    /// this database: `PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGSSLMODE` and, when the
    /// URL has one, `PGPASSWORD` (never a command-line argument, which `ps` would show).
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        use sqlx::postgres::PgSslMode;
        let o = &self.options;
        let host = match o.get_socket() {
            Some(socket) => socket.display().to_string(),
            None => o.get_host().to_owned(),
        };
        let ssl = match o.get_ssl_mode() {
            PgSslMode::Disable => "disable",
            PgSslMode::Allow => "allow",
            PgSslMode::Prefer => "prefer",
            PgSslMode::Require => "require",
            PgSslMode::VerifyCa => "verify-ca",
            PgSslMode::VerifyFull => "verify-full",
        };
        let mut env = vec![
            ("PGHOST", host),
            ("PGPORT", o.get_port().to_string()),
            ("PGUSER", o.get_username().to_owned()),
            ("PGDATABASE", self.database.clone()),
            ("PGSSLMODE", ssl.to_owned()),
        ];
        if let Some(password) = &self.password {
            env.push((
                "PGPASSWORD",
                secrecy::ExposeSecret::expose_secret(password).to_owned(),
            ));
        }
        env
    }

    /// A printable description (masked).
    pub fn describe(&self) -> String {
        describe(&self.options)
    }

    async fn maintenance_connection(&self) -> Result<PgConnection, BotDbError> {
        self.maintenance
            .connect()
            .await
            .map_err(|source| BotDbError::Connect {
                url: describe(&self.maintenance),
                database: self.database.clone(),
                source,
            })
    }

    /// Creates the database if it does not exist; returns whether it was created.
    pub async fn ensure_database(&self) -> Result<bool, BotDbError> {
        let mut conn = self.maintenance_connection().await?;
        let result = self.create_on(&mut conn).await;
        let _ = conn.close().await;
        result
    }

    /// Whether the database exists.
    pub async fn exists(&self) -> Result<bool, BotDbError> {
        let mut conn = self.maintenance_connection().await?;
        let result =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(&self.database)
                .fetch_one(&mut conn)
                .await
                .map_err(|source| BotDbError::Manage {
                    action: "inspect",
                    database: self.database.clone(),
                    source,
                });
        let _ = conn.close().await;
        result
    }

    /// Drops the database (disconnecting its sessions); returns whether it existed.
    pub async fn drop_database(&self) -> Result<bool, BotDbError> {
        let mut conn = self.maintenance_connection().await?;
        let sql = format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&self.database)
        );
        let existed = self.exists().await?;
        let result = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .map(|_| existed)
            .map_err(|source| BotDbError::Manage {
                action: "drop",
                database: self.database.clone(),
                source,
            });
        let _ = conn.close().await;
        result
    }

    /// A database beside this one on the same server, named after it with `suffix` (the
    /// name shortened, with a hash of the whole, when it would pass PostgreSQL's 63 bytes):
    /// where an in-place import restores into, and where it sets the old data aside.
    pub fn sibling(&self, suffix: &str) -> BotDbTarget {
        let mut name = format!("{}{suffix}", self.database);
        if name.len() > MAX_IDENTIFIER_LEN {
            let digest = ring::digest::digest(&ring::digest::SHA256, self.database.as_bytes());
            let hash: String = digest.as_ref()[..4]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let keep = MAX_IDENTIFIER_LEN - suffix.len() - hash.len() - 1;
            // Validated names are ASCII, so any byte index is a character boundary.
            name = format!("{}_{hash}{suffix}", &self.database[..keep]);
        }
        BotDbTarget {
            bot_id: self.bot_id,
            server_key: self.server_key.clone(),
            options: self.options.clone().database(&name),
            maintenance: self.maintenance.clone(),
            database: name,
            password: self.password.clone(),
        }
    }

    fn manage(&self, action: &'static str) -> impl FnOnce(sqlx::Error) -> BotDbError + '_ {
        move |source| BotDbError::Manage {
            action,
            database: self.database.clone(),
            source,
        }
    }

    /// `None` when the database does not exist, else its comment.
    pub async fn comment(&self) -> Result<Option<Option<String>>, BotDbError> {
        let mut conn = self.maintenance_connection().await?;
        let result = store::database_comment(&mut conn, &self.database)
            .await
            .map_err(self.manage("inspect"));
        let _ = conn.close().await;
        result
    }

    /// Sets (`None`: removes) the database's comment.
    pub async fn set_comment(&self, comment: Option<&str>) -> Result<(), BotDbError> {
        let mut conn = self.maintenance_connection().await?;
        let result = store::set_database_comment(&mut conn, &self.database, comment)
            .await
            .map_err(self.manage("comment on"));
        let _ = conn.close().await;
        result
    }

    /// Renames the database to `to` on the same server, ending the sessions connected to it
    /// first (a rename needs none); a session that reconnects in between is ended again, up
    /// to [`RENAME_ATTEMPTS`] times.
    pub async fn rename_to(&self, to: &str) -> Result<(), BotDbError> {
        let mut conn = self.maintenance_connection().await?;
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            let step = async {
                store::terminate_sessions(&mut conn, &self.database).await?;
                store::rename_database(&mut conn, &self.database, to).await
            }
            .await;
            match step {
                Err(sqlx::Error::Database(db))
                    if db.code().as_deref() == Some("55006") && attempt < RENAME_ATTEMPTS => {}
                other => break other.map_err(self.manage("rename")),
            }
        };
        let _ = conn.close().await;
        result
    }

    /// The row count of every table of the database (see [`store::table_counts`]).
    pub async fn table_counts(
        &self,
    ) -> Result<std::collections::BTreeMap<String, i64>, BotDbError> {
        let mut conn = self
            .options
            .connect()
            .await
            .map_err(|source| BotDbError::Connect {
                url: self.describe(),
                database: self.database.clone(),
                source,
            })?;
        let result = store::table_counts(&mut conn)
            .await
            .map_err(self.manage("count the rows of"));
        let _ = conn.close().await;
        result
    }

    /// Creates the database if needed and applies the embedded bot migrations, with every
    /// connection taken from `budget`; returns whether it was created and the bot's pool.
    ///
    /// A bot whose database exists and is migrated (every start but the first, and every
    /// start after an upgrade) takes the quick path: a check turn
    /// ([`ConnectionBudget::check_turn`], as many as the budget has connections), one
    /// connection of its own pool, one query ([`schema::is_current_on`]); that connection
    /// stays idle in the pool for the bot's first reads. Otherwise it waits for a provisioning
    /// turn (no deadline: cancel by dropping the future), then acquires as a provisioning, so
    /// running bots are served before it and keep the connections they are using (see
    /// [`budget`]): the existence check and `CREATE DATABASE` on the server's maintenance
    /// database, then the migrations on one connection of the bot's own pool; after a failure
    /// that connection is discarded (a failed run can leave sqlx's advisory lock on its
    /// session).
    pub async fn provision_within(
        &self,
        budget: &ConnectionBudget,
        max_connections: u32,
    ) -> Result<(bool, BotPool), BotDbError> {
        let pool = self.pool_within(budget, max_connections);
        let checked = async {
            let turn = CheckTurn::Turn(budget.check_turn().await?);
            self.make_current_within(budget, &pool, turn).await
        };
        match checked.await {
            Ok(created) => Ok((created, pool)),
            Err(e) => {
                pool.close().await;
                Err(e)
            }
        }
    }

    /// The bot's pool on `budget`, not yet checked: no connection is opened. A deferred start
    /// ([`crate::runtime`]) makes the database current with [`Self::make_current_within`]
    /// before anything reads it.
    pub fn pool_within(&self, budget: &ConnectionBudget, max_connections: u32) -> BotPool {
        budget.database(self.options.clone(), max_connections)
    }

    /// The work of [`Self::provision_within`] on a pool made by [`Self::pool_within`]: the
    /// quick check (in its turn, or — [`CheckTurn::Urgent`] — at once, acquiring as a running
    /// bot), then, if the database is missing or behind, creating and migrating it in a
    /// provisioning turn. Returns whether the database was created; the pool is left open
    /// either way (the caller closes it).
    pub async fn make_current_within(
        &self,
        budget: &ConnectionBudget,
        pool: &BotPool,
        turn: CheckTurn,
    ) -> Result<bool, BotDbError> {
        if self.is_current_within(pool, turn).await? {
            return Ok(false);
        }
        let turn = budget.provision_turn().await?;
        let maintenance = budget.database(self.maintenance.clone(), 1);
        let created = async {
            let mut conn = maintenance.acquire_for_provisioning(&turn).await?;
            self.create_on(&mut conn).await
        }
        .await;
        maintenance.close().await;
        let created = created?;
        let mut conn = pool.acquire_for_provisioning(&turn).await?;
        match schema::apply_on(&schema::BOT, &mut conn).await {
            Ok(()) => Ok(created),
            Err(source) => {
                conn.discard();
                Err(BotDbError::Migrate {
                    database: self.database.clone(),
                    source,
                })
            }
        }
    }

    /// The quick path of [`Self::provision_within`]: whether the database exists and has
    /// every migration (`turn` is held until the check is done). A failed connect (the
    /// database does not exist yet, most often) or query answers `false`, leaving the full
    /// path to create, migrate or report; only running out of budget time is an error.
    async fn is_current_within(&self, pool: &BotPool, turn: CheckTurn) -> Result<bool, BotDbError> {
        let acquired = match &turn {
            CheckTurn::Turn(turn) => pool.acquire_for_provisioning(turn).await,
            CheckTurn::Urgent => pool.acquire().await,
        };
        let mut conn = match acquired {
            Ok(conn) => conn,
            Err(budget::BudgetError::Connect { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        match schema::is_current_on(&schema::BOT, &mut conn).await {
            Ok(current) => {
                if current {
                    conn.keep_for_next_acquire();
                }
                Ok(current)
            }
            Err(_) => {
                conn.discard();
                Ok(false)
            }
        }
    }

    async fn create_on(&self, conn: &mut PgConnection) -> Result<bool, BotDbError> {
        let result = async {
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(&self.database)
                    .fetch_one(&mut *conn)
                    .await?;
            if exists {
                return Ok(false);
            }
            let sql = format!("CREATE DATABASE {}", quote_ident(&self.database));
            match sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut *conn)
                .await
            {
                Ok(_) => Ok(true),
                // Another process created it between our check and our CREATE.
                Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P04") => {
                    Ok(false)
                }
                Err(e) => Err(e),
            }
        }
        .await;
        result.map_err(|source| BotDbError::Manage {
            action: "create",
            database: self.database.clone(),
            source,
        })
    }

    /// Creates the database if needed and applies the embedded bot migrations.
    pub async fn provision(&self) -> Result<bool, BotDbError> {
        let created = self.ensure_database().await?;
        schema::apply(&schema::BOT, &self.options)
            .await
            .map_err(|source| BotDbError::Migrate {
                database: self.database.clone(),
                source,
            })?;
        Ok(created)
    }
}

fn parse_database_url(url: &str) -> Result<PgConnectOptions, String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(format!(
            "{} is not a postgres:// URL",
            crate::mask::mask_url(url)
        ));
    }
    let opts: PgConnectOptions = url
        .parse()
        .map_err(|e| format!("{}: {e}", crate::mask::mask_url(url)))?;
    let opts = crate::settings::without_loopback_tls(url, opts);
    if opts.get_database().is_none_or(str::is_empty) {
        return Err(format!("{} names no database", crate::mask::mask_url(url)));
    }
    Ok(opts)
}

/// When a bot run prunes what its database keeps past retention: the inbox's processed
/// updates, the outbox's finished requests and the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneSchedule {
    /// Between two prunes (`bot_database.prune_every_secs`).
    pub every: Duration,
    /// From now to the bot's next prune. A bot's prunes fall at fixed points of the wall
    /// clock: the multiples of `every` shifted by a fraction of it set by the bot id. So a
    /// start of many bots spreads their prunes over the period instead of adding one
    /// statement per table and bot to the start (test
    /// `prunes_of_many_bots_spread_over_the_period`), and a bot whose runs are short (a
    /// dormant bot in webhook mode, woken now and then) still prunes on time (test
    /// `a_prune_falls_at_the_same_moment_whenever_the_run_starts`).
    pub first: Duration,
}

/// A run that starts this soon after its bot's prune point prunes at once (timers and a
/// run's start make a woken bot a little late for the point it was woken for).
const PRUNE_GRACE: Duration = Duration::from_secs(60);

impl PruneSchedule {
    /// Bot `bot_id`'s schedule for prunes every `every`, from now.
    pub fn for_bot(bot_id: i64, every: Duration) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self::for_bot_at(bot_id, every, now)
    }

    /// Bot `bot_id`'s schedule for prunes every `every`, at `now` (since the Unix epoch).
    pub fn for_bot_at(bot_id: i64, every: Duration, now: Duration) -> Self {
        // Fibonacci hashing: consecutive ids land far apart in [0, 1).
        let spread = (bot_id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
        let fraction = spread as f64 / (1u64 << 53) as f64;
        let period = every.as_nanos().max(1);
        let phase = every.mul_f64(fraction).as_nanos() % period;
        // How far past its latest prune point the bot is.
        let past = (now.as_nanos() + period - phase) % period;
        let first = if Duration::from_nanos(past as u64) < PRUNE_GRACE.min(every / 2) {
            Duration::ZERO
        } else {
            Duration::from_nanos((period - past) as u64)
        };
        Self { every, first }
    }

    /// From the settings.
    pub fn from_settings(settings: &Settings, bot_id: i64) -> Self {
        Self::for_bot(
            bot_id,
            Duration::from_secs(settings.bot_database.prune_every_secs),
        )
    }
}

/// How many times [`BotDbTarget::rename_to`] ends the sessions and tries again.
pub const RENAME_ATTEMPTS: u32 = 5;

/// Checks a database name: 1–63 bytes of letters, digits, `_` and `-`.
pub fn validate_database_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_IDENTIFIER_LEN
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "database name {name:?} must be 1-63 characters of letters, digits, _ and -"
        ));
    }
    Ok(())
}

/// Validates a `--database` argument: a name or a postgres:// URL naming a database.
pub fn validate_override(value: &str) -> Result<(), String> {
    if value.contains("://") {
        let opts = parse_database_url(value)?;
        validate_database_name(opts.get_database().unwrap_or_default())
    } else {
        validate_database_name(value)
    }
}

/// Quotes an identifier for PostgreSQL, doubling any `"`.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// 1,000 consecutive bot ids: every first prune within the period, and the period's
    /// tenths each holding about a tenth of them (none more than twice its share).
    #[test]
    fn prunes_of_many_bots_spread_over_the_period() {
        let every = Duration::from_secs(3600);
        let now = Duration::from_secs(1_764_547_200);
        let mut tenths = [0u32; 10];
        for id in 1..=1000 {
            let s = PruneSchedule::for_bot_at(id, every, now);
            assert_eq!(s.every, every);
            assert!(s.first < every, "bot {id}: {:?}", s.first);
            tenths[(s.first.as_secs_f64() / 360.0) as usize] += 1;
        }
        assert!(
            tenths.iter().all(|&n| (50..=200).contains(&n)),
            "{tenths:?}"
        );
        assert_eq!(
            PruneSchedule::for_bot_at(7, every, now),
            PruneSchedule::for_bot_at(7, every, now),
            "the same bot, the same schedule"
        );
    }

    /// A bot's prune points are fixed on the wall clock: a run started later waits less for
    /// the same point, one started just after it prunes at once, one started a minute and
    /// more after it waits for the next.
    #[test]
    fn a_prune_falls_at_the_same_moment_whenever_the_run_starts() {
        let every = Duration::from_secs(86_400);
        let t0 = Duration::from_secs(1_764_547_200);
        let s0 = PruneSchedule::for_bot_at(42, every, t0);
        let point = t0 + s0.first;
        for later in [1, 600, 3_600] {
            let at = t0 + Duration::from_secs(later);
            if at < point {
                let s = PruneSchedule::for_bot_at(42, every, at);
                assert_eq!(at + s.first, point, "started {later} s later");
            }
        }
        let just_after = PruneSchedule::for_bot_at(42, every, point + Duration::from_secs(5));
        assert_eq!(just_after.first, Duration::ZERO);
        let well_after = PruneSchedule::for_bot_at(42, every, point + Duration::from_secs(61));
        assert_eq!(well_after.first, every - Duration::from_secs(61));
    }

    #[test]
    fn siblings_stay_within_63_bytes_and_apart() {
        let t = |name: &str| BotDbTarget::resolve(&settings(), 1, Some(name)).unwrap();
        let short = t("botvisor_bot_1").sibling("_import");
        assert_eq!(short.database, "botvisor_bot_1_import");
        assert_eq!(short.options.get_database(), Some("botvisor_bot_1_import"));
        let long_a = t(&"a".repeat(63)).sibling("_import");
        let long_b = t(&format!("{}b", "a".repeat(62))).sibling("_import");
        assert_eq!(long_a.database.len(), 63);
        assert!(long_a.database.ends_with("_import"));
        assert_ne!(long_a.database, long_b.database);
        assert!(validate_database_name(&long_a.database).is_ok());
    }

    fn settings() -> Settings {
        let env: HashMap<String, String> = [(
            "DATABASE_URL".to_string(),
            "postgres://u:pw@h:5433/panel".to_string(),
        )]
        .into();
        Settings::load(None, &env).unwrap()
    }

    #[test]
    fn the_client_programs_get_the_server_and_password_in_their_environment() {
        let env =
            |t: &BotDbTarget| -> HashMap<&str, String> { t.libpq_env().into_iter().collect() };
        let t = BotDbTarget::resolve(&settings(), 7, None).unwrap();
        let e = env(&t);
        assert_eq!(e["PGHOST"], "h");
        assert_eq!(e["PGPORT"], "5433");
        assert_eq!(e["PGUSER"], "u");
        assert_eq!(e["PGDATABASE"], t.database);
        assert_eq!(e["PGPASSWORD"], "pw");
        assert!(!format!("{:?}", t.password).contains("pw"));
        let debug = format!("{t:?}");
        assert!(!debug.contains("pw") && debug.contains("h:5433"), "{debug}");
        // An override URL brings its own server and password, percent-decoded ('+' stays).
        let t = BotDbTarget::resolve(
            &settings(),
            7,
            Some("postgres://o:a%40b+c@other:5432/elsewhere"),
        )
        .unwrap();
        let e = env(&t);
        assert_eq!(
            (
                e["PGHOST"].as_str(),
                e["PGUSER"].as_str(),
                e["PGDATABASE"].as_str()
            ),
            ("other", "o", "elsewhere")
        );
        assert_eq!(e["PGPASSWORD"], "a@b+c");
        let t = BotDbTarget::resolve(&settings(), 7, Some("postgres://o@other/x")).unwrap();
        assert!(!env(&t).contains_key("PGPASSWORD"));
    }

    #[test]
    fn default_name_derives_from_the_panel_database() {
        let t = BotDbTarget::resolve(&settings(), 7, None).unwrap();
        assert_eq!(t.database, "panel_bot_7");
        assert_eq!(t.options.get_host(), "h");
        assert_eq!(t.options.get_port(), 5433);
        assert_eq!(t.maintenance.get_database(), Some("postgres"));
    }

    #[test]
    fn overrides_by_name_or_url() {
        let t = BotDbTarget::resolve(&settings(), 7, Some("shop")).unwrap();
        assert_eq!((t.database.as_str(), t.options.get_host()), ("shop", "h"));
        let t = BotDbTarget::resolve(&settings(), 7, Some("postgres://x@other/remote")).unwrap();
        assert_eq!(
            (t.database.as_str(), t.options.get_host()),
            ("remote", "other")
        );
        for bad in ["a b", "x;drop", "postgres://x@other", "mysql://x/y"] {
            let e = BotDbTarget::resolve(&settings(), 7, Some(bad)).unwrap_err();
            assert!(e.is_fatal(), "{bad}: {e}");
        }
    }

    #[test]
    fn placement_takes_the_fewest_bots_per_weight_ties_to_the_first() {
        use crate::settings::place;
        let servers = |w: &[u32]| -> Vec<(String, u32)> {
            w.iter()
                .enumerate()
                .map(|(i, w)| (format!("s{i}"), *w))
                .collect()
        };
        let c = |pairs: &[(Option<&str>, i64)]| -> Vec<(Option<String>, i64)> {
            pairs
                .iter()
                .map(|(k, n)| (k.map(str::to_owned), *n))
                .collect()
        };
        assert_eq!(place(&servers(&[1, 1]), &[]), 0);
        assert_eq!(place(&servers(&[1, 1]), &c(&[(None, 1)])), 1);
        // Bots without a recorded server count for the first.
        assert_eq!(
            place(&servers(&[1, 1]), &c(&[(None, 1), (Some("s1"), 1)])),
            0
        );
        assert_eq!(
            place(&servers(&[1, 3]), &c(&[(None, 1), (Some("s1"), 2)])),
            1
        );
        assert_eq!(
            place(&servers(&[1, 3]), &c(&[(None, 1), (Some("s1"), 3)])),
            0
        );
        // A recorded server no longer listed counts nowhere.
        assert_eq!(place(&servers(&[1, 1]), &c(&[(Some("gone"), 9)])), 0);
    }

    #[test]
    fn a_bot_resolves_on_its_recorded_server() {
        let env: HashMap<String, String> = [
            (
                "DATABASE_URL".to_string(),
                "postgres://u@h/panel".to_string(),
            ),
            (
                crate::settings::SERVERS_ENV.to_string(),
                "postgres://u:pw1@a:5432/, postgres://v:pw2@b:5433/".to_string(),
            ),
        ]
        .into();
        let s = Settings::load(None, &env).unwrap();
        let t = BotDbTarget::resolve_on(&s, 7, None, None).unwrap();
        assert_eq!(
            (t.options.get_host(), t.database.as_str()),
            ("a", "panel_bot_7")
        );
        let t = BotDbTarget::resolve_on(&s, 7, Some("postgres://v@b:5433"), Some("shop")).unwrap();
        assert_eq!((t.options.get_host(), t.options.get_port()), ("b", 5433));
        assert_eq!(t.database, "shop");
        let e: HashMap<_, _> = t.libpq_env().into_iter().collect();
        assert_eq!(e["PGPASSWORD"], "pw2");
        let err = BotDbTarget::resolve_on(&s, 7, Some("postgres://u@gone:5432"), None).unwrap_err();
        assert!(
            err.is_fatal() && err.to_string().contains("invalid database"),
            "{err}"
        );
        assert_eq!(
            placement(&s),
            [
                ("postgres://u@a:5432".to_string(), 1),
                ("postgres://v@b:5433".to_string(), 1)
            ]
        );
        assert!(placement(&settings()).is_empty());
    }

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
