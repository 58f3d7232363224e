//! The `botvisor` command line: the daemon, the sandbox and the admin commands.
//!
//! Every command writes its result to the `out` writer it is given (stdout in the binary) and
//! returns a [`CliError`] whose exit code tells bad input (2) from failures (1). Tokens are
//! masked in everything printed.

mod admin;
mod daemon;
mod mailing;
mod migrate;
mod operators;
mod secret;

pub use daemon::{panel, sandbox, serve};

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::mask::error_line;
use crate::settings::{ConfigError, Settings};

/// What `--version` prints: the package version, the git commit and the build date.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BOTVISOR_GIT_COMMIT"),
    ", built ",
    env!("BOTVISOR_BUILD_DATE"),
    ")"
);

/// The states a bot's status can have, as `bot list --state` accepts them.
pub use crate::admin::bots::BOT_STATES;

/// Hosts many Telegram bots in one process, each with its own PostgreSQL database.
#[derive(Debug, Parser)]
#[command(name = "botvisor", version = VERSION, about, propagate_version = true)]
pub struct Cli {
    /// Settings file (TOML); default /etc/botvisor/botvisor.toml when it exists. Environment
    /// variables BOTVISOR__SECTION__KEY, BOTVISOR_PANEL_URL and BOTVISOR_TELEGRAM_API_URL
    /// override it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: host every enabled bot of the panel until SIGTERM/SIGINT.
    Serve,
    /// Show the `serve` instances sharing the panel (name, heartbeat, bots owned) and the bots
    /// by state.
    Status {
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Run a local Telegram Bot API emulator (development, demos, tests); see docs/sandbox.md.
    Sandbox(SandboxArgs),
    /// Apply the panel migrations (idempotent), or show their status.
    Migrate(MigrateArgs),
    /// Register, inspect and change bots.
    #[command(subcommand)]
    Bot(BotCommand),
    /// Set, read, import and export a bot's texts.
    #[command(subcommand)]
    Text(TextCommand),
    /// Export or erase everything a bot's database holds about one user.
    #[command(subcommand)]
    User(UserCommand),
    /// Create the master key that seals bot tokens and secrets (see docs/security.md).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Set, list and remove a bot's secrets (sealed with the master key; values never shown).
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Check the daemon's settings, or set and show a bot's manifest.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Show a chat's message history from the bot's database: role, content, timestamp.
    History {
        /// The bot's id.
        id: i64,
        /// The chat (for a private chat: the user's Telegram id).
        #[arg(long)]
        chat: i64,
        /// How many of the latest messages to show.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=10000))]
        limit: i64,
        /// Print JSON ([{"role", "content", "timestamp"}]) instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Send a message to a bot's users: start, follow, pause, resume, cancel, report.
    #[command(subcommand)]
    Broadcast(BroadcastCommand),
    /// Schedule messages and broadcasts of a bot: one-off or cron jobs.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Ask the running daemon to reload a bot's texts and manifest (all bots without ID).
    Reload {
        /// The bot's id; omit to reload every bot.
        id: Option<i64>,
    },
    /// Manage the operators of the web panel and the HTTP API.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Run the web admin panel and the HTTP API (/api/v1) until SIGTERM/SIGINT; see
    /// docs/panel-web.md.
    Panel(PanelArgs),
}

/// Arguments of `botvisor panel`.
#[derive(Debug, Args)]
pub struct PanelArgs {
    /// Address to listen on; default: panel_http.listen of the settings (127.0.0.1:8080).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
}

/// `botvisor operator` subcommands.
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Add an operator; the password is read from the first line of standard input.
    Add {
        /// The login (letters, digits, _ . - @; up to 64 characters).
        #[arg(long)]
        login: String,
        /// owner (everything, operators), admin (every bot) or editor (texts and manifests
        /// of the listed bots).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["owner", "admin", "editor"]))]
        role: String,
        /// The bots an editor may change: ids, comma-separated.
        #[arg(long, value_delimiter = ',')]
        bots: Vec<i64>,
        /// Read the password from standard input (required: a password is never an argument,
        /// which every user of the machine could see).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// List operators: login, role, bots.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove an operator (not the last owner).
    Remove {
        /// The login.
        login: String,
    },
    /// Set an operator's password, read from standard input; its sessions end.
    Passwd {
        /// The login.
        login: String,
    },
    /// Create an API key for an operator and print it once (only its hash is kept).
    Key {
        /// The login.
        login: String,
    },
    /// Show the audit log, newest first.
    Audit {
        /// How many entries.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=1000))]
        limit: i64,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
}

/// What a broadcast or a scheduled job sends.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ContentArgs {
    /// The text (placeholders {first_name}, {username}, {bot_name}, {panel_name} are filled
    /// per recipient).
    #[arg(long)]
    pub text: Option<String>,
    /// A text key of the bot, rendered per recipient in their language.
    #[arg(long, value_name = "KEY")]
    pub text_key: Option<String>,
}

/// `botvisor broadcast` subcommands.
#[derive(Debug, Subcommand)]
pub enum BroadcastCommand {
    /// Start a broadcast (now, or --at TIME); prints its id.
    Start {
        /// The bot's id.
        id: i64,
        /// What to send.
        #[command(flatten)]
        content: ContentArgs,
        /// Who gets it: all, lang:CODE, active-days:N or admins (blocked users never).
        #[arg(long, default_value = "all")]
        audience: String,
        /// When to start: RFC 3339, or "YYYY-MM-DD HH:MM" in UTC.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// Inline buttons: a JSON file of rows, e.g. [[{"text": "Site", "url": "https://…"}]].
        #[arg(long, value_name = "FILE")]
        buttons: Option<PathBuf>,
    },
    /// List a bot's broadcasts, newest first.
    List {
        /// The bot's id.
        id: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a broadcast: state, total, sent, failed, blocked, pending, times, rate.
    Status {
        /// The bot's id.
        id: i64,
        /// The broadcast's id.
        bid: i64,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Pause a broadcast (the sends already queued, about two seconds' worth, still go out).
    Pause {
        /// The bot's id.
        id: i64,
        /// The broadcast's id.
        bid: i64,
    },
    /// Resume a paused broadcast where it stopped.
    Resume {
        /// The bot's id.
        id: i64,
        /// The broadcast's id.
        bid: i64,
    },
    /// Cancel a broadcast; those not yet sent to stay unsent.
    Cancel {
        /// The bot's id.
        id: i64,
        /// The broadcast's id.
        bid: i64,
    },
    /// One line per recipient: user id, outcome, error, time.
    Report {
        /// The bot's id.
        id: i64,
        /// The broadcast's id.
        bid: i64,
        /// Write CSV to FILE instead of printing.
        #[arg(long, value_name = "FILE")]
        csv: Option<PathBuf>,
    },
}

/// `botvisor schedule` subcommands.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Add a job; prints its id.
    Add {
        /// The bot's id.
        id: i64,
        /// Once at TIME: RFC 3339, or "YYYY-MM-DD HH:MM" in --tz.
        #[arg(long, value_name = "TIME", group = "when")]
        at: Option<String>,
        /// Once after DURATION: 90s, 15m, 2h, 1d, 1h30m.
        #[arg(long = "in", value_name = "DURATION", group = "when")]
        in_: Option<String>,
        /// At every occurrence of a cron expression (5 fields, or 6 with seconds) in --tz.
        #[arg(long, value_name = "EXPR", group = "when")]
        cron: Option<String>,
        /// The IANA time zone of --at and --cron (default UTC).
        #[arg(long, value_name = "ZONE")]
        tz: Option<String>,
        /// Send to this chat.
        #[arg(long, value_name = "CHAT_ID", conflicts_with = "audience")]
        chat: Option<i64>,
        /// Send to an audience: all, lang:CODE, active-days:N or admins.
        #[arg(long)]
        audience: Option<String>,
        /// What to send.
        #[command(flatten)]
        content: ContentArgs,
        /// Start a broadcast of the text at each occurrence (to --audience, default all).
        #[arg(long)]
        broadcast: bool,
        /// What a missed occurrence (downtime) comes to: run-once (late) or skip.
        #[arg(long, value_name = "POLICY")]
        misfire: Option<String>,
    },
    /// List a bot's jobs with their next run in UTC and in their zone.
    List {
        /// The bot's id.
        id: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a job.
    Remove {
        /// The bot's id.
        id: i64,
        /// The job's id.
        job: i64,
    },
    /// Pause a job.
    Pause {
        /// The bot's id.
        id: i64,
        /// The job's id.
        job: i64,
    },
    /// Resume a paused job (a cron job continues at its next occurrence from now).
    Resume {
        /// The bot's id.
        id: i64,
        /// The job's id.
        job: i64,
    },
    /// A job's history: due, started, outcome.
    Runs {
        /// The bot's id.
        id: i64,
        /// The job's id.
        job: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Arguments of `botvisor sandbox`.
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Address to listen on (keep it on loopback).
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: std::net::SocketAddr,
    /// Register any well-formed token on its first call (quick demos).
    #[arg(long)]
    pub accept_any_token: bool,
    /// Enforce Telegram's send rate limits (429 with retry_after).
    #[arg(long)]
    pub rate_limits: bool,
}

/// Arguments of `botvisor migrate`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MigrateArgs {
    /// Show status or lint instead of applying.
    #[command(subcommand)]
    pub action: Option<MigrateAction>,
    /// Also apply pending bot migrations to every existing bot database (one failure is
    /// reported and the others continue; exit code 1 if any failed).
    #[arg(long)]
    pub all_bots: bool,
    /// Bot databases migrated at once with --all-bots.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub concurrency: u32,
}

/// `botvisor migrate` subcommands.
#[derive(Debug, Subcommand)]
pub enum MigrateAction {
    /// List migrations: version, name, applied_at, state (applied, pending, ahead, …).
    Status {
        /// One bot's database instead of the panel.
        #[arg(long, conflicts_with = "all_bots")]
        bot: Option<i64>,
        /// Every bot's database as well as the panel.
        #[arg(long)]
        all_bots: bool,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Check migration files for statements that would break the previous binary while the
    /// new one starts (exit code 1 when any is found). See docs/migrations.md.
    Lint {
        /// Directories or files to check; default: migrations/panel and migrations/bot.
        paths: Vec<PathBuf>,
    },
}

/// `botvisor bot` subcommands.
#[derive(Debug, Subcommand)]
pub enum BotCommand {
    /// Register a bot and print its id.
    Add {
        /// A unique name for the bot (letters, digits, spaces, _ . -; up to 64 characters).
        #[arg(long)]
        name: String,
        /// The token BotFather gave (<digits>:<35 characters>).
        #[arg(long)]
        token: String,
        /// A manifest JSON file (see docs/manifest.md); default: an empty manifest.
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
        /// Register it disabled (it does not start until `bot enable`).
        #[arg(long)]
        disabled: bool,
        /// Its database: a name on the default server or a full postgres:// URL; default: the
        /// naming rule of the settings (bot_database.name_template).
        #[arg(long, value_name = "NAME_OR_URL")]
        database: Option<String>,
    },
    /// List bots with their status, and a summary line.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only bots in these states (repeat it, or a comma list): starting, running,
        /// backoff, failed, auth_failed, quarantined, stopped.
        #[arg(long, value_name = "STATE", value_delimiter = ',',
              value_parser = clap::builder::PossibleValuesParser::new(BOT_STATES))]
        state: Vec<String>,
    },
    /// Show one bot with its status.
    Show {
        /// The bot's id.
        id: i64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Enable a bot (the daemon starts it).
    Enable {
        /// The bot's id.
        id: i64,
    },
    /// Disable a bot (the daemon stops it).
    Disable {
        /// The bot's id.
        id: i64,
    },
    /// Replace a bot's token (the daemon restarts it with the new one).
    SetToken {
        /// The bot's id.
        id: i64,
        /// The new token.
        token: String,
    },
    /// Set how a bot gets its updates (the daemon restarts it; no update is lost): webhook
    /// (needs http.listen and http.public_url, docs/webhooks.md), polling, or default (the
    /// settings' telegram.default_mode).
    SetMode {
        /// The bot's id.
        id: i64,
        /// webhook, polling or default.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(["webhook", "polling", "default"]))]
        mode: String,
    },
    /// Rename a bot.
    Rename {
        /// The bot's id.
        id: i64,
        /// The new name (unique; letters, digits, spaces, _ . -; up to 64 characters).
        name: String,
    },
    /// Erase a bot for good (needs --yes): disable it, drop its database, delete it with its
    /// texts and secrets — in that order, so running it again finishes an interrupted erase.
    Erase {
        /// The bot's id.
        id: i64,
        /// Confirm; without it nothing happens and the command says what would.
        #[arg(long)]
        yes: bool,
    },
    /// Write a bot to one archive file: its panel row, texts, manifest, secrets' names (never
    /// their values) and its database (pg_dump -Fc), each part with a SHA-256 checksum; see
    /// docs/security.md ("Bot archives").
    Export {
        /// The bot's id.
        id: i64,
        /// The archive file to write (must not exist; written with mode 0600).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Put the bot's token in the archive, IN CLEAR (anyone with the file can run the bot);
        /// without it the imported bot waits for `bot set-token`.
        #[arg(long)]
        with_token: bool,
    },
    /// Recreate a bot from an archive of `bot export` as a NEW bot (new id, its own database
    /// restored with pg_restore), or with --into restore it IN PLACE over an existing bot;
    /// checksums are verified first. A new bot stays disabled until it has a token, unless the
    /// archive carried one no other bot uses. See docs/security.md ("Bot archives").
    Import {
        /// The archive file.
        file: PathBuf,
        /// The bot's name afterwards; default: the exported bot's name.
        #[arg(long)]
        name: Option<String>,
        /// Restore in place over bot ID: its database, texts, manifest, name and text/manifest
        /// versions become the archive's (restored and verified beside it first; the bot is
        /// stopped only for the swap and enabled again if it was). Its token and secrets stay.
        /// After a crash, run the same command again: it finishes the import.
        #[arg(long, value_name = "ID")]
        into: Option<i64>,
        /// With --into: take the archive's token too (it must hold one, exported with
        /// --with-token).
        #[arg(long, requires = "into")]
        with_token: bool,
    },
    /// Move a bot's database to another server of bot_database.servers: the bot is stopped,
    /// its database dumped, restored on the new server and its row counts verified, the panel
    /// switched (audit entry bot.move), the bot started again. The old database is kept
    /// (marked as moved away) unless --drop-old; `bot move ID --drop-old` alone drops the old
    /// copies kept by earlier moves. After a crash, run the same command again. See
    /// docs/operations.md ("Moving a bot to another server").
    Move {
        /// The bot's id.
        id: i64,
        /// The server to move to: one of bot_database.servers (matched by user, host and
        /// port; the password may be left out).
        #[arg(long, value_name = "URL")]
        server: Option<String>,
        /// Drop the old database once the move is done (without --server: drop the old
        /// copies earlier moves kept).
        #[arg(long)]
        drop_old: bool,
    },
    /// Remove a bot and its texts (needs --yes); its database is kept unless --drop-database.
    Remove {
        /// The bot's id.
        id: i64,
        /// Also drop the bot's database.
        #[arg(long)]
        drop_database: bool,
        /// Confirm; without it nothing happens and the command says what would.
        #[arg(long)]
        yes: bool,
    },
}

/// `botvisor text` subcommands.
#[derive(Debug, Subcommand)]
pub enum TextCommand {
    /// Set a text (validated: known placeholders, at most 4096 UTF-16 units as Telegram counts,
    /// no control characters but newline and tab).
    Set {
        /// The bot's id.
        id: i64,
        /// The text key, e.g. `start`.
        key: String,
        /// The value; placeholders {first_name}, {username}, {bot_name} (the Telegram bot's
        /// name), {panel_name}.
        value: String,
        /// Language; default: the manifest's default_language.
        #[arg(long)]
        lang: Option<String>,
    },
    /// Print a text.
    Get {
        /// The bot's id.
        id: i64,
        /// The text key.
        key: String,
        /// Language; default: the manifest's default_language.
        #[arg(long)]
        lang: Option<String>,
    },
    /// Delete a text (in the manifest's default language unless --lang).
    Delete {
        /// The bot's id.
        id: i64,
        /// The text key.
        key: String,
        /// Language; default: the manifest's default_language.
        #[arg(long)]
        lang: Option<String>,
    },
    /// List a bot's texts.
    List {
        /// The bot's id.
        id: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Import texts from a JSON or TOML map in one transaction (one reload).
    ///
    /// The map is {"key": "value"} (default language) or {"key": {"en": "…", "ru": "…"}}.
    Import {
        /// The bot's id.
        id: i64,
        /// A .json or .toml file.
        file: PathBuf,
    },
    /// Print every text as JSON ({"key": {"lang": "value"}}), ready for `text import`.
    Export {
        /// The bot's id.
        id: i64,
    },
    /// List a text's versions, newest first: version, when, who, value.
    History {
        /// The bot's id.
        id: i64,
        /// The text key.
        key: String,
        /// Language; default: the manifest's default_language.
        #[arg(long)]
        lang: Option<String>,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Put a text back as one of its versions left it.
    Rollback {
        /// The bot's id.
        id: i64,
        /// The text key.
        key: String,
        /// The version (see `text history`).
        #[arg(value_name = "VERSION")]
        number: i64,
        /// Language; default: the manifest's default_language.
        #[arg(long)]
        lang: Option<String>,
    },
}

/// `botvisor user` subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Print as JSON every row about the user in the bot's database, by table (profile,
    /// history, and any module's rows with a user_id or chat_id).
    Export {
        /// The bot's id.
        id: i64,
        /// The user's Telegram id.
        user_id: i64,
    },
    /// Delete every row about the user in the bot's database, in one transaction, and print
    /// the count per table (needs --yes).
    Erase {
        /// The bot's id.
        id: i64,
        /// The user's Telegram id.
        user_id: i64,
        /// Confirm; without it nothing happens and the command says what would.
        #[arg(long)]
        yes: bool,
    },
}

/// `botvisor keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a new master key file (mode 0600); refuses to overwrite an existing one.
    Init {
        /// Where to write it; default: BOTVISOR_MASTER_KEY_FILE, else secrets.master_key_file,
        /// else /etc/botvisor/master.key.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
    },
    /// Re-seal every bot token and secret under a new master key, one transaction per batch;
    /// the old key stays accepted until the end. Run it again to finish a rotation that was
    /// interrupted.
    Rotate {
        /// Tokens (and secrets) re-sealed per transaction.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=10000))]
        batch_size: i64,
    },
}

/// `botvisor secret` subcommands.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Seal and store a secret read from standard input (one trailing newline is dropped);
    /// the running bot picks it up at once.
    Set {
        /// The bot's id.
        id: i64,
        /// The secret's name, e.g. `openai` (a-z 0-9 _ . -, up to 64).
        name: String,
        /// Read the value from standard input (required: a value on the command line would be
        /// seen by `ps` and kept in shell history).
        #[arg(long)]
        stdin: bool,
    },
    /// List a bot's secrets: names and when they changed, never values.
    List {
        /// The bot's id.
        id: i64,
        /// Print JSON ([{"name", "updated_at"}]) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a bot's secret (an unknown name is an error).
    Remove {
        /// The bot's id.
        id: i64,
        /// The secret's name.
        name: String,
    },
}

/// `botvisor config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the daemon's settings, print them with secrets masked, and try the panel.
    Check {
        /// Do not try to connect to the panel database.
        #[arg(long)]
        offline: bool,
    },
    /// Replace a bot's manifest with a validated JSON file; prints the top-level keys added,
    /// removed and changed.
    Set {
        /// The bot's id.
        id: i64,
        /// The manifest JSON file.
        file: PathBuf,
    },
    /// Change a bot's manifest with a JSON merge patch (RFC 7386: null removes a key); the
    /// result is validated as a whole before it is saved.
    Patch {
        /// The bot's id.
        id: i64,
        /// The patch JSON file.
        file: PathBuf,
    },
    /// Print a bot's manifest.
    Show {
        /// The bot's id.
        id: i64,
    },
    /// List a bot's manifest versions, newest first: version, when, who, keys changed.
    History {
        /// The bot's id.
        id: i64,
        /// Print JSON (with every version's manifest) instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Put a bot's manifest back as one of its versions wrote it (validated again).
    Rollback {
        /// The bot's id.
        id: i64,
        /// The version (see `config history`).
        #[arg(value_name = "VERSION")]
        number: i64,
    },
}

/// A command's failure, with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    /// 2 for bad input (the message says what), 1 for failures.
    pub code: u8,
    /// One line for stderr.
    pub message: String,
}

impl CliError {
    /// Bad input: exit code 2.
    pub fn input(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }

    /// A failure: exit code 1.
    pub fn failure(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError::input(error_line(&e))
    }
}

impl From<crate::panel::PanelError> for CliError {
    fn from(e: crate::panel::PanelError) -> Self {
        let line = error_line(&e);
        if e.is_bad_input() {
            CliError::input(line)
        } else {
            CliError::failure(line)
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::failure(format!("cannot write output: {e}"))
    }
}

/// Loads settings for a command from `--config` and the given environment.
pub fn load_settings(cli: &Cli, env: &HashMap<String, String>) -> Result<Settings, CliError> {
    Ok(Settings::load(cli.config.as_deref(), env)?)
}

/// Runs a command other than the long-running ones (`serve`, `sandbox`), writing to `out`.
pub async fn run_admin(
    cli: &Cli,
    env: &HashMap<String, String>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    if let Command::Migrate(MigrateArgs {
        action: Some(MigrateAction::Lint { paths }),
        ..
    }) = &cli.command
    {
        return migrate::lint(paths, out);
    }
    if let Command::Keys(KeysCommand::Init { file }) = &cli.command {
        // Needs no panel: the key usually exists before the panel URL is configured.
        let path = match file {
            Some(path) => path.clone(),
            None => match env
                .get(crate::crypto::KEY_FILE_ENV)
                .filter(|v| !v.is_empty())
            {
                Some(path) => PathBuf::from(path),
                None => load_settings(cli, env)
                    .map(|s| s.master_key_file())
                    .unwrap_or_else(|_| PathBuf::from(crate::crypto::DEFAULT_KEY_FILE)),
            },
        };
        return keys_init(&path, out);
    }
    let settings = load_settings(cli, env)?;
    let actor = format!(
        "cli:{}",
        env.get("SUDO_USER")
            .or_else(|| env.get("USER"))
            .map_or("unknown", String::as_str)
    );
    admin::run(&cli.command, &settings, actor, out).await
}

/// `keys init`: a new master key file at `path`.
fn keys_init(path: &std::path::Path, out: &mut dyn Write) -> Result<(), CliError> {
    match crate::crypto::init_key_file(path) {
        Ok(id) => {
            writeln!(
                out,
                "master key {id} written to {} (mode 0600); back it up apart from the database \
                 backups",
                path.display()
            )?;
            Ok(())
        }
        Err(e @ crate::crypto::CryptoError::Exists { .. }) => Err(CliError::input(error_line(&e))),
        Err(e) => Err(CliError::failure(error_line(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
